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
// that P takes it back. A pair then costs two locked instructions, both on
// the slot's own state word (the CAS of Free and the claim below), instead
// of three (freelist pop, state CAS, freelist push).
//
// The cache word is the slot's free state word (generation<<32: alloc clear,
// no holders) with index+1 in its low 32 bits. A slot is claimed from a
// cache, by its owner or by a thief, with one CAS of its state word from
// exactly that free state to allocated. That word occurs once in a slot's
// whole life: generations only grow, and a slot is never reused after its
// generation wraps. So whoever wins the CAS owns the slot, and a cache
// entry whose slot was claimed by someone else (and maybe freed and reused
// since) can never be claimed again: the entry is only a hint, and the
// slot's state word decides.
//
// Only a goroutine pinned to the P writes its cache word (plain stores:
// nothing else runs on the P meanwhile); thieves only read it. A thief never
// clears it: the owner finds a stolen entry stale at its next Alloc, when its
// claim fails, and clears it then. Until then the owner's Frees push to the
// freelist as before.
//
// Exact ErrFull: take looks at every P's cache after the shard set reports
// every shard empty. A free slot that sits in a cache leaves it only by
// being allocated (the owner overwrites its cache word only when it is
// empty or after its own claim), so a slot that stays free during the scan
// is found, without waiting for the owner and without stopping the world.
//
// Per-node arenas and the purego build have no cache: a freed slot there
// goes back to its node's shard, and a purego "P" is a random stripe.

// lowMask selects a cache word's index+1 (and clears it out of the state).
const lowMask = 1<<32 - 1

// setCache writes P pc's cache word.
func setCache(pc *pCounters, w uint64) {
	if raceEnabled {
		atomic.StoreUint64(&pc.cache, w)
		return
	}
	pc.cache = w
}

// cachePut offers a freed slot with no holders to pc's cache; state is the
// slot's free state word. It reports whether the cache took it. The caller
// is pinned to pc's P and has checked that the slot is not retired.
func (c *core) cachePut(pc *pCounters, idx uint32, state uint64) bool {
	if pc == nil || pc.cache != 0 || c.nodes != nil {
		return false
	}
	setCache(pc, state|uint64(idx+1))
	return true
}

// takeCached is Alloc's fast path, small enough to inline: it claims the
// slot in P p's own cache, counts the allocation and returns the cache word
// (see cacheToken), or 0, and the caller goes on to take (the cache is then
// empty). The caller is pinned to p.
func (c *core) takeCached(p int) uint64 {
	if p >= c.nP { // no cache (purego: every cache stays empty)
		return 0
	}
	pc := c.pc(p)
	w := pc.cache
	if w == 0 {
		return 0
	}
	setCache(pc, 0)
	if atomic.CompareAndSwapUint64(c.state(uint32(w)-1), w&^lowMask, w&^lowMask|allocBit) {
		pc.allocs++
		return w
	}
	return 0 // a thief took it
}

// cacheSlot splits a cache word into the slot's index and generation.
func cacheSlot(w uint64) (idx, gen uint32) { return uint32(w) - 1, uint32(w >> genShift) }

// cacheSteal claims a slot from any P's cache, or reports that every cache
// is empty. Runs inside a gate section.
func (c *core) cacheSteal() (idx, gen uint32, ok bool) {
	if !shard.Pinned || c.nodes != nil {
		return 0, 0, false
	}
	for q := 0; q < c.nP; q++ {
		pc := c.pc(q)
		w := atomic.LoadUint64(&pc.cache)
		if w == 0 {
			continue
		}
		idx = uint32(w) - 1
		free := w &^ lowMask
		st := c.state(idx)
		// Look before the CAS: a stale entry costs a shared read of the
		// slot's line, not an exclusive one.
		if atomic.LoadUint64(st) == free && atomic.CompareAndSwapUint64(st, free, free|allocBit) {
			return idx, uint32(w >> genShift), true
		}
	}
	return 0, 0, false
}
