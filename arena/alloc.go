package arena

import (
	"sync/atomic"
	"unsafe"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/shard"
	"github.com/cella-go/cella/token"
)

// Alloc takes a free slot and returns its token and a pointer to its value,
// zeroed (unless Config.NoZero). The pointer is valid until the token is
// freed or the arena closed; it gives unsynchronised access (use View and
// Update for shared access).
func (a *Arena[T]) Alloc() (token.Token, *T, error) {
	// Gate.Enter spelled out: it does not inline (two calls).
	p := a.gate.EnterAny()
	if !a.gate.Closed() {
		if p < a.nP {
			pc := a.pc(p)
			if w := a.takeCached(pc); w != 0 {
				pc.allocs++
				idx, gen := cacheSlot(w)
				v := a.payload(idx)
				if !a.noZero {
					zeroValue(v) // a cached slot is always a recycled one
				}
				a.gate.Exit(p)
				return token.New(idx, gen), v, nil
			}
		}
		// The cache was empty: look at the shards in the same section
		// (a slot freed on another P is found there). takeSlow, in
		// sections of its own, does the rest.
		if idx, gen, res := a.take(p); res == took || res == tookRecycled {
			return a.allocated(p, idx, gen, res)
		}
	}
	a.gate.Exit(p)
	p, idx, gen, res, err := a.takeSlow(true)
	if err != nil {
		return token.Nil, nil, err
	}
	return a.allocated(p, idx, gen, res)
}

// allocated is Alloc's (and allocQuiet's) end once slot idx was taken at
// generation gen: it zeroes a recycled slot (unless Config.NoZero) and ends
// P p's gate section.
func (a *Arena[T]) allocated(p int, idx, gen uint32, res takeResult) (token.Token, *T, error) {
	v := a.payload(idx)
	if res == tookRecycled && !a.noZero {
		zeroValue(v)
	}
	a.gate.Exit(p)
	return token.New(idx, gen), v, nil
}

// Store takes a free slot, copies v into it and returns its token. For a
// large T, Alloc and a write through its pointer skip the copy into the
// call (and a large byte-array local, which the compiler may place at an
// odd stack address, copies several times slower: bench/payload.go).
func (a *Arena[T]) Store(v T) (token.Token, error) {
	p := a.gate.EnterAny() // Gate.Enter spelled out, as in Alloc
	if !a.gate.Closed() {
		if p < a.nP {
			pc := a.pc(p)
			if w := a.takeCached(pc); w != 0 {
				pc.allocs++
				idx, gen := cacheSlot(w)
				a.put(idx, &v)
				a.gate.Exit(p)
				return token.New(idx, gen), nil
			}
		}
		if idx, gen, res := a.take(p); res == took || res == tookRecycled { // as in Alloc
			a.put(idx, &v)
			a.gate.Exit(p)
			return token.New(idx, gen), nil
		}
	}
	a.gate.Exit(p)
	p, idx, gen, _, err := a.takeSlow(true)
	if err != nil {
		return token.Nil, err
	}
	a.put(idx, &v)
	a.gate.Exit(p)
	return token.New(idx, gen), nil
}

// put copies *v into slot idx, through a byte view past bigValue bytes.
func (a *Arena[T]) put(idx uint32, v *T) {
	dst := a.payload(idx)
	if unsafe.Sizeof(*v) > bigValue {
		copyBytes(unsafe.Pointer(dst), unsafe.Pointer(v), unsafe.Sizeof(*v))
		return
	}
	*dst = *v
}

// takeResult says how take went.
type takeResult uint8

const (
	took         takeResult = iota // a never-used slot: its payload is zero
	tookRecycled                   // a used slot: its payload holds old bytes
	full                           // every shard is empty
	retry                          // slots were moving between shards: retry unpinned
)

// takeSlow is Alloc's path when its P's cache was empty and a first look at
// the shards found nothing (or the arena closed): the shards, then the
// other Ps' caches, then the shards again to
// decide ErrFull exactly (see "Exact ErrFull" in cache.go). On success it
// returns pinned to P p, inside a gate section, with slot idx allocated at
// generation gen; the caller fills the slot and exits the section. On error
// it returns unpinned.
//
// It looks again, after a backoff, as long as slots were moving: a shard
// scan that saw a push, pop or steal elsewhere, or a cache that gained a
// slot. Each look again means another goroutine's operation succeeded, so
// the arena as a whole always makes progress.
//
// countFull says whether an ErrFull counts in Stats.Failed: it does for
// Alloc and Store, not for the looks of AllocWait and StoreWait, which wait
// instead of returning it.
func (c *core) takeSlow(countFull bool) (p int, idx, gen uint32, res takeResult, err error) {
	var bo atomicx.Backoff
	for {
		p, idx, gen, res, err = c.enterTake()
		if err != nil || res == took || res == tookRecycled {
			return p, idx, gen, res, err
		}
		c.gate.Exit(p)
		if res == retry {
			bo.Wait()
			continue
		}
		// Every shard was empty: the caches are the last place a free
		// slot can be. Claiming from them fences, so it runs unpinned.
		p, idx, gen, puts, sr := c.stealCached()
		switch sr {
		case stole:
			return p, idx, gen, tookRecycled, nil
		case stealClosed:
			return 0, 0, 0, full, ErrClosed
		}
		if testHookAfterCacheScan != nil {
			testHookAfterCacheScan()
		}
		// Look at the shards again, then check that no cache gained a
		// slot meanwhile.
		p, idx, gen, res, err = c.enterTake()
		if err != nil || res == took || res == tookRecycled {
			return p, idx, gen, res, err
		}
		if res == full && c.cachePuts() == puts {
			if countFull {
				c.countFailed(p)
			}
			c.gate.Exit(p)
			return 0, 0, 0, full, ErrFull
		}
		c.gate.Exit(p)
		bo.Wait() // slots were moving: look again, unpinned
	}
}

// enterTake enters a gate section and takes a slot from the shards. It
// returns with the section open (P p) unless the arena is closed (ErrClosed,
// section ended).
func (c *core) enterTake() (p int, idx, gen uint32, res takeResult, err error) {
	p = c.gate.EnterAny()
	if c.gate.Closed() {
		c.gate.Exit(p)
		return 0, 0, 0, full, ErrClosed
	}
	idx, gen, res = c.take(p)
	return p, idx, gen, res, nil
}

// testHookAfterCacheScan, when a test sets it, runs in takeSlow between
// the scan of the caches and the second look at the shards: the window the
// double collect guards (cache.go, "Exact ErrFull").
var testHookAfterCacheScan func()

// take pops a free slot for P p from the shards and marks it allocated.
// Runs inside a gate section. It reports full or retry (slots were moving
// between shards) when every shard was empty.
func (c *core) take(p int) (idx, gen uint32, res takeResult) {
	idx, src, ok := c.set.Pop(c.home(p))
	if !ok {
		if src == shard.Busy {
			return 0, 0, retry
		}
		return 0, 0, full
	}
	// A never-used slot has generation 0 (its low half may hold a link,
	// if a thief moved it between shards); a used one has its next
	// generation.
	gen, res = c.firstGen, took
	if g := genOf(atomic.LoadUint64(c.state(idx))); g != 0 {
		gen, res = g, tookRecycled
	} else {
		c.countFresh(p)
	}
	claim(c.state(idx), uint64(gen)<<genShift|allocBit)
	c.countAlloc(p, src == shard.FromSteal)
	return idx, gen, res
}

// Free releases t's slot. From this moment every use of t returns ErrStale.
// If View or Update callbacks are running on the slot, Free returns at once
// and the slot is recycled when the last of them returns.
func (c *core) Free(t token.Token) error { return c.free(t, nil, 0) }

// free is Free. When word is not nil and this call frees t, it also stores
// mark into *word between the state CAS that frees the slot and the push
// that lets it be allocated again (arenalink.FreeMarking, for message.Store's
// reference counts).
func (c *core) free(t token.Token, word *uint64, mark uint64) error {
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
	// The first try assumes the usual state, a live slot with no holders,
	// and CASes it without loading it first (blindCAS).
	s := uint64(gen)<<genShift | allocBit
	for try := 0; ; try++ {
		if try > 0 {
			s = atomic.LoadUint64(st)
			if !valid(s, gen) {
				c.gate.Exit(p)
				return staleToken("Free", t)
			}
		}
		// Clear alloc, advance the generation (to retiredGen at the wrap),
		// keep the holders.
		ns := (uint64(gen)+1)<<genShift | s&holders
		if blindCAS(st, s, ns) {
			if word != nil {
				markWord(word, mark)
			}
			if ns&holders == 0 {
				// Fast path: into this P's empty cache (cache.go).
				pc := c.local(p)
				if genOf(ns) != retiredGen && c.cachePut(pc, idx, ns) {
					pc.frees++
					c.gate.Exit(p)
					c.freed() // wake a waiter, if any (wait.go)
					return nil
				}
				c.recycle(p, idx, ns)
			}
			c.countFree(p)
			c.gate.Exit(p)
			if ns&holders == 0 {
				c.freed() // wake a waiter, if any (wait.go)
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
