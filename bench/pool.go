package bench

import (
	"testing"
	"unsafe"
)

// pool is the one shape every implementation in the suite is driven
// through, so that the benchmarks can be table-driven.
//
// get hands out one zeroed object and a handle; put gives the object back.
// The handle is an index for the index-based freelists and a token for the
// arena; sync.Pool and the heap ignore it. Every get returns a zeroed object
// because cella's Alloc does: comparing a zeroing allocator with pools that
// hand back stale bytes would flatter the pools.
//
// The headline loops (pairs and pairsPB) are methods of each concrete type:
// inside them get and put are direct calls, so no implementation pays for
// interface dispatch in the pair benchmarks. The other workloads call get and
// put through the interface; every implementation, cella included, pays the
// same ~1-2 ns per call there.
type pool[T any] interface {
	get() (h uint64, p *T, ok bool)
	put(h uint64, p *T)
	// pairs runs n get + stamp + put cycles.
	pairs(n int)
	// pairsPB runs get + stamp + put cycles until pb says stop.
	pairsPB(pb *testing.PB)
	// local returns the pool one goroutine should use: the pool itself for
	// shared pools, a per-goroutine ring for the heap peer.
	local() pool[T]
	close()
}

// impl names one implementation and builds it for a capacity (the number of
// objects that can be out at once; sync.Pool and the heap ignore it).
type impl[T any] struct {
	name string
	make func(capacity int) pool[T]
}

// Implementation names, as they appear in benchmark names (impl=...).
const (
	nameCella    = "cella"
	nameSyncPool = "syncpool"
	nameMutex    = "mutex"
	nameChan     = "chan"
	nameTreiber  = "treiber"
	nameHeap     = "heap"
)

// impls lists every allocator of the suite, cella first.
func impls[T any]() []impl[T] {
	return []impl[T]{
		{nameCella, func(n int) pool[T] { return newCellaPool[T](n, 0) }},
		{nameSyncPool, func(int) pool[T] { return newSyncPool[T]() }},
		{nameMutex, func(n int) pool[T] { return newMutexPool[T](n) }},
		{nameChan, func(n int) pool[T] { return newChanPool[T](n) }},
		{nameTreiber, func(n int) pool[T] { return newTreiberPool[T](n) }},
		{nameHeap, func(int) pool[T] { return newHeapPool[T]() }},
	}
}

// zero clears *p. T is pointer-free in this suite, so a plain memory clear
// is what the runtime would do too.
func zero[T any](p *T) {
	clear(unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p)))
}
