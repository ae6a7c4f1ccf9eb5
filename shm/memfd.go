package shm

import (
	"fmt"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/cella-go/cella/message"
	"golang.org/x/sys/unix"
)

// A segment may also live in an anonymous memory file (memfd_create)
// instead of a file under /dev/shm. It is sealed once sized: no process can
// shrink or grow it, so no peer can truncate it under the others (SIGBUS),
// and nothing is left behind: the kernel frees it when the last process
// holding it closes it or dies. It has no name to attach by; a process
// hands it over as a file: File, then exec.Cmd.ExtraFiles for a child, or
// SendFile and RecvFile over a unix socket for an unrelated process.
//
// Each attached process needs its own open file description, because its
// liveness is an OFD lock: AttachFile and File both reopen the file through
// /proc/self/fd, so a descriptor that is passed around never carries
// anyone's lock.

const seals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

func memfdCreate(name string) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("shm: memfd_create %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "memfd:"+name), nil
}

// seal forbids resizing the (already sized) memfd f, and further seals.
func seal(f *os.File) error {
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		return fmt.Errorf("shm: seal %s: %w", f.Name(), err)
	}
	return nil
}

// reopen opens f again: a new open file description of the same file.
func reopen(f *os.File) (*os.File, error) {
	g, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(int(f.Fd())), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("shm: reopen %s: %w", f.Name(), err)
	}
	return g, nil
}

// CreateMemfd is Create in a sealed anonymous memory file; name is only a
// label (it shows in /proc/<pid>/fd). Other processes attach with
// AttachFile.
func CreateMemfd[T any](name string, cfg Config) (*Arena[T], error) {
	if cfg.Slots <= 0 || uint64(cfg.Slots) > MaxSlots {
		return nil, fmt.Errorf("%w: Slots = %d, must be in [1, %d]", ErrInvalidConfig, cfg.Slots, uint64(MaxSlots))
	}
	s, err := createSeg(name, segSpec{typ: reflect.TypeFor[T](), kind: kindArena, slots: cfg.Slots, shards: cfg.Shards,
		memfd: true, watch: cfg.Watch})
	if err != nil {
		return nil, err
	}
	return &Arena[T]{s}, nil
}

// AttachFile attaches this process to the segment in f: a file from File
// in another process (received over a unix socket or inherited), or an
// open segment file under /dev/shm. f stays the caller's: close it when
// convenient. Only cfg.Watch is used.
func AttachFile[T any](f *os.File, cfg Config) (*Arena[T], error) {
	s, err := attachFile(f, reflect.TypeFor[T](), kindArena, cfg.Watch)
	if err != nil {
		return nil, err
	}
	return &Arena[T]{s}, nil
}

// CreateStoreMemfd is CreateStore in a sealed anonymous memory file; other
// processes attach with AttachStoreFile.
func CreateStoreMemfd[P any](name string, cfg StoreConfig) (*Store[P], error) {
	return createStore[P](name, cfg, true)
}

// AttachStoreFile attaches this process to the store segment in f (see
// AttachFile). Only cfg.Watch is used.
func AttachStoreFile[P any](f *os.File, cfg StoreConfig) (*Store[P], error) {
	a, err := attachFile(f, reflect.TypeFor[message.Message[P]](), kindStore, cfg.Watch)
	if err != nil {
		return nil, err
	}
	return &Store[P]{a}, nil
}

func attachFile(f *os.File, typ reflect.Type, kind uint32, watch time.Duration) (*seg, error) {
	if f == nil {
		return nil, fmt.Errorf("%w: nil file", ErrNotExist)
	}
	g, err := reopen(f)
	if err != nil {
		return nil, err
	}
	// What the descriptor is: a memfd links to "/memfd:<name> (deleted)";
	// a file (under /dev/shm or any Config.Dir) to its path, which Close
	// needs to remove it as the last process out, and Path reports.
	// (F_GET_SEALS cannot tell: tmpfs answers it for every file.)
	link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(g.Fd())))
	if err != nil {
		_ = g.Close()
		return nil, fmt.Errorf("shm: what %s is: %w", f.Name(), err)
	}
	anon := strings.HasPrefix(link, "/memfd:")
	path := link
	if anon {
		got, err := unix.FcntlInt(g.Fd(), unix.F_GET_SEALS, 0)
		if err != nil {
			_ = g.Close()
			return nil, fmt.Errorf("shm: seals of %s: %w", f.Name(), err)
		}
		if got&(unix.F_SEAL_SHRINK|unix.F_SEAL_GROW) != unix.F_SEAL_SHRINK|unix.F_SEAL_GROW {
			_ = g.Close()
			return nil, fmt.Errorf("%w: memfd %s is not sealed against resizing", ErrCorrupt, f.Name())
		}
		path = f.Name()
	}
	return attachOpen(path, g, typ, kind, anon, watch)
}

// File returns a new descriptor of the segment, for another process to
// attach with AttachFile or AttachStoreFile: pass it to a child in
// exec.Cmd.ExtraFiles, or over a unix socket with SendFile. Close it once
// handed over.
func (a *seg) File() (*os.File, error) {
	p, ok := a.gate.Enter()
	if !ok {
		return nil, ErrClosed
	}
	defer a.gate.Exit(p)
	return reopen(a.file)
}

// SendFile sends f's descriptor over a unix socket (SCM_RIGHTS).
func SendFile(c *net.UnixConn, f *os.File) error {
	if f == nil {
		return fmt.Errorf("%w: nil file", ErrNotExist)
	}
	if _, _, err := c.WriteMsgUnix([]byte{'c'}, unix.UnixRights(int(f.Fd())), nil); err != nil {
		return fmt.Errorf("shm: send %s: %w", f.Name(), err)
	}
	return nil
}

// RecvFile receives a descriptor sent with SendFile.
func RecvFile(c *net.UnixConn) (*os.File, error) {
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, fmt.Errorf("shm: receive a descriptor: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("%w: no descriptor in the message (%v)", ErrNotExist, err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		for _, fd := range fds {
			_ = unix.Close(fd)
		}
		return nil, fmt.Errorf("%w: expected one descriptor (%v)", ErrNotExist, err)
	}
	unix.CloseOnExec(fds[0])
	return os.NewFile(uintptr(fds[0]), "shm-received"), nil
}
