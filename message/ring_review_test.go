package message

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
)

var rrSink atomic.Uint64

// TestRingReviewTryRecvDuringReopen: the edge always holds one token x
// (the only receiver puts it back before it looks again); another
// goroutine switches the edge to slow mode and back (Len) in a loop. Every
// TryRecv must return x. TryRecv's shortcut (fast mode, tail == head:
// empty) misreads the middle of reopenLocked, which stores the head (no
// slow bit) before the tail: the tail still holds the old value | slowBit,
// whose position is the head's, so TryRecv reports an empty edge while
// reopenLocked is moving x back into the ring. The window is a few
// nanoseconds: the receiver waits for the slow bit, then waits a varying
// while (reading the tail, which keeps its cache line shared and so delays
// the tail's store) before calling TryRecv. It catches the bug in about
// half of 1-second runs on 2 CPUs; it runs up to 3 seconds.
func TestRingReviewTryRecvDuringReopen(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 4})
	f := e.fast
	x := fs.put(Header{})
	if err := e.TrySend(x); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			_ = e.Len() // slow mode, then reopen with x moved back
		}
	}()
	deadline := time.Now().Add(3 * time.Second)
	misses, iters := 0, 0
	j := 0
	for misses == 0 && time.Now().Before(deadline) {
		for i := 0; i < 1000; i++ {
			iters++
			for k := 0; f.head.Load()&slowBit == 0 && k < 1000; k++ {
			}
			j = (j + 1) % 40
			for k := 0; k < j; k++ {
				rrSink.Add(f.tail.Load() & 1)
			}
			tok, ok := e.TryRecv()
			if !ok {
				misses++
				break
			}
			if tok != x {
				stop.Store(true)
				wg.Wait()
				t.Fatalf("TryRecv = %v, want %v", tok, x)
			}
			if err := e.TrySend(x); err != nil {
				stop.Store(true)
				wg.Wait()
				t.Fatal(err)
			}
		}
	}
	stop.Store(true)
	wg.Wait()
	if misses > 0 {
		t.Fatalf("TryRecv reported an empty edge (after %d tries) while it held a token whose TrySend had returned and that nobody else receives", iters)
	}
}

// ---------------------------------------------------------------------
// A deterministic, single-goroutine model check of the ring protocol.
//
// Stepwise senders and receivers play preempted parties: a sender loads
// the tail and the cached head (and checks room with f.full, the real
// function), CASes the tail one step later, and stores and publishes its
// cell a step after that; a receiver loads the head, then loads one cell
// per step (as tryRecvN does, in order), and CASes the head one step after
// its last read.
// Between those steps the real operations run: f.trySend, f.trySendN,
// f.tryRecv, f.tryRecvN, and the edge's locked operations (Len, Stats,
// LatencyCritical and deadline sends, TryRecv, RecvBatch, SendBatch),
// which switch the edge to slow mode and back. Every delivered token is
// checked against a model: each sent token is delivered exactly once, the
// BestEffort tokens in send (claim) order, LatencyCritical ones first and
// in their order, the queue never above MaxItems, and Len and Stats
// (Admitted, Delivered, HighWater) exact.

type rrModel struct {
	t       *testing.T
	name    string
	fs      *fakeStore
	e       *Edge
	f       *fastRing
	max     int
	beIdx   map[token.Token]int // BestEffort token -> send order
	crit    map[token.Token]bool
	critQ   []token.Token // LatencyCritical tokens queued, in order
	nextBE  int           // order of the next BestEffort send
	wantBE  int           // order of the next BestEffort delivery
	in      int           // tokens in the edge (claimed cells count)
	hw      int           // the most ever in the edge
	adm     uint64        // tokens admitted
	dlv     uint64        // tokens delivered
	got     map[token.Token]bool
	claimed int // stepwise senders between claim and publish
}

func (m *rrModel) newBE(h Header) token.Token {
	tok := m.fs.put(h)
	return tok
}

func (m *rrModel) admitBE(tok token.Token) {
	m.beIdx[tok] = m.nextBE
	m.nextBE++
	m.admitted()
}

func (m *rrModel) admitted() {
	m.adm++
	m.in++
	if m.in > m.hw {
		m.hw = m.in
	}
	if m.in > m.max {
		m.t.Fatalf("%s: %d tokens in an edge of MaxItems %d", m.name, m.in, m.max)
	}
}

func (m *rrModel) deliver(how string, tok token.Token) {
	m.t.Helper()
	if tok.IsNil() {
		m.t.Fatalf("%s: %s delivered the nil token", m.name, how)
	}
	if m.got[tok] {
		m.t.Fatalf("%s: %s delivered %v a second time", m.name, how, tok)
	}
	m.got[tok] = true
	if m.crit[tok] {
		if len(m.critQ) == 0 || m.critQ[0] != tok {
			m.t.Fatalf("%s: %s delivered LatencyCritical %v out of order (queue %v)", m.name, how, tok, m.critQ)
		}
		m.critQ = m.critQ[1:]
	} else {
		i, ok := m.beIdx[tok]
		if !ok {
			m.t.Fatalf("%s: %s delivered %v, which was never admitted", m.name, how, tok)
		}
		if len(m.critQ) > 0 {
			m.t.Fatalf("%s: %s delivered BestEffort %v while LatencyCritical %v was queued", m.name, how, tok, m.critQ[0])
		}
		if i != m.wantBE {
			m.t.Fatalf("%s: %s delivered BestEffort #%d (%v), want #%d next (FIFO)", m.name, how, i, tok, m.wantBE)
		}
		m.wantBE++
	}
	m.dlv++
	m.in--
}

type rrStepSender struct {
	state int // 0 idle, 1 loaded (pos, h), 2 claimed (pos, tok)
	pos   uint64
	h     uint64
	tok   token.Token
}

type rrStepRecv struct {
	state   int // 0 idle, 1 reading, 2 ready to CAS
	pos     uint64
	k, kmax uint64
	toks    []token.Token
}

func (m *rrModel) stepSender(s *rrStepSender) {
	f := m.f
	switch s.state {
	case 0:
		pos := f.tail.Load()
		if pos&slowBit != 0 {
			return
		}
		full, h := f.full(pos, f.headCache.Load())
		if full {
			return
		}
		s.pos, s.h, s.state = pos, h, 1
	case 1:
		s.state = 0
		if !f.tail.CompareAndSwap(s.pos, s.pos+1) {
			return
		}
		s.tok = m.newBE(Header{})
		m.admitBE(s.tok)
		if int64(s.pos+1-s.h) > f.hw.Load() {
			f.raiseHighWater(s.pos)
		}
		s.state = 2
		m.claimed++
	case 2:
		f.publish(s.pos, s.tok, 0)
		s.state = 0
		m.claimed--
	}
}

func (m *rrModel) stepRecv(r *rrStepRecv, kmax uint64) {
	f := m.f
	switch r.state {
	case 0:
		pos := f.head.Load()
		if pos&slowBit != 0 {
			return
		}
		r.pos, r.k, r.kmax, r.toks, r.state = pos, 0, kmax, r.toks[:0], 1
	case 1:
		if w := f.cells[(r.pos+r.k)&f.mask].word.Load(); f.holds(w, r.pos+r.k) {
			r.toks = append(r.toks, cellToken(w))
			r.k++
			if r.k == r.kmax {
				r.state = 2
			}
			return
		}
		if r.k == 0 {
			r.state = 0 // empty, being published, or a later lap: start again
			return
		}
		r.state = 2
	case 2:
		r.state = 0
		if f.head.CompareAndSwap(r.pos, r.pos+r.k) {
			for _, tok := range r.toks {
				m.deliver(fmt.Sprintf("a preempted receiver's CAS at position %#x", r.pos), tok)
			}
		}
	}
}

func (m *rrModel) checkRing() {
	m.t.Helper()
	f := m.f
	tail, head := f.tail.Load(), f.head.Load()
	if tail&slowBit == 0 && head&slowBit == 0 {
		if n := tail - head; n > f.room {
			m.t.Fatalf("%s: fast ring holds %d positions (tail %#x head %#x), room %d", m.name, n, tail, head, f.room)
		}
		if hc := f.headCache.Load(); hc > head {
			m.t.Fatalf("%s: headCache %#x above the head %#x", m.name, hc, head)
		}
	}
}

func (m *rrModel) checkStats(what string) {
	m.t.Helper()
	st := m.e.Stats()
	if st.Admitted != m.adm || st.Delivered != m.dlv || st.Len != m.in || st.HighWater != m.hw {
		m.t.Fatalf("%s: after %s Stats = Admitted %d Delivered %d Len %d HighWater %d; want %d %d %d %d",
			m.name, what, st.Admitted, st.Delivered, st.Len, st.HighWater, m.adm, m.dlv, m.in, m.hw)
	}
}

// rrStartAt moves a fresh, empty edge's ring to position start (as
// runRingAcrossWrap does for a bare ring).
func rrStartAt(e *Edge, start uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f := e.fast
	for pos := start; pos < start+uint64(len(f.cells)); pos++ {
		f.clearCell(pos)
	}
	f.tail.Store(start)
	f.head.Store(start)
	f.headCache.Store(start)
	f.t0, f.h0 = start, start
}

func runRingModel(t *testing.T, maxItems int, start uint64, seed uint64, steps int) {
	name := fmt.Sprintf("MaxItems %d start %#x seed %d", maxItems, start, seed)
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: maxItems, Admission: Block})
	rrStartAt(e, start)
	m := &rrModel{t: t, name: name, fs: fs, e: e, f: e.fast, max: maxItems,
		beIdx: map[token.Token]int{}, crit: map[token.Token]bool{}, got: map[token.Token]bool{}}
	rng := rand.New(rand.NewPCG(seed, uint64(maxItems)))
	senders := make([]rrStepSender, 2)
	recvs := make([]rrStepRecv, 3)
	ctx := context.Background()
	for step := 0; step < steps; step++ {
		op := rng.IntN(20)
		switch {
		case op < 4:
			m.stepSender(&senders[rng.IntN(len(senders))])
		case op < 9:
			r := &recvs[rng.IntN(len(recvs))]
			m.stepRecv(r, uint64(1+rng.IntN(len(m.f.cells)+2)))
		case op == 9:
			tok := m.newBE(Header{})
			if m.f.trySend(tok, 0) {
				m.admitBE(tok)
			}
		case op == 10:
			n := 1 + rng.IntN(4)
			qs := make([]queued, n)
			lanes := make([]uint8, n)
			for i := range qs {
				qs[i].tok, lanes[i] = m.newBE(Header{}), laneBestEffort
			}
			k := m.f.trySendN(qs, lanes)
			for _, q := range qs[:k] {
				m.admitBE(q.tok)
			}
		case op == 11:
			if tok, ok := m.f.tryRecv(); ok {
				m.deliver("tryRecv", tok)
			}
		case op == 12:
			dst := make([]token.Token, 1+rng.IntN(len(m.f.cells)+2))
			k := m.f.tryRecvN(dst)
			for _, tok := range dst[:k] {
				m.deliver("tryRecvN", tok)
			}
			for i, tok := range dst[k:] {
				if !tok.IsNil() {
					t.Fatalf("%s: tryRecvN returned %d and left %v in dst[%d]", name, k, tok, k+i)
				}
			}
		default:
			if m.claimed > 0 && rng.IntN(3) == 0 {
				// A locked operation while a sender is between its claim
				// and its publish: the switch to slow mode must wait for
				// the cell (and take its token, in order), not copy it
				// before it is published.
				done := make(chan struct{})
				go func() {
					defer close(done)
					m.lockedOp(rng.IntN(4), rng, ctx) // Len, Stats, LatencyCritical or deadline send: all lock
				}()
				finished := false
				waitFor(t, func() bool {
					select {
					case <-done:
						finished = true
						return true
					default:
						return m.f.tail.Load()&slowBit != 0
					}
				})
				if !finished {
					time.Sleep(20 * time.Microsecond)
					select {
					case <-done:
						finished = true
					default:
					}
				}
				if finished {
					t.Fatalf("%s: a locked operation finished while a claimed cell was unpublished", name)
				}
				for i := range senders {
					if senders[i].state == 2 {
						m.stepSender(&senders[i])
					}
				}
				<-done
				continue
			}
			if m.claimed > 0 {
				// The locked path waits for claimed cells: publish one.
				for i := range senders {
					if senders[i].state == 2 {
						m.stepSender(&senders[i])
						break
					}
				}
				continue
			}
			m.lockedOp(rng.IntN(9), rng, ctx)
		}
		m.checkRing()
	}
	// Quiesce: finish the stepwise parties, then drain through the edge.
	for i := range senders {
		for senders[i].state != 0 {
			m.stepSender(&senders[i])
		}
	}
	for i := range recvs {
		for recvs[i].state != 0 {
			m.stepRecv(&recvs[i], 1)
		}
	}
	m.checkStats("the run")
	for m.in > 0 {
		tok, ok := e.TryRecv()
		if !ok {
			t.Fatalf("%s: TryRecv empty with %d tokens in the edge", name, m.in)
		}
		m.deliver("the final TryRecv", tok)
	}
	if tok, ok := e.TryRecv(); ok {
		t.Fatalf("%s: TryRecv = %v from an edge that should be empty", name, tok)
	}
	m.checkStats("the final drain")
	if m.adm < uint64(steps/40) {
		t.Fatalf("%s: only %d tokens admitted in %d steps: the model ran no traffic", name, m.adm, steps)
	}
}

func (m *rrModel) lockedOp(op int, rng *rand.Rand, ctx context.Context) {
	e := m.e
	switch op {
	case 0:
		if n := e.Len(); n != m.in {
			m.t.Fatalf("%s: Len = %d, want %d", m.name, n, m.in)
		}
	case 1:
		m.checkStats("a step")
	case 2:
		tok := m.fs.put(Header{QoS: LatencyCritical})
		err := e.TrySend(tok)
		if (err == nil) != (m.in < m.max) {
			m.t.Fatalf("%s: LatencyCritical TrySend with %d of %d queued: %v", m.name, m.in, m.max, err)
		}
		if err == nil {
			m.crit[tok] = true
			m.critQ = append(m.critQ, tok)
			m.admitted()
		}
	case 3:
		tok := m.fs.put(Header{Deadline: DeadlineIn(time.Hour)})
		err := e.TrySend(tok)
		if (err == nil) != (m.in < m.max) {
			m.t.Fatalf("%s: deadline TrySend with %d of %d queued: %v", m.name, m.in, m.max, err)
		}
		if err == nil {
			m.admitBE(tok)
		}
	case 4, 5:
		tok := m.newBE(Header{})
		err := e.TrySend(tok)
		if (err == nil) != (m.in < m.max) {
			m.t.Fatalf("%s: TrySend with %d of %d queued: %v", m.name, m.in, m.max, err)
		}
		if err == nil {
			m.admitBE(tok)
		}
	case 6:
		tok, ok := e.TryRecv()
		if ok != (m.in > 0) {
			m.t.Fatalf("%s: TryRecv = %v, %v with %d queued", m.name, tok, ok, m.in)
		}
		if ok {
			m.deliver("TryRecv", tok)
		}
	case 7:
		if m.in == 0 {
			return // RecvBatch would wait
		}
		dst := make([]token.Token, 1+rng.IntN(len(m.f.cells)+2))
		n, err := e.RecvBatch(ctx, dst)
		if err != nil || n == 0 {
			m.t.Fatalf("%s: RecvBatch = %d, %v with %d queued", m.name, n, err, m.in)
		}
		for _, tok := range dst[:n] {
			m.deliver("RecvBatch", tok)
		}
		for i, tok := range dst[n:] {
			if !tok.IsNil() {
				m.t.Fatalf("%s: RecvBatch returned %d and left %v in dst[%d]", m.name, n, tok, n+i)
			}
		}
	case 8:
		// A batch that fits (Block would wait otherwise).
		room := m.max - m.in
		if room == 0 {
			return
		}
		ts := make([]token.Token, 1+rng.IntN(room))
		for i := range ts {
			ts[i] = m.newBE(Header{})
		}
		n, err := e.SendBatch(ctx, ts)
		if n != len(ts) || err != nil {
			m.t.Fatalf("%s: SendBatch of %d with room %d = %d, %v", m.name, len(ts), room, n, err)
		}
		for _, tok := range ts {
			m.admitBE(tok)
		}
	}
}

// TestRingReviewInterleavingModel runs the model on tiny rings (MaxItems
// 1, 2, 3: rooms below and equal to the ring's size) and larger ones,
// from position 0 and across the 2^32 wrap of the positions' low words.
func TestRingReviewInterleavingModel(t *testing.T) {
	steps := 8000
	if testing.Short() {
		steps = 3000
	}
	for _, maxItems := range []int{1, 2, 3, 4, 5, 8} {
		for _, start := range []uint64{0, 1<<32 - 3, 1<<32 - 1, 2<<32 - 6} {
			for seed := uint64(1); seed <= 3; seed++ {
				runRingModel(t, maxItems, start, seed, steps)
			}
		}
	}
}

// ---------------------------------------------------------------------
// Stress: many goroutines through the public API.

type rrRecvd struct {
	toks []token.Token
}

// rrSentinel is a token no store ever issues here: receivers prefill their
// buffers with it to see what RecvBatch writes past n.
var rrSentinel = token.New(0x7fffff, 0x7f)

// runRingStress runs 4 senders (Send, SendBatch, TrySend with retries,
// some with a deadline, so through the lock), 4 receivers (Recv, RecvBatch
// with and without a short context, TryRecv) and a switcher (Stats, Len,
// LatencyCritical sends, which switch the edge to slow mode) for d, then
// closes the edge (closeEarly: while the senders still run, with a
// concurrent Drain) and checks that every accepted token was received or
// drained exactly once, each receiver saw each producer's tokens in send
// order, dst[n:] never held an edge token, Len never exceeded MaxItems, and
// Stats is exact.
func runRingStress(t *testing.T, procs, maxItems int, d time.Duration, closeEarly bool) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
	name := fmt.Sprintf("GOMAXPROCS %d MaxItems %d closeEarly %v", procs, maxItems, closeEarly)
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: maxItems, Admission: Block})
	if e.fast == nil {
		t.Fatalf("%s: no fast ring", name)
	}
	ctx := context.Background()
	const nSend, nRecv = 4, 4
	var stop atomic.Bool
	var failed atomic.Value
	fail := func(format string, args ...any) {
		failed.CompareAndSwap(nil, fmt.Sprintf(name+": "+format, args...))
		stop.Store(true)
	}
	sent := make([][]token.Token, nSend) // accepted, in order
	var crits []token.Token
	var wgS, wgR, wgX sync.WaitGroup
	for p := 0; p < nSend; p++ {
		wgS.Add(1)
		go func() {
			defer wgS.Done()
			rng := rand.New(rand.NewPCG(uint64(p), 99))
			var batch []token.Token
			for i := 0; !stop.Load(); i++ {
				h := Header{}
				if rng.IntN(16) == 0 {
					h.Deadline = DeadlineIn(time.Hour)
				}
				switch rng.IntN(3) {
				case 0:
					tok := fs.put(h)
					if err := e.Send(ctx, tok); err != nil {
						if errors.Is(err, ErrEdgeClosed) {
							return
						}
						fail("Send: %v", err)
						return
					}
					sent[p] = append(sent[p], tok)
				case 1:
					batch = batch[:0]
					for j := rng.IntN(6); j >= 0; j-- {
						batch = append(batch, fs.put(h))
					}
					n, err := e.SendBatch(ctx, batch)
					sent[p] = append(sent[p], batch[:n]...)
					if err != nil {
						if errors.Is(err, ErrEdgeClosed) {
							return
						}
						fail("SendBatch: %d, %v", n, err)
						return
					}
				case 2:
					tok := fs.put(h)
					for {
						err := e.TrySend(tok)
						if err == nil {
							sent[p] = append(sent[p], tok)
							break
						}
						if errors.Is(err, ErrEdgeClosed) {
							return
						}
						if !errors.Is(err, ErrEdgeFull) {
							fail("TrySend: %v", err)
							return
						}
						if stop.Load() {
							break
						}
						runtime.Gosched()
					}
				}
			}
		}()
	}
	recvd := make([]rrRecvd, nRecv)
	for r := 0; r < nRecv; r++ {
		wgR.Add(1)
		go func() {
			defer wgR.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 7))
			buf := make([]token.Token, 1+r*5) // 1, 6, 11, 16
			check := func(n int, what string) bool {
				for i, tok := range buf[n:] {
					if tok != rrSentinel && !tok.IsNil() {
						fail("%s returned %d and left %v (not the caller's) in dst[%d]", what, n, tok, n+i)
						return false
					}
				}
				return true
			}
			for {
				for i := range buf {
					buf[i] = rrSentinel
				}
				switch rng.IntN(4) {
				case 0:
					tok, err := e.Recv(ctx)
					if err != nil {
						if !errors.Is(err, ErrEdgeClosed) {
							fail("Recv: %v", err)
						}
						return
					}
					recvd[r].toks = append(recvd[r].toks, tok)
				case 1:
					n, err := e.RecvBatch(ctx, buf)
					if !check(n, "RecvBatch") {
						return
					}
					recvd[r].toks = append(recvd[r].toks, buf[:n]...)
					if err != nil {
						if !errors.Is(err, ErrEdgeClosed) || n != 0 {
							fail("RecvBatch: %d, %v", n, err)
						}
						return
					}
				case 2:
					c, cancel := context.WithTimeout(ctx, 200*time.Microsecond)
					n, err := e.RecvBatch(c, buf)
					cancel()
					if !check(n, "RecvBatch (timeout)") {
						return
					}
					recvd[r].toks = append(recvd[r].toks, buf[:n]...)
					if err != nil && !errors.Is(err, context.DeadlineExceeded) {
						if !errors.Is(err, ErrEdgeClosed) || n != 0 {
							fail("RecvBatch: %d, %v", n, err)
						}
						return
					}
				case 3:
					if tok, ok := e.TryRecv(); ok {
						recvd[r].toks = append(recvd[r].toks, tok)
					} else {
						runtime.Gosched()
					}
				}
			}
		}()
	}
	var drained atomic.Int64
	wgX.Add(1)
	go func() { // the switcher
		defer wgX.Done()
		for i := 0; !stop.Load(); i++ {
			switch i % 4 {
			case 0:
				if st := e.Stats(); maxItems > 0 && (st.Len > maxItems || st.HighWater > maxItems) {
					fail("Stats Len %d HighWater %d above MaxItems %d", st.Len, st.HighWater, maxItems)
				}
			case 1:
				if n := e.Len(); maxItems > 0 && n > maxItems {
					fail("Len %d above MaxItems %d", n, maxItems)
				}
			case 2:
				tok := fs.put(Header{QoS: LatencyCritical})
				if err := e.TrySend(tok); err == nil {
					crits = append(crits, tok)
				} else if !errors.Is(err, ErrEdgeFull) && !errors.Is(err, ErrEdgeClosed) {
					fail("LatencyCritical TrySend: %v", err)
				}
			case 3:
				time.Sleep(20 * time.Microsecond)
			}
		}
	}()
	time.Sleep(d)
	if closeEarly {
		e.Close() // while the senders run
		wgX.Add(1)
		go func() {
			defer wgX.Done()
			drained.Add(int64(e.Drain()))
		}()
		stop.Store(true)
		wgS.Wait()
	} else {
		stop.Store(true)
		wgS.Wait()
		wgX.Wait()
		e.Close()
	}
	wgR.Wait()
	wgX.Wait()
	if f := failed.Load(); f != nil {
		t.Fatal(f)
	}
	drained.Add(int64(e.Drain()))

	// Exactly once: received, or drained (freed by the store).
	type origin struct{ p, i int }
	from := map[token.Token]origin{}
	total := 0
	for p := range sent {
		for i, tok := range sent[p] {
			from[tok] = origin{p, i}
		}
		total += len(sent[p])
	}
	for _, tok := range crits {
		from[tok] = origin{-1, 0}
	}
	total += len(crits)
	seen := map[token.Token]bool{}
	nRecvd := 0
	for r := range recvd {
		last := make([]int, nSend)
		for i := range last {
			last[i] = -1
		}
		for _, tok := range recvd[r].toks {
			o, ok := from[tok]
			if !ok {
				t.Fatalf("%s: receiver %d got %v, which no send admitted", name, r, tok)
			}
			if seen[tok] {
				t.Fatalf("%s: %v (producer %d #%d) delivered twice", name, tok, o.p, o.i)
			}
			seen[tok] = true
			nRecvd++
			if o.p >= 0 {
				if o.i <= last[o.p] {
					t.Fatalf("%s: receiver %d got producer %d's #%d after its #%d (FIFO)", name, r, o.p, o.i, last[o.p])
				}
				last[o.p] = o.i
			}
		}
	}
	nDrained := 0
	fs.mu.Lock()
	for tok := range from {
		if fs.freed[tok] > 0 {
			if seen[tok] {
				fs.mu.Unlock()
				t.Fatalf("%s: %v both received and drained", name, tok)
			}
			nDrained++
		} else if !seen[tok] {
			o := from[tok]
			fs.mu.Unlock()
			t.Fatalf("%s: %v (producer %d #%d) admitted, never received nor drained (lost)", name, tok, o.p, o.i)
		}
	}
	fs.mu.Unlock()
	if int64(nDrained) != drained.Load() {
		t.Fatalf("%s: Drain reported %d, the store freed %d admitted tokens", name, drained.Load(), nDrained)
	}
	if !closeEarly && nDrained != 0 {
		t.Fatalf("%s: %d tokens left for Drain after the receivers saw the edge closed and empty", name, nDrained)
	}
	st := e.Stats()
	if st.Admitted != uint64(total) || st.Delivered != uint64(nRecvd) || st.Drained != uint64(nDrained) || st.Len != 0 {
		t.Fatalf("%s: Stats Admitted %d Delivered %d Drained %d Len %d; want %d %d %d 0",
			name, st.Admitted, st.Delivered, st.Drained, st.Len, total, nRecvd, nDrained)
	}
	if maxItems > 0 && st.HighWater > maxItems {
		t.Fatalf("%s: HighWater %d above MaxItems %d", name, st.HighWater, maxItems)
	}
	if total < 100 {
		t.Fatalf("%s: only %d tokens sent: the stress did not run", name, total)
	}
}

func TestRingReviewStressConservation(t *testing.T) {
	d := 150 * time.Millisecond
	if testing.Short() {
		d = 30 * time.Millisecond
	}
	for _, procs := range []int{2, 4} {
		for _, maxItems := range []int{1, 2, 3, 16, 0} {
			runRingStress(t, procs, maxItems, d, false)
		}
	}
}

func TestRingReviewStressCloseDrain(t *testing.T) {
	d := 60 * time.Millisecond
	if testing.Short() {
		d = 20 * time.Millisecond
	}
	for _, procs := range []int{2, 4} {
		for _, maxItems := range []int{1, 2, 3, 16, 0} {
			runRingStress(t, procs, maxItems, d, true)
		}
	}
}

// ---------------------------------------------------------------------
// Deterministic interleavings played by hand.

// The head comes back to the same value across a slow-mode round trip
// when the ring was empty at the switch (the reopen starts at the tail,
// which was the head). A receiver that loaded that head before the switch
// then finds, at the same position, the token the reopen wrote there: its
// CAS succeeds and it must get that token, exactly once, and nothing it
// read from an earlier lap.
func TestRingReviewStaleHeadSameValueAfterEmptySwitch(t *testing.T) {
	for _, start := range []uint64{0, 1<<32 - 1} {
		fs := newFakeStore()
		e := mustEdge(t, fs, Policy{MaxItems: 2})
		rrStartAt(e, start)
		f := e.fast
		old := fs.put(Header{})
		if err := e.TrySend(old); err != nil {
			t.Fatal(err)
		}
		if tok, ok := e.TryRecv(); !ok || tok != old {
			t.Fatalf("start %#x: TryRecv = %v, %v", start, tok, ok)
		}
		pos := f.head.Load() // the stale receiver loads the head of an empty ring
		if f.holds(f.cells[pos&f.mask].word.Load(), pos) {
			t.Fatalf("start %#x: the cell of the empty head reads as published", start)
		}
		crit, a := fs.put(Header{QoS: LatencyCritical}), fs.put(Header{})
		if err := e.TrySend(crit); err != nil { // slow mode, ring empty
			t.Fatal(err)
		}
		if err := e.TrySend(a); err != nil { // into the locked lane
			t.Fatal(err)
		}
		if tok, ok := e.TryRecv(); !ok || tok != crit { // reopens with a in the ring
			t.Fatalf("start %#x: TryRecv = %v, %v; want %v", start, tok, ok, crit)
		}
		if !e.inFastMode() || f.head.Load() != pos {
			t.Fatalf("start %#x: fast %v head %#x; want fast mode at the old head %#x", start, e.inFastMode(), f.head.Load(), pos)
		}
		// The stale receiver goes on: the cell's word, then the CAS.
		w := f.cells[pos&f.mask].word.Load()
		if !f.holds(w, pos) {
			t.Fatalf("start %#x: the reopened cell is not published", start)
		}
		got := cellToken(w)
		if !f.head.CompareAndSwap(pos, pos+1) {
			t.Fatalf("start %#x: the take of the reopened position failed", start)
		}
		if got != a {
			t.Fatalf("start %#x: the stale receiver took %v, want %v (old %v)", start, got, a, old)
		}
		if tok, ok := e.TryRecv(); ok {
			t.Fatalf("start %#x: TryRecv = %v after the only token was taken (delivered twice?)", start, tok)
		}
		st := e.Stats()
		if st.Admitted != 3 || st.Delivered != 3 || st.Len != 0 || st.HighWater != 2 {
			t.Fatalf("start %#x: Stats = %+v; want Admitted 3 Delivered 3 Len 0 HighWater 2", start, st)
		}
	}
}

// A batch receiver reads three cells and is
// preempted before its CAS; meanwhile another receiver takes one token and
// a sender reuses that cell for the next lap. The batch's CAS must fail,
// and the tokens must come out once each, in order. Played across the wrap
// of the positions' low 32 bits.
func TestRingReviewPreemptedBatchReaderOvertaken(t *testing.T) {
	for _, start := range []uint64{0, 1<<32 - 2, 1<<32 - 1} {
		f := newFastRing(&Policy{MaxItems: 3}) // 4 cells, room 3
		for pos := start; pos < start+uint64(len(f.cells)); pos++ {
			f.clearCell(pos)
		}
		f.tail.Store(start)
		f.head.Store(start)
		f.headCache.Store(start)
		tok := func(i uint32) token.Token { return token.New(i, 1) }
		for i := uint32(1); i <= 3; i++ {
			if !f.trySend(tok(i), 1) {
				t.Fatalf("start %#x: send %d failed", start, i)
			}
		}
		if f.trySend(tok(99), 1) {
			t.Fatalf("start %#x: a fourth send into room 3 succeeded", start)
		}
		pos := f.head.Load()
		var read [3]token.Token
		for k := uint64(0); k < 3; k++ {
			w := f.cells[(pos+k)&f.mask].word.Load()
			if !f.holds(w, pos+k) {
				t.Fatalf("start %#x: cell %d not published", start, k)
			}
			read[k] = cellToken(w)
		}
		if got, ok := f.tryRecv(); !ok || got != tok(1) {
			t.Fatalf("start %#x: tryRecv = %v, %v", start, got, ok)
		}
		for i := uint32(4); i <= 5; i++ { // room 3: one more fits, 4 cells: no cell is rewritten twice
			ok := f.trySend(tok(i), 1)
			if ok != (i == 4) {
				t.Fatalf("start %#x: send %d = %v", start, i, ok)
			}
		}
		if f.head.CompareAndSwap(pos, pos+3) {
			t.Fatalf("start %#x: the preempted batch's take of %v succeeded after tok(1) was delivered", start, read)
		}
		var dst [8]token.Token
		n := f.tryRecvN(dst[:])
		if n != 3 || dst[0] != tok(2) || dst[1] != tok(3) || dst[2] != tok(4) {
			t.Fatalf("start %#x: tryRecvN = %d, %v; want tok 2, 3, 4", start, n, dst[:n])
		}
		for i, d := range dst[n:] {
			if !d.IsNil() {
				t.Fatalf("start %#x: dst[%d] = %v past n", start, n+i, d)
			}
		}
		if got, ok := f.tryRecv(); ok {
			t.Fatalf("start %#x: tryRecv = %v from an empty ring", start, got)
		}
		// A later lap: the sender may now claim room 3 again, the cells of
		// positions the head passed.
		for i := uint32(6); i <= 8; i++ {
			if !f.trySend(tok(i), 1) {
				t.Fatalf("start %#x: send %d into an empty ring failed", start, i)
			}
		}
		if n := f.tryRecvN(dst[:2]); n != 2 || dst[0] != tok(6) || dst[1] != tok(7) {
			t.Fatalf("start %#x: tryRecvN = %d, %v; want tok 6, 7", start, n, dst[:2])
		}
		if hw := f.hw.Load(); hw != 3 {
			t.Fatalf("start %#x: ring high water %d, want 3", start, hw)
		}
	}
}
