package atomicx

import (
	"sync"

	"golang.org/x/sys/unix"
)

// ProcessBarrier makes every thread of the process that is running on a CPU
// execute a full memory barrier before it returns, with membarrier(2)'s
// private expedited command. It reports false, having done nothing, where
// the kernel (or a seccomp filter) does not offer that command; the caller
// then needs another way to order the other threads (a grace period).
//
// It is the expensive half of an asymmetric fence: a fast path may pair a
// plain store with a later plain load (no fence, no locked instruction), and
// a rare slow path that stores, calls ProcessBarrier and then loads is
// ordered against it as if both sides had fenced. Either the fast path's
// store is visible once ProcessBarrier returns, or its load comes after the
// barrier and sees the slow path's store. Threads that are not running are
// covered by the barrier a context switch implies.
//
// It is a syscall (about 0.4 µs here, more on big machines): never call it
// while pinned to a P or on a hot path.
func ProcessBarrier() bool {
	barrierOnce.Do(registerBarrier)
	if !barrierOK {
		return false
	}
	_, _, errno := unix.Syscall(unix.SYS_MEMBARRIER, membarrierPrivateExpedited, 0, 0)
	return errno == 0
}

// The membarrier commands (linux/membarrier.h); x/sys/unix has no names for
// them.
const (
	membarrierQuery                    = 0
	membarrierPrivateExpedited         = 1 << 3
	membarrierRegisterPrivateExpedited = 1 << 4
)

var (
	barrierOnce sync.Once
	barrierOK   bool
)

// registerBarrier registers the process for private expedited barriers
// (required once before the first one) if the kernel supports them.
func registerBarrier() {
	cmds, _, errno := unix.Syscall(unix.SYS_MEMBARRIER, membarrierQuery, 0, 0)
	if errno != 0 || cmds&membarrierPrivateExpedited == 0 {
		return
	}
	_, _, errno = unix.Syscall(unix.SYS_MEMBARRIER, membarrierRegisterPrivateExpedited, 0, 0)
	barrierOK = errno == 0
}
