package arena

import (
	"sync/atomic"
	"unsafe"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/shard"
)

// Stats is a snapshot of an arena's counters. It is exact when no operation
// is in flight; while operations run, each field is a recent value.
type Stats struct {
	Allocs    uint64 // successful Alloc and Store calls
	Frees     uint64 // successful Free calls
	Steals    uint64 // allocations that took from elsewhere than their own shard and cache: a batch stolen from another shard (its other slots then serve later ones as local), or a slot claimed from another P's cache (see Drains)
	Failed    uint64 // Alloc and Store calls that returned ErrFull
	Drains    uint64 // times an Alloc fenced other Ps to claim a slot from their caches
	Retired   uint64 // slots retired at generation wrap (no longer in Capacity)
	Live      uint64 // Allocs - Frees: slots allocated now
	Untouched uint64 // slots never used yet (no memory committed for them)
	Shards    int    // number of shards
}

// pCounters are one P's counters. In the default build only goroutines pinned
// to that P write them, so they are plain increments: no atomic, no shared
// cache line. They live off-heap with the slots.
type pCounters struct {
	allocs, frees, steals, failed uint64
	// cache is the P's one-slot cache of a freed slot (see cache.go): the
	// slot's free state word with index+1 in its low 32 bits, 0 = empty.
	// Only a goroutine pinned to the P writes it; thieves read it.
	cache uint64
	// steal is thieves<<1 | cooling (see cache.go): thieves write it with
	// atomics, the owner reads it plainly and clears cooling with a CAS.
	steal uint64
	// puts counts the slots the owner has put in its cache; a thief's
	// ErrFull check reads it twice (cache.go).
	puts uint64
	home uint32 // per-node arenas: home shard + 1, 0 = look it up
	cool uint32 // frees since the cooling bit was set (cache.go)
	_    [atomicx.CacheLine - 64]byte

	// The second line, off the hot one: written only on the slow path.
	fresh uint64 // never-used slots this P allocated (take)
	_     [atomicx.CacheLine - 8]byte
}

// spillCounters take the counts of P ids beyond the per-P table (GOMAXPROCS
// raised after New) and of the purego build, with atomics.
type spillCounters struct {
	allocs, frees, steals, failed atomic.Uint64
	fresh                         atomic.Uint64
	drains                        atomic.Uint64 // thieves that fenced P caches
}

func (c *core) local(p int) *pCounters {
	if shard.Pinned && p < c.nP {
		return c.pc(p)
	}
	return nil
}

// pc returns P p's counters; p < nP.
func (c *core) pc(p int) *pCounters {
	return (*pCounters)(unsafe.Add(c.perP, uintptr(p)*unsafe.Sizeof(pCounters{})))
}

func (c *core) countAlloc(p int, stolen bool) {
	if pc := c.local(p); pc != nil {
		pc.allocs++
		if stolen {
			pc.steals++
			pc.home = 0 // our node ran dry, or we moved: look again
		}
		return
	}
	c.spill.allocs.Add(1)
	if stolen {
		c.spill.steals.Add(1)
	}
}

func (c *core) countFree(p int) {
	if pc := c.local(p); pc != nil {
		pc.frees++
		return
	}
	c.spill.frees.Add(1)
}

// countFresh counts the first allocation of a slot. Untouched is the
// slots less these: a steal moves up to a batch of never-used slots to
// the thief's freelist, so the shards' frontiers alone would count those
// as used before they are.
func (c *core) countFresh(p int) {
	if pc := c.local(p); pc != nil {
		pc.fresh++
		return
	}
	c.spill.fresh.Add(1)
}

func (c *core) countFailed(p int) {
	if pc := c.local(p); pc != nil {
		pc.failed++
		return
	}
	c.spill.failed.Add(1)
}

// Stats sums the per-P counters. After Close it returns the final figures.
func (c *core) Stats() Stats {
	if f := c.final.Load(); f != nil {
		return *f
	}
	p, ok := c.gate.Enter()
	if !ok {
		return c.finalStats()
	}
	st := c.sum()
	c.gate.Exit(p)
	return st
}

// finalStats waits for Close to publish its snapshot (it does so right after
// its first grace period).
func (c *core) finalStats() Stats {
	var bo atomicx.Backoff
	for {
		if f := c.final.Load(); f != nil {
			return *f
		}
		bo.Wait()
	}
}

// sum adds up every counter. The caller keeps the counters mapped (a gate
// section, or Close itself).
func (c *core) sum() Stats {
	var st Stats
	var fresh uint64
	for p := 0; p < c.nP; p++ {
		pc := c.pc(p)
		st.Allocs += pc.allocs
		st.Frees += pc.frees
		st.Steals += pc.steals
		st.Failed += pc.failed
		fresh += pc.fresh
	}
	st.Allocs += c.spill.allocs.Load()
	st.Frees += c.spill.frees.Load()
	st.Steals += c.spill.steals.Load()
	st.Failed += c.spill.failed.Load()
	st.Drains = c.spill.drains.Load()
	st.Retired = c.retired.Load()
	if st.Allocs > st.Frees {
		st.Live = st.Allocs - st.Frees
	}
	fresh += c.spill.fresh.Load()
	if fresh < uint64(c.slots) {
		st.Untouched = uint64(c.slots) - fresh
	}
	st.Shards = c.set.Len()
	return st
}

// Available returns how many more slots could be allocated now: Capacity less
// the live slots. It is exact when no operation is in flight (a slot freed
// while a View holds it counts as available already). It is 0 after Close.
func (c *core) Available() int {
	if c.gate.Closed() {
		return 0
	}
	st := c.Stats()
	capacity := uint64(c.slots) - st.Retired
	if st.Live >= capacity {
		return 0
	}
	return int(capacity - st.Live)
}
