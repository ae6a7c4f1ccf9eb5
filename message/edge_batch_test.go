package message

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// putN stores n messages with Seq 0..n-1 and the given QoS.
func putN(t testing.TB, s *Store[payload], n int, q QoS) []token.Token {
	t.Helper()
	ts := make([]token.Token, n)
	for i := range ts {
		tok, err := s.Put(Header{Seq: uint64(i), QoS: q, Size: 8}, payload{A: uint64(i)})
		if err != nil {
			t.Fatal(err)
		}
		ts[i] = tok
	}
	return ts
}

func seqOf(t testing.TB, s *Store[payload], tok token.Token) uint64 {
	t.Helper()
	h, err := s.Header(tok)
	if err != nil {
		t.Fatal(err)
	}
	return h.Seq
}

func freeAll(t testing.TB, s *Store[payload], ts []token.Token) {
	t.Helper()
	for _, tok := range ts {
		if err := s.Free(tok); err != nil {
			t.Fatal(err)
		}
	}
}

func TestBatchEmpty(t *testing.T) {
	s := newStore[payload](t, 4)
	e := mustEdge(t, s, Policy{MaxItems: 2})
	if n, err := e.SendBatch(context.Background(), nil); n != 0 || err != nil {
		t.Fatalf("SendBatch(nil) = %d, %v", n, err)
	}
	// RecvBatch of an empty slice returns at once, even on an empty edge
	// with a context that never ends.
	if n, err := e.RecvBatch(context.Background(), nil); n != 0 || err != nil {
		t.Fatalf("RecvBatch(nil) = %d, %v", n, err)
	}
	if st := e.Stats(); st != (EdgeStats{}) {
		t.Fatalf("empty batches changed Stats: %+v", st)
	}
}

// TestSendBatchBlockStreams sends a batch much larger than a Block edge's
// cap: it must wait and send the rest as a receiver makes room, in order,
// and count one wait. It also checks that the receiver is woken for what a
// waiting batch already admitted (else both sides would wait forever).
func TestSendBatchBlockStreams(t *testing.T) {
	const n = 1000
	s := newStore[payload](t, n)
	e := mustEdge(t, s, Policy{MaxItems: 4})
	ts := putN(t, s, n, BestEffort)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []uint64
	done := make(chan error, 1)
	go func() {
		var dst [7]token.Token
		for len(got) < n {
			k, err := e.RecvBatch(ctx, dst[:])
			if err != nil {
				done <- err
				return
			}
			for _, tok := range dst[:k] {
				got = append(got, seqOf(t, s, tok))
				s.Free(tok)
			}
		}
		done <- nil
	}()
	// The receiver is parked when the batch fills the edge and waits.
	waitFor(t, func() bool { return e.recvq.linked.Load() == 1 })
	sent, err := e.SendBatch(ctx, ts)
	if sent != n || err != nil {
		t.Fatalf("SendBatch = %d, %v", sent, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("receiver: %v (got %d)", err, len(got))
	}
	for i, q := range got {
		if q != uint64(i) {
			t.Fatalf("received Seq %d at %d: order lost", q, i)
		}
	}
	st := e.Stats()
	if st.Admitted != n || st.Delivered != n || st.Waited != 1 || st.Rejected != 0 || st.HighWater > 4 {
		t.Fatalf("Stats = %+v", st)
	}
	if s.Available() != s.Capacity() {
		t.Fatal("leak")
	}
}

func TestSendBatchContextDone(t *testing.T) {
	s := newStore[payload](t, 16)
	e := mustEdge(t, s, Policy{MaxItems: 3})
	ts := putN(t, s, 10, BestEffort)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	n, err := e.SendBatch(ctx, ts)
	if n != 3 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("SendBatch = %d, %v; want 3, DeadlineExceeded", n, err)
	}
	if st := e.Stats(); st.Admitted != 3 || st.Waited != 1 || st.Rejected != 1 {
		t.Fatalf("Stats = %+v", st)
	}
	// The caller kept ts[3:]; with a done context and room, the rest goes.
	e.Drain()
	n, err = e.SendBatch(ctx, ts[3:6])
	if n != 3 || err != nil {
		t.Fatalf("SendBatch with room and a done context = %d, %v", n, err)
	}
	e.Drain()
	freeAll(t, s, ts[6:])
	if s.Available() != s.Capacity() {
		t.Fatal("leak")
	}
}

// TestSendBatchStopsAtRefusal: the batch stops at the first refused token,
// whatever the reason, and the caller keeps it and the rest. Batches longer
// than one lock's chunk keep going across chunks.
func TestSendBatchStopsAtRefusal(t *testing.T) {
	s := newStore[payload](t, 128)
	full := mustEdge(t, s, Policy{MaxItems: 50, Admission: DropNewest})
	ts := putN(t, s, 100, BestEffort)
	n, err := full.SendBatch(nilCtx, ts)
	if n != 50 || !errors.Is(err, ErrEdgeFull) || !errors.Is(err, ErrRejected) {
		t.Fatalf("SendBatch of 100 into 50 = %d, %v", n, err)
	}
	if st := full.Stats(); st.Admitted != 50 || st.Rejected != 1 {
		t.Fatalf("Stats = %+v; want 50 admitted, 1 rejected (the rest not tried)", st)
	}
	full.Drain()

	e := mustEdge(t, s, Policy{})
	expired, _ := s.Put(Header{Deadline: 1}, payload{})
	mixed := []token.Token{ts[50], ts[51], expired, ts[52]}
	n, err = e.SendBatch(nilCtx, mixed)
	if n != 2 || !errors.Is(err, ErrExpired) || !errors.Is(err, ErrRejected) {
		t.Fatalf("SendBatch with an expired third = %d, %v", n, err)
	}
	mixed = []token.Token{ts[52], token.Nil, ts[53]}
	n, err = e.SendBatch(nilCtx, mixed)
	if n != 1 || err == nil {
		t.Fatalf("SendBatch with a Nil second = %d, %v", n, err)
	}
	e.Close()
	n, err = e.SendBatch(nilCtx, ts[53:55])
	if n != 0 || !errors.Is(err, ErrEdgeClosed) {
		t.Fatalf("SendBatch on a closed edge = %d, %v", n, err)
	}
	if st := e.Stats(); st.Admitted != 3 || st.Rejected != 2 || st.Invalid != 1 {
		t.Fatalf("Stats = %+v", st)
	}
	e.Drain()
	freeAll(t, s, ts[53:])
	s.Free(expired)
	if s.Available() != s.Capacity() {
		t.Fatal("leak")
	}
}

// TestSendBatchChunksDoNotShareFlags sends a batch longer than one chunk
// (sendChunk tokens are checked at a time, into reused entries): a token
// must not inherit DegradeAllowed from the token at its place in the chunk
// before, or an expired message gets in.
func TestSendBatchChunksDoNotShareFlags(t *testing.T) {
	s := newStore[payload](t, 2*sendChunk)
	e := mustEdge(t, s, Policy{})
	ts := make([]token.Token, sendChunk+1)
	for i := range ts {
		h := Header{Seq: uint64(i), Deadline: Now() + int64(time.Hour)}
		if i == 0 {
			h.Deadline, h.Flags = 1, DegradeAllowed // expired, but may arrive late
		}
		if i == sendChunk {
			h.Deadline = 1 // expired, and may not
		}
		tok, err := s.Put(h, payload{})
		if err != nil {
			t.Fatal(err)
		}
		ts[i] = tok
	}
	n, err := e.SendBatch(nilCtx, ts)
	if n != sendChunk || !errors.Is(err, ErrExpired) {
		t.Fatalf("SendBatch = %d, %v; want %d, ErrExpired (the first of the second chunk is expired)", n, err, sendChunk)
	}
	e.Drain()
	s.Free(ts[sendChunk])
	if s.Available() != s.Capacity() {
		t.Fatal("leak")
	}
}

func TestSendBatchDropOldest(t *testing.T) {
	s := newStore[payload](t, 16)
	e := mustEdge(t, s, Policy{MaxItems: 4, Admission: DropOldest})
	ts := putN(t, s, 10, BestEffort)
	if n, err := e.SendBatch(nilCtx, ts); n != 10 || err != nil {
		t.Fatalf("SendBatch = %d, %v", n, err)
	}
	var dst [8]token.Token
	n, err := e.RecvBatch(nilCtx, dst[:])
	if n != 4 || err != nil {
		t.Fatalf("RecvBatch = %d, %v", n, err)
	}
	for i, tok := range dst[:n] {
		if q := seqOf(t, s, tok); q != uint64(6+i) {
			t.Fatalf("kept Seq %d at %d, want the newest four", q, i)
		}
	}
	freeAll(t, s, dst[:n])
	if st := e.Stats(); st.Evicted != 6 || s.Available() != s.Capacity() {
		t.Fatalf("Stats = %+v, available %d", st, s.Available())
	}
}

// TestSendBatchRequeuesBehindWaiters: a batch that sent part of its tokens
// and has to wait again queues behind the senders that waited meanwhile.
func TestSendBatchRequeuesBehindWaiters(t *testing.T) {
	s := newStore[payload](t, 8)
	e := mustEdge(t, s, Policy{MaxItems: 1})
	a := putN(t, s, 3, BestEffort) // Seq 0, 1, 2
	b, _ := s.Put(Header{Seq: 100}, payload{})
	ctx := context.Background()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); e.SendBatch(ctx, a) }()
	waitFor(t, func() bool { return e.Len() == 1 && e.waitingSenders() == 1 })
	go func() { defer wg.Done(); e.Send(ctx, b) }()
	waitFor(t, func() bool { return e.waitingSenders() == 2 })
	var got []uint64
	recvOne := func() {
		tok, ok := e.TryRecv()
		if !ok {
			t.Fatal("TryRecv found nothing")
		}
		got = append(got, seqOf(t, s, tok))
		s.Free(tok)
	}
	recvOne() // 0; the batch sends 1 and waits again, behind b
	waitFor(t, func() bool { return e.Len() == 1 && e.waitingSenders() == 2 })
	recvOne() // 1; b goes in
	waitFor(t, func() bool { return e.Len() == 1 && e.waitingSenders() == 1 })
	recvOne() // 100; the batch's last goes in
	waitFor(t, func() bool { return e.Len() == 1 })
	recvOne()
	wg.Wait()
	want := []uint64{0, 1, 100, 2}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("received %v, want %v", got, want)
		}
	}
}

func (e *Edge) waitingSenders() int { return int(e.sendq.linked.Load()) }

// TestRecvBatchLanesAndLimits: the LatencyCritical lane first, at most
// len(dst), expired messages freed on the way, and the errors of Recv.
func TestRecvBatchLanesAndLimits(t *testing.T) {
	s := newStore[payload](t, 16)
	e := mustEdge(t, s, Policy{})
	for i, q := range []QoS{BestEffort, Background, LatencyCritical, BestEffort, LatencyCritical} {
		tok, _ := s.Put(Header{Seq: uint64(i), QoS: q}, payload{})
		e.TrySend(tok)
	}
	soon, _ := s.Put(Header{Seq: 9, Deadline: Now() + int64(usShortLife)}, payload{})
	e.TrySend(soon)
	usOutlive()
	var dst [3]token.Token
	n, err := e.RecvBatch(nilCtx, dst[:])
	if n != 3 || err != nil {
		t.Fatalf("RecvBatch = %d, %v", n, err)
	}
	var got []uint64
	for _, tok := range dst[:n] {
		got = append(got, seqOf(t, s, tok))
	}
	freeAll(t, s, dst[:n])
	n, err = e.RecvBatch(nilCtx, dst[:])
	for _, tok := range dst[:n] {
		got = append(got, seqOf(t, s, tok))
	}
	freeAll(t, s, dst[:n])
	want := []uint64{2, 4, 0, 1, 3} // 9 expired
	if n != 2 || err != nil || len(got) != len(want) {
		t.Fatalf("second RecvBatch = %d, %v; got %v", n, err, got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("received %v, want %v", got, want)
		}
	}
	if st := e.Stats(); st.Expired != 1 || st.Delivered != 5 {
		t.Fatalf("Stats = %+v", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	if n, err := e.RecvBatch(ctx, dst[:]); n != 0 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RecvBatch on an empty edge = %d, %v", n, err)
	}
	e.Close()
	if n, err := e.RecvBatch(nilCtx, dst[:]); n != 0 || !errors.Is(err, ErrEdgeClosed) {
		t.Fatalf("RecvBatch on a closed empty edge = %d, %v", n, err)
	}
	if s.Available() != s.Capacity() {
		t.Fatal("leak")
	}
}

// TestSendBatchWakesReceiverOnce: a receiver parked in RecvBatch gets the
// whole batch: the batch is admitted under one lock and the receiver is
// signalled once, after it.
func TestSendBatchWakesReceiverOnce(t *testing.T) {
	s := newStore[payload](t, 32)
	e := mustEdge(t, s, Policy{})
	ts := putN(t, s, 16, BestEffort)
	res := make(chan int, 1)
	go func() {
		var dst [32]token.Token
		n, err := e.RecvBatch(context.Background(), dst[:])
		if err != nil {
			t.Error(err)
		}
		freeAll(t, s, dst[:n])
		res <- n
	}()
	waitFor(t, func() bool { return e.recvq.linked.Load() == 1 })
	if n, err := e.SendBatch(nilCtx, ts); n != 16 || err != nil {
		t.Fatalf("SendBatch = %d, %v", n, err)
	}
	if n := <-res; n != 16 {
		t.Fatalf("the parked receiver got %d of a batch of 16", n)
	}
}

// TestRecvBatchManyReceivers: producers with SendBatch, consumers with
// RecvBatch and Recv, under -race: every token delivered exactly once.
func TestRecvBatchManyReceivers(t *testing.T) {
	const producers, per = 3, 400
	s := newStore[payload](t, producers*per)
	e := mustEdge(t, s, Policy{MaxItems: 8, MaxBytes: 40})
	var all [][]token.Token
	for p := 0; p < producers; p++ {
		all = append(all, putN(t, s, per, QoS(1+p%3)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	seen := make([]int, producers*per)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for c := 0; c < 3; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var dst [5]token.Token
			for {
				var n int
				var err error
				if c == 0 {
					dst[0], err = e.Recv(ctx)
					n = 1
				} else {
					n, err = e.RecvBatch(ctx, dst[:c*2])
				}
				if err != nil {
					if !errors.Is(err, ErrEdgeClosed) {
						t.Error(err)
					}
					return
				}
				for _, tok := range dst[:n] {
					mu.Lock()
					seen[tok.Index()]++
					mu.Unlock()
					s.Free(tok)
				}
			}
		}()
	}
	var pwg sync.WaitGroup
	for p := range all {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			ts := all[p]
			for len(ts) > 0 {
				k := min(len(ts), 1+len(ts)%13)
				n, err := e.SendBatch(ctx, ts[:k])
				if err != nil {
					t.Error(err)
					return
				}
				ts = ts[n:]
			}
		}()
	}
	pwg.Wait()
	e.Close()
	wg.Wait()
	for i, c := range seen {
		if c != 1 {
			t.Fatalf("slot %d delivered %d times", i, c)
		}
	}
	if st := e.Stats(); st.Delivered != producers*per || s.Available() != s.Capacity() {
		t.Fatalf("Stats = %+v, available %d", st, s.Available())
	}
}

func TestBatchNoAllocs(t *testing.T) {
	s := newStore[payload](t, 64)
	e := mustEdge(t, s, Policy{MaxItems: 32})
	ts := putN(t, s, 16, BestEffort)
	var dst [16]token.Token
	ctx := context.Background()
	allocs := testing.AllocsPerRun(200, func() {
		if n, err := e.SendBatch(ctx, ts); n != 16 || err != nil {
			t.Fatal(n, err)
		}
		if n, err := e.RecvBatch(ctx, dst[:]); n != 16 || err != nil {
			t.Fatal(n, err)
		}
	})
	if allocs != 0 {
		t.Fatalf("SendBatch+RecvBatch of 16: %v allocs", allocs)
	}
}

// nilCtx is a nil context.Context, for the tests of "a nil ctx waits like
// Background" (a variable, so that linters do not flag a literal nil).
var nilCtx context.Context

// TestSendBatchMatchesSend checks SendBatch against Send, token by token,
// on long random batches (several chunks of sendChunk) of messages with
// every kind of header admission looks at (expired or not, DegradeAllowed,
// each QoS, an invalid QoS, sizes over MaxBytes) and every kind of bad
// token (Nil, stale): SendBatch must take the same prefix Send takes one by
// one, stop with the same error, deliver the same order and count the same
// Stats.
func TestSendBatchMatchesSend(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 9))
	policies := []Policy{
		{MaxItems: 100, Admission: DropNewest},                // the fast ring
		{MaxItems: 70, MaxBytes: 4000, Admission: DropNewest}, // locked, byte cap
		{MaxItems: 90, Admission: DeadlineQoS, SoftItems: 60}, // locked, shedding
	}
	s := newStore[payload](t, 512)
	crossed := 0 // trials whose batch got past the first chunk
	for trial := range 300 {
		pol := policies[trial%len(policies)]
		a, b := mustEdge(t, s, pol), mustEdge(t, s, pol)
		n := rng.IntN(3*sendChunk + 8)
		ts := make([]token.Token, n)
		var stale []token.Token
		for i := range ts {
			h := Header{Seq: uint64(i), QoS: QoS(rng.IntN(4)), Size: uint32(1 + rng.IntN(64))}
			// Mostly admissible headers, so that batches run past a chunk
			// or two before the first refusal.
			switch r := rng.IntN(100); {
			case r < 20:
				h.Deadline, h.Flags = 1, DegradeAllowed // expired, may be late
			case r < 35:
				h.Deadline = Now() + int64(time.Hour)
			case r < 36:
				h.Deadline = 1 // expired: refused
			case r < 37:
				h.QoS = LatencyCritical + 1 + QoS(rng.IntN(3)) // invalid
			case r < 38:
				h.Size = 5000 // over MaxBytes where there is one
			}
			tok, err := s.Put(h, payload{A: uint64(i)})
			if err != nil {
				t.Fatal(err)
			}
			ts[i] = tok
			switch rng.IntN(150) {
			case 0:
				ts[i] = token.Nil
				s.Free(tok)
			case 1:
				stale = append(stale, tok)
				s.Free(tok)
			}
		}
		na, errA := a.SendBatch(nilCtx, ts)
		if na > sendChunk {
			crossed++
		}
		nb := 0
		var errB error
		for _, tok := range ts {
			if errB = b.TrySend(tok); errB != nil {
				break
			}
			nb++
		}
		if na != nb || (errA == nil) != (errB == nil) {
			t.Fatalf("trial %d (%+v): SendBatch = %d, %v; Send one by one took %d, then %v", trial, pol, na, errA, nb, errB)
		}
		for _, target := range []error{ErrRejected, ErrExpired, ErrEdgeFull, arena.ErrStale, arena.ErrBadToken} {
			if errors.Is(errA, target) != errors.Is(errB, target) {
				t.Fatalf("trial %d: SendBatch's %v and Send's %v differ on %v", trial, errA, errB, target)
			}
		}
		if sa, sb := a.Stats(), b.Stats(); sa != sb {
			t.Fatalf("trial %d: Stats after SendBatch %+v, after Sends %+v", trial, sa, sb)
		}
		// Both edges hold the same tokens in the same order (one reference
		// for the two of them: receive from both, free once).
		for {
			ta, okA := a.TryRecv()
			tb, okB := b.TryRecv()
			if okA != okB || ta != tb {
				t.Fatalf("trial %d: received %v/%v from the batch edge, %v/%v from the other", trial, ta, okA, tb, okB)
			}
			if !okA {
				break
			}
		}
		for _, tok := range ts {
			if !tok.IsNil() && !slices.Contains(stale, tok) {
				if err := s.Free(tok); err != nil {
					t.Fatal(err)
				}
			}
		}
		a.Close()
		b.Close()
	}
	if s.Available() != s.Capacity() {
		t.Fatalf("leak: %d of %d free", s.Available(), s.Capacity())
	}
	if crossed < 30 {
		t.Fatalf("only %d of 300 batches got past their first chunk: the test does not test chunks", crossed)
	}
}
