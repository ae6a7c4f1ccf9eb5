//go:build !amd64 && !386

package arena

import "sync/atomic"

// loadFence keeps the payload loads of an optimistic Load before its second
// read of the state word and version. On weakly ordered machines an earlier
// plain load may be performed after a later acquire load; an atomic
// read-modify-write (sequentially consistent in Go) orders every earlier
// access before every later one. Its target is a word on the caller's
// stack, so no two cores share it.
func loadFence() {
	var w uint32
	atomic.AddUint32(&w, 1)
}
