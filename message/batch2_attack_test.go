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

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// b2Store is a store of payload with slots slots, closed at cleanup.
func b2Store(t testing.TB, slots int) *Store[payload] {
	t.Helper()
	s, err := NewStore[payload](arena.Config{Slots: slots, Shards: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func b2Put(t testing.TB, s *Store[payload], h Header) token.Token {
	t.Helper()
	tok, err := s.Put(h, payload{A: h.Seq})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func b2WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

func b2CheckFull(t testing.TB, s *Store[payload]) {
	t.Helper()
	if s.Available() != s.Capacity() {
		live := 0
		for range s.Tokens() {
			live++
		}
		t.Fatalf("leak: Available %d of %d (%d live messages)", s.Available(), s.Capacity(), live)
	}
}

// TestBatch2HandedBatchBypassesWaitingSender: a Block SendBatch that was
// handed its first token (wakeSendersLocked) goes on admitting the rest of
// its batch ahead of a sender that was already parked behind it. The doc
// promises "after it has sent part of its batch it queues again behind the
// senders that were already waiting, so a long batch cannot starve them",
// and Send's FIFO rule "a new sender queues behind senders that are already
// waiting". A sequence of Sends would put b[1] behind the parked large
// sender; the batch does not.
func TestBatch2HandedBatchBypassesWaitingSender(t *testing.T) {
	for _, mode := range []string{"batch", "sends"} {
		t.Run(mode, func(t *testing.T) { b2HandedBypass(t, mode) })
	}
}

func b2HandedBypass(t *testing.T, mode string) {
	s := b2Store(t, 64)
	e := mustEdge(t, s, Policy{MaxBytes: 100, Admission: Block})
	ctx := context.Background()
	x := b2Put(t, s, Header{Seq: 1, Size: 60})
	y := b2Put(t, s, Header{Seq: 2, Size: 40})
	if err := e.Send(ctx, x); err != nil {
		t.Fatal(err)
	}
	if err := e.Send(ctx, y); err != nil {
		t.Fatal(err)
	}
	// The batch parks first (its head needs 10 bytes), then a large
	// sender (55 bytes) parks behind it.
	batch := []token.Token{
		b2Put(t, s, Header{Seq: 10, Size: 10}),
		b2Put(t, s, Header{Seq: 11, Size: 10}),
		b2Put(t, s, Header{Seq: 12, Size: 10}),
		b2Put(t, s, Header{Seq: 13, Size: 10}),
	}
	large := b2Put(t, s, Header{Seq: 99, Size: 55})
	var sent atomic.Int64
	bdone := make(chan error, 1)
	go func() {
		if mode == "batch" {
			n, err := e.SendBatch(ctx, batch)
			sent.Store(int64(n))
			bdone <- err
			return
		}
		for _, tk := range batch {
			if err := e.Send(ctx, tk); err != nil {
				bdone <- err
				return
			}
			sent.Add(1)
		}
		bdone <- nil
	}()
	b2WaitFor(t, "batch parked", func() bool { return e.waitingSenders() == 1 })
	ldone := make(chan error, 1)
	go func() { ldone <- e.Send(ctx, large) }()
	b2WaitFor(t, "large sender parked", func() bool { return e.waitingSenders() == 2 })

	// Receive x: 60 bytes of room. The batch's head (10) is handed in; the
	// large sender (55) does not fit in the 50 left and stays the head of
	// the queue. With Sends one by one, b[1] now queues behind it.
	tok, ok := e.TryRecv()
	if !ok || tok != x {
		t.Fatalf("TryRecv = %v,%v want x", tok, ok)
	}
	s.Free(tok)
	time.Sleep(20 * time.Millisecond) // let the batch run
	bytes := e.Bytes()
	inAhead := sent.Load()
	// Clean up: close wakes everyone.
	e.Close()
	<-bdone
	if lerr := <-ldone; lerr != nil {
		s.Free(large)
	}
	for _, tk := range batch[sent.Load():] {
		s.Free(tk)
	}
	e.Drain()
	b2CheckFull(t, s)
	if inAhead > 1 {
		t.Fatalf("%s: %d of the 4 tokens got in (edge bytes now %d) ahead of a sender parked behind the batch; "+
			"only the handed-in head may go before the parked large sender (FIFO of blocked senders)", mode, inAhead, bytes)
	}
}

// TestBatch2LaterTokenExpiresWhileBatchWaits: a Block SendBatch whose head
// waits for room admits a later token whose deadline passed while it
// waited. Send one by one checks each token's deadline when it is sent
// ("a send of an already expired message is refused with ErrExpired (the
// caller keeps it)"), and SendBatch promises "the same ... deadline
// checks": the batch must stop at the expired token with ErrExpired.
func TestBatch2LaterTokenExpiresWhileBatchWaits(t *testing.T) {
	for _, mode := range []string{"batch", "sends"} {
		t.Run(mode, func(t *testing.T) {
			s := b2Store(t, 64)
			e := mustEdge(t, s, Policy{MaxItems: 2, Admission: Block})
			ctx := context.Background()
			f1 := b2Put(t, s, Header{Seq: 1})
			f2 := b2Put(t, s, Header{Seq: 2})
			e.Send(ctx, f1)
			e.Send(ctx, f2)
			a := b2Put(t, s, Header{Seq: 10})
			b := b2Put(t, s, Header{Seq: 11, Deadline: Now() + int64(20*time.Millisecond)})
			type res struct {
				n   int
				err error
			}
			done := make(chan res, 1)
			go func() {
				if mode == "batch" {
					n, err := e.SendBatch(ctx, []token.Token{a, b})
					done <- res{n, err}
					return
				}
				if err := e.Send(ctx, a); err != nil {
					done <- res{0, err}
					return
				}
				if err := e.Send(ctx, b); err != nil {
					done <- res{1, err}
					return
				}
				done <- res{2, nil}
			}()
			b2WaitFor(t, "sender parked", func() bool { return e.waitingSenders() == 1 })
			time.Sleep(40 * time.Millisecond) // b's deadline passes
			var dst [2]token.Token
			n, err := e.RecvBatch(ctx, dst[:])
			if n != 2 || err != nil {
				t.Fatalf("RecvBatch = %d, %v", n, err)
			}
			s.Free(dst[0])
			s.Free(dst[1])
			r := <-done
			for _, tk := range []token.Token{a, b}[r.n:] {
				s.Free(tk)
			}
			st := e.Stats()
			e.Close()
			e.Drain()
			b2CheckFull(t, s)
			if r.n != 1 || !errors.Is(r.err, ErrExpired) {
				t.Fatalf("%s: sent %d, err %v; want 1, ErrExpired (b expired before it was sent). Stats %+v", mode, r.n, r.err, st)
			}
		})
	}
}

// b2Twin is the same message put in two stores: a for the batch edge, b for
// the edge driven token by token.
type b2Twin struct {
	a, b  token.Token
	stale bool // freed before being sent (both copies)
	nil_  bool // sent as token.Nil
}

// TestBatch2DifferentialModel drives two edges with the same policy through
// the same random sequence of operations: edge A with SendBatch and
// RecvBatch, edge B with Send/TrySend and TryRecv one token at a time. Each
// message exists in two stores (one per edge) with the same header. Batches
// mix lanes, sizes, far and passed deadlines (with and without
// DegradeAllowed), invalid QoS, oversize messages, stale and Nil tokens and
// duplicates, and run longer than the caps and than a chunk. Under Block a
// batch runs with a cancelled context (it may only give up where a Send
// would wait). Checked after every operation: n and error class, received
// Seq order, Stats (every field), and at the end that both stores are
// whole again.
func TestBatch2DifferentialModel(t *testing.T) {
	pols := []Policy{
		{MaxItems: 5, Admission: Block},
		{MaxItems: 40, Admission: Block},
		{MaxItems: 30, MaxBytes: 300, SoftBytes: 100, Admission: Block},
		{MaxItems: 6, Admission: DropNewest},
		{MaxItems: 50, SoftItems: 20, Admission: DropNewest},
		{MaxBytes: 120, Admission: DropNewest},
		{MaxItems: 4, Admission: DropOldest},
		{MaxItems: 70, Admission: DropOldest},
		{MaxItems: 20, MaxBytes: 150, Admission: DropOldest},
		{MaxItems: 8, SoftItems: 4, Admission: DeadlineQoS},
		{MaxItems: 40, MaxBytes: 200, SoftBytes: 80, Admission: DeadlineQoS},
		{MaxItems: 10, Admission: DeadlineQoS},
		{MaxItems: 300, Admission: DropNewest}, // a 256-cell ring that fills
		{MaxItems: 260, Admission: DropOldest},
		{Admission: Block}, // no cap: bounded by the store
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for pi, pol := range pols {
		t.Run(fmt.Sprint(pi), func(t *testing.T) {
			for seed := uint64(0); seed < 2; seed++ {
				b2Differential(t, pol, seed, cancelled)
			}
		})
	}
}

func b2Differential(t *testing.T, pol Policy, seed uint64, cancelled context.Context) {
	sa := b2Store(t, 1024)
	sb := b2Store(t, 1024)
	ea := mustEdge(t, sa, pol)
	eb := mustEdge(t, sb, pol)
	rng := rand.New(rand.NewPCG(seed, 0xb2))
	var seq uint64
	closed := false
	newTwin := func(plain bool) b2Twin {
		seq++
		h := Header{Seq: seq, Size: uint32(1 + rng.IntN(30))}
		if !plain {
			switch r := rng.IntN(100); {
			case r < 20:
				h.QoS = LatencyCritical
			case r < 40:
				h.QoS = Background
			case r < 50:
				h.Deadline = Now() + int64(time.Hour)
			case r < 58:
				h.Deadline, h.Flags = 1, DegradeAllowed // late, deliverable
			case r < 60:
				h.Deadline = 1 // expired: refused
			case r < 61:
				h.QoS = 7 // invalid
			case r < 62:
				h.Size = 1000 // over MaxBytes where there is one
			}
			if rng.IntN(3) == 0 && h.QoS == 0 {
				h.QoS = QoS(1 + rng.IntN(3))
			}
		}
		tw := b2Twin{a: b2Put(t, sa, h), b: b2Put(t, sb, h)}
		switch rng.IntN(80) {
		case 0:
			sa.Free(tw.a)
			sb.Free(tw.b)
			tw.stale = true
		case 1:
			sa.Free(tw.a)
			sb.Free(tw.b)
			tw.a, tw.b, tw.nil_ = token.Nil, token.Nil, true
		}
		return tw
	}
	seqA := func(tok token.Token) uint64 {
		h, err := sa.Header(tok)
		if err != nil {
			t.Fatalf("seed %d: header of received %v: %v", seed, tok, err)
		}
		return h.Seq
	}
	seqB := func(tok token.Token) uint64 {
		h, err := sb.Header(tok)
		if err != nil {
			t.Fatalf("seed %d: header of received %v: %v", seed, tok, err)
		}
		return h.Seq
	}
	classes := []error{ErrRejected, ErrExpired, ErrEdgeFull, ErrEdgeClosed, arena.ErrStale, arena.ErrBadToken, context.Canceled}
	for step := 0; step < 400; step++ {
		switch r := rng.IntN(20); {
		case r < 8: // a batch
			k := 1 + rng.IntN(50)
			if rng.IntN(8) == 0 {
				k = sendChunk + 1 + rng.IntN(2*sendChunk)
			}
			plainRun := rng.IntN(3) == 0
			tws := make([]b2Twin, k)
			ta := make([]token.Token, k)
			tb := make([]token.Token, k)
			for i := range tws {
				tws[i] = newTwin(plainRun)
				if i > 0 && rng.IntN(60) == 0 && !tws[i-1].nil_ && !tws[i-1].stale {
					// A duplicate: the same token twice in one batch, with
					// one extra reference so that both copies are owned.
					sa.Free(tws[i].a)
					sb.Free(tws[i].b)
					tws[i] = tws[i-1]
					sa.Retain(tws[i].a)
					sb.Retain(tws[i].b)
				}
				ta[i], tb[i] = tws[i].a, tws[i].b
			}
			na, errA := ea.SendBatch(cancelled, ta)
			nb := 0
			var errB error
			for _, tok := range tb {
				if errB = eb.Send(cancelled, tok); errB != nil {
					break
				}
				nb++
			}
			if na != nb || (errA == nil) != (errB == nil) {
				t.Fatalf("seed %d step %d %+v: SendBatch(%d) = %d, %v; Sends took %d, then %v", seed, step, pol, k, na, errA, nb, errB)
			}
			for _, c := range classes {
				if errors.Is(errA, c) != errors.Is(errB, c) {
					t.Fatalf("seed %d step %d: SendBatch error %v and Send error %v differ on %v", seed, step, errA, errB, c)
				}
			}
			for i := na; i < k; i++ {
				if !tws[i].nil_ && !tws[i].stale {
					if err := sa.Free(ta[i]); err != nil {
						t.Fatalf("free of a refused token: %v", err)
					}
					if err := sb.Free(tb[i]); err != nil {
						t.Fatalf("free of a refused token: %v", err)
					}
				}
			}
		case r < 11: // single sends on both
			tw := newTwin(rng.IntN(2) == 0)
			errA := ea.TrySend(tw.a)
			errB := eb.Send(cancelled, tw.b)
			if pol.Admission == Block && errors.Is(errB, context.Canceled) {
				// TrySend says ErrEdgeFull where Send waits: count it alike
				// by sending A's copy the same way.
				if !errors.Is(errA, ErrEdgeFull) {
					t.Fatalf("seed %d step %d: TrySend = %v where Send waited", seed, step, errA)
				}
				// Stats differ now (Waited): re-align by re-running on A.
				ea.mu.Lock()
				ea.st.Waited++
				ea.mu.Unlock()
			} else if (errA == nil) != (errB == nil) {
				t.Fatalf("seed %d step %d: TrySend %v vs Send %v", seed, step, errA, errB)
			}
			if errA != nil && !tw.nil_ && !tw.stale {
				sa.Free(tw.a)
			}
			if errB != nil && !tw.nil_ && !tw.stale {
				sb.Free(tw.b)
			}
		case r < 17: // receive a batch
			k := 1 + rng.IntN(40)
			dst := make([]token.Token, k)
			na, errA := ea.RecvBatch(cancelled, dst)
			var got []uint64
			for _, tok := range dst[:na] {
				got = append(got, seqA(tok))
				sa.Free(tok)
			}
			var want []uint64
			for len(want) < k {
				tok, ok := eb.TryRecv()
				if !ok {
					break
				}
				want = append(want, seqB(tok))
				sb.Free(tok)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("seed %d step %d %+v: RecvBatch(%d) = %v (%v); TryRecv one by one = %v", seed, step, pol, k, got, errA, want)
			}
			if na == 0 && errA == nil {
				t.Fatalf("RecvBatch returned 0, nil")
			}
			if na > 0 && errA != nil {
				t.Fatalf("RecvBatch returned %d, %v", na, errA)
			}
		case r < 18:
			if rng.IntN(4) == 0 {
				if da, db := ea.Drain(), eb.Drain(); da != db {
					t.Fatalf("Drain %d vs %d", da, db)
				}
			}
		case r < 19:
			if !closed && step > 300 && rng.IntN(3) == 0 {
				ea.Close()
				eb.Close()
				closed = true
			}
		}
		sA, sB := ea.Stats(), eb.Stats()
		if sA != sB {
			t.Fatalf("seed %d step %d %+v: Stats differ:\nbatch %+v\nsends %+v", seed, step, pol, sA, sB)
		}
	}
	ea.Close()
	eb.Close()
	ea.Drain()
	eb.Drain()
	if st := ea.Stats(); st.FreeErrors != 0 || st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained {
		t.Fatalf("batch edge: %+v", st)
	}
	b2CheckFull(t, sa)
	b2CheckFull(t, sb)
}

// b2Within runs f and fails the test if it does not return within d
// (a deadlock): the goroutine is left behind.
func b2Within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %v (deadlock)", what, d)
	}
}

// TestBatch2CloseInsideTokensLoop: Tokens' doc says "The loop body may call
// any store method", and Close is one; the store must close (and the
// iteration stop, "After Close it yields nothing"), not deadlock.
func TestBatch2CloseInsideTokensLoop(t *testing.T) {
	s, err := NewStore[payload](arena.Config{Slots: 64, Shards: 2})
	if err != nil {
		t.Fatal(err)
	}
	var toks []token.Token
	for i := range 10 {
		toks = append(toks, b2Put(t, s, Header{Seq: uint64(i)}))
	}
	yielded := 0
	var cerr error
	var freed token.Token
	b2Within(t, 2*time.Second, "Close inside a Tokens loop", func() {
		for tok := range s.Tokens() {
			yielded++
			if yielded == 1 {
				freed = tok
				if err := s.Free(tok); err != nil {
					t.Errorf("Free inside Tokens: %v", err)
				}
				cerr = s.Close()
			}
		}
	})
	if !errors.Is(cerr, ErrReferenced) {
		t.Errorf("Close with 9 references = %v", cerr)
	}
	if yielded != 1 {
		t.Errorf("Tokens yielded %d tokens, %d of them after Close", yielded, yielded-1)
	}
	// Tokens yields in slot order, which need not be Put's order (the
	// purego build's stripes spread Puts over both shards).
	for _, tok := range toks {
		if tok == freed {
			continue
		}
		if err := s.Free(tok); err != nil {
			t.Errorf("Free of a reference outstanding at Close: %v", err)
		}
	}
}

// TestBatch2PanicInCallbackDuringClose: a View, Update, PutFunc fill,
// Write fill, Read or Rewrite callback that panics while a Close waits for
// it: the panic reaches the caller, Close returns, and the store is closed
// (no fault, no hang).
func TestBatch2PanicInCallbackDuringClose(t *testing.T) {
	type boom struct{}
	for _, op := range []string{"View", "Update", "PutFunc", "Write", "Read", "Rewrite"} {
		t.Run(op, func(t *testing.T) {
			s, err := NewByteStore[[128]byte](arena.Config{Slots: 8, Shards: 1})
			if err != nil {
				t.Fatal(err)
			}
			tok, err := s.PutBytes(Header{}, []byte("abc"))
			if err != nil {
				t.Fatal(err)
			}
			inside := make(chan struct{})
			release := make(chan struct{})
			cb := func() {
				close(inside)
				<-release
				panic(boom{})
			}
			var got any
			var opErr error
			opDone := make(chan struct{})
			go func() {
				defer close(opDone)
				defer func() { got = recover() }()
				switch op {
				case "View":
					opErr = s.View(tok, func(*Message[[128]byte]) { cb() })
				case "Update":
					opErr = s.Update(tok, func(*Message[[128]byte]) { cb() })
				case "PutFunc":
					_, opErr = s.PutFunc(Header{}, func(*Message[[128]byte]) error { cb(); return nil })
				case "Write":
					_, opErr = s.Write(Header{}, func([]byte) (int, error) { cb(); return 0, nil })
				case "Read":
					opErr = s.Read(tok, func(Header, []byte) { cb() })
				case "Rewrite":
					opErr = s.Rewrite(tok, func([]byte, int) int { cb(); return 0 })
				}
			}()
			<-inside
			closeDone := make(chan error, 1)
			go func() { closeDone <- s.Close() }()
			time.Sleep(5 * time.Millisecond) // Close is waiting for the callback
			select {
			case err := <-closeDone:
				t.Fatalf("Close returned (%v) while a %s callback was still running", err, op)
			default:
			}
			close(release)
			<-opDone
			if _, ok := got.(boom); !ok {
				t.Errorf("%s: recovered %v (err %v), want the callback's panic", op, got, opErr)
			}
			select {
			case err := <-closeDone:
				if err != nil && !errors.Is(err, ErrReferenced) {
					t.Errorf("Close = %v", err)
				}
			case <-time.After(2 * time.Second):
				t.Fatalf("Close still waiting 2s after the %s callback panicked", op)
			}
			if err := s.View(tok, func(*Message[[128]byte]) {}); !errors.Is(err, arena.ErrClosed) {
				t.Errorf("View after Close = %v", err)
			}
			if err := s.Free(tok); err != nil {
				t.Errorf("Free of the reference outstanding at Close = %v", err)
			}
		})
	}
}

// TestBatch2EveryStoreMethodRacesClose: goroutines run every Store and
// ByteStore method (Put, PutWait parked on a full store, PutFunc, PutBytes,
// Write, Header, View, Update, Read, Rewrite, AppendTo, Retain, Free, Refs,
// Tokens, Trim, Available, Stats) plus SendBatch/RecvBatch of its tokens,
// while Close happens at a random moment. Every error must be nil,
// ErrClosed, ErrFull (non-wait puts), ErrStale after a close-raced free, or
// ErrReferenced from Close; no fault; PutWait waiters wake with ErrClosed.
func TestBatch2EveryStoreMethodRacesClose(t *testing.T) {
	ok := func(err error) bool {
		return err == nil || errors.Is(err, arena.ErrClosed) || errors.Is(err, arena.ErrFull)
	}
	for try := 0; try < 12; try++ {
		s, err := NewByteStore[[256]byte](arena.Config{Slots: 32, Shards: 2})
		if err != nil {
			t.Fatal(err)
		}
		e := mustEdge(t, s, Policy{MaxItems: 8, Admission: DropOldest})
		eb := mustEdge(t, s, Policy{MaxItems: 64, MaxBytes: 4096, Admission: DropNewest})
		var bad atomic.Value
		fail := func(op string, err error) { bad.CompareAndSwap(nil, fmt.Sprintf("%s: %v", op, err)) }
		var wg sync.WaitGroup
		stop := make(chan struct{})
		// Workers that put, use and free their own tokens.
		for g := 0; g < 3; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(try), uint64(g)))
				for i := 0; i < 300; i++ {
					var tok token.Token
					var err error
					switch rng.IntN(4) {
					case 0:
						tok, err = s.PutBytes(Header{Seq: uint64(i)}, []byte("hello"))
					case 1:
						tok, err = s.Write(Header{}, func(b []byte) (int, error) { return copy(b, "xyz"), nil })
					case 2:
						tok, err = s.PutFunc(Header{}, func(m *Message[[256]byte]) error { m.Payload[0] = 1; runtime.Gosched(); return nil })
					default:
						ctx, cancel := context.WithTimeout(context.Background(), 2*time.Millisecond)
						tok, err = s.PutWait(ctx, Header{}, [256]byte{})
						cancel()
						if errors.Is(err, context.DeadlineExceeded) {
							err = arena.ErrFull
						}
					}
					if err != nil {
						if !ok(err) {
							fail("put", err)
						}
						continue
					}
					owned := 1
					if err := s.Retain(tok); err == nil {
						owned++
					} else if !errors.Is(err, arena.ErrClosed) {
						fail("Retain", err)
					}
					for _, err := range []error{
						s.Read(tok, func(Header, []byte) {}),
						s.Rewrite(tok, func(_ []byte, n int) int { return n }),
						s.View(tok, func(*Message[[256]byte]) { runtime.Gosched() }),
						s.Update(tok, func(m *Message[[256]byte]) { m.Payload[1]++ }),
					} {
						if !ok(err) {
							fail("access", err)
						}
					}
					if _, err := s.Header(tok); !ok(err) {
						fail("Header", err)
					}
					if _, err := s.AppendTo(nil, tok); !ok(err) {
						fail("AppendTo", err)
					}
					if _, err := s.Refs(tok); !ok(err) {
						fail("Refs", err)
					}
					// A batch of this token's references, then receive some.
					batch := make([]token.Token, 0, 2)
					for j := 0; j < owned; j++ {
						batch = append(batch, tok)
					}
					ee := e
					if rng.IntN(2) == 0 {
						ee = eb
					}
					n, _ := ee.SendBatch(context.Background(), batch)
					owned -= n
					var dst [4]token.Token
					ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
					k, _ := ee.RecvBatch(ctx, dst[:])
					cancel()
					for _, got := range dst[:k] {
						if err := s.Free(got); err != nil {
							fail("Free of a received token", err)
						}
					}
					for ; owned > 0; owned-- {
						if err := s.Free(tok); err != nil {
							fail("Free of an owned reference", err)
						}
					}
				}
			}(g)
		}
		// Iterators, trimmers and readers of counters.
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				for tok := range s.Tokens() {
					if _, err := s.Header(tok); err != nil && !errors.Is(err, arena.ErrClosed) && !errors.Is(err, arena.ErrStale) {
						fail("Header of an iterated token", err)
					}
				}
				if _, err := s.Trim(); !ok(err) {
					fail("Trim", err)
				}
				_ = s.Available()
				_ = s.Stats()
				_ = s.Capacity()
				runtime.Gosched()
			}
		}()
		time.Sleep(time.Duration(try%6) * time.Millisecond)
		cerr := s.Close()
		if cerr != nil && !errors.Is(cerr, ErrReferenced) {
			t.Fatalf("try %d: Close = %v", try, cerr)
		}
		// Calls after Close must say ErrClosed.
		if _, err := s.PutWait(context.Background(), Header{}, [256]byte{}); !errors.Is(err, arena.ErrClosed) {
			t.Errorf("try %d: PutWait after Close = %v", try, err)
		}
		if _, err := s.Trim(); !errors.Is(err, arena.ErrClosed) {
			t.Errorf("try %d: Trim after Close = %v", try, err)
		}
		for range s.Tokens() {
			t.Errorf("try %d: Tokens yielded after Close", try)
			break
		}
		close(stop)
		b2Within(t, 3*time.Second, "workers after Close", wg.Wait)
		e.Close()
		eb.Close()
		e.Drain()
		eb.Drain()
		for _, ed := range []*Edge{e, eb} {
			if st := ed.Stats(); st.FreeErrors != 0 {
				t.Fatalf("try %d: draining after store Close: %d FreeErrors", try, st.FreeErrors)
			}
		}
		if v := bad.Load(); v != nil {
			t.Fatalf("try %d: %v", try, v)
		}
	}
}

// TestBatch2PutWaitWokenByClose: PutWait parked on a full store returns
// ErrClosed when the store is closed (and no slot is lost by its Free
// afterwards).
func TestBatch2PutWaitWokenByClose(t *testing.T) {
	s, err := NewStore[payload](arena.Config{Slots: 2, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	a := b2Put(t, s, Header{})
	b := b2Put(t, s, Header{})
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := s.PutWait(context.Background(), Header{}, payload{})
			errs <- err
		}()
	}
	time.Sleep(10 * time.Millisecond)
	cerr := s.Close()
	if !errors.Is(cerr, ErrReferenced) {
		t.Errorf("Close = %v", cerr)
	}
	for range 3 {
		select {
		case err := <-errs:
			if !errors.Is(err, arena.ErrClosed) {
				t.Errorf("parked PutWait = %v, want ErrClosed", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("parked PutWait not woken by Close")
		}
	}
	if s.Free(a) != nil || s.Free(b) != nil {
		t.Error("Free of references outstanding at Close failed")
	}
}

// TestBatch2GraphBurstyStagesGracefulStop: a source and two chained stages,
// one worker each, where the first stage emits its input plus up to 40 new
// messages per input (more than a graph batch of 16, so Emit flushes in
// the middle of the function), fanned out to a tiny Block edge and a tiny
// DropOldest edge; the second stage passes every token on to a tiny Block
// edge read by one sink. Messages carry all three QoS classes (extras
// inherit their input's) and some far deadlines. The graph is stopped
// gracefully at a random moment. Checks: every message emitted on the
// Block path reaches the sink (exact counts), within each lane the sink
// sees emission order, Run leaves no token in the edges, Stats balance,
// and every slot is back (Available == Capacity, Allocs == Frees).
func TestBatch2GraphBurstyStagesGracefulStop(t *testing.T) {
	for trial := 0; trial < 6; trial++ {
		s := b2Store(t, 256)
		e0 := mustEdge(t, s, Policy{MaxItems: 3, Admission: Block})
		e1 := mustEdge(t, s, Policy{MaxItems: 4, Admission: Block})
		eD := mustEdge(t, s, Policy{MaxItems: 2, Admission: DropOldest})
		e2 := mustEdge(t, s, Policy{MaxItems: 2, MaxBytes: 1 << 20, Admission: Block})
		var srcOK, st1In, st1Out, st2In, sinkGot, dGot atomic.Int64
		var orderErr atomic.Value
		qosOf := func(i uint64) QoS { return QoS(i % 4) } // 0 (BestEffort), 1, 2, 3
		g := NewGraph(s)
		g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
			for i := uint64(1); ; i++ {
				h := Header{Seq: i << 8, QoS: qosOf(i)}
				if i%3 == 0 {
					h.Deadline = Now() + int64(time.Hour)
				}
				tok, err := s.PutWait(ctx, h, payload{A: i})
				if err != nil {
					return err
				}
				if err := out.Emit(tok); err != nil {
					return err
				}
				srcOK.Add(1)
			}
		}, e0)
		g.Stage("burst", 1, e0, func(ctx context.Context, tok token.Token, out *Emitter) error {
			st1In.Add(1)
			h, err := s.Header(tok)
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
			st1Out.Add(1)
			k := int(h.Seq>>8) % 41
			for j := 1; j <= k; j++ {
				x, err := s.PutWait(ctx, Header{Seq: h.Seq | uint64(j), QoS: h.QoS, Deadline: h.Deadline}, payload{})
				if err != nil {
					return err
				}
				if err := out.Emit(x); err != nil {
					return err
				}
				st1Out.Add(1)
			}
			// A bad token emitted now and then: refused, nothing lost.
			if k%7 == 3 {
				if err := out.Emit(token.Nil); err == nil {
					return errors.New("Emit(Nil) = nil")
				}
			}
			return nil
		}, e1, eD)
		g.Stage("pass", 1, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
			st2In.Add(1)
			return out.Emit(tok)
		}, e2)
		var last [2]uint64
		g.Sink("sink", 1, e2, func(ctx context.Context, tok token.Token) error {
			sinkGot.Add(1)
			h, err := s.Header(tok)
			if err != nil {
				return err
			}
			lane := 0
			if h.QoS == LatencyCritical {
				lane = 1
			}
			if h.Seq <= last[lane] {
				orderErr.CompareAndSwap(nil, fmt.Sprintf("lane %d: Seq %#x after %#x", lane, h.Seq, last[lane]))
			}
			last[lane] = h.Seq
			return nil
		})
		g.Sink("drop", 1, eD, func(ctx context.Context, tok token.Token) error {
			dGot.Add(1)
			return nil
		})
		go func() {
			time.Sleep(time.Duration(5+trial*7) * time.Millisecond)
			g.Stop()
		}()
		var err error
		b2Within(t, 3*time.Second, "graceful Run", func() { err = g.Run(context.Background()) })
		if err != nil {
			t.Fatalf("trial %d: Run = %v", trial, err)
		}
		if v := orderErr.Load(); v != nil {
			t.Errorf("trial %d: sink order: %v", trial, v)
		}
		if srcOK.Load() != st1In.Load() || st1Out.Load() != st2In.Load() || st2In.Load() != sinkGot.Load() {
			t.Errorf("trial %d: src emitted %d, stage1 got %d and emitted %d, stage2 got %d, sink got %d",
				trial, srcOK.Load(), st1In.Load(), st1Out.Load(), st2In.Load(), sinkGot.Load())
		}
		if st := eD.Stats(); st.Delivered != uint64(dGot.Load()) || st.Admitted+st.Rejected != uint64(st1Out.Load()) {
			t.Errorf("trial %d: drop edge %+v, its sink got %d, stage emitted %d", trial, st, dGot.Load(), st1Out.Load())
		}
		for i, e := range []*Edge{e0, e1, eD, e2} {
			st := e.Stats()
			if st.Len != 0 || st.FreeErrors != 0 || st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained {
				t.Errorf("trial %d edge %d: %+v", trial, i, st)
			}
		}
		t.Logf("trial %d: src %d, stage1 out %d, sink %d, drop sink %d", trial, srcOK.Load(), st1Out.Load(), sinkGot.Load(), dGot.Load())
		b2CheckFull(t, s)
		if st := s.Stats(); st.Allocs != st.Frees {
			t.Errorf("trial %d: Allocs %d, Frees %d", trial, st.Allocs, st.Frees)
		}
	}
}

// TestBatch2GraphAbortWithBurstsInFlight: the same bursty stage with short
// deadlines (some expire in edges and in the stage's held-back batch), a
// slow sink, and an abort by context cancellation or by a sink error at a
// random moment: Run returns the cause, and every slot is back.
func TestBatch2GraphAbortWithBurstsInFlight(t *testing.T) {
	boom := errors.New("b2 boom")
	for trial := 0; trial < 6; trial++ {
		s := b2Store(t, 128)
		e0 := mustEdge(t, s, Policy{MaxItems: 4, Admission: Block})
		e1 := mustEdge(t, s, Policy{MaxItems: 5, MaxBytes: 400, SoftBytes: 100, Admission: DeadlineQoS})
		e2 := mustEdge(t, s, Policy{MaxItems: 3, Admission: Block})
		var got atomic.Int64
		g := NewGraph(s)
		g.Source("src", 2, func(ctx context.Context, out *Emitter) error {
			for i := uint64(1); ; i++ {
				h := Header{Seq: i, QoS: QoS(i % 4), Size: uint32(8 + i%40)}
				if i%2 == 0 {
					h.Deadline = Now() + int64(time.Duration(i%5)*200*time.Microsecond)
					if i%4 == 0 {
						h.Flags = DegradeAllowed
					}
				}
				tok, err := s.PutWait(ctx, h, payload{A: i})
				if err != nil {
					return err
				}
				if err := out.Emit(tok); err != nil {
					return err
				}
			}
		}, e0)
		g.Stage("burst", 2, e0, func(ctx context.Context, tok token.Token, out *Emitter) error {
			h, err := s.Header(tok)
			if err != nil {
				return err
			}
			if h.Seq%5 == 0 {
				if err := out.Free(tok); err != nil {
					return err
				}
			} else if err := out.Emit(tok); err != nil {
				return err
			}
			for j := uint64(0); j < h.Seq%25; j++ {
				x, err := s.PutWait(ctx, Header{Seq: h.Seq, QoS: QoS(j % 4), Deadline: h.Deadline, Size: uint32(j)}, payload{})
				if err != nil {
					return err
				}
				if err := out.Emit(x); err != nil {
					return err
				}
			}
			return nil
		}, e1, e2)
		g.Sink("a", 2, e1, func(ctx context.Context, tok token.Token) error {
			got.Add(1)
			return nil
		})
		g.Sink("b", 1, e2, func(ctx context.Context, tok token.Token) error {
			time.Sleep(20 * time.Microsecond)
			if got.Add(1) == int64(40+trial*20) && trial%2 == 1 {
				return boom
			}
			return nil
		})
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			time.Sleep(time.Duration(10+trial*5) * time.Millisecond)
			cancel()
		}()
		var err error
		b2Within(t, 3*time.Second, "aborted Run", func() { err = g.Run(ctx) })
		cancel()
		t.Logf("trial %d: Run = %v after %d received; e1 %+v", trial, err, got.Load(), e1.Stats())
		if !errors.Is(err, context.Canceled) && !errors.Is(err, boom) {
			t.Errorf("trial %d: Run = %v", trial, err)
		}
		for i, e := range []*Edge{e0, e1, e2} {
			st := e.Stats()
			if st.Len != 0 || st.FreeErrors != 0 || st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained {
				t.Errorf("trial %d edge %d: %+v", trial, i, st)
			}
		}
		b2CheckFull(t, s)
	}
}

// TestBatch2ConcurrentBatchOwnership: producers SendBatch random batches
// (mixed QoS, sizes, some far deadlines) with short context timeouts into
// Block, DropOldest and DeadlineQoS edges with byte caps, while consumers
// RecvBatch with random lengths and the edge is closed at a random moment.
// A ledger records who owns each token: the producer keeps ts[n:] (and must
// never see one of them received), a consumer owns what it receives (and
// must never receive a token twice, or one the producer kept). At the end:
// every token freed exactly once, Stats balance, Available == Capacity.
func TestBatch2ConcurrentBatchOwnership(t *testing.T) {
	pols := []Policy{
		{MaxItems: 6, Admission: Block},
		{MaxItems: 12, MaxBytes: 200, SoftBytes: 80, Admission: Block},
		{MaxItems: 5, Admission: DropOldest},
		{MaxItems: 16, MaxBytes: 150, SoftBytes: 60, SoftItems: 8, Admission: DeadlineQoS},
	}
	for pi, pol := range pols {
		t.Run(fmt.Sprint(pi), func(t *testing.T) {
			s := b2Store(t, 1024)
			e := mustEdge(t, s, pol)
			const (
				kept = iota + 1
				received
			)
			var mu sync.Mutex
			state := map[token.Token]int{}
			var bad atomic.Value
			fail := func(f string, a ...any) { bad.CompareAndSwap(nil, fmt.Sprintf(f, a...)) }
			var prod, cons sync.WaitGroup
			for p := 0; p < 3; p++ {
				prod.Add(1)
				go func(p int) {
					defer prod.Done()
					rng := rand.New(rand.NewPCG(uint64(pi), uint64(p)))
					for round := 0; round < 40; round++ {
						k := 1 + rng.IntN(20)
						ts := make([]token.Token, 0, k)
						for i := 0; i < k; i++ {
							h := Header{Seq: uint64(p)<<32 | uint64(round)<<8 | uint64(i), QoS: QoS(rng.IntN(4)), Size: uint32(1 + rng.IntN(20))}
							if rng.IntN(4) == 0 {
								h.Deadline = Now() + int64(time.Hour)
							}
							tok, err := s.PutWait(context.Background(), h, payload{})
							if err != nil {
								fail("PutWait: %v", err)
								return
							}
							ts = append(ts, tok)
						}
						ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(300))*time.Microsecond)
						n, err := e.SendBatch(ctx, ts)
						cancel()
						if n < 0 || n > k || (n < k) != (err != nil) {
							fail("SendBatch(%d) = %d, %v", k, n, err)
						}
						if err != nil && !errors.Is(err, ErrRejected) && !errors.Is(err, ErrEdgeClosed) && !errors.Is(err, context.DeadlineExceeded) {
							fail("SendBatch error %v", err)
						}
						mu.Lock()
						for _, tok := range ts[n:] {
							if state[tok] != 0 {
								fail("token %v kept by its producer was already %d", tok, state[tok])
							}
							state[tok] = kept
						}
						mu.Unlock()
						for _, tok := range ts[n:] {
							if err := s.Free(tok); err != nil {
								fail("Free of a kept token: %v", err)
							}
						}
						if errors.Is(err, ErrEdgeClosed) {
							return
						}
					}
				}(p)
			}
			for c := 0; c < 2; c++ {
				cons.Add(1)
				go func(c int) {
					defer cons.Done()
					rng := rand.New(rand.NewPCG(uint64(pi), 100+uint64(c)))
					dst := make([]token.Token, 24)
					for {
						n, err := e.RecvBatch(context.Background(), dst[:1+rng.IntN(len(dst))])
						if err != nil {
							if !errors.Is(err, ErrEdgeClosed) {
								fail("RecvBatch: %v", err)
							}
							return
						}
						mu.Lock()
						for _, tok := range dst[:n] {
							if state[tok] != 0 {
								fail("received %v, already %d", tok, state[tok])
							}
							state[tok] = received
						}
						mu.Unlock()
						for _, tok := range dst[:n] {
							if err := s.Free(tok); err != nil {
								fail("Free of a received token: %v", err)
							}
						}
						if rng.IntN(4) == 0 {
							runtime.Gosched()
						}
					}
				}(c)
			}
			time.Sleep(time.Duration(2+pi*3) * time.Millisecond)
			e.Close()
			b2Within(t, 3*time.Second, "producers", prod.Wait)
			b2Within(t, 3*time.Second, "consumers", cons.Wait)
			e.Drain()
			if v := bad.Load(); v != nil {
				t.Fatal(v)
			}
			st := e.Stats()
			if st.Len != 0 || st.FreeErrors != 0 || st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained {
				t.Fatalf("stats: %+v", st)
			}
			recv := 0
			for _, v := range state {
				if v == received {
					recv++
				}
			}
			if uint64(recv) != st.Delivered {
				t.Fatalf("consumers received %d, Stats.Delivered %d", recv, st.Delivered)
			}
			b2CheckFull(t, s)
		})
	}
}

// TestBatch2HugeStoresHeapCost: "NewStore's Go heap growth is O(1), under
// 4 MiB for 2^27 slots". Measured with TotalAlloc (every byte allocated,
// whatever a GC reclaimed meanwhile), for NewStore and NewByteStore, with
// the default shard count and with many shards.
func TestBatch2HugeStoresHeapCost(t *testing.T) {
	measure := func(name string, mk func() (func() error, error)) {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		closeFn, err := mk()
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		defer closeFn()
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 4<<20 {
			t.Errorf("%s allocated %d bytes on the Go heap", name, grew)
		}
	}
	measure("NewStore 2^27", func() (func() error, error) {
		s, err := NewStore[payload](arena.Config{Slots: 1 << 27})
		if err != nil {
			return nil, err
		}
		return s.Close, nil
	})
	measure("NewStore 2^27, 64 shards", func() (func() error, error) {
		s, err := NewStore[payload](arena.Config{Slots: 1 << 27, Shards: 64})
		if err != nil {
			return nil, err
		}
		return s.Close, nil
	})
	measure("NewByteStore[[64]byte] 2^27", func() (func() error, error) {
		s, err := NewByteStore[[64]byte](arena.Config{Slots: 1 << 27})
		if err != nil {
			return nil, err
		}
		return s.Close, nil
	})
}
