package message

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
)

func TestGraphFanOutDrains(t *testing.T) {
	s := newStore[payload](t, 32)
	mk := func(p Policy) *Edge { return mustEdge(t, s, p) }
	e1 := mk(Policy{MaxItems: 4})
	e2, e3 := mk(Policy{MaxItems: 4}), mk(Policy{MaxItems: 2})
	const n = 2000
	var sumA, sumB, countA, countB atomic.Uint64
	g := NewGraph(s)
	var next atomic.Uint64
	g.Source("gen", 2, func(ctx context.Context, out *Emitter) error {
		for {
			i := next.Add(1)
			if i > n {
				return nil
			}
			tok, err := s.Put(Header{Seq: i}, payload{A: i})
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
		}
	}, e1)
	g.Stage("double", 3, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
		if err := s.Update(tok, func(m *Message[payload]) { m.Payload.B = 2 * m.Payload.A }); err != nil {
			return err
		}
		return out.Emit(tok)
	}, e2, e3)
	sink := func(sum, count *atomic.Uint64) SinkFunc {
		return func(ctx context.Context, tok token.Token) error {
			return s.View(tok, func(m *Message[payload]) {
				if m.Payload.B != 2*m.Payload.A || m.Header.Seq != m.Payload.A {
					t.Errorf("corrupt message %+v", m)
				}
				sum.Add(m.Payload.B)
				count.Add(1)
			})
		}
	}
	g.Sink("a", 2, e2, sink(&sumA, &countA))
	g.Sink("b", 1, e3, sink(&sumB, &countB))
	if err := g.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := uint64(n * (n + 1))
	if countA.Load() != n || sumA.Load() != want || countB.Load() != n || sumB.Load() != want {
		t.Fatalf("a: %d msgs sum %d; b: %d msgs sum %d; want %d and %d", countA.Load(), sumA.Load(), countB.Load(), sumB.Load(), n, want)
	}
	if s.Available() != s.Capacity() {
		t.Fatalf("leak: %d of %d", s.Available(), s.Capacity())
	}
}

func TestGraphStopIsGraceful(t *testing.T) {
	s := newStore[payload](t, 64)
	in := mustEdge(t, s, Policy{MaxItems: 8})
	var emitted, received atomic.Uint64
	g := NewGraph(s)
	g.Source("forever", 1, func(ctx context.Context, out *Emitter) error {
		for ctx.Err() == nil {
			tok, err := s.Put(Header{}, payload{})
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
			emitted.Add(1)
		}
		return ctx.Err()
	}, in)
	g.Sink("slow", 1, in, func(ctx context.Context, tok token.Token) error {
		received.Add(1)
		time.Sleep(20 * time.Microsecond)
		return nil
	})
	go func() { time.Sleep(20 * time.Millisecond); g.Stop() }()
	if err := g.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if emitted.Load() == 0 || emitted.Load() != received.Load() {
		t.Fatalf("emitted %d, received %d", emitted.Load(), received.Load())
	}
	if s.Available() != s.Capacity() {
		t.Fatal("leak")
	}
}

func TestGraphErrorAborts(t *testing.T) {
	s := newStore[payload](t, 64)
	in := mustEdge(t, s, Policy{MaxItems: 8})
	boom := errors.New("boom")
	g := NewGraph(s)
	g.Source("forever", 2, func(ctx context.Context, out *Emitter) error {
		for ctx.Err() == nil {
			tok, err := s.Put(Header{}, payload{})
			if err != nil {
				continue // full while the sink fails: retry until aborted
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
		}
		return ctx.Err()
	}, in)
	var seen atomic.Int64
	g.Sink("fails", 2, in, func(ctx context.Context, tok token.Token) error {
		if seen.Add(1) == 100 {
			return boom
		}
		return nil
	})
	err := g.Run(context.Background())
	if !errors.Is(err, boom) || !contains(err.Error(), `"fails"`) {
		t.Fatalf("Run = %v", err)
	}
	if s.Available() != s.Capacity() {
		t.Fatalf("leak after abort: %d of %d", s.Available(), s.Capacity())
	}
}

func TestGraphContextCancel(t *testing.T) {
	s := newStore[payload](t, 16)
	in := mustEdge(t, s, Policy{MaxItems: 4})
	g := NewGraph(s)
	g.Source("forever", 1, func(ctx context.Context, out *Emitter) error {
		for {
			tok, err := s.Put(Header{}, payload{})
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
		}
	}, in)
	g.Sink("stuck", 1, in, func(ctx context.Context, tok token.Token) error {
		<-ctx.Done()
		return ctx.Err()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := g.Run(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run = %v", err)
	}
	if s.Available() != s.Capacity() {
		t.Fatal("leak")
	}
}

func TestGraphBadWiring(t *testing.T) {
	s := newStore[payload](t, 4)
	e := mustEdge(t, s, Policy{MaxItems: 1})
	orphan := mustEdge(t, s, Policy{MaxItems: 1})
	src := func(ctx context.Context, out *Emitter) error { return nil }
	sink := func(ctx context.Context, tok token.Token) error { return nil }
	cases := map[string]func(g *Graph){
		"zero workers":  func(g *Graph) { g.Source("s", 0, src, e); g.Sink("k", 1, e, sink) },
		"nil func":      func(g *Graph) { g.Source("s", 1, nil, e); g.Sink("k", 1, e, sink) },
		"no consumer":   func(g *Graph) { g.Source("s", 1, src, e) },
		"no producer":   func(g *Graph) { g.Sink("k", 1, orphan, sink) },
		"two consumers": func(g *Graph) { g.Source("s", 1, src, e); g.Sink("k", 1, e, sink); g.Sink("k2", 1, e, sink) },
		"nil input":     func(g *Graph) { g.Sink("k", 1, nil, sink) },
	}
	for name, build := range cases {
		g := NewGraph(s)
		build(g)
		if err := g.Run(context.Background()); !errors.Is(err, ErrBadGraph) {
			t.Errorf("%s: Run = %v", name, err)
		}
	}
}
