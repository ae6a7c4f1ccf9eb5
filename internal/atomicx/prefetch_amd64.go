//go:build !purego

package atomicx

import "unsafe"

// PrefetchWrite asks the CPU to fetch the cache line holding p for
// writing (PREFETCHW), without waiting for it: a later store to the line
// then finds it owned instead of waiting for another core to give it up,
// and a locked instruction after that store does not wait for the
// transfer. It is a hint: it changes no memory, cannot fault (an unmapped
// p is ignored), and is a no-op where the build has no such instruction.
//
//go:noescape
func PrefetchWrite(p unsafe.Pointer)

// Prefetch is PrefetchWrite for reading (PREFETCHT0): the line is fetched
// shared, and another core that writes it keeps it.
//
//go:noescape
func Prefetch(p unsafe.Pointer)
