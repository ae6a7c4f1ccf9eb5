package arena

import (
	"sync/atomic"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/token"
)

// Load returns a copy of t's value. It never returns a value torn by a
// concurrent Update.
//
// The value is copied once, from the slot straight into the named result;
// the error returns leave the result zero.
func (a *Arena[T]) Load(t token.Token) (v T, err error) {
	idx, gen, ok := a.check(t)
	if !ok {
		return v, a.badToken("Load", t)
	}
	st := a.state(idx)
	var bo atomicx.Backoff
	for {
		p := a.gate.EnterAny() // Gate.Enter spelled out, as in Alloc
		if a.gate.Closed() {
			a.gate.Exit(p)
			return v, ErrClosed
		}
		s := atomic.LoadUint64(st)
		if !valid(s, gen) {
			a.gate.Exit(p)
			return v, staleToken("Load", t)
		}
		if canRead(s) {
			if atomic.CompareAndSwapUint64(st, s, s+1) {
				v = *a.payload(idx)
				// a.drop(p, idx, 1), spelled out: drop does not inline.
				if ns := atomic.AddUint64(st, ^uint64(0)); ns&(allocBit|holders) == 0 {
					a.recycle(p, idx, ns)
					a.gate.Exit(p)
					a.freed() // issue 11: wake a waiter (wait.go)
					return v, nil
				}
				a.gate.Exit(p)
				return v, nil
			}
			a.gate.Exit(p)
			continue
		}
		a.gate.Exit(p)
		bo.Wait() // a writer holds the slot: wait unpinned
	}
}

// View runs fn with shared access to t's value. Other View calls on the slot
// may run at the same time; Update calls wait. fn must not keep the pointer.
// A panic in fn propagates after the slot is released.
func (a *Arena[T]) View(t token.Token, fn func(*T)) error {
	if fn == nil {
		return a.nilFunc("View", t)
	}
	idx, err := a.lock(t, "View", false)
	if err != nil {
		return err
	}
	defer a.unlock(idx, 1)
	fn(a.payload(idx))
	return nil
}

// Update runs fn with exclusive access to t's value: no View, Load or other
// Update on the slot runs at the same time. fn must not keep the pointer.
// A panic in fn propagates after the slot is released.
func (a *Arena[T]) Update(t token.Token, fn func(*T)) error {
	if fn == nil {
		return a.nilFunc("Update", t)
	}
	idx, err := a.lock(t, "Update", true)
	if err != nil {
		return err
	}
	defer a.unlock(idx, writerBit)
	fn(a.payload(idx))
	return nil
}

// canRead reports whether a reader may join: no writer holds or waits for the
// slot, and the reader count has room.
func canRead(s uint64) bool {
	return s&writerBit == 0 && s&readerMask != readerMask
}

// lock takes a reader (or the writer) hold on t's slot. A hold keeps the slot
// from being recycled and keeps Close from unmapping it, so the caller may
// touch the slot unpinned until unlock.
//
// A writer first sets the writer bit, which stops new readers, then waits
// for the readers already inside to leave. Waiting happens unpinned.
func (c *core) lock(t token.Token, op string, write bool) (uint32, error) {
	idx, gen, ok := c.check(t)
	if !ok {
		return 0, c.badToken(op, t)
	}
	st := c.state(idx)
	var bo atomicx.Backoff
	for {
		p := c.gate.EnterAny() // Gate.Enter spelled out, as in Alloc
		if c.gate.Closed() {
			c.gate.Exit(p)
			return 0, ErrClosed
		}
		s := atomic.LoadUint64(st)
		if !valid(s, gen) {
			c.gate.Exit(p)
			return 0, staleToken(op, t)
		}
		switch {
		case !write && canRead(s):
			if atomic.CompareAndSwapUint64(st, s, s+1) {
				c.gate.Exit(p)
				return idx, nil
			}
			c.gate.Exit(p)
			continue
		case write && s&writerBit == 0:
			if atomic.CompareAndSwapUint64(st, s, s|writerBit) {
				c.gate.Exit(p)
				return idx, c.drainReaders(idx, gen, t, op)
			}
			c.gate.Exit(p)
			continue
		}
		c.gate.Exit(p)
		bo.Wait()
	}
}

// drainReaders waits, holding the writer bit, until no reader is inside. If
// the slot is freed meanwhile it gives the writer bit back and reports stale.
func (c *core) drainReaders(idx, gen uint32, t token.Token, op string) error {
	st := c.state(idx)
	var bo atomicx.Backoff
	for {
		s := atomic.LoadUint64(st)
		if genOf(s) != gen || s&allocBit == 0 {
			c.unlock(idx, writerBit)
			return staleToken(op, t)
		}
		if s&readerMask == 0 {
			return nil
		}
		bo.Wait()
	}
}

// unlock drops a hold (1 for a reader, writerBit for the writer). Whoever
// drops the last hold on a freed slot recycles it. It runs even while Close
// is waiting, because Close waits for exactly these holds.
func (c *core) unlock(idx uint32, hold uint64) {
	p := c.gate.EnterAny()
	recycled := c.drop(p, idx, hold)
	c.gate.Exit(p)
	if recycled {
		c.freed() // issue 11: wake a waiter (wait.go)
	}
}

// drop subtracts hold from idx's state inside a gate section, and reports
// whether it recycled the slot.
func (c *core) drop(p int, idx uint32, hold uint64) bool {
	ns := atomic.AddUint64(c.state(idx), -hold)
	if ns&(allocBit|holders) == 0 {
		c.recycle(p, idx, ns)
		return true // issue 11: the caller wakes a waiter after Exit
	}
	return false
}
