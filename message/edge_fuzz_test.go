package message

// Model-based fuzzing of Edge.
//
// A fuzz input decodes into a Store shape (Slots, Shards), the policies of
// two edges over that store (small item and byte caps, soft caps, any
// Admission mode) and a sequence of 3-byte operations: Put, TrySend, Send
// with a done context, TryRecv, Recv with a done context, fan-out (Retain,
// then TrySend on both edges), Free, Store.Update of a header, stale / Nil /
// forged tokens through TrySend, Free and Retain, Drain, Close, and a clock
// warp. Everything runs on one goroutine, so every answer is determined.
//
// After every operation the real edges and store are compared with a plain
// Go model of the documented semantics (doc.go, Edge, Policy, Admission):
// the same errors (errors.Is), the same received token, the same Len, Bytes,
// Watermark and EdgeStats counters, the same reference count for every live
// message, and Store.Available. At the end both edges are closed and
// drained, every reference the test holds is freed, and the store must be
// whole: Available() == Capacity().
//
// Deadlines: the test warps the clock of Now and DeadlineAt forward
// (efWarp, clock.Warp): a "soon" deadline lies efSoonIn ahead of Now when
// it is set and has passed after the next warp (efWarpBy later), so expiry
// is exact, never a race with the wall clock. Other deadlines are none,
// already past (1) or never (MaxInt64). The warp writes a package
// variable, so efWarp must only run while no other goroutine uses the
// clock: FuzzEdgeModel and TestEdgeModelSeeds are single-goroutine and do
// not call t.Parallel.
//
// Run it with
//
//	go test -run '^$' -fuzz '^FuzzEdgeModel$' -fuzztime 30s ./message

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/internal/clock"
	"github.com/cella-go/cella/token"
)

// efPayload is the fuzzed message payload: the message id and a pattern
// derived from it, so a payload delivered for the wrong token shows up.
type efPayload struct {
	ID  uint64
	Pat [3]uint64
}

func efPattern(id uint64) efPayload {
	p := efPayload{ID: id}
	x := id*0x9e3779b97f4a7c15 + 0x243f6a8885a308d3
	for i := range p.Pat {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		p.Pat[i] = x
	}
	return p
}

// efDeadline is the kind of a message's deadline.
type efDeadline uint8

const (
	efNone efDeadline = iota // Deadline 0
	efPast                   // Deadline 1: passed before the test started
	efSoon                   // Now()+efSoonIn: passes at the next warp
	efFar                    // MaxInt64: never passes
)

var efDeadlineNames = [...]string{"none", "past", "soon", "far"}

const (
	efSoonIn = int64(10 * time.Second)
	efWarpBy = 20 * time.Second
	efMaxOps = 300
)

// efWarp moves Now forward by d. See the file comment for why this is safe.
func efWarp(d time.Duration) { clock.Warp(d) }

var (
	efSlots    = [...]int{1, 2, 3, 4, 5, 6, 8, 12}
	efByteCaps = [...]int64{0, 4, 8, 12, 16, 24, 32, 64}
)

// efPolicy decodes a valid Policy from two bytes.
func efPolicy(b0, b1 byte) Policy {
	p := Policy{
		MaxItems:  int(b0 & 7),
		SoftItems: int(b0 >> 3 & 7),
		MaxBytes:  efByteCaps[b1&7],
		SoftBytes: efByteCaps[b1>>3&7],
		Admission: Admission(b0 >> 6),
	}
	if p.MaxItems > 0 && p.SoftItems > p.MaxItems {
		p.SoftItems %= p.MaxItems + 1
	}
	if p.MaxBytes > 0 && p.SoftBytes > p.MaxBytes {
		p.SoftBytes %= p.MaxBytes + 1
	}
	if b1&0x40 != 0 {
		// No byte caps: such an edge (unless DeadlineQoS) has the lock-free
		// fast path of fast.go, which random bytes would rarely reach.
		p.MaxBytes, p.SoftBytes = 0, 0
	}
	return p
}

// efHdr is the part of a header the model needs.
type efHdr struct {
	qos     QoS
	size    uint32
	dl      efDeadline
	warpAt  int // efModel.warps when the deadline was set
	degrade bool
}

func (h efHdr) String() string {
	s := fmt.Sprintf("%v/%d/%s", h.qos, h.size, efDeadlineNames[h.dl])
	if h.degrade {
		s += "/degrade"
	}
	return s
}

// efMsg is one message in the model store.
type efMsg struct {
	id   uint64
	tok  token.Token
	refs int
	h    efHdr // the header now (Update may change it)
}

// efEntry is one queued reference, with the header the edge read on send.
type efEntry struct {
	msg *efMsg
	h   efHdr
	seq uint64
}

// efEdge is the model of one Edge.
type efEdge struct {
	e      *Edge
	pol    Policy
	q      []efEntry // admission order, every lane
	seq    uint64
	closed bool
	st     EdgeStats // counters and HighWater; Len, Bytes, Watermark are derived
}

func (me *efEdge) bytes() int64 {
	var b int64
	for _, q := range me.q {
		b += int64(q.h.size)
	}
	return b
}

func (me *efEdge) fits(size int64) bool {
	return (me.pol.MaxItems == 0 || len(me.q) < me.pol.MaxItems) &&
		(me.pol.MaxBytes == 0 || me.bytes()+size <= me.pol.MaxBytes)
}

// efLevel is the watermark as documented on Watermark.
func efLevel(p Policy, n int, b int64) Watermark {
	switch {
	case (p.MaxItems > 0 && n >= p.MaxItems) || (p.MaxBytes > 0 && b >= p.MaxBytes):
		return HardReached
	case (p.SoftItems > 0 && n >= p.SoftItems) || (p.SoftBytes > 0 && b >= p.SoftBytes):
		return SoftReached
	}
	return BelowSoft
}

// efShedBackground says whether a DeadlineQoS edge refuses a Background
// message outright: only at or above a soft cap that is set. At a hard cap
// alone, Background competes like any other QoS (expired first, then the
// lowest QoS, oldest first).
func efShedBackground(p Policy, n int, b int64) bool {
	return (p.SoftItems > 0 && n >= p.SoftItems) || (p.SoftBytes > 0 && b >= p.SoftBytes)
}

// efLane is the lane of a valid QoS: 0 Background, 1 BestEffort (and 0),
// 2 LatencyCritical.
func efLane(q QoS) int {
	switch q {
	case Background:
		return 0
	case LatencyCritical:
		return 2
	}
	return 1
}

// efModel holds the real store and edges and their model.
type efModel struct {
	t      *testing.T
	s      *Store[efPayload]
	edges  [2]*efEdge
	cap    int
	live   []*efMsg      // messages holding references
	held   []*efMsg      // one entry per reference the test owns
	stale  []token.Token // tokens whose every reference is gone
	warps  int
	nextID uint64
	where  string
	log    []string
	n      int
}

var efDone = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

func (m *efModel) fail(format string, args ...any) {
	m.t.Helper()
	start := max(0, len(m.log)-25)
	m.t.Fatalf("%s: op %d: %s\nlast ops:\n  %s", m.where, m.n, fmt.Sprintf(format, args...), strings.Join(m.log[start:], "\n  "))
}

func (m *efModel) logf(format string, args ...any) {
	m.log = append(m.log, fmt.Sprintf("%d: ", m.n)+fmt.Sprintf(format, args...))
}

func (m *efModel) expired(h efHdr) bool {
	return h.dl == efPast || (h.dl == efSoon && m.warps > h.warpAt)
}

func (m *efModel) header(h efHdr, id uint64) Header {
	hd := Header{Seq: id, QoS: h.qos, Size: h.size}
	switch h.dl {
	case efPast:
		hd.Deadline = 1
	case efSoon:
		hd.Deadline = Now() + efSoonIn
	case efFar:
		hd.Deadline = math.MaxInt64
	}
	if h.degrade {
		hd.Flags |= DegradeAllowed
	}
	if id%3 == 0 {
		hd.Flags |= FirstInBatch
	}
	return hd
}

// decodeHdr reads a header from two op bytes.
func (m *efModel) decodeHdr(b1, b2 byte) efHdr {
	h := efHdr{
		qos:     QoS(b1 & 3),
		dl:      efDeadline(b1 >> 6),
		degrade: b2&0x80 != 0,
		size:    uint32(b2 & 0x1f),
		warpAt:  m.warps,
	}
	if b2&0x40 == 0 {
		h.size &= 7 // mostly small, so that several fit under a byte cap
	}
	if b1>>2&15 == 15 {
		h.qos = QoS(4 + b1&3) // not a known class
	}
	return h
}

// unref drops one reference of msg in the model.
func (m *efModel) unref(msg *efMsg) {
	msg.refs--
	if msg.refs > 0 {
		return
	}
	if msg.refs < 0 {
		m.fail("model: message %d freed too often", msg.id)
	}
	for i, x := range m.live {
		if x == msg {
			m.live = append(m.live[:i], m.live[i+1:]...)
			break
		}
	}
	if len(m.stale) < 32 {
		m.stale = append(m.stale, msg.tok)
	} else {
		m.stale[int(msg.id)%len(m.stale)] = msg.tok
	}
}

func (m *efModel) takeHeld(k int) *efMsg {
	msg := m.held[k]
	m.held = append(m.held[:k], m.held[k+1:]...)
	return msg
}

func (m *efModel) put(h efHdr) {
	m.nextID++
	id := m.nextID
	tok, err := m.s.Put(m.header(h, id), efPattern(id))
	m.logf("Put(%v) = %v, %v", h, tok, err)
	if len(m.live) == m.cap {
		if !errors.Is(err, arena.ErrFull) {
			m.fail("Put on a full store = %v, %v; want arena.ErrFull", tok, err)
		}
		return
	}
	if err != nil {
		m.fail("Put with %d of %d slots live: %v", len(m.live), m.cap, err)
	}
	if h.size == 0 { // Put stores Size 0 as the payload's size
		h.size = uint32(unsafe.Sizeof(efPayload{}))
	}
	msg := &efMsg{id: id, tok: tok, refs: 1, h: h}
	for _, x := range m.live {
		if x.tok.Index() == tok.Index() {
			m.fail("Put = %v: slot of live message %d (%v) handed out twice", tok, x.id, x.tok)
		}
	}
	m.live = append(m.live, msg)
	m.held = append(m.held, msg)
}

// sendReason is one reason the docs give for refusing a send before
// admission looks at the room: the error must match it, and it is counted
// in Invalid or Rejected (the docs leave a bad header or a message larger
// than MaxBytes in either).
type sendReason struct {
	name              string
	match             func(error) bool
	invalid, rejected bool
}

func rejectedNotFull(err error) bool {
	return errors.Is(err, ErrRejected) && !errors.Is(err, ErrEdgeFull)
}

// send sends one reference of msg (or, with msg nil, a token the caller
// cannot own) on edge ei and checks the outcome. It reports whether the
// reference moved into the edge.
func (m *efModel) send(ei int, msg *efMsg, tok token.Token, withCtx bool) bool {
	me := m.edges[ei]
	var err error
	if withCtx {
		err = me.e.Send(efDone, tok)
	} else {
		err = me.e.TrySend(tok)
	}
	op := "TrySend"
	if withCtx {
		op = "Send(done ctx)"
	}
	return m.sendOutcome(ei, msg, tok, op, withCtx, err)
}

// sendOutcome checks err, the outcome of one send of tok (one reference of
// msg, or with msg nil a token the caller cannot own) on edge ei, against
// the model, and updates the model. It reports whether the reference moved
// into the edge. withCtx says that the send could wait (with a done
// context).
func (m *efModel) sendOutcome(ei int, msg *efMsg, tok token.Token, op string, withCtx bool, err error) bool {
	me := m.edges[ei]
	if msg == nil {
		m.logf("e%d.%s(%v, not owned) = %v", ei, op, tok, err)
		want := arena.ErrStale
		if tok.IsNil() || tok.Generation() == 0 || int(tok.Index()) >= m.cap {
			want = arena.ErrBadToken
		}
		if !errors.Is(err, want) {
			m.fail("e%d.%s(%v) = %v, want %v", ei, op, tok, err, want)
		}
		me.st.Invalid++
		return false
	}
	h := msg.h
	m.logf("e%d.%s(%v id %d %v) = %v", ei, op, tok, msg.id, h, err)

	// Refusals that look at the message and the edge's state only.
	var rs []sendReason
	if !h.qos.Valid() {
		rs = append(rs, sendReason{"unknown QoS", rejectedNotFull, true, true})
	}
	if me.pol.MaxBytes > 0 && int64(h.size) > me.pol.MaxBytes {
		rs = append(rs, sendReason{"Size above MaxBytes", rejectedNotFull, true, true})
	}
	if m.expired(h) && !h.degrade {
		rs = append(rs, sendReason{"expired", func(err error) bool {
			return errors.Is(err, ErrExpired) && errors.Is(err, ErrRejected)
		}, false, true})
	}
	if me.closed {
		rs = append(rs, sendReason{"closed", func(err error) bool { return errors.Is(err, ErrEdgeClosed) }, false, true})
	}
	if h.qos.Valid() && me.pol.Admission == DeadlineQoS && efLane(h.qos) == 0 && efShedBackground(me.pol, len(me.q), me.bytes()) {
		if len(rs) == 0 {
			// Admission's first step: expired messages do not count towards
			// the soft cap.
			m.reap(me)
		}
		if efShedBackground(me.pol, len(me.q), me.bytes()) {
			rs = append(rs, sendReason{"Background shed", rejectedNotFull, false, true})
		}
	}
	if len(rs) > 0 {
		var names []string
		okInv, okRej, matched := false, false, false
		for _, r := range rs {
			names = append(names, r.name)
			if r.match(err) {
				matched = true
				okInv = okInv || r.invalid
				okRej = okRej || r.rejected
			}
		}
		if !matched {
			m.fail("e%d.%s(%v %v) = %v, want a refusal for: %s", ei, op, tok, h, err, strings.Join(names, ", "))
		}
		st := me.e.Stats()
		dInv, dRej := st.Invalid-me.st.Invalid, st.Rejected-me.st.Rejected
		switch {
		case dInv == 1 && dRej == 0 && okInv:
			me.st.Invalid++
		case dInv == 0 && dRej == 1 && okRej:
			me.st.Rejected++
		default:
			m.fail("e%d.%s refused (%v) with Invalid +%d, Rejected +%d; want one of them +1 (%s)", ei, op, err, dInv, dRej, strings.Join(names, ", "))
		}
		return false
	}

	// Admission against the hard caps.
	size := int64(h.size)
	lane := efLane(h.qos)
	var want error
	if !me.fits(size) {
		// Expired messages are dead weight: freed when a sender needs room.
		m.reap(me)
	}
	if !me.fits(size) {
		switch me.pol.Admission {
		case Block:
			if withCtx {
				want = context.Canceled
				me.st.Waited++
			} else {
				want = ErrEdgeFull
			}
		case DropNewest:
			want = ErrEdgeFull
		case DropOldest:
			for !me.fits(size) && len(me.q) > 0 {
				m.evict(me, 0)
			}
		case DeadlineQoS:
			// Victims: lowest QoS first, oldest first, never a higher QoS
			// than the new message; refuse if evicting all of them is not
			// enough.
			items, bytes := 0, int64(0)
			for _, q := range me.q {
				if efLane(q.h.qos) <= lane {
					items++
					bytes += int64(q.h.size)
				}
			}
			p := me.pol
			if !((p.MaxItems == 0 || len(me.q)-items < p.MaxItems) && (p.MaxBytes == 0 || me.bytes()-bytes+size <= p.MaxBytes)) {
				want = ErrEdgeFull
				break
			}
			for l := 0; l <= lane && !me.fits(size); l++ {
				for i := 0; i < len(me.q) && !me.fits(size); {
					if efLane(me.q[i].h.qos) == l {
						m.evict(me, i)
						continue
					}
					i++
				}
			}
		}
	}
	if want != nil {
		me.st.Rejected++
		if !errors.Is(err, want) || (want == ErrEdgeFull && !errors.Is(err, ErrRejected)) {
			m.fail("e%d.%s(%v %v) on a full %v edge = %v, want %v", ei, op, tok, h, me.pol.Admission, err, want)
		}
		return false
	}
	if err != nil {
		m.fail("e%d.%s(%v %v) = %v, want it admitted (len %d, bytes %d, policy %+v)", ei, op, tok, h, err, len(me.q), me.bytes(), me.pol)
	}
	me.seq++
	me.q = append(me.q, efEntry{msg: msg, h: h, seq: me.seq})
	me.st.Admitted++
	me.st.HighWater = max(me.st.HighWater, len(me.q))
	return true
}

// reap frees every queued message that has expired and may expire.
func (m *efModel) reap(me *efEdge) {
	kept := me.q[:0]
	for _, q := range me.q {
		if m.expired(q.h) && !q.h.degrade {
			me.st.Expired++
			m.unref(q.msg)
			continue
		}
		kept = append(kept, q)
	}
	me.q = kept
}

func (m *efModel) evict(me *efEdge, i int) {
	q := me.q[i]
	me.q = append(me.q[:i], me.q[i+1:]...)
	me.st.Evicted++
	m.unref(q.msg)
}

// recv receives from edge ei and checks what arrives.
func (m *efModel) recv(ei int, withCtx bool) {
	me := m.edges[ei]
	var (
		got token.Token
		ok  bool
		err error
	)
	if withCtx {
		got, err = me.e.Recv(efDone)
		ok = err == nil
		m.logf("e%d.Recv(done ctx) = %v, %v", ei, got, err)
	} else {
		got, ok = me.e.TryRecv()
		m.logf("e%d.TryRecv() = %v, %v", ei, got, ok)
	}
	want := m.next(ei)
	if want == nil {
		if ok {
			m.fail("e%d: received %v, want nothing", ei, got)
		}
		if withCtx {
			m.wantRecvErr(ei, "Recv(done ctx)", err)
		}
		return
	}
	if !ok || got != want.tok {
		m.fail("e%d: received %v (ok %v, err %v), want %v (message %d)", ei, got, ok, err, want.tok, want.id)
	}
	m.received(got, want)
}

// recvBatch receives up to size tokens from edge ei with RecvBatch and a
// done context, and checks what arrives.
func (m *efModel) recvBatch(ei int, size int) {
	me := m.edges[ei]
	var dst [8]token.Token
	n, err := me.e.RecvBatch(efDone, dst[:size])
	m.logf("e%d.RecvBatch(done ctx, %d) = %d %v, %v", ei, size, n, dst[:n], err)
	var wants []*efMsg
	for len(wants) < size {
		w := m.next(ei)
		if w == nil {
			break
		}
		wants = append(wants, w)
	}
	if size == 0 {
		if n != 0 || err != nil {
			m.fail("e%d.RecvBatch of an empty slice = %d, %v; want 0, nil", ei, n, err)
		}
		return
	}
	if len(wants) == 0 {
		if n != 0 {
			m.fail("e%d.RecvBatch = %d %v, want nothing", ei, n, dst[:n])
		}
		m.wantRecvErr(ei, "RecvBatch(done ctx)", err)
		return
	}
	if err != nil || n != len(wants) {
		m.fail("e%d.RecvBatch(%d) = %d %v, %v; want %d tokens", ei, size, n, dst[:n], err, len(wants))
	}
	if n > 1 {
		efBatches.multiRecv++
	}
	for i, w := range wants {
		if dst[i] != w.tok {
			m.fail("e%d.RecvBatch: token %d is %v, want %v (message %d)", ei, i, dst[i], w.tok, w.id)
		}
		m.received(dst[i], w)
	}
}

// wantRecvErr checks the error of a waiting receive that found nothing.
func (m *efModel) wantRecvErr(ei int, op string, err error) {
	wantErr := context.Canceled
	if m.edges[ei].closed {
		wantErr = ErrEdgeClosed
	}
	if !errors.Is(err, wantErr) {
		m.fail("e%d.%s on an empty edge = %v, want %v", ei, op, err, wantErr)
	}
}

// next takes the model's next delivery from edge ei: the oldest
// LatencyCritical message, else the oldest other one; expired ones met on
// the way are freed, late DegradeAllowed ones delivered. It returns nil when
// nothing is deliverable.
func (m *efModel) next(ei int) *efMsg {
	me := m.edges[ei]
	for len(me.q) > 0 {
		i := 0
		for j, q := range me.q {
			if q.h.qos == LatencyCritical {
				i = j
				break
			}
		}
		q := me.q[i]
		me.q = append(me.q[:i], me.q[i+1:]...)
		if m.expired(q.h) {
			if !q.h.degrade {
				me.st.Expired++
				m.unref(q.msg)
				continue
			}
			me.st.Late++
		}
		me.st.Delivered++
		return q.msg
	}
	return nil
}

// received records a reference the test now holds and checks its message.
func (m *efModel) received(got token.Token, want *efMsg) {
	m.held = append(m.held, want)
	var p efPayload
	if err := m.s.View(got, func(msg *Message[efPayload]) { p = msg.Payload }); err != nil {
		m.fail("View(%v) of a received token: %v", got, err)
	}
	if p != efPattern(want.id) {
		m.fail("received %v: payload %+v, want message %d", got, p, want.id)
	}
	hd, err := m.s.Header(got)
	if err != nil || hd.Seq != want.id || hd.QoS != want.h.qos || hd.Size != want.h.size {
		m.fail("received %v: Header = %+v, %v; want message %d %v", got, hd, err, want.id, want.h)
	}
}

// sendBatch sends up to count held references, starting at held index
// start, plus with extra a token the test cannot own at position at, with
// SendBatch and a done context, and checks the outcome token by token: the
// edge must take the longest prefix the model admits and refuse the next
// token for a reason the model gives.
func (m *efModel) sendBatch(ei int, start, count int, extra bool, bad token.Token, at int) {
	me := m.edges[ei]
	type item struct {
		msg *efMsg
		tok token.Token
	}
	var items []item
	for i := 0; i < count && i < len(m.held); i++ {
		msg := m.held[(start+i)%len(m.held)]
		items = append(items, item{msg, msg.tok})
	}
	if extra {
		at %= len(items) + 1
		items = append(items[:at], append([]item{{nil, bad}}, items[at:]...)...)
	}
	ts := make([]token.Token, len(items))
	for i, it := range items {
		ts[i] = it.tok
	}
	n, err := me.e.SendBatch(efDone, ts)
	m.logf("e%d.SendBatch(done ctx, %v) = %d, %v", ei, ts, n, err)
	if len(ts) == 0 {
		if n != 0 || err != nil {
			m.fail("e%d.SendBatch of an empty slice = %d, %v; want 0, nil", ei, n, err)
		}
		return
	}
	if n < 0 || n > len(ts) || (err == nil) != (n == len(ts)) {
		m.fail("e%d.SendBatch(%d tokens) = %d, %v: n and err disagree", ei, len(ts), n, err)
	}
	for i, it := range items[:n] {
		if !m.sendOutcome(ei, it.msg, it.tok, fmt.Sprintf("SendBatch[%d]", i), true, nil) {
			m.fail("e%d.SendBatch admitted token %d (%v), the model refuses it", ei, i, it.tok)
		}
		m.dropHeld(it.msg)
	}
	if n == len(items) {
		efBatches.whole++
	} else {
		efBatches.partial++
		it := items[n]
		if m.sendOutcome(ei, it.msg, it.tok, fmt.Sprintf("SendBatch[%d]", n), true, err) {
			m.fail("e%d.SendBatch refused token %d (%v): %v; the model admits it", ei, n, it.tok, err)
		}
	}
}

// efBatches counts batch outcomes, so that TestEdgeModelSeeds can check
// that its inputs reach them. Only single-goroutine tests touch it.
var efBatches struct{ whole, partial, multiRecv int }

// dropHeld removes one held reference of msg.
func (m *efModel) dropHeld(msg *efMsg) {
	for i := len(m.held) - 1; i >= 0; i-- {
		if m.held[i] == msg {
			m.takeHeld(i)
			return
		}
	}
	m.fail("model: no held reference of message %d", msg.id)
}

func (m *efModel) free(k int) {
	msg := m.takeHeld(k)
	err := m.s.Free(msg.tok)
	m.logf("Free(%v id %d, refs %d) = %v", msg.tok, msg.id, msg.refs, err)
	if err != nil {
		m.fail("Free(%v) of a held reference: %v", msg.tok, err)
	}
	m.unref(msg)
}

func (m *efModel) drain(ei int) {
	me := m.edges[ei]
	n := me.e.Drain()
	m.logf("e%d.Drain() = %d", ei, n)
	if n != len(me.q) {
		m.fail("e%d.Drain() = %d, model queue %d", ei, n, len(me.q))
	}
	for _, q := range me.q {
		m.unref(q.msg)
	}
	me.st.Drained += uint64(n)
	me.q = me.q[:0]
}

func (m *efModel) close(ei int) {
	me := m.edges[ei]
	err := me.e.Close()
	m.logf("e%d.Close() = %v", ei, err)
	if me.closed {
		if !errors.Is(err, ErrEdgeClosed) {
			m.fail("e%d: second Close = %v, want ErrEdgeClosed", ei, err)
		}
		return
	}
	if err != nil {
		m.fail("e%d.Close() = %v", ei, err)
	}
	me.closed = true
}

// notOwned returns a token the test cannot own: Nil, stale, or forged.
func (m *efModel) notOwned(b1 byte) token.Token {
	switch b1 % 4 {
	case 0:
		return token.Nil
	case 1:
		return token.New(uint32(m.cap)+uint32(b1>>2), 1) // index out of range
	case 2:
		return token.New(uint32(b1>>2)%uint32(m.cap), 0) // generation 0
	}
	if len(m.stale) == 0 {
		return token.Nil
	}
	return m.stale[int(b1>>2)%len(m.stale)]
}

func (m *efModel) wantNotOwned(op string, tok token.Token, err error) {
	want := arena.ErrStale
	if tok.IsNil() || tok.Generation() == 0 || int(tok.Index()) >= m.cap {
		want = arena.ErrBadToken
	}
	if !errors.Is(err, want) {
		m.fail("%s(%v) of a token not owned = %v, want %v", op, tok, err, want)
	}
}

// check compares the edges and the store with the model.
func (m *efModel) check() {
	m.t.Helper()
	for i, me := range m.edges {
		want := me.st
		want.Len, want.Bytes = len(me.q), me.bytes()
		want.Watermark = efLevel(me.pol, want.Len, want.Bytes)
		st := me.e.Stats()
		if st != want {
			m.fail("e%d (%+v): Stats\n  got  %+v\n  want %+v", i, me.pol, st, want)
		}
		if n, b := me.e.Len(), me.e.Bytes(); n != want.Len || b != want.Bytes {
			m.fail("e%d: Len, Bytes = %d, %d; model %d, %d", i, n, b, want.Len, want.Bytes)
		}
		if me.e.Closed() != me.closed {
			m.fail("e%d: Closed() = %v, model %v", i, me.e.Closed(), me.closed)
		}
		if st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained+uint64(st.Len) {
			m.fail("e%d: Admitted != Delivered + Evicted + Expired + Drained + Len: %+v", i, st)
		}
		if (me.pol.MaxItems > 0 && st.Len > me.pol.MaxItems) || (me.pol.MaxBytes > 0 && st.Bytes > me.pol.MaxBytes) {
			m.fail("e%d: over a hard cap: Len %d, Bytes %d, policy %+v", i, st.Len, st.Bytes, me.pol)
		}
	}
	if got, want := m.s.Available(), m.cap-len(m.live); got != want {
		m.fail("Store.Available() = %d, model %d (%d live messages)", got, want, len(m.live))
	}
	for _, msg := range m.live {
		if n, err := m.s.Refs(msg.tok); err != nil || n != msg.refs {
			m.fail("Refs(%v) of message %d = %d, %v; model %d", msg.tok, msg.id, n, err, msg.refs)
		}
	}
}

// step decodes and runs one operation.
func (m *efModel) step(b0, b1, b2 byte) {
	ei := int(b0 >> 4 & 1)
	pickHeld := func() (int, bool) {
		switch {
		case len(m.held) == 0:
			return 0, false
		case b1 == 0xff: // the newest reference, for hand-written seeds
			return len(m.held) - 1, true
		}
		return int(b1) % len(m.held), true
	}
	switch k := b0 & 15; k {
	case 0, 1: // Put
		m.put(m.decodeHdr(b1, b2))
	case 3: // SendBatch of 0-7 held references, maybe with a bad token
		start := 0
		if k, ok := pickHeld(); ok {
			start = k
		}
		m.sendBatch(ei, start, int(b2&7), b2&8 != 0, m.notOwned(b1), int(b2>>4))
	case 2, 8: // TrySend, Send with a done context
		if k, ok := pickHeld(); ok {
			msg := m.held[k]
			if m.send(ei, msg, msg.tok, b0&15 == 8) {
				m.takeHeld(k)
			}
		}
	case 4, 9: // TryRecv, Recv with a done context
		m.recv(ei, b0&15 == 9)
	case 5: // RecvBatch of 0-7 with a done context
		m.recvBatch(ei, int(b1&7))
	case 6: // fan-out: Retain, then a send on each edge
		k, ok := pickHeld()
		if !ok {
			return
		}
		msg := m.held[k]
		err := m.s.Retain(msg.tok)
		m.logf("Retain(%v id %d) = %v", msg.tok, msg.id, err)
		if err != nil {
			m.fail("Retain(%v) of a held reference: %v", msg.tok, err)
		}
		msg.refs++
		m.held = append(m.held, msg)
		withCtx := b2&1 != 0
		for _, e := range [2]int{ei, 1 - ei} {
			if m.send(e, msg, msg.tok, withCtx) {
				for i := len(m.held) - 1; i >= 0; i-- {
					if m.held[i] == msg {
						m.takeHeld(i)
						break
					}
				}
			}
		}
	case 7, 15: // Free
		if k, ok := pickHeld(); ok {
			m.free(k)
		}
	case 10: // a token the caller does not own
		tok := m.notOwned(b1)
		switch b2 % 4 {
		case 0, 1:
			m.send(ei, nil, tok, b2%4 == 1)
		case 2:
			err := m.s.Free(tok)
			m.logf("Free(%v, not owned) = %v", tok, err)
			m.wantNotOwned("Free", tok, err)
		case 3:
			err := m.s.Retain(tok)
			m.logf("Retain(%v, not owned) = %v", tok, err)
			m.wantNotOwned("Retain", tok, err)
		}
	case 11: // Drain
		if b1%2 == 0 {
			m.drain(ei)
		} else {
			m.recv(ei, false)
		}
	case 12: // Close, rarely
		if b1%4 == 0 {
			m.close(ei)
		} else {
			m.recv(ei, false)
		}
	case 13: // the clock moves on: every "soon" deadline passes
		efWarp(efWarpBy)
		m.warps++
		m.logf("warp %d", m.warps)
	case 14: // Update a held message's header; queued copies keep theirs
		k, ok := pickHeld()
		if !ok {
			return
		}
		msg := m.held[k]
		h := m.decodeHdr(b2, b1)
		hd := m.header(h, msg.id)
		err := m.s.Update(msg.tok, func(mm *Message[efPayload]) {
			mm.Header.QoS, mm.Header.Size, mm.Header.Deadline, mm.Header.Flags = hd.QoS, hd.Size, hd.Deadline, hd.Flags
		})
		m.logf("Update(%v id %d) to %v = %v", msg.tok, msg.id, h, err)
		if err != nil {
			m.fail("Update(%v) of a held reference: %v", msg.tok, err)
		}
		msg.h = h
	}
}

// finish closes and drains both edges, frees every held reference and
// checks that the store is whole.
func (m *efModel) finish() {
	m.n = -1
	for ei, me := range m.edges {
		m.close(ei)
		m.close(ei) // second Close
		m.check()
		if len(me.q) > 0 {
			// A closed edge still delivers what it holds.
			m.recv(ei, false)
			m.check()
		}
		m.drain(ei)
		m.recv(ei, true) // closed and empty: ErrEdgeClosed
		if len(m.held) > 0 {
			msg := m.held[0]
			m.send(ei, msg, msg.tok, false) // refused: expired or closed
		}
		m.check()
	}
	for len(m.held) > 0 {
		m.free(len(m.held) - 1)
	}
	m.check()
	if len(m.live) != 0 {
		m.fail("model: %d messages still live after freeing everything", len(m.live))
	}
	if m.s.Available() != m.s.Capacity() {
		m.fail("after draining and freeing everything: Available() = %d, Capacity() = %d", m.s.Available(), m.s.Capacity())
	}
	for _, tok := range m.stale {
		if err := m.s.Free(tok); !errors.Is(err, arena.ErrStale) {
			m.fail("Free(%v) after everything was freed = %v, want arena.ErrStale", tok, err)
		}
	}
}

// fuzzEdgeModel is the body of FuzzEdgeModel, also run on fixed inputs by
// TestEdgeModelSeeds. Input: 1 store byte (slots in bits 0-2; bit 3:
// compare counters every fourth op only), 2 policy bytes per edge
// (efPolicy; bit 6 of the second: no byte caps), then 3-byte ops (b0 =
// edge<<4 | op; see step).
func fuzzEdgeModel(t *testing.T, data []byte) { efRun(t, data) }

// efRun runs one input and returns the edges' final counters (zero for an
// input too short to decode).
func efRun(t *testing.T, data []byte) (sum EdgeStats) {
	if len(data) < 5 {
		return sum
	}
	// One shard: with more, which shard an Alloc uses depends on the P the
	// fuzz worker runs on, which makes coverage noisy. The arena's own
	// fuzzer covers sharding.
	slots, shards := efSlots[data[0]&7], 1
	s, err := NewStore[efPayload](arena.Config{Slots: slots, Shards: shards})
	if err != nil {
		t.Fatalf("NewStore(Slots=%d, Shards=%d): %v", slots, shards, err)
	}
	defer s.Close()
	m := &efModel{t: t, s: s, cap: s.Capacity()}
	if m.cap != slots {
		t.Fatalf("Capacity() = %d, want %d", m.cap, slots)
	}
	var pols [2]Policy
	for i := range m.edges {
		pols[i] = efPolicy(data[1+2*i], data[2+2*i])
		e, err := NewEdge(s, pols[i])
		if err != nil {
			t.Fatalf("NewEdge(%+v): %v", pols[i], err)
		}
		m.edges[i] = &efEdge{e: e, pol: pols[i]}
	}
	m.where = fmt.Sprintf("Slots=%d Shards=%d e0=%+v e1=%+v", slots, shards, pols[0], pols[1])
	ops := data[5:]
	if len(ops) > 3*efMaxOps {
		ops = ops[:3*efMaxOps]
	}
	// With data[0]&8 the counters are compared every fourth op only: Stats,
	// Len and Bytes take an edge out of fast mode (fast.go), so checking
	// after every op would never let fast sends and receives follow each
	// other. Results of each op are still checked as it runs.
	sparse := data[0]&8 != 0
	for i := 0; i+3 <= len(ops); i += 3 {
		m.n = i / 3
		m.step(ops[i], ops[i+1], ops[i+2])
		if !sparse || m.n%4 == 3 {
			m.check()
		}
	}
	m.check()
	m.finish()
	for _, me := range m.edges {
		st := me.st
		sum.Admitted += st.Admitted
		sum.Rejected += st.Rejected
		sum.Invalid += st.Invalid
		sum.Evicted += st.Evicted
		sum.Expired += st.Expired
		sum.Delivered += st.Delivered
		sum.Late += st.Late
		sum.Drained += st.Drained
		sum.Waited += st.Waited
	}
	return sum
}

// efOp encodes one op for the seeds: b0 = edge<<4 | op.
func efOp(edge int, op byte, b1, b2 byte) []byte { return []byte{byte(edge<<4) | op, b1, b2} }

// efPut encodes a Put: qos 0-3, deadline kind, degrade, size 0-31.
func efPut(qos QoS, dl efDeadline, degrade bool, size byte) []byte {
	b2 := size & 0x1f
	if degrade {
		b2 |= 0x80
	}
	return efOp(0, 0, byte(dl)<<6|byte(qos)&3, b2)
}

// efSeeds are hand-written inputs, one or more per admission mode.
func efSeeds() [][]byte {
	cat := func(parts ...[]byte) []byte {
		var out []byte
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	pol := func(maxItems, softItems int, adm Admission, maxBytesIdx, softBytesIdx int) []byte {
		return []byte{byte(adm)<<6 | byte(softItems)<<3 | byte(maxItems), byte(softBytesIdx)<<3 | byte(maxBytesIdx)}
	}
	send := func(edge int, k byte) []byte { return efOp(edge, 2, k, 0) }
	recv := func(edge int) []byte { return efOp(edge, 4, 0, 0) }
	fanout := func(edge int, k byte) []byte { return efOp(edge, 6, k, 0) }
	free := func(k byte) []byte { return efOp(0, 7, k, 0) }
	warp := efOp(0, 13, 0, 0)
	sendBatch := func(edge int, k, count byte, bad bool, at byte) []byte {
		b2 := count & 7
		if bad {
			b2 |= 8 | at<<4
		}
		return efOp(edge, 3, k, b2)
	}
	recvBatch := func(edge int, size byte) []byte { return efOp(edge, 5, size, 0) }
	var seeds [][]byte
	for adm := Block; adm <= DeadlineQoS; adm++ {
		// 8 slots; e0: 3 items (soft 2) in mode adm, e1: 32 bytes. Fill e0
		// with mixed QoS, overflow it, receive all, fan out, expire.
		s := cat([]byte{6}, pol(3, 2, adm, 0, 0), pol(0, 0, adm, 6, 4))
		s = cat(s,
			efPut(Background, efNone, false, 1), send(0, 255),
			efPut(BestEffort, efFar, false, 2), send(0, 255),
			efPut(LatencyCritical, efNone, false, 3), send(0, 255),
			efPut(BestEffort, efNone, false, 4), send(0, 255),
			efPut(LatencyCritical, efNone, false, 5), efOp(0, 8, 255, 0), // Send(done ctx)
			recv(0), recv(0), recv(0), recv(0), efOp(0, 9, 0, 0),
			efPut(BestEffort, efSoon, false, 8), fanout(0, 255),
			efPut(Background, efSoon, true, 8), fanout(1, 255),
			warp, efPut(BestEffort, efNone, false, 9), send(0, 255), send(0, 0), send(0, 1),
			recv(0), recv(0), recv(1), recv(1),
			free(0), free(0), free(0), free(0), free(0), free(0), free(0), free(0),
		)
		seeds = append(seeds, s)
	}
	// Bytes caps and DeadlineQoS victims: lowest QoS, oldest first.
	seeds = append(seeds, cat([]byte{7}, pol(0, 0, DeadlineQoS, 5, 3), pol(2, 1, DropOldest, 3, 0),
		efPut(Background, efNone, false, 10), send(0, 255),
		efPut(BestEffort, efNone, false, 6), send(0, 255),
		efPut(Background, efNone, false, 6), send(0, 255),
		efPut(LatencyCritical, efNone, false, 12), send(0, 255),
		efPut(BestEffort, efNone, false, 20), send(0, 255),
		efPut(Background, efNone, false, 1), send(0, 255),
		efPut(LatencyCritical, efNone, false, 24), send(0, 255),
		efPut(BestEffort, efNone, false, 30), send(0, 255), // larger than MaxBytes
		efOp(0, 14, 255, 3), send(0, 255), // Update to a small Background header
		recv(0), recv(0), recv(0), efOp(0, 11, 0, 0), // Drain
	))
	// Stale, Nil and forged tokens; close mid-use; a one-slot store.
	seeds = append(seeds, cat([]byte{0}, pol(1, 0, Block, 0, 0), pol(0, 0, DropNewest, 0, 0),
		efPut(BestEffort, efNone, false, 1), efPut(BestEffort, efNone, false, 1),
		send(0, 255), free(0), efOp(0, 10, 0, 0), efOp(0, 10, 1, 1), efOp(0, 10, 2, 2), efOp(0, 10, 3, 3),
		efOp(0, 10, 7, 0), efOp(1, 10, 11, 2),
		recv(0), efOp(0, 12, 0, 0), send(0, 255), recv(0), free(0),
		efPut(BestEffort, efPast, false, 0), send(1, 255), efPut(BestEffort, efPast, true, 0), send(1, 255),
		efOp(1, 12, 4, 0), efOp(1, 12, 0, 0), efOp(1, 9, 0, 0), efOp(1, 9, 0, 0),
	))
	// The fast path (fast.go): edges without byte caps, counters compared
	// every fourth op, so fast sends and receives run back to back and the
	// edge switches modes in the middle of a queue (a LatencyCritical or
	// Background message, a deadline, a full edge, a batch, Close).
	for adm := Block; adm <= DropOldest; adm++ {
		s := cat([]byte{8 | 7}, pol(3, 1, adm, 0, 0), pol(0, 0, adm, 0, 0))
		s = cat(s,
			efPut(BestEffort, efNone, false, 1), send(0, 255),
			efPut(0, efNone, false, 2), send(0, 255),
			efPut(LatencyCritical, efNone, false, 3), send(0, 255),
			recv(0), recv(0),
			efPut(BestEffort, efNone, false, 4), send(0, 255),
			efPut(Background, efNone, false, 5), send(0, 255),
			efPut(BestEffort, efNone, false, 6), send(0, 255),
			efPut(BestEffort, efNone, false, 7), send(0, 255), // full
			recv(0), recv(0), recv(0), recv(0),
			efPut(BestEffort, efFar, false, 8), send(0, 255), efPut(BestEffort, efNone, false, 9), send(0, 255),
			recv(0), recv(0), recv(0),
			efPut(BestEffort, efNone, false, 10), fanout(0, 255), recv(1), recv(0),
			efPut(BestEffort, efNone, false, 11), send(1, 255), sendBatch(1, 0, 3, false, 0),
			recvBatch(1, 2), recv(1), efOp(1, 9, 0, 0), recv(1), recv(1),
			free(0), free(0), free(0), free(0), free(0), free(0), free(0), free(0),
		)
		seeds = append(seeds, s)
	}
	// Batches: SendBatch past the cap of each mode (a partial batch), with
	// an expired message and a bad token in the middle; RecvBatch across
	// both lanes, past expired messages, and of an empty slice.
	for adm := Block; adm <= DeadlineQoS; adm++ {
		s := cat([]byte{7}, pol(4, 2, adm, 0, 0), pol(0, 0, adm, 5, 3))
		for i := 0; i < 6; i++ {
			s = cat(s, efPut(QoS(1+i%3), efNone, i == 4, byte(2+i)))
		}
		s = cat(s,
			sendBatch(0, 0, 6, false, 0), // 4 fit, then the mode decides
			recvBatch(0, 3), recvBatch(0, 0), recvBatch(0, 7), recvBatch(0, 1),
			efPut(BestEffort, efPast, false, 1), efPut(LatencyCritical, efSoon, false, 1),
			sendBatch(1, 0, 7, true, 2),
			sendBatch(1, 0, 7, false, 0),
			warp, recvBatch(1, 7), recvBatch(1, 7),
			sendBatch(0, 0, 0, false, 0), // empty
			efOp(0, 12, 0, 0), sendBatch(0, 0, 2, false, 0), recvBatch(0, 2),
		)
		seeds = append(seeds, s)
	}
	return seeds
}

func FuzzEdgeModel(f *testing.F) {
	for _, s := range efSeeds() {
		f.Add(s)
	}
	f.Fuzz(fuzzEdgeModel)
}

// TestEdgeModelSeeds runs the model on the seeds and on pseudo-random
// inputs, so the default test run covers it even without -fuzz.
func TestEdgeModelSeeds(t *testing.T) {
	efBatches.whole, efBatches.partial, efBatches.multiRecv = 0, 0, 0
	for i, s := range efSeeds() {
		t.Run(fmt.Sprint("seed", i), func(t *testing.T) { fuzzEdgeModel(t, s) })
	}
	if efBatches.whole == 0 || efBatches.partial < 4 || efBatches.multiRecv < 4 {
		t.Errorf("the seeds miss a batch outcome: %+v", efBatches)
	}
	n := 400
	if testing.Short() {
		n = 80
	}
	x := uint64(0x13198a2e03707344)
	var sum EdgeStats
	for i := 0; i < n; i++ {
		buf := make([]byte, 5+3*(20+i%200))
		for j := range buf {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			buf[j] = byte(x)
		}
		st := efRun(t, buf)
		sum.Admitted += st.Admitted
		sum.Rejected += st.Rejected
		sum.Invalid += st.Invalid
		sum.Evicted += st.Evicted
		sum.Expired += st.Expired
		sum.Delivered += st.Delivered
		sum.Late += st.Late
		sum.Drained += st.Drained
		sum.Waited += st.Waited
	}
	t.Logf("random inputs, totals: %+v; batches (seeds included): %+v", sum, efBatches)
	// The random inputs must reach every outcome the model knows.
	if sum.Admitted == 0 || sum.Rejected == 0 || sum.Invalid == 0 || sum.Evicted == 0 || sum.Expired == 0 ||
		sum.Delivered == 0 || sum.Late == 0 || sum.Drained == 0 || sum.Waited == 0 {
		t.Errorf("random inputs miss an outcome: %+v", sum)
	}
}
