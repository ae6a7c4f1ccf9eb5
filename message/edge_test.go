package message

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
)

func mustEdge(t testing.TB, hs HeaderStore, p Policy) *Edge {
	t.Helper()
	e, err := NewEdge(hs, p)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestQoSOrdering(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 16})
	order := []QoS{Background, BestEffort, LatencyCritical, 0, Background, LatencyCritical, BestEffort, LatencyCritical}
	for i, q := range order {
		if err := e.TrySend(fs.put(Header{Seq: uint64(i), QoS: q})); err != nil {
			t.Fatal(err)
		}
	}
	// LatencyCritical first in FIFO order, then the shared lane in FIFO order.
	want := []uint64{2, 5, 7, 0, 1, 3, 4, 6}
	for _, w := range want {
		tok, ok := e.TryRecv()
		if !ok {
			t.Fatal("TryRecv: empty")
		}
		if h := fs.header(t, tok); h.Seq != w {
			t.Fatalf("got seq %d, want %d", h.Seq, w)
		}
		fs.Free(tok)
	}
	if _, ok := e.TryRecv(); ok {
		t.Fatal("edge not empty")
	}
	// A LatencyCritical message sent after others overtakes them.
	e.TrySend(fs.put(Header{Seq: 10}))
	e.TrySend(fs.put(Header{Seq: 11, QoS: LatencyCritical}))
	tok, _ := e.Recv(context.Background())
	if fs.header(t, tok).Seq != 11 {
		t.Fatal("LatencyCritical did not overtake")
	}
	fs.Free(tok)
	e.Drain()
	if fs.liveCount() != 0 {
		t.Fatal("leak")
	}
}

func TestDeadlineExpiry(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 8})
	soon := Now() + int64(2*time.Millisecond)
	a := fs.put(Header{Seq: 1, Deadline: soon})
	b := fs.put(Header{Seq: 2, Deadline: soon, Flags: DegradeAllowed})
	c := fs.put(Header{Seq: 3})
	d := fs.put(Header{Seq: 4, Deadline: Now() + int64(time.Hour)})
	for _, tok := range []token.Token{a, b, c, d} {
		if err := e.TrySend(tok); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(4 * time.Millisecond)

	// Already expired when sent: refused, the caller keeps it.
	late := fs.put(Header{Seq: 5, Deadline: Now() - 1})
	err := e.TrySend(late)
	if !errors.Is(err, ErrExpired) || !errors.Is(err, ErrRejected) {
		t.Fatalf("expired send = %v", err)
	}
	if !fs.isLive(late) {
		t.Fatal("refused expired token was freed")
	}
	fs.Free(late)
	// Expired but degradable at send: admitted.
	lateOK := fs.put(Header{Seq: 6, Deadline: Now() - 1, Flags: DegradeAllowed})
	if err := e.TrySend(lateOK); err != nil {
		t.Fatal(err)
	}

	var got []uint64
	for {
		tok, ok := e.TryRecv()
		if !ok {
			break
		}
		got = append(got, fs.header(t, tok).Seq)
		fs.Free(tok)
	}
	want := []uint64{2, 3, 4, 6} // seq 1 expired in the queue
	if len(got) != len(want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("delivered %v, want %v", got, want)
		}
	}
	if fs.isLive(a) {
		t.Fatal("expired message not freed")
	}
	st := e.Stats()
	if st.Expired != 1 || st.Late != 2 || st.Delivered != 4 || st.Rejected != 1 {
		t.Fatalf("stats %+v", st)
	}
	if fs.liveCount() != 0 {
		t.Fatal("leak")
	}
}

func TestRecvExpiredOnlyQueue(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 4})
	for i := 0; i < 3; i++ {
		e.TrySend(fs.put(Header{Deadline: Now() + int64(usShortLife)}))
	}
	usOutlive()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := e.Recv(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Recv = %v", err)
	}
	if e.Stats().Expired != 3 || fs.liveCount() != 0 {
		t.Fatalf("stats %+v live %d", e.Stats(), fs.liveCount())
	}
}

func TestBadInput(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 2})
	if err := e.TrySend(token.Nil); err == nil {
		t.Fatal("nil token accepted")
	}
	if err := e.Send(context.Background(), token.New(999, 7)); !errors.Is(err, errFakeStale) {
		t.Fatalf("unknown token: %v", err)
	}
	tok := fs.put(Header{})
	fs.Free(tok)
	if err := e.TrySend(tok); !errors.Is(err, errFakeStale) {
		t.Fatalf("stale token: %v", err)
	}
	bad := fs.put(Header{QoS: 7})
	if err := e.TrySend(bad); !errors.Is(err, ErrRejected) {
		t.Fatalf("bad QoS: %v", err)
	}
	fs.Free(bad)
	if st := e.Stats(); st.Invalid != 4 || st.Admitted != 0 || st.Len != 0 {
		t.Fatalf("stats %+v", st)
	}
	if fs.liveCount() != 0 {
		t.Fatal("leak")
	}
}

func TestCloseSemantics(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 2})
	a, b := fs.put(Header{Seq: 1}), fs.put(Header{Seq: 2})
	e.TrySend(a)
	e.TrySend(b)

	// A blocked sender is released by Close with ErrEdgeClosed and keeps its token.
	c := fs.put(Header{Seq: 3})
	sendErr := make(chan error)
	go func() { sendErr <- e.Send(context.Background(), c) }()
	waitFor(t, func() bool { return e.Stats().Waited == 1 })
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-sendErr; !errors.Is(err, ErrEdgeClosed) {
		t.Fatalf("blocked Send after Close = %v", err)
	}
	if err := e.Close(); !errors.Is(err, ErrEdgeClosed) {
		t.Fatalf("second Close = %v", err)
	}
	if err := e.TrySend(c); !errors.Is(err, ErrEdgeClosed) {
		t.Fatalf("TrySend on closed = %v", err)
	}
	fs.Free(c)
	// Receivers drain what is queued, then see ErrEdgeClosed.
	for _, want := range []token.Token{a, b} {
		got, err := e.Recv(context.Background())
		if err != nil || got != want {
			t.Fatalf("Recv = %v, %v; want %v", got, err, want)
		}
		fs.Free(got)
	}
	if _, err := e.Recv(context.Background()); !errors.Is(err, ErrEdgeClosed) {
		t.Fatalf("Recv on drained closed edge = %v", err)
	}
	if fs.liveCount() != 0 {
		t.Fatal("leak")
	}
}

func TestCloseWakesReceivers(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 2})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.Recv(context.Background())
			errs <- err
		}()
	}
	time.Sleep(5 * time.Millisecond)
	e.Close()
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, ErrEdgeClosed) {
			t.Fatalf("Recv = %v", err)
		}
	}
}

func TestCloseThenDrainFreesAll(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 8})
	for i := 0; i < 5; i++ {
		e.TrySend(fs.put(Header{QoS: QoS(i%3 + 1)}))
	}
	e.Close()
	if n := e.Drain(); n != 5 {
		t.Fatalf("Drain = %d", n)
	}
	if fs.liveCount() != 0 || e.Len() != 0 || e.Stats().Drained != 5 {
		t.Fatal("Drain did not free everything")
	}
}

func TestContextCancellation(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 1})
	ctx, cancel := context.WithCancel(context.Background())
	recvErr := make(chan error)
	go func() {
		_, err := e.Recv(ctx)
		recvErr <- err
	}()
	time.Sleep(2 * time.Millisecond)
	cancel()
	if err := <-recvErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("Recv = %v", err)
	}

	a := fs.put(Header{})
	e.TrySend(a)
	b := fs.put(Header{})
	ctx, cancel = context.WithCancel(context.Background())
	sendErr := make(chan error)
	go func() { sendErr <- e.Send(ctx, b) }()
	waitFor(t, func() bool { return e.Stats().Waited == 1 })
	cancel()
	if err := <-sendErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("Send = %v", err)
	}
	if !fs.isLive(b) || e.Len() != 1 {
		t.Fatal("cancelled send changed ownership")
	}
	// The edge still works: the waiting lists hold no stale waiters.
	got, _ := e.TryRecv()
	if err := e.TrySend(b); err != nil || got != a {
		t.Fatalf("edge unusable after cancellations: %v", err)
	}
	fs.Free(got)
	e.Drain()
	if fs.liveCount() != 0 {
		t.Fatal("leak")
	}
}

func TestBlockedSenderResumes(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxBytes: 100})
	big := fs.put(Header{Size: 90})
	e.TrySend(big)
	// A large waiter at the head is not starved by small ones behind it.
	w1 := fs.put(Header{Size: 60, Seq: 1})
	done1 := make(chan error)
	go func() { done1 <- e.Send(context.Background(), w1) }()
	waitFor(t, func() bool { return e.Stats().Waited == 1 })
	w2 := fs.put(Header{Size: 5, Seq: 2})
	done2 := make(chan error)
	go func() { done2 <- e.Send(context.Background(), w2) }()
	waitFor(t, func() bool { return e.Stats().Waited == 2 })
	tok, _ := e.TryRecv()
	fs.Free(tok)
	if err := <-done1; err != nil {
		t.Fatal(err)
	}
	if err := <-done2; err != nil {
		t.Fatal(err)
	}
	if e.Bytes() != 65 {
		t.Fatalf("bytes %d", e.Bytes())
	}
	e.Drain()
	if fs.liveCount() != 0 {
		t.Fatal("leak")
	}
}

func TestFastPathAllocs(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 4})
	tok := fs.put(Header{})
	ctx := context.Background()
	allocs := testing.AllocsPerRun(1000, func() {
		if err := e.Send(ctx, tok); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Recv(ctx); err != nil {
			t.Fatal(err)
		}
	})
	// The fake store's Header allocates nothing either.
	if allocs != 0 {
		t.Fatalf("Send+Recv allocates %.1f times", allocs)
	}
	full := mustEdge(t, fs, Policy{MaxItems: 1, Admission: DropNewest})
	other := fs.put(Header{})
	full.TrySend(other)
	allocs = testing.AllocsPerRun(1000, func() {
		if err := full.TrySend(tok); !errors.Is(err, ErrEdgeFull) {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("refused send allocates %.1f times", allocs)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// A nil context is bad input: it must not panic, it waits like Background.
func TestNilContext(t *testing.T) {
	hs := newFakeStore()
	e, err := NewEdge(hs, Policy{MaxItems: 1})
	if err != nil {
		t.Fatal(err)
	}
	tok := hs.put(Header{QoS: BestEffort, Size: 1})
	//lint:ignore SA1012 the test is that nil does not panic
	if err := e.Send(nil, tok); err != nil {
		t.Fatal(err)
	}
	//lint:ignore SA1012 the test is that nil does not panic
	got, err := e.Recv(nil)
	if err != nil || got != tok {
		t.Fatalf("Recv(nil) = %v, %v", got, err)
	}
}

// TestNewEdgeTypedNilStore: a nil *Store or *ByteStore in the HeaderStore
// interface (a non-nil interface holding a nil pointer) is refused like a
// nil HeaderStore, not a panic in NewEdge or a later Send.
func TestNewEdgeTypedNilStore(t *testing.T) {
	var s *Store[payload]
	if _, err := NewEdge(s, Policy{}); !errors.Is(err, ErrBadPolicy) {
		t.Fatalf("NewEdge(nil *Store) = %v, want ErrBadPolicy", err)
	}
	var bs *ByteStore[[64]byte]
	if _, err := NewEdge(bs, Policy{}); !errors.Is(err, ErrBadPolicy) || !errors.Is(err, ErrNilStore) {
		t.Fatalf("NewEdge(nil *ByteStore) = %v, want ErrBadPolicy and ErrNilStore", err)
	}
	// The other entry points that take a store say ErrNilStore too.
	real := newStore[payload](t, 2)
	e := mustEdge(t, real, Policy{})
	tok, err := real.Put(Header{}, payload{})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := SendAll(context.Background(), s, tok, e); n != 0 || !errors.Is(err, ErrNilStore) {
		t.Fatalf("SendAll(nil *Store) = %d, %v; want 0, ErrNilStore", n, err)
	}
	if err := NewGraph(bs).Run(context.Background()); !errors.Is(err, ErrNilStore) {
		t.Fatalf("NewGraph(nil *ByteStore).Run = %v, want ErrNilStore", err)
	}
	real.Free(tok)
}
