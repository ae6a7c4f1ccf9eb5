package shm

// Helpers shared by the in-process tests.
//
// Two handles attached in one process behave like two processes: each has
// its own open file description, so its own OFD liveness lock and its own
// record in the segment. die simulates the death of the process behind one
// handle without a second process: it unmaps the segment and closes the
// file description, which is what the kernel does when a process dies, so
// the handle's record is left alive-but-unlocked for the survivors to
// recover. The cross-process tests (real fork/exec and SIGKILL) live in
// proc_test.go.

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/cella-go/cella/token"
	"golang.org/x/sys/unix"
)

// pay is the payload of most tests: an owner and a sequence number, and a
// fill derived from both, so that a torn write or a slot shared by two
// allocations shows up as a fill that does not match.
type pay struct {
	Owner uint64
	Seq   uint64
	Fill  [6]uint64
}

func fillOf(owner, seq uint64, i int) uint64 {
	return (owner*0x9e3779b97f4a7c15 ^ seq*0xbf58476d1ce4e5b9) + uint64(i)*0x94d049bb133111eb
}

func patterned(owner, seq uint64) pay {
	p := pay{Owner: owner, Seq: seq}
	for i := range p.Fill {
		p.Fill[i] = fillOf(owner, seq, i)
	}
	return p
}

// whole reports whether p's fill matches its owner and sequence number.
func (p *pay) whole() bool {
	for i := range p.Fill {
		if p.Fill[i] != fillOf(p.Owner, p.Seq, i) {
			return false
		}
	}
	return true
}

const segName = "seg"

// segment creates a segment of T (cfg.Dir defaults to a fresh temp dir,
// Watch to "never" unless set) and attaches n-1 more handles to it. Every
// handle is closed at cleanup (a handle the test closed or killed is
// skipped by Close's own ErrClosed).
func segment[T any](t testing.TB, n int, cfg Config) []*Arena[T] {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	if cfg.Watch == 0 {
		cfg.Watch = -1
	}
	a, err := Create[T](segName, cfg)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	hs := []*Arena[T]{a}
	t.Cleanup(func() { closeAtEnd(t, a) })
	for range n - 1 {
		hs = append(hs, attachTo[T](t, cfg.Dir, cfg.Watch))
	}
	return hs
}

// attachTo attaches one more handle to the test segment in dir.
func attachTo[T any](t testing.TB, dir string, watch time.Duration) *Arena[T] {
	t.Helper()
	b, err := Attach[T](segName, Config{Dir: dir, Watch: watch})
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	t.Cleanup(func() { closeAtEnd(t, b) })
	return b
}

// closeAtEnd closes a at the end of a test, unless the test already
// closed it; a Close that hangs (it waits for a callback a failed test left
// running) is reported rather than hanging the test binary.
func closeAtEnd[T any](t testing.TB, a *Arena[T]) {
	done := make(chan error, 1)
	go func() { done <- a.Close() }()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Close at cleanup: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Close at cleanup hung (a callback or operation never returned)")
	}
}

// die makes a's process look dead to every other handle: the record stays
// alive in the segment, its lock goes away. a must have no operation in
// flight; afterwards every method of a returns ErrClosed.
func die[T any](a *Arena[T]) {
	a.closeMu.Lock()
	defer a.closeMu.Unlock()
	if !a.closed.CompareAndSwap(false, true) {
		panic("die: handle already closed")
	}
	if a.watchStop != nil {
		close(a.watchStop)
		<-a.watchDone
	}
	// No callback is running (a has no operation in flight), so there is
	// nothing to wait for; the entries holdAsDead wrote are the dead
	// process's holds and stay for recovery to find.
	a.holds.closed.Store(true)
	a.gate.Close()
	a.recoverMu.Lock()
	defer a.recoverMu.Unlock()
	if err := unix.Munmap(a.mem); err != nil {
		panic(err)
	}
	a.mem, a.base = nil, nil
	_ = a.file.Close() // the last reference to the description: the lock goes
}

// holdAsDead makes a (about to die) hold t's slot as a View (or, with
// write, an Update) whose callback never returns: the reader count or
// writer bit in the state word and the entry in a's record, exactly as
// access leaves them while a callback runs.
func holdAsDead[T any](t testing.TB, a *Arena[T], tok token.Token, write bool) {
	t.Helper()
	idx := tok.Index()
	add, kind := uint64(readerOne), uint64(holdRead)
	if write {
		add, kind = writerBit, holdWrite
	}
	st := a.state(idx)
	s := atomic.LoadUint64(st)
	if !liveAs(s, tok.Generation()) || s&writerBit != 0 || write && readersOf(s) != 0 {
		t.Fatalf("holdAsDead %v: state %#x", tok, s)
	}
	for e := range a.rec.holds {
		if atomic.LoadUint64(&a.rec.holds[e]) == 0 {
			atomic.StoreUint64(&a.rec.holds[e], kind|uint64(idx+1))
			atomic.AddUint64(st, add)
			return
		}
	}
	t.Fatal("holdAsDead: no free hold entry")
}

// cachedSlots counts the slots sitting in a's way caches.
func cachedSlots[T any](a *Arena[T]) int {
	n := 0
	for k := range a.rec.ways {
		// Each way's cache is a chain of slots linked through links[].
		for top := uint32(atomic.LoadUint64(&a.rec.ways[k].cache)); top != 0 && n <= int(a.capacity); n++ {
			top = atomic.LoadUint32(a.link(top - 1))
		}
	}
	return n
}

// within runs fn and fails the test if it does not return within d (a
// hang: a lost wake-up, a hold never released, a census that never
// concludes). On a hang fn's goroutine is left behind.
func within(t testing.TB, d time.Duration, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not finish within %v", what, d)
	}
}

// must fails the test on a non-nil error.
func must(t testing.TB, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// wantErr fails the test unless errors.Is(err, want).
func wantErr(t testing.TB, err, want error, what string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got %v, want %v", what, err, want)
	}
}

// memDir returns a fresh directory on a tmpfs (DefaultDir) when there is
// one, removed at cleanup, else t.TempDir(): the fuzz targets make a
// segment per input, and a disk-backed directory makes that slow.
func memDir(t testing.TB) string {
	if dir, err := os.MkdirTemp(DefaultDir, "cella-test-"); err == nil {
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
		return dir
	}
	return t.TempDir()
}

// segFile is the path of the test segment in dir.
func segFile(dir string) string { return filepath.Join(dir, filePrefix+segName) }

// copyFile copies src to dst byte for byte (a snapshot of a segment: its
// records say alive, but nobody holds their locks).
func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	must(t, err, "read segment")
	must(t, os.WriteFile(dst, b, 0o600), "write copy")
}

// setHeader rewrites the header of the segment file at path through edit.
func setHeader(t testing.TB, path string, edit func(h *header)) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	must(t, err, "open segment")
	defer f.Close()
	var h header
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&h)), headerSize)
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Fatalf("read header: %v", err)
	}
	edit(&h)
	_, err = f.WriteAt(buf, 0)
	must(t, err, "write header")
}

// childRoles maps a role prefix to what a re-executed test binary runs for
// the roles that start with it: the attack suites' children, beside the
// roles TestMain dispatches itself (proc_test.go). Package variables are
// initialised before any init function runs, so every file's registration
// is in the map when runChildRole looks.
var childRoles = map[string]func(role, dir, name, arg string) int{}

func registerChildRoles(prefix string, run func(role, dir, name, arg string) int) bool {
	childRoles[prefix] = run
	return true
}

func init() { runChildRole() }

// runChildRole runs this process's child role, if it has a registered one,
// and exits with its status.
func runChildRole() {
	role := os.Getenv(childEnv)
	for prefix, run := range childRoles {
		if strings.HasPrefix(role, prefix) {
			os.Exit(run(strings.TrimPrefix(role, prefix), os.Getenv(dirEnv), os.Getenv(nameEnv), os.Getenv(argEnv)))
		}
	}
}
