package shm

import (
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cella-go/cella/message"
)

// A Store's references are owned: by an edge (its queued entries), or by a
// process, in that process's reference table in the segment. An entry is
// count<<32 | index+1: this process holds count references to that slot.
// Moving a reference (Put, Send, Recv, Retain, Free) changes the table and
// the slot's reference count inside one section, so recovery can recompute
// every count as the sum of the live tables and the queued entries: a dead
// process's references simply stop counting, and a message nobody counts
// any more is freed.
//
// refTable is the process-local index into this process's table: which
// entry holds which slot. Sections do not pin, so a mutex is fine here.
type refTable struct {
	mu      sync.Mutex
	at      map[uint32]uint32 // slot index → entry
	free    []uint32          // entries emptied, reused first
	entries unsafe.Pointer    // this record's table in the segment
	rec     *record
	len     uint32
}

func (t *refTable) entry(e uint32) *uint64 {
	return (*uint64)(unsafe.Add(t.entries, uintptr(e)*8))
}

// add records one more reference to slot idx.
func (t *refTable) add(idx uint32) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.at[idx]; ok {
		v := atomic.LoadUint64(t.entry(e))
		if v>>32 == 1<<32-1 {
			return fmt.Errorf("%w: this process holds 2^32-1 references to slot %d", message.ErrTooManyRefs, idx)
		}
		atomic.StoreUint64(t.entry(e), v+1<<32)
		return nil
	}
	var e uint32
	switch {
	case len(t.free) > 0:
		e = t.free[len(t.free)-1]
		t.free = t.free[:len(t.free)-1]
	case t.rec.tableHigh < t.len:
		e = t.rec.tableHigh
		atomic.StoreUint32(&t.rec.tableHigh, e+1)
	default:
		return fmt.Errorf("%w: this process holds references to %d messages, its table's size", message.ErrTooManyRefs, t.len)
	}
	if t.at == nil {
		t.at = make(map[uint32]uint32)
	}
	t.at[idx] = e
	atomic.StoreUint64(t.entry(e), 1<<32|uint64(idx+1))
	return nil
}

// remove drops one reference to slot idx; false if this process held none.
func (t *refTable) remove(idx uint32) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.at[idx]
	if !ok {
		return false
	}
	v := atomic.LoadUint64(t.entry(e))
	if v>>32 > 1 {
		atomic.StoreUint64(t.entry(e), v-1<<32)
		return true
	}
	atomic.StoreUint64(t.entry(e), 0)
	delete(t.at, idx)
	t.free = append(t.free, e)
	return true
}

// count returns how many references this process holds to slot idx.
func (t *refTable) count(idx uint32) uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.at[idx]; ok {
		return uint32(atomic.LoadUint64(t.entry(e)) >> 32)
	}
	return 0
}

// held returns the slots this process holds references to, with counts.
func (t *refTable) held() map[uint32]uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := make(map[uint32]uint32, len(t.at))
	for idx, e := range t.at {
		m[idx] = uint32(atomic.LoadUint64(t.entry(e)) >> 32)
	}
	return m
}
