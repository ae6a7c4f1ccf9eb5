package shm

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/internal/errs"
	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

// A shared edge is message.Edge with its queue in the segment: the same
// lanes (LatencyCritical first; BestEffort and Background merged by
// admission order), the same caps, admission modes and counters. Its state
// sits in one edgeCtl block guarded by a lock word that holds the owner's
// record: the lock is only ever held inside a section, so a live process
// never holds it while a recovery runs, and recovery simply clears it when
// its holder died. Waiting (a Block send with no room, a receive from an
// empty edge) happens outside any section and outside the lock, parked on a
// futex word in the block.
//
// Unlike message.Edge, senders waiting for room are not served in FIFO
// order: all of them are woken and race for it.

const (
	laneBackground = iota
	laneBestEffort
	laneCritical
	numLanes
)

// ringEntry is what an edge keeps per queued token (message.Edge's queued).
type ringEntry struct {
	tok      uint64
	seq      uint64 // admission order across the lanes of one edge
	deadline int64
	size     uint32
	flags    uint32
}

// Edge counters, indices for edgeCtl.stat. The first numHotStats change on
// every send and receive and sit on the edge's hot line.
const (
	stAdmitted = iota
	stDelivered
	stRejected
	stInvalid
	stEvicted
	stExpired
	stLate
	stDrained
	stFreeErrors
	stWaited
	numEdgeStats
	numHotStats = 2
)

// edgeCtl is one edge's block in the segment. Its lines are laid out for a
// hop between processes, where every line a send or a receive writes
// changes cores: one line holds the lock and everything a send or receive
// changes under it except the lanes; the lanes have the next line to
// themselves; what changes rarely or never (the policy, the other
// counters) comes after, so it stays shared in every core's cache.
type edgeCtl struct {
	// Futex words, bumped on every change a waiter may want, and the
	// number of waiters (a sender skips the wake syscall when 0).
	recvSeq     uint32
	sendSeq     uint32
	recvWaiters uint32
	sendWaiters uint32
	_           [atomicx.CacheLine - 16]byte

	// The hot line: the lock, and under it the totals and the admission
	// sequence, and the two counters every hop bumps.
	lock   uint32 // 0, or the holder's record index + 1
	closed uint32
	n      int64
	bytes  int64
	seq    uint64
	hot    [numHotStats]uint64 // stat(stAdmitted), stat(stDelivered)
	_      [atomicx.CacheLine - 48]byte

	// Under the lock: the lanes' positions, the high-water mark (written
	// only when it rises) and the earliest deadline queued.
	lanes       [numLanes]struct{ head, tail uint64 }
	highWater   int64
	minDeadline int64
	_           [atomicx.CacheLine - numLanes*16 - 16]byte

	// Under the lock, kept only by DeadlineQoS edges (the only admission
	// that evicts by lane and needs each lane's bytes).
	laneBytes [numLanes]int64
	// Under the lock: the journal of a compaction in progress (reapExpired),
	// for recovery if its process dies half-way. compactLane is the lane +
	// 1 (0: none); compactAt packs the compaction's progress as offsets from
	// the lane's head: keep<<32 | pos. Entries [head, head+keep) and
	// [head+pos, tail) are queued; the ones between are freed or moved.
	compactLane uint64
	compactAt   uint64
	_           [atomicx.CacheLine - numLanes*8 - 16]byte

	// The policy and ring shape, written at Create and never again.
	admission                                uint32
	_                                        uint32
	maxItems, softItems, maxBytes, softBytes int64
	laneCap, ringOff                         uint64
	_                                        [atomicx.CacheLine - 56]byte

	cold [numEdgeStats - numHotStats]uint64 // the other counters; atomic
	_    [atomicx.CacheLine - ((numEdgeStats-numHotStats)*8)%atomicx.CacheLine]byte
}

// The hot line and the lanes' line are a line each (a compile error
// otherwise).
var (
	_ [unsafe.Offsetof(edgeCtl{}.lanes) - unsafe.Offsetof(edgeCtl{}.lock) - atomicx.CacheLine]byte
	_ [atomicx.CacheLine - (unsafe.Offsetof(edgeCtl{}.lanes) - unsafe.Offsetof(edgeCtl{}.lock))]byte
	_ [unsafe.Offsetof(edgeCtl{}.laneBytes) - unsafe.Offsetof(edgeCtl{}.lanes) - atomicx.CacheLine]byte
	_ [atomicx.CacheLine - (unsafe.Offsetof(edgeCtl{}.laneBytes) - unsafe.Offsetof(edgeCtl{}.lanes))]byte
)

// stat returns counter which of the edge.
func (c *edgeCtl) stat(which int) *uint64 {
	if which < numHotStats {
		return &c.hot[which]
	}
	return &c.cold[which-numHotStats]
}

// Edge is one process's handle on a shared edge of a Store.
type Edge struct {
	a       *seg
	ctl     *edgeCtl
	ring    unsafe.Pointer // numLanes rings of laneCap entries
	laneCap uint64
	pol     message.Policy
	id      int
	byLane  bool // DeadlineQoS: the edge keeps each lane's bytes (ctl.laneBytes)
}

func (e *Edge) entry(lane int, pos uint64) *ringEntry {
	i := uint64(lane)*e.laneCap + pos%e.laneCap
	return (*ringEntry)(unsafe.Add(e.ring, uintptr(i)*unsafe.Sizeof(ringEntry{})))
}

// count bumps a counter outside the lock; counted bumps one under it (the
// lock orders it, and Stats reads under the lock).
func (e *Edge) count(which int)   { atomic.AddUint64(e.ctl.stat(which), 1) }
func (e *Edge) counted(which int) { *e.ctl.stat(which)++ }

// Policy returns the edge's policy.
func (e *Edge) Policy() message.Policy { return e.pol }

// Errors of the send paths, matching message's sentinels.
var (
	errFullDropNewest = sentinels("shm: edge full (DropNewest: newest message refused)", message.ErrEdgeFull, message.ErrRejected)
	errFullTrySend    = sentinels("shm: edge full (Block: TrySend would have to wait)", message.ErrEdgeFull, message.ErrRejected)
	errFullNoVictim   = sentinels("shm: edge full (DeadlineQoS: nothing of equal or lower QoS to evict)", message.ErrEdgeFull, message.ErrRejected)
	errShedBackground = fmt.Errorf("%w: DeadlineQoS edge at or above its soft cap sheds Background messages", message.ErrRejected)
	errOverMaxBytes   = fmt.Errorf("%w: message Size exceeds the edge's MaxBytes and could never fit", message.ErrRejected)
	errBadQoS         = fmt.Errorf("%w: QoS is not Background, BestEffort or LatencyCritical", message.ErrRejected)
	errExpiredOnSend  = sentinels("shm: rejected by edge policy: deadline passed", message.ErrRejected, message.ErrExpired)
	errSendClosed     = fmt.Errorf("%w: send refused", message.ErrEdgeClosed)
	errCloseTwice     = fmt.Errorf("%w: already closed", message.ErrEdgeClosed)
	errNilToken       = fmt.Errorf("shm: send: %w: nil token", ErrBadToken)
)

var sentinels = errs.Multi

// lock tries to take the edge's lock; the caller is inside a section.
func (e *Edge) lock() bool {
	return atomic.CompareAndSwapUint32(&e.ctl.lock, 0, uint32(e.a.me+1))
}

// unlock releases the lock: a release store, as any spinlock's (what the
// holder wrote is visible to the next holder, whose CAS reads the 0).
func (e *Edge) unlock() { atomicx.StoreRelease32(&e.ctl.lock, 0) }

// locked runs fn inside a section with the edge locked.
func (e *Edge) locked(fn func(p int, w *way)) error {
	var wait waiter
	for {
		p, w, err := e.a.enter()
		if err != nil {
			return err
		}
		if e.lock() {
			fn(p, w)
			e.unlock()
			e.a.exit(p, w, 0)
			return nil
		}
		e.a.exit(p, w, 0)
		wait.wait(e.a)
	}
}

// Send moves one of this process's references to t into the edge. Under
// Block it waits until t fits, until ctx is done (returning ctx.Err()), or
// until the edge is closed; under the other admission modes it never waits.
// On any error the caller keeps its reference.
func (e *Edge) Send(ctx context.Context, t token.Token) error {
	if ctx == nil {
		ctx = context.Background()
	}
	_, err := e.send(ctx, []token.Token{t}, true)
	return err
}

// TrySend is Send without waiting: where Send would wait it returns an
// error matching message.ErrEdgeFull.
func (e *Edge) TrySend(t token.Token) error {
	var one [1]token.Token
	one[0] = t
	_, err := e.send(context.Background(), one[:], false)
	return err
}

// SendBatch moves ts[:n] into the edge in order, taking the lock once for
// as many as fit; under Block it waits for room for the rest. On error the
// caller keeps ts[n:].
func (e *Edge) SendBatch(ctx context.Context, ts []token.Token) (int, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	return e.send(ctx, ts, true)
}

func (e *Edge) send(ctx context.Context, ts []token.Token, wait bool) (int, error) {
	a := e.a
	sent := 0
	waited, spun := false, false
	var lockWait waiter
	for sent < len(ts) {
		p, w, err := a.enter()
		if err != nil {
			return sent, err
		}
		if !e.lock() {
			a.exit(p, w, 0)
			lockWait.wait(a)
			continue
		}
		// One section and one lock for as many tokens as fit. Each token's
		// header is read here without a hold (admitHeader), so nothing
		// here waits on a slot.
		var net int64
		progressed := false
		for {
			t := ts[sent]
			var q ringEntry
			var lane int
			if lane, err = e.checkLocked(t, &q); err != nil {
				break
			}
			if atomic.LoadUint32(&e.ctl.closed) != 0 {
				err = errSendClosed
				break
			}
			if !a.store.tab.remove(t.Index()) {
				e.counted(stInvalid)
				err = fmt.Errorf("shm: Send %v: %w", t, ErrNotHeld)
				break
			}
			var ok bool
			var dn int64
			ok, dn, err = e.admit(p, w, &q, lane)
			net += dn
			if !ok {
				_ = a.store.tab.add(t.Index()) // put back the reference just taken: cannot fail
				break
			}
			sent++
			progressed = true
			if sent == len(ts) {
				break
			}
		}
		// Everything that touches the segment happens before the section
		// closes, or inside an outside-window (Close waits for both).
		full := err == nil && sent < len(ts)
		if progressed {
			e.wakeReceivers()
		}
		switch {
		case err != nil && !isInvalid(err), full && !wait:
			e.count(stRejected)
		case full && !waited:
			waited = true
			e.count(stWaited)
		}
		seq := atomic.LoadUint32(&e.ctl.sendSeq)
		// Room also appears when a queued message expires, which nobody
		// announces: a parked sender looks again then.
		expiry := e.ctl.minDeadline
		spinFirst := full && wait && !spun // poll a while before announcing a sleeper
		if full && wait {
			a.parked.Add(1)
			if !spinFirst {
				announce(&e.ctl.sendWaiters, &e.mine().send)
			}
		}
		e.unlock()
		a.exit(p, w, net)
		switch {
		case err != nil:
			return sent, err
		case !full:
			continue
		case !wait:
			return sent, errFullTrySend
		case spinFirst:
			spun = true
			e.spinForRoom(ctx)
			a.parked.Add(-1)
			continue
		}
		ok := a.parkFor(ctx, &e.ctl.sendSeq, seq, untilExpiry(expiry))
		withdraw(&e.ctl.sendWaiters, &e.mine().send)
		if !ok && !a.closed.Load() {
			e.count(stRejected)
		}
		a.parked.Add(-1)
		if !ok {
			if a.closed.Load() {
				return sent, ErrClosed
			}
			return sent, ctx.Err()
		}
	}
	return sent, nil
}

// untilExpiry is how long a parked sender may sleep before a queued
// message expiring at expiry (the edge's earliest; math.MaxInt64 for none)
// gives it room: just past it, and parkSlice at most.
func untilExpiry(expiry int64) time.Duration {
	if expiry == math.MaxInt64 {
		return parkSlice
	}
	return max(time.Duration(expiry-message.Now())+time.Microsecond, time.Microsecond)
}

// spinForRoom polls, without the lock, until the edge looks like it has
// room for one more item, it is closed, ctx is done, or spinFor passed.
func (e *Edge) spinForRoom(ctx context.Context) {
	var start time.Time
	for i := 0; ; i++ {
		var n uint64
		for l := range numLanes {
			n += atomic.LoadUint64(&e.ctl.lanes[l].tail) - atomic.LoadUint64(&e.ctl.lanes[l].head)
		}
		if e.fits(int64(n), atomic.LoadInt64(&e.ctl.bytes), 0) || atomic.LoadUint32(&e.ctl.closed) != 0 {
			return
		}
		if i%32 == 31 {
			if ctx.Err() != nil {
				return
			}
			if start.IsZero() {
				start = time.Now()
			} else if time.Since(start) > spinFor {
				return
			}
			runtime.Gosched()
		}
	}
}

// isInvalid reports errors counted in Invalid rather than Rejected.
func isInvalid(err error) bool {
	return err != errSendClosed && err != errFullDropNewest && err != errFullNoVictim &&
		err != errShedBackground && err != errExpiredOnSend && err != errOverMaxBytes
}

// checkLocked validates t and reads what admission needs from its header
// into q, inside the section and under the lock; it returns q's lane. It
// never waits. Token and header errors count in Invalid; an expired
// message (errExpiredOnSend) and one larger than MaxBytes (errOverMaxBytes)
// are policy refusals, counted in Rejected by the caller.
func (e *Edge) checkLocked(t token.Token, q *ringEntry) (int, error) {
	a := e.a
	if t.IsNil() {
		e.counted(stInvalid)
		return 0, errNilToken
	}
	idx, err := a.index(t, "Send")
	if err != nil {
		e.counted(stInvalid)
		return 0, err
	}
	st := a.state(idx)
	if !liveAs(atomic.LoadUint64(st), t.Generation()) {
		e.counted(stInvalid)
		return 0, stale("Send", t)
	}
	h := a.admitHeader(idx)
	if !liveAs(atomic.LoadUint64(st), t.Generation()) {
		e.counted(stInvalid)
		return 0, stale("Send", t)
	}
	switch {
	case !h.QoS.Valid():
		e.counted(stInvalid)
		return 0, errBadQoS
	case e.pol.MaxBytes > 0 && int64(h.Size) > e.pol.MaxBytes:
		return 0, errOverMaxBytes // policy: counted in Rejected
	case h.Deadline != 0 && h.Flags&message.DegradeAllowed == 0 && message.Now() > h.Deadline:
		return 0, errExpiredOnSend
	}
	q.tok, q.deadline, q.size, q.flags = uint64(t), h.Deadline, h.Size, uint32(h.Flags&message.DegradeAllowed)
	switch h.QoS {
	case message.Background:
		return laneBackground, nil
	case message.LatencyCritical:
		return laneCritical, nil
	}
	return laneBestEffort, nil
}

// admitHeader reads the header fields admission needs (Deadline; QoS,
// Flags and Size) with three atomic loads, without a hold: the caller holds
// a reference, so the slot stays this allocation's while it reads (it
// checks the state word before and after), and each field is read whole.
// An Update running meanwhile may give a mix of the fields before and after
// it, each a value the message had (message.Edge reads its store's copy of
// them under a seqlock instead; here the fields are the slot's own, which
// the Update callback writes directly). Taking a reader hold
// instead wrote the slot's state word on every send, so the slot's line
// changed cores on every hop between processes.
func (a *seg) admitHeader(idx uint32) message.Header {
	base := a.slotAt(idx)
	var h message.Header
	h.Deadline = int64(atomic.LoadUint64((*uint64)(unsafe.Add(base, offDeadline))))
	qf := atomic.LoadUint64((*uint64)(unsafe.Add(base, offQoS)))
	*(*uint64)(unsafe.Pointer(&h.QoS)) = qf // QoS and Flags: the word at offQoS
	h.Size = atomic.LoadUint32((*uint32)(unsafe.Add(base, offSize)))
	return h
}

// The header offsets admitHeader reads; QoS and Flags share one aligned
// word, Size follows it (a compile error otherwise).
const (
	offDeadline = unsafe.Offsetof(message.Header{}.Deadline)
	offQoS      = unsafe.Offsetof(message.Header{}.QoS)
	offSize     = unsafe.Offsetof(message.Header{}.Size)
)

var (
	_ [offDeadline % 8]struct{}
	_ [0 - offDeadline%8]struct{}
	_ [0 - offQoS%8]struct{}
	_ [unsafe.Offsetof(message.Header{}.Flags) + unsafe.Sizeof(message.Header{}.Flags) - offQoS - 8]struct{}
	_ [offQoS + 8 - unsafe.Offsetof(message.Header{}.Flags) - unsafe.Sizeof(message.Header{}.Flags)]struct{}
	_ [offSize - offQoS - 8]struct{}
	_ [offQoS + 8 - offSize]struct{}
)

// mine is this process's counts of waiters on the edge.
func (e *Edge) mine() *edgeWaiters { return &e.a.rec.edgeWaiters[e.id] }

// announce counts a goroutine of this process in as parked on the edge
// (total is the edge's recvWaiters or sendWaiters, own this process's part
// of it). Own goes up after total and down before it, so that recovery,
// which subtracts a dead process's own from total, never takes more than
// the process had added: a total too low by one would let a sender skip
// the wake of a real waiter, while one too high (a death between the two
// adds) only costs a syscall per send.
func announce(total, own *uint32) {
	atomic.AddUint32(total, 1)
	atomic.AddUint32(own, 1)
}

// withdraw undoes announce.
func withdraw(total, own *uint32) {
	atomic.AddUint32(own, ^uint32(0))
	atomic.AddUint32(total, ^uint32(0))
}

// wakeReceivers wakes parked receivers after a send made progress. A
// receiver announces itself (recvWaiters) under the lock before it reads
// nothing and parks, so a sender that finds no waiter after its own
// locked section has nobody to wake: it skips the bump and the syscall.
func (e *Edge) wakeReceivers() {
	if atomic.LoadUint32(&e.ctl.recvWaiters) != 0 {
		atomic.AddUint32(&e.ctl.recvSeq, 1)
		futexWake(&e.ctl.recvSeq)
	}
}

// wakeSenders is wakeReceivers for senders waiting for room.
func (e *Edge) wakeSenders() {
	if atomic.LoadUint32(&e.ctl.sendWaiters) != 0 {
		atomic.AddUint32(&e.ctl.sendSeq, 1)
		futexWake(&e.ctl.sendSeq)
	}
}

// wakeAll wakes every waiter of the edge, announced or not (Close,
// recovery).
func (e *Edge) wakeAll() {
	atomic.AddUint32(&e.ctl.recvSeq, 1)
	atomic.AddUint32(&e.ctl.sendSeq, 1)
	futexWake(&e.ctl.recvSeq)
	futexWake(&e.ctl.sendSeq)
}
