package shm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

// TestMemfdSealedAndShared: a memfd segment is shared through File and
// AttachFile, cannot be resized by anyone, and leaves nothing behind.
func TestMemfdSealedAndShared(t *testing.T) {
	a, err := CreateMemfd[cell]("sealed", Config{Slots: 8, Watch: -1})
	if err != nil {
		t.Fatal(err)
	}
	f, err := a.File()
	if err != nil {
		t.Fatal(err)
	}
	b, err := AttachFile[cell](f, Config{Watch: -1})
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int64{0, 4096, 1 << 30} {
		if err := f.Truncate(size); !errors.Is(err, syscall.EPERM) {
			t.Fatalf("Truncate(%d) of a sealed segment: %v, want EPERM", size, err)
		}
	}
	_ = f.Close()
	tok, p, err := a.Alloc()
	if err != nil {
		t.Fatal(err)
	}
	p.fill(42)
	if v, err := b.Load(tok); err != nil || v.Stamp != 42 || !v.whole() {
		t.Fatalf("Load through the other handle: %+v, %v", v, err)
	}
	if err := b.Free(tok); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Load(tok); !errors.Is(err, ErrStale) {
		t.Fatalf("Load after the other handle freed: %v", err)
	}
	if _, err := AttachFile[tick](mustFile(t, a), Config{}); !errors.Is(err, ErrMismatch) {
		t.Fatalf("AttachFile with another T: %v, want ErrMismatch", err)
	}
	if _, err := AttachFile[cell](nil, Config{}); !errors.Is(err, ErrNotExist) {
		t.Fatalf("AttachFile(nil): %v, want ErrNotExist", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.File(); !errors.Is(err, ErrClosed) {
		t.Fatalf("File after Close: %v, want ErrClosed", err)
	}
}

func mustFile(t *testing.T, a interface{ File() (*os.File, error) }) *os.File {
	t.Helper()
	f, err := a.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestMemfdUnsealedRefused: AttachFile refuses a memfd that could be
// truncated under it.
func TestMemfdUnsealedRefused(t *testing.T) {
	a, err := CreateMemfd[cell]("unsealed", Config{Slots: 2, Watch: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	raw, err := memfdCreate("copy")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if err := raw.Truncate(int64(a.hdr.size)); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.WriteAt(a.mem[:headerSize], 0); err != nil {
		t.Fatal(err)
	}
	if _, err := AttachFile[cell](raw, Config{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("AttachFile of an unsealed memfd: %v, want ErrCorrupt", err)
	}
}

// TestMemfdSendFile: an unrelated process would get the segment over a
// unix socket; here both ends are in this process.
func TestMemfdSendFile(t *testing.T) {
	s, err := CreateStoreMemfd[tick]("sent", StoreConfig{Slots: 4, Watch: -1, Edges: []message.Policy{{MaxItems: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "sock")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	tx, rx := conn(fds[0]), conn(fds[1])
	defer tx.Close()
	defer rx.Close()
	f := mustFile(t, s)
	if err := SendFile(tx, f); err != nil {
		t.Fatal(err)
	}
	g, err := RecvFile(rx)
	if err != nil {
		t.Fatal(err)
	}
	r, err := AttachStoreFile[tick](g, StoreConfig{Watch: -1})
	_ = g.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tok, _ := s.Put(message.Header{Seq: 9}, tick{Seq: 9})
	if err := s.Edge(0).Send(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	got, err := r.Edge(0).Recv(context.Background())
	if err != nil || got != tok {
		t.Fatalf("Recv through the received segment: %v, %v", got, err)
	}
	if h, err := r.Header(got); err != nil || h.Seq != 9 {
		t.Fatalf("Header: %+v, %v", h, err)
	}
	if err := r.Free(got); err != nil {
		t.Fatal(err)
	}
	// A message without a descriptor is an error, not a fault.
	if _, err := tx.Write([]byte{'x'}); err != nil {
		t.Fatal(err)
	}
	if _, err := RecvFile(rx); !errors.Is(err, ErrNotExist) {
		t.Fatalf("RecvFile of a plain message: %v, want ErrNotExist", err)
	}
}

// memfdHold attaches to the segment inherited as fd 3, allocates a slot,
// holds a View on it, reports the token and waits to be killed.
func memfdHold() int {
	a, err := AttachFile[cell](os.NewFile(3, "inherited"), Config{Watch: -1})
	if err != nil {
		fmt.Fprintln(os.Stderr, "memfd hold:", err)
		return exitBadError
	}
	t, _, err := a.Alloc()
	if err != nil {
		fmt.Fprintln(os.Stderr, "memfd hold alloc:", err)
		return exitBadError
	}
	ready := make(chan struct{})
	go a.View(t, func(*cell) { close(ready); sleepForever() })
	<-ready
	fmt.Println(uint64(t))
	sleepForever()
	return 0
}

// TestMemfdChildKilled: a child that attached through an inherited memfd
// and is SIGKILLed while it holds a slot and a View is cleaned up after.
func TestMemfdChildKilled(t *testing.T) {
	a, err := CreateMemfd[cell]("child", Config{Slots: 1, Watch: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	cmd := spawn(t, "memfdhold", "", "", "")
	cmd.ExtraFiles = []*os.File{mustFile(t, a)}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var raw uint64
	if _, err := fmt.Fscan(out, &raw); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Alloc(); !errors.Is(err, ErrFull) {
		t.Fatalf("Alloc while the child holds the only slot: %v", err)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	rep, err := a.Recover()
	if err != nil || rep.Dead != 1 || rep.Reclaimed != 1 || rep.Holds != 1 {
		t.Fatalf("Recover: %+v, %v", rep, err)
	}
	if _, err := a.Load(token.Token(raw)); !errors.Is(err, ErrStale) {
		t.Fatalf("the dead child's token: %v", err)
	}
	if _, _, err := a.Alloc(); err != nil {
		t.Fatalf("Alloc after recovery: %v", err)
	}
}
