package shm

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/shard"
	"github.com/cella-go/cella/token"
)

// Every operation that changes shared words runs inside a section: a
// count on this process's way, opened before the words are touched and
// closed after. Recovery raises the segment's recovering word and then waits
// until every live record's sections are closed; an operation that opens a
// section and then sees the word raised closes it again and waits. So the
// recovering process rebuilds a segment no live process is changing, and
// every multi-step operation (pop a slot then stamp its state; free a
// state then push it) is either wholly before the rebuild or wholly after.
// Steps a dead process left half done are repaired by the rebuild, which
// derives the freelists and hold counts from the state words and the live
// records, never from what the dead process might have meant to do.

// openOwn opens a section, without the process gate, on the way of the P
// this goroutine runs on: for work that Close waits for (a callback's
// release) or that Close itself does.
func (a *seg) openOwn() (p int, w *way) {
	p = shard.Pin() // only to pick this P's way
	shard.Unpin()
	w = &a.rec.ways[uint(p)%cacheWays]
	a.open(w)
	return p, w
}

// open opens a section on w, waiting out any recovery first.
func (a *seg) open(w *way) {
	for {
		atomic.AddUint64(&w.section, sectionOpen)
		if atomic.LoadUint32(&a.hdr.recovering) == 0 {
			return
		}
		atomic.AddUint64(&w.section, ^uint64(sectionOpen-1))
		a.awaitRecovery(false, false)
	}
}

// close closes a section on w, adding net to its allocation count.
func (a *seg) close(w *way, net int64) {
	atomic.AddUint64(&w.section, uint64(net*sectionNet-sectionOpen))
}

// enter starts an operation: a section on this P's way. The process gate
// is held only while the section opens (Close waits for the gate, then for
// this process's sections), so an operation may block inside its section on
// a process-local lock without pinning its P.
func (a *seg) enter() (p int, w *way, err error) {
	for {
		p, ok := a.gate.Enter()
		if !ok {
			return 0, nil, ErrClosed
		}
		w = &a.rec.ways[uint(p)%cacheWays]
		atomic.AddUint64(&w.section, sectionOpen)
		a.gate.Exit(p)
		if atomic.LoadUint32(&a.hdr.recovering) == 0 {
			return p, w, nil
		}
		a.close(w, 0) // our open section kept the mapping alive until here
		if testHookAwaitRecovery != nil {
			testHookAwaitRecovery()
		}
		a.awaitRecovery(false, true)
	}
}

func (a *seg) exit(_ int, w *way, net int64) { a.close(w, net) }

// waitSections waits until no section of this process is open (Close,
// after the gate is closed: no new one can open).
func (a *seg) waitSections() {
	var b atomicx.Backoff
	for k := range a.rec.ways {
		for atomic.LoadUint64(&a.rec.ways[k].section)&(sectionNet-1) != 0 {
			b.Wait()
		}
	}
}

// testHookAwaitRecovery, if set (tests only), runs in enter between
// closing the section and waiting for a recovery: the moment a Close may
// unmap the segment under the operation.
var testHookAwaitRecovery func()

// enterFor checks t's index and opens a section for an operation on it.
func (a *seg) enterFor(t token.Token, op string) (idx uint32, p int, w *way, err error) {
	if idx, err = a.index(t, op); err != nil {
		return 0, 0, nil, err
	}
	p, w, err = a.enter()
	return idx, p, w, err
}

// index checks the parts of a token that need no shared memory. After
// Close every call says ErrClosed, whatever its token (as arena and
// message do).
func (a *seg) index(t token.Token, op string) (uint32, error) {
	switch {
	case a.gate.Closed():
		return 0, ErrClosed
	case t.IsNil():
		return 0, fmt.Errorf("shm: %s: %w: nil token", op, ErrBadToken)
	case t.Index() >= a.capacity:
		return 0, fmt.Errorf("shm: %s %v: %w: index out of range [0, %d)", op, t, ErrBadToken, a.capacity)
	case t.Generation() == 0:
		return 0, fmt.Errorf("shm: %s %v: %w: generation 0 is never issued", op, t, ErrBadToken)
	}
	return t.Index(), nil
}

func stale(op string, t token.Token) error {
	return fmt.Errorf("shm: %s %v: %w", op, t, ErrStale)
}

// Alloc hands out a zeroed slot, owned by this process (see Adopt). It
// returns ErrFull only when, at one instant, no freelist, frontier or
// way cache of any process held a free slot.
func (a *Arena[T]) Alloc() (token.Token, *T, error) {
	return a.alloc(nil)
}

// alloc takes a slot and fills it with *src, or zeroes it if src is nil,
// inside the section: Close unmaps once no section is open, so a write
// after exit could fault.
func (a *Arena[T]) alloc(src *T) (token.Token, *T, error) {
	idx, gen, p, w, err := a.takeSlot()
	if err != nil {
		return token.Nil, nil, err
	}
	v := a.slot(idx)
	if src != nil {
		*v = *src
	} else {
		zeroBytes(unsafe.Pointer(v), unsafe.Sizeof(*v))
	}
	a.exit(p, w, 1)
	a.stats.add(statAllocs)
	return token.New(idx, gen), v, nil
}

// takeSlot takes a free slot and stamps it live, owned by this process. It
// returns with the section open (the caller writes the slot, then exits
// with net 1), or with an error (ErrClosed, ErrFull) and no section open.
func (a *seg) takeSlot() (idx, gen uint32, p int, w *way, err error) {
	var wait waiter
	for {
		p, w, err = a.enter()
		if err != nil {
			return 0, 0, 0, nil, err
		}
		if idx, ok := a.take(p, w); ok {
			return idx, a.stamp(idx), p, w, nil
		}
		full := a.full()
		a.exit(p, w, 0)
		if full {
			return 0, 0, 0, nil, ErrFull
		}
		// A free slot exists but no take found it: another operation is
		// moving it (it is in a moving word, or between pop and stamp).
		// Back off; if that lasts, the mover may have died with the slots
		// in its moving word, and a recovery relinks them.
		wait.wait(a)
	}
}

// Store allocates a slot and copies v into it.
func (a *Arena[T]) Store(v T) (token.Token, error) {
	t, _, err := a.alloc(&v)
	return t, err
}

// stamp makes a taken slot live, owned by this process, and returns its
// generation. A taken slot is not live, so nothing else writes its word.
func (a *seg) stamp(idx uint32) uint32 {
	st := a.state(idx)
	gen := genOf(atomic.LoadUint64(st))
	if gen == 0 {
		gen = a.hdr.genBase
	}
	atomicx.StoreRelease64(st, uint64(gen)|liveBit|ownerBits(a.me))
	return gen
}

// take finds a free slot: this way's cache, the home shard, the other
// shards, then every process's caches.
func (a *seg) take(p int, w *way) (uint32, bool) {
	if idx, ok := a.takeCache(&w.cache); ok {
		return idx, true
	}
	home := a.home(p)
	for i := uint32(0); i < a.shards; i++ {
		s := home + i
		if s >= a.shards {
			s -= a.shards
		}
		if idx, ok := a.pop(s, w); ok {
			if i > 0 {
				a.stats.add(statSteals)
			}
			return idx, true
		}
	}
	for r := range MaxProcs {
		rec := a.record(r)
		for k := range rec.ways {
			if idx, ok := a.takeCache(&rec.ways[k].cache); ok {
				a.stats.add(statSteals)
				return idx, true
			}
		}
	}
	return 0, false
}

func (a *seg) home(p int) uint32 {
	return uint32((uint(a.me)*cacheWays + uint(p)) % uint(a.shards))
}

// full reports whether two censuses in a row saw every freelist, frontier
// and cache empty with no change between them: every word they read only
// grows (tags, frontiers, cache versions), so equal sums mean every word
// held still, and at the instant the first census ended no slot was free.
func (a *seg) full() bool {
	s1, empty := a.census()
	if !empty {
		return false
	}
	s2, empty := a.census()
	return empty && s1 == s2
}

func (a *seg) census() (sum uint64, empty bool) {
	empty = true
	for i := uint32(0); i < a.shards; i++ {
		h := atomic.LoadUint64(&a.shard(i).head)
		f, _, end := a.frontier(i)
		sum += h>>32 + uint64(f)
		// A head past the capacity (a scribbled segment) is empty to
		// pop as well: census and pop must agree, or Alloc retries forever.
		if top := uint32(h); top != 0 && top <= a.capacity || f < end {
			empty = false
		}
	}
	for r := range MaxProcs {
		rec := a.record(r)
		for k := range rec.ways {
			c := atomic.LoadUint64(&rec.ways[k].cache)
			sum += c >> 32
			if top := uint32(c); top != 0 && top <= a.capacity {
				empty = false
			}
			// A chain on the move: its word changes (to or from 0) each
			// time a move starts or ends, so equal sums mean no move did.
			if m := atomic.LoadUint64(&rec.ways[k].moving); m != 0 {
				sum += m>>32 + 1
				if top := uint32(m); top != 0 && top <= a.capacity {
					empty = false
				}
			}
		}
	}
	return sum, empty
}

// pop takes a slot from shard i's freelist, or failing that from its
// frontier of never-used slots. When the freelist holds more than one slot
// and w's cache is empty, it takes the whole list (grab): the first slot
// for the caller, the rest into w's cache, so that the next takes on this
// way pop them from a line of this process's instead of the shared shard
// head (which the processes that free, flushing their chains onto it,
// keep pulling away). The list travels in w's moving word, where the
// ErrFull census sees it.
func (a *seg) pop(i uint32, w *way) (uint32, bool) {
	s := a.shard(i)
	for {
		h := atomic.LoadUint64(&s.head)
		top := uint32(h)
		if top == 0 || top > a.capacity {
			break
		}
		next := atomic.LoadUint32(a.link(top - 1))
		if next != 0 && next <= a.capacity && uint32(atomic.LoadUint64(&w.cache)) == 0 &&
			atomic.CompareAndSwapUint64(&w.moving, 0, h) {
			if atomic.CompareAndSwapUint64(&s.head, h, (h>>32+1)<<32) {
				a.adopt(w, next-1)
				atomic.StoreUint64(&w.moving, 0)
				return top - 1, true
			}
			atomic.StoreUint64(&w.moving, 0)
			continue
		}
		if atomic.CompareAndSwapUint64(&s.head, h, (h>>32+1)<<32|uint64(next)) {
			return top - 1, true
		}
	}
	for {
		f, _, end := a.frontier(i)
		if f >= end {
			return 0, false
		}
		if atomic.CompareAndSwapUint32(&a.shard(i).frontier, f, f+1) {
			return f, true
		}
	}
}

// adopt puts the chain that starts at first (a list pop took whole) into
// w's cache, on top of whatever was pushed there since pop saw it empty.
func (a *seg) adopt(w *way, first uint32) {
	var last uint32
	walked := false
	for {
		c := atomic.LoadUint64(&w.cache)
		if uint32(c) != 0 && !walked {
			last, _ = a.walk(first, a.capacity)
			walked = true
		}
		if walked {
			// The chain's tail links to the cache's top as read now (0
			// when the cache emptied again since the last try).
			atomic.StoreUint32(a.link(last), uint32(c))
		}
		if atomic.CompareAndSwapUint64(&w.cache, c, (c>>32+1)<<32|uint64(first+1)) {
			return
		}
	}
}

// push puts a free slot on a shard's freelist.
func (a *seg) push(s *shardLine, idx uint32) {
	for {
		h := atomic.LoadUint64(&s.head)
		atomic.StoreUint32(a.link(idx), uint32(h))
		if atomic.CompareAndSwapUint64(&s.head, h, (h>>32+1)<<32|uint64(idx+1)) {
			return
		}
	}
}

// A way's cache is a chain of free slots linked through links[], like a
// shard's freelist, with its head in the cache word (version<<32 |
// index+1). Frees push onto the freeing P's way, a line no other process
// writes; once flushAt slots gathered there, flushAt of them move to the
// home shard with one CAS. A take that finds its cache empty and a shard's
// freelist longer than one slot takes the whole list into its cache (pop).
// So a consumer that frees what a producer in another process allocates
// touches the shared shard head once per flushAt slots, and the producer
// once per list it takes, not once per slot. Takes from a cache (the
// owner, or a thief when the shards are dry) pop one slot; the version
// makes the pop ABA-safe. A chain between a cache and a shard is in the
// way's moving word (see way), where the census finds it.

// flushAt is how many slots a way's cache gathers before they move to the
// home shard in one step.
const flushAt = 32

func (a *seg) takeCache(c *uint64) (uint32, bool) {
	for {
		v := atomic.LoadUint64(c)
		top := uint32(v)
		if top == 0 || top > a.capacity {
			return 0, false
		}
		next := atomic.LoadUint32(a.link(top - 1))
		if atomic.CompareAndSwapUint64(c, v, (v>>32+1)<<32|uint64(next)) {
			return top - 1, true
		}
	}
}

func (a *seg) putCache(c *uint64, idx uint32) {
	for {
		v := atomic.LoadUint64(c)
		atomic.StoreUint32(a.link(idx), uint32(v))
		if atomic.CompareAndSwapUint64(c, v, (v>>32+1)<<32|uint64(idx+1)) {
			return
		}
	}
}

// flushCache moves up to limit slots from the top of w's cache to shard s:
// it claims w's moving word with the cache's head, walks limit-1 links
// down the chain, detaches that prefix (one CAS, which fails and retries if
// the cache changed meanwhile), splices it onto the shard's list (one CAS)
// and clears moving. The prefix is never out of the census's sight: in the
// cache, in moving, or in the shard. If another move of this way is under
// way, the slots stay in the cache for the next flush.
func (a *seg) flushCache(w *way, s *shardLine, limit uint32) {
	var v uint64
	var first, last uint32
	for {
		v = atomic.LoadUint64(&w.cache)
		if uint32(v) == 0 || !atomic.CompareAndSwapUint64(&w.moving, 0, v) {
			return
		}
		if uint32(v) > a.capacity {
			// A scribbled head: drop the chain; recovery rebuilds the
			// freelists from the state words.
			atomic.CompareAndSwapUint64(&w.cache, v, (v>>32+1)<<32)
			atomic.StoreUint64(&w.moving, 0)
			return
		}
		first = uint32(v) - 1
		var rest uint32
		last, rest = a.walk(first, limit)
		if atomic.CompareAndSwapUint64(&w.cache, v, (v>>32+1)<<32|uint64(rest)) {
			break
		}
		atomic.StoreUint64(&w.moving, 0) // the cache changed: look again
	}
	if testHookMoving != nil {
		testHookMoving()
	}
	a.splice(s, first, last)
	atomic.StoreUint64(&w.moving, 0)
}

// testHookMoving, when set by a test, runs while a chain is on the move.
var testHookMoving func()

// walk follows the chain from first for at most limit slots and returns
// the last of them and the link after it (index+1, or 0 at the chain's end).
func (a *seg) walk(first, limit uint32) (last, rest uint32) {
	last = first
	for n := uint32(1); ; n++ {
		next := atomic.LoadUint32(a.link(last))
		if next == 0 || next > a.capacity { // a scribbled link ends the chain
			return last, 0
		}
		if n >= min(limit, a.capacity) { // bounded: a scribbled link cannot loop forever
			return last, next
		}
		last = next - 1
	}
}

// splice puts the chain first..last on top of shard s's freelist.
func (a *seg) splice(s *shardLine, first, last uint32) {
	for {
		h := atomic.LoadUint64(&s.head)
		atomic.StoreUint32(a.link(last), uint32(h))
		if atomic.CompareAndSwapUint64(&s.head, h, (h>>32+1)<<32|uint64(first+1)) {
			return
		}
	}
}

// recycle puts a slot that just became reusable where the next Alloc on
// this P finds it: this way's cache, which moves to the home shard when it
// has gathered flushAt slots.
func (a *seg) recycle(p int, w *way, idx uint32) {
	a.putCache(&w.cache, idx)
	k := uint(p) % cacheWays
	if a.cacheLen[k].Add(1) >= flushAt {
		a.cacheLen[k].Store(0)
		a.flushCache(w, a.shard(a.home(p)), flushAt)
	}
	a.notifyFree()
}

// Free ends the allocation t names; every later use of t is ErrStale, in
// every process. If a callback still holds the slot, it is reused only
// after the callback returns.
func (a *seg) Free(t token.Token) error {
	idx, p, w, err := a.enterFor(t, "Free")
	if err != nil {
		return err
	}
	st := a.state(idx)
	for {
		s := atomic.LoadUint64(st)
		if !liveAs(s, t.Generation()) {
			a.exit(p, w, 0)
			return stale("Free", t)
		}
		n := freed(s)
		if atomic.CompareAndSwapUint64(st, s, n) {
			if reusable(n) {
				a.recycle(p, w, idx)
			} else if n&retiredBit != 0 {
				atomic.AddUint32(&a.hdr.retired, 1)
			}
			break
		}
	}
	a.exit(p, w, -1)
	a.stats.add(statFrees)
	return nil
}

// Adopt makes this process the owner of t's allocation: if this process
// dies, recovery frees it; if the process that allocated it dies, it
// survives. Pass tokens between processes and Adopt them on arrival.
func (a *seg) Adopt(t token.Token) error {
	idx, p, w, err := a.enterFor(t, "Adopt")
	if err != nil {
		return err
	}
	defer a.exit(p, w, 0)
	st := a.state(idx)
	for {
		s := atomic.LoadUint64(st)
		if !liveAs(s, t.Generation()) {
			return stale("Adopt", t)
		}
		if atomic.CompareAndSwapUint64(st, s, s&^ownerMask|ownerBits(a.me)) {
			return nil
		}
	}
}

// zeroBytes clears n bytes at p without a temporary of the payload's type
// (a zero value of a large T would be a large stack frame or a heap
// allocation).
func zeroBytes(p unsafe.Pointer, n uintptr) {
	if n > 0 {
		clear(unsafe.Slice((*byte)(p), n))
	}
}
