package shm

import (
	"fmt"
	"math"
	"sync/atomic"
	"unsafe"

	"github.com/cella-go/cella/message"
)

// A Store's references are owned: by an edge (its queued entries), or by a
// process, in that process's reference table in the segment: one uint32
// per slot, the number of references this process holds to it. Moving a
// reference (Put, Send, Recv, Retain, Free) changes the table and the
// slot's reference count inside one section, so recovery can recompute
// every count as the sum of the live tables and the queued entries: a dead
// process's references simply stop counting, and a message nobody counts
// any more is freed.
//
// Only this process writes its table, but its goroutines race, hence the
// CAS. record.tableHigh bounds the slots this process ever referenced, so
// that a scan (recovery, Close) reads no more of the table than that.
type refTable struct {
	counts unsafe.Pointer // this record's table
	rec    *record
}

func (t *refTable) count(idx uint32) *uint32 {
	return (*uint32)(unsafe.Add(t.counts, uintptr(idx)*4))
}

// add records one more reference to slot idx. tableHigh is raised before
// the count: a process killed between the two leaves a bound a little too
// high, never a count beyond the bound, where recovery (and the next
// process to claim the record) would not look.
func (t *refTable) add(idx uint32) error {
	for {
		h := atomic.LoadUint32(&t.rec.tableHigh)
		if idx < h || atomic.CompareAndSwapUint32(&t.rec.tableHigh, h, idx+1) {
			break
		}
	}
	c := t.count(idx)
	for {
		v := atomic.LoadUint32(c)
		if v == math.MaxUint32 {
			return fmt.Errorf("%w: this process holds 2^32-1 references to slot %d", message.ErrTooManyRefs, idx)
		}
		if atomic.CompareAndSwapUint32(c, v, v+1) {
			return nil
		}
	}
}

// remove drops one reference to slot idx; false if this process held none.
func (t *refTable) remove(idx uint32) bool {
	c := t.count(idx)
	for {
		v := atomic.LoadUint32(c)
		if v == 0 {
			return false
		}
		if atomic.CompareAndSwapUint32(c, v, v-1) {
			return true
		}
	}
}

// held returns the slots this process holds references to, with counts.
func (t *refTable) held() map[uint32]uint32 {
	m := map[uint32]uint32{}
	for idx := uint32(0); idx < atomic.LoadUint32(&t.rec.tableHigh); idx++ {
		if n := atomic.LoadUint32(t.count(idx)); n != 0 {
			m[idx] = n
		}
	}
	return m
}
