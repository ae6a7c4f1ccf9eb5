package shm

import (
	"sync/atomic"
	"time"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/shard"
)

// holdTable hands out this process's hold entries (record.holds). A View or
// Update callback runs outside any section, for as long as the user likes,
// so its hold must be written down where recovery can see it: recovery
// recomputes each slot's readers and writer bit from the live entries.
//
// An entry is claimed by the CAS that writes it (0 -> the hold), so a
// claim costs one locked instruction and no process-local lock; it is given
// back by storing 0. A goroutine starts its search at a line of its P's
// own, so Ps rarely probe the same entries. Close sets closed and then
// waits until every entry is 0: a claim CASes its entry before it reads
// closed, Close stores closed before it reads the entries (both
// sequentially consistent), so either the claim sees closed and gives its
// entry back, or Close sees the entry and waits for it.
type holdTable struct {
	entries *[holdsPerProc]uint64 // the record's; set when the record is claimed
	closed  atomic.Bool
}

// holdFill marks an entry that holds no slot: PutFunc's, which only makes
// Close wait for fill. Recovery skips it (its index part is 0).
const holdFill = 1 << 61

// claim takes a free entry and writes v into it. It returns nil, nil when
// every entry is in use (holdsPerProc callbacks are running): the caller
// waits outside its section and tries again. It returns ErrClosed once the
// arena is closing.
func (h *holdTable) claim(v uint64) (*uint64, error) {
	p := shard.Pin() // only to pick where to start
	shard.Unpin()
	start := uint(p) * 8 % holdsPerProc // a cache line of entries per P
	for i := uint(0); i < holdsPerProc; i++ {
		e := &h.entries[(start+i)%holdsPerProc]
		if atomic.LoadUint64(e) != 0 || !atomic.CompareAndSwapUint64(e, 0, v) {
			continue
		}
		if h.closed.Load() {
			atomic.StoreUint64(e, 0)
			return nil, ErrClosed
		}
		return e, nil
	}
	if h.closed.Load() {
		return nil, ErrClosed
	}
	return nil, nil
}

// claimWait is claim for a caller outside any section (PutFunc): it waits
// for a free entry, and makes each try inside a section of the process
// gate, so that a claim never touches the record after Close has unmapped
// it: Close closes the gate (and waits for the sections in it) before it
// unmaps, and a try that finds the gate closed touches nothing.
func (a *seg) claimWait(v uint64) (*uint64, error) {
	var b atomicx.Backoff
	for {
		p, ok := a.gate.Enter()
		if !ok {
			return nil, ErrClosed
		}
		e, err := a.holds.claim(v)
		a.gate.Exit(p)
		if e != nil || err != nil {
			return e, err
		}
		b.Wait()
	}
}

// unclaim gives an entry back. It needs no fence: recovery reads entries
// only once no section is open, and a section ends with a locked
// instruction; Close polls for 0.
func unclaim(e *uint64) { atomicx.StoreRelease64(e, 0) }

// drain refuses new entries and waits until every entry is back.
func (h *holdTable) drain() {
	h.closed.Store(true)
	if h.entries == nil {
		return
	}
	for i := range h.entries {
		for atomic.LoadUint64(&h.entries[i]) != 0 {
			time.Sleep(50 * time.Microsecond)
		}
	}
}
