package shm

import (
	"context"
	"fmt"
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

// Edge counters, indices into edgeCtl.st.
const (
	stAdmitted = iota
	stRejected
	stInvalid
	stEvicted
	stExpired
	stDelivered
	stLate
	stDrained
	stFreeErrors
	stWaited
	numEdgeStats
)

// edgeCtl is one edge's block in the segment.
type edgeCtl struct {
	// Futex words, bumped on every change a waiter may want, and the
	// number of waiters (a sender skips the wake syscall when 0).
	recvSeq     uint32
	sendSeq     uint32
	recvWaiters uint32
	sendWaiters uint32
	_           [atomicx.CacheLine - 16]byte

	lock   uint32 // 0, or the holder's record index + 1
	closed uint32
	// The policy and ring shape, written at Create and never again.
	admission                                uint32
	_                                        uint32
	maxItems, softItems, maxBytes, softBytes int64
	laneCap, ringOff                         uint64

	// Under the lock.
	n           int64
	bytes       int64
	laneBytes   [numLanes]int64
	seq         uint64
	minDeadline int64
	lanes       [numLanes]struct{ head, tail uint64 }
	highWater   int64
	_           [atomicx.CacheLine - 32]byte

	st [numEdgeStats]uint64 // atomic
	_  [atomicx.CacheLine - (numEdgeStats*8)%atomicx.CacheLine]byte
}

// Edge is one process's handle on a shared edge of a Store.
type Edge struct {
	a       *seg
	ctl     *edgeCtl
	ring    unsafe.Pointer // numLanes rings of laneCap entries
	laneCap uint64
	pol     message.Policy
	id      int
}

func (e *Edge) entry(lane int, pos uint64) *ringEntry {
	i := uint64(lane)*e.laneCap + pos%e.laneCap
	return (*ringEntry)(unsafe.Add(e.ring, uintptr(i)*unsafe.Sizeof(ringEntry{})))
}

// count bumps a counter outside the lock; counted bumps one under it (the
// lock orders it, and Stats reads under the lock).
func (e *Edge) count(which int)   { atomic.AddUint64(&e.ctl.st[which], 1) }
func (e *Edge) counted(which int) { e.ctl.st[which]++ }

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
	var lockWait, busyWait waiter
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
		// header is read here under a brief reader hold, which never
		// waits: a token under Update stops the batch (errBusy) and is
		// retried after the lock is released.
		var net int64
		progressed := false
		for {
			t := ts[sent]
			var q ringEntry
			var lane int
			if lane, err = e.checkLocked(p, w, t, &q); err != nil {
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
		busy := err == errBusy
		if busy {
			err = nil
		}
		// Everything that touches the segment happens before the section
		// closes, or inside an outside-window (Close waits for both).
		full := err == nil && !busy && sent < len(ts)
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
		spinFirst := full && wait && !spun // poll a while before announcing a sleeper
		if full && wait {
			a.parked.Add(1)
			if !spinFirst {
				atomic.AddUint32(&e.ctl.sendWaiters, 1)
			}
		}
		e.unlock()
		a.exit(p, w, net)
		switch {
		case err != nil:
			return sent, err
		case busy:
			busyWait.wait(a)
			continue
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
		ok := a.park(ctx, &e.ctl.sendSeq, seq)
		atomic.AddUint32(&e.ctl.sendWaiters, ^uint32(0))
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
		err != errShedBackground && err != errExpiredOnSend
}

// checkLocked validates t and reads what admission needs from its header
// into q, inside the section and under the lock; it returns q's lane. It
// must not wait: a header under an Update is errBusy. Token and header
// errors count in Invalid; an expired message is errExpiredOnSend.
func (e *Edge) checkLocked(p int, w *way, t token.Token, q *ringEntry) (int, error) {
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
	for {
		s := atomic.LoadUint64(st)
		if !liveAs(s, t.Generation()) {
			e.counted(stInvalid)
			return 0, stale("Send", t)
		}
		if s&writerBit != 0 || readersOf(s) >= maxReaders {
			return 0, errBusy
		}
		if atomic.CompareAndSwapUint64(st, s, s+readerOne) {
			break
		}
	}
	h := *(*message.Header)(a.slotAt(idx))
	a.unhold(p, w, idx, readerOne)
	switch {
	case !h.QoS.Valid():
		e.counted(stInvalid)
		return 0, errBadQoS
	case e.pol.MaxBytes > 0 && int64(h.Size) > e.pol.MaxBytes:
		e.counted(stInvalid)
		return 0, errOverMaxBytes
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

// errBusy stops a batch at a token under Update; the batch resumes with it
// outside the lock.
var errBusy = fmt.Errorf("shm: slot busy")

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
