package arena

import (
	"errors"
	"sync/atomic"

	"github.com/cella-go/cella/internal/atomicx"
)

// Close releases the arena's memory. Every later call returns ErrClosed
// (Capacity, Class and Stats still answer); a second Close returns ErrClosed.
//
// Close is safe while other goroutines are inside arena calls. It marks the
// arena closed, waits until no call that missed the mark can still touch
// the memory, waits for running View and Update callbacks to return, and only
// then unmaps. So Close blocks while a callback runs, and a callback must not
// call Close on its own arena. Pointers returned by Alloc must not be used
// after Close.
func (c *core) Close() error {
	if !c.gate.Close() {
		return ErrClosed
	}
	// A running Trim holds detached freelists and reads their links: let
	// it finish. One that starts later sees the closed gate under the lock
	// and touches nothing, so the lock is not held any longer: a View or
	// Update callback that Close waits for below may call Trim, and must
	// get ErrClosed, not wait for Close.
	c.trim.mu.Lock()
	//lint:ignore SA2001 an empty critical section is the point: a barrier
	c.trim.mu.Unlock()

	c.waitq.close() // issue 11: wake AllocWait/StoreWait; they return ErrClosed
	// From here no new section starts, and the grace period has let every
	// old one end: the counters are final, apart from retirements that the
	// callbacks still running may cause when they release.
	early := c.sum()
	c.final.Store(&early)
	c.waitHolders()
	c.gate.Quiesce() // the releases that dropped the last holds have returned
	last := c.sum()
	c.final.Store(&last)
	return errors.Join(c.region.Unmap(), c.meta.unmap(), c.counters.Unmap())
}

// waitHolders waits until no slot has a reader or writer hold. After the
// gate closed, holds only ever go away, so one pass over the slots that were
// ever used is enough.
func (c *core) waitHolders() {
	var bo atomicx.Backoff
	for sh := 0; sh < c.set.Len(); sh++ {
		lo, hi := c.set.Touched(sh)
		for idx := lo; idx < hi; idx++ {
			for held(atomic.LoadUint64(c.state(idx))) {
				bo.Wait()
			}
		}
	}
}
