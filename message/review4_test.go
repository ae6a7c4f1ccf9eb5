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

// ---------------------------------------------------------------------------
// Fourth review: the source Emitter's refusal once the graph is stopping,
// Run's returned error in every ordering of node failure / Stop / ctx end,
// and the restructured worker cleanup. Stores are gsStore (counting).
// ---------------------------------------------------------------------------

// rv4Uncomparable is an error type that cannot be compared with ==: a
// slice. Such errors are legal causes for context.WithCancelCause.
type rv4Uncomparable []string

func (e rv4Uncomparable) Error() string { return fmt.Sprintf("rv4 uncomparable cause %v", []string(e)) }

// rv4Graph is a one-source, one-sink graph over a counting store. The
// source Puts and Emits one message, then waits for its context and calls
// afterSrcDone (if set) before returning the context's error. The sink
// runs onSink for every message.
type rv4Graph struct {
	w    *gsStore
	g    *Graph
	sunk atomic.Int64
}

func rv4OneShot(t *testing.T, afterSrcDone func(), onSink func(ctx context.Context) error) *rv4Graph {
	t.Helper()
	x := &rv4Graph{w: gsNew(t, 16)}
	e := gsEdge(t, x.w, Policy{MaxItems: 4, Admission: Block})
	x.g = NewGraph(x.w)
	x.g.Source("src", 1, func(sctx context.Context, out *Emitter) error {
		tok, err := x.w.putWait(sctx, Header{}, 1)
		if err != nil {
			return err
		}
		if err := out.Emit(tok); err != nil {
			return err
		}
		<-sctx.Done()
		if afterSrcDone != nil {
			afterSrcDone()
		}
		return sctx.Err()
	}, e)
	x.g.Sink("sink", 1, e, func(ctx context.Context, tok token.Token) error {
		x.sunk.Add(1)
		if onSink != nil {
			return onSink(ctx)
		}
		return nil
	})
	return x
}

// TestReview4RunErrorOrderings: Run's doc: "after a node fails it returns
// that node's error; when ctx is cancelled it returns ctx's error", and the
// change's rule that whichever came first wins. Every ordering of (node
// error, node Goexit, Stop) against (cancel, cancel with a cause, deadline,
// deadline with a cause), with a counting store.
func TestReview4RunErrorOrderings(t *testing.T) {
	boom := errors.New("rv4 boom")
	myCause := errors.New("rv4 custom cause")
	type tc struct {
		name string
		// run builds the graph and ctx; want checks Run's error.
		run  func(t *testing.T) (*rv4Graph, context.Context, func())
		want func(err error) bool
		desc string
	}
	cases := []tc{
		{
			name: "nodeErrorThenCancelCause",
			run: func(t *testing.T) (*rv4Graph, context.Context, func()) {
				ctx, cancel := context.WithCancelCause(context.Background())
				x := rv4OneShot(t, func() { cancel(myCause) }, func(context.Context) error { return boom })
				return x, ctx, func() { cancel(nil) }
			},
			want: func(err error) bool { return errors.Is(err, boom) },
			desc: "the node's error (boom)",
		},
		{
			name: "cancelCauseThenNodeError",
			run: func(t *testing.T) (*rv4Graph, context.Context, func()) {
				ctx, cancel := context.WithCancelCause(context.Background())
				x := rv4OneShot(t, nil, func(context.Context) error { cancel(myCause); return boom })
				return x, ctx, func() { cancel(nil) }
			},
			want: func(err error) bool { return errors.Is(err, context.Canceled) && !errors.Is(err, boom) },
			desc: "ctx's error (context.Canceled)",
		},
		{
			name: "cancelCauseOnly",
			run: func(t *testing.T) (*rv4Graph, context.Context, func()) {
				ctx, cancel := context.WithCancelCause(context.Background())
				x := rv4OneShot(t, nil, func(context.Context) error { cancel(myCause); return nil })
				return x, ctx, func() { cancel(nil) }
			},
			want: func(err error) bool { return errors.Is(err, context.Canceled) },
			desc: "ctx's error (context.Canceled)",
		},
		{
			name: "cancelledBeforeRunWithCause",
			run: func(t *testing.T) (*rv4Graph, context.Context, func()) {
				ctx, cancel := context.WithCancelCause(context.Background())
				cancel(myCause)
				x := rv4OneShot(t, nil, nil)
				return x, ctx, func() {}
			},
			want: func(err error) bool { return errors.Is(err, context.Canceled) },
			desc: "ctx's error (context.Canceled)",
		},
		{
			name: "nodeGoexitThenCancel",
			run: func(t *testing.T) (*rv4Graph, context.Context, func()) {
				ctx, cancel := context.WithCancel(context.Background())
				x := rv4OneShot(t, cancel, func(context.Context) error { runtime.Goexit(); return nil })
				return x, ctx, cancel
			},
			want: func(err error) bool { return errors.Is(err, ErrNodeExited) },
			desc: "ErrNodeExited",
		},
		{
			name: "cancelThenNodeGoexit",
			run: func(t *testing.T) (*rv4Graph, context.Context, func()) {
				ctx, cancel := context.WithCancel(context.Background())
				x := rv4OneShot(t, nil, func(context.Context) error { cancel(); runtime.Goexit(); return nil })
				return x, ctx, cancel
			},
			want: func(err error) bool { return errors.Is(err, context.Canceled) || errors.Is(err, ErrNodeExited) },
			desc: "context.Canceled (or ErrNodeExited)",
		},
		{
			name: "nodeErrorThenDeadline",
			run: func(t *testing.T) (*rv4Graph, context.Context, func()) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
				x := rv4OneShot(t, func() { <-ctx.Done() }, func(context.Context) error { return boom })
				return x, ctx, cancel
			},
			want: func(err error) bool { return errors.Is(err, boom) },
			desc: "the node's error (boom)",
		},
		{
			name: "deadlineThenNodeError",
			run: func(t *testing.T) (*rv4Graph, context.Context, func()) {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
				x := rv4OneShot(t, nil, func(c context.Context) error { <-c.Done(); return boom })
				return x, ctx, cancel
			},
			want: func(err error) bool { return errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, boom) },
			desc: "context.DeadlineExceeded",
		},
		{
			name: "deadlineWithCause",
			run: func(t *testing.T) (*rv4Graph, context.Context, func()) {
				ctx, cancel := context.WithTimeoutCause(context.Background(), 20*time.Millisecond, myCause)
				x := rv4OneShot(t, nil, nil)
				return x, ctx, cancel
			},
			want: func(err error) bool { return errors.Is(err, context.DeadlineExceeded) },
			desc: "context.DeadlineExceeded",
		},
		{
			name: "stopThenNodeError",
			run: func(t *testing.T) (*rv4Graph, context.Context, func()) {
				var x *rv4Graph
				x = rv4OneShot(t, nil, func(context.Context) error { x.g.Stop(); return boom })
				return x, context.Background(), func() {}
			},
			want: func(err error) bool { return errors.Is(err, boom) },
			desc: "the node's error (boom)",
		},
		{
			name: "stopThenCancelDuringDrain",
			run: func(t *testing.T) (*rv4Graph, context.Context, func()) {
				ctx, cancel := context.WithCancel(context.Background())
				var x *rv4Graph
				x = rv4OneShot(t, nil, func(context.Context) error { x.g.Stop(); cancel(); return nil })
				return x, ctx, cancel
			},
			want: func(err error) bool { return errors.Is(err, context.Canceled) },
			desc: "context.Canceled",
		},
		{
			name: "stopOnly",
			run: func(t *testing.T) (*rv4Graph, context.Context, func()) {
				var x *rv4Graph
				x = rv4OneShot(t, nil, func(context.Context) error { x.g.Stop(); return nil })
				return x, context.Background(), func() {}
			},
			want: func(err error) bool { return err == nil },
			desc: "nil",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			x, ctx, cleanup := c.run(t)
			defer cleanup()
			err := gsMustReturn(t, x.g, ctx)
			if !c.want(err) {
				t.Errorf("Run = %v (%T), want %s", err, err, c.desc)
			}
			x.w.conserve(t, 0)
		})
	}
}

// TestReview4RunNodePanicOrderings: a node panic is re-raised as a
// *NodePanic whether it came before or after a cancellation with a cause.
func TestReview4RunNodePanicOrderings(t *testing.T) {
	myCause := errors.New("rv4 custom cause")
	for _, first := range []string{"panic", "cancel"} {
		t.Run(first+"First", func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			var x *rv4Graph
			if first == "panic" {
				x = rv4OneShot(t, func() { cancel(myCause) }, func(context.Context) error { panic("rv4 node panic") })
			} else {
				x = rv4OneShot(t, nil, func(context.Context) error { cancel(myCause); panic("rv4 node panic") })
			}
			p, returned, err := gsRun(t, x.g, ctx)
			if returned {
				t.Fatalf("Run returned %v, want a *NodePanic", err)
			}
			if np, ok := p.(*NodePanic); !ok || np.Value != "rv4 node panic" {
				t.Fatalf("Run panicked with %v (%T), want *NodePanic{rv4 node panic}", p, p)
			}
			x.w.conserve(t, 0)
		})
	}
}

// TestReview4RunCtxUncomparableCause: Run's doc: "when ctx is cancelled it
// returns ctx's error". context.WithCancelCause accepts any error as the
// cause, including one whose dynamic type is not comparable (a slice type).
// Run must return context.Canceled, not panic comparing the causes.
func TestReview4RunCtxUncomparableCause(t *testing.T) {
	for _, when := range []string{"beforeRun", "midRun"} {
		t.Run(when, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			cause := rv4Uncomparable{"a", "b"}
			var x *rv4Graph
			if when == "beforeRun" {
				cancel(cause)
				x = rv4OneShot(t, nil, nil)
			} else {
				x = rv4OneShot(t, nil, func(context.Context) error { cancel(cause); return nil })
			}
			p, returned, err := gsRun(t, x.g, ctx)
			if !returned {
				t.Fatalf("Run panicked with %v, want it to return context.Canceled (the parent ctx was cancelled with an uncomparable cause)", p)
			}
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Run = %v, want context.Canceled", err)
			}
			x.w.conserve(t, 0)
		})
	}
}

// TestReview4GracefulStopNoLoss: a source Emit that returned nil put its
// token in; a graceful Stop must deliver every such token, with one or
// two source workers, fan-out to two Block edges, through a stage. Stop at
// random points, many times.
func TestReview4GracefulStopNoLoss(t *testing.T) {
	deadline := time.Now().Add(3 * time.Second)
	for iter := 0; iter < 60 && time.Now().Before(deadline); iter++ {
		r := rand.New(rand.NewPCG(uint64(iter), 4))
		w := gsNew(t, 64)
		a := gsEdge(t, w, Policy{MaxItems: 1 + r.IntN(4), Admission: Block})
		b := gsEdge(t, w, Policy{MaxItems: 1 + r.IntN(4), Admission: Block})
		c := gsEdge(t, w, Policy{MaxItems: 1 + r.IntN(4), Admission: Block})
		g := NewGraph(w)
		var ok, refused, sunkB, sunkC atomic.Int64
		var seq atomic.Uint64
		workers := 1 + iter%2
		g.Source("src", workers, func(ctx context.Context, out *Emitter) error {
			for {
				tok, err := w.putWait(ctx, Header{}, seq.Add(1))
				if err != nil {
					return err
				}
				if err := out.Emit(tok); err != nil {
					refused.Add(1)
					return err
				}
				ok.Add(1)
			}
		}, a, b)
		g.Stage("mid", 1+iter%3, a, func(ctx context.Context, tok token.Token, out *Emitter) error {
			return out.Emit(tok)
		}, c)
		g.Sink("sinkB", 1, b, func(context.Context, token.Token) error {
			sunkB.Add(1)
			if r := sunkB.Load(); r%7 == 0 {
				time.Sleep(20 * time.Microsecond)
			}
			return nil
		})
		g.Sink("sinkC", 2, c, func(context.Context, token.Token) error { sunkC.Add(1); return nil })
		d := time.Duration(r.IntN(3000)) * time.Microsecond
		go func() { time.Sleep(d); g.Stop() }()
		if err := gsMustReturn(t, g, context.Background()); err != nil {
			t.Fatalf("iter %d: Run after Stop = %v", iter, err)
		}
		// With fan-out, an Emit refused by Stop while it waited on the
		// second edge has already put its token in the first: refused
		// Emits may be delivered on some edges (not counted as lost).
		if sunkB.Load() < ok.Load() || sunkC.Load() < ok.Load() ||
			sunkB.Load() > ok.Load()+refused.Load() || sunkC.Load() > ok.Load()+refused.Load() {
			t.Fatalf("iter %d: %d Emits returned nil but sinkB got %d, sinkC got %d (refused %d): a graceful Stop lost messages",
				iter, ok.Load(), sunkB.Load(), sunkC.Load(), refused.Load())
		}
		w.conserve(t, 0)
	}
}

// TestReview4SourceIgnoresEmitError: SourceFunc's doc: once the graph is
// stopping, out.Emit refuses and frees the token. A source that ignores
// Emit's error and keeps emitting for a while after Stop (Put, not
// PutWait) must see every one refused with ctx's error, never delivered,
// each freed exactly once; Run returns nil once it returns.
func TestReview4SourceIgnoresEmitError(t *testing.T) {
	for _, nEdges := range []int{0, 1, 2} {
		t.Run(fmt.Sprintf("edges%d", nEdges), func(t *testing.T) {
			w := gsNew(t, 64)
			var edges []*Edge
			var sunk atomic.Int64
			g := NewGraph(w)
			for i := 0; i < nEdges; i++ {
				e := gsEdge(t, w, Policy{MaxItems: 8, Admission: Block})
				edges = append(edges, e)
				g.Sink(fmt.Sprintf("sink%d", i), 1, e, func(context.Context, token.Token) error { sunk.Add(1); return nil })
			}
			var okBefore, refBefore, okAfter, badAfter, wrongErr atomic.Int64
			var firstWrong atomic.Value
			g.Source("src", 2, func(ctx context.Context, out *Emitter) error {
				after := 0
				for after < 300 {
					tok, err := w.s.Put(Header{QoS: BestEffort}, gsPay{V: 1})
					if err != nil {
						runtime.Gosched()
						continue // full: ignore, as a careless source would
					}
					w.record(tok)
					stopping := ctx.Err() != nil
					if stopping {
						after++
					}
					err = out.Emit(tok)
					switch {
					case err == nil && stopping:
						okAfter.Add(1)
					case err == nil:
						okBefore.Add(1)
					case !stopping:
						refBefore.Add(1)
					default:
						badAfter.Add(1)
						if !errors.Is(err, context.Canceled) {
							wrongErr.Add(1)
							firstWrong.CompareAndSwap(nil, err.Error())
						}
					}
				}
				return nil // ignores ctx too
			}, edges...)
			time.AfterFunc(2*time.Millisecond, g.Stop)
			if err := gsMustReturn(t, g, context.Background()); err != nil {
				t.Fatalf("Run = %v, want nil", err)
			}
			if okAfter.Load() != 0 {
				t.Errorf("%d Emits after the source saw its ctx done returned nil, want all refused", okAfter.Load())
			}
			if badAfter.Load() != 600 {
				t.Errorf("refused after Stop = %d, want 600", badAfter.Load())
			}
			if wrongErr.Load() != 0 {
				t.Errorf("%d refusals were not ctx's error (first: %v)", wrongErr.Load(), firstWrong.Load())
			}
			// An Emit refused (by Stop) on its second edge may have put the
			// token in the first: up to nEdges-1 shares of each.
			lo := int64(nEdges) * okBefore.Load()
			hi := lo + int64(max(nEdges-1, 0))*refBefore.Load()
			if sunk.Load() < lo || sunk.Load() > hi {
				t.Errorf("sinks got %d, want %d..%d (%d Emits returned nil to %d edges, %d refused before the source saw Stop)",
					sunk.Load(), lo, hi, okBefore.Load(), nEdges, refBefore.Load())
			}
			w.conserve(t, 0)
		})
	}
}

// TestReview4KeptSourceEmitter: a source's Emitter kept past Run (after a
// Stop, after every source returned nil, after a node error, after a ctx
// cancelled with a cause, and Run(nil)) refuses with the context's error
// and frees the token, also from a goroutine other than the source's, and
// concurrently for several kept Emitters (one goroutine each).
func TestReview4KeptSourceEmitter(t *testing.T) {
	boom := errors.New("rv4 boom")
	for _, how := range []string{"stop", "allReturnNil", "nodeError", "cancelCause", "nilCtx"} {
		t.Run(how, func(t *testing.T) {
			w := gsNew(t, 64)
			e := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
			g := NewGraph(w)
			var mu sync.Mutex
			var kept []*Emitter
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			g.Source("src", 3, func(sctx context.Context, out *Emitter) error {
				mu.Lock()
				kept = append(kept, out)
				mu.Unlock()
				if how == "allReturnNil" || how == "nilCtx" {
					return nil
				}
				tok, err := w.putWait(sctx, Header{}, 1)
				if err != nil {
					return err
				}
				if err := out.Emit(tok); err != nil {
					return err
				}
				<-sctx.Done()
				return sctx.Err()
			}, e)
			var once sync.Once
			g.Sink("sink", 1, e, func(context.Context, token.Token) error {
				switch how {
				case "stop":
					once.Do(g.Stop)
				case "nodeError":
					return boom
				case "cancelCause":
					cancel(errors.New("rv4 cause"))
				}
				return nil
			})
			var err error
			if how == "nilCtx" {
				gsWithin(t, 10*time.Second, "Run(nil)", func() {
					//lint:ignore SA1012 a nil context is what is tested
					err = g.Run(nil)
				})
			} else {
				err = gsMustReturn(t, g, ctx)
			}
			switch how {
			case "stop", "allReturnNil", "nilCtx":
				if err != nil {
					t.Errorf("Run = %v, want nil", err)
				}
			case "nodeError":
				if !errors.Is(err, boom) {
					t.Errorf("Run = %v, want boom", err)
				}
			case "cancelCause":
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Run = %v, want context.Canceled", err)
				}
			}
			if len(kept) != 3 {
				t.Fatalf("kept %d Emitters, want 3", len(kept))
			}
			var wg sync.WaitGroup
			var nilEmits, wrong atomic.Int64
			for _, out := range kept {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < 50; i++ {
						tok, perr := w.s.Put(Header{QoS: BestEffort}, gsPay{V: 9})
						if perr != nil {
							continue
						}
						w.record(tok)
						err := out.Emit(tok)
						if err == nil {
							nilEmits.Add(1)
						} else if !errors.Is(err, context.Canceled) {
							wrong.Add(1)
						}
					}
				}()
			}
			gsWithin(t, 5*time.Second, "kept Emitters", wg.Wait)
			if nilEmits.Load() != 0 {
				t.Errorf("%d Emits on a kept source Emitter after Run returned nil", nilEmits.Load())
			}
			if wrong.Load() != 0 {
				t.Errorf("%d Emits on a kept source Emitter returned something other than context.Canceled", wrong.Load())
			}
			for _, out := range kept {
				if out.Context().Err() == nil {
					t.Errorf("kept source Emitter's Context not done after Run")
				}
			}
			w.conserve(t, 0)
		})
	}
}

// TestReview4AllSourcesReturnNil: every source returns nil at once (some
// after emitting a few): Run returns nil promptly (with ctx and nil ctx),
// everything emitted is delivered, nothing leaks.
func TestReview4AllSourcesReturnNil(t *testing.T) {
	for _, nilCtx := range []bool{false, true} {
		for _, emit := range []int{0, 3} {
			t.Run(fmt.Sprintf("nilCtx=%v/emit=%d", nilCtx, emit), func(t *testing.T) {
				w := gsNew(t, 32)
				e1 := gsEdge(t, w, Policy{MaxItems: 2, Admission: Block})
				e2 := gsEdge(t, w, Policy{MaxItems: 2, Admission: Block})
				g := NewGraph(w)
				var sunk atomic.Int64
				g.Source("a", 3, gsCountSource(w, emit, nil), e1)
				g.Source("b", 2, gsCountSource(w, emit, nil), e1, e2)
				g.Stage("mid", 2, e1, func(ctx context.Context, tok token.Token, out *Emitter) error { return out.Emit(tok) }, e2)
				g.Sink("sink", 1, e2, func(context.Context, token.Token) error { sunk.Add(1); return nil })
				var err error
				start := time.Now()
				if nilCtx {
					gsWithin(t, 10*time.Second, "Run(nil)", func() {
						//lint:ignore SA1012 a nil context is what is tested
						err = g.Run(nil)
					})
				} else {
					err = gsMustReturn(t, g, context.Background())
				}
				if err != nil {
					t.Fatalf("Run = %v, want nil", err)
				}
				if d := time.Since(start); d > 2*time.Second {
					t.Errorf("Run took %v", d)
				}
				// a: 3 workers x emit -> e1 -> e2; b: 2 workers x emit to e1 and e2.
				if want := int64(3*emit + 2*emit*2); sunk.Load() != want {
					t.Errorf("sink got %d, want %d", sunk.Load(), want)
				}
				w.conserve(t, 0)
			})
		}
	}
}

// TestReview4SourceGoexitAndPanicAfterStop: a source that calls Goexit or
// panics after its Emit was refused (graph stopping): the refused token is
// freed once, Run reports the node (ErrNodeExited / *NodePanic), nothing
// leaks.
func TestReview4SourceGoexitAndPanicAfterStop(t *testing.T) {
	for _, mode := range []string{"goexit", "panic"} {
		t.Run(mode, func(t *testing.T) {
			w := gsNew(t, 16)
			e := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
			g := NewGraph(w)
			var refusedErr atomic.Value
			g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
				<-ctx.Done()
				tok := w.put(t, 1)
				if err := out.Emit(tok); err != nil {
					refusedErr.Store(err.Error())
				}
				if mode == "goexit" {
					runtime.Goexit()
				}
				panic("rv4 source panic")
			}, e)
			g.Sink("sink", 1, e, func(context.Context, token.Token) error { return nil })
			time.AfterFunc(time.Millisecond, g.Stop)
			p, returned, err := gsRun(t, g, context.Background())
			if refusedErr.Load() == nil {
				t.Errorf("Emit after Stop returned nil")
			}
			if mode == "goexit" {
				if !returned || !errors.Is(err, ErrNodeExited) {
					t.Errorf("Run = %v (panic %v), want ErrNodeExited", err, p)
				}
			} else if _, ok := p.(*NodePanic); !ok {
				t.Errorf("Run = %v, panic %v, want *NodePanic", err, p)
			}
			w.conserve(t, 0)
		})
	}
}
