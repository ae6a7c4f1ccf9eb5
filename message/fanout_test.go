package message

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// Both stores the package offers satisfy RefStore.
var (
	_ RefStore = (*Store[payload])(nil)
	_ RefStore = (*ByteStore[[64]byte])(nil)
)

func TestSendAll(t *testing.T) {
	s := newStore[payload](t, 8)
	a := mustEdge(t, s, Policy{MaxItems: 4})
	b := mustEdge(t, s, Policy{MaxItems: 1, Admission: DropNewest})
	c := mustEdge(t, s, Policy{MaxItems: 4})
	ctx := context.Background()

	tok, _ := s.Put(Header{}, payload{A: 1})
	if sent, err := SendAll(ctx, s, tok, a, b, c); sent != 3 || err != nil {
		t.Fatalf("SendAll = %d, %v", sent, err)
	}
	if n, _ := s.Refs(tok); n != 3 {
		t.Fatalf("Refs = %d, want 3 (one per edge)", n)
	}
	// b is full now: its share is freed, the others keep theirs.
	tok2, _ := s.Put(Header{}, payload{A: 2})
	sent, err := SendAll(ctx, s, tok2, a, b, c)
	if sent != 2 || !errors.Is(err, ErrEdgeFull) || !strings.Contains(err.Error(), "edge 1 of 3") {
		t.Fatalf("SendAll with b full = %d, %v", sent, err)
	}
	if n, _ := s.Refs(tok2); n != 2 {
		t.Fatalf("Refs = %d, want 2", n)
	}
	if strings.Count(err.Error(), "message:") != 1 {
		t.Fatalf("error repeats its prefix: %q", err)
	}
	// A nil edge refuses its share.
	tok3, _ := s.Put(Header{}, payload{A: 3})
	if sent, err := SendAll(ctx, s, tok3, nil, c); sent != 1 || !errors.Is(err, ErrNilEdge) {
		t.Fatalf("SendAll with a nil edge = %d, %v", sent, err)
	}
	for _, e := range []*Edge{a, b, c} {
		e.Close()
		e.Drain()
	}
	if s.Available() != s.Capacity() {
		t.Fatalf("leak: %d of %d", s.Available(), s.Capacity())
	}
}

// TestSendAllConsumes: whatever happens, the caller's reference is gone.
func TestSendAllConsumes(t *testing.T) {
	s := newStore[payload](t, 4)
	ctx := context.Background()

	// No edges: t is freed, nobody took it, and that is not an error.
	tok, _ := s.Put(Header{}, payload{})
	if sent, err := SendAll(ctx, s, tok); sent != 0 || err != nil {
		t.Fatalf("SendAll to no edges = %d, %v", sent, err)
	}
	if s.Available() != s.Capacity() {
		t.Fatal("SendAll to no edges did not free t")
	}
	// ... but freeing a stale token there is reported.
	if _, err := SendAll(ctx, s, tok); !errors.Is(err, arena.ErrStale) {
		t.Fatalf("SendAll of a stale token to no edges = %v", err)
	}

	// Every edge refuses: every share is freed.
	closed := mustEdge(t, s, Policy{})
	closed.Close()
	expired, _ := s.Put(Header{Deadline: 1}, payload{})
	open := mustEdge(t, s, Policy{})
	sent, err := SendAll(ctx, s, expired, closed, open)
	if sent != 0 || !errors.Is(err, ErrExpired) {
		t.Fatalf("SendAll refused everywhere = %d, %v", sent, err)
	}
	live, _ := s.Put(Header{}, payload{})
	sent, err = SendAll(ctx, s, live, closed, open)
	if sent != 1 || !errors.Is(err, ErrEdgeClosed) {
		t.Fatalf("SendAll to a closed and an open edge = %d, %v", sent, err)
	}
	if open.Drain() != 1 {
		t.Fatal("the open edge did not get its share")
	}
	if s.Available() != s.Capacity() {
		t.Fatal("refused shares not freed")
	}

	// A stale token: Retain fails, nothing is sent, nothing changes.
	if sent, err := SendAll(ctx, s, tok, open, open); sent != 0 || !errors.Is(err, arena.ErrStale) {
		t.Fatalf("SendAll of a stale token = %d, %v", sent, err)
	}
	if sent, err := SendAll(ctx, s, token.Nil, open); sent != 0 || !errors.Is(err, arena.ErrBadToken) {
		t.Fatalf("SendAll of Nil = %d, %v", sent, err)
	}
	if open.Len() != 0 || s.Available() != s.Capacity() {
		t.Fatal("a bad token changed something")
	}
	if _, err := SendAll(ctx, nil, tok, open); !errors.Is(err, ErrNilStore) {
		t.Fatalf("SendAll with a nil store = %v", err)
	}
}

// TestSendAllBlockContext: a full Block edge waits for room until ctx is
// done; the other edges still get their share.
func TestSendAllBlockContext(t *testing.T) {
	s := newStore[payload](t, 4)
	full := mustEdge(t, s, Policy{MaxItems: 1})
	other := mustEdge(t, s, Policy{})
	filler, _ := s.Put(Header{}, payload{})
	full.TrySend(filler)
	tok, _ := s.Put(Header{}, payload{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Millisecond)
	defer cancel()
	sent, err := SendAll(ctx, s, tok, full, other)
	if sent != 1 || !errors.Is(err, context.DeadlineExceeded) || other.Len() != 1 {
		t.Fatalf("SendAll = %d, %v (other holds %d)", sent, err, other.Len())
	}
	full.Drain()
	other.Drain()
	if s.Available() != s.Capacity() {
		t.Fatal("leak")
	}
}

func TestSendAllNoAllocs(t *testing.T) {
	s := newStore[payload](t, 4)
	a, b := mustEdge(t, s, Policy{}), mustEdge(t, s, Policy{})
	tok, _ := s.Put(Header{}, payload{})
	ctx := context.Background()
	allocs := testing.AllocsPerRun(200, func() {
		if sent, err := SendAll(ctx, s, tok, a, b); sent != 2 || err != nil {
			t.Fatal(sent, err)
		}
		// Take both shares back, then get one reference to send again.
		x, _ := a.TryRecv()
		y, _ := b.TryRecv()
		s.Free(x)
		_ = y
	})
	if allocs != 0 {
		t.Fatalf("SendAll to 2 edges: %v allocs", allocs)
	}
}

func TestEdgeAll(t *testing.T) {
	s := newStore[payload](t, 8)
	e := mustEdge(t, s, Policy{})
	for _, tok := range putN(t, s, 5, BestEffort) {
		e.TrySend(tok)
	}
	var got []uint64
	for tok := range e.All(context.Background()) {
		got = append(got, seqOf(t, s, tok))
		s.Free(tok)
		if len(got) == 2 {
			break
		}
	}
	// Breaking loses nothing: the other three are still queued.
	if len(got) != 2 || e.Len() != 3 {
		t.Fatalf("after break: got %v, Len %d", got, e.Len())
	}
	e.Close()
	for tok := range e.All(nilCtx) {
		got = append(got, seqOf(t, s, tok))
		s.Free(tok)
	}
	for i, q := range got {
		if q != uint64(i) {
			t.Fatalf("got %v", got)
		}
	}
	if len(got) != 5 || s.Available() != s.Capacity() {
		t.Fatalf("got %v, available %d", got, s.Available())
	}
	// An open, empty edge: the loop ends when ctx is done.
	open := mustEdge(t, s, Policy{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	for range open.All(ctx) {
		t.Fatal("yielded from an empty edge")
	}
	if ctx.Err() == nil {
		t.Fatal("All returned before ctx was done")
	}
}

// TestEdgeAllConcurrent: consumers ranging over All share a stream; every
// token is yielded exactly once and the loops end when the edge closes.
func TestEdgeAllConcurrent(t *testing.T) {
	const n = 2000
	s := newStore[payload](t, 64)
	e := mustEdge(t, s, Policy{MaxItems: 16})
	var mu sync.Mutex
	seen := map[uint64]int{}
	var wg sync.WaitGroup
	for c := 0; c < 3; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for tok := range e.All(context.Background()) {
				var a uint64
				s.View(tok, func(m *Message[payload]) { a = m.Payload.A })
				s.Free(tok)
				mu.Lock()
				seen[a]++
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < n; i++ {
		tok, err := putRetry(s, Header{}, payload{A: uint64(i)})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Send(context.Background(), tok); err != nil {
			t.Fatal(err)
		}
	}
	e.Close()
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("%d distinct of %d", len(seen), n)
	}
	for a, c := range seen {
		if c != 1 {
			t.Fatalf("message %d yielded %d times", a, c)
		}
	}
}

// putRetry is Put that retries while the store is full (consumers free
// slots).
func putRetry[P any](s *Store[P], h Header, p P) (token.Token, error) {
	for {
		tok, err := s.Put(h, p)
		if !errors.Is(err, arena.ErrFull) {
			return tok, err
		}
		time.Sleep(10 * time.Microsecond)
	}
}
