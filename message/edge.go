package message

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/token"
)

// HeaderStore is what an edge needs from the store its tokens come from:
// reading a header for admission, and freeing the references it evicts,
// expires or drains. *Store[P] implements it for every P.
//
// An edge calls Header before it takes its own lock and Free while it
// holds it: implementations must be quick and must not call back into the
// edge. A panic in Header reaches the sender, which keeps the token whose
// header it read (a SendBatch's chunks of 32 before it are in the edge). A
// panic in Free (freeing a message the edge evicted, expired or drained)
// leaves the edge whole: the message counts in FreeErrors, and the panic is
// re-raised to the operation's caller once the edge's lock is released.
// The operation does not wait after it: a send that has not got its token
// in raises instead of waiting for room (the caller keeps the token), a
// SendBatch raises after the tokens it admitted, a receive that has taken
// nothing raises instead of waiting. A receive that has taken tokens
// delivers them instead (the panic would lose them), and the next send,
// receive or Drain on the edge raises it before doing anything.
//
// A Free that calls runtime.Goexit (a test double's t.FailNow) ends the
// operation's goroutine there, but not the edge: the message counts in
// FreeErrors, the edge is left whole and unlocked, and parked senders and
// receivers that can go on are woken. Messages an expiry had not freed yet
// stay queued, in order (a receive or expiry scan that reaches them frees
// them); tokens a receive had taken are freed, since nobody is left to get
// them (they count as Delivered); a send's own token stays its caller's.
type HeaderStore interface {
	Header(token.Token) (Header, error)
	Free(token.Token) error
}

// Lanes, indexed by QoS-1. Recv always serves the LatencyCritical lane
// first; BestEffort and Background form one FIFO lane, kept in two rings so
// that DeadlineQoS finds its lowest-QoS victims in O(1) and merged again on
// receive by admission order.
const (
	laneBackground = iota
	laneBestEffort
	laneCritical
	numLanes
)

// Edge is a bounded, multi-producer multi-consumer queue of tokens between
// stages. It never touches payloads: admission reads the header once, on
// send, and caches what it needs.
//
// # Ownership
//
// A successful Send or TrySend moves one reference into the edge; a refused
// one (any error) leaves it with the caller. Recv and TryRecv move the
// reference out to the receiver. Whatever the edge evicts (DropOldest,
// DeadlineQoS) or expires, it frees through its HeaderStore and counts in
// Stats. Close stops new sends and lets receivers drain what is queued; the
// tokens still queued when nobody drains them stay owned by the edge until
// Drain frees them (Drain works on an open edge too). A Graph drains all of
// its edges when it stops.
//
// # Deadlines
//
// A message whose header has a Deadline that has passed is never delivered:
// a send of an already expired message is refused with ErrExpired (the
// caller keeps it), and a message that expires while queued is freed and
// counted in Stats.Expired when a receiver reaches it, or earlier when a
// sender needs its room (a Block sender parked on a full edge looks again
// when the earliest queued message expires, and takes its room). The
// DegradeAllowed flag opts out: such a message is
// delivered even when late (counted in Stats.Late, so the receiver can
// check Header.Expired itself), though it can still be evicted like any
// other message.
//
// # Order
//
// LatencyCritical messages are always received before any other queued
// message. Within the LatencyCritical lane, and within the lane shared by
// BestEffort and Background, order is FIFO by admission.
//
// The fast paths (a send that fits, a receive from a non-empty edge)
// allocate nothing. A BestEffort message without a deadline, on an edge
// without byte caps and not in DeadlineQoS mode, goes through a lock-free
// ring while nothing else is queued and no one waits (fast.go); the other
// cases take one mutex. SendBatch and RecvBatch take it once for many
// tokens.
type Edge struct {
	// Read-only after NewEdge, read by senders outside the lock: kept off
	// the cache lines the lock holder writes.
	hs   HeaderStore
	meta *metaTable // hs's metadata, when hs is a *Store: the fast path of Header
	pol  Policy
	fast *fastRing // the lock-free path (fast.go); nil when the policy rules it out
	_    atomicx.Pad

	mu        sync.Mutex
	lanes     [numLanes]ring
	laneBytes [numLanes]int64
	n         int
	bytes     int64
	seq       uint64
	// minDeadline is a lower bound of the deadlines of queued messages that
	// can expire (have a deadline and lack DegradeAllowed); MaxInt64 when
	// there are none. It lets a full edge skip looking for expired messages.
	minDeadline int64
	closed      bool
	// slow is true while the fast ring is closed (fast.go); always true
	// without a fast ring.
	slow  bool
	recvq waitList
	sendq waitList
	// wakeRecv is a receiver unlinked by enqueueLocked, to be signalled by
	// the sender once it has released the lock (see send).
	wakeRecv *waiter
	st       EdgeStats
	// freePanic is what the HeaderStore's Free panicked with while the
	// edge freed a message it owned (an eviction, an expiry, Drain), under
	// the lock. The operation that caught it takes it as it releases the
	// lock (unlockTaking) and re-raises it once it is done.
	freePanic any
	// reaped holds the messages an expiry scan removed, while they are
	// freed (reapExpiredLocked); reapLeft those not freed yet, of lane
	// reapLane, for exitLocked. reaped keeps its capacity between scans.
	reaped   []queued
	reapLeft []queued
	reapLane int
	_        atomicx.Pad
	invalid  atomic.Uint64
}

// nilStore reports whether hs is nil, or a nil *Store or *ByteStore in a
// non-nil interface (which == nil does not catch).
func nilStore(hs HeaderStore) bool {
	if hs == nil {
		return true
	}
	ts, ok := hs.(tabled)
	return ok && ts.table() == nil
}

// NewEdge returns an open edge for tokens of hs with policy p, or an error
// wrapping ErrBadPolicy.
func NewEdge(hs HeaderStore, p Policy) (*Edge, error) {
	if nilStore(hs) {
		return nil, fmt.Errorf("%w: nil HeaderStore (%w)", ErrBadPolicy, ErrNilStore)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	e := &Edge{hs: hs, pol: p, minDeadline: math.MaxInt64, slow: true}
	if ts, ok := hs.(tabled); ok {
		e.meta = ts.table()
	}
	if fastEligible(&p) {
		e.fast, e.slow = newFastRing(&p), false
	}
	for i := range e.lanes {
		e.lanes[i].limit = p.MaxItems
	}
	return e, nil
}

// Policy returns the edge's policy.
func (e *Edge) Policy() Policy { return e.pol }

// Send moves t into the edge. Under Block it waits until t fits, until ctx
// is done (returning ctx.Err()), or until the edge is closed; under the
// other admission modes it never waits. On any error the caller keeps t.
func (e *Edge) Send(ctx context.Context, t token.Token) error {
	if e.trySendPlain(t) {
		return nil
	}
	_, err := e.sendCatching(ctx, t, true, true)
	return err
}

// trySendPlain is Send's fast path for the common message, a plain one (see
// fastInfo) from a *Store onto an edge in fast mode: one gate section to
// read its metadata, one CAS to claim a ring cell. It reports false, having
// changed nothing, for anything else (a bad, stale or non-plain token, a
// full ring, slow mode), which sendCatching then checks and sends the
// general way. It is what sendCatching does for such a message, without
// staging it in a queued (Send was a quarter of the instructions of a
// message's life on one goroutine, and is now a fifth).
func (e *Edge) trySendPlain(t token.Token) bool {
	if e.fast == nil || e.meta == nil || e.fast.tail.Load()&slowBit != 0 {
		return false // slow mode: the checked way reads the metadata once
	}
	size, ok := e.meta.fastInfo(t)
	return ok && e.fast.trySend(t, size)
}

// TrySend is Send without waiting: where Send would wait it returns an
// error matching ErrEdgeFull.
func (e *Edge) TrySend(t token.Token) error {
	if e.trySendPlain(t) {
		return nil
	}
	_, err := e.sendCatching(context.Background(), t, false, true)
	return err
}

// sendCatching is Send (or, without wait, TrySend). With raising it raises
// a panic of the store's Free (caught while admission evicted or expired,
// or held back by a receive) once it is done, as Send does; without, it
// returns it instead, for callers that must know whether t got in: err ==
// nil exactly when it did, whatever fp (errFreePanicked when the panic
// stopped it first). A panic of the store's Header is never caught here:
// t never got in then.
func (e *Edge) sendCatching(ctx context.Context, t token.Token, wait, raising bool) (fp any, err error) {
	if ctx == nil { // a nil context waits without a deadline, never panics
		ctx = context.Background()
	}
	var q queued
	lane, err := e.check(t, &q)
	if err != nil {
		if err == errOverMaxBytes { // policy, not a bad token or header
			e.mu.Lock() // a counter only: no need to leave fast mode
			e.st.Rejected++
			e.mu.Unlock()
		} else {
			e.invalid.Add(1)
		}
		return nil, err
	}
	if q.deadline != 0 && !q.flags.Has(DegradeAllowed) && Now() > q.deadline {
		e.mu.Lock() // a counter only: no need to leave fast mode
		e.st.Rejected++
		e.mu.Unlock()
		return nil, errExpiredOnSend
	}
	if lane == laneBestEffort && q.deadline == 0 && e.fast != nil && ringable(t) {
		if e.fast.trySend(t, q.size) || (wait && e.pol.Admission == Block && e.spinSend(t, q.size)) {
			return nil, nil
		}
	}

	if raising {
		defer func() { raise(fp) }()
	}
	e.lock()
	var w *waiter
	held := false // a Free panic stopped the send before t got in
	for {
		if e.freePanic != nil {
			// A Free panicked (in this send's admission, or held back by
			// a receive): raise it rather than admit or wait; the caller
			// keeps its token.
			held = true
			break
		}
		if e.closed {
			err = errSendClosed
			break
		}
		// A new sender queues behind senders that are already waiting
		// (FIFO), so a stream of small messages cannot starve a large one.
		if w != nil || e.sendq.head == nil {
			var ok bool
			ok, err = e.admitLocked(&q, lane)
			if ok || err != nil {
				break
			}
		}
		// Block mode, no room.
		if e.freePanic != nil {
			held = true
			break // as above: a Free panicked while this send made room
		}
		if !wait {
			err = errFullTrySend
			break
		}
		if w == nil {
			w = getWaiter()
			w.need, w.sq, w.slane = int64(q.size), q, uint8(lane)
			e.sendq.pushBack(w)
			e.st.Waited++
		} else {
			// Woken to look again (an expiry, or a timer to arm): keep our
			// place at the front.
			e.sendq.pushFront(w)
		}
		expiry := e.senderExpiryLocked(w)
		e.unlockTaking(&fp)
		r := w.waitOrExpiry(ctx.Done(), expiry)
		if r == waitSignalled && w.handed {
			putWaiter(w) // admitted on our behalf (wakeSendersLocked)
			return fp, nil
		}
		e.lock()
		if r != waitSignalled {
			e.abandonLocked(&e.sendq, w)
			if w.handed { // admitted as our wait ended: the send happened
				e.unlockTaking(&fp)
				putWaiter(w)
				return fp, nil
			}
		}
		if r == waitDone {
			// Our wake-up may have been meant for room another sender can use.
			e.wakeSendersLocked()
			e.st.Rejected++
			e.unlockTaking(&fp)
			putWaiter(w)
			return fp, ctx.Err()
		}
		// Signalled without a hand-off (Close, or a timer to arm), or an
		// expiry: look for room again (admission frees expired messages
		// first).
	}
	if err != nil {
		e.st.Rejected++
	} else if !e.sendq.empty() {
		// Room may remain for the next waiting sender (wakes chain).
		e.wakeSendersLocked()
	}
	e.takeFreePanicLocked(&fp)
	e.unlockAndWake()
	if w != nil {
		putWaiter(w)
	}
	if held {
		err = errFreePanicked
	}
	return fp, err
}

// senderExpiryLocked is when the parked sender w should look for room
// again by itself: when the earliest queued message that can expire does
// (minDeadline), if w is at the head of the senders' queue; otherwise
// never (math.MaxInt64): a sender that becomes the head later is woken to
// park again with a timer (wakeSendersLocked, which reads w.timed, set
// here).
func (e *Edge) senderExpiryLocked(w *waiter) int64 {
	w.timed = e.sendq.head == w && e.minDeadline != math.MaxInt64
	if !w.timed {
		return math.MaxInt64
	}
	return e.minDeadline
}

// check validates t and reads what admission needs from its header,
// outside the edge's lock, into q; it returns q's lane. q is filled field by
// field: returning it as a struct costs a store-forwarding stall per send.
func (e *Edge) check(t token.Token, q *queued) (lane int, err error) {
	if t.IsNil() {
		return 0, errNilToken
	}
	var qos QoS
	if e.meta != nil {
		deadline, info, err := e.meta.admitInfo(t)
		if err != nil {
			return 0, withContext("send "+t.String(), err)
		}
		qos = q.setInfo(deadline, info)
	} else {
		h, err := e.hs.Header(t)
		if err != nil {
			return 0, withContext("send "+t.String(), err)
		}
		q.deadline, q.size, q.flags = h.Deadline, h.Size, h.Flags&DegradeAllowed
		qos = h.QoS
	}
	q.tok = t
	if !qos.Valid() {
		return 0, errBadQoS
	}
	if e.pol.MaxBytes > 0 && int64(q.size) > e.pol.MaxBytes {
		return 0, errOverMaxBytes
	}
	return qos.lane(), nil
}

// setInfo fills q's admission fields from what admitInfo read and returns
// the header's QoS.
func (q *queued) setInfo(deadline int64, info uint64) QoS {
	q.deadline, q.size, q.flags = deadline, uint32(info>>32), 0
	if info&infoDegrade != 0 {
		q.flags = DegradeAllowed
	}
	return QoS(info)
}

// checkBatch is check for each token of ts in order, up to the first bad
// one: it fills qs[i] and lanes[i] for ts[:n] and returns n and, when n <
// len(ts), the error check gives ts[n]. The store reads the headers of the whole run in one gate section and one
// call (admitInfoN); a token it does not pass goes through check alone,
// for check's exact error.
func (e *Edge) checkBatch(ts []token.Token, qs []queued, lanes []uint8) (int, error) {
	n := 0
	if e.meta != nil {
		m := 0
		for m < len(ts) && !ts[m].IsNil() {
			m++
		}
		// lanes[i] holds ts[i]'s raw QoS until it is checked.
		for k := e.meta.admitInfoN(ts[:m], qs, lanes); n < k; n++ {
			qos := QoS(lanes[n])
			if !qos.Valid() || (e.pol.MaxBytes > 0 && int64(qs[n].size) > e.pol.MaxBytes) {
				break // check gives its error
			}
			lanes[n] = uint8(qos.lane())
		}
	}
	for ; n < len(ts); n++ {
		lane, err := e.check(ts[n], &qs[n])
		if err != nil {
			return n, err
		}
		lanes[n] = uint8(lane)
	}
	return n, nil
}

// abandonLocked takes w out of l after its context ended. If a waker had
// already unlinked and signalled w, the signal is consumed so that w can be
// recycled.
func (e *Edge) abandonLocked(l *waitList, w *waiter) {
	if w.linked {
		l.remove(w)
		return
	}
	<-w.ch
}

// enqueueLocked appends q to its lane and wakes one receiver, or hands q
// straight to a parked receiver (handOffLocked).
func (e *Edge) enqueueLocked(q *queued, lane int) {
	if e.handOffLocked(q) {
		return
	}
	e.pushLocked(q, lane)
	e.wakeReceiverLocked()
}

// handOffLocked gives q's token to the first parked receiver when the edge
// is empty (so q is the next token any receive would return) and q has no
// deadline (so it cannot expire between now and the receiver's return):
// the receiver wakes up with the token, without taking the lock again. It
// counts as a send and a receive at this instant: Admitted, Delivered, and
// a queue of one for HighWater.
func (e *Edge) handOffLocked(q *queued) bool {
	w := e.recvq.head
	if w == nil || e.n != 0 || e.wakeRecv != nil || q.deadline != 0 {
		return false
	}
	e.recvq.remove(w)
	w.tok, w.handed = q.tok, true
	e.wakeRecv = w
	e.st.Admitted++
	e.st.Delivered++
	e.st.HighWater = max(e.st.HighWater, 1)
	return true
}

// unlockAndWake releases the edge's lock, then signals the receiver that
// wakeReceiverLocked picked (if any): waking it after the unlock keeps it
// from running straight into the held lock.
func (e *Edge) unlockAndWake() {
	wr := e.wakeRecv
	e.wakeRecv = nil
	e.unlock()
	if wr != nil {
		wr.ch <- struct{}{}
	}
}

// wakeReceiverLocked unlinks the first parked receiver, if any, for the
// sender to signal once it has released the lock (unlockAndWake).
func (e *Edge) wakeReceiverLocked() {
	if w := e.recvq.head; w != nil && e.wakeRecv == nil {
		// Unlink now, signal after unlocking: the receiver does not wake
		// up only to block on the lock the sender still holds.
		e.recvq.remove(w)
		e.wakeRecv = w
	}
}

// pushLocked appends q to its lane and does the accounting; it wakes no
// one.
func (e *Edge) pushLocked(q *queued, lane int) {
	e.seq++
	d := e.lanes[lane].push()
	d.tok, d.seq, d.deadline, d.size, d.flags = q.tok, e.seq, q.deadline, q.size, q.flags
	e.n++
	e.bytes += int64(q.size)
	e.laneBytes[lane] += int64(q.size)
	if q.deadline != 0 && !q.flags.Has(DegradeAllowed) && q.deadline < e.minDeadline {
		e.minDeadline = q.deadline
	}
	e.st.Admitted++
	if e.n > e.st.HighWater {
		e.st.HighWater = e.n
	}
}

// removeLocked pops the oldest entry of lane and updates the accounting. It
// does not wake senders; callers do that once per operation.
func (e *Edge) removeLocked(lane int) *queued {
	q := e.lanes[lane].pop()
	e.n--
	e.bytes -= int64(q.size)
	e.laneBytes[lane] -= int64(q.size)
	return q
}

// freeLocked hands a reference the edge owns back to the store. A store
// whose Free panics must not leave the edge locked or half-changed: the
// panic is caught here, counted as a failed Free, and re-raised by the
// operation once it is done and has released the lock (takeFreePanicLocked,
// raise).
func (e *Edge) freeLocked(t token.Token) {
	if e.freeCaught(t) != nil {
		e.st.FreeErrors++
	}
}

func (e *Edge) freeCaught(t token.Token) (err error) {
	returned := false
	defer func() {
		if returned {
			return
		}
		if r := recover(); r != nil {
			if e.freePanic == nil {
				e.freePanic = r
			}
			err = errFreePanicked
			return
		}
		e.exitLocked() // runtime.Goexit
	}()
	err = e.hs.Free(t)
	returned = true
	return err
}

// exitLocked is freeCaught's answer to a store whose Free called
// runtime.Goexit: the goroutine ends here, holding the lock, in the middle
// of an operation. Every caller of freeLocked has left the edge whole
// before it frees (the message removed and counted; an expiry's other
// victims, not freed yet, in reapLeft), so exitLocked counts the failed
// Free, puts reapLeft back in its lane in admission order (expired: a
// receive or expiry scan that reaches them frees them), wakes the parked
// senders and receivers that can go on, and releases the lock. What the
// operation would have done next is lost with its goroutine; a receive
// frees the tokens it had taken (recv).
func (e *Edge) exitLocked() {
	e.st.FreeErrors++
	if left := e.reapLeft; len(left) > 0 {
		e.reapLeft = nil
		lane := &e.lanes[e.reapLane]
		for i := range left {
			lane.insertBySeq(&left[i])
			e.n++
			e.bytes += int64(left[i].size)
			e.laneBytes[e.reapLane] += int64(left[i].size)
			e.minDeadline = min(e.minDeadline, left[i].deadline)
		}
		e.st.Expired -= uint64(len(left))
	}
	if e.n > 0 {
		e.wakeReceiverLocked()
	}
	if e.sendq.head != nil {
		e.wakeSendersLocked()
	}
	e.unlockAndWake()
}

// takeFreePanicLocked moves a caught panic of the store's Free into *fp
// (keeping the first), for the operation to re-raise once it has released
// the lock. Operations that free call it before each release.
func (e *Edge) takeFreePanicLocked(fp *any) {
	if e.freePanic != nil {
		if *fp == nil {
			*fp = e.freePanic
		}
		e.freePanic = nil
	}
}

// unlockTaking is unlock for an operation that may free: see
// takeFreePanicLocked.
func (e *Edge) unlockTaking(fp *any) {
	e.takeFreePanicLocked(fp)
	e.unlock()
}

// holdFreePanic puts back a panic an operation took but cannot raise (a
// receive that took tokens: the panic would lose them), for the next send,
// receive or Drain to raise before it does anything. The edge stays in
// slow mode meanwhile (reopenLocked), so that every one of them takes the
// lock and sees it.
func (e *Edge) holdFreePanic(fp any) {
	e.lock()
	if e.freePanic == nil {
		e.freePanic = fp
	}
	e.unlock()
}

// raise re-raises a panic an operation took, once it is done.
func raise(fp any) {
	if fp != nil {
		panic(fp)
	}
}

// wakeSendersLocked admits the messages of waiting senders, in FIFO order,
// for as long as they fit in the room that is free now, and wakes those
// senders (their messages are in: a hand-off, so no sender that arrives in
// the meantime can take the room, and the head of the queue is never
// starved by smaller messages behind it). It stops at the first that does
// not fit. Block is the only admission mode whose senders wait.
func (e *Edge) wakeSendersLocked() {
	woke := false
	for w := e.sendq.head; w != nil && !e.closed; w = e.sendq.head {
		if !e.pol.fits(e.n, e.bytes, w.need) {
			if !w.timed && e.minDeadline != math.MaxInt64 {
				// The new head of the queue parked behind another, without
				// a timer for the expiry of a queued message: it looks
				// again and parks with one (senderExpiryLocked).
				e.sendq.wake(w)
			}
			break
		}
		// A hand-off: the message goes in now, in queue order, so a sender
		// that arrives before this one runs cannot take its room.
		e.sendq.remove(w)
		e.pushLocked(&w.sq, int(w.slane))
		w.handed = true
		w.ch <- struct{}{}
		woke = true
	}
	if woke && !e.recvq.empty() {
		e.recvq.wake(e.recvq.head) // it passes the wake-up on while more are queued
	}
}

// Close stops the edge accepting sends and wakes every waiting sender and
// receiver. Receivers drain what is queued, then get ErrEdgeClosed. Queued
// tokens that nobody receives stay owned by the edge: call Drain to free
// them. A second Close returns an error matching ErrEdgeClosed.
func (e *Edge) Close() error {
	e.lock()
	defer e.unlock()
	if e.closed {
		return errCloseTwice
	}
	e.closed = true
	e.sendq.wakeAll()
	e.recvq.wakeAll()
	return nil
}

// Closed reports whether Close has been called.
func (e *Edge) Closed() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.closed
}

// Drain frees every queued token through the HeaderStore and returns how
// many it freed. It works on open and closed edges; Close followed by Drain
// releases everything an abandoned edge still holds.
func (e *Edge) Drain() int {
	var fp any
	defer func() { raise(fp) }()
	e.lock() // released explicitly, not deferred: see exitLocked
	if e.freePanic != nil {
		e.unlockTaking(&fp)
		return 0 // one held back: raised before anything is drained
	}
	freed := 0
	for lane := range e.lanes {
		for e.lanes[lane].len() > 0 {
			q := e.removeLocked(lane)
			e.st.Drained++ // counted before the Free (exitLocked)
			freed++
			e.freeLocked(q.tok)
		}
	}
	e.minDeadline = math.MaxInt64
	e.wakeSendersLocked()
	e.unlockTaking(&fp)
	return freed
}

// Len returns the number of queued tokens.
func (e *Edge) Len() int {
	e.lock()
	defer e.unlock()
	return e.n
}

// Bytes returns the sum of the Size fields of the queued tokens' headers.
func (e *Edge) Bytes() int64 {
	e.lock()
	defer e.unlock()
	return e.bytes
}

// Watermark returns the edge's current fill level against its caps.
func (e *Edge) Watermark() Watermark {
	e.lock()
	defer e.unlock()
	return e.pol.level(e.n, e.bytes)
}
