package shm

import (
	"math"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"

	"github.com/cella-go/cella/internal/atomicx"
)

// Recovery reports what one call of Recover cleaned up.
type Recovery struct {
	// Dead is how many dead processes' records were cleaned and freed.
	Dead int
	// Reclaimed is how many allocations owned by dead processes were freed.
	Reclaimed int
	// Holds is how many reader holds and writer bits were dropped because
	// no live process held them.
	Holds int
}

// Recover finds processes that died with the segment attached and cleans
// up after them: their allocations are freed (their tokens are stale
// everywhere), their holds dropped, their caches and any slot they left
// half-moved go back on the freelists, and their records become free for
// new processes. Survivors may call it at any time; the watcher calls it
// when it sees a death, and a call that waits on a slot for long calls it
// too. While it runs, every other operation on the segment waits.
func (a *seg) Recover() (Recovery, error) {
	a.recoverMu.Lock()
	defer a.recoverMu.Unlock()
	if a.closed.Load() {
		return Recovery{}, ErrClosed
	}
	me := uint32(a.me + 1)
	for {
		if atomic.CompareAndSwapUint32(&a.hdr.recovering, 0, me) {
			return a.lead(), nil
		}
		if waited, led := a.awaitRecovery(true, false); waited {
			// Another process recovered, or this one took over the
			// recovery of a leader that died: led says what that found.
			return led, nil
		}
	}
}

// checkDead runs a recovery if some process died.
func (a *seg) checkDead() {
	a.parked.Add(1)
	defer a.parked.Add(-1)
	if !a.closed.Load() && a.anyDead() {
		_, _ = a.Recover()
	}
}

// anyDead reports whether a record is alive but unlocked: its process died.
func (a *seg) anyDead() bool {
	for i := range MaxProcs {
		if i != a.me && atomic.LoadUint32(&a.record(i).state) != recordFree && !recordLocked(a.file, i) {
			return true
		}
	}
	return false
}

// awaitRecovery waits until no recovery is running. If the recovering
// process died, this one takes the recovery over and finishes it. It
// reports whether it waited (or led) a recovery to its end, and what the
// recoveries it took over cleaned up. haveMu says the caller holds
// recoverMu already; op says it is an operation, which gives up once this
// handle is closing (it will fail with ErrClosed).
func (a *seg) awaitRecovery(haveMu, op bool) (waited bool, led Recovery) {
	a.parked.Add(1)
	defer a.parked.Add(-1)
	// An operation got here with no section open: the mapping may be gone
	// already. Close sets closed before it waits for parked to drop, so
	// one of the two sees the other: look at closed before touching the
	// mapping (even &a.hdr.recovering reads it, as a nil check).
	if op && a.closed.Load() {
		return false, led
	}
	word := &a.hdr.recovering
	for {
		if op && a.closed.Load() {
			return waited, led
		}
		r := atomic.LoadUint32(word)
		if r == 0 {
			return waited, led
		}
		waited = true
		futexWait(word, r, 10*time.Millisecond)
		if atomic.LoadUint32(word) != r || int(r-1) != a.me && recordLocked(a.file, int(r-1)) {
			continue
		}
		// The recovering process died, or the word names this process while
		// none of its goroutines leads (a leader holds recoverMu; a corrupt
		// word can name this record): take over, with recoverMu, so that
		// one goroutine of this process does it.
		if !haveMu && !a.recoverMu.TryLock() {
			continue
		}
		if atomic.CompareAndSwapUint32(word, r, uint32(a.me+1)) {
			rep := a.lead()
			led.Dead += rep.Dead
			led.Reclaimed += rep.Reclaimed
			led.Holds += rep.Holds
		}
		if !haveMu {
			a.recoverMu.Unlock()
		}
	}
}

// lead runs a recovery; the caller has set the recovering word to its
// record. It ends by clearing the word and waking the waiters.
func (a *seg) lead() Recovery {
	defer func() {
		atomic.StoreUint32(&a.hdr.recovering, 0)
		futexWake(&a.hdr.recovering)
		// Whatever the dead held (locks, room, slots) is free now: let
		// every waiter look again.
		atomic.AddUint32(&a.hdr.freeSeq, 1)
		futexWake(&a.hdr.freeSeq)
		if a.store != nil {
			for _, e := range a.store.edges {
				e.wakeAll()
			}
		}
	}()
	var dead [MaxProcs]bool
	n := a.findDead(&dead)
	if n == 0 {
		return Recovery{}
	}
	a.quiesce(&dead)
	rep := a.rebuild(&dead)
	for i := range MaxProcs {
		if dead[i] {
			a.clearRecord(i)
			rep.Dead++
		}
	}
	atomic.AddUint64(&a.hdr.recoveries, 1)
	return rep
}

// findDead takes the lock of every record whose process died, so that no
// new process claims it before the rebuild is done.
func (a *seg) findDead(dead *[MaxProcs]bool) (n int) {
	for i := range MaxProcs {
		if i == a.me || dead[i] || atomic.LoadUint32(&a.record(i).state) == recordFree {
			continue
		}
		if ok, _ := lockRecord(a.file, i); ok {
			dead[i] = true
			n++
		}
	}
	return n
}

// quiesce waits until no live record has an open section. A process that
// dies while we wait is added to the dead.
func (a *seg) quiesce(dead *[MaxProcs]bool) {
	var b atomicx.Backoff
	for i := range MaxProcs {
		r := a.record(i)
		for k := 0; k < cacheWays; k++ {
			start := time.Now()
			for !dead[i] && atomic.LoadUint32(&r.state) != recordFree &&
				atomic.LoadUint64(&r.ways[k].section)&(sectionNet-1) != 0 {
				b.Wait()
				if time.Since(start) > deadCheckAfter {
					a.findDead(dead)
					start = time.Now()
				}
			}
			b.Reset()
		}
	}
}

// rebuild makes the segment consistent again with no live process running
// an operation: dead owners' allocations are freed, every slot's holds are
// recomputed from the live hold entries, and every freelist is rebuilt from
// the state words (minus the slots in live caches). It is idempotent, so a
// recovery whose leader dies half-way is simply run again.
func (a *seg) rebuild(dead *[MaxProcs]bool) (rep Recovery) {
	readers := map[uint32]uint64{}
	writers := map[uint32]bool{}
	cached := map[uint32]bool{}
	var live int64
	for i := range MaxProcs {
		r := a.record(i)
		if atomic.LoadUint32(&r.state) == recordFree {
			continue
		}
		for k := range r.ways {
			c := &r.ways[k].cache
			v := atomic.LoadUint64(c)
			switch {
			case dead[i]:
				atomic.StoreUint64(c, (v>>32+1)<<32)     // its slots are relinked below
				atomic.StoreUint64(&r.ways[k].moving, 0) // and so are those of a move it left half done
			default:
				// The whole chain (bounded: a scribbled link cannot loop).
				for top, n := uint32(v), uint32(0); top != 0 && top <= a.capacity && n < a.capacity; n++ {
					cached[top-1] = true
					top = atomic.LoadUint32(a.link(top - 1))
				}
			}
			if !dead[i] {
				live += int64(atomic.LoadUint64(&r.ways[k].section)) >> 16
			}
		}
		if dead[i] {
			continue
		}
		for h := range r.holds {
			e := atomic.LoadUint64(&r.holds[h])
			idx := uint32(e) - 1
			if uint32(e) == 0 || idx >= a.capacity {
				continue
			}
			if e&holdWrite != 0 {
				writers[idx] = true
			} else {
				readers[idx]++
			}
		}
	}
	var refs map[uint32]uint64
	if a.store != nil {
		refs = a.countRefs(dead)
	}
	var allocated int64
	var retired uint32
	for sh := uint32(0); sh < a.shards; sh++ {
		s := a.shard(sh)
		var chain uint32
		f, start, _ := a.frontier(sh)
		for idx := f; idx > start; {
			idx--
			st := a.state(idx)
			old := atomic.LoadUint64(st)
			n := old
			switch {
			case refs != nil:
				// A Store's message lives while a live process or an
				// edge references it.
				r := refs[idx]
				if n&liveBit != 0 && r == 0 {
					n = freed(n)
					rep.Reclaimed++
				}
				if n&liveBit == 0 {
					r = 0
				}
				atomic.StoreUint32(a.store.ref(idx), uint32(min(r, 1<<32-1)))
			case n&liveBit != 0 && ownerOf(n) >= 0 && ownerOf(n) < MaxProcs && dead[ownerOf(n)]:
				n = freed(n)
				rep.Reclaimed++
			}
			if genOf(n) == 0 {
				n |= uint64(a.hdr.genBase) // taken from the frontier, never stamped
			}
			r, w := readers[idx], writers[idx]
			if r > readersOf(old) || w && old&writerBit == 0 {
				// A live hold the word does not show cannot happen; keep
				// the word's own count rather than invent holds.
				r, w = readersOf(old), old&writerBit != 0
			}
			rep.Holds += int(readersOf(old) - r)
			if old&writerBit != 0 && !w {
				rep.Holds++
			}
			n &^= uint64(maxReaders)<<readerShift | writerBit | pendingBit
			n |= r << readerShift
			if w {
				n |= writerBit
			}
			if n&(liveBit|retiredBit) == 0 && held(n) {
				n |= pendingBit
			}
			atomic.StoreUint64(st, n)
			if n&retiredBit != 0 {
				retired++
			}
			switch {
			case n&liveBit != 0:
				allocated++
			case reusable(n) && !cached[idx]:
				atomic.StoreUint32(a.link(idx), chain)
				chain = idx + 1
			}
		}
		h := atomic.LoadUint64(&s.head)
		atomic.StoreUint64(&s.head, (h>>32+1)<<32|uint64(chain))
	}
	atomic.StoreInt64(&a.hdr.base, allocated-live)
	atomic.StoreUint32(&a.hdr.retired, retired) // a process killed between retiring a slot and counting it
	return rep
}

// countRefs counts every Store reference that still counts: the live
// records' table entries and the entries queued on the edges. It also
// repairs each edge: the lock is cleared (only a dead process can hold it
// now) and the counts are recomputed from what is queued.
func (a *seg) countRefs(dead *[MaxProcs]bool) map[uint32]uint64 {
	refs := map[uint32]uint64{}
	for i := range MaxProcs {
		r := a.record(i)
		if dead[i] || atomic.LoadUint32(&r.state) == recordFree {
			continue
		}
		tab := a.store.table(i)
		high := min(atomic.LoadUint32(&r.tableHigh), a.capacity)
		for idx := uint32(0); idx < high; idx++ {
			if n := atomic.LoadUint32((*uint32)(unsafe.Add(tab, uintptr(idx)*4))); n != 0 {
				refs[idx] += uint64(n)
			}
		}
	}
	for _, e := range a.store.edges {
		c := e.ctl
		e.finishCompaction() // a reapExpired its process did not finish
		c.n, c.bytes, c.minDeadline = 0, 0, math.MaxInt64
		for l := range numLanes {
			c.laneBytes[l] = 0
			head, tail := c.lanes[l].head, c.lanes[l].tail
			if tail < head || tail-head > e.laneCap {
				c.lanes[l].head = tail // scribbled on: nothing in it can be trusted
				continue
			}
			for pos := head; pos < tail; pos++ {
				q := e.entry(l, pos)
				if idx := token.Token(q.tok).Index(); idx < a.capacity {
					refs[idx]++
				}
				c.n++
				c.bytes += int64(q.size)
				c.laneBytes[l] += int64(q.size)
				if q.deadline != 0 && q.flags&uint32(message.DegradeAllowed) == 0 {
					c.minDeadline = min(c.minDeadline, q.deadline)
				}
			}
		}
		e.balanceCounters()
		atomic.StoreUint32(&c.lock, 0)
	}
	return refs
}

// balanceCounters restores Admitted = Delivered + Evicted + Expired +
// Drained + Len after a process died inside an operation on the edge,
// between moving a position and counting the move (one instruction apart,
// but an instant all the same): entries that left the queue uncounted are
// counted as drained (recovery freed them, or a dead receiver had them),
// entries that entered it uncounted as admitted. In recovery, with the
// queue's length recomputed.
func (e *Edge) balanceCounters() {
	c := e.ctl
	out := *c.stat(stDelivered) + *c.stat(stEvicted) + *c.stat(stExpired) + *c.stat(stDrained) + uint64(c.n)
	switch in := *c.stat(stAdmitted); {
	case in > out:
		*c.stat(stDrained) += in - out
	case in < out:
		*c.stat(stAdmitted) += out - in
	}
}

// clearRecord empties a dead process's record and releases its lock.
func (a *seg) clearRecord(i int) {
	r := a.record(i)
	// Waiter counts the dead process had announced (it died parked) come
	// off the totals. Each part is taken from the record before it is
	// subtracted: if this recovery dies in between, the next one finds the
	// part gone and the total high by it (a wake syscall per send), never
	// subtracts it twice (a total too low lets a sender skip a real
	// waiter's wake).
	if n := atomic.SwapUint32(&r.freeWaiters, 0); n != 0 {
		atomic.AddUint32(&a.hdr.freeWaiters, -n) // it died parked in awaitFree
	}
	if a.store != nil {
		// This process's own list of edges, checked when it attached: the
		// header's count is shared memory another process could scribble.
		for j, e := range a.store.edges {
			own := &r.edgeWaiters[j]
			if n := atomic.SwapUint32(&own.recv, 0); n != 0 {
				atomic.AddUint32(&e.ctl.recvWaiters, -n)
			}
			if n := atomic.SwapUint32(&own.send, 0); n != 0 {
				atomic.AddUint32(&e.ctl.sendWaiters, -n)
			}
		}
	}
	if a.store != nil {
		tab := a.store.table(i)
		high := min(atomic.LoadUint32(&r.tableHigh), a.capacity)
		for idx := uint32(0); idx < high; idx++ {
			if atomic.LoadUint32((*uint32)(unsafe.Add(tab, uintptr(idx)*4))) != 0 {
				atomic.StoreUint32((*uint32)(unsafe.Add(tab, uintptr(idx)*4)), 0)
			}
		}
		atomic.StoreUint32(&r.tableHigh, 0)
	}
	for h := range r.holds {
		if atomic.LoadUint64(&r.holds[h]) != 0 {
			atomic.StoreUint64(&r.holds[h], 0)
		}
	}
	for k := range r.ways {
		atomic.StoreUint64(&r.ways[k].section, 0)
	}
	r.pid = 0
	atomic.StoreUint32(&r.state, recordFree)
	unlockRecord(a.file, i)
}

// detach gives this process's record back (Close): caches to the
// freelists, its net allocation count to the header, its ownership of
// allocations to nobody.
func (a *seg) detach() {
	w := &a.rec.ways[0]
	a.open(w)
	for k := range a.rec.ways {
		for atomic.LoadUint64(&a.rec.ways[k].cache)&(1<<32-1) != 0 && atomic.LoadUint64(&a.rec.ways[k].moving) == 0 {
			a.flushCache(&a.rec.ways[k], a.shard(a.home(k)), a.capacity)
		}
	}
	a.close(w, 0)
	for sh := uint32(0); sh < a.shards; sh++ {
		a.open(w)
		f, start, _ := a.frontier(sh)
		for idx := start; idx < f; idx++ {
			st := a.state(idx)
			for {
				v := atomic.LoadUint64(st)
				if v&liveBit == 0 || ownerOf(v) != a.me || atomic.CompareAndSwapUint64(st, v, v&^ownerMask) {
					break
				}
			}
		}
		a.close(w, 0)
	}
	a.open(w)
	var net int64
	for k := range a.rec.ways {
		v := atomic.LoadUint64(&a.rec.ways[k].section)
		nk := int64(v) >> 16
		if k == 0 {
			nk = int64(v-sectionOpen) >> 16
		}
		net += nk
		atomic.AddUint64(&a.rec.ways[k].section, uint64(-nk*sectionNet))
	}
	atomic.AddInt64(&a.hdr.base, net)
	a.close(w, 0)
	a.rec.pid = 0
	atomic.StoreUint32(&a.rec.state, recordFree)
	unlockRecord(a.file, a.me)
}
