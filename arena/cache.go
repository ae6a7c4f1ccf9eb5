package arena

import (
	"sync/atomic"

	"github.com/cella-go/cella/shard"
)

// The per-P slot cache.
//
// Every P has a one-slot cache of a freed slot in its pCounters (the same
// cache line as its counters). Free puts a slot there when the cache is
// empty, instead of pushing it onto the shard's freelist; the next Alloc on
// that P takes it back. The cache word is the slot's free state word
// (generation<<32: alloc clear, no holders) with index+1 in its low 32 bits.
// That free state occurs once in a slot's whole life (generations only
// grow, and a slot is never reused after its generation wraps), so a CAS
// from it succeeds at most once: a stale entry can never hand its slot out.
//
// # The owner takes its cache with no locked instruction
//
// A slot in P p's cache is free and no token names its generation, so only
// two parties can want it: p's own goroutines (which run one at a time,
// pinned) and thieves — Allocs on other Ps that found every shard empty and
// must not report ErrFull while a slot sits in a cache. The owner claims
// with plain memory operations; thieves pay instead, with an asymmetric
// fence (atomicx.ProcessBarrier) on a rare path. Each P has a steal word,
// thieves<<1 | cooling, next to its cache word:
//
//	owner Alloc (pinned)                 thief (slow path)
//	w := cache                           steal += 2 | cooling   (locked)
//	cache = 0          (plain store)     ProcessBarrier()        (every CPU fences)
//	if steal == 0      (plain load)      w := cache
//	    state = w.free|alloc (plain)     CAS state w.free → w.free|alloc
//	else CAS state like a thief          steal -= 2              (locked)
//
// The store-then-load order on the owner's side is the whole argument. The
// barrier runs on the owner's CPU at some point of its program. If the
// owner's load of steal comes after that point, it sees the thief's
// increment and the owner falls back to the CAS, so at most one of the two
// wins. If the load comes before that point, so does the owner's store
// clearing the cache (it is earlier in program order), and the barrier
// makes it visible before the thief reads the cache: the thief reads 0 or a
// newer entry, never w. (Reading steal BEFORE clearing the cache would be
// wrong: a thief could read w between the two, and both would claim it.)
// An owner that is not on a CPU during the barrier is covered by the full
// barrier of its context switch.
//
// Where membarrier is not available (old kernels, seccomp), barrier stops
// the world briefly instead, which cannot complete while the owner is
// pinned and orders the thief just as well.
//
// # Cooling
//
// The barrier costs a syscall, and a stop-the-world without membarrier, so
// a thief must not pay it on every Alloc of a nearly full arena. A thief
// sets the cooling bit, which it never clears: while it is set the owner
// does not cache (its Frees push to the freelist, where thieves take slots
// with one CAS and no barrier) and claims any entry still cached with a
// CAS. The owner clears the bit itself, with a CAS from exactly "cooling, no
// thief inside, cache empty", after coolFrees frees. A thief inside (steal
// ≥ 2) keeps the bit set until it has left, so no thief ever reads a cache
// whose owner has gone back to plain claims; and an entry a thief may have
// taken is gone from the cache before the owner can clear the bit (its next
// Alloc clears the word), so the owner never plain-claims a slot a thief
// holds. A P is fenced at most once per coolFrees of its frees.
//
// # Exact ErrFull
//
// A slot sits in a cache until it is allocated (by the owner or a thief):
// nothing moves a free slot out of a cache. But free slots do move between
// the shards and the caches while an Alloc looks at both: a slot can be
// freed onto a shard the Alloc has looked at while another leaves a cache
// it has not looked at yet. So ErrFull is decided by a double collect
// (takeSlow): the sum of every P's puts counter (slots put in its cache;
// only ever grows), the caches themselves (fenced and claimed from), then
// the shard set again (shard.Set.Pop's empty answer comes with an instant
// at which every shard was empty), then the puts sum again. If the sum did
// not move, no cache gained a slot between the two reads; every cache that
// held a slot at the first read was claimed from (or had been allocated
// from) before the second Pop; so at the second Pop's empty instant no
// cache and no shard held a free slot, and ErrFull is true at that instant.
// Otherwise Alloc looks again.
//
// Per-node arenas and the purego build have no cache: a freed slot there
// goes back to its node's shard, and a purego "P" is a random stripe. Ps
// beyond the per-P table (GOMAXPROCS raised after New) have no cache either.

const (
	// lowMask selects a cache word's index+1 (and clears it out of the
	// state).
	lowMask = 1<<32 - 1

	// steal word: bit 0 cooling, the rest twice the thieves inside.
	coolingBit = 1
	thiefInc   = 2

	// coolFrees is how many frees a fenced P makes before it caches again.
	coolFrees = 256

	// maxCachedPs bounds the per-P table (and so the Ps a thief fences at
	// once, a bitmap on its stack); Ps beyond it have no cache.
	maxCachedPs = 4096
)

// setCache writes P pc's cache word. Only a goroutine pinned to pc's P
// writes it.
func setCache(pc *pCounters, w uint64) {
	if raceEnabled {
		atomic.StoreUint64(&pc.cache, w)
		return
	}
	pc.cache = w
}

// loadSteal reads P pc's steal word from its owner.
func loadSteal(pc *pCounters) uint64 {
	if raceEnabled {
		return atomic.LoadUint64(&pc.steal)
	}
	return pc.steal
}

// cachePut offers a freed slot with no holders to pc's cache; state is the
// slot's free state word. It reports whether the cache took it. The caller
// is pinned to pc's P and has checked that the slot is not retired.
func (c *core) cachePut(pc *pCounters, idx uint32, state uint64) bool {
	if pc == nil || pc.cache != 0 || c.nodes != nil {
		return false
	}
	if loadSteal(pc) != 0 && !c.cooled(pc) {
		return false
	}
	setCache(pc, state|uint64(idx+1))
	if raceEnabled {
		atomic.AddUint64(&pc.puts, 1)
	} else {
		pc.puts++
	}
	return true
}

// cooled counts one more free on a fenced P and reports whether the P may
// cache again (it cleared the cooling bit). The cache is empty.
func (c *core) cooled(pc *pCounters) bool {
	if pc.cool++; pc.cool < coolFrees {
		return false
	}
	if !atomic.CompareAndSwapUint64(&pc.steal, coolingBit, 0) {
		return false // a thief is inside: try again at the next free
	}
	pc.cool = 0
	return true
}

// takeCached is Alloc's fast path, small enough to inline: it claims the
// slot in the cache of the caller's P, pc, and returns the cache word (see
// cacheSlot), or 0, and the caller goes on to the slow path (the cache is
// then empty). The caller is pinned to pc's P (a P below nP: the others have
// no cache) and counts the allocation.
func (c *core) takeCached(pc *pCounters) uint64 {
	w := pc.cache
	if w == 0 {
		return 0
	}
	setCache(pc, 0)
	st, free := c.state(uint32(w)-1), w&^lowMask
	// Steal is read after the cache was cleared: see the protocol above.
	if loadSteal(pc) == 0 {
		claim(st, free|allocBit)
	} else if !atomic.CompareAndSwapUint64(st, free, free|allocBit) {
		return 0 // a thief took it
	}
	return w
}

// cacheSlot splits a cache word into the slot's index and generation.
func cacheSlot(w uint64) (idx, gen uint32) { return uint32(w) - 1, uint32(w >> genShift) }

// stealResult says how stealCached went.
type stealResult uint8

const (
	stoleNone   stealResult = iota // every cache was empty
	stole                          // a slot was claimed; the caller is pinned
	stealClosed                    // the arena closed meanwhile
)

// stealCached claims a slot from any P's cache, for an Alloc that found
// every shard empty. It must be called unpinned (it fences, see above). On
// stole it returns pinned to P p, inside a gate section, with the slot
// allocated; otherwise unpinned.
//
// puts is the sum of the Ps' puts counters, read before their caches; the
// caller compares it with cachePuts after it looked at the shards again.
func (c *core) stealCached() (p int, idx, gen uint32, puts uint64, res stealResult) {
	if !shard.Pinned || c.nodes != nil {
		return 0, 0, 0, 0, stoleNone
	}
	n := c.nP
	var fenced [maxCachedPs / 64]uint64

	// Announce: mark every P whose cache holds something.
	p = c.gate.EnterAny()
	if c.gate.Closed() {
		c.gate.Exit(p)
		return 0, 0, 0, 0, stealClosed
	}
	any := false
	for q := 0; q < n; q++ {
		pc := c.pc(q)
		puts += atomic.LoadUint64(&pc.puts)
		w := atomic.LoadUint64(&pc.cache)
		if w == 0 || atomic.LoadUint64(c.state(uint32(w)-1)) != w&^lowMask {
			// Empty, or a stale entry (its slot was claimed; its free
			// state never comes back): nothing to fence for. An idle
			// P's stale entry must not cost every full Alloc a fence.
			continue
		}
		for {
			s := atomic.LoadUint64(&pc.steal)
			if atomic.CompareAndSwapUint64(&pc.steal, s, (s|coolingBit)+thiefInc) {
				break
			}
		}
		fenced[q/64] |= 1 << (q % 64)
		any = true
	}
	c.gate.Exit(p)
	if !any {
		return 0, 0, 0, puts, stoleNone
	}

	// Fence: from here every owner either has left its cache alone or
	// sees our mark.
	c.spill.drains.Add(1)
	barrier()

	// Claim from the first cache that still holds a free slot, then leave.
	p = c.gate.EnterAny()
	if c.gate.Closed() {
		// The marks stay; nothing caches once the arena is closed.
		c.gate.Exit(p)
		return 0, 0, 0, 0, stealClosed
	}
	res = stoleNone
	for q := 0; q < n; q++ {
		if fenced[q/64]&(1<<(q%64)) == 0 {
			continue
		}
		pc := c.pc(q)
		if res == stoleNone {
			if w := atomic.LoadUint64(&pc.cache); w != 0 {
				free := w &^ lowMask
				st := c.state(uint32(w) - 1)
				// Look before the CAS: a stale entry costs a shared
				// read of the slot's line, not an exclusive one.
				if atomic.LoadUint64(st) == free && atomic.CompareAndSwapUint64(st, free, free|allocBit) {
					idx, gen = cacheSlot(w)
					res = stole
				}
			}
		}
		atomic.AddUint64(&pc.steal, ^uint64(thiefInc-1))
	}
	if res != stole {
		c.gate.Exit(p)
		return 0, 0, 0, puts, stoleNone
	}
	c.countAlloc(p, true)
	return p, idx, gen, 0, stole
}

// cachePuts is the sum of every P's puts counter. Runs inside a gate
// section.
func (c *core) cachePuts() (puts uint64) {
	if !shard.Pinned || c.nodes != nil {
		return 0
	}
	for q := 0; q < c.nP; q++ {
		puts += atomic.LoadUint64(&c.pc(q).puts)
	}
	return puts
}

// claim marks a free slot that is the caller's alone as allocated: st is its
// state word, s the allocated state. No hold can be taken on a slot whose
// alloc bit is clear and no token carries its generation yet, so other
// goroutines can only read the word (or fail a CAS on it: a thief holding a
// stale cache entry expects an older free state). A plain aligned store is
// atomic on every platform Go supports and avoids the full fence of
// atomic.Store (XCHG on amd64). The token reaches other goroutines only
// through a synchronising hand-off, which orders this store before their
// loads. Under the race detector the store is atomic.
func claim(st *uint64, s uint64) {
	if raceEnabled {
		atomic.StoreUint64(st, s)
		return
	}
	*st = s
}
