package message

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// zaPayload is the payload of the attack tests' stores.
type zaPayload struct{ V uint64 }

func zaStore(t testing.TB, slots int) *Store[zaPayload] {
	t.Helper()
	s, err := NewStore[zaPayload](arena.Config{Slots: slots})
	if err != nil {
		t.Fatalf("NewStore: %v", err)
	}
	return s
}

func zaEdge(t testing.TB, hs HeaderStore, p Policy) *Edge {
	t.Helper()
	e, err := NewEdge(hs, p)
	if err != nil {
		t.Fatalf("NewEdge(%+v): %v", p, err)
	}
	return e
}

func zaPut(t testing.TB, s *Store[zaPayload], h Header, v uint64) token.Token {
	t.Helper()
	tok, err := s.Put(h, zaPayload{V: v})
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	return tok
}

func zaVal(t testing.TB, s *Store[zaPayload], tok token.Token) uint64 {
	t.Helper()
	var v uint64
	if err := s.View(tok, func(m *Message[zaPayload]) { v = m.Payload.V }); err != nil {
		t.Fatalf("View(%v): %v", tok, err)
	}
	return v
}

// zaWaitParked waits until n receivers are parked on e.
func zaWaitParked(t testing.TB, e *Edge, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for int(e.recvq.linked.Load()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d receivers parked, want %d", e.recvq.linked.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// zaCheckEmpty checks that every slot of s is back.
func zaCheckEmpty(t testing.TB, s *Store[zaPayload]) {
	t.Helper()
	if a, c := s.Available(), s.Capacity(); a != c {
		n := 0
		for tok := range s.Tokens() {
			r, _ := s.Refs(tok)
			if n < 5 {
				t.Errorf("leaked %v (refs %d)", tok, r)
			}
			n++
		}
		t.Fatalf("Available = %d, Capacity = %d: %d messages leaked", a, c, n)
	}
}

// A SendBatch on a DropOldest edge whose second token evicts the first hands
// that token straight to a parked receiver; the third token is then queued.
// A second parked receiver must get it: Recv waits "until a token is
// available", and one is.
func TestAttackSendBatchHandOffLosesWakeup(t *testing.T) {
	for _, p := range []Policy{
		{MaxItems: 1, Admission: DropOldest},
		{MaxItems: 1, Admission: DeadlineQoS},
		{MaxBytes: 12, Admission: DropOldest}, // each message is 8 bytes
	} {
		t.Run(fmt.Sprintf("%v-%d-%d", p.Admission, p.MaxItems, p.MaxBytes), func(t *testing.T) { zaHandOffLosesWakeup(t, p) })
	}
}

func zaHandOffLosesWakeup(t *testing.T, p Policy) {
	s := zaStore(t, 64)
	e := zaEdge(t, s, p)
	ctx := context.Background()

	type res struct {
		tok token.Token
		err error
	}
	got := make(chan res, 2)
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	for range 2 {
		go func() {
			tok, err := e.Recv(rctx)
			got <- res{tok, err}
		}()
	}
	zaWaitParked(t, e, 2)

	ts := []token.Token{zaPut(t, s, Header{}, 1), zaPut(t, s, Header{}, 2), zaPut(t, s, Header{}, 3)}
	n, err := e.SendBatch(ctx, ts)
	if n != 3 || err != nil {
		t.Fatalf("SendBatch = %d, %v; want 3, nil", n, err)
	}
	var vals []uint64
	for range 2 {
		r := <-got
		if r.err != nil {
			t.Errorf("a receiver stayed parked while a token was queued: Recv = %v (Len %d)", r.err, e.Len())
			continue
		}
		vals = append(vals, zaVal(t, s, r.tok))
		s.Free(r.tok)
	}
	e.Close()
	e.Drain()
	st := e.Stats()
	if st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained+uint64(st.Len) {
		t.Errorf("stats do not balance: %+v", st)
	}
	t.Logf("received %v, stats %+v", vals, st)
	zaCheckEmpty(t, s)
}

// zaStressPolicies are tiny edges for the concurrent tests.
var zaStressPolicies = []Policy{
	{MaxItems: 1, Admission: Block},
	{MaxItems: 2, Admission: Block},
	{MaxItems: 3, SoftItems: 1, Admission: DropOldest},
	{MaxItems: 1, Admission: DropOldest},
	{MaxItems: 2, Admission: DropNewest},
	{MaxItems: 2, SoftItems: 1, Admission: DeadlineQoS},
	{MaxItems: 3, MaxBytes: 40, Admission: Block},
	{MaxBytes: 30, SoftBytes: 10, Admission: DeadlineQoS},
}

// Many goroutines send (Send, TrySend, SendBatch, SendAll) and receive
// (Recv, TryRecv, RecvBatch, All) on tiny edges with mixed QoS, deadlines and
// cancelled contexts. Every token received must be live, received at most once
// per share, and at the end every slot must be back, every edge's counters
// must balance, and FreeErrors must be 0.
func TestAttackConcurrentConservation(t *testing.T) {
	for i, p := range zaStressPolicies {
		t.Run(fmt.Sprintf("%d-%v-%d-%d", i, p.Admission, p.MaxItems, p.MaxBytes), func(t *testing.T) {
			zaConserve(t, p, uint64(i))
		})
	}
}

func zaConserve(t *testing.T, p Policy, seed uint64) {
	const slots = 128
	s := zaStore(t, slots)
	defer s.Close()
	e1 := zaEdge(t, s, p)
	e2 := zaEdge(t, s, Policy{MaxItems: 2, Admission: DropOldest})
	edges := []*Edge{e1, e2}
	const producers, consumers, per = 3, 3, 400
	var received, freeErrs, sentOK atomic.Int64
	var pwg, cwg sync.WaitGroup
	ctx := context.Background()

	recvOne := func(tok token.Token) {
		received.Add(1)
		if _, err := s.Header(tok); err != nil {
			t.Errorf("received a dead token %v: %v", tok, err)
		}
		if err := s.Free(tok); err != nil {
			freeErrs.Add(1)
			t.Errorf("Free of a received token: %v", err)
		}
	}
	for c := range consumers {
		for ei, e := range edges {
			cwg.Add(1)
			go func() {
				defer cwg.Done()
				rng := rand.New(rand.NewPCG(seed, uint64(c*10+ei)))
				var buf [40]token.Token
				for {
					switch rng.IntN(5) {
					case 0:
						rctx, cancel := context.WithTimeout(ctx, time.Duration(rng.IntN(200))*time.Microsecond)
						tok, err := e.Recv(rctx)
						cancel()
						if err == nil {
							recvOne(tok)
						} else if errors.Is(err, ErrEdgeClosed) {
							return
						}
					case 1:
						if tok, ok := e.TryRecv(); ok {
							recvOne(tok)
						} else if e.Closed() && e.Len() == 0 {
							return
						}
					case 2, 3:
						n, err := e.RecvBatch(ctx, buf[:1+rng.IntN(len(buf))])
						if err != nil {
							if errors.Is(err, ErrEdgeClosed) {
								return
							}
							t.Errorf("RecvBatch: %v", err)
							return
						}
						for _, tok := range buf[:n] {
							recvOne(tok)
						}
					case 4:
						rctx, cancel := context.WithTimeout(ctx, time.Millisecond)
						k := 0
						for tok := range e.All(rctx) {
							recvOne(tok)
							if k++; k == 3 {
								break
							}
						}
						cancel()
						if e.Closed() && e.Len() == 0 {
							return
						}
					}
				}
			}()
		}
	}
	for w := range producers {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			rng := rand.New(rand.NewPCG(seed, 100+uint64(w)))
			for i := 0; i < per; i++ {
				k := 1
				if rng.IntN(4) == 0 {
					k = 1 + rng.IntN(36)
				}
				ts := make([]token.Token, 0, k)
				for range k {
					h := Header{Size: uint32(1 + rng.IntN(8))}
					switch r := rng.IntN(10); r {
					case 0:
						h.QoS = LatencyCritical
					case 1:
						h.QoS = Background
					case 2:
						h.Deadline = Now() + int64(rng.IntN(300))*int64(time.Microsecond)
					case 3:
						h.Deadline = Now() + int64(rng.IntN(100))*int64(time.Microsecond)
						h.Flags = DegradeAllowed
					}
					tok, err := s.PutWait(ctx, h, zaPayload{V: uint64(i)})
					if err != nil {
						t.Errorf("PutWait: %v", err)
						return
					}
					ts = append(ts, tok)
				}
				sctx, cancel := context.WithTimeout(ctx, time.Duration(rng.IntN(300))*time.Microsecond)
				switch {
				case k > 1:
					n, err := e1.SendBatch(sctx, ts)
					sentOK.Add(int64(n))
					if err == nil && n != len(ts) {
						t.Errorf("SendBatch = %d of %d, nil", n, len(ts))
					}
					for _, tok := range ts[n:] {
						if err := s.Free(tok); err != nil {
							t.Errorf("Free of a refused token: %v", err)
						}
					}
				case rng.IntN(3) == 0:
					n, err := SendAll(sctx, s, ts[0], e1, e2)
					sentOK.Add(int64(n))
					if (err == nil) != (n == 2) {
						t.Errorf("SendAll = %d, %v", n, err)
					}
				case rng.IntN(2) == 0:
					if err := e1.TrySend(ts[0]); err != nil {
						s.Free(ts[0])
					} else {
						sentOK.Add(1)
					}
				default:
					if err := e1.Send(sctx, ts[0]); err != nil {
						if err := s.Free(ts[0]); err != nil {
							t.Errorf("Free of a refused token: %v", err)
						}
					} else {
						sentOK.Add(1)
					}
				}
				cancel()
			}
		}()
	}
	pwg.Wait()
	for _, e := range edges {
		e.Close()
	}
	done := make(chan struct{})
	go func() { cwg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("consumers did not finish after Close; Len %d %d", e1.Len(), e2.Len())
	}
	drained := 0
	for _, e := range edges {
		drained += e.Drain()
	}
	var adm, out uint64
	for i, e := range edges {
		st := e.Stats()
		if st.FreeErrors != 0 {
			t.Errorf("edge %d: FreeErrors %d", i, st.FreeErrors)
		}
		if st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained+uint64(st.Len) {
			t.Errorf("edge %d: stats do not balance: %+v", i, st)
		}
		if st.Len != 0 || st.Bytes != 0 {
			t.Errorf("edge %d: Len %d Bytes %d after Drain", i, st.Len, st.Bytes)
		}
		if p := e.Policy(); p.MaxItems > 0 && st.HighWater > p.MaxItems {
			t.Errorf("edge %d: HighWater %d above MaxItems %d", i, st.HighWater, p.MaxItems)
		}
		adm += st.Admitted
		out += st.Delivered
	}
	if adm != uint64(sentOK.Load()) {
		t.Errorf("Admitted %d, successful sends %d", adm, sentOK.Load())
	}
	if out != uint64(received.Load()) {
		t.Errorf("Delivered %d, received %d", out, received.Load())
	}
	zaCheckEmpty(t, s)
}

// zaModel is a sequential model of an edge without expiries.
type zaModel struct {
	p     Policy
	q     []zaMsg // admission order
	st    EdgeStats
	freed map[token.Token]bool
}

type zaMsg struct {
	tok  token.Token
	lane int // 0 Background, 1 BestEffort, 2 LatencyCritical
	size int64
}

func (m *zaModel) bytes() int64 {
	var b int64
	for _, x := range m.q {
		b += x.size
	}
	return b
}

func (m *zaModel) fits(size int64) bool {
	return (m.p.MaxItems == 0 || len(m.q) < m.p.MaxItems) && (m.p.MaxBytes == 0 || m.bytes()+size <= m.p.MaxBytes)
}

func (m *zaModel) evict(i int) {
	m.freed[m.q[i].tok] = true
	m.q = append(m.q[:i], m.q[i+1:]...)
	m.st.Evicted++
}

// send returns nil, or the sentinel the edge must match.
func (m *zaModel) send(x zaMsg) error {
	p := m.p
	if p.MaxBytes > 0 && x.size > p.MaxBytes {
		m.st.Invalid++ // or Rejected: checked loosely
		return ErrRejected
	}
	if p.Admission == DeadlineQoS && x.lane == 0 &&
		((p.SoftItems > 0 && len(m.q) >= p.SoftItems) || (p.SoftBytes > 0 && m.bytes() >= p.SoftBytes)) {
		m.st.Rejected++
		return ErrRejected
	}
	if !m.fits(x.size) {
		switch p.Admission {
		case Block, DropNewest:
			m.st.Rejected++
			return ErrEdgeFull
		case DropOldest:
			for !m.fits(x.size) && len(m.q) > 0 {
				m.evict(0)
			}
		case DeadlineQoS:
			items, bytes := 0, int64(0)
			for _, y := range m.q {
				if y.lane <= x.lane {
					items++
					bytes += y.size
				}
			}
			if !((p.MaxItems == 0 || len(m.q)-items < p.MaxItems) && (p.MaxBytes == 0 || m.bytes()-bytes+x.size <= p.MaxBytes)) {
				m.st.Rejected++
				return ErrEdgeFull
			}
			for l := 0; l <= x.lane && !m.fits(x.size); l++ {
				for i := 0; i < len(m.q) && !m.fits(x.size); {
					if m.q[i].lane == l {
						m.evict(i)
					} else {
						i++
					}
				}
			}
		}
	}
	m.q = append(m.q, x)
	m.st.Admitted++
	m.st.HighWater = max(m.st.HighWater, len(m.q))
	return nil
}

func (m *zaModel) recv() (zaMsg, bool) {
	if len(m.q) == 0 {
		return zaMsg{}, false
	}
	idx := 0
	for i, x := range m.q {
		if x.lane == 2 {
			idx = i
			break
		}
	}
	x := m.q[idx]
	m.q = append(m.q[:idx], m.q[idx+1:]...)
	m.st.Delivered++
	return x, true
}

// A sequential random walk over one edge, compared with the model token by
// token: order (LatencyCritical first, FIFO within lanes), admission,
// evictions, Len, Bytes and the exact Stats, across fast/slow switches, ring
// overflow (more than 256 queued), batches longer than a chunk and TrySend /
// TryRecv / RecvBatch / SendBatch.
func TestAttackSequentialModel(t *testing.T) {
	pols := []Policy{
		{},
		{MaxItems: 3},
		{MaxItems: 5, Admission: DropOldest},
		{MaxItems: 300, Admission: DropOldest},
		{MaxItems: 40, Admission: DropNewest},
		{MaxItems: 257, SoftItems: 100, Admission: DropNewest},
		{MaxItems: 7, SoftItems: 3, Admission: DeadlineQoS},
		{MaxItems: 70, MaxBytes: 200, SoftBytes: 50, Admission: DeadlineQoS},
		{MaxBytes: 64, Admission: DropOldest},
		{MaxItems: 33, MaxBytes: 100, Admission: Block},
		{MaxItems: 1000, Admission: Block},
	}
	for pi, p := range pols {
		t.Run(fmt.Sprint(pi), func(t *testing.T) {
			for seed := range uint64(2) {
				zaSeqModel(t, p, seed)
			}
		})
	}
}

func zaSeqModel(t *testing.T, p Policy, seed uint64) {
	s := zaStore(t, 2048)
	defer s.Close()
	e := zaEdge(t, s, p)
	m := &zaModel{p: p, freed: map[token.Token]bool{}}
	rng := rand.New(rand.NewPCG(seed, 99))
	held := map[token.Token]zaMsg{}
	var seq uint64
	newMsg := func() zaMsg {
		h := Header{Size: uint32(1 + rng.IntN(9))}
		lane := 1
		r := rng.IntN(100)
		plain := rng.IntN(3) != 0 // runs of plain messages keep the fast path
		switch {
		case plain:
		case r < 15:
			h.QoS, lane = LatencyCritical, 2
		case r < 30:
			h.QoS, lane = Background, 0
		case r < 40:
			h.Deadline = Now() + int64(time.Hour)
		case r < 45:
			h.QoS = BestEffort
			h.Flags = DegradeAllowed
			h.Deadline = Now() + int64(time.Hour)
		}
		seq++
		tok := zaPut(t, s, h, seq)
		x := zaMsg{tok: tok, lane: lane, size: int64(h.Size)}
		held[tok] = x
		return x
	}
	checkRecv := func(op string, got token.Token, ok bool) {
		t.Helper()
		want, wok := m.recv()
		if ok != wok || (ok && got != want.tok) {
			t.Fatalf("seed %d %s = %v,%v (V=%d); model wants %v,%v (lane %d)", seed, op, got, ok, zaValOr(s, got), want.tok, wok, want.lane)
		}
		if ok {
			if err := s.Free(got); err != nil {
				t.Fatalf("Free received: %v", err)
			}
		}
	}
	sendResult := func(op string, x zaMsg, err error, want error) {
		t.Helper()
		if (err == nil) != (want == nil) || (want != nil && !errors.Is(err, want)) {
			t.Fatalf("seed %d %s(lane %d size %d) = %v; model wants %v (Len %d/%d)", seed, op, x.lane, x.size, err, want, e.Len(), len(m.q))
		}
		if err != nil {
			if err := s.Free(x.tok); err != nil {
				t.Fatalf("Free of refused: %v", err)
			}
		}
		delete(held, x.tok)
	}
	for step := 0; step < 1000; step++ {
		switch r := rng.IntN(20); {
		case r < 6:
			x := newMsg()
			var err error
			if p.Admission == Block || rng.IntN(2) == 0 {
				err = e.TrySend(x.tok)
			} else {
				//lint:ignore SA1012 a nil context is what is tested
				err = e.Send(nil, x.tok) //nolint:staticcheck // nil ctx is documented
			}
			sendResult("Send", x, err, m.send(x))
		case r < 9:
			k := 1 + rng.IntN(70)
			xs := make([]zaMsg, k)
			ts := make([]token.Token, k)
			for i := range xs {
				xs[i] = newMsg()
				ts[i] = xs[i].tok
			}
			var wantErr error
			wantN := k
			for i, x := range xs {
				if werr := m.send(x); werr != nil {
					wantN, wantErr = i, werr
					break
				}
			}
			var n int
			var err error
			if p.Admission == Block && wantErr != nil {
				// Block would wait: bound it.
				ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
				n, err = e.SendBatch(ctx, ts)
				cancel()
				wantErr = context.DeadlineExceeded
				m.st.Waited++
			} else {
				n, err = e.SendBatch(context.Background(), ts)
			}
			if n != wantN || (err == nil) != (wantErr == nil) || (wantErr != nil && !errors.Is(err, wantErr)) {
				t.Fatalf("seed %d SendBatch(%d) = %d, %v; model wants %d, %v", seed, k, n, err, wantN, wantErr)
			}
			for _, x := range xs[n:] {
				s.Free(x.tok)
			}
			for _, x := range xs {
				delete(held, x.tok)
			}
		case r < 13:
			tok, ok := e.TryRecv()
			checkRecv("TryRecv", tok, ok)
		case r < 15:
			tok, err := func() (token.Token, error) {
				if len(m.q) == 0 {
					return token.Nil, errors.New("skip")
				}
				return e.Recv(context.Background())
			}()
			if err == nil {
				checkRecv("Recv", tok, true)
			}
		case r < 18:
			if len(m.q) == 0 {
				continue
			}
			dst := make([]token.Token, 1+rng.IntN(80))
			n, err := e.RecvBatch(context.Background(), dst)
			if err != nil {
				t.Fatalf("RecvBatch: %v", err)
			}
			if want := min(len(dst), len(m.q)); n != want {
				t.Fatalf("seed %d RecvBatch(%d) = %d; model has %d queued", seed, len(dst), n, len(m.q))
			}
			for _, tok := range dst[:n] {
				checkRecv("RecvBatch", tok, true)
			}
		case r < 19:
			// Stats, Len and Bytes must match exactly.
			st := e.Stats()
			if st.Len != len(m.q) || st.Bytes != m.bytes() || e.Len() != len(m.q) || e.Bytes() != m.bytes() {
				t.Fatalf("seed %d step %d: Len %d Bytes %d; model %d %d", seed, step, st.Len, st.Bytes, len(m.q), m.bytes())
			}
			if st.Admitted != m.st.Admitted || st.Delivered != m.st.Delivered || st.Evicted != m.st.Evicted ||
				st.Rejected+st.Invalid != m.st.Rejected+m.st.Invalid || st.HighWater != m.st.HighWater || st.Waited != m.st.Waited {
				t.Fatalf("seed %d step %d: stats %+v; model %+v", seed, step, st, m.st)
			}
		default:
			if rng.IntN(10) == 0 {
				n := e.Drain()
				if n != len(m.q) {
					t.Fatalf("Drain = %d; model %d", n, len(m.q))
				}
				m.st.Drained += uint64(n)
				m.q = m.q[:0]
			}
		}
	}
	e.Close()
	m.st.Drained += uint64(e.Drain())
	st := e.Stats()
	if st.Admitted != st.Delivered+st.Evicted+st.Drained || st.FreeErrors != 0 {
		t.Fatalf("stats do not balance: %+v", st)
	}
	zaCheckEmpty(t, s)
}

func zaValOr(s *Store[zaPayload], tok token.Token) uint64 {
	var v uint64
	_ = s.View(tok, func(m *Message[zaPayload]) { v = m.Payload.V })
	return v
}

// A graceful Stop of a graph with fan-out (a Block edge and a tiny
// DropOldest edge), a stage that emits a new message per input and drops
// some inputs, deadlines on some messages, and several workers per node:
// every message the stage sent on the Block edge reaches its sink, and when
// Run returns every slot is back.
func TestAttackGraphGracefulConservation(t *testing.T) {
	s := zaStore(t, 64)
	defer s.Close()
	e1 := zaEdge(t, s, Policy{MaxItems: 2, Admission: Block})
	eA := zaEdge(t, s, Policy{MaxItems: 3, Admission: Block})
	eB := zaEdge(t, s, Policy{MaxItems: 1, Admission: DropOldest})
	var srcSent, stageIn, stageOut, gotA, gotB atomic.Int64
	g := NewGraph(s)
	g.Source("src", 2, func(ctx context.Context, out *Emitter) error {
		for i := uint64(0); ; i++ {
			h := Header{Seq: i}
			switch i % 5 {
			case 1:
				h.QoS = LatencyCritical
			case 2:
				h.QoS = Background
			case 3:
				h.Deadline = Now() + int64(time.Hour)
			}
			tok, err := s.PutWait(ctx, h, zaPayload{V: i})
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
			srcSent.Add(1)
		}
	}, e1)
	g.Stage("stage", 3, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
		stageIn.Add(1)
		v := zaValOr(s, tok)
		if v%7 == 0 {
			return out.Free(tok)
		}
		extra, err := s.PutWait(ctx, Header{}, zaPayload{V: v + 1000000})
		if err != nil {
			out.Free(tok)
			return err
		}
		stageOut.Add(2)
		if err := out.Emit(tok); err != nil {
			out.Free(extra)
			return err
		}
		return out.Emit(extra)
	}, eA, eB)
	g.Sink("a", 2, eA, func(ctx context.Context, tok token.Token) error {
		if _, err := s.Header(tok); err != nil {
			t.Errorf("sink a got a dead token: %v", err)
		}
		gotA.Add(1)
		return nil
	})
	g.Sink("b", 1, eB, func(ctx context.Context, tok token.Token) error {
		gotB.Add(1)
		return nil
	})
	go func() {
		time.Sleep(100 * time.Millisecond)
		g.Stop()
	}()
	if err := g.Run(context.Background()); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if srcSent.Load() != stageIn.Load() {
		t.Errorf("source emitted %d, stage received %d", srcSent.Load(), stageIn.Load())
	}
	if gotA.Load() != stageOut.Load() {
		t.Errorf("stage emitted %d on the Block edge, its sink got %d", stageOut.Load(), gotA.Load())
	}
	t.Logf("src %d stage in %d out %d a %d b %d; eB %+v", srcSent.Load(), stageIn.Load(), stageOut.Load(), gotA.Load(), gotB.Load(), eB.Stats())
	for i, e := range []*Edge{e1, eA, eB} {
		st := e.Stats()
		if st.Len != 0 || st.FreeErrors != 0 || st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained {
			t.Errorf("edge %d: %+v", i, st)
		}
	}
	zaCheckEmpty(t, s)
}

// Aborts: a failing sink, a failing stage and a cancelled context each end
// Run with the right error and leave no slot behind.
func TestAttackGraphAbortConservation(t *testing.T) {
	boom := errors.New("boom")
	for _, mode := range []string{"sink", "stage", "ctx", "source"} {
		t.Run(mode, func(t *testing.T) {
			s := zaStore(t, 32)
			defer s.Close()
			e1 := zaEdge(t, s, Policy{MaxItems: 4, Admission: Block})
			e2 := zaEdge(t, s, Policy{MaxItems: 4, Admission: Block})
			e3 := zaEdge(t, s, Policy{MaxItems: 2, Admission: DropNewest})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var n atomic.Int64
			g := NewGraph(s)
			g.Source("src", 2, func(ctx context.Context, out *Emitter) error {
				for i := uint64(0); ; i++ {
					tok, err := s.PutWait(ctx, Header{}, zaPayload{V: i})
					if err != nil {
						return err
					}
					if mode == "source" && i == 300 {
						s.Free(tok)
						return boom
					}
					if err := out.Emit(tok); err != nil {
						return err
					}
				}
			}, e1)
			g.Stage("st", 2, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
				if mode == "stage" && n.Add(1) == 500 {
					out.Free(tok)
					return boom
				}
				return out.Emit(tok)
			}, e2, e3)
			g.Sink("a", 2, e2, func(ctx context.Context, tok token.Token) error {
				if mode == "sink" && n.Add(1) == 500 {
					return boom
				}
				if mode == "ctx" && n.Add(1) == 500 {
					cancel()
				}
				return nil
			})
			g.Sink("b", 1, e3, func(ctx context.Context, tok token.Token) error { return nil })
			err := g.Run(ctx)
			want := boom
			if mode == "ctx" {
				want = context.Canceled
			}
			if !errors.Is(err, want) {
				t.Fatalf("Run = %v; want %v", err, want)
			}
			zaCheckEmpty(t, s)
		})
	}
}

// Run with a nil context must not panic ("Bad input never panics"; every
// other context-taking call of the package treats nil as Background).
func TestAttackGraphRunNilContext(t *testing.T) {
	s := zaStore(t, 8)
	defer s.Close()
	e := zaEdge(t, s, Policy{MaxItems: 2})
	g := NewGraph(s)
	g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
		tok, err := s.Put(Header{}, zaPayload{})
		if err != nil {
			return err
		}
		return out.Emit(tok)
	}, e)
	g.Sink("sink", 1, e, func(ctx context.Context, tok token.Token) error { return nil })
	var err error
	func() {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("panic: %v", r)
			}
		}()
		//lint:ignore SA1012 a nil context is what is tested
		err = g.Run(nil) //nolint:staticcheck // the point of the test
	}()
	if err != nil {
		t.Fatalf("Run(nil) = %v", err)
	}
	zaCheckEmpty(t, s)
}

func zaRefs(t testing.TB, s *Store[zaPayload], tok token.Token) int {
	t.Helper()
	r, err := s.Refs(tok)
	if err != nil {
		t.Fatalf("Refs(%v): %v", tok, err)
	}
	return r
}

// Bad policies, nil and typed-nil stores are refused with the documented
// errors, never a panic.
func TestAttackNewEdgeMisuse(t *testing.T) {
	s := zaStore(t, 4)
	defer s.Close()
	bad := []Policy{
		{MaxItems: -1}, {SoftItems: -1}, {MaxBytes: -1}, {SoftBytes: -1},
		{MaxItems: 2, SoftItems: 3}, {MaxBytes: 2, SoftBytes: 3},
		{Admission: DeadlineQoS + 1}, {Admission: 255},
	}
	for _, p := range bad {
		if e, err := NewEdge(s, p); !errors.Is(err, ErrBadPolicy) || e != nil {
			t.Errorf("NewEdge(%+v) = %v, %v; want nil, ErrBadPolicy", p, e, err)
		}
		if err := p.Validate(); !errors.Is(err, ErrBadPolicy) {
			t.Errorf("Validate(%+v) = %v", p, err)
		}
	}
	for _, p := range []Policy{{SoftItems: 5}, {SoftBytes: 5}, {MaxItems: 3, SoftItems: 3}} {
		if _, err := NewEdge(s, p); err != nil {
			t.Errorf("NewEdge(%+v) = %v; want ok", p, err)
		}
	}
	var nilStore *Store[zaPayload]
	var nilBytes *ByteStore[[64]byte]
	for i, hs := range []HeaderStore{nil, nilStore, nilBytes} {
		if e, err := NewEdge(hs, Policy{}); !errors.Is(err, ErrNilStore) || !errors.Is(err, ErrBadPolicy) || e != nil {
			t.Errorf("NewEdge(nil store %d) = %v, %v", i, e, err)
		}
	}
	if _, err := SendAll(context.Background(), nilBytes, token.New(1, 1)); !errors.Is(err, ErrNilStore) {
		t.Errorf("SendAll(nil ByteStore) = %v", err)
	}
	g := NewGraph(nilBytes)
	if err := g.Run(context.Background()); !errors.Is(err, ErrNilStore) {
		t.Errorf("Run of a graph on a nil store = %v", err)
	}
}

// Sends of bad tokens are refused, counted in Invalid, and change nothing;
// refused tokens stay with the caller with their reference count intact.
func TestAttackBadTokens(t *testing.T) {
	s := zaStore(t, 128)
	defer s.Close()
	other := zaStore(t, 8)
	defer other.Close()
	for _, p := range []Policy{{MaxItems: 4}, {MaxItems: 4, MaxBytes: 100, Admission: DeadlineQoS}} {
		e := zaEdge(t, s, p)
		live := zaPut(t, s, Header{}, 1)
		stale := zaPut(t, s, Header{}, 2)
		s.Free(stale)
		foreign := zaPut(t, other, Header{}, 3)
		badQoS := zaPut(t, s, Header{QoS: 9}, 4)
		tooBig := zaPut(t, s, Header{Size: 1000}, 5)
		expired := zaPut(t, s, Header{Deadline: Now() - 1}, 6)
		cases := []struct {
			name string
			tok  token.Token
			want error
		}{
			{"nil", token.Nil, nil},
			{"stale", stale, nil},
			{"forged index", token.New(1<<30, 5), nil},
			{"forged gen 0", token.New(1, 0), nil},
			{"foreign", foreign, nil},
			{"bad QoS", badQoS, ErrRejected},
			{"expired", expired, ErrExpired},
		}
		if p.MaxBytes > 0 {
			cases = append(cases, struct {
				name string
				tok  token.Token
				want error
			}{"too big", tooBig, ErrRejected})
		}
		before := e.Stats()
		refused := uint64(0)
		for _, c := range cases {
			for _, op := range []string{"Send", "TrySend", "SendBatch"} {
				var err error
				switch op {
				case "Send":
					err = e.Send(context.Background(), c.tok)
				case "TrySend":
					err = e.TrySend(c.tok)
				case "SendBatch":
					var n int
					n, err = e.SendBatch(context.Background(), []token.Token{c.tok, live})
					if n != 0 {
						t.Errorf("%s %s: n = %d", op, c.name, n)
					}
				}
				refused++
				if err == nil || (c.want != nil && !errors.Is(err, c.want)) {
					t.Errorf("%s(%s) = %v; want an error matching %v", op, c.name, err, c.want)
				}
				if errors.Is(err, ErrEdgeFull) {
					t.Errorf("%s(%s) = %v: not a full edge", op, c.name, err)
				}
			}
		}
		st := e.Stats()
		if st.Len != 0 || st.Admitted != before.Admitted || (st.Invalid+st.Rejected)-(before.Invalid+before.Rejected) != refused {
			t.Errorf("%+v: after bad sends %+v (refused %d)", p, st, refused)
		}
		for _, tok := range []token.Token{live, badQoS, tooBig, expired} {
			if r := zaRefs(t, s, tok); r != 1 {
				t.Errorf("refs of a refused token = %d", r)
			}
		}
		// A bad token in the second chunk of a long batch stops it there.
		ts := make([]token.Token, 45)
		for i := range ts {
			ts[i] = zaPut(t, s, Header{}, uint64(i))
			if i == 40 {
				s.Free(ts[i])
			}
		}
		e2 := zaEdge(t, s, Policy{})
		s0 := e2.Stats()
		n, err := e2.SendBatch(context.Background(), ts)
		if n != 40 || err == nil || !errors.Is(err, arena.ErrStale) {
			t.Errorf("SendBatch with a stale 41st token = %d, %v", n, err)
		}
		if st := e2.Stats(); st.Admitted-s0.Admitted != 40 || st.Invalid-s0.Invalid != 1 || st.Len != 40 {
			t.Errorf("after the stale batch: %+v", st)
		}
		for _, tok := range ts[41:] {
			if r := zaRefs(t, s, tok); r != 1 {
				t.Errorf("token after the refusal: refs %d", r)
			}
			s.Free(tok)
		}
		e2.Drain()
		for _, tok := range []token.Token{live, badQoS, tooBig, expired} {
			s.Free(tok)
		}
		other.Free(foreign)
		zaCheckEmpty(t, s)
	}
}

// SendAll ownership: a stale token frees nothing of anyone else's; a
// refusal frees only that edge's share; nil edges refuse with ErrNilEdge.
func TestAttackSendAllOwnership(t *testing.T) {
	s := zaStore(t, 8)
	defer s.Close()
	ctx := context.Background()
	full := zaEdge(t, s, Policy{MaxItems: 1, Admission: DropNewest})
	filler := zaPut(t, s, Header{}, 0)
	if err := full.Send(ctx, filler); err != nil {
		t.Fatal(err)
	}
	ok1 := zaEdge(t, s, Policy{MaxItems: 4})
	ok2 := zaEdge(t, s, Policy{MaxItems: 4, Admission: DeadlineQoS})

	tok := zaPut(t, s, Header{}, 1)
	n, err := SendAll(ctx, s, tok, ok1, nil, full, ok2)
	if n != 2 || !errors.Is(err, ErrNilEdge) || !errors.Is(err, ErrEdgeFull) {
		t.Fatalf("SendAll = %d, %v", n, err)
	}
	if r := zaRefs(t, s, tok); r != 2 {
		t.Fatalf("refs after SendAll to 2 of 4 edges = %d; want 2", r)
	}
	// A stale token: nothing tried, nothing freed.
	stale := zaPut(t, s, Header{}, 2)
	s.Free(stale)
	if n, err := SendAll(ctx, s, stale, ok1, ok2); n != 0 || !errors.Is(err, arena.ErrStale) {
		t.Errorf("SendAll(stale) = %d, %v", n, err)
	}
	if n, err := SendAll(ctx, s, stale, ok1); n != 0 || err == nil {
		t.Errorf("SendAll(stale, one edge) = %d, %v", n, err)
	}
	// An expired message: every share refused and freed.
	exp := zaPut(t, s, Header{Deadline: Now() - 1}, 3)
	if n, err := SendAll(ctx, s, exp, ok1, ok2, ok1); n != 0 || !errors.Is(err, ErrExpired) {
		t.Errorf("SendAll(expired) = %d, %v", n, err)
	}
	if _, err := s.Refs(exp); !errors.Is(err, arena.ErrStale) {
		t.Errorf("expired message not freed by SendAll: %v", err)
	}
	// No edges: frees.
	lone := zaPut(t, s, Header{}, 4)
	if n, err := SendAll(ctx, s, lone); n != 0 || err != nil {
		t.Errorf("SendAll(no edges) = %d, %v", n, err)
	}
	// A closed edge.
	closed := zaEdge(t, s, Policy{})
	closed.Close()
	tok2 := zaPut(t, s, Header{}, 5)
	if n, err := SendAll(ctx, s, tok2, closed, ok1); n != 1 || !errors.Is(err, ErrEdgeClosed) {
		t.Errorf("SendAll(closed, ok) = %d, %v", n, err)
	}
	// Block edge with ctx done: waits, gives up, frees the share.
	blk := zaEdge(t, s, Policy{MaxItems: 1})
	f2 := zaPut(t, s, Header{}, 6)
	blk.Send(ctx, f2)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Millisecond)
	tok3 := zaPut(t, s, Header{}, 7)
	if n, err := SendAll(cctx, s, tok3, ok1, blk); n != 1 || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("SendAll(ok, blocked) = %d, %v", n, err)
	}
	cancel()
	for _, e := range []*Edge{full, ok1, ok2, closed, blk} {
		e.Close()
		e.Drain()
		if st := e.Stats(); st.FreeErrors != 0 {
			t.Errorf("FreeErrors %d", st.FreeErrors)
		}
	}
	zaCheckEmpty(t, s)
}

// Close while senders (Send and SendBatch) and receivers are parked: the
// senders get ErrEdgeClosed and keep their tokens, the receivers drain what is
// queued then get ErrEdgeClosed, a second Close errs, Drain frees the rest,
// All ends.
func TestAttackCloseWithParked(t *testing.T) {
	s := zaStore(t, 64)
	defer s.Close()
	ctx := context.Background()
	e := zaEdge(t, s, Policy{MaxItems: 2})
	q := []token.Token{zaPut(t, s, Header{}, 1), zaPut(t, s, Header{QoS: LatencyCritical}, 2)}
	for _, tok := range q {
		if err := e.Send(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	type res struct {
		n   int
		err error
		ts  []token.Token
	}
	out := make(chan res, 3)
	go func() {
		tok := zaPut(t, s, Header{}, 3)
		//lint:ignore SA1012 a nil context is what is tested
		err := e.Send(nil, tok) //nolint:staticcheck
		out <- res{0, err, []token.Token{tok}}
	}()
	go func() {
		ts := []token.Token{zaPut(t, s, Header{}, 4), zaPut(t, s, Header{}, 5)}
		n, err := e.SendBatch(ctx, ts)
		out <- res{n, err, ts}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for e.sendq.linked.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("senders did not park")
		}
		time.Sleep(time.Millisecond)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); !errors.Is(err, ErrEdgeClosed) {
		t.Errorf("second Close = %v", err)
	}
	for range 2 {
		r := <-out
		if !errors.Is(r.err, ErrEdgeClosed) || r.n != 0 {
			t.Errorf("parked sender after Close = %d, %v", r.n, r.err)
		}
		for _, tok := range r.ts {
			if zaRefs(t, s, tok) != 1 {
				t.Errorf("refused token lost its reference")
			}
			s.Free(tok)
		}
	}
	if err := e.TrySend(q[0]); !errors.Is(err, ErrEdgeClosed) || errors.Is(err, ErrEdgeFull) {
		t.Errorf("TrySend after Close = %v", err)
	}
	// Receivers drain: LatencyCritical first.
	//lint:ignore SA1012 a nil context is what is tested
	tok, err := e.Recv(nil) //nolint:staticcheck
	if err != nil || tok != q[1] {
		t.Errorf("Recv after Close = %v, %v; want the LatencyCritical one", tok, err)
	}
	s.Free(tok)
	var got []token.Token
	for tok := range e.All(ctx) {
		got = append(got, tok)
	}
	if len(got) != 1 || got[0] != q[0] {
		t.Errorf("All after Close = %v; want %v", got, q[:1])
	}
	for _, tok := range got {
		s.Free(tok)
	}
	if _, err := e.Recv(ctx); !errors.Is(err, ErrEdgeClosed) {
		t.Errorf("Recv on a closed, empty edge = %v", err)
	}
	if n, err := e.RecvBatch(ctx, make([]token.Token, 3)); n != 0 || !errors.Is(err, ErrEdgeClosed) {
		t.Errorf("RecvBatch on a closed, empty edge = %d, %v", n, err)
	}
	if d := e.Drain(); d != 0 {
		t.Errorf("Drain = %d", d)
	}
	// Parked receivers are woken by Close.
	e2 := zaEdge(t, s, Policy{})
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := e2.RecvBatch(ctx, make([]token.Token, 4))
			errs <- err
		}()
	}
	zaWaitParked(t, e2, 2)
	e2.Close()
	for range 2 {
		if err := <-errs; !errors.Is(err, ErrEdgeClosed) {
			t.Errorf("parked receiver after Close = %v", err)
		}
	}
	zaCheckEmpty(t, s)
}

// Deadlines: queued messages that expire are freed by the edge and counted;
// DegradeAllowed ones are delivered and counted Late; a full edge reaps
// expired messages before evicting or refusing.
func TestAttackDeadlines(t *testing.T) {
	s := zaStore(t, 64)
	defer s.Close()
	ctx := context.Background()
	for _, mode := range []Admission{Block, DropNewest, DropOldest, DeadlineQoS} {
		e := zaEdge(t, s, Policy{MaxItems: 3, Admission: mode})
		soon := Now() + int64(20*time.Millisecond)
		a := zaPut(t, s, Header{Deadline: soon}, 1)
		b := zaPut(t, s, Header{Deadline: soon, Flags: DegradeAllowed}, 2)
		c := zaPut(t, s, Header{Deadline: soon, QoS: LatencyCritical}, 3)
		for _, tok := range []token.Token{a, b, c} {
			if err := e.TrySend(tok); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(30 * time.Millisecond)
		// Full, but a and c are expired: the new one fits without evicting b.
		d := zaPut(t, s, Header{}, 4)
		if err := e.TrySend(d); err != nil {
			t.Fatalf("%v: TrySend on a full edge of expired messages = %v", mode, err)
		}
		st := e.Stats()
		if st.Expired != 2 || st.Evicted != 0 || st.Len != 2 {
			t.Errorf("%v: after reaping %+v", mode, st)
		}
		for _, want := range []token.Token{b, d} {
			tok, ok := e.TryRecv()
			if !ok || tok != want {
				t.Errorf("%v: TryRecv = %v %v; want %v", mode, tok, ok, want)
			}
			s.Free(tok)
		}
		if st := e.Stats(); st.Late != 1 || st.Delivered != 2 {
			t.Errorf("%v: %+v", mode, st)
		}
		// Expired while queued, reached by RecvBatch.
		x := zaPut(t, s, Header{Deadline: Now() + int64(5*time.Millisecond)}, 5)
		y := zaPut(t, s, Header{}, 6)
		e.TrySend(x)
		e.TrySend(y)
		time.Sleep(10 * time.Millisecond)
		dst := make([]token.Token, 4)
		n, err := e.RecvBatch(ctx, dst)
		if n != 1 || err != nil || dst[0] != y {
			t.Errorf("%v: RecvBatch = %d, %v, %v", mode, n, err, dst[:n])
		}
		for _, tok := range dst[:n] {
			s.Free(tok)
		}
		st = e.Stats()
		if st.Expired != 3 || st.Admitted != st.Delivered+st.Expired+st.Evicted+st.Drained+uint64(st.Len) {
			t.Errorf("%v: %+v", mode, st)
		}
	}
	zaCheckEmpty(t, s)
}

// Per-producer FIFO under concurrency: each producer's messages of the
// shared BestEffort/Background lane, and of the LatencyCritical lane, reach
// the single consumer in the order they were sent, while plain messages take
// the fast ring and the others force switches to slow mode.
func TestAttackConcurrentPerProducerFIFO(t *testing.T) {
	for _, p := range []Policy{
		{MaxItems: 4, Admission: Block},
		{MaxItems: 1, Admission: Block},
		{MaxItems: 300, Admission: Block},
		{Admission: Block},
	} {
		t.Run(fmt.Sprint(p.MaxItems), func(t *testing.T) {
			s := zaStore(t, 1024)
			defer s.Close()
			e := zaEdge(t, s, p)
			const producers, per = 3, 1500
			ctx := context.Background()
			var wg sync.WaitGroup
			for w := range producers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(w), 5))
					var batch []token.Token
					for i := 0; i < per; i++ {
						h := Header{Trace: uint64(w), Seq: uint64(i)}
						switch rng.IntN(12) {
						case 0:
							h.QoS = LatencyCritical
						case 1:
							h.QoS = Background
						case 2:
							h.Deadline = Now() + int64(time.Hour)
						}
						tok, err := s.PutWait(ctx, h, zaPayload{})
						if err != nil {
							t.Error(err)
							return
						}
						if w == 0 {
							batch = append(batch, tok)
							if len(batch) < 1+i%40 && i < per-1 {
								continue
							}
							if n, err := e.SendBatch(ctx, batch); err != nil || n != len(batch) {
								t.Errorf("SendBatch = %d, %v", n, err)
							}
							batch = batch[:0]
							continue
						}
						if err := e.Send(ctx, tok); err != nil {
							t.Error(err)
						}
					}
				}()
			}
			done := make(chan struct{})
			go func() { wg.Wait(); e.Close(); close(done) }()
			last := [producers][2]int64{}
			for i := range last {
				last[i] = [2]int64{-1, -1}
			}
			rng := rand.New(rand.NewPCG(9, 9))
			buf := make([]token.Token, 50)
			got := 0
			check := func(tok token.Token) {
				h, err := s.Header(tok)
				if err != nil {
					t.Fatalf("received dead token: %v", err)
				}
				lane := 0
				if h.QoS == LatencyCritical {
					lane = 1
				}
				if int64(h.Seq) <= last[h.Trace][lane] {
					t.Fatalf("producer %d lane %d: seq %d after %d", h.Trace, lane, h.Seq, last[h.Trace][lane])
				}
				last[h.Trace][lane] = int64(h.Seq)
				s.Free(tok)
				got++
			}
			for {
				if rng.IntN(2) == 0 {
					tok, err := e.Recv(ctx)
					if err != nil {
						break
					}
					check(tok)
				} else {
					n, err := e.RecvBatch(ctx, buf[:1+rng.IntN(len(buf))])
					if err != nil {
						break
					}
					for _, tok := range buf[:n] {
						check(tok)
					}
				}
			}
			<-done
			if got != producers*per {
				t.Errorf("received %d of %d", got, producers*per)
			}
			if st := e.Stats(); st.Delivered != uint64(got) || st.Admitted != uint64(got) || (p.MaxItems > 0 && st.HighWater > p.MaxItems) {
				t.Errorf("stats %+v", st)
			}
			zaCheckEmpty(t, s)
		})
	}
}

// The wrong closing order is harmless: closing the store while edges (in
// fast and slow mode) still hold tokens returns ErrReferenced; draining the
// edges afterwards counts no FreeErrors; a receiver's Free of a token it got
// after the store closed returns nil once, then an error.
func TestAttackStoreClosedBeforeDrain(t *testing.T) {
	s := zaStore(t, 64)
	ctx := context.Background()
	fast := zaEdge(t, s, Policy{MaxItems: 8})
	slow := zaEdge(t, s, Policy{MaxItems: 8, MaxBytes: 1000, Admission: DeadlineQoS})
	for i := range 5 {
		if err := fast.Send(ctx, zaPut(t, s, Header{}, uint64(i))); err != nil {
			t.Fatal(err)
		}
		h := Header{}
		if i%2 == 0 {
			h.QoS = LatencyCritical
		}
		if err := slow.Send(ctx, zaPut(t, s, h, uint64(i))); err != nil {
			t.Fatal(err)
		}
	}
	held := zaPut(t, s, Header{}, 99)
	s.Retain(held)
	err := s.Close()
	if !errors.Is(err, ErrReferenced) {
		t.Fatalf("Close with references = %v", err)
	}
	// Sends now fail, the caller keeps the token (and can still free it).
	if err := fast.Send(ctx, held); err == nil || !errors.Is(err, arena.ErrClosed) {
		t.Errorf("Send after store Close = %v", err)
	}
	if n, err := slow.SendBatch(ctx, []token.Token{held}); n != 0 || err == nil {
		t.Errorf("SendBatch after store Close = %d, %v", n, err)
	}
	tok, err := fast.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Free(tok); err != nil {
		t.Errorf("Free of a received token after store Close = %v", err)
	}
	if err := s.Free(tok); err == nil {
		t.Errorf("second Free of that token = nil")
	}
	for _, e := range []*Edge{fast, slow} {
		e.Close()
		e.Drain()
		if st := e.Stats(); st.FreeErrors != 0 || st.Len != 0 {
			t.Errorf("after Drain: %+v", st)
		}
	}
	for range 2 {
		if err := s.Free(held); err != nil {
			t.Errorf("Free of a held reference after Close = %v", err)
		}
	}
	if err := s.Free(held); err == nil {
		t.Errorf("Free past the references = nil")
	}
}

// Headers changed after a send: the edge keeps what it read at send time
// (Bytes goes back to exactly 0, lanes and deadlines unchanged), and the next
// send reads the new header (PutFunc's fill and Update both count).
func TestAttackHeaderChangedAfterSend(t *testing.T) {
	s := zaStore(t, 16)
	defer s.Close()
	ctx := context.Background()
	for _, p := range []Policy{{MaxItems: 4}, {MaxItems: 4, MaxBytes: 150, Admission: DropOldest}} {
		e := zaEdge(t, s, p)
		a := zaPut(t, s, Header{Size: 10}, 1)
		b := zaPut(t, s, Header{Size: 20}, 2)
		e.Send(ctx, a)
		e.Send(ctx, b)
		s.Update(a, func(m *Message[zaPayload]) {
			m.Header.Size = 90
			m.Header.QoS = LatencyCritical
			m.Header.Deadline = Now() - 1
		})
		if got := e.Bytes(); got != 30 {
			t.Errorf("%+v: Bytes after Update = %d; want 30", p, got)
		}
		tok, ok := e.TryRecv()
		if !ok || tok != a {
			t.Errorf("%+v: TryRecv = %v %v; want a (FIFO, still delivered)", p, tok, ok)
		}
		// a now says LatencyCritical, Size 90, expired: a new send reads that.
		if err := e.Send(ctx, a); !errors.Is(err, ErrExpired) {
			t.Errorf("%+v: Send after Update to an expired header = %v", p, err)
		}
		s.Update(a, func(m *Message[zaPayload]) { m.Header.Deadline = 0 })
		if err := e.Send(ctx, a); err != nil {
			t.Fatal(err)
		}
		if got := e.Bytes(); got != 110 {
			t.Errorf("%+v: Bytes = %d; want 110", p, got)
		}
		if tok, _ := e.TryRecv(); tok != a {
			t.Errorf("%+v: the LatencyCritical a should come first", p)
		}
		s.Free(a)
		e.Drain()
		if e.Bytes() != 0 || e.Len() != 0 {
			t.Errorf("%+v: after Drain Bytes %d Len %d", p, e.Bytes(), e.Len())
		}
		c, err := s.PutFunc(Header{Size: 1}, func(m *Message[zaPayload]) error {
			m.Header.Size = 200
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		err = e.Send(ctx, c)
		if p.MaxBytes > 0 && !errors.Is(err, ErrRejected) {
			t.Errorf("%+v: Send of a message grown to 200 bytes by fill = %v", p, err)
		}
		if err == nil {
			if e.Bytes() != 200 {
				t.Errorf("Bytes = %d; want 200", e.Bytes())
			}
			e.Drain()
		} else {
			s.Free(c)
		}
	}
	zaCheckEmpty(t, s)
}
