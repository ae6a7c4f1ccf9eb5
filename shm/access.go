package shm

import (
	"sync/atomic"
	"time"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/token"
)

// Readers and writers share the state word: a View or Load adds one reader
// while no writer holds the slot; an Update sets the writer bit while no
// other writer does, then waits for the readers already in to leave
// (drainReaders). Readers that come after the bit wait for the Update, so
// overlapping Views cannot starve it, as in package arena. Load copies inside its section, so it needs no hold entry;
// View and Update run the callback outside any section and write their hold
// into the record first (see holdTable).

// Load copies the slot's value out.
func (a *Arena[T]) Load(t token.Token) (T, error) {
	var v T
	err := load(a.seg, t, &v, "Load")
	return v, err
}

// LoadInto copies the slot's value into *dst.
func (a *Arena[T]) LoadInto(t token.Token, dst *T) error {
	if dst == nil {
		if a.gate.Closed() {
			return ErrClosed
		}
		return ErrNilPointer
	}
	return load(a.seg, t, dst, "LoadInto")
}

func load[T any](a *seg, t token.Token, dst *T, op string) error {
	idx, err := a.index(t, op)
	if err != nil {
		return err
	}
	st := a.state(idx)
	var wait waiter
	for {
		p, w, err := a.enter()
		if err != nil {
			return err
		}
		s := atomic.LoadUint64(st)
		if !liveAs(s, t.Generation()) {
			a.exit(p, w, 0)
			return stale(op, t)
		}
		if s&writerBit == 0 && readersOf(s) < maxReaders && atomic.CompareAndSwapUint64(st, s, s+readerOne) {
			*dst = *(*T)(a.slotAt(idx))
			a.unhold(p, w, idx, readerOne)
			a.exit(p, w, 0)
			return nil
		}
		a.exit(p, w, 0)
		wait.wait(a)
	}
}

// View runs fn with shared access to the slot; Views of one slot, in any
// processes, run concurrently.
func (a *Arena[T]) View(t token.Token, fn func(*T)) error {
	return access(a.seg, t, fn, readerOne, holdRead, "View")
}

// Update runs fn with exclusive access to the slot.
func (a *Arena[T]) Update(t token.Token, fn func(*T)) error {
	return access(a.seg, t, fn, writerBit, holdWrite, "Update")
}

func access[T any](a *seg, t token.Token, fn func(*T), add, kind uint64, op string) error {
	if fn == nil {
		if a.gate.Closed() {
			return ErrClosed
		}
		return ErrNilFunc
	}
	idx, err := a.index(t, op)
	if err != nil {
		return err
	}
	st := a.state(idx)
	var entry *uint64
	var wait waiter
	for {
		p, w, err := a.enter()
		if err != nil {
			return err
		}
		s := atomic.LoadUint64(st)
		if !liveAs(s, t.Generation()) {
			a.exit(p, w, 0)
			return stale(op, t)
		}
		// A writer takes the writer bit while readers are still in: new
		// readers then wait for it, so a stream of overlapping Views cannot
		// starve an Update (drainReaders waits for the ones inside).
		free := s&writerBit == 0 && (add == readerOne && readersOf(s) < maxReaders || add == writerBit)
		if free {
			// The entry is written (claimed) before the state word, both
			// inside the section: recovery sees both or neither.
			if entry, err = a.holds.claim(kind | uint64(idx+1)); err != nil {
				a.exit(p, w, 0)
				return err
			}
			if entry != nil {
				if atomic.CompareAndSwapUint64(st, s, s+add) {
					a.exit(p, w, 0)
					break
				}
				unclaim(entry)
			}
		}
		a.exit(p, w, 0)
		// Close waits for every hold entry to come back: one whose callback
		// has not started must not keep it waiting on a slot another
		// process holds.
		if a.closed.Load() {
			return ErrClosed
		}
		wait.wait(a)
	}
	if add == writerBit {
		if err := a.drainReaders(idx, t, entry, op); err != nil {
			return err
		}
	}
	defer a.release(idx, add, entry)
	fn((*T)(a.slotAt(idx)))
	return nil
}

// drainReaders waits, holding the writer bit, until the readers that were
// in when the writer took it have left. Readers of a dead process leave
// with recovery (the wait looks for dead processes). If the slot was freed
// meanwhile, or this handle is closing, it gives the writer hold back and
// says so. The hold entry keeps the mapping alive: Close waits for it.
func (a *seg) drainReaders(idx uint32, t token.Token, entry *uint64, op string) error {
	st := a.state(idx)
	var wait waiter
	for readersOf(atomic.LoadUint64(st)) != 0 {
		if a.closed.Load() {
			a.release(idx, writerBit, entry)
			return ErrClosed
		}
		wait.wait(a)
	}
	if !liveAs(atomic.LoadUint64(st), t.Generation()) {
		a.release(idx, writerBit, entry) // freed while we waited: the last hold recycles it
		return stale(op, t)
	}
	return nil
}

// release ends a callback's hold (also when fn panics). It needs no gate:
// Close waits for every hold entry to come back before it unmaps.
func (a *seg) release(idx uint32, add uint64, entry *uint64) {
	p, w := a.openOwn()
	a.unhold(p, w, idx, add)
	unclaim(entry)
	a.close(w, 0)
}

// unhold drops one reader or the writer bit, inside a section, and recycles
// the slot if it was freed meanwhile and this was the last hold.
func (a *seg) unhold(p int, w *way, idx uint32, add uint64) {
	st := a.state(idx)
	for {
		s := atomic.LoadUint64(st)
		n := s - add
		last := n&pendingBit != 0 && !held(n)
		if last {
			n &^= pendingBit
		}
		if atomic.CompareAndSwapUint64(st, s, n) {
			if last && n&retiredBit == 0 {
				a.recycle(p, w, idx)
			}
			return
		}
	}
}

// waiter backs off while a slot is held the other way, and after a while
// checks whether the holder's process died (its hold then goes away in the
// recovery this runs).
type waiter struct {
	b      atomicx.Backoff
	since  time.Time
	rounds int
}

const deadCheckAfter = 20 * time.Millisecond

func (w *waiter) wait(a interface{ checkDead() }) {
	w.b.Wait()
	w.rounds++
	if w.rounds%64 != 0 {
		return
	}
	if w.since.IsZero() {
		w.since = time.Now()
	} else if time.Since(w.since) > deadCheckAfter {
		w.since = time.Now()
		a.checkDead()
	}
}
