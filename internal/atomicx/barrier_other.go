//go:build !linux

package atomicx

// ProcessBarrier: see barrier_linux.go. Without membarrier(2) it does
// nothing and reports false; callers fall back to a grace period.
func ProcessBarrier() bool { return false }
