//go:build !amd64 || purego

package atomicx

import "unsafe"

// PrefetchWrite: see prefetch_amd64.go. This build has no prefetch; the
// hint is dropped.
func PrefetchWrite(p unsafe.Pointer) {}

// Prefetch: see prefetch_amd64.go. Dropped here.
func Prefetch(p unsafe.Pointer) {}
