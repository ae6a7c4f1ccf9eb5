package message

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/cella-go/cella/token"
)

// failGraph builds source -> stage -> sink over two tiny edges, sending
// n messages, with fail called by the node named where on the k-th token
// it sees (the source: on its k-th Put).
func failGraph(t *testing.T, where string, k int64, fail func(tok token.Token, out *Emitter)) (*Graph, *Store[payload]) {
	t.Helper()
	s := newStore[payload](t, 16)
	e1, e2 := mustEdge(t, s, Policy{MaxItems: 2}), mustEdge(t, s, Policy{MaxItems: 2})
	var seen [3]atomic.Int64
	g := NewGraph(s)
	g.Source("src", 2, func(ctx context.Context, out *Emitter) error {
		for ctx.Err() == nil {
			tok, err := s.PutWait(ctx, Header{}, payload{A: 1})
			if err != nil {
				return err
			}
			if where == "src" && seen[0].Add(1) == k {
				s.Free(tok) // a token Put and not emitted is the source's own
				fail(tok, out)
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
		}
		return ctx.Err()
	}, e1)
	g.Stage("mid", 2, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
		if where == "mid" && seen[1].Add(1) == k {
			fail(tok, out)
		}
		return out.Emit(tok)
	}, e2)
	g.Sink("end", 2, e2, func(ctx context.Context, tok token.Token) error {
		if where == "end" && seen[2].Add(1) == k {
			fail(tok, nil)
		}
		return nil
	})
	return g, s
}

// TestGraphNodePanicPropagates: a panic in any node function aborts the
// graph, and Run re-raises it in its caller's goroutine as a *NodePanic,
// after every worker has stopped and every token has been freed.
func TestGraphNodePanicPropagates(t *testing.T) {
	boom := errors.New("boom")
	for _, where := range []string{"src", "mid", "end"} {
		for _, k := range []int64{1, 50} {
			g, s := failGraph(t, where, k, func(token.Token, *Emitter) { panic(boom) })
			var got any
			func() {
				defer func() { got = recover() }()
				err := g.Run(context.Background())
				t.Errorf("%s/%d: Run returned %v instead of panicking", where, k, err)
			}()
			np, ok := got.(*NodePanic)
			if !ok {
				t.Fatalf("%s/%d: Run panicked with %#v, want a *NodePanic", where, k, got)
			}
			if np.Node != where || np.Value != boom || !errors.Is(np, boom) || len(np.Stack) == 0 {
				t.Errorf("%s/%d: NodePanic %q, value %v, stack %d bytes", where, k, np.Node, np.Value, len(np.Stack))
			}
			if s.Available() != s.Capacity() {
				t.Errorf("%s/%d: %d of %d slots free after the panic: a token was lost", where, k, s.Available(), s.Capacity())
			}
		}
	}
}

// TestGraphNodePanicAfterPassingOn: a stage that panics after it emitted
// or freed its token does not get it freed twice.
func TestGraphNodePanicAfterPassingOn(t *testing.T) {
	for name, fail := range map[string]func(token.Token, *Emitter){
		"after Emit": func(tok token.Token, out *Emitter) { out.Emit(tok); panic("late") },
		"after Free": func(tok token.Token, out *Emitter) { out.Free(tok); panic("late") },
	} {
		g, s := failGraph(t, "mid", 10, fail)
		func() {
			defer func() {
				if _, ok := recover().(*NodePanic); !ok {
					t.Errorf("%s: Run did not panic with a *NodePanic", name)
				}
			}()
			g.Run(context.Background())
		}()
		if s.Available() != s.Capacity() {
			t.Errorf("%s: %d of %d slots free", name, s.Available(), s.Capacity())
		}
		// A second free of the token would have stolen a reference that an
		// edge owned, and the edge's own free would have failed.
		for _, e := range g.nodes[1].outs {
			if st := e.Stats(); st.FreeErrors != 0 {
				t.Errorf("%s: an edge counted %d free errors: a token was freed twice", name, st.FreeErrors)
			}
		}
	}
}

// TestGraphNodeGoexit: runtime.Goexit in a node function aborts the graph
// (it must not wait for the worker forever) with ErrNodeExited, and no
// token is lost.
func TestGraphNodeGoexit(t *testing.T) {
	for _, where := range []string{"src", "mid", "end"} {
		g, s := failGraph(t, where, 5, func(token.Token, *Emitter) { runtime.Goexit() })
		err := g.Run(context.Background())
		if !errors.Is(err, ErrNodeExited) || !contains(err.Error(), where) {
			t.Errorf("%s: Run = %v, want ErrNodeExited naming the node", where, err)
		}
		if s.Available() != s.Capacity() {
			t.Errorf("%s: %d of %d slots free", where, s.Available(), s.Capacity())
		}
	}
}

// TestGraphStageErrorFreesItsToken: a stage that fails without passing its
// token on does not leak it.
func TestGraphStageErrorFreesItsToken(t *testing.T) {
	boom := errors.New("boom")
	s := newStore[payload](t, 16)
	e1 := mustEdge(t, s, Policy{MaxItems: 2})
	e2 := mustEdge(t, s, Policy{MaxItems: 2})
	g := NewGraph(s)
	g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
		for ctx.Err() == nil {
			tok, err := s.PutWait(ctx, Header{}, payload{})
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
		}
		return ctx.Err()
	}, e1)
	var n atomic.Int64
	g.Stage("mid", 1, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
		if n.Add(1) == 20 {
			return boom // tok neither emitted nor freed
		}
		return out.Emit(tok)
	}, e2)
	g.Sink("end", 1, e2, func(context.Context, token.Token) error { return nil })
	if err := g.Run(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("Run = %v", err)
	}
	if s.Available() != s.Capacity() {
		t.Fatalf("%d of %d slots free: the failing stage's token leaked", s.Available(), s.Capacity())
	}
}

// TestGraphRunNilContext: a nil context runs like context.Background().
func TestGraphRunNilContext(t *testing.T) {
	s := newStore[payload](t, 16)
	e := mustEdge(t, s, Policy{MaxItems: 4})
	g := NewGraph(s)
	var sent, got atomic.Int64
	g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
		for range 100 {
			tok, err := s.PutWait(ctx, Header{}, payload{})
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
			sent.Add(1)
		}
		return nil
	}, e)
	g.Sink("end", 1, e, func(context.Context, token.Token) error { got.Add(1); return nil })
	//lint:ignore SA1012 a nil context is what is tested
	if err := g.Run(nil); err != nil || got.Load() != 100 || sent.Load() != 100 {
		t.Fatalf("Run(nil) = %v, sent %d, received %d", err, sent.Load(), got.Load())
	}
}
