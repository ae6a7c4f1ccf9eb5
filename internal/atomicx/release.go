package atomicx

import (
	"sync/atomic"
	"unsafe"
)

// StoreRelease64 stores v to *p with release ordering: every load and store
// before it in program order is visible to a goroutine that loads v with an
// atomic load. On amd64 (x86-TSO: stores stay in program order and never
// pass an earlier load) that is a plain MOV; an atomic.Store would be an
// XCHG, a full fence costing a locked instruction. It is NOT a
// sequentially consistent store: a later load may be performed before it
// is visible, so never use it where a store must be seen before a
// following load of another word (Dekker); use atomic.Store there.
//
// Under the race detector, and on other architectures, it is an atomic
// store.
func StoreRelease64(p *uint64, v uint64) {
	if tso && !Race {
		*(*uint64)(unsafe.Pointer(p)) = v
		return
	}
	atomic.StoreUint64(p, v)
}

// StoreRelease32 is StoreRelease64 for a uint32.
func StoreRelease32(p *uint32, v uint32) {
	if tso && !Race {
		*(*uint32)(unsafe.Pointer(p)) = v
		return
	}
	atomic.StoreUint32(p, v)
}
