package arena

import (
	"sync/atomic"

	"github.com/cella-go/cella/shard"
	"github.com/cella-go/cella/token"
)

// Alloc takes a free slot and returns its token and a pointer to its value,
// zeroed. The pointer is valid until the token is freed or the arena closed;
// it gives unsynchronised access (use View and Update for shared access).
func (a *Arena[T]) Alloc() (token.Token, *T, error) {
	p, ok := a.gate.Enter()
	if !ok {
		return token.Nil, nil, ErrClosed
	}
	idx, gen, recycled, ok := a.take(p)
	if !ok {
		a.gate.Exit(p)
		return token.Nil, nil, ErrFull
	}
	v := a.payload(idx)
	if recycled {
		var zero T
		*v = zero
	}
	a.gate.Exit(p)
	return token.New(idx, gen), v, nil
}

// Store takes a free slot, copies v into it and returns its token.
func (a *Arena[T]) Store(v T) (token.Token, error) {
	p, ok := a.gate.Enter()
	if !ok {
		return token.Nil, ErrClosed
	}
	idx, gen, _, ok := a.take(p)
	if !ok {
		a.gate.Exit(p)
		return token.Nil, ErrFull
	}
	*a.payload(idx) = v
	a.gate.Exit(p)
	return token.New(idx, gen), nil
}

// take pops a free slot for P p and marks it allocated. recycled says the slot
// was used before, so its payload holds old bytes. Runs inside a gate section.
func (a *Arena[T]) take(p int) (idx, gen uint32, recycled, ok bool) {
	idx, src, ok := a.set.Pop(a.set.Of(p))
	if !ok {
		a.countFailed(p)
		return 0, 0, false, false
	}
	st := a.state(idx)
	s := atomic.LoadUint64(st)
	gen = a.firstGen
	if s != 0 {
		gen = genOf(s)
	}
	// The slot is ours alone: no hold can be taken on a slot whose alloc
	// bit is clear, and no token carries gen yet, so other goroutines can
	// only read this word (or fail a CAS on it). A plain aligned store is
	// atomic on every platform Go supports, and it avoids the full fence of
	// atomic.Store (XCHG on amd64). The token reaches other goroutines only
	// through a synchronising hand-off, which orders this store before
	// their loads.
	*st = uint64(gen)<<genShift | allocBit
	a.countAlloc(p, src == shard.FromSteal)
	return idx, gen, s != 0, true
}

// Free releases t's slot. From this moment every use of t returns ErrStale.
// If View or Update callbacks are running on the slot, Free returns at once
// and the slot is recycled when the last of them returns.
func (a *Arena[T]) Free(t token.Token) error {
	idx, gen, ok := a.check(t)
	if !ok {
		return badToken("Free", t, a)
	}
	p, ok := a.gate.Enter()
	if !ok {
		return ErrClosed
	}
	st := a.state(idx)
	for {
		s := atomic.LoadUint64(st)
		if !valid(s, gen) {
			a.gate.Exit(p)
			return staleToken("Free", t)
		}
		// Clear alloc, advance the generation (to retiredGen at the wrap),
		// keep the holders.
		ns := (uint64(gen)+1)<<genShift | s&holders
		if atomic.CompareAndSwapUint64(st, s, ns) {
			if ns&holders == 0 {
				a.recycle(p, idx, ns)
			}
			a.countFree(p)
			a.gate.Exit(p)
			return nil
		}
	}
}

// recycle puts a freed slot with no holders back on P p's shard, or retires
// it if its generation is used up. Runs inside a gate section.
func (a *Arena[T]) recycle(p int, idx uint32, state uint64) {
	if genOf(state) == retiredGen {
		a.retired.Add(1)
		return
	}
	a.set.Push(a.set.Of(p), idx)
}
