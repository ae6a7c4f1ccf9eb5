//go:build !linux

package arena

// barrier: see barrier_linux.go. Without membarrier(2), a brief
// stop-the-world has the same effect: every running goroutine is stopped
// (its thread passes the scheduler's atomics, which are fences) before it
// returns.
func barrier() { stopTheWorld() }
