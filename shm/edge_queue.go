package shm

import (
	"context"
	"math"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

// The queue operations below run inside a section with the edge locked.
// Evicting or expiring a queued message drops the edge's reference to it;
// they return the net change in allocations for the section to account.

// fits reports whether the policy's hard caps leave room for a message of
// size bytes with n items and b bytes queued.
func (e *Edge) fits(n, b, size int64) bool {
	p := &e.pol
	return (p.MaxItems == 0 || n < int64(p.MaxItems)) && (p.MaxBytes == 0 || b+size <= p.MaxBytes)
}

// laneRoom reports whether lane's ring has a free entry. With MaxItems set
// the cap keeps every lane below it (laneCap is MaxItems); without, a
// lane's ring of Slots entries can fill only with messages queued several
// times (Retain), and then the lane is full as if at a cap.
func (e *Edge) laneRoom(lane int) bool { return e.laneLen(lane) < e.laneCap }

func (e *Edge) softReached(n, b int64) bool {
	p := &e.pol
	return (p.SoftItems > 0 && n >= int64(p.SoftItems)) || (p.SoftBytes > 0 && b >= p.SoftBytes)
}

// admit decides what happens to q, bound for lane (message.Edge's
// admitLocked): true once queued, an error when the policy refuses it, and
// false, nil when a Block sender may wait for room.
func (e *Edge) admit(p int, w *way, q *ringEntry, lane int) (bool, int64, error) {
	c := e.ctl
	size := int64(q.size)
	var net int64
	if e.pol.Admission == message.DeadlineQoS && lane == laneBackground && e.softReached(c.n, c.bytes) {
		// Expired messages do not count towards the soft cap either: free
		// them first (one comparison when none can have expired).
		reaped, dn := e.reapExpired(p, w, message.Now())
		net += dn
		if !reaped || e.softReached(c.n, c.bytes) {
			return false, net, errShedBackground
		}
	}
	if e.fits(c.n, c.bytes, size) && e.laneRoom(lane) {
		e.push(q, lane)
		return true, net, nil
	}
	if reaped, dn := e.reapExpired(p, w, message.Now()); reaped {
		net += dn
		if e.fits(c.n, c.bytes, size) && e.laneRoom(lane) {
			e.push(q, lane)
			return true, net, nil
		}
	}
	switch e.pol.Admission {
	case message.Block:
		return false, net, nil
	case message.DropNewest:
		return false, net, errFullDropNewest
	case message.DropOldest:
		for !e.fits(c.n, c.bytes, size) && c.n > 0 {
			net += e.evict(p, w, e.oldestLane())
		}
	case message.DeadlineQoS:
		if !e.canEvictFor(lane, size) {
			return false, net, errFullNoVictim
		}
		for l := laneBackground; l <= lane && !e.fits(c.n, c.bytes, size); l++ {
			for e.laneLen(l) > 0 && !e.fits(c.n, c.bytes, size) {
				net += e.evict(p, w, l)
			}
		}
	}
	for !e.laneRoom(lane) { // a full ring without a cap: its oldest goes
		net += e.evict(p, w, lane)
	}
	e.push(q, lane)
	return true, net, nil
}

func (e *Edge) laneLen(l int) uint64 { return e.ctl.lanes[l].tail - e.ctl.lanes[l].head }

func (e *Edge) canEvictFor(lane int, size int64) bool {
	var items, bytes int64
	for l := laneBackground; l <= lane; l++ {
		items += int64(e.laneLen(l))
		bytes += e.ctl.laneBytes[l]
	}
	return e.fits(e.ctl.n-items, e.ctl.bytes-bytes, size)
}

func (e *Edge) oldestLane() int {
	best, bestSeq := -1, uint64(math.MaxUint64)
	for l := range numLanes {
		if e.laneLen(l) > 0 {
			if s := e.entry(l, e.ctl.lanes[l].head).seq; s < bestSeq {
				best, bestSeq = l, s
			}
		}
	}
	return best
}

// push appends q to lane. The entry is written before the tail moves, so
// a process that dies half-way leaves the queue as it was.
func (e *Edge) push(q *ringEntry, lane int) {
	c := e.ctl
	c.seq++
	d := e.entry(lane, c.lanes[lane].tail)
	d.tok, d.seq, d.deadline, d.size, d.flags = q.tok, c.seq, q.deadline, q.size, q.flags
	// A release store, not an atomic add: only the lock's holder writes the
	// positions; nonEmpty reads them without the lock.
	atomicx.StoreRelease64(&c.lanes[lane].tail, c.lanes[lane].tail+1)
	c.n++
	c.bytes += int64(q.size)
	if e.byLane {
		c.laneBytes[lane] += int64(q.size)
	}
	if q.deadline != 0 && q.flags&uint32(message.DegradeAllowed) == 0 && q.deadline < c.minDeadline {
		c.minDeadline = q.deadline
	}
	e.counted(stAdmitted)
	if c.n > c.highWater {
		c.highWater = c.n
	}
}

// pop removes lane's oldest entry and returns a copy.
func (e *Edge) pop(lane int) ringEntry {
	c := e.ctl
	q := *e.entry(lane, c.lanes[lane].head)
	atomicx.StoreRelease64(&c.lanes[lane].head, c.lanes[lane].head+1) // as push's tail
	c.n--
	c.bytes -= int64(q.size)
	if e.byLane {
		c.laneBytes[lane] -= int64(q.size)
	}
	return q
}

// unpop puts back the entry pop just took (its ring slot still holds it).
func (e *Edge) unpop(lane int, q *ringEntry) {
	c := e.ctl
	atomicx.StoreRelease64(&c.lanes[lane].head, c.lanes[lane].head-1)
	c.n++
	c.bytes += int64(q.size)
	if e.byLane {
		c.laneBytes[lane] += int64(q.size)
	}
}

// release drops the edge's reference to a token it took off its queue.
func (e *Edge) release(p int, w *way, tok uint64) int64 {
	t := token.Token(tok)
	idx := t.Index()
	if idx >= e.a.capacity || !liveAs(atomic.LoadUint64(e.a.state(idx)), t.Generation()) {
		e.counted(stFreeErrors)
		return 0
	}
	return e.a.dropRef(p, w, idx)
}

func (e *Edge) evict(p int, w *way, lane int) int64 {
	q := e.pop(lane)
	e.counted(stEvicted)
	return e.release(p, w, q.tok)
}

// reapExpired frees every queued message that has expired and may expire,
// keeping the others in order; it costs one comparison when none can have.
//
// It compacts each lane towards its head, under a journal (compactLane,
// compactAt) that says at every instant which entries are queued, so that
// a process killed half-way leaves no entry counted twice and none freed
// yet counted (recovery finishes the compaction, finishCompaction). Each
// step first moves the journal past the entry, then frees it (an expired
// one) or first copies it to its new place, outside the queued ranges, and
// then moves the journal past both (a live one). The tail moves last.
func (e *Edge) reapExpired(p int, w *way, now int64) (bool, int64) {
	c := e.ctl
	if now <= c.minDeadline {
		return false, 0
	}
	var net int64
	before := c.n
	next := int64(math.MaxInt64)
	for l := range numLanes {
		head, tail := c.lanes[l].head, c.lanes[l].tail
		if head == tail {
			continue
		}
		atomicx.StoreRelease64(&c.compactAt, 0)
		atomicx.StoreRelease64(&c.compactLane, uint64(l)+1)
		keep := head
		for pos := head; pos < tail; pos++ {
			q := *e.entry(l, pos)
			if q.deadline != 0 && q.flags&uint32(message.DegradeAllowed) == 0 {
				if now > q.deadline {
					// Release stores keep program order (x86-TSO), and dropRef's
					// locked instruction publishes them before the free.
					atomicx.StoreRelease64(&c.compactAt, (keep-head)<<32|(pos+1-head))
					c.n--
					c.bytes -= int64(q.size)
					if e.byLane {
						c.laneBytes[l] -= int64(q.size)
					}
					e.counted(stExpired)
					net += e.release(p, w, q.tok)
					continue
				}
				next = min(next, q.deadline)
			}
			if keep != pos {
				*e.entry(l, keep) = q
			}
			keep++
			atomicx.StoreRelease64(&c.compactAt, (keep-head)<<32|(pos+1-head))
		}
		atomic.StoreUint64(&c.lanes[l].tail, keep)
		atomicx.StoreRelease64(&c.compactLane, 0)
	}
	c.minDeadline = next
	return c.n < before, net
}

// finishCompaction completes, in recovery, a compaction whose process died
// (see reapExpired): it moves the queued entries after the gap down to
// close it and sets the tail. It keeps the journal as reapExpired does,
// each move recorded as it is made, and clears it last, so that a
// recovering process that dies here too leaves the next one the same
// kind of half-done compaction to finish (recovery is idempotent).
func (e *Edge) finishCompaction() {
	c := e.ctl
	lane := atomic.LoadUint64(&c.compactLane)
	if lane == 0 {
		return
	}
	if lane <= numLanes { // else scribbled on: countRefs checks the lanes themselves
		l := int(lane - 1)
		at := atomic.LoadUint64(&c.compactAt)
		head, tail := c.lanes[l].head, c.lanes[l].tail
		keep, pos := head+at>>32, head+at&(1<<32-1)
		// pos > tail: the tail was set, the compaction is done.
		if keep <= pos && pos <= tail && tail-head <= e.laneCap {
			for ; pos < tail; pos++ {
				*e.entry(l, keep) = *e.entry(l, pos)
				keep++
				atomicx.StoreRelease64(&c.compactAt, (keep-head)<<32|(pos+1-head))
			}
			atomic.StoreUint64(&c.lanes[l].tail, keep)
		}
	}
	atomic.StoreUint64(&c.compactLane, 0)
}

// next removes and returns the next deliverable entry and its lane,
// freeing expired ones it meets.
func (e *Edge) next(p int, w *way, now *int64, net *int64) (ringEntry, int, bool) {
	for e.ctl.n > 0 {
		lane := laneCritical
		if e.laneLen(laneCritical) == 0 {
			lane = laneBestEffort
			if e.laneLen(laneBestEffort) == 0 || e.laneLen(laneBackground) > 0 &&
				e.entry(laneBackground, e.ctl.lanes[laneBackground].head).seq <
					e.entry(laneBestEffort, e.ctl.lanes[laneBestEffort].head).seq {
				lane = laneBackground
			}
		}
		q := e.pop(lane)
		if q.deadline != 0 {
			if *now == 0 {
				*now = message.Now()
			}
			if *now > q.deadline {
				if q.flags&uint32(message.DegradeAllowed) == 0 {
					e.counted(stExpired)
					*net += e.release(p, w, q.tok)
					continue
				}
				e.counted(stLate)
			}
		}
		return q, lane, true
	}
	return ringEntry{}, 0, false
}

// Recv moves the next token out of the edge to this process: the oldest
// LatencyCritical one if any, else the oldest of the other lane. It waits
// (parked on a futex) until a token is available, ctx is done (ctx.Err()),
// or the edge is closed and empty (message.ErrEdgeClosed).
func (e *Edge) Recv(ctx context.Context) (token.Token, error) {
	var one [1]token.Token
	_, err := e.recv(ctx, one[:], true)
	return one[0], err
}

// RecvBatch is Recv for up to len(dst) tokens under one lock.
func (e *Edge) RecvBatch(ctx context.Context, dst []token.Token) (int, error) {
	if len(dst) == 0 {
		return 0, nil
	}
	return e.recv(ctx, dst, true)
}

// TryRecv is Recv without waiting.
func (e *Edge) TryRecv() (token.Token, bool) {
	var one [1]token.Token
	n, _ := e.recv(context.Background(), one[:], false)
	return one[0], n == 1
}

// spinFor is how long a receiver polls an empty edge, without its lock,
// before it parks: a message that arrives within it costs no futex round
// trip for either process (a wake-up is microseconds; a poll is a few
// loads).
const spinFor = 20 * time.Microsecond

// nonEmpty peeks, without the lock, whether anything is queued.
func (e *Edge) nonEmpty() bool {
	for l := range numLanes {
		if atomic.LoadUint64(&e.ctl.lanes[l].tail) != atomic.LoadUint64(&e.ctl.lanes[l].head) {
			return true
		}
	}
	return false
}

// peek is nonEmpty for a caller outside any section: it reads the edge in
// a section of the process gate, so never after Close has unmapped it
// (false then; the locked path reports ErrClosed).
func (e *Edge) peek() bool {
	p, ok := e.a.gate.Enter()
	if !ok {
		return false
	}
	ne := e.nonEmpty()
	e.a.gate.Exit(p)
	return ne
}

// spin polls until the edge looks non-empty or closed (true), or spinFor
// has passed (false).
func (e *Edge) spin() bool {
	var start time.Time
	for i := 0; ; i++ {
		if e.nonEmpty() || atomic.LoadUint32(&e.ctl.closed) != 0 {
			return true
		}
		if i%32 == 31 {
			if start.IsZero() {
				start = time.Now()
			} else if time.Since(start) > spinFor {
				return false
			}
			runtime.Gosched()
		}
	}
}

func (e *Edge) recv(ctx context.Context, dst []token.Token, wait bool) (int, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	a := e.a
	var lockWait waiter
	spun := false
	if !wait && !e.peek() {
		return 0, nil // TryRecv on an empty edge (or a closed handle): no lock, no section
	}
	for {
		p, w, err := a.enter()
		if err != nil {
			return 0, err
		}
		if !e.lock() {
			a.exit(p, w, 0)
			lockWait.wait(a)
			continue
		}
		var now, net int64
		k := 0
		var tabErr error
		for k < len(dst) {
			q, lane, ok := e.next(p, w, &now, &net)
			if !ok {
				break
			}
			t := token.Token(q.tok)
			if tabErr = a.store.tab.add(t.Index()); tabErr != nil {
				e.unpop(lane, &q)
				break
			}
			e.counted(stDelivered)
			dst[k] = t
			k++
		}
		closed := atomic.LoadUint32(&e.ctl.closed) != 0
		seq := atomic.LoadUint32(&e.ctl.recvSeq)
		park := k == 0 && tabErr == nil && !closed && wait
		spinFirst := park && !spun // poll a while before announcing a sleeper
		if park {
			a.parked.Add(1) // the spin or the sleep reads the segment: Close waits
			if !spinFirst {
				announce(&e.ctl.recvWaiters, &e.mine().recv)
			}
		}
		if k > 0 || net != 0 {
			e.wakeSenders()
		}
		e.unlock()
		a.exit(p, w, net)
		switch {
		case k > 0:
			return k, nil
		case tabErr != nil:
			return 0, tabErr
		case closed:
			return 0, message.ErrEdgeClosed
		case !wait:
			return 0, nil
		case spinFirst:
			spun = true
			e.spin()
			a.parked.Add(-1)
			continue
		}
		ok := a.park(ctx, &e.ctl.recvSeq, seq)
		withdraw(&e.ctl.recvWaiters, &e.mine().recv)
		a.parked.Add(-1)
		if !ok {
			if a.closed.Load() {
				return 0, ErrClosed
			}
			return 0, ctx.Err()
		}
	}
}

// Close stops the edge accepting sends, in every process, and wakes every
// waiter. Receivers drain what is queued, then get message.ErrEdgeClosed.
// A second Close returns an error matching message.ErrEdgeClosed.
func (e *Edge) Close() error {
	var twice bool
	if err := e.locked(func(int, *way) {
		twice = atomic.SwapUint32(&e.ctl.closed, 1) != 0
		if !twice {
			e.wakeAll()
		}
	}); err != nil {
		return err
	}
	if twice {
		return errCloseTwice
	}
	return nil
}

// Closed reports whether the edge was closed (by any process).
func (e *Edge) Closed() bool {
	p, ok := e.a.gate.Enter()
	if !ok {
		return true
	}
	defer e.a.gate.Exit(p)
	return atomic.LoadUint32(&e.ctl.closed) != 0
}

// Drain frees every queued token and returns how many it freed.
func (e *Edge) Drain() int {
	freed := 0
	_ = e.a.lockedNet(e, func(p int, w *way) int64 {
		var net int64
		for l := range numLanes {
			for e.laneLen(l) > 0 {
				q := e.pop(l)
				e.counted(stDrained) // at once: a process killed here leaves the counters balanced
				net += e.release(p, w, q.tok)
				freed++
			}
		}
		e.ctl.minDeadline = math.MaxInt64
		e.wakeSenders()
		return net
	})
	return freed
}

// lockedNet is Edge.locked for work that frees slots.
func (a *seg) lockedNet(e *Edge, fn func(p int, w *way) int64) error {
	var wait waiter
	for {
		p, w, err := a.enter()
		if err != nil {
			return err
		}
		if e.lock() {
			net := fn(p, w)
			e.unlock()
			a.exit(p, w, net)
			return nil
		}
		a.exit(p, w, 0)
		wait.wait(a)
	}
}

// Len returns the number of queued tokens (0 after this process closed
// the store).
func (e *Edge) Len() int {
	var n int64
	_ = e.locked(func(int, *way) { n = e.ctl.n })
	return int(n)
}

// Bytes returns the sum of the queued messages' Size fields.
func (e *Edge) Bytes() int64 {
	var b int64
	_ = e.locked(func(int, *way) { b = e.ctl.bytes })
	return b
}

// Watermark returns the edge's fill level against its caps.
func (e *Edge) Watermark() message.Watermark {
	var wm message.Watermark
	_ = e.locked(func(int, *way) { wm = e.level(e.ctl.n, e.ctl.bytes) })
	return wm
}

func (e *Edge) level(n, b int64) message.Watermark {
	p := &e.pol
	if (p.MaxItems > 0 && n >= int64(p.MaxItems)) || (p.MaxBytes > 0 && b >= p.MaxBytes) {
		return message.HardReached
	}
	if e.softReached(n, b) {
		return message.SoftReached
	}
	return message.BelowSoft
}

// Stats returns a snapshot of the edge's counters, which count the
// operations of every process.
func (e *Edge) Stats() message.EdgeStats {
	var s message.EdgeStats
	_ = e.locked(func(int, *way) {
		c := e.ctl
		s = message.EdgeStats{
			Admitted:   atomic.LoadUint64(c.stat(stAdmitted)),
			Rejected:   atomic.LoadUint64(c.stat(stRejected)),
			Invalid:    atomic.LoadUint64(c.stat(stInvalid)),
			Evicted:    atomic.LoadUint64(c.stat(stEvicted)),
			Expired:    atomic.LoadUint64(c.stat(stExpired)),
			Delivered:  atomic.LoadUint64(c.stat(stDelivered)),
			Late:       atomic.LoadUint64(c.stat(stLate)),
			Drained:    atomic.LoadUint64(c.stat(stDrained)),
			FreeErrors: atomic.LoadUint64(c.stat(stFreeErrors)),
			Waited:     atomic.LoadUint64(c.stat(stWaited)),
			Len:        int(c.n),
			Bytes:      c.bytes,
			HighWater:  int(c.highWater),
			Watermark:  e.level(c.n, c.bytes),
		}
	})
	return s
}
