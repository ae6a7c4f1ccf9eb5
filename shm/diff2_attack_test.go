package shm

// Differential and misuse attack suite (diff2): the shm Store against
// message.Store, single handle and two handles, and the fd hand-off
// (File, SendFile/RecvFile, AttachFile/AttachStoreFile) fed with things
// that are not segments.

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
	"golang.org/x/sys/unix"
)

// d2pay is the payload of the differential tests.
type d2pay struct {
	A, B uint64
	C    [5]uint32
}

// d2other is another element type of a different layout.
type d2other struct {
	X [3]uint64
}

// d2pair returns two connected unix sockets of the given type.
func d2pair(t *testing.T, typ int) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, typ|syscall.SOCK_CLOEXEC, 0)
	must(t, err, "socketpair")
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "sock")
		defer f.Close()
		c, err := net.FileConn(f)
		must(t, err, "FileConn")
		t.Cleanup(func() { _ = c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// d2noPanic runs fn and turns a panic into a test failure.
func d2noPanic(t *testing.T, what string, fn func()) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Errorf("%s panicked: %v", what, r)
		}
	}()
	fn()
}

// d2within is within that reports instead of aborting, so later cases run.
func d2within(t *testing.T, d time.Duration, what string, fn func()) bool {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		t.Errorf("%s did not return within %v", what, d)
		return false
	}
}

// TestDiff2AttachFileOfDevShmSegment: AttachFile's doc says it takes "an
// open segment file under /dev/shm". A segment made by Create in
// DefaultDir, opened with os.Open and handed to AttachStoreFile / AttachFile,
// must attach (it is the documented case), and once every handle has
// closed, the file must be gone ("The last process to close removes the
// file").
func TestDiff2AttachFileOfDevShmSegment(t *testing.T) {
	dir := memDir(t)
	s, err := CreateStore[d2pay]("devshm", StoreConfig{Slots: 4, Dir: dir, Watch: -1, Edges: []message.Policy{{MaxItems: 2}}})
	must(t, err, "CreateStore")
	defer s.Close()
	f, err := os.Open(s.Path())
	must(t, err, "open segment file")
	defer f.Close()
	r, err := AttachStoreFile[d2pay](f, StoreConfig{Watch: -1})
	if err != nil {
		t.Fatalf("AttachStoreFile of an open segment file under %s (%s): %v", dir, s.Path(), err)
	}
	tok, err := s.Put(message.Header{Seq: 5}, d2pay{A: 5})
	must(t, err, "Put")
	must(t, s.Edge(0).Send(context.Background(), tok), "Send")
	got, err := r.Edge(0).Recv(context.Background())
	must(t, err, "Recv")
	must(t, r.Free(got), "Free")
	_ = f.Close()
	// The creator closes first: the handle that came through the file is
	// the last one, and removes the file.
	must(t, s.Close(), "creator Close")
	must(t, r.Close(), "attached Close")
	if _, err := os.Stat(s.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("segment file %s still there after the last Close (by the AttachStoreFile handle, Path %q): %v", s.Path(), r.Path(), err)
	}
}

// TestDiff2AttachFileOfDiskSegment: the same through a segment on a disk
// directory (Config.Dir), the other documented kind of segment file.
func TestDiff2AttachFileOfDiskSegment(t *testing.T) {
	dir := t.TempDir()
	a, err := Create[d2pay]("disk", Config{Slots: 4, Dir: dir, Watch: -1})
	must(t, err, "Create")
	f, err := os.Open(a.Path())
	must(t, err, "open segment file")
	b, err := AttachFile[d2pay](f, Config{Watch: -1})
	must(t, err, "AttachFile")
	_ = f.Close()
	tok, err := a.Store(d2pay{A: 1})
	must(t, err, "Store")
	if v, err := b.Load(tok); err != nil || v.A != 1 {
		t.Fatalf("Load through the file handle: %v %v", v, err)
	}
	must(t, b.Free(tok), "Free")
	must(t, a.Close(), "creator Close")
	must(t, b.Close(), "attached Close")
	if _, err := os.Stat(filepath.Join(dir, filePrefix+"disk")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("segment file still there after the last Close (by the AttachFile handle, Path %q): %v", b.Path(), err)
	}
}

// d2sendRaw sends one byte with the given descriptors attached (none when
// fds is empty).
func d2sendRaw(t *testing.T, c *net.UnixConn, fds ...int) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err := c.WriteMsgUnix([]byte{'c'}, oob, nil)
	must(t, err, "WriteMsgUnix")
}

// d2fdCount counts this process's open descriptors.
func d2fdCount(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	must(t, err, "read /proc/self/fd")
	return len(es)
}

// TestDiff2RecvFileMisuse: RecvFile and SendFile on closed sockets, a
// peer that sends no descriptor, two, three, one after closing, or
// hangs up: an error every time, never a panic, a hang or a leaked
// descriptor.
func TestDiff2RecvFileMisuse(t *testing.T) {
	s, err := CreateStoreMemfd[d2pay]("rf", StoreConfig{Slots: 2, Watch: -1})
	must(t, err, "CreateStoreMemfd")
	defer s.Close()
	seg := mustFile(t, s)
	null, err := os.Open(os.DevNull)
	must(t, err, "open /dev/null")
	defer null.Close()

	for _, typ := range []struct {
		name string
		typ  int
	}{{"stream", syscall.SOCK_STREAM}, {"dgram", syscall.SOCK_DGRAM}, {"seqpacket", syscall.SOCK_SEQPACKET}} {
		t.Run(typ.name, func(t *testing.T) {
			// A good hand-off works on every socket type.
			tx, rx := d2pair(t, typ.typ)
			must(t, SendFile(tx, seg), "SendFile")
			g, err := RecvFile(rx)
			must(t, err, "RecvFile")
			r, err := AttachStoreFile[d2pay](g, StoreConfig{Watch: -1})
			_ = g.Close()
			must(t, err, "AttachStoreFile of a received segment")
			_ = r.Close()

			before := d2fdCount(t)
			// No descriptor.
			d2sendRaw(t, tx)
			if _, err := RecvFile(rx); !errors.Is(err, ErrNotExist) {
				t.Errorf("RecvFile of a message without a descriptor: %v, want ErrNotExist", err)
			}
			// Two descriptors: refused, both closed.
			d2sendRaw(t, tx, int(seg.Fd()), int(null.Fd()))
			if f, err := RecvFile(rx); err == nil {
				t.Errorf("RecvFile of two descriptors returned %v, no error", f.Name())
				_ = f.Close()
			}
			// Three: more than the buffer holds.
			d2sendRaw(t, tx, int(seg.Fd()), int(null.Fd()), int(seg.Fd()))
			if f, err := RecvFile(rx); err == nil {
				t.Errorf("RecvFile of three descriptors returned %v, no error", f.Name())
				_ = f.Close()
			}
			if typ.typ == syscall.SOCK_STREAM {
				// A stream may merge the messages: read what is left.
				_ = rx.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				buf, oob := make([]byte, 16), make([]byte, 256)
				for {
					_, oobn, _, _, err := rx.ReadMsgUnix(buf, oob)
					if err != nil {
						break
					}
					if msgs, _ := unix.ParseSocketControlMessage(oob[:oobn]); len(msgs) > 0 {
						for _, m := range msgs {
							fds, _ := unix.ParseUnixRights(&m)
							for _, fd := range fds {
								_ = unix.Close(fd)
							}
						}
					}
				}
				_ = rx.SetReadDeadline(time.Time{})
			}
			if after := d2fdCount(t); after != before {
				t.Errorf("%d descriptors before the refused messages, %d after: RecvFile leaked", before, after)
			}
			// Sending a closed file, or nil.
			closed, err := os.Open(os.DevNull)
			must(t, err, "open")
			_ = closed.Close()
			d2noPanic(t, "SendFile of a closed file", func() {
				if err := SendFile(tx, closed); err == nil {
					t.Error("SendFile of a closed file: no error")
				}
			})
			// SendFile(c, nil): TestDiff2SendFileNilFile.
			// The peer hangs up: RecvFile returns (no hang) with an error.
			_ = tx.Close()
			if typ.typ != syscall.SOCK_DGRAM {
				d2within(t, 2*time.Second, "RecvFile after the peer closed", func() {
					if f, err := RecvFile(rx); err == nil {
						t.Errorf("RecvFile after the peer closed: %v, no error", f)
					}
				})
			}
			// Closed sockets, nil sockets.
			_ = rx.Close()
			d2noPanic(t, "RecvFile on a closed socket", func() {
				if _, err := RecvFile(rx); err == nil {
					t.Error("RecvFile on a closed socket: no error")
				}
			})
			d2noPanic(t, "SendFile on a closed socket", func() {
				if err := SendFile(tx, seg); err == nil {
					t.Error("SendFile on a closed socket: no error")
				}
			})
			// (A nil *net.UnixConn panics inside package net itself: not
			// tried.)
		})
	}
}

// d2attachBoth tries f with AttachFile and AttachStoreFile and checks the
// error matches one of want; the refused attach must leave f usable.
func d2attachBoth(t *testing.T, what string, f *os.File, want ...error) {
	t.Helper()
	storeCopy := strings.Contains(what, "copy")
	check := func(kind string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s of %s: attached", kind, what)
			return
		}
		if len(want) == 0 {
			return
		}
		if kind == "AttachFile" && storeCopy {
			// An arena attach of a store's bytes may stop at the kind.
			want = append(want[:len(want):len(want)], ErrMismatch)
		}
		for _, w := range want {
			if errors.Is(err, w) {
				return
			}
		}
		t.Errorf("%s of %s: %v, want one of %v", kind, what, err, want)
	}
	d2noPanic(t, "AttachFile of "+what, func() {
		d2within(t, 2*time.Second, "AttachFile of "+what, func() {
			a, err := AttachFile[d2pay](f, Config{Watch: -1})
			if err == nil {
				_ = a.Close()
			}
			check("AttachFile", err)
		})
	})
	d2noPanic(t, "AttachStoreFile of "+what, func() {
		d2within(t, 2*time.Second, "AttachStoreFile of "+what, func() {
			s, err := AttachStoreFile[d2pay](f, StoreConfig{Watch: -1})
			if err == nil {
				_ = s.Close()
			}
			check("AttachStoreFile", err)
		})
	})
}

// d2sealedCopy makes a sealed memfd holding the first n bytes of src,
// sized size.
func d2sealedCopy(t *testing.T, src []byte, size int64, sealIt bool) *os.File {
	t.Helper()
	m, err := memfdCreate("copy")
	must(t, err, "memfd")
	t.Cleanup(func() { _ = m.Close() })
	must(t, m.Truncate(size), "truncate")
	if len(src) > 0 {
		_, err = m.WriteAt(src, 0)
		must(t, err, "write")
	}
	if sealIt {
		must(t, seal(m), "seal")
	}
	return m
}

// TestDiff2AttachFileNotASegment: AttachFile / AttachStoreFile of files
// that are not segments (received through RecvFile like a real peer's):
// a documented sentinel, no panic, no fault, no hang.
func TestDiff2AttachFileNotASegment(t *testing.T) {
	s, err := CreateStoreMemfd[d2pay]("nas", StoreConfig{Slots: 4, Watch: -1, Edges: []message.Policy{{MaxItems: 2}}})
	must(t, err, "CreateStoreMemfd")
	defer s.Close()
	a, err := CreateMemfd[d2pay]("nasa", Config{Slots: 4, Watch: -1})
	must(t, err, "CreateMemfd")
	defer a.Close()
	storeBytes := append([]byte(nil), s.a.mem...)
	arenaBytes := append([]byte(nil), a.mem...)
	size := int64(len(storeBytes))

	tx, rx := d2pair(t, syscall.SOCK_STREAM)
	pass := func(f *os.File) *os.File {
		t.Helper()
		must(t, SendFile(tx, f), "SendFile")
		g, err := RecvFile(rx)
		must(t, err, "RecvFile")
		t.Cleanup(func() { _ = g.Close() })
		return g
	}

	// A regular file with garbage, an empty one, one with zeros.
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage")
	must(t, os.WriteFile(garbage, []byte("this is not a segment, not at all; it is long enough to hold a header? no......................................................................................................................................................................................................................................................................................................"), 0o600), "write")
	empty := filepath.Join(dir, "empty")
	must(t, os.WriteFile(empty, nil, 0o600), "write")
	zeros := filepath.Join(dir, "zeros")
	must(t, os.WriteFile(zeros, make([]byte, 1<<16), 0o600), "write")
	open := func(p string) *os.File {
		f, err := os.Open(p)
		must(t, err, "open")
		t.Cleanup(func() { _ = f.Close() })
		return f
	}
	d2attachBoth(t, "a regular file of garbage", pass(open(garbage)), ErrCorrupt, ErrNotExist)
	d2attachBoth(t, "an empty regular file", pass(open(empty)), ErrCorrupt, ErrNotExist)
	d2attachBoth(t, "a regular file of zeros", pass(open(zeros)), ErrCorrupt, ErrNotExist)
	// /dev/null and /dev/zero.
	d2attachBoth(t, "/dev/null", pass(open(os.DevNull)), ErrCorrupt, ErrNotExist)
	d2attachBoth(t, "/dev/zero", pass(open("/dev/zero")), ErrCorrupt, ErrNotExist)
	// A pipe (empty, and with a header's worth of segment bytes in it).
	pr, pw, err := os.Pipe()
	must(t, err, "pipe")
	defer pr.Close()
	defer pw.Close()
	d2attachBoth(t, "an empty pipe", pass(pr), ErrCorrupt, ErrNotExist)
	_, _ = pw.Write(storeBytes[:4096])
	d2attachBoth(t, "a pipe holding a segment's first page", pass(pr), ErrCorrupt, ErrNotExist)
	d2attachBoth(t, "the write end of a pipe", pass(pw), ErrCorrupt, ErrNotExist)
	// A socket and a directory.
	// No sentinel is documented for a descriptor that cannot be reopened
	// read-write (a socket, a directory, a closed file): any error will do.
	d2attachBoth(t, "a unix socket", func() *os.File {
		f, err := tx.File()
		must(t, err, "socket file")
		t.Cleanup(func() { _ = f.Close() })
		return f
	}())
	d2attachBoth(t, "a directory", pass(open(dir)))

	// Memfds: a sealed empty one, a sealed one of zeros, an unsealed copy,
	// a sealed copy of the wrong size (truncated, grown), copies of the
	// other kind or element type.
	d2attachBoth(t, "a sealed empty memfd", pass(d2sealedCopy(t, nil, 0, true)), ErrCorrupt, ErrNotExist)
	d2attachBoth(t, "a sealed memfd of zeros", pass(d2sealedCopy(t, nil, size, true)), ErrCorrupt, ErrNotExist)
	d2attachBoth(t, "an unsealed copy", pass(d2sealedCopy(t, storeBytes, size, false)), ErrCorrupt)
	d2attachBoth(t, "a sealed copy truncated to its header", pass(d2sealedCopy(t, storeBytes[:headerSize], headerSize, true)), ErrCorrupt)
	d2attachBoth(t, "a sealed copy one page short", pass(d2sealedCopy(t, storeBytes[:size-4096], size-4096, true)), ErrCorrupt)
	d2attachBoth(t, "a sealed copy one byte short", pass(d2sealedCopy(t, storeBytes[:size-1], size-1, true)), ErrCorrupt)
	d2attachBoth(t, "a sealed copy of half a header", pass(d2sealedCopy(t, storeBytes[:headerSize/2], headerSize/2, true)), ErrCorrupt)
	// A copy sealed against writes too: it cannot be mapped writable.
	ws := d2sealedCopy(t, storeBytes, size, false)
	_, err = unix.FcntlInt(ws.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE)
	must(t, err, "seal against writes")
	d2attachBoth(t, "a write-sealed copy", pass(ws))
	// A truncated copy on disk (a regular file).
	trunc := filepath.Join(dir, "trunc")
	must(t, os.WriteFile(trunc, storeBytes[:size/2], 0o600), "write")
	d2attachBoth(t, "a truncated copy on disk", pass(open(trunc)), ErrCorrupt)
	// Type mismatches: a store segment as an arena and vice versa, and
	// another element type.
	sc := pass(d2sealedCopy(t, storeBytes, size, true))
	if _, err := AttachFile[d2pay](sc, Config{Watch: -1}); !errors.Is(err, ErrMismatch) {
		t.Errorf("AttachFile of a store segment: %v, want ErrMismatch", err)
	}
	if _, err := AttachStoreFile[d2other](sc, StoreConfig{Watch: -1}); !errors.Is(err, ErrMismatch) {
		t.Errorf("AttachStoreFile[d2other] of a store of d2pay: %v, want ErrMismatch", err)
	}
	ac := pass(d2sealedCopy(t, arenaBytes, int64(len(arenaBytes)), true))
	if _, err := AttachStoreFile[d2pay](ac, StoreConfig{Watch: -1}); !errors.Is(err, ErrMismatch) {
		t.Errorf("AttachStoreFile of an arena segment: %v, want ErrMismatch", err)
	}
	if _, err := AttachFile[d2other](ac, Config{Watch: -1}); !errors.Is(err, ErrMismatch) {
		t.Errorf("AttachFile[d2other] of an arena of d2pay: %v, want ErrMismatch", err)
	}
	// A nil file and a closed file.
	d2attachBoth(t, "a nil file", nil, ErrNotExist, ErrCorrupt)
	cl := open(garbage)
	_ = cl.Close()
	d2attachBoth(t, "a closed file", cl)
	// The real segment still works after all that.
	tok, err := s.Put(message.Header{}, d2pay{A: 9})
	must(t, err, "Put")
	must(t, s.Free(tok), "Free")
	if s.Available() != 4 {
		t.Fatalf("Available %d", s.Available())
	}
}

// d2class names the sentinel an error matches, for comparing two stores'
// answers.
func d2class(err error) string {
	switch {
	case err == nil:
		return "nil"
	case errors.Is(err, ErrNotHeld):
		return "ErrNotHeld"
	case errors.Is(err, arena.ErrClosed):
		return "ErrClosed"
	case errors.Is(err, arena.ErrStale):
		return "ErrStale"
	case errors.Is(err, arena.ErrBadToken):
		return "ErrBadToken"
	case errors.Is(err, arena.ErrFull):
		return "ErrFull"
	case errors.Is(err, arena.ErrNilFunc):
		return "ErrNilFunc"
	case errors.Is(err, message.ErrTooManyRefs):
		return "ErrTooManyRefs"
	case errors.Is(err, message.ErrReferenced):
		return "ErrReferenced"
	case errors.Is(err, message.ErrEdgeFull):
		return "ErrEdgeFull"
	case errors.Is(err, message.ErrRejected):
		return "ErrRejected"
	case errors.Is(err, errD2Fill):
		return "fill"
	case errors.Is(err, context.Canceled):
		return "Canceled"
	}
	return "other: " + err.Error()
}

var errD2Fill = errors.New("diff2: fill refused")

// d2msg is one logical message, as both stores know it.
type d2msg struct {
	sh, ms token.Token
	refs   int
	hdr    message.Header // message's header as stored (its own Created stamp)
	hdrS   message.Header // shm's
	pay    d2pay
}

// d2diff runs one seeded random sequence against an shm Store and a
// message.Store and fails on the first difference that shm's docs do not
// document.
type d2diff struct {
	t      *testing.T
	r      *rand.Rand
	sh     *Store[d2pay]
	ms     *message.Store[d2pay]
	slots  int
	live   []*d2msg
	stale  [][2]token.Token // freed: shm, message
	seen   map[d2pay]bool   // every payload ever in the shm store (Loan)
	seq    uint64
	step   int
	closed bool
}

func (d *d2diff) fail(format string, args ...any) {
	d.t.Helper()
	d.t.Fatalf("seed step %d: %s", d.step, fmt.Sprintf(format, args...))
}

func (d *d2diff) same(op string, es, em error) {
	d.t.Helper()
	if cs, cm := d2class(es), d2class(em); cs != cm {
		d.fail("%s: shm %s (%v), message %s (%v)", op, cs, es, cm, em)
	}
}

func (d *d2diff) header() message.Header {
	d.seq++
	h := message.Header{Seq: d.seq, Trace: d.r.Uint64(), QoS: message.QoS(d.r.IntN(4)), Flags: message.Flags(d.r.IntN(8))}
	if d.r.IntN(2) == 0 {
		h.Created = int64(1 + d.r.IntN(1000))
	}
	if d.r.IntN(2) == 0 {
		h.Size = uint32(d.r.IntN(200))
	}
	if d.r.IntN(4) == 0 {
		h.Deadline = message.Now() + int64(time.Hour)
	}
	return h
}

func (d *d2diff) payload() d2pay {
	d.seq++
	p := d2pay{A: d.seq, B: d.r.Uint64()}
	for i := range p.C {
		p.C[i] = d.r.Uint32()
	}
	return p
}

// want is h with Put's defaults, given the stamp window.
func (d *d2diff) checkHeader(op string, got, h message.Header, before, after int64) {
	d.t.Helper()
	want := h
	if want.Size == 0 {
		want.Size = uint32(unsafe.Sizeof(d2pay{}))
	}
	if h.Created == 0 {
		if got.Created < before || got.Created > after {
			d.fail("%s: Created %d not stamped in [%d, %d]", op, got.Created, before, after)
		}
		want.Created = got.Created
	}
	if got != want {
		d.fail("%s: header %+v, want %+v", op, got, want)
	}
}

func (d *d2diff) full() bool { return len(d.live) == d.slots }

// token kinds besides live ones: stale, forged.
func (d *d2diff) badPair() (token.Token, token.Token, string) {
	switch d.r.IntN(6) {
	case 0:
		return token.Nil, token.Nil, "nil"
	case 1:
		idx := uint32(d.slots + d.r.IntN(5))
		if d.r.IntN(3) == 0 {
			idx = math.MaxUint32
		}
		return token.New(idx, 1), token.New(idx, 1), "out of range"
	case 2:
		idx := uint32(d.r.IntN(d.slots))
		return token.New(idx, 0), token.New(idx, 0), "generation 0"
	case 3:
		if len(d.live) > 0 {
			m := d.live[d.r.IntN(len(d.live))]
			return token.New(m.sh.Index(), m.sh.Generation()+1+uint32(d.r.IntN(3))),
				token.New(m.ms.Index(), m.ms.Generation()+1+uint32(d.r.IntN(3))), "future generation of a live slot"
		}
		fallthrough
	default:
		if len(d.stale) > 0 {
			p := d.stale[d.r.IntN(len(d.stale))]
			return p[0], p[1], "stale"
		}
		return token.Nil, token.Nil, "nil"
	}
}

func (d *d2diff) put(kind int) {
	h := d.header()
	p := d.payload()
	full := d.full()
	before := message.Now()
	var ts, tm token.Token
	var es, em error
	var hS, hM message.Header
	fillErr := d.r.IntN(5) == 0
	switch kind {
	case 0:
		ts, es = d.sh.Put(h, p)
		tm, em = d.ms.Put(h, p)
	case 1: // PutFunc: the slot must start zeroed with h (defaults applied)
		var seenS, seenM bool
		fill := func(name string, seen *bool, hdr *message.Header) func(m *message.Message[d2pay]) error {
			return func(m *message.Message[d2pay]) error {
				*seen = true
				if m.Payload != (d2pay{}) {
					d.fail("%s PutFunc: slot not zeroed: %+v", name, m.Payload)
				}
				*hdr = m.Header
				d.seen[p] = true
				if fillErr {
					m.Payload = p // written, then refused: must not leak
					return errD2Fill
				}
				m.Payload = p
				return nil
			}
		}
		ts, es = d.sh.PutFunc(h, fill("shm", &seenS, &hS))
		tm, em = d.ms.PutFunc(h, fill("message", &seenM, &hM))
		if seenS != seenM {
			d.fail("PutFunc fill called: shm %v, message %v (full %v)", seenS, seenM, full)
		}
		if seenS {
			now := message.Now()
			d.checkHeader("shm PutFunc fill", hS, h, before, now)
			d.checkHeader("message PutFunc fill", hM, h, before, now)
		}
	case 2: // Loan on shm; Put on message
		var m *message.Message[d2pay]
		ts, m, es = d.sh.Loan(h)
		if es == nil {
			if m.Payload != (d2pay{}) && !d.seen[m.Payload] {
				d.fail("Loan: payload %+v was never a payload of this store", m.Payload)
			}
			d.checkHeader("Loan header", m.Header, h, before, message.Now())
			m.Payload = p
		}
		tm, em = d.ms.Put(h, p)
	case 3: // PutWait with a cancelled context
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		ts, es = d.sh.PutWait(ctx, h, p)
		tm, em = d.ms.PutWait(ctx, h, p)
	}
	after := message.Now()
	d.same(fmt.Sprintf("Put kind %d (full %v)", kind, full), es, em)
	if full && es == nil {
		d.fail("Put kind %d succeeded on a full store", kind)
	}
	if !full && es != nil && !(kind == 1 && fillErr) {
		d.fail("Put kind %d failed on a store with room: %v", kind, es)
	}
	if es != nil {
		if !ts.IsNil() || !tm.IsNil() {
			d.fail("failed Put returned tokens %v %v", ts, tm)
		}
		return
	}
	d.seen[p] = true
	hs, err := d.sh.Header(ts)
	if err != nil {
		d.fail("Header of a new message: %v", err)
	}
	hm, err := d.ms.Header(tm)
	if err != nil {
		d.fail("message Header of a new message: %v", err)
	}
	d.checkHeader("shm Header after put", hs, h, before, after)
	d.checkHeader("message Header after put", hm, h, before, after)
	d.live = append(d.live, &d2msg{sh: ts, ms: tm, refs: 1, hdrS: hs, hdr: hm, pay: p})
}

func (d *d2diff) pick() (*d2msg, int) {
	i := d.r.IntN(len(d.live))
	return d.live[i], i
}

func (d *d2diff) drop(i int) {
	m := d.live[i]
	d.stale = append(d.stale, [2]token.Token{m.sh, m.ms})
	d.live = append(d.live[:i], d.live[i+1:]...)
}

func (d *d2diff) checkRefs(m *d2msg) {
	d.t.Helper()
	all, mine, es := d.sh.Refs(m.sh)
	n, em := d.ms.Refs(m.ms)
	d.same("Refs", es, em)
	if all != m.refs || mine != m.refs || n != m.refs {
		d.fail("Refs: shm all %d mine %d, message %d, model %d", all, mine, n, m.refs)
	}
}

// tokenOps runs every token-taking call on the pair and compares.
func (d *d2diff) tokenOps(ts, tm token.Token, what string) {
	d.t.Helper()
	_, es := d.sh.Header(ts)
	_, em := d.ms.Header(tm)
	d.same("Header of "+what, es, em)
	ranS, ranM := false, false
	es = d.sh.View(ts, func(*message.Message[d2pay]) { ranS = true })
	em = d.ms.View(tm, func(*message.Message[d2pay]) { ranM = true })
	d.same("View of "+what, es, em)
	es = d.sh.Update(ts, func(*message.Message[d2pay]) { ranS = true })
	em = d.ms.Update(tm, func(*message.Message[d2pay]) { ranM = true })
	d.same("Update of "+what, es, em)
	if ranS || ranM {
		d.fail("callback ran on %s: shm %v message %v", what, ranS, ranM)
	}
	d.same("Retain of "+what, d.sh.Retain(ts), d.ms.Retain(tm))
	d.same("Free of "+what, d.sh.Free(ts), d.ms.Free(tm))
	_, _, es = d.sh.Refs(ts)
	_, em = d.ms.Refs(tm)
	d.same("Refs of "+what, es, em)
}

func (d *d2diff) op() {
	if d.closed {
		d.afterClose()
		return
	}
	switch k := d.r.IntN(20); {
	case k < 6:
		d.put(d.r.IntN(4))
	case k < 8 && len(d.live) > 0: // Header / View
		m, _ := d.pick()
		hs, es := d.sh.Header(m.sh)
		hm, em := d.ms.Header(m.ms)
		d.same("Header", es, em)
		if hs != m.hdrS || hm != m.hdr {
			d.fail("Header: shm %+v (model %+v), message %+v (model %+v)", hs, m.hdrS, hm, m.hdr)
		}
		var ps, pm d2pay
		d.same("View", d.sh.View(m.sh, func(x *message.Message[d2pay]) { ps = x.Payload; hs = x.Header }),
			d.ms.View(m.ms, func(x *message.Message[d2pay]) { pm = x.Payload; hm = x.Header }))
		if ps != m.pay || pm != m.pay || hs != m.hdrS || hm != m.hdr {
			d.fail("View: shm %+v, message %+v, model %+v", ps, pm, m.pay)
		}
	case k < 9 && len(d.live) > 0: // Update payload and header
		m, _ := d.pick()
		np := d.payload()
		tr := d.r.Uint64()
		d.same("Update",
			d.sh.Update(m.sh, func(x *message.Message[d2pay]) { x.Payload = np; x.Header.Trace = tr }),
			d.ms.Update(m.ms, func(x *message.Message[d2pay]) { x.Payload = np; x.Header.Trace = tr }))
		m.pay, m.hdrS.Trace, m.hdr.Trace = np, tr, tr
		d.seen[np] = true
	case k < 11 && len(d.live) > 0: // Retain
		m, _ := d.pick()
		d.same("Retain", d.sh.Retain(m.sh), d.ms.Retain(m.ms))
		m.refs++
		d.checkRefs(m)
	case k < 14 && len(d.live) > 0: // Free
		m, i := d.pick()
		d.same("Free", d.sh.Free(m.sh), d.ms.Free(m.ms))
		if m.refs--; m.refs == 0 {
			d.drop(i)
			d.tokenOps(m.sh, m.ms, "a just-freed message")
		} else {
			d.checkRefs(m)
		}
	case k < 15 && len(d.live) > 0: // Free (or Retain) inside a View of the same token
		m, i := d.pick()
		retain := d.r.IntN(2) == 0
		var ies, iem error
		es := d.sh.View(m.sh, func(*message.Message[d2pay]) {
			if retain {
				ies = d.sh.Retain(m.sh)
			} else {
				ies = d.sh.Free(m.sh)
			}
		})
		em := d.ms.View(m.ms, func(*message.Message[d2pay]) {
			if retain {
				iem = d.ms.Retain(m.ms)
			} else {
				iem = d.ms.Free(m.ms)
			}
		})
		d.same("View around Free/Retain", es, em)
		d.same("Free/Retain inside View", ies, iem)
		if retain {
			m.refs++
			d.checkRefs(m)
		} else if m.refs--; m.refs == 0 {
			d.drop(i)
			d.tokenOps(m.sh, m.ms, "a message freed inside View")
		}
	case k < 17: // stale and forged tokens
		ts, tm, what := d.badPair()
		d.tokenOps(ts, tm, what)
	case k < 18: // nil callbacks
		ts, tm := token.Nil, token.Nil
		if len(d.live) > 0 {
			m, _ := d.pick()
			ts, tm = m.sh, m.ms
		}
		d.same("View(nil)", d.sh.View(ts, nil), d.ms.View(tm, nil))
		d.same("Update(nil)", d.sh.Update(ts, nil), d.ms.Update(tm, nil))
		_, es := d.sh.PutFunc(message.Header{}, nil)
		_, em := d.ms.PutFunc(message.Header{}, nil)
		d.same("PutFunc(nil)", es, em)
	default: // fill the store, or empty it
		if d.r.IntN(2) == 0 {
			for !d.full() {
				d.put(0)
			}
			d.put(d.r.IntN(4)) // ErrFull
		} else {
			for len(d.live) > 0 {
				m := d.live[0]
				for range m.refs {
					d.same("Free to empty", d.sh.Free(m.sh), d.ms.Free(m.ms))
				}
				m.refs = 0
				d.drop(0)
			}
		}
	}
	if d.sh.Available() != d.ms.Available() || d.sh.Available() != d.slots-len(d.live) {
		d.fail("Available: shm %d, message %d, model %d", d.sh.Available(), d.ms.Available(), d.slots-len(d.live))
	}
	if d.sh.Capacity() != d.ms.Capacity() {
		d.fail("Capacity: shm %d, message %d", d.sh.Capacity(), d.ms.Capacity())
	}
}

// afterClose: every call is ErrClosed in both, but for Free of a
// reference outstanding at Close (message: nil once; shm: the references
// were dropped at Close, documented).
func (d *d2diff) afterClose() {
	ts, tm := token.Nil, token.Nil
	if len(d.live) > 0 {
		m, _ := d.pick()
		ts, tm = m.sh, m.ms
	} else if len(d.stale) > 0 {
		p := d.stale[d.r.IntN(len(d.stale))]
		ts, tm = p[0], p[1]
	}
	if ts.IsNil() {
		return
	}
	_, es := d.sh.Header(ts)
	_, em := d.ms.Header(tm)
	d.same("Header after Close", es, em)
	d.same("View after Close", d.sh.View(ts, func(*message.Message[d2pay]) {}), d.ms.View(tm, func(*message.Message[d2pay]) {}))
	d.same("Update after Close", d.sh.Update(ts, func(*message.Message[d2pay]) {}), d.ms.Update(tm, func(*message.Message[d2pay]) {}))
	d.same("Retain after Close", d.sh.Retain(ts), d.ms.Retain(tm))
	_, _, es = d.sh.Refs(ts)
	_, em = d.ms.Refs(tm)
	d.same("Refs after Close", es, em)
	_, es = d.sh.Put(message.Header{}, d2pay{})
	_, em = d.ms.Put(message.Header{}, d2pay{})
	d.same("Put after Close", es, em)
	_, es = d.sh.PutFunc(message.Header{}, func(*message.Message[d2pay]) error { return nil })
	_, em = d.ms.PutFunc(message.Header{}, func(*message.Message[d2pay]) error { return nil })
	d.same("PutFunc after Close", es, em)
	_, es = d.sh.PutWait(context.Background(), message.Header{}, d2pay{})
	_, em = d.ms.PutWait(context.Background(), message.Header{}, d2pay{})
	d.same("PutWait after Close", es, em)
	d.same("Close again", d.sh.Close(), d.ms.Close())
	// Free: documented difference, checked on its own.
	if es := d.sh.Free(ts); !errors.Is(es, ErrClosed) {
		d.fail("shm Free after Close: %v, want ErrClosed (its references were dropped at Close)", es)
	}
}

func d2newPair(t *testing.T, slots int) (*Store[d2pay], *message.Store[d2pay]) {
	t.Helper()
	sh, err := CreateStore[d2pay]("diff", StoreConfig{Slots: slots, Shards: 2, Dir: memDir(t), Watch: -1})
	must(t, err, "CreateStore")
	t.Cleanup(func() { _ = sh.Close() })
	ms, err := message.NewStore[d2pay](arena.Config{Slots: slots, Shards: 1})
	must(t, err, "NewStore")
	t.Cleanup(func() { _ = ms.Close() })
	return sh, ms
}

// TestDiff2StoreRandom: seeded random sequences of Put, PutFunc, Loan,
// PutWait, Header, View, Update, Retain, Free (also inside a View), Refs,
// Available, Capacity, stale and forged tokens, nil callbacks, full and
// empty stores, then Close and more calls, on an shm Store and a
// message.Store side by side.
func TestDiff2StoreRandom(t *testing.T) {
	for seed := uint64(1); seed <= 6; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			slots := 3 + int(seed%4)*2
			sh, ms := d2newPair(t, slots)
			d := &d2diff{t: t, r: rand.New(rand.NewPCG(seed, 0xd1ff2)), sh: sh, ms: ms, slots: slots, seen: map[d2pay]bool{}}
			const steps = 1500
			for d.step = 0; d.step < steps; d.step++ {
				d.op()
			}
			// Close with references outstanding: both report
			// ErrReferenced (or nil with none), then more calls.
			if len(d.live) == 0 {
				d.put(0)
			}
			es, em := d.sh.Close(), d.ms.Close()
			d.same("Close with references held", es, em)
			d.closed = true
			for range 50 {
				d.step++
				d.op()
			}
		})
	}
}

// d2owned is one logical message in the two-handle test.
type d2owned struct {
	sh, ms token.Token
	held   [2]int // references held by handle 0 and handle 1
	queued int    // references queued on the edge
}

func (m *d2owned) total() int { return m.held[0] + m.held[1] + m.queued }

// TestDiff2TwoHandlesOwnership: two handles of one store (two processes'
// worth of records) pass tokens through an edge, side by side with a
// message.Store and message.Edge. The totals, the FIFO order, Available and
// staleness must agree with message; on top, a handle that holds no
// reference gets ErrNotHeld from Free, Retain and Send and changes nothing.
func TestDiff2TwoHandlesOwnership(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			const slots, maxItems = 6, 4
			dir := memDir(t)
			a, err := CreateStore[d2pay]("own", StoreConfig{Slots: slots, Shards: 2, Dir: dir, Watch: -1,
				Edges: []message.Policy{{MaxItems: maxItems, Admission: message.DropNewest}}})
			must(t, err, "CreateStore")
			t.Cleanup(func() { _ = a.Close() })
			b, err := AttachStore[d2pay]("own", StoreConfig{Dir: dir, Watch: -1})
			must(t, err, "AttachStore")
			t.Cleanup(func() { _ = b.Close() })
			hs := [2]*Store[d2pay]{a, b}
			ms, err := message.NewStore[d2pay](arena.Config{Slots: slots, Shards: 1})
			must(t, err, "NewStore")
			t.Cleanup(func() { _ = ms.Close() })
			me, err := message.NewEdge(ms, message.Policy{MaxItems: maxItems, Admission: message.DropNewest})
			must(t, err, "NewEdge")
			r := rand.New(rand.NewPCG(seed, 0x0e5))
			var live []*d2owned
			var stale [][2]token.Token
			var queue []*d2owned // FIFO, as both edges should deliver
			ctx := context.Background()
			step := 0
			fail := func(format string, args ...any) {
				t.Helper()
				t.Fatalf("step %d: %s", step, fmt.Sprintf(format, args...))
			}
			same := func(op string, es, em error) {
				t.Helper()
				if cs, cm := d2class(es), d2class(em); cs != cm {
					fail("%s: shm %s (%v), message %s (%v)", op, cs, es, cm, em)
				}
			}
			refs := func(m *d2owned) {
				t.Helper()
				for h := range 2 {
					all, mine, err := hs[h].Refs(m.sh)
					if err != nil || all != m.total() || mine != m.held[h] {
						fail("handle %d Refs %v: all %d mine %d %v, model total %d held %v queued %d", h, m.sh, all, mine, err, m.total(), m.held, m.queued)
					}
				}
				if n, err := ms.Refs(m.ms); err != nil || n != m.total() {
					fail("message Refs: %d %v, model %d", n, err, m.total())
				}
			}
			gone := func(m *d2owned) {
				for i, x := range live {
					if x == m {
						live = append(live[:i], live[i+1:]...)
						break
					}
				}
				stale = append(stale, [2]token.Token{m.sh, m.ms})
				for h := range 2 {
					_, err := hs[h].Header(m.sh)
					wantErr(t, err, ErrStale, "Header of a freed message")
					wantErr(t, hs[h].Free(m.sh), ErrStale, "Free of a freed message")
					wantErr(t, hs[h].Retain(m.sh), ErrStale, "Retain of a freed message")
					wantErr(t, hs[h].Edge(0).TrySend(m.sh), ErrStale, "TrySend of a freed message")
				}
				_, err := ms.Header(m.ms)
				wantErr(t, err, ErrStale, "message Header of a freed message")
			}
			for step = 0; step < 1200; step++ {
				h := r.IntN(2)
				x := hs[h]
				var m *d2owned
				if len(live) > 0 {
					m = live[r.IntN(len(live))]
				}
				switch k := r.IntN(10); {
				case k < 2:
					full := len(live) == slots
					ts, es := x.Put(message.Header{Seq: uint64(step)}, d2pay{A: uint64(step)})
					tm, em := ms.Put(message.Header{Seq: uint64(step)}, d2pay{A: uint64(step)})
					same("Put", es, em)
					if full != (es != nil) {
						fail("Put on full=%v: %v", full, es)
					}
					if es == nil {
						n := &d2owned{sh: ts, ms: tm}
						n.held[h] = 1
						live = append(live, n)
						refs(n)
					}
				case k < 4 && m != nil: // Retain
					if m.held[h] == 0 {
						wantErr(t, x.Retain(m.sh), ErrNotHeld, "Retain by a non-holder")
					} else {
						same("Retain", x.Retain(m.sh), ms.Retain(m.ms))
						m.held[h]++
					}
					refs(m)
				case k < 6 && m != nil: // Free
					if m.held[h] == 0 {
						wantErr(t, x.Free(m.sh), ErrNotHeld, "Free by a non-holder")
						refs(m)
						break
					}
					same("Free", x.Free(m.sh), ms.Free(m.ms))
					m.held[h]--
					if m.total() == 0 {
						gone(m)
					} else {
						refs(m)
					}
				case k < 8 && m != nil: // Send
					if m.held[h] == 0 {
						wantErr(t, x.Edge(0).TrySend(m.sh), ErrNotHeld, "TrySend by a non-holder")
						wantErr(t, x.Edge(0).Send(ctx, m.sh), ErrNotHeld, "Send by a non-holder")
						refs(m)
						break
					}
					es, em := x.Edge(0).TrySend(m.sh), me.TrySend(m.ms)
					same("TrySend", es, em)
					if es == nil {
						m.held[h]--
						m.queued++
						queue = append(queue, m)
					} else if len(queue) < maxItems {
						fail("TrySend refused below the cap: %v", es)
					}
					refs(m)
				case k < 9: // Recv
					ts, oks := x.Edge(0).TryRecv()
					tm, okm := me.TryRecv()
					if oks != okm || oks != (len(queue) > 0) {
						fail("TryRecv: shm %v, message %v, model %d queued", oks, okm, len(queue))
					}
					if oks {
						q := queue[0]
						queue = queue[1:]
						if ts != q.sh || tm != q.ms {
							fail("TryRecv order: shm %v message %v, want %v %v", ts, tm, q.sh, q.ms)
						}
						q.queued--
						q.held[h]++
						refs(q)
					}
					if x.Edge(0).Len() != len(queue) || me.Len() != len(queue) {
						fail("Len: shm %d, message %d, model %d", x.Edge(0).Len(), me.Len(), len(queue))
					}
				default: // stale tokens from either handle
					if len(stale) > 0 {
						p := stale[r.IntN(len(stale))]
						same("Free of stale", x.Free(p[0]), ms.Free(p[1]))
						same("Retain of stale", x.Retain(p[0]), ms.Retain(p[1]))
						_, es := x.Header(p[0])
						_, em := ms.Header(p[1])
						same("Header of stale", es, em)
					}
				}
				if a.Available() != ms.Available() || b.Available() != ms.Available() {
					fail("Available: shm %d/%d, message %d", a.Available(), b.Available(), ms.Available())
				}
			}
			// Close the second handle with references held: they are
			// dropped; what only it held is freed, the rest survives.
			var heldB int
			for _, m := range live {
				heldB += m.held[1]
			}
			err = b.Close()
			if heldB > 0 {
				wantErr(t, err, message.ErrReferenced, "Close of a handle holding references")
			} else if err != nil {
				t.Fatalf("Close of a handle holding nothing: %v", err)
			}
			for _, m := range append([]*d2owned(nil), live...) {
				for range m.held[1] {
					must(t, ms.Free(m.ms), "message Free of the closed handle's share")
				}
				m.held[1] = 0
				if m.total() == 0 {
					_, err := a.Header(m.sh)
					wantErr(t, err, ErrStale, "Header of a message only the closed handle held")
					for i, x := range live {
						if x == m {
							live = append(live[:i], live[i+1:]...)
							break
						}
					}
					continue
				}
				if all, mine, err := a.Refs(m.sh); err != nil || all != m.total() || mine != m.held[0] {
					t.Fatalf("after b.Close: Refs %v: %d %d %v, model %d %d", m.sh, all, mine, err, m.total(), m.held[0])
				}
			}
			if a.Available() != ms.Available() {
				t.Fatalf("Available after b.Close: shm %d, message %d", a.Available(), ms.Available())
			}
			// A new handle attaches and holds nothing of what is live.
			c, err := AttachStore[d2pay]("own", StoreConfig{Dir: dir, Watch: -1})
			must(t, err, "AttachStore again")
			defer c.Close()
			for _, m := range live {
				if _, mine, err := c.Refs(m.sh); err != nil || mine != 0 {
					t.Fatalf("a new handle (likely in the closed one's record) holds %d of %v: %v", mine, m.sh, err)
				}
				wantErr(t, c.Free(m.sh), ErrNotHeld, "Free by the new handle")
			}
			// Drain the queue through the new handle and free everything.
			for len(queue) > 0 {
				q := queue[0]
				queue = queue[1:]
				got, ok := c.Edge(0).TryRecv()
				if !ok || got != q.sh {
					t.Fatalf("draining: %v %v, want %v", got, ok, q.sh)
				}
				must(t, c.Free(got), "Free drained")
				q.queued--
			}
			for _, m := range live {
				for range m.held[0] {
					must(t, a.Free(m.sh), "Free by a")
				}
			}
			if a.Available() != slots {
				t.Fatalf("Available %d after everything was freed, want %d", a.Available(), slots)
			}
		})
	}
}

// TestDiff2MalformedTokenAfterClose: after Close, message.Store answers
// arena.ErrClosed to every call "whatever its token", and so does
// arena.Arena ("After Close, every method returns ErrClosed"); shm promises
// the same semantics and sentinels. shm checks the token before the closed
// handle, so a Nil, out-of-range or generation-0 token after Close gets
// ErrBadToken (and View/Update(nil) ErrNilFunc) instead of ErrClosed.
func TestDiff2MalformedTokenAfterClose(t *testing.T) {
	sh, ms := d2newPair(t, 4)
	ar, err := arena.New[d2pay](arena.Config{Slots: 4, Shards: 1})
	must(t, err, "arena.New")
	sa := segment[d2pay](t, 1, Config{Slots: 4})[0]
	must(t, sh.Close(), "shm Close")
	must(t, ms.Close(), "message Close")
	must(t, ar.Close(), "arena Close")
	must(t, sa.Close(), "shm arena Close")
	toks := map[string]token.Token{
		"nil":          token.Nil,
		"out of range": token.New(100, 1),
		"generation 0": token.New(1, 0),
	}
	var diffs []string
	for what, tok := range toks {
		_, es := sh.Header(tok)
		_, em := ms.Header(tok)
		calls := []struct {
			op     string
			es, em error
		}{
			{"Store.Header", es, em},
			{"Store.View", sh.View(tok, func(*message.Message[d2pay]) {}), ms.View(tok, func(*message.Message[d2pay]) {})},
			{"Store.Update", sh.Update(tok, func(*message.Message[d2pay]) {}), ms.Update(tok, func(*message.Message[d2pay]) {})},
			{"Store.Retain", sh.Retain(tok), ms.Retain(tok)},
			{"Store.Free", sh.Free(tok), ms.Free(tok)},
			{"Store.View(nil)", sh.View(tok, nil), ms.View(tok, nil)},
			{"Arena.Free", sa.Free(tok), ar.Free(tok)},
			{"Arena.View", sa.View(tok, func(*d2pay) {}), ar.View(tok, func(*d2pay) {})},
		}
		_, _, es = sh.Refs(tok)
		_, em = ms.Refs(tok)
		calls = append(calls, struct {
			op     string
			es, em error
		}{"Store.Refs", es, em})
		_, es = sa.Load(tok)
		_, em = ar.Load(tok)
		calls = append(calls, struct {
			op     string
			es, em error
		}{"Arena.Load", es, em})
		for _, c := range calls {
			if !errors.Is(c.em, ErrClosed) {
				t.Logf("(reference %s of a %s token after Close: %v)", c.op, what, c.em)
				continue
			}
			if !errors.Is(c.es, ErrClosed) {
				diffs = append(diffs, fmt.Sprintf("%s of a %s token after Close: shm %v, in-process %v", c.op, what, c.es, c.em))
			}
		}
	}
	if len(diffs) > 0 {
		t.Errorf("%d calls with a malformed token after Close answer something other than ErrClosed, e.g.:\n  %s\n  %s",
			len(diffs), diffs[0], diffs[len(diffs)-1])
	}
}

// TestDiff2GenerationMaxToken: a token of generation 2^32-1. arena and
// message never issue it (arena retires the slot first) and answer
// ErrBadToken; shm does issue generation 2^32-1 (it retires on the Free
// after it) and answers ErrStale for a slot not at it. message's doc says
// an in-range foreign token is ErrStale "with high probability", so the
// shm answer is within the documented contract; only the sentinel differs
// from message's implementation. Both must refuse it and run no callback.
func TestDiff2GenerationMaxToken(t *testing.T) {
	sh, ms := d2newPair(t, 4)
	ts, err := sh.Put(message.Header{}, d2pay{})
	must(t, err, "Put")
	tm, err := ms.Put(message.Header{}, d2pay{})
	must(t, err, "message Put")
	fs := token.New(ts.Index(), math.MaxUint32)
	fm := token.New(tm.Index(), math.MaxUint32)
	_, es := sh.Header(fs)
	_, em := ms.Header(fm)
	t.Logf("Header of generation 2^32-1: shm %s, message %s", d2class(es), d2class(em))
	for _, c := range []struct {
		op string
		e  error
	}{
		{"Header", es},
		{"View", sh.View(fs, func(*message.Message[d2pay]) { t.Error("View ran") })},
		{"Update", sh.Update(fs, func(*message.Message[d2pay]) { t.Error("Update ran") })},
		{"Retain", sh.Retain(fs)},
		{"Free", sh.Free(fs)},
	} {
		if !errors.Is(c.e, ErrStale) && !errors.Is(c.e, ErrBadToken) {
			t.Errorf("shm %s of generation 2^32-1: %v", c.op, c.e)
		}
	}
	if all, mine, err := sh.Refs(ts); all != 1 || mine != 1 || err != nil {
		t.Fatalf("Refs of the live message after the forgeries: %d %d %v", all, mine, err)
	}
	must(t, sh.Free(ts), "Free")
	must(t, ms.Free(tm), "message Free")
}

// TestDiff2FreeAfterCloseDocumented: message.Store lets each reference
// outstanding at Close be freed once (nil); shm's Close drops them
// ("Close detaches this process. The references it still holds are
// dropped"), so a later Free is ErrClosed. Documented difference; this
// pins shm's side of it and that the message nobody holds is gone for the
// other handle.
func TestDiff2FreeAfterCloseDocumented(t *testing.T) {
	dir := memDir(t)
	sh, err := CreateStore[d2pay]("fac", StoreConfig{Slots: 2, Dir: dir, Watch: -1})
	must(t, err, "CreateStore")
	peer, err := AttachStore[d2pay]("fac", StoreConfig{Dir: dir, Watch: -1})
	must(t, err, "AttachStore")
	defer peer.Close()
	ms, err := message.NewStore[d2pay](arena.Config{Slots: 2})
	must(t, err, "NewStore")
	ts, _ := sh.Put(message.Header{}, d2pay{})
	tm, _ := ms.Put(message.Header{}, d2pay{})
	wantErr(t, sh.Close(), message.ErrReferenced, "shm Close")
	wantErr(t, ms.Close(), message.ErrReferenced, "message Close")
	if err := ms.Free(tm); err != nil {
		t.Fatalf("message Free of an outstanding reference after Close: %v", err)
	}
	wantErr(t, sh.Free(ts), ErrClosed, "shm Free after Close")
	_, err = peer.Header(ts)
	wantErr(t, err, ErrStale, "peer Header of the dropped message")
	if peer.Available() != 2 {
		t.Fatalf("Available %d", peer.Available())
	}
}

// TestDiff2StoreMethodSet: "Store (CreateStore, AttachStore) is
// message.Store plus a fixed set of edges". message.Store's contract
// includes Tokens and Trim (CONTRACT.md, Additions). shm.Store had
// neither, and its doc did not list them as left out; it has Tokens now,
// and the package doc says Trim is left out and why.
func TestDiff2StoreMethodSet(t *testing.T) {
	var s any = (*Store[d2pay])(nil)
	checks := map[string]bool{}
	_, checks["Put"] = s.(interface {
		Put(message.Header, d2pay) (token.Token, error)
	})
	_, checks["PutWait"] = s.(interface {
		PutWait(context.Context, message.Header, d2pay) (token.Token, error)
	})
	_, checks["PutFunc"] = s.(interface {
		PutFunc(message.Header, func(*message.Message[d2pay]) error) (token.Token, error)
	})
	_, checks["HeaderStore"] = s.(message.HeaderStore)
	_, checks["Tokens"] = s.(interface {
		Tokens() iter.Seq[token.Token]
	})
	for _, name := range []string{"Put", "PutWait", "PutFunc", "HeaderStore", "Tokens"} {
		if !checks[name] {
			t.Errorf("shm.Store lacks message.Store's %s", name)
		}
	}
}

// TestDiff2SendFileNilFile: SendFile of a nil *os.File panics (its error
// path calls f.Name() on nil); AttachFile(nil) is handled (ErrNotExist),
// so a nil file is an anticipated input.
func TestDiff2SendFileNilFile(t *testing.T) {
	tx, _ := d2pair(t, syscall.SOCK_STREAM)
	d2noPanic(t, "SendFile(c, nil)", func() {
		if err := SendFile(tx, nil); err == nil {
			t.Error("SendFile of a nil file: no error")
		}
	})
}
