//go:build !amd64 || purego

package atomicx

import "unsafe"

// PrefetchWrite: see prefetch_amd64.go. This build has no prefetch; the
// hint is dropped.
func PrefetchWrite(p unsafe.Pointer) {}
