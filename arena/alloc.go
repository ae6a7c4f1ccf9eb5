package arena

import (
	"sync/atomic"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/shard"
	"github.com/cella-go/cella/token"
)

// Alloc takes a free slot and returns its token and a pointer to its value,
// zeroed. The pointer is valid until the token is freed or the arena closed;
// it gives unsynchronised access (use View and Update for shared access).
func (a *Arena[T]) Alloc() (token.Token, *T, error) {
	var bo atomicx.Backoff
	for round := 0; ; round++ {
		// Gate.Enter spelled out: it does not inline (two calls).
		p := a.gate.EnterAny()
		if a.gate.Closed() {
			a.gate.Exit(p)
			return token.Nil, nil, ErrClosed
		}
		if w := a.takeCached(p); w != 0 {
			idx, gen := cacheSlot(w)
			v := a.payload(idx)
			var zero T
			*v = zero // a cached slot is always a recycled one
			a.gate.Exit(p)
			return token.New(idx, gen), v, nil
		}
		idx, gen, res := a.take(p, round)
		switch res {
		case took, tookRecycled:
			v := a.payload(idx)
			if res == tookRecycled {
				var zero T
				*v = zero
			}
			a.gate.Exit(p)
			return token.New(idx, gen), v, nil
		case full:
			a.gate.Exit(p)
			return token.Nil, nil, ErrFull
		}
		a.gate.Exit(p)
		bo.Wait() // slots were moving between shards: look again, unpinned
	}
}

// Store takes a free slot, copies v into it and returns its token.
func (a *Arena[T]) Store(v T) (token.Token, error) {
	var bo atomicx.Backoff
	for round := 0; ; round++ {
		p := a.gate.EnterAny() // Gate.Enter spelled out, as in Alloc
		if a.gate.Closed() {
			a.gate.Exit(p)
			return token.Nil, ErrClosed
		}
		if w := a.takeCached(p); w != 0 {
			idx, gen := cacheSlot(w)
			*a.payload(idx) = v
			a.gate.Exit(p)
			return token.New(idx, gen), nil
		}
		idx, gen, res := a.take(p, round)
		switch res {
		case took, tookRecycled:
			*a.payload(idx) = v
			a.gate.Exit(p)
			return token.New(idx, gen), nil
		case full:
			a.gate.Exit(p)
			return token.Nil, ErrFull
		}
		a.gate.Exit(p)
		bo.Wait()
	}
}

// takeResult says how take went.
type takeResult uint8

const (
	took         takeResult = iota // a never-used slot: its payload is zero
	tookRecycled                   // a used slot: its payload holds old bytes
	full                           // every shard is empty
	retry                          // slots were moving between shards: retry unpinned
)

// maxBusyRounds bounds how often Alloc looks again because slots were moving
// between shards when it found them all empty. A steal takes well under a
// microsecond, so one look again nearly always settles it; the bound only
// keeps a goroutine from retrying forever while other goroutines keep
// stealing from a nearly full arena (the backoff reaches 1 ms sleeps well
// before it).
const maxBusyRounds = 100

// take pops a free slot for P p and marks it allocated; Alloc and Store call
// it after takeCached found P p's cache empty. round counts the caller's
// earlier tries that found slots moving. Runs inside a gate section.
func (c *core) take(p, round int) (idx, gen uint32, res takeResult) {
	idx, src, ok := c.set.Pop(c.home(p))
	if !ok {
		// Every shard was empty: the caches are the last place a free
		// slot can be (see cache.go).
		if idx, gen, ok := c.cacheSteal(); ok {
			c.countAlloc(p, true)
			return idx, gen, tookRecycled
		}
		if src == shard.Busy && round < maxBusyRounds {
			return 0, 0, retry
		}
		c.countFailed(p)
		return 0, 0, full
	}
	st := c.state(idx)
	s := atomic.LoadUint64(st)
	gen, res = c.firstGen, took
	if s != 0 {
		gen, res = genOf(s), tookRecycled
	}
	// The slot is ours alone: no hold can be taken on a slot whose alloc
	// bit is clear, and no token carries gen yet, so other goroutines can
	// only read this word (or fail a CAS on it). A plain aligned store is
	// atomic on every platform Go supports, and it avoids the full fence of
	// atomic.Store (XCHG on amd64). The token reaches other goroutines only
	// through a synchronising hand-off, which orders this store before
	// their loads. (A thief holding a stale cache entry for this slot may
	// CAS the word meanwhile; it expects an older free state, so it fails
	// and changes nothing. Under the race detector the store is atomic.)
	if raceEnabled {
		atomic.StoreUint64(st, uint64(gen)<<genShift|allocBit)
	} else {
		*st = uint64(gen)<<genShift | allocBit
	}
	c.countAlloc(p, src == shard.FromSteal)
	return idx, gen, res
}

// Free releases t's slot. From this moment every use of t returns ErrStale.
// If View or Update callbacks are running on the slot, Free returns at once
// and the slot is recycled when the last of them returns.
func (c *core) Free(t token.Token) error {
	idx, gen, ok := c.check(t)
	if !ok {
		return c.badToken("Free", t)
	}
	p := c.gate.EnterAny() // Gate.Enter spelled out, as in Alloc
	if c.gate.Closed() {
		c.gate.Exit(p)
		return ErrClosed
	}
	st := c.state(idx)
	for {
		s := atomic.LoadUint64(st)
		if !valid(s, gen) {
			c.gate.Exit(p)
			return staleToken("Free", t)
		}
		// Clear alloc, advance the generation (to retiredGen at the wrap),
		// keep the holders.
		ns := (uint64(gen)+1)<<genShift | s&holders
		if atomic.CompareAndSwapUint64(st, s, ns) {
			if ns&holders == 0 {
				// Fast path: into this P's empty cache (cache.go).
				pc := c.local(p)
				if genOf(ns) != retiredGen && c.cachePut(pc, idx, ns) {
					pc.frees++
					c.gate.Exit(p)
					c.freed() // issue 11: wake a waiter (wait.go)
					return nil
				}
				c.recycle(p, idx, ns)
			}
			c.countFree(p)
			c.gate.Exit(p)
			if ns&holders == 0 {
				c.freed() // issue 11: wake a waiter (wait.go)
			}
			return nil
		}
	}
}

// recycle puts a freed slot with no holders back on P p's shard, or retires
// it if its generation is used up. Runs inside a gate section.
func (c *core) recycle(p int, idx uint32, state uint64) {
	if genOf(state) == retiredGen {
		c.retired.Add(1)
		return
	}
	if c.cachePut(c.local(p), idx, state) {
		return
	}
	c.set.Push(c.freeShard(p, idx), idx)
}
