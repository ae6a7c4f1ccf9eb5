package shm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DefaultDir is where segments live unless Config.Dir says otherwise: a
// tmpfs, so a segment's pages are memory, committed as they are touched.
const DefaultDir = "/dev/shm"

// filePrefix keeps cella's segments recognisable in /dev/shm.
const filePrefix = "cella."

// segmentPath checks name and returns the file that holds the segment.
func segmentPath(dir, name string) (string, error) {
	if name == "" || len(name) > 200 || name[0] == '.' {
		return "", fmt.Errorf("%w: %q", ErrBadName, name)
	}
	for _, c := range name {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return "", fmt.Errorf("%w: %q holds %q", ErrBadName, name, c)
		}
	}
	if dir == "" {
		dir = DefaultDir
	}
	return filepath.Join(dir, filePrefix+name), nil
}

// flockFile takes or drops the whole-file flock that serialises create,
// attach and the last close of a segment. The kernel drops it if the
// holder dies, so a crash never leaves it taken.
func flockFile(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			return err
		}
	}
}

// lockRecord tries to take the OFD lock of record i on f's open file
// description. It reports false, nil when another description holds it.
func lockRecord(f *os.File, i int) (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: lockByte(i), Len: 1}
	err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EACCES):
		return false, nil
	default:
		return false, fmt.Errorf("shm: lock record %d: %w", i, err)
	}
}

// unlockRecord drops the OFD lock of record i held on f.
func unlockRecord(f *os.File, i int) {
	lk := unix.Flock_t{Type: unix.F_UNLCK, Whence: 0, Start: lockByte(i), Len: 1}
	_ = unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk)
}

// recordLocked reports whether some open file description other than f's
// holds record i's lock: whether its process is alive. PID reuse cannot
// fool it: the kernel drops the lock when the holder dies.
func recordLocked(f *os.File, i int) bool {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: lockByte(i), Len: 1}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return true // cannot tell: never declare a process dead on a doubt
	}
	return lk.Type != unix.F_UNLCK
}

// sameFile reports whether path still names the file f has open (Close of
// the last process unlinks it; an attacher that opened it just before must
// notice).
func sameFile(f *os.File, path string) bool {
	var a, b unix.Stat_t
	if unix.Fstat(int(f.Fd()), &a) != nil || unix.Stat(path, &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// mapFile maps size bytes of f shared, read-write.
func mapFile(f *os.File, size uint64) ([]byte, error) {
	if size > uint64(^uint(0)>>1) {
		return nil, fmt.Errorf("%w: segment of %d bytes", ErrCorrupt, size)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("shm: map %d bytes: %w", size, err)
	}
	return mem, nil
}

// futexWait sleeps while *addr == val, for at most d. Not FUTEX_PRIVATE:
// the word is shared between processes.
func futexWait(addr *uint32, val uint32, d time.Duration) {
	ts := unix.NsecToTimespec(d.Nanoseconds())
	_, _, _ = unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), 0 /* FUTEX_WAIT */, uintptr(val),
		uintptr(unsafe.Pointer(&ts)), 0, 0)
}

// futexWake wakes every process waiting on addr.
func futexWake(addr *uint32) {
	_, _, _ = unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), 1 /* FUTEX_WAKE */, uintptr(1<<31-1),
		0, 0, 0)
}
