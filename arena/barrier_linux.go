package arena

import (
	"sync"

	"golang.org/x/sys/unix"
)

// membarrier(2) commands (linux/membarrier.h; x/sys/unix has no names for
// them).
const (
	membarrierPrivateExpedited         = 1 << 3
	membarrierRegisterPrivateExpedited = 1 << 4
)

// membarrierReady registers the process for private expedited membarrier
// once, and reports whether it can be used (Linux 4.14 and later, unless a
// seccomp filter refuses it).
var membarrierReady = sync.OnceValue(func() bool {
	_, _, e := unix.Syscall(unix.SYS_MEMBARRIER, membarrierRegisterPrivateExpedited, 0, 0)
	return e == 0
})

// barrier makes every thread of the process that is running now execute a
// full memory fence before it returns, so that every store another thread
// made before its fence is visible to the caller afterwards. It is the heavy
// half of an asymmetric fence: the light half is free (Free's plain cache
// store and plain load of the waiter count), and the caller pays a few
// microseconds on a path that is about to park anyway. See wait.go.
func barrier() {
	if membarrierReady() {
		if _, _, e := unix.Syscall(unix.SYS_MEMBARRIER, membarrierPrivateExpedited, 0, 0); e == 0 {
			return
		}
	}
	stopTheWorld()
}
