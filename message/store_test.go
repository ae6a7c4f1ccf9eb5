package message

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

type payload struct {
	A, B uint64
	Pad  [48]byte
}

func newStore[P any](t testing.TB, slots int) *Store[P] {
	t.Helper()
	s, err := NewStore[P](arena.Config{Slots: slots, Shards: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestStoreLifecycle(t *testing.T) {
	s := newStore[payload](t, 4)
	tok, err := s.Put(Header{Seq: 7, Size: 64}, payload{A: 1, B: 2})
	if err != nil {
		t.Fatal(err)
	}
	h, err := s.Header(tok)
	if err != nil || h.Seq != 7 || h.Created == 0 {
		t.Fatalf("Header = %+v, %v", h, err)
	}
	if err := s.Update(tok, func(m *Message[payload]) { m.Payload.A = 10 }); err != nil {
		t.Fatal(err)
	}
	var a uint64
	s.View(tok, func(m *Message[payload]) { a = m.Payload.A })
	if a != 10 {
		t.Fatal("Update not visible")
	}
	if err := s.Retain(tok); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Refs(tok); n != 2 {
		t.Fatalf("refs %d", n)
	}
	if err := s.Free(tok); err != nil {
		t.Fatal(err)
	}
	if s.Available() != 3 {
		t.Fatal("slot recycled with a reference left")
	}
	if err := s.Free(tok); err != nil {
		t.Fatal(err)
	}
	if s.Available() != s.Capacity() {
		t.Fatal("slot not recycled")
	}
	// Every use after the last reference is stale, and loses nothing.
	for name, err := range map[string]error{
		"Free":   s.Free(tok),
		"Retain": s.Retain(tok),
		"View":   s.View(tok, func(*Message[payload]) {}),
		"Update": s.Update(tok, func(*Message[payload]) {}),
	} {
		if !errors.Is(err, arena.ErrStale) {
			t.Errorf("%s after last Free = %v", name, err)
		}
	}
	if _, err := s.Header(tok); !errors.Is(err, arena.ErrStale) {
		t.Errorf("Header after last Free = %v", err)
	}
	if err := s.Free(token.Nil); !errors.Is(err, arena.ErrBadToken) {
		t.Errorf("Free(Nil) = %v", err)
	}
	if err := s.View(tok, nil); err == nil {
		t.Error("nil func accepted")
	}
	if s.Available() != s.Capacity() {
		t.Fatal("bad input lost a slot")
	}
}

func TestStoreFullAndClosed(t *testing.T) {
	s, err := NewStore[payload](arena.Config{Slots: 2, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := s.Put(Header{}, payload{})
	s.Put(Header{}, payload{})
	if _, err := s.Put(Header{}, payload{}); !errors.Is(err, arena.ErrFull) {
		t.Fatalf("Put on full = %v", err)
	}
	if err := s.Close(); !errors.Is(err, ErrReferenced) {
		t.Fatalf("Close with two messages held = %v", err)
	}
	if _, err := s.Header(a); !errors.Is(err, arena.ErrClosed) {
		t.Fatalf("Header after Close = %v", err)
	}
	if err := s.Close(); !errors.Is(err, arena.ErrClosed) {
		t.Fatalf("second Close = %v", err)
	}
	if _, err := NewStore[*int](arena.Config{Slots: 1}); !errors.Is(err, arena.ErrPointerType) {
		t.Fatalf("pointer payload = %v", err)
	}
	if _, err := NewStore[int](arena.Config{}); !errors.Is(err, arena.ErrInvalidConfig) {
		t.Fatalf("bad config = %v", err)
	}
}

func TestStoreHotPathAllocs(t *testing.T) {
	s := newStore[payload](t, 8)
	e := mustEdge(t, s, Policy{MaxItems: 4})
	ctx := context.Background()
	allocs := testing.AllocsPerRun(1000, func() {
		tok, err := s.Put(Header{Size: 64}, payload{A: 1})
		if err != nil {
			t.Fatal(err)
		}
		s.Retain(tok)
		if err := e.Send(ctx, tok); err != nil {
			t.Fatal(err)
		}
		got, _ := e.Recv(ctx)
		s.View(got, func(m *Message[payload]) {})
		s.Free(got)
		s.Free(tok)
	})
	if allocs != 0 {
		t.Fatalf("Put+Retain+Send+Recv+View+Free+Free allocates %.1f times", allocs)
	}
}

func TestFanOutRefcounts(t *testing.T) {
	s := newStore[payload](t, 8)
	edges := make([]*Edge, 3)
	for i := range edges {
		edges[i] = mustEdge(t, s, Policy{MaxItems: 4})
	}
	tok, _ := s.Put(Header{}, payload{A: 42})
	for i := 1; i < len(edges); i++ {
		if err := s.Retain(tok); err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range edges {
		if err := e.TrySend(tok); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := s.Refs(tok); n != 3 {
		t.Fatalf("refs = %d", n)
	}
	for i, e := range edges {
		got, ok := e.TryRecv()
		if !ok || got != tok {
			t.Fatal("fan-out lost the token")
		}
		s.View(got, func(m *Message[payload]) {
			if m.Payload.A != 42 {
				t.Error("payload")
			}
		})
		s.Free(got)
		wantAvail := s.Capacity() - 1
		if i == len(edges)-1 {
			wantAvail = s.Capacity()
		}
		if s.Available() != wantAvail {
			t.Fatalf("after %d frees Available = %d", i+1, s.Available())
		}
	}
}

// TestNoLeakAfterAnyMix drives a store through random sends, receives,
// evictions, expiries, fan-outs, closes and drains, and checks that every
// slot comes back.
func TestNoLeakAfterAnyMix(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		s := newStore[payload](t, 64)
		rng := rand.New(rand.NewPCG(seed, seed))
		var edges []*Edge
		for i := 0; i < 4; i++ {
			p := Policy{MaxItems: 1 + rng.IntN(6), MaxBytes: int64(rng.IntN(3)) * 40, Admission: Admission(rng.IntN(4))}
			edges = append(edges, mustEdge(t, s, p))
		}
		var held []token.Token
		for step := 0; step < 2000; step++ {
			switch op := rng.IntN(10); {
			case op < 4: // put and fan out to a random subset
				h := Header{QoS: QoS(rng.IntN(4)), Size: uint32(rng.IntN(30))}
				if rng.IntN(5) == 0 {
					h.Deadline = Now() + int64(rng.IntN(50))*int64(time.Microsecond)
				}
				if rng.IntN(6) == 0 {
					h.Flags = DegradeAllowed
				}
				tok, err := s.Put(h, payload{A: uint64(step)})
				if err != nil {
					continue // store full
				}
				targets := rng.Perm(len(edges))[:rng.IntN(len(edges))+1]
				for range targets[1:] {
					s.Retain(tok)
				}
				for _, i := range targets {
					if err := edges[i].TrySend(tok); err != nil {
						s.Free(tok) // refused: our reference
					}
				}
			case op < 8:
				if tok, ok := edges[rng.IntN(len(edges))].TryRecv(); ok {
					if rng.IntN(2) == 0 {
						s.Free(tok)
					} else {
						held = append(held, tok)
					}
				}
			case op == 8 && len(held) > 0:
				s.Free(held[len(held)-1])
				held = held[:len(held)-1]
			default:
				i := rng.IntN(len(edges))
				if rng.IntN(4) == 0 {
					edges[i].Close()
					edges[i].Drain()
					edges[i] = mustEdge(t, s, Policy{MaxItems: 3, Admission: Admission(rng.IntN(4))})
				}
			}
		}
		for _, tok := range held {
			s.Free(tok)
		}
		for _, e := range edges {
			e.Close()
			e.Drain()
		}
		if s.Available() != s.Capacity() {
			t.Fatalf("seed %d: Available %d != Capacity %d", seed, s.Available(), s.Capacity())
		}
		for _, e := range edges {
			if e.Stats().FreeErrors != 0 {
				t.Fatalf("seed %d: free errors", seed)
			}
		}
	}
}

func TestByteStore(t *testing.T) {
	s, err := NewByteStore[[256]byte](arena.Config{Slots: 4, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.SlotSize() != 256 {
		t.Fatal(s.SlotSize())
	}
	a, err := s.PutBytes(Header{Seq: 1}, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Write(Header{Seq: 2}, func(slot []byte) (int, error) {
		return io.ReadFull(strings.NewReader("streamed straight in"), slot[:20])
	})
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := s.Header(a); h.Size != 5 {
		t.Fatalf("Size %d", h.Size)
	}
	s.Read(b, func(h Header, data []byte) {
		if string(data) != "streamed straight in" || h.Size != 20 {
			t.Errorf("Read %q", data)
		}
	})
	s.Rewrite(a, func(slot []byte, n int) int { return copy(slot[n:], " world") + n })
	out, err := s.AppendTo(nil, a)
	if err != nil || !bytes.Equal(out, []byte("hello world")) {
		t.Fatalf("AppendTo = %q, %v", out, err)
	}
	if _, err := s.PutBytes(Header{}, make([]byte, 257)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversize = %v", err)
	}
	wantErr := errors.New("boom")
	if _, err := s.Write(Header{}, func([]byte) (int, error) { return 0, wantErr }); !errors.Is(err, wantErr) {
		t.Fatal(err)
	}
	if _, err := s.Write(Header{}, func([]byte) (int, error) { return 999, nil }); !errors.Is(err, ErrTooLarge) {
		t.Fatal(err)
	}
	// A byte store is a HeaderStore: its Size drives an edge's byte caps.
	e := mustEdge(t, s, Policy{MaxBytes: 24})
	if err := e.TrySend(a); err != nil {
		t.Fatal(err)
	}
	if err := e.TrySend(b); !errors.Is(err, ErrEdgeFull) {
		t.Fatalf("byte cap: %v", err)
	}
	e.Close()
	e.Drain()
	s.Free(b)
	if s.Available() != s.Capacity() {
		t.Fatalf("leak: %d of %d", s.Available(), s.Capacity())
	}
}

func TestPutFuncPanicFreesSlot(t *testing.T) {
	s := newStore[payload](t, 2)
	for i := 0; i < 5; i++ { // more rounds than slots: a leak would show as ErrFull
		func() {
			defer func() {
				if r := recover(); r != "boom" {
					t.Fatalf("recovered %v, want the fill panic", r)
				}
			}()
			s.PutFunc(Header{}, func(m *Message[payload]) error {
				m.Payload.A = 1
				panic("boom")
			})
			t.Fatal("PutFunc returned after fill panicked")
		}()
		if s.Available() != s.Capacity() {
			t.Fatalf("round %d: Available = %d, Capacity = %d", i, s.Available(), s.Capacity())
		}
	}
	tok, err := s.PutFunc(Header{Seq: 9}, func(m *Message[payload]) error {
		if m.Payload.A != 0 {
			t.Error("slot not zeroed after a panicked fill")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Free(tok); err != nil {
		t.Fatal(err)
	}
}
