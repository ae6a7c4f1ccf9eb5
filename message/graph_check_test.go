package message

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// runQuick runs g and fails the test if Run does not return within a few
// seconds (a cycle used to make a graceful Stop hang).
func runQuick(t *testing.T, g *Graph) error {
	t.Helper()
	res := make(chan error, 1)
	go func() { res <- g.Run(context.Background()) }()
	go func() { time.Sleep(5 * time.Millisecond); g.Stop() }()
	select {
	case err := <-res:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

func TestGraphRejectsCycles(t *testing.T) {
	s := newStore[payload](t, 16)
	src := func(ctx context.Context, out *Emitter) error {
		tok, err := s.Put(Header{}, payload{})
		if err != nil {
			return err
		}
		return out.Emit(tok)
	}
	pass := func(ctx context.Context, tok token.Token, out *Emitter) error { return out.Emit(tok) }
	sink := func(ctx context.Context, tok token.Token) error { return nil }

	// A stage feeding its own input.
	in, self := mustEdge(t, s, Policy{MaxItems: 4}), mustEdge(t, s, Policy{MaxItems: 4})
	g := NewGraph(s)
	g.Source("src", 1, src, in)
	g.Stage("feed", 1, in, pass, self)
	g.Stage("loop", 1, self, pass, self)
	err := runQuick(t, g)
	if !errors.Is(err, ErrGraphCycle) || !errors.Is(err, ErrBadGraph) || !strings.Contains(err.Error(), `"loop" -> "loop"`) {
		t.Fatalf("self loop: Run = %v", err)
	}
	if strings.Count(err.Error(), "message:") != 1 {
		t.Fatalf("error repeats its prefix: %q", err)
	}

	// A longer cycle, with a way out to a sink.
	e1, e2, e3 := mustEdge(t, s, Policy{}), mustEdge(t, s, Policy{}), mustEdge(t, s, Policy{})
	e0, out := mustEdge(t, s, Policy{}), mustEdge(t, s, Policy{})
	g = NewGraph(s)
	g.Source("src", 1, src, e0)
	g.Stage("a", 1, e0, pass, e1)
	g.Stage("b", 1, e1, pass, e2, out)
	g.Stage("c", 1, e2, pass, e3)
	g.Stage("d", 1, e3, pass, e1)
	g.Sink("k", 1, out, sink)
	err = runQuick(t, g)
	if !errors.Is(err, ErrGraphCycle) || !strings.Contains(err.Error(), `"b" -> "c" -> "d" -> "b"`) {
		t.Fatalf("cycle b-c-d: Run = %v", err)
	}
	if s.Available() != s.Capacity() {
		t.Fatal("a rejected graph used the store")
	}

	// A diamond is not a cycle.
	d0, l, r, j := mustEdge(t, s, Policy{}), mustEdge(t, s, Policy{}), mustEdge(t, s, Policy{}), mustEdge(t, s, Policy{})
	g = NewGraph(s)
	g.Source("src", 1, src, d0)
	g.Stage("split", 1, d0, pass, l, r)
	g.Stage("left", 1, l, pass, j)
	g.Stage("right", 1, r, pass, j)
	g.Sink("join", 1, j, sink)
	if err := runQuick(t, g); err != nil {
		t.Fatalf("diamond: Run = %v", err)
	}
	if s.Available() != s.Capacity() {
		t.Fatal("leak")
	}
}

func TestGraphForeignStore(t *testing.T) {
	s := newStore[payload](t, 8)
	other := newStore[payload](t, 8)
	in := mustEdge(t, other, Policy{})
	g := NewGraph(s)
	g.Source("src", 1, func(ctx context.Context, out *Emitter) error { return nil }, in)
	g.Sink("k", 1, in, func(ctx context.Context, tok token.Token) error { return nil })
	err := g.Run(context.Background())
	if !errors.Is(err, ErrBadGraph) || !strings.Contains(err.Error(), "another store") {
		t.Fatalf("Run with an edge of another store = %v", err)
	}

	// A ByteStore and the Store it embeds are the same store.
	bs, err := NewByteStore[[64]byte](arena.Config{Slots: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	be := mustEdge(t, bs.Store, Policy{})
	var got atomic.Int64
	g = NewGraph(bs)
	g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
		tok, err := bs.PutBytes(Header{}, []byte("hi"))
		if err != nil {
			return err
		}
		return out.Emit(tok)
	}, be)
	g.Sink("k", 1, be, func(ctx context.Context, tok token.Token) error { got.Add(1); return nil })
	if err := g.Run(context.Background()); err != nil || got.Load() != 1 {
		t.Fatalf("ByteStore graph: Run = %v, got %d", err, got.Load())
	}
	if NewGraph(nil).Run(context.Background()) == nil {
		t.Fatal("NewGraph(nil).Run succeeded")
	}
}

// TestErrorsReadOnce: errors of edges and graphs carry one "message:"
// prefix and still match every sentinel they name.
func TestErrorsReadOnce(t *testing.T) {
	s := newStore[payload](t, 8)
	e := mustEdge(t, s, Policy{MaxItems: 1, Admission: DropNewest})
	stale, _ := s.Put(Header{}, payload{})
	s.Free(stale)
	expired, _ := s.Put(Header{Deadline: 1}, payload{})
	fill, _ := s.Put(Header{}, payload{})
	e.TrySend(fill)
	extra, _ := s.Put(Header{}, payload{})
	shedEdge := mustEdge(t, s, Policy{MaxItems: 2, SoftItems: 1, Admission: DeadlineQoS})
	bg, _ := s.Put(Header{QoS: Background}, payload{})
	f2, _ := s.Put(Header{}, payload{})
	shedEdge.TrySend(f2)
	cases := []struct {
		name string
		err  error
		is   []error
	}{
		{"expired", e.TrySend(expired), []error{ErrRejected, ErrExpired}},
		{"full", e.TrySend(extra), []error{ErrRejected, ErrEdgeFull}},
		{"stale", e.TrySend(stale), []error{arena.ErrStale}},
		{"shed", shedEdge.TrySend(bg), []error{ErrRejected}},
	}
	for _, c := range cases {
		if c.err == nil {
			t.Fatalf("%s: no error", c.name)
		}
		for _, want := range c.is {
			if !errors.Is(c.err, want) {
				t.Errorf("%s: %v does not match %v", c.name, c.err, want)
			}
		}
		if n := strings.Count(c.err.Error(), "message:"); n != 1 {
			t.Errorf("%s: %q has %d prefixes", c.name, c.err, n)
		}
	}

	// A node's error names the node once.
	in := mustEdge(t, s, Policy{})
	g := NewGraph(s)
	g.Source("src", 1, func(ctx context.Context, out *Emitter) error { return out.Emit(extra) }, in)
	g.Sink("bad", 1, in, func(ctx context.Context, tok token.Token) error {
		return s.View(stale, func(*Message[payload]) {})
	})
	err := g.Run(context.Background())
	if !errors.Is(err, arena.ErrStale) || strings.Count(err.Error(), "message:") != 1 || !strings.Contains(err.Error(), `node "bad"`) {
		t.Fatalf("node error = %q", err)
	}
	for _, tok := range []token.Token{expired, bg} {
		s.Free(tok)
	}
	e.Drain()
	shedEdge.Drain()
	if s.Available() != s.Capacity() {
		t.Fatalf("leak: %d of %d", s.Available(), s.Capacity())
	}
}

// TestGraphStageFailsMidBatch: a stage that fails while holding a batch of
// received tokens and emitted ones that are not sent yet frees them all.
func TestGraphStageFailsMidBatch(t *testing.T) {
	s := newStore[payload](t, 128)
	in := mustEdge(t, s, Policy{MaxItems: 64})
	a, b := mustEdge(t, s, Policy{MaxItems: 64}), mustEdge(t, s, Policy{MaxItems: 64})
	// Fill the input before the graph runs: the stage receives a batch.
	for _, tok := range putN(t, s, 64, BestEffort) {
		if err := in.TrySend(tok); err != nil {
			t.Fatal(err)
		}
	}
	boom := errors.New("boom")
	var handled atomic.Int64
	g := NewGraph(s)
	g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
		<-ctx.Done()
		return ctx.Err()
	}, in)
	g.Stage("fan", 1, in, func(ctx context.Context, tok token.Token, out *Emitter) error {
		if handled.Add(1) == 5 {
			out.Free(tok)
			return boom
		}
		return out.Emit(tok)
	}, a, b)
	g.Sink("ka", 1, a, func(ctx context.Context, tok token.Token) error { <-ctx.Done(); return nil })
	g.Sink("kb", 1, b, func(ctx context.Context, tok token.Token) error { <-ctx.Done(); return nil })
	if err := g.Run(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("Run = %v", err)
	}
	if handled.Load() != 5 {
		t.Fatalf("stage handled %d", handled.Load())
	}
	if s.Available() != s.Capacity() {
		t.Fatalf("leak: %d of %d", s.Available(), s.Capacity())
	}
}

// TestGraphBatchesKeepOrder: with one worker per node, a stage that
// receives and sends in batches keeps the order of a FIFO lane, and the
// stream flows whole through a two-edge fan-out.
func TestGraphBatchesKeepOrder(t *testing.T) {
	const n = 3000
	s := newStore[payload](t, 256)
	e1 := mustEdge(t, s, Policy{MaxItems: 64})
	e2, e3 := mustEdge(t, s, Policy{MaxItems: 32}), mustEdge(t, s, Policy{MaxItems: 8})
	g := NewGraph(s)
	g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
		for i := 0; i < n; i++ {
			tok, err := putRetry(s, Header{Seq: uint64(i)}, payload{A: uint64(i)})
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
		}
		return nil
	}, e1)
	g.Stage("inc", 1, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
		if err := s.Update(tok, func(m *Message[payload]) { m.Payload.B = m.Payload.A + 1 }); err != nil {
			return err
		}
		return out.Emit(tok)
	}, e2, e3)
	check := func(next *uint64) SinkFunc {
		return func(ctx context.Context, tok token.Token) error {
			return s.View(tok, func(m *Message[payload]) {
				if m.Payload.A != *next || m.Payload.B != *next+1 {
					t.Errorf("got %d/%d, want %d", m.Payload.A, m.Payload.B, *next)
				}
				*next++
			})
		}
	}
	var n2, n3 uint64
	g.Sink("k2", 1, e2, check(&n2))
	g.Sink("k3", 1, e3, check(&n3))
	if err := g.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n2 != n || n3 != n || s.Available() != s.Capacity() {
		t.Fatalf("sinks got %d and %d of %d; available %d", n2, n3, n, s.Available())
	}
}

// TestGraphSlowNodeNoBatch: a node function that is slow gets one token at
// a time, so queued tokens stay in the edge (where they can expire or be
// evicted) instead of waiting in a worker's batch; a fast one gets batches.
func TestGraphSlowNodeNoBatch(t *testing.T) {
	for _, slow := range []bool{true, false} {
		const n = 40
		s := newStore[payload](t, 64)
		in := mustEdge(t, s, Policy{MaxItems: 64})
		for _, tok := range putN(t, s, n, BestEffort) {
			in.TrySend(tok)
		}
		var lens []int
		g := NewGraph(s)
		g.Source("idle", 1, func(ctx context.Context, out *Emitter) error { <-ctx.Done(); return ctx.Err() }, in)
		g.Sink("k", 1, in, func(ctx context.Context, tok token.Token) error {
			lens = append(lens, in.Len())
			if slow {
				time.Sleep(20 * time.Microsecond)
			}
			if len(lens) == n {
				g.Stop()
			}
			return nil
		})
		if err := g.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		batched := 0
		for i := 1; i < len(lens); i++ {
			if lens[i] == lens[i-1] {
				batched++
			}
		}
		if slow && batched != 0 {
			t.Errorf("slow sink: edge lengths seen %v: tokens were taken in batches", lens)
		}
		if !slow && batched == 0 && !raceEnabled { // -race makes every sink slow
			t.Errorf("fast sink: edge lengths seen %v: never batched", lens)
		}
		if s.Available() != s.Capacity() {
			t.Fatal("leak")
		}
	}
}
