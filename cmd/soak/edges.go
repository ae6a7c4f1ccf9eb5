package main

// The message half of the soak: a message.Store and three edges with
// different admission modes, worked by the same goroutines as the arena.
//
// Every reference a worker owns is counted in an owner table indexed by the
// message's slot, next to the token that lives there and how often that
// message was sent and received:
//
//   - a Put must get a slot no worker still holds a reference to (else the
//     store handed out a live slot twice);
//   - a received token must be the one that lives in its slot, carry an
//     intact payload that matches its header, and not be received more often
//     than it was sent (else an edge duplicated a reference);
//   - at every quiescent point the coordinator checks each edge's counters
//     (Admitted = Delivered + Evicted + Expired + Drained + Len, caps,
//     FreeErrors = 0), drains every edge, and then the owner table, the
//     workers' lists, Store.Refs and Store.Available must all agree exactly
//     (else a reference was lost or doubled); on the "free everything"
//     points Available() == Capacity().
//
// Now and then the coordinator closes an edge while the workers use it; at
// the next quiescent point that edge is drained and replaced by a new one.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

// msgPayload is what every message carries; Sum covers the rest.
type msgPayload struct {
	ID   uint64
	Fill [5]uint64
	Sum  uint64
}

func msgFill(id uint64) msgPayload {
	p := msgPayload{ID: id}
	xorshiftFill(p.Fill[:], id*0xbf58476d1ce4e5b9^0x94d049bb133111eb)
	p.Sum = p.checksum()
	return p
}

func (p *msgPayload) checksum() uint64 {
	s := p.ID * 1000003
	for _, f := range p.Fill {
		s = s*0x100000001b3 ^ f
	}
	return s
}

func (p *msgPayload) intact() bool { return p.Sum == p.checksum() && *p == msgFill(p.ID) }

// msgSlot is the owner-table entry of one message slot.
type msgSlot struct {
	tok   atomic.Uint64 // the token living in the slot (last Put)
	held  atomic.Int32  // references workers own
	sent  atomic.Int64  // successful sends of that message (raised before the send)
	recvd atomic.Int64  // receives of that message
}

// edgePolicies are the soaked edges: one per admission mode that matters.
var edgePolicies = [...]message.Policy{
	{MaxItems: 8, SoftItems: 4, Admission: message.Block},
	{MaxItems: 6, MaxBytes: 256, Admission: message.DropOldest},
	{MaxItems: 10, SoftItems: 6, MaxBytes: 512, SoftBytes: 256, Admission: message.DeadlineQoS},
}

type msgs struct {
	st    *message.Store[msgPayload]
	edges [len(edgePolicies)]*message.Edge
	slots []msgSlot
	ids   atomic.Uint64
	pct   int // share of steps that work on messages

	// Totals of the edges replaced so far, for the summary.
	retired message.EdgeStats
	closes  uint64
}

type mref struct {
	tok token.Token
	id  uint64
}

// msgWorker is a worker's message state.
type msgWorker struct {
	held                                     []mref
	puts, full, sends, refused, recvs, frees uint64
}

func newMsgs(slots, pct int) (*msgs, error) {
	st, err := message.NewStore[msgPayload](arena.Config{Slots: slots})
	if err != nil {
		return nil, err
	}
	m := &msgs{st: st, slots: make([]msgSlot, st.Capacity()), pct: pct}
	for i := range m.edges {
		if m.edges[i], err = message.NewEdge(st, edgePolicies[i]); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// msgStep does one random message operation.
func (s *soak) msgStep(w *worker, maxHeld int) {
	m, mw := s.m, &w.msg
	e := m.edges[w.rng.IntN(len(m.edges))]
	switch op := w.rng.IntN(100); {
	case op < 25 && len(mw.held) < maxHeld: // Put
		id := m.ids.Add(1)
		h := message.Header{Seq: id, QoS: message.QoS(w.rng.IntN(4)), Size: uint32(w.rng.IntN(65))}
		switch w.rng.IntN(6) {
		case 0:
			h.Deadline = 1 // already past: refused on send unless DegradeAllowed
		case 1:
			h.Deadline = math.MaxInt64
		case 2:
			h.Deadline = message.Now() + int64(w.rng.IntN(2000))*int64(time.Microsecond)
		}
		if w.rng.IntN(3) == 0 {
			h.Flags |= message.DegradeAllowed
		}
		tok, err := m.st.Put(h, msgFill(id))
		switch {
		case errors.Is(err, arena.ErrFull):
			mw.full++
			return
		case err != nil:
			s.violate("message Put by %d: %v", w.id, err)
			return
		}
		sl := &m.slots[tok.Index()]
		if n := sl.held.Load(); n != 0 {
			s.violate("message Put by %d got %v, but workers still hold %d references to %v in that slot", w.id, tok, n, token.Token(sl.tok.Load()))
		}
		sl.sent.Store(0)
		sl.recvd.Store(0)
		sl.tok.Store(uint64(tok))
		sl.held.Store(1)
		mw.puts++
		mw.held = append(mw.held, mref{tok: tok, id: id})
	case op < 45 && len(mw.held) > 0: // send
		k := w.rng.IntN(len(mw.held))
		if s.msgSend(w, e, mw.held[k]) {
			mw.take(k)
		}
	case op < 55 && len(mw.held) > 0: // fan-out: Retain, then send on two edges
		k := w.rng.IntN(len(mw.held))
		r := mw.held[k]
		if err := m.st.Retain(r.tok); err != nil {
			s.violate("Retain(%v) by %d of a held reference: %v", r.tok, w.id, err)
			return
		}
		m.slots[r.tok.Index()].held.Add(1)
		mw.held = append(mw.held, r)
		other := m.edges[w.rng.IntN(len(m.edges))]
		for _, e := range [2]*message.Edge{e, other} {
			if s.msgSend(w, e, r) {
				for j := len(mw.held) - 1; j >= 0; j-- {
					if mw.held[j] == r {
						mw.take(j)
						break
					}
				}
			}
		}
	case op < 75: // receive
		var (
			tok token.Token
			err error
		)
		if w.rng.IntN(2) == 0 {
			var ok bool
			if tok, ok = e.TryRecv(); !ok {
				return
			}
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(w.rng.IntN(500))*time.Microsecond)
			tok, err = e.Recv(ctx)
			cancel()
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, message.ErrEdgeClosed) {
				return
			}
			if err != nil {
				s.violate("Recv by %d: %v", w.id, err)
				return
			}
		}
		s.msgGot(w, tok)
	case op < 95 && len(mw.held) > 0: // free one reference
		r := mw.take(w.rng.IntN(len(mw.held)))
		s.msgFree(w, r)
	default: // a token nobody owns
		if err := e.TrySend(token.Nil); !errors.Is(err, arena.ErrBadToken) {
			s.violate("TrySend(Nil) = %v, want arena.ErrBadToken", err)
		}
	}
}

func (mw *msgWorker) take(k int) mref {
	r := mw.held[k]
	mw.held[k] = mw.held[len(mw.held)-1]
	mw.held = mw.held[:len(mw.held)-1]
	return r
}

// msgSend sends one of w's references to r on e and reports whether the
// edge took it. The owner table moves first: once sent, another worker can
// receive and free it at once.
func (s *soak) msgSend(w *worker, e *message.Edge, r mref) bool {
	sl := &s.m.slots[r.tok.Index()]
	sl.sent.Add(1)
	sl.held.Add(-1)
	var err error
	if w.rng.IntN(2) == 0 {
		err = e.TrySend(r.tok)
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(w.rng.IntN(500))*time.Microsecond)
		err = e.Send(ctx, r.tok)
		cancel()
	}
	if err == nil {
		w.msg.sends++
		return true
	}
	sl.held.Add(1)
	sl.sent.Add(-1)
	w.msg.refused++
	if !errors.Is(err, message.ErrRejected) && !errors.Is(err, message.ErrEdgeClosed) && !errors.Is(err, context.DeadlineExceeded) {
		s.violate("Send(%v) by %d: %v", r.tok, w.id, err)
	}
	return false
}

// msgGot checks a received token and takes its reference.
func (s *soak) msgGot(w *worker, tok token.Token) {
	m := s.m
	if int(tok.Index()) >= len(m.slots) {
		s.violate("received %v: index out of range", tok)
		return
	}
	sl := &m.slots[tok.Index()]
	if live := token.Token(sl.tok.Load()); live != tok {
		s.violate("received %v by %d, but the slot holds %v: a stale token was delivered", tok, w.id, live)
	}
	var (
		p   msgPayload
		seq uint64
	)
	if err := m.st.View(tok, func(msg *message.Message[msgPayload]) { p, seq = msg.Payload, msg.Header.Seq }); err != nil {
		s.violate("View(%v) by %d of a received token: %v", tok, w.id, err)
		return
	}
	if !p.intact() || p.ID != seq {
		s.violate("received %v by %d: payload corrupt or not its header's (Seq %d): %+v", tok, w.id, seq, p)
	}
	if r, sent := sl.recvd.Add(1), sl.sent.Load(); r > sent {
		s.violate("message %d (%v) received %d times but sent %d times: duplicated", p.ID, tok, r, sent)
	}
	sl.held.Add(1)
	w.msg.recvs++
	w.msg.held = append(w.msg.held, mref{tok: tok, id: p.ID})
}

// msgFree drops one of w's references.
func (s *soak) msgFree(w *worker, r mref) {
	s.m.slots[r.tok.Index()].held.Add(-1)
	if err := s.m.st.Free(r.tok); err != nil {
		s.violate("Free(%v) by %d of a held message reference: %v", r.tok, w.id, err)
	}
	w.msg.frees++
}

// closeOne closes an edge while the workers are using it.
func (s *soak) closeOne(i int) {
	if err := s.m.edges[i].Close(); err != nil && !errors.Is(err, message.ErrEdgeClosed) {
		s.violate("Close of edge %d: %v", i, err)
	}
}

// msgQuiescent runs with every worker parked. It drains every edge, checks
// that the workers, the owner table and the store agree on every reference,
// replaces closed edges, and with freeAll frees every reference and checks
// that the store is whole.
func (s *soak) msgQuiescent(workers []*worker, freeAll bool) {
	m := s.m
	for i, e := range m.edges {
		st := e.Stats()
		p := edgePolicies[i]
		if st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained+uint64(st.Len) {
			s.violate("edge %d (%v): Admitted != Delivered+Evicted+Expired+Drained+Len: %+v", i, p.Admission, st)
		}
		if (p.MaxItems > 0 && st.Len > p.MaxItems) || (p.MaxBytes > 0 && st.Bytes > p.MaxBytes) || st.FreeErrors != 0 {
			s.violate("edge %d (%v): over a cap or failed frees: %+v", i, p.Admission, st)
		}
		if n := e.Drain(); n != st.Len {
			s.violate("edge %d: Drain freed %d, Len was %d", i, n, st.Len)
		}
		if e.Closed() {
			st = e.Stats()
			addStats(&m.retired, st)
			m.closes++
			if err := e.Close(); !errors.Is(err, message.ErrEdgeClosed) {
				s.violate("edge %d: second Close = %v, want ErrEdgeClosed", i, err)
			}
			if _, err := e.Recv(context.Background()); !errors.Is(err, message.ErrEdgeClosed) {
				s.violate("edge %d: Recv on closed and drained = %v, want ErrEdgeClosed", i, err)
			}
			ne, err := message.NewEdge(m.st, p)
			if err != nil {
				s.violate("NewEdge: %v", err)
				continue
			}
			m.edges[i] = ne
		}
	}
	// No edge holds anything now: the workers hold every reference.
	refs := map[token.Token]int32{}
	for _, w := range workers {
		for _, r := range w.msg.held {
			refs[r.tok]++
		}
	}
	if got, want := m.st.Available(), m.st.Capacity()-len(refs); got != want {
		s.violate("quiescent: message Store.Available() = %d, want Capacity() %d - %d held messages = %d (reference lost or doubled)",
			got, m.st.Capacity(), len(refs), want)
	}
	for tok, n := range refs {
		sl := &m.slots[tok.Index()]
		if got := sl.held.Load(); got != n || token.Token(sl.tok.Load()) != tok {
			s.violate("quiescent: owner table for %v says %d references (token %v), workers hold %d", tok, got, token.Token(sl.tok.Load()), n)
		}
		if got, err := m.st.Refs(tok); err != nil || got != int(n) {
			s.violate("quiescent: Refs(%v) = %d, %v; workers hold %d", tok, got, err, n)
		}
	}
	owned := 0
	for i := range m.slots {
		if m.slots[i].held.Load() != 0 {
			owned++
		}
	}
	if owned != len(refs) {
		s.violate("quiescent: owner table has %d messages with references, workers hold %d", owned, len(refs))
	}
	if freeAll {
		for _, w := range workers {
			for _, r := range w.msg.held {
				s.msgFree(w, r)
			}
			w.msg.held = w.msg.held[:0]
		}
		if m.st.Available() != m.st.Capacity() {
			s.violate("after draining every edge and freeing every message: Available() = %d, Capacity() = %d", m.st.Available(), m.st.Capacity())
		}
	}
}

// msgFinish closes everything at the end; every worker has stopped.
func (s *soak) msgFinish() {
	m := s.m
	tok, err := m.st.Put(message.Header{}, msgFill(0))
	if err != nil {
		s.violate("Put after the run: %v", err)
	}
	for i, e := range m.edges {
		if err := e.Close(); err != nil && !errors.Is(err, message.ErrEdgeClosed) {
			s.violate("final Close of edge %d: %v", i, err)
		}
		if err := e.TrySend(tok); !errors.Is(err, message.ErrEdgeClosed) {
			s.violate("TrySend on closed edge %d = %v, want ErrEdgeClosed", i, err)
		}
		e.Drain()
		addStats(&m.retired, e.Stats())
	}
	if err := m.st.Free(tok); err != nil {
		s.violate("Free after the run: %v", err)
	}
	if m.st.Available() != m.st.Capacity() {
		s.violate("at the end: message Store.Available() = %d, Capacity() = %d", m.st.Available(), m.st.Capacity())
	}
	if err := m.st.Close(); err != nil {
		s.violate("message Store.Close: %v", err)
	}
}

func addStats(dst *message.EdgeStats, st message.EdgeStats) {
	dst.Admitted += st.Admitted
	dst.Rejected += st.Rejected
	dst.Invalid += st.Invalid
	dst.Evicted += st.Evicted
	dst.Expired += st.Expired
	dst.Delivered += st.Delivered
	dst.Late += st.Late
	dst.Drained += st.Drained
	dst.Waited += st.Waited
	dst.FreeErrors += st.FreeErrors
}

func (m *msgs) summary(workers []*worker) string {
	t := m.retired
	var puts, full, recvs uint64
	for _, w := range workers {
		puts += w.msg.puts
		full += w.msg.full
		recvs += w.msg.recvs
	}
	return fmt.Sprintf("  messages: puts %d (ErrFull %d), received %d; edges: admitted %d delivered %d (late %d) evicted %d expired %d drained %d rejected %d waited %d; %d edges closed mid-run",
		puts, full, recvs, t.Admitted, t.Delivered, t.Late, t.Evicted, t.Expired, t.Drained, t.Rejected, t.Waited, m.closes)
}
