package shard

import (
	"sort"
	"sync/atomic"
	"unsafe"

	"github.com/cella-go/cella/internal/atomicx"
)

// MaxSlots is the largest number of slots a Set can index: a freelist link
// stores index+1 in 32 bits, with 0 meaning "end of list".
const MaxSlots = 1<<32 - 2

// MaxShards bounds the shard count, to keep the shard table small.
const MaxShards = 1 << 16

// Source says where Pop found a slot.
type Source uint8

const (
	FromList  Source = iota // the home shard's freelist
	FromFresh               // the home shard's never-used frontier
	FromSteal               // another shard's freelist or frontier
	// Busy is reported with ok == false when the scan found no slot but
	// could not prove the Set empty: slots were moving between shards while
	// it looked (a thief held a batch or finished moving one, or a freelist
	// the scan had found empty was pushed onto). A slot may be free. The
	// caller should unpin, back off and retry. A Pop that reports ok ==
	// false without Busy saw an instant at which every shard was empty.
	Busy
)

// StealBatch is how many slots a thief takes at a time from a victim's
// frontier, or from the freelist of a victim in another part: the first is
// returned, the rest go onto the thief's own freelist so that the next
// allocations on this P are local again. From a victim in its own part a
// thief takes the top stealKeep of its freelist with a few CASes
// (stealList).
const StealBatch = 32

// Set is a fixed array of shards over the slot indices [0, slots). Each shard
// owns a contiguous range of indices and hands them out in two ways: recycled
// indices from its tagged freelist, then never-used ones from its bump
// frontier. Nothing is initialised per slot up front.
//
// The freelist links live in memory the caller provides (a uint32 at
// links + i*stride for slot i), because that memory belongs with the slots:
// off the Go heap and committed only when a slot is first used.
type Set struct {
	shards   []shardState
	parts    []part
	links    unsafe.Pointer
	stride   uintptr
	n        int
	linkFlag uint32 // ORed into every link written (SetLinkFlag)
	// freshFirst is how many never-used slots of its range a shard hands
	// out before recycle runs ahead of its frontier (SetFreshFirst).
	freshFirst uint32

	_ atomicx.Pad
	// steals counts steals in progress (low 32 bits) and steals completed
	// (high 32 bits, wrapping). A thief adds 1 before it takes anything
	// and stealDone-1 after its batch is on its own freelist (or just -1 if
	// it found nothing), so slots in a thief's hands are never taken for
	// "empty" (popSlow says how). Only steals touch it.
	steals atomic.Uint64
	_      atomicx.Pad
}

const stealDone = 1 << 32

// part is a group of shards whose ranges are contiguous and whose memory sits
// on one NUMA node (node -1: no particular node).
type part struct {
	first, count int // shards [first, first+count)
	node         int
	near         []int // the other parts, in the order thieves visit them
}

// shardState is one shard. head and frontier are written by the owner on
// every Pop and Push and by thieves when they steal; the padding keeps each
// shard's words on their own cache lines.
type shardState struct {
	// head is the top of the freelist: tag<<32 | (index+1), 0 = empty.
	// The tag is bumped by every successful push and pop, so a CAS that
	// read a head, lost the CPU while the list changed, and comes back to
	// an equal index still fails (the ABA problem).
	head atomic.Uint64
	// frontier is the next never-used index; the shard is fresh-empty at end.
	frontier atomic.Uint32
	start    uint32 // first index of the shard's range
	end      uint32 // one past the last index of the shard's range
	part     uint32 // index into Set.parts
	// victim is the shard (index+1, 0 = none) whose freelist popSlow last
	// recycled from for this one, tried first next time; probe is where
	// recycle's next look at the others starts, in a part of more than
	// recycleProbes+1 shards. Both are hints, written with release stores.
	victim uint32
	probe  uint32
	_      [atomicx.CacheLine - 32]byte
}

// New splits slots indices over shards shards. links must point at memory
// holding a uint32 every stride bytes for each slot; the Set reads and writes
// only those words.
func New(slots uint32, shards int, links unsafe.Pointer, stride uintptr) *Set {
	return NewLayout([]Part{{Slots: slots, Shards: shards, Node: -1}}, links, stride)
}

// Part describes a run of consecutive slot indices served by its own group of
// shards, typically one NUMA node's share of an arena.
type Part struct {
	Slots  uint32 // indices in this part (following the previous part's)
	Shards int    // shards serving them, ≥ 1
	Node   int    // the NUMA node the part's memory is on, or -1
}

// NewLayout builds a Set from parts laid out one after the other. A thief
// steals from the shards of its own part first and crosses to other parts
// only when its whole part is empty.
func NewLayout(parts []Part, links unsafe.Pointer, stride uintptr) *Set {
	total, slots := 0, uint64(0)
	for _, p := range parts {
		if p.Shards < 1 {
			panic("shard: a part needs at least one shard") // callers validate; unreachable for users
		}
		total += p.Shards
		slots += uint64(p.Slots)
	}
	if len(parts) == 0 || total > MaxShards || slots > MaxSlots {
		panic("shard: bad layout") // callers validate; unreachable for users
	}
	s := &Set{shards: make([]shardState, total), links: links, stride: stride, n: total}
	var lo uint32
	sh := 0
	for pi, p := range parts {
		s.parts = append(s.parts, part{first: sh, count: p.Shards, node: p.Node})
		per, extra := p.Slots/uint32(p.Shards), p.Slots%uint32(p.Shards)
		for i := 0; i < p.Shards; i++ {
			size := per
			if uint32(i) < extra {
				size++
			}
			st := &s.shards[sh]
			st.start, st.end, st.part = lo, lo+size, uint32(pi)
			st.frontier.Store(lo)
			lo += size
			sh++
		}
	}
	for pi := range s.parts {
		for j := 1; j < len(s.parts); j++ {
			s.parts[pi].near = append(s.parts[pi].near, (pi+j)%len(s.parts))
		}
	}
	return s
}

// OrderParts sets the order in which thieves of each part visit the other
// parts once their own part is empty: for example nearest NUMA node first.
// less(i, a, b) reports whether, seen from part i, part a comes before b.
// Call it right after NewLayout, before the Set is used.
func (s *Set) OrderParts(less func(i, a, b int) bool) {
	for i := range s.parts {
		near := s.parts[i].near
		sort.SliceStable(near, func(x, y int) bool { return less(i, near[x], near[y]) })
	}
}

// Parts returns how many parts the Set has.
func (s *Set) Parts() int { return len(s.parts) }

// PartShards returns the shards [first, first+count) of part i and its node.
func (s *Set) PartShards(i int) (first, count, node int) {
	p := s.parts[i]
	return p.first, p.count, p.node
}

// PartOf returns the part shard belongs to.
func (s *Set) PartOf(shard int) int { return int(s.shards[shard].part) }

// Len returns the number of shards.
func (s *Set) Len() int { return s.n }

// Of maps a P id to its home shard. P ids above the shard count (GOMAXPROCS
// raised after New, or fewer shards configured than Ps) wrap around.
func (s *Set) Of(p int) int {
	if p < s.n {
		return p
	}
	return p % s.n
}

// Range returns the index range [start, end) a shard owns.
func (s *Set) Range(shard int) (start, end uint32) {
	st := &s.shards[shard]
	return st.start, st.end
}

// Touched returns the part of a shard's range that has ever been handed out:
// [start, frontier). Slots above the frontier have never been used.
func (s *Set) Touched(shard int) (start, frontier uint32) {
	st := &s.shards[shard]
	return st.start, st.frontier.Load()
}

// Untouched returns how many slots no shard has handed out yet.
func (s *Set) Untouched() uint64 {
	var n uint64
	for i := range s.shards {
		st := &s.shards[i]
		n += uint64(st.end - st.frontier.Load())
	}
	return n
}

func (s *Set) link(idx uint32) *uint32 {
	return (*uint32)(unsafe.Add(s.links, uintptr(idx)*s.stride))
}

// loadLink reads slot idx's link (index+1 of the next free slot, 0 = end),
// without the Set's link flag.
func (s *Set) loadLink(idx uint32) uint32 {
	return atomic.LoadUint32(s.link(idx)) &^ s.linkFlag
}

// storeLink writes slot idx's link, with the Set's link flag. Nobody reads
// the link of a slot the caller is linking until a CAS on a freelist head
// publishes it, so a plain store is enough (atomic under the race detector,
// which sees readers of the whole word the link may share, see LinkFlag).
func (s *Set) storeLink(idx, next uint32) {
	if raceEnabled {
		atomic.StoreUint32(s.link(idx), next|s.linkFlag)
		return
	}
	*s.link(idx) = next | s.linkFlag
}

// SetLinkFlag makes the Set OR flag into every link it writes and mask it
// out of every link it reads. The arena keeps a free slot's link in the low
// half of its state word, and the flag tells a linked free slot apart from
// a freed slot that callbacks still hold (whose low half counts them). Call
// it before the Set is used; links (index+1) must stay below flag.
func (s *Set) SetLinkFlag(flag uint32) { s.linkFlag = flag }

// SetFreshFirst lets each shard hand out n never-used slots of its range
// before it recycles other shards' freed slots ahead of its frontier (see
// recycle); 0, the default, recycles first from the start. Slots freed
// onto another core's shard are reused sooner the smaller n is: fewer
// slots ever touched, but lines still hot in the core that freed them.
// Call it before the Set is used.
func (s *Set) SetFreshFirst(n uint32) { s.freshFirst = n }

// Pop takes a free slot for a caller whose home shard is home: from the home
// freelist, else from the freelist of another shard of its part (recycle),
// else the home frontier, else by stealing a batch from the other shards'
// frontiers and from other parts.
//
// When ok is false and src is not Busy, the Set was empty at one instant
// during the call: no shard's freelist or frontier held an index and no steal
// was carrying a batch between shards, so every index was out with a caller
// (popped and not yet pushed back). Slots that only move between shards,
// even while the scan looks at other shards, never make Pop report empty.
// (The one exception needs 2^32 or more successful pushes and pops on the
// Set's freelists during one call, or a non-zero multiple of 2^32 steals
// finishing during one call; see popSlow.)
//
// When ok is false and src is Busy, the scan found no slot but could not
// prove the Set empty, because slots were moving between shards while it
// looked. A slot may be free; the caller should unpin, back off and call Pop
// again.
func (s *Set) Pop(home int) (idx uint32, src Source, ok bool) {
	if idx, ok = s.popList(&s.shards[home]); ok {
		return idx, FromList, true
	}
	return s.popSlow(home)
}

// scanPasses bounds the passes of one popSlow over every shard: the first
// pass, a second to validate it, and one more to validate the second if the
// first was disturbed. After that Pop reports Busy and lets the caller back
// off rather than scan a churning Set again and again.
const scanPasses = 3

// popSlow is Pop after the home freelist was found empty.
//
// # Why "empty" is exact
//
// One pass over the shards cannot prove them empty by itself: it looks at
// the shards one after the other, and a slot can move from a shard not yet
// looked at to one already passed (a home Pop on the first, a Push on the
// second), so every look finds an empty shard while a slot is free at every
// instant. popSlow therefore looks at every shard twice and reports empty
// only if the second pass saw nothing change, checked by the freelist tags
// and the steal word, as follows.
//
// Pass A sees every shard empty: at time a_i it reads shard i's head with no
// index in it and tag t_i (and finds its frontier used up at some time in
// the pass). Pass B starts after pass A ends, at time T, and reads every head
// again, at b_i > T. Each pass sums the tags it read; the sums are equal.
// (The home frontier is found used up before pass A, which is as good.)
//
//   - Tags only grow (mod 2^32), by one per successful push or pop, so equal
//     sums mean every head kept its tag from a_i to b_i, unless the tags
//     moved by 2^32 or more in all. An unchanged tag is an unchanged head:
//     freelist i was empty during all of [a_i, b_i], and so at T.
//   - A frontier only advances, so one found used up stays used up: every
//     frontier is used up at T.
//   - So at T no shard holds a free index. What the shards do not hold is
//     with callers, or in a thief's hands between its pop from the victim
//     and its push onto its own list. The steal word covers the thief: it
//     counts steals in progress (a thief adds one before it pops) and steals
//     done (after its push). popSlow reads it before pass A (w_A) and after
//     pass B (w_B) and requires w_A == w_B with none in progress. A thief
//     carrying slots at T announced itself before T; if it finished before
//     w_B was read, the done count differs from w_A (it finished after T,
//     after w_A), else it is still in progress at w_B.
//
// So an empty result is true at T, which lies inside the call. The check
// costs the writers nothing: no Push or home Pop does any extra work. It
// costs a Pop that finds nothing a second pass over the shards (two if a
// pass was disturbed), which on a quiet full Set only delays the "empty"
// answer. Why not less: a change counter bumped by every push onto an empty
// freelist would let the reader skip the second pass, but it would put a
// locked add on a shared word into Push whenever a Pop has just emptied the
// list, which is the steady state of one goroutine allocating and freeing.
func (s *Set) popSlow(home int) (idx uint32, src Source, ok bool) {
	st := &s.shards[home]
	if st.frontier.Load()-st.start >= s.freshFirst {
		if idx, ok = s.recycle(home); ok {
			return idx, FromSteal, true
		}
	}
	if idx, _, ok = takeFresh(st, 1); ok {
		return idx, FromFresh, true
	}
	var prev scanView // the pass before this one
	for pass := 0; pass < scanPasses; pass++ {
		// Note the steal word first, then look everywhere (home included:
		// a batch may have landed there since).
		v := scanView{steals: s.steals.Load(), clean: true}
		if idx, src, ok = s.scan(home, &v); ok {
			return idx, src, true
		}
		if prev.clean && v.clean && v.tags == prev.tags {
			if w := s.steals.Load(); w == prev.steals && uint32(w) == 0 {
				return 0, 0, false
			}
		}
		prev = v
	}
	return 0, Busy, false
}

// recycleProbes bounds how many other shards' freelists one recycle looks
// at (a load of each head) before the home frontier is used.
const recycleProbes = 8

// recycle takes a batch of freed slots from another shard of home's part,
// before popSlow turns to home's never-used frontier (once home has handed
// out freshFirst of those). Slots are freed onto the freeing P's shard;
// where one goroutine allocates and another frees (a producer and a
// consumer), the producer's list stays dry and, without this, it took
// every slot of its frontier before it reused one: a stream with 130
// messages in flight touched half of a 65536-slot store (every slot a
// first touch: a page fault for 4 KiB ones) and all of a 4096-slot one.
// Recycling keeps the slots in use near what is in flight plus the fresh
// budget.
//
// It looks first at the shard it recycled from last (the consumer's, in
// that pattern), then at up to recycleProbes others, in steal order from
// where the previous look stopped (so that in a large part every shard is
// looked at within a few calls while one call stays short), and only
// reads their heads unless one has slots: looking costs no write. A take
// is a steal (counted on the steal word like any other), so popSlow's
// proof of emptiness is unchanged. Other parts are left alone: their
// slots are on another NUMA node, and the home frontier's are on this one.
//
// It takes the victim's whole list (stealWhole), not stealList's top
// stealKeep: stealList walks the links it keeps, and in a stream those
// are lines the consumer has just written, a cache miss each, one after
// the other. With stealList here (and no fresh budget), the 64-byte hop
// and fan-out to 2 were 16% and 21% slower than taking fresh slots; with
// stealWhole, within noise (the saturated pipeline stayed 9-12% slower
// until the budget). Recycling first keeps a stream's lists short (what
// was freed since the last take), so the whole list is about the slots
// in flight. After a burst of frees on one P it is long, and the thief
// goes through all of it before it takes newer frees: a larger working
// set for a while, never a larger footprint (every slot in it was used).
func (s *Set) recycle(home int) (uint32, bool) {
	me := &s.shards[home]
	p := s.parts[me.part]
	others := p.count - 1
	if others < 1 {
		return 0, false
	}
	last := int(atomic.LoadUint32(&me.victim)) - 1
	if last >= p.first && last < p.first+p.count && last != home {
		if idx, ok := s.recycleFrom(me, last, last); ok {
			return idx, true
		}
	}
	start, n := 0, others
	if others > recycleProbes {
		start, n = int(atomic.LoadUint32(&me.probe))%others, recycleProbes
		atomicx.StoreRelease32(&me.probe, uint32((start+n)%others))
	}
	for k := 0; k < n; k++ {
		vi := home + 1 + (start+k)%others // the shards after home, wrapping in the part
		if vi >= p.first+p.count {
			vi -= p.count
		}
		if vi == last {
			continue
		}
		if idx, ok := s.recycleFrom(me, vi, last); ok {
			return idx, true
		}
	}
	return 0, false
}

// recycleFrom is one look of recycle, at shard vi: if its freelist holds
// slots, it steals them all (stealWhole) and remembers vi as me's victim.
func (s *Set) recycleFrom(me *shardState, vi, last int) (uint32, bool) {
	victim := &s.shards[vi]
	if uint32(victim.head.Load()) == 0 {
		return 0, false
	}
	s.steals.Add(1)
	idx, ok := s.stealWhole(me, victim)
	if !ok {
		s.steals.Add(^uint64(0)) // emptied meanwhile: nothing moved
		return 0, false
	}
	s.steals.Add(stealDone - 1)
	if vi != last {
		atomicx.StoreRelease32(&me.victim, uint32(vi+1))
	}
	return idx, true
}

// scanView is what one pass of popSlow saw.
type scanView struct {
	steals uint64 // the steal word, read before the pass
	tags   uint64 // the sum of the tags of the empty heads seen, one per shard
	clean  bool   // every shard was seen empty in one look
}

// seen adds the tag of a shard's head h to the view if h is empty, and
// reports whether it was.
func (v *scanView) seen(h uint64) bool {
	if uint32(h) != 0 {
		return false
	}
	v.tags += h >> 32
	return true
}

// scan is one pass of popSlow: home's freelist, then every other shard in
// steal order. It returns a slot if it found one; otherwise it has recorded
// in v one look at every shard.
func (s *Set) scan(home int, v *scanView) (idx uint32, src Source, ok bool) {
	st := &s.shards[home]
	if !v.seen(st.head.Load()) {
		if idx, ok = s.popList(st); ok {
			return idx, FromList, true
		}
		v.clean = false // emptied between two looks: someone popped it
	}
	if idx, ok = s.steal(home, v); ok {
		return idx, FromSteal, true
	}
	return 0, 0, false
}

// Push returns a free slot to the home shard's freelist. The caller's shard,
// not the slot's original shard, gets it: the slot's lines are hot in this
// core's cache, and pushing to a remote shard would make every cross-P free
// fight the owner's pops for the remote head.
func (s *Set) Push(home int, idx uint32) {
	s.pushChain(&s.shards[home], idx, idx)
}

// Detach takes shard's whole freelist with one CAS, for a caller that works
// on the free slots themselves (Trim) and then gives every one of them back
// with Reattach. It returns the first index of the chain (follow it with
// Next); ok is false if the freelist was empty.
//
// Between Detach and Reattach the slots are in the caller's hands like a
// thief's batch: Detach counts a steal in progress, so a Pop that finds the
// Set empty meanwhile reports Busy, not empty. Every Detach that returns ok
// must be followed by Reattach; one that returns !ok has nothing to give
// back and has already ended its steal.
func (s *Set) Detach(shard int) (first uint32, ok bool) {
	s.steals.Add(1)
	if first, ok = takeAll(&s.shards[shard]); !ok {
		s.steals.Add(^uint64(0))
	}
	return first, ok
}

// Next returns the index after idx in a chain taken by Detach.
func (s *Set) Next(idx uint32) (next uint32, ok bool) {
	n := s.loadLink(idx)
	return n - 1, n != 0
}

// Reattach pushes the chain first → … → last that Detach took back onto
// shard's freelist and ends the steal Detach began.
func (s *Set) Reattach(shard int, first, last uint32) {
	s.pushChain(&s.shards[shard], first, last)
	s.steals.Add(stealDone - 1)
}

// popList pops one index from st's freelist.
func (s *Set) popList(st *shardState) (uint32, bool) {
	for {
		old := st.head.Load()
		top := uint32(old)
		if top == 0 {
			return 0, false
		}
		// The link may be rewritten under us if top is popped and pushed
		// again by another goroutine; the tag makes our CAS fail then.
		next := s.loadLink(top - 1)
		if st.head.CompareAndSwap(old, (old>>32+1)<<32|uint64(next)) {
			return top - 1, true
		}
	}
}

// pushChain pushes the chain first → … → last (already linked through the
// link words) onto st's freelist.
func (s *Set) pushChain(st *shardState, first, last uint32) {
	for {
		old := st.head.Load()
		// Nobody can read last's link until the CAS below publishes it,
		// and the CAS orders the store before the publication.
		s.storeLink(last, uint32(old))
		if st.head.CompareAndSwap(old, (old>>32+1)<<32|uint64(first+1)) {
			return
		}
	}
}

// takeFresh claims up to max never-used indices from st's frontier; they are
// [idx, idx+n).
func takeFresh(st *shardState, max uint32) (idx, n uint32, ok bool) {
	for {
		f := st.frontier.Load()
		if f >= st.end {
			return 0, 0, false
		}
		n = min(max, st.end-f)
		if st.frontier.CompareAndSwap(f, f+n) {
			return f, n, true
		}
	}
}

// steal looks for a victim with free slots: first the other shards of home's
// part, in turn after home, then every shard of the other parts, in the
// order OrderParts set (index order by default). From the
// first victim that has anything it takes a batch (the top stealKeep of
// its freelist in home's part, StealBatch of it in another part, else
// StealBatch of its frontier); the first slot is returned, the rest go onto home's freelist.
func (s *Set) steal(home int, v *scanView) (uint32, bool) {
	me := &s.shards[home]
	pi := int(me.part)
	p := s.parts[pi]
	for i := 1; i < p.count; i++ {
		vi := home + i
		if vi >= p.first+p.count {
			vi -= p.count
		}
		if idx, ok := s.stealFrom(me, &s.shards[vi], v); ok {
			return idx, true
		}
	}
	for _, qi := range p.near {
		q := s.parts[qi]
		for vi := q.first; vi < q.first+q.count; vi++ {
			if idx, ok := s.stealFrom(me, &s.shards[vi], v); ok {
				return idx, true
			}
		}
	}
	return 0, false
}

// stealFrom takes a batch from victim for me, or records in v that it found
// the victim empty. The victim is looked at before the steal is announced, so
// scanning empty shards costs no write to the shared steal word.
func (s *Set) stealFrom(me, victim *shardState, v *scanView) (uint32, bool) {
	h := victim.head.Load()
	if uint32(h) == 0 && victim.frontier.Load() >= victim.end {
		v.seen(h)
		return 0, false
	}
	s.steals.Add(1)
	if me.part == victim.part {
		if idx, ok := s.stealList(me, victim); ok {
			s.steals.Add(stealDone - 1)
			return idx, true
		}
	} else if idx, ok := s.popList(victim); ok {
		s.stealMore(me, victim)
		s.steals.Add(stealDone - 1)
		return idx, true
	}
	if idx, n, ok := takeFresh(victim, StealBatch); ok {
		if n > 1 {
			for j := idx + 1; j < idx+n-1; j++ {
				s.storeLink(j, j+2) // j → j+1, stored as index+1
			}
			s.pushChain(me, idx+1, idx+n-1)
		}
		s.steals.Add(stealDone - 1)
		return idx, true
	}
	s.steals.Add(^uint64(0)) // the victim emptied meanwhile: nothing moved
	v.clean = false          // but this pass has no single look at it
	return 0, false
}

// stealList takes victim's whole freelist with one CAS, keeps its first
// index for the caller and up to stealKeep-1 more for me, and gives the
// rest back to victim. A thief of the same part steals this way in
// popSlow's scan, once recycle (which takes whole lists, before the home
// frontier) has found nothing: the top of the victim's list holds the
// slots it freed last, hot in the caches, and three CASes move them (the
// victim's head, to take the list and to give the rest back; the thief's,
// to install what it keeps), where popping a batch one index at a time
// cost a contended CAS and a link read per slot.
//
// Why not keep everything: the thief steals again only when its own list
// is dry, so a thief that kept a whole long list would allocate through
// all of it (the slots freed longest ago first, once it reached them)
// before it took the recent frees: a producer and a consumer then cycled
// through every slot of the arena, a working set of Capacity slots
// instead of about the slots in flight (a 4 KiB message store of 4096
// slots: 16 MiB against a 2 MiB L2, and every Put wrote a cold slot).
//
// Once the CAS has emptied the victim's head nobody else can reach the
// chain (a popper that read the old head fails its CAS on the new tag), so
// its links are the thief's to read and cut. The cut-off part is in the
// thief's hands until giveBack lands it, covered by the steal word.
func (s *Set) stealList(me, victim *shardState) (uint32, bool) {
	first, ok := takeAll(victim)
	if !ok {
		return 0, false
	}
	// Walk to the last index kept. These are the link reads the pops of
	// the kept slots would make anyway.
	last := first
	for kept := 1; kept < stealKeep; kept++ {
		n := s.loadLink(last)
		if n == 0 {
			break
		}
		last = n - 1
	}
	if rest := s.loadLink(last); rest != 0 {
		s.storeLink(last, 0)
		s.giveBack(victim, rest-1)
	}
	if next := s.loadLink(first); next != 0 {
		s.adoptChain(me, next-1)
	}
	return first, true
}

// stealWhole takes victim's whole freelist with one CAS, returns its first
// index and makes the rest me's freelist (adoptChain), without walking it:
// one link read and two CASes whatever the list's length (recycle says
// when that is the right steal). As in stealList, once the CAS has emptied
// the victim's head nobody else can reach the chain, and until adoptChain
// lands it the chain is in the thief's hands, covered by the steal word.
func (s *Set) stealWhole(me, victim *shardState) (uint32, bool) {
	first, ok := takeAll(victim)
	if !ok {
		return 0, false
	}
	if next := s.loadLink(first); next != 0 {
		s.adoptChain(me, next-1)
	}
	return first, true
}

// takeAll empties st's freelist with one CAS (bumping its tag) and returns
// the first index of the chain it held; ok is false if it was empty.
func takeAll(st *shardState) (first uint32, ok bool) {
	for {
		old := st.head.Load()
		top := uint32(old)
		if top == 0 {
			return 0, false
		}
		if st.head.CompareAndSwap(old, (old>>32+1)<<32) {
			return top - 1, true
		}
	}
}

// stealKeep is how many slots stealList keeps of a victim's list: twice a
// cross-part batch, a few CASes per stealKeep allocations.
const stealKeep = 2 * StealBatch

// giveBack returns the chain that starts at first and ends with a 0 link
// to victim's freelist, under whatever was pushed onto it since the steal:
// the chain is what the victim freed longest ago, and the new pushes are
// the hot slots. Its tail is not known (walking a long chain pinned is what
// stealList avoids), so it lands with a CAS from an empty head; pushes
// that came first are taken out, walked (they are few: the pushes of a
// moment) and put on top of it, and the CAS is tried again.
func (s *Set) giveBack(victim *shardState, first uint32) {
	for {
		old := victim.head.Load()
		top := uint32(old)
		if top == 0 {
			if victim.head.CompareAndSwap(old, (old>>32+1)<<32|uint64(first+1)) {
				return
			}
			continue
		}
		if !victim.head.CompareAndSwap(old, (old>>32+1)<<32) {
			continue
		}
		s.storeLink(s.chainEnd(top-1), first+1)
		first = top - 1
	}
}

// adoptChain makes the chain that starts at first and ends with a 0 link
// st's freelist, with one CAS and without walking it. (stealList's chain is
// at most stealKeep-1 long and already walked, so pushChain with its end
// would do too, but it would put what landed under the chain, not on top.)
//
// st's list is empty when its owner steals, unless a Push landed on it
// meanwhile (a shard that several Ps share). The CAS then takes that list
// out with the same stroke, and it is walked and pushed back on top: it
// holds what landed since the owner looked, not the stolen chain. (Until a
// thief has pushed it back it is in the thief's hands, covered by the steal
// word like the chain itself.)
func (s *Set) adoptChain(st *shardState, first uint32) {
	for {
		old := st.head.Load()
		if !st.head.CompareAndSwap(old, (old>>32+1)<<32|uint64(first+1)) {
			continue
		}
		if top := uint32(old); top != 0 {
			s.pushChain(st, top-1, s.chainEnd(top-1))
		}
		return
	}
}

// chainEnd returns the last index of the chain that starts at first, one
// the caller holds (its links cannot change under the walk).
func (s *Set) chainEnd(first uint32) uint32 {
	last := first
	for n := s.loadLink(last); n != 0; n = s.loadLink(last) {
		last = n - 1
	}
	return last
}

// stealMore moves up to StealBatch-1 more indices from victim's freelist to
// me's, popping them one at a time and pushing them as one chain.
func (s *Set) stealMore(me, victim *shardState) {
	var first, last uint32
	got := 0
	for got < StealBatch-1 {
		idx, ok := s.popList(victim)
		if !ok {
			break
		}
		if got == 0 {
			last = idx
		} else {
			s.storeLink(idx, first+1)
		}
		first = idx
		got++
	}
	if got > 0 {
		s.pushChain(me, first, last)
	}
}
