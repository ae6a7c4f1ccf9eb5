package message

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// ---------------------------------------------------------------------------
// A user RefStore: a counting wrapper around a real *Store, with hooks that
// can make Free, Retain or Header panic, fail or call runtime.Goexit.
// ---------------------------------------------------------------------------

type gsPay struct{ V uint64 }

type gsStore struct {
	s *Store[gsPay]

	mu      sync.Mutex
	refs    map[token.Token]int  // live references of every token Put here
	ever    map[token.Token]bool // every token ever Put here
	puts    int
	extra   []string // Frees/Retains of a token Put here that had no live reference
	freeErr int      // Frees that returned an error (any token)

	// Hooks run before the real call. A hook may panic or Goexit; a
	// non-nil error is returned without calling the real store.
	freeHook   atomic.Pointer[func(token.Token) error]
	retainHook atomic.Pointer[func(token.Token) error]
	headerHook atomic.Pointer[func(token.Token) error]
}

func gsNew(t testing.TB, slots int) *gsStore {
	t.Helper()
	s, err := NewStore[gsPay](arena.Config{Slots: slots, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return &gsStore{s: s, refs: map[token.Token]int{}, ever: map[token.Token]bool{}}
}

func (w *gsStore) setFree(f func(token.Token) error)   { w.freeHook.Store(&f) }
func (w *gsStore) setRetain(f func(token.Token) error) { w.retainHook.Store(&f) }
func (w *gsStore) setHeader(f func(token.Token) error) { w.headerHook.Store(&f) }

func (w *gsStore) record(t token.Token) {
	w.mu.Lock()
	w.refs[t] = 1
	w.ever[t] = true
	w.puts++
	w.mu.Unlock()
}

func (w *gsStore) put(t testing.TB, v uint64) token.Token {
	t.Helper()
	tok, err := w.s.Put(Header{QoS: BestEffort}, gsPay{V: v})
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	w.record(tok)
	return tok
}

func (w *gsStore) putWait(ctx context.Context, h Header, v uint64) (token.Token, error) {
	if h.QoS == 0 {
		h.QoS = BestEffort
	}
	tok, err := w.s.PutWait(ctx, h, gsPay{V: v})
	if err == nil {
		w.record(tok)
	}
	return tok, err
}

func (w *gsStore) Header(t token.Token) (Header, error) {
	if f := w.headerHook.Load(); f != nil && *f != nil {
		if err := (*f)(t); err != nil {
			return Header{}, err
		}
	}
	return w.s.Header(t)
}

func (w *gsStore) Retain(t token.Token) error {
	if f := w.retainHook.Load(); f != nil && *f != nil {
		if err := (*f)(t); err != nil {
			return err
		}
	}
	err := w.s.Retain(t)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err == nil {
		w.refs[t]++
	} else if w.ever[t] && w.refs[t] == 0 {
		w.extra = append(w.extra, "Retain of dead "+t.String())
	}
	return err
}

func (w *gsStore) Free(t token.Token) error {
	if f := w.freeHook.Load(); f != nil && *f != nil {
		if err := (*f)(t); err != nil {
			w.mu.Lock()
			w.freeErr++
			w.mu.Unlock()
			return err
		}
	}
	err := w.s.Free(t)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err == nil {
		w.refs[t]--
		if w.refs[t] == 0 {
			delete(w.refs, t)
		}
	} else {
		w.freeErr++
		if w.ever[t] && w.refs[t] == 0 {
			w.extra = append(w.extra, "Free of dead "+t.String())
		}
	}
	return err
}

func (w *gsStore) alive(t token.Token) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.refs[t]
}

// conserve checks that every reference is released except those of the
// tokens in leakOK (references whose Free the test itself made fail or
// panic), that nothing was freed or retained once too often (beyond
// wantExtra deliberate double frees), and that the store is whole again.
func (w *gsStore) conserve(t testing.TB, wantExtra int, leakOK ...token.Token) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	ok := map[token.Token]bool{}
	for _, tok := range leakOK {
		ok[tok] = true
	}
	var leaked []string
	leakedSlots := 0
	for tok, n := range w.refs {
		if ok[tok] {
			leakedSlots++
			continue
		}
		leaked = append(leaked, fmt.Sprintf("%v(%d refs)", tok, n))
	}
	sort.Strings(leaked)
	if len(leaked) > 0 {
		t.Errorf("leak: %d of %d Put messages still referenced at the end: %s", len(leaked), w.puts, gsFirst(leaked, 10))
	}
	if len(w.extra) != wantExtra {
		t.Errorf("double free/retain: %d calls on dead tokens, want %d: %s", len(w.extra), wantExtra, gsFirst(w.extra, 10))
	}
	if got, want := w.s.Available(), w.s.Capacity()-len(w.refs); got != want {
		t.Errorf("Store.Available() = %d, want %d (Capacity %d, %d messages legitimately held)", got, want, w.s.Capacity(), len(w.refs))
	}
	if len(leakOK) == 0 && len(w.refs) == 0 && w.s.Available() != w.s.Capacity() {
		t.Errorf("Available %d != Capacity %d", w.s.Available(), w.s.Capacity())
	}
}

func gsFirst(s []string, n int) string {
	if len(s) > n {
		return strings.Join(s[:n], ", ") + ", ..."
	}
	return strings.Join(s, ", ")
}

func gsEdge(t testing.TB, hs HeaderStore, p Policy) *Edge {
	t.Helper()
	e, err := NewEdge(hs, p)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// gsDump is every goroutine's stack, for hang reports.
func gsDump() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// gsWithin runs f in its own goroutine and fails the test, with a
// goroutine dump, if it does not finish within d. It returns what f
// panicked with (nil if nothing) and whether f returned normally
// (false: it panicked or called runtime.Goexit).
func gsWithin(t testing.TB, d time.Duration, what string, f func()) (panicked any, returned bool) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() { panicked = recover() }()
		f()
		returned = true
	}()
	select {
	case <-done:
		return panicked, returned
	case <-time.After(d):
		t.Fatalf("%s did not finish within %v (hang); goroutines:\n%s", what, d, gsDump())
		return nil, false
	}
}

// gsRun runs g.Run(ctx) under a 10 s watchdog.
func gsRun(t testing.TB, g *Graph, ctx context.Context) (panicked any, returned bool, err error) {
	t.Helper()
	panicked, returned = gsWithin(t, 10*time.Second, "Graph.Run", func() { err = g.Run(ctx) })
	return panicked, returned, err
}

// gsMustReturn runs g and fails if Run panicked or did not return.
func gsMustReturn(t testing.TB, g *Graph, ctx context.Context) error {
	t.Helper()
	p, ok, err := gsRun(t, g, ctx)
	if p != nil {
		t.Fatalf("Run panicked: %v", p)
	}
	if !ok {
		t.Fatalf("Run did not return (its goroutine exited)")
	}
	return err
}

// gsCountSource Puts n messages (PutWait) and Emits each; it returns ctx's
// error if stopped.
func gsCountSource(w *gsStore, n int, emitted *atomic.Int64) SourceFunc {
	var next atomic.Uint64
	return func(ctx context.Context, out *Emitter) error {
		for i := 0; i < n; i++ {
			tok, err := w.putWait(ctx, Header{}, next.Add(1))
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
			if emitted != nil {
				emitted.Add(1)
			}
		}
		return nil
	}
}

// ---------------------------------------------------------------------------
// Normal flow.
// ---------------------------------------------------------------------------

// TestGraphStoreConservationFanOut: a stage that passes every token on and
// emits a fresh one every 10th, fanned out to two sinks, over a user
// RefStore: Run returns nil once the sources are done, every message
// reaches both sinks, and every reference is freed exactly once.
func TestGraphStoreConservationFanOut(t *testing.T) {
	w := gsNew(t, 64)
	e1 := gsEdge(t, w, Policy{MaxItems: 8})
	a := gsEdge(t, w, Policy{MaxItems: 4})
	b := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
	const n = 300
	var sunkA, sunkB atomic.Int64
	g := NewGraph(w)
	g.Source("src", 2, gsCountSource(w, n/2, nil), e1)
	g.Stage("mid", 2, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
		var v uint64
		if err := w.s.View(tok, func(m *Message[gsPay]) { v = m.Payload.V }); err != nil {
			return err
		}
		if v%10 == 0 {
			nt, err := w.putWait(ctx, Header{}, 1_000_000+v)
			if err != nil {
				return err
			}
			if err := out.Emit(nt); err != nil {
				return err
			}
		}
		return out.Emit(tok)
	}, a, b)
	g.Sink("a", 1, a, func(ctx context.Context, tok token.Token) error { sunkA.Add(1); return nil })
	g.Sink("b", 3, b, func(ctx context.Context, tok token.Token) error { sunkB.Add(1); return nil })
	if err := gsMustReturn(t, g, context.Background()); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	want := int64(n + n/10)
	// a is DropNewest (the default): it may refuse; b is Block: it may not.
	if got := sunkB.Load(); got != want {
		t.Errorf("Block sink got %d messages, want %d", got, want)
	}
	if got := sunkA.Load() + int64(a.Stats().Rejected); got != want {
		t.Errorf("DropNewest sink got %d + %d refused, want %d", sunkA.Load(), a.Stats().Rejected, want)
	}
	w.conserve(t, 0)
}

// ---------------------------------------------------------------------------
// Node functions that fail.
// ---------------------------------------------------------------------------

var errGsBoom = errors.New("gs: boom")

// TestGraphStoreStagePanicNodePanic: a stage that panics (after emitting
// a fresh token, with t still held) aborts the graph; Run re-raises a
// *NodePanic in the caller's goroutine that errors.As finds and whose
// Unwrap gives the panic's error; nothing leaks, nothing is freed twice.
func TestGraphStoreStagePanicNodePanic(t *testing.T) {
	for _, k := range []int64{1, 37} {
		t.Run(fmt.Sprint("k=", k), func(t *testing.T) {
			w := gsNew(t, 32)
			e1 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
			e2 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
			e3 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
			var seen atomic.Int64
			g := NewGraph(w)
			g.Source("src", 2, func(ctx context.Context, out *Emitter) error {
				for {
					tok, err := w.putWait(ctx, Header{}, 1)
					if err != nil {
						return err
					}
					if err := out.Emit(tok); err != nil {
						return err
					}
				}
			}, e1)
			g.Stage("mid", 3, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
				nt, err := w.putWait(ctx, Header{}, 2)
				if err != nil {
					return err
				}
				if err := out.Emit(nt); err != nil {
					return err
				}
				if seen.Add(1) == k {
					panic(fmt.Errorf("stage says: %w", errGsBoom))
				}
				return out.Emit(tok)
			}, e2, e3)
			g.Sink("s2", 1, e2, func(context.Context, token.Token) error { return nil })
			g.Sink("s3", 2, e3, func(context.Context, token.Token) error { return nil })
			p, _, err := gsRun(t, g, context.Background())
			if p == nil {
				t.Fatalf("Run returned %v without panicking", err)
			}
			perr, ok := p.(error)
			if !ok {
				t.Fatalf("Run panicked with %T %v, want an error (*NodePanic)", p, p)
			}
			var np *NodePanic
			if !errors.As(perr, &np) {
				t.Fatalf("Run panicked with %T %v, want *NodePanic", p, p)
			}
			if np.Node != "mid" || !errors.Is(perr, errGsBoom) || len(np.Stack) == 0 {
				t.Errorf("NodePanic{Node %q, Value %v, %d stack bytes}: want node mid, errors.Is boom, a stack", np.Node, np.Value, len(np.Stack))
			}
			w.conserve(t, 0)
		})
	}
}

// TestGraphStoreStageErrorAfterPassingOn: StageFunc's doc: "if the function
// returns an error or panics before it has passed t on or dropped it
// through out, the graph frees t" - and only then. A stage that Emits or
// Frees t and then fails must not have t freed a second time; one that
// fails before must have it freed. Run returns the node's error.
func TestGraphStoreStageErrorAfterPassingOn(t *testing.T) {
	for _, mode := range []string{"emit-then-fail", "free-then-fail", "fail-holding", "panic-after-emit", "panic-after-free"} {
		t.Run(mode, func(t *testing.T) {
			w := gsNew(t, 32)
			e1 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
			e2 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
			var seen atomic.Int64
			g := NewGraph(w)
			g.Source("src", 1, gsCountSource(w, 1000, nil), e1)
			g.Stage("mid", 2, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
				if seen.Add(1) != 20 {
					return out.Emit(tok)
				}
				switch mode {
				case "emit-then-fail":
					_ = out.Emit(tok)
					return errGsBoom
				case "free-then-fail":
					if err := out.Free(tok); err != nil {
						t.Errorf("Free: %v", err)
					}
					return errGsBoom
				case "fail-holding":
					return errGsBoom
				case "panic-after-emit":
					_ = out.Emit(tok)
					panic(errGsBoom)
				default:
					_ = out.Free(tok)
					panic(errGsBoom)
				}
			}, e2)
			g.Sink("end", 2, e2, func(context.Context, token.Token) error { return nil })
			p, _, err := gsRun(t, g, context.Background())
			if strings.HasPrefix(mode, "panic") {
				var np *NodePanic
				if pe, _ := p.(error); !errors.As(pe, &np) || !errors.Is(pe, errGsBoom) {
					t.Errorf("Run panicked with %v (err %v), want *NodePanic wrapping boom", p, err)
				}
			} else if p != nil || !errors.Is(err, errGsBoom) {
				t.Errorf("Run = %v, panic %v; want an error matching boom", err, p)
			}
			w.conserve(t, 0)
		})
	}
}

// TestGraphStoreNodeGoexit: a node function that calls runtime.Goexit
// aborts the graph; Run returns an error matching ErrNodeExited; nothing
// leaks.
func TestGraphStoreNodeGoexit(t *testing.T) {
	for _, where := range []string{"src", "mid", "end"} {
		t.Run(where, func(t *testing.T) {
			w := gsNew(t, 32)
			e1 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
			e2 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
			var seen [3]atomic.Int64
			g := NewGraph(w)
			g.Source("src", 2, func(ctx context.Context, out *Emitter) error {
				for {
					tok, err := w.putWait(ctx, Header{}, 1)
					if err != nil {
						return err
					}
					if err := out.Emit(tok); err != nil {
						return err
					}
					if where == "src" && seen[0].Add(1) == 30 {
						runtime.Goexit()
					}
				}
			}, e1)
			g.Stage("mid", 2, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
				if where == "mid" && seen[1].Add(1) == 30 {
					runtime.Goexit()
				}
				return out.Emit(tok)
			}, e2)
			g.Sink("end", 2, e2, func(context.Context, token.Token) error {
				if where == "end" && seen[2].Add(1) == 30 {
					runtime.Goexit()
				}
				return nil
			})
			if err := gsMustReturn(t, g, context.Background()); !errors.Is(err, ErrNodeExited) {
				t.Errorf("Run = %v, want ErrNodeExited", err)
			}
			w.conserve(t, 0)
		})
	}
}

// ---------------------------------------------------------------------------
// Emitter misuse.
// ---------------------------------------------------------------------------

// TestGraphStoreEmitBadTokens: Emit of a forged, a stale or the Nil token
// returns an error (t is bad) from a source and from a stage, with one and
// with two output edges, and the graph goes on: every good message gets
// through and nothing is freed twice.
func TestGraphStoreEmitBadTokens(t *testing.T) {
	for _, outs := range []int{1, 2} {
		t.Run(fmt.Sprint("outs=", outs), func(t *testing.T) {
			w := gsNew(t, 32)
			e1 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
			var sinks []*Edge
			for i := 0; i < outs; i++ {
				sinks = append(sinks, gsEdge(t, w, Policy{MaxItems: 4, Admission: Block}))
			}
			stale := w.put(t, 9)
			if err := w.Free(stale); err != nil {
				t.Fatal(err)
			}
			bad := []token.Token{token.New(30000, 77), stale, token.Nil}
			var badOK atomic.Int64
			try := func(out *Emitter) {
				for _, b := range bad {
					if err := out.Emit(b); err == nil {
						badOK.Add(1)
					}
				}
			}
			const n = 50
			var sunk atomic.Int64
			g := NewGraph(w)
			g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
				try(out)
				return gsCountSource(w, n, nil)(ctx, out)
			}, e1)
			var once sync.Once
			g.Stage("mid", 1, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
				once.Do(func() { try(out) })
				return out.Emit(tok)
			}, sinks...)
			for i, e := range sinks {
				g.Sink(fmt.Sprint("end", i), 1, e, func(context.Context, token.Token) error { sunk.Add(1); return nil })
			}
			if err := gsMustReturn(t, g, context.Background()); err != nil {
				t.Fatalf("Run = %v", err)
			}
			if badOK.Load() != 0 {
				t.Errorf("%d Emits of bad tokens returned nil; the doc says Emit returns an error when t is bad", badOK.Load())
			}
			if got := sunk.Load(); got != int64(n*outs) {
				t.Errorf("sinks got %d, want %d", got, n*outs)
			}
			// One deliberate extra Free of stale (above) does not count
			// (it was live then); Emit's own frees of the stale token do.
			w.mu.Lock()
			w.extra = nil // the Emit of a stale token frees it, failing: that is Emit's documented job
			w.mu.Unlock()
			w.conserve(t, 0)
		})
	}
}

var errGsHeader = errors.New("gs: header unavailable")

// TestGraphStoreEmitHeaderErrorFreesToken: Emit's doc: "Emit returns an
// error only when the graph is stopping ..., or when t is bad; then t has
// been freed too." When the store cannot read t's header, Emit reports it
// - and must have freed t, every reference Emit took included. A source's
// Emit and a stage's Emit must agree.
func TestGraphStoreEmitHeaderErrorFreesToken(t *testing.T) {
	for _, where := range []string{"src", "mid"} {
		for _, outs := range []int{1, 2} {
			t.Run(fmt.Sprintf("%s/outs=%d", where, outs), func(t *testing.T) {
				w := gsNew(t, 32)
				e1 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
				var finals []*Edge
				for i := 0; i < outs; i++ {
					finals = append(finals, gsEdge(t, w, Policy{MaxItems: 4, Admission: Block}))
				}
				var marked atomic.Uint64
				w.setHeader(func(tok token.Token) error {
					if uint64(tok) == marked.Load() {
						return errGsHeader
					}
					return nil
				})
				var emitErr error
				var victim token.Token
				emitBad := func(ctx context.Context, out *Emitter) {
					nt, err := w.putWait(ctx, Header{}, 7)
					if err != nil {
						t.Error(err)
						return
					}
					victim = nt
					marked.Store(uint64(nt))
					emitErr = out.Emit(nt)
				}
				g := NewGraph(w)
				if where == "src" {
					g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
						emitBad(ctx, out)
						return nil
					}, finals...)
				} else {
					g.Source("src", 1, gsCountSource(w, 1, nil), e1)
					g.Stage("mid", 1, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
						emitBad(ctx, out)
						return out.Free(tok)
					}, finals...)
				}
				for i, e := range finals {
					g.Sink(fmt.Sprint("end", i), 1, e, func(context.Context, token.Token) error { return nil })
				}
				if err := gsMustReturn(t, g, context.Background()); err != nil {
					t.Fatalf("Run = %v", err)
				}
				if !errors.Is(emitErr, errGsHeader) {
					t.Errorf("Emit of a token whose header cannot be read = %v, want the Header error", emitErr)
				}
				if n := w.alive(victim); n != 0 {
					t.Errorf("Emit returned %v but %v still holds %d reference(s): \"then t has been freed too\" does not hold", emitErr, victim, n)
				}
				w.setHeader(nil)
				w.conserve(t, 0)
			})
		}
	}
}

// TestGraphStoreEmitterFreeTwice: a stage that drops t twice through
// out.Free gets an arena.ErrStale error the second time, and the graph
// does not free t again.
func TestGraphStoreEmitterFreeTwice(t *testing.T) {
	w := gsNew(t, 32)
	e1 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
	e2 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
	var second []error
	var mu sync.Mutex
	g := NewGraph(w)
	g.Source("src", 1, gsCountSource(w, 40, nil), e1)
	g.Stage("mid", 2, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
		if err := out.Free(tok); err != nil {
			return err
		}
		err := out.Free(tok)
		mu.Lock()
		second = append(second, err)
		mu.Unlock()
		return nil
	}, e2)
	g.Sink("end", 1, e2, func(context.Context, token.Token) error { return nil })
	if err := gsMustReturn(t, g, context.Background()); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if len(second) != 40 {
		t.Fatalf("stage ran %d times, want 40", len(second))
	}
	for _, err := range second {
		if !errors.Is(err, arena.ErrStale) {
			t.Fatalf("second out.Free = %v, want arena.ErrStale", err)
		}
	}
	w.conserve(t, 40) // exactly the 40 deliberate second Frees
}

// TestGraphStoreEmitterAfterRun: Emit's doc: "An Emitter used after its
// node function has returned sends at once (and, the graph being stopped,
// is refused and frees t)". Emitters of a source and of a stage kept past
// Run: Emit returns an error and t is freed.
func TestGraphStoreEmitterAfterRun(t *testing.T) {
	w := gsNew(t, 32)
	e1 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
	e2 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
	var srcOut, midOut atomic.Pointer[Emitter]
	g := NewGraph(w)
	g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
		srcOut.Store(out)
		return gsCountSource(w, 5, nil)(ctx, out)
	}, e1)
	g.Stage("mid", 1, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
		midOut.Store(out)
		return out.Emit(tok)
	}, e2)
	g.Sink("end", 1, e2, func(context.Context, token.Token) error { return nil })
	if err := gsMustReturn(t, g, context.Background()); err != nil {
		t.Fatalf("Run = %v", err)
	}
	for name, p := range map[string]*atomic.Pointer[Emitter]{"source": &srcOut, "stage": &midOut} {
		out := p.Load()
		tok := w.put(t, 3)
		var err error
		gsWithin(t, 5*time.Second, name+" Emit after Run", func() { err = out.Emit(tok) })
		if err == nil {
			t.Errorf("%s Emitter after Run: Emit = nil, want a refusal (graph stopped)", name)
		} else if !errors.Is(err, ErrEdgeClosed) && !errors.Is(err, context.Canceled) {
			t.Errorf("%s Emitter after Run: Emit = %v, want a closed edge or done context", name, err)
		}
		if n := w.alive(tok); n != 0 {
			t.Errorf("%s Emitter after Run: %v still has %d refs after a refused Emit", name, tok, n)
		}
		if out.Context().Err() == nil {
			t.Errorf("%s Emitter's Context is not done after Run returned", name)
		}
	}
	w.conserve(t, 0)
}

// TestGraphStoreStageEmitterAsyncAfterReturn: a stage that hands its
// Emitter to another goroutine and Emits a fresh token through it after
// the stage function returned, while the worker waits for its next input.
// Emit's doc: "An Emitter used after its node function has returned sends
// at once". The Emit returns nil, so the graph owns the token: it must
// reach the sink (the graceful Stop drains everything emitted) or at
// least be freed when Run returns.
func TestGraphStoreStageEmitterAsyncAfterReturn(t *testing.T) {
	w := gsNew(t, 32)
	e1 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
	e2 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
	release := make(chan struct{})
	asyncDone := make(chan error, 1)
	var late token.Token
	var sunk atomic.Int64
	g := NewGraph(w)
	g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
		tok, err := w.putWait(ctx, Header{}, 1)
		if err != nil {
			return err
		}
		if err := out.Emit(tok); err != nil {
			return err
		}
		<-ctx.Done() // until Stop
		return nil
	}, e1)
	g.Stage("mid", 1, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
		nt, err := w.putWait(ctx, Header{}, 2)
		if err != nil {
			return err
		}
		late = nt
		go func() {
			// Wait until the worker is parked on its input edge again
			// (e1.Len takes the edge's lock: that orders this goroutine
			// after the worker's bookkeeping of the returned call).
			time.Sleep(50 * time.Millisecond)
			_ = e1.Len()
			asyncDone <- out.Emit(nt)
		}()
		return out.Emit(tok)
	}, e2)
	g.Sink("end", 1, e2, func(ctx context.Context, tok token.Token) error {
		if sunk.Add(1) == 1 {
			<-release // busy: not parked on e2 while the late Emit happens
		}
		return nil
	})
	var runErr error
	var runPanic any
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() { runPanic = recover() }()
		runErr = g.Run(context.Background())
	}()
	var emitErr error
	select {
	case emitErr = <-asyncDone:
	case <-time.After(10 * time.Second):
		t.Fatalf("late Emit hung; goroutines:\n%s", gsDump())
	}
	g.Stop()
	close(release)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("Run hung; goroutines:\n%s", gsDump())
	}
	if runPanic != nil || runErr != nil {
		t.Fatalf("Run = %v, panic %v", runErr, runPanic)
	}
	if emitErr == nil {
		if sunk.Load() != 2 {
			t.Errorf("the late Emit returned nil but the sink got %d messages, want 2 (graceful Stop)", sunk.Load())
		}
	}
	if n := w.alive(late); n != 0 {
		t.Errorf("late Emit = %v, yet %v still holds %d reference(s) after Run returned (held back, never sent or freed)", emitErr, late, n)
	}
	w.conserve(t, 0)
}

// ---------------------------------------------------------------------------
// Stopping and cancelling.
// ---------------------------------------------------------------------------

// TestGraphStoreCancelBlocked: sources blocked in PutWait on a full store
// and in Emit on full Block edges, stages blocked in Emit, sinks blocked in
// their function: cancelling Run's context ends it promptly with ctx's
// error, and every message is freed.
func TestGraphStoreCancelBlocked(t *testing.T) {
	w := gsNew(t, 12)
	e1 := gsEdge(t, w, Policy{MaxItems: 1, Admission: Block})
	e2 := gsEdge(t, w, Policy{MaxItems: 1, Admission: Block})
	e3 := gsEdge(t, w, Policy{MaxItems: 1, Admission: Block})
	var inSink atomic.Int64
	g := NewGraph(w)
	g.Source("src", 4, func(ctx context.Context, out *Emitter) error {
		for {
			tok, err := w.putWait(ctx, Header{}, 1)
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
		}
	}, e1)
	g.Stage("mid", 2, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
		nt, err := w.putWait(ctx, Header{}, 2)
		if err != nil {
			out.Free(tok)
			return err
		}
		if err := out.Emit(nt); err != nil {
			out.Free(tok)
			return err
		}
		return out.Emit(tok)
	}, e2, e3)
	blockSink := func(ctx context.Context, tok token.Token) error {
		inSink.Add(1)
		<-ctx.Done()
		return ctx.Err()
	}
	g.Sink("s2", 1, e2, blockSink)
	g.Sink("s3", 1, e3, blockSink)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		deadline := time.Now().Add(5 * time.Second)
		for (inSink.Load() < 2 || e1.Len() != 1 || e2.Len() != 1 || e3.Len() != 1) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if time.Now().After(deadline) {
			t.Logf("not saturated: inSink %d, Available %d, edges %d %d %d", inSink.Load(), w.s.Available(), e1.Len(), e2.Len(), e3.Len())
		}
		time.Sleep(20 * time.Millisecond)
		cancel()
	}()
	err := gsMustReturn(t, g, ctx)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v, want context.Canceled", err)
	}
	for i, e := range []*Edge{e1, e2, e3} {
		if e.Len() != 0 {
			t.Errorf("edge %d holds %d tokens after Run", i, e.Len())
		}
	}
	w.conserve(t, 0)
}

// TestGraphStoreStopConcurrent: Stop from many goroutines at once while
// the graph runs (and again after Run): Run returns nil, and every message
// a source emitted successfully reaches the sink (graceful stop).
func TestGraphStoreStopConcurrent(t *testing.T) {
	w := gsNew(t, 32)
	e1 := gsEdge(t, w, Policy{MaxItems: 2, Admission: Block})
	e2 := gsEdge(t, w, Policy{MaxItems: 2, Admission: Block})
	var emitted, sunk atomic.Int64
	g := NewGraph(w)
	g.Source("src", 3, func(ctx context.Context, out *Emitter) error {
		for {
			tok, err := w.putWait(ctx, Header{}, 1)
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
			emitted.Add(1)
		}
	}, e1)
	g.Stage("mid", 2, e1, func(ctx context.Context, tok token.Token, out *Emitter) error { return out.Emit(tok) }, e2)
	g.Sink("end", 2, e2, func(context.Context, token.Token) error { sunk.Add(1); return nil })
	go func() {
		for emitted.Load() < 100 {
			time.Sleep(time.Millisecond)
		}
		var wg sync.WaitGroup
		for i := 0; i < 64; i++ {
			wg.Add(1)
			go func() { defer wg.Done(); g.Stop() }()
		}
		wg.Wait()
	}()
	if err := gsMustReturn(t, g, context.Background()); err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
	g.Stop()
	if emitted.Load() != sunk.Load() {
		t.Errorf("emitted %d, sunk %d: a graceful Stop delivers everything emitted", emitted.Load(), sunk.Load())
	}
	w.conserve(t, 0)
}

// TestGraphStoreStopBeforeRun: "It may be called at any time": a Stop
// before Run makes Run stop at once, gracefully, returning nil.
func TestGraphStoreStopBeforeRun(t *testing.T) {
	w := gsNew(t, 8)
	e1 := gsEdge(t, w, Policy{MaxItems: 2, Admission: Block})
	g := NewGraph(w)
	g.Source("src", 2, func(ctx context.Context, out *Emitter) error {
		for {
			tok, err := w.putWait(ctx, Header{}, 1)
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
		}
	}, e1)
	g.Sink("end", 1, e1, func(context.Context, token.Token) error { return nil })
	g.Stop()
	g.Stop()
	if err := gsMustReturn(t, g, context.Background()); err != nil {
		t.Errorf("Run after Stop = %v, want nil", err)
	}
	w.conserve(t, 0)
}

// TestGraphStoreRunTwice: the second Run (sequential or concurrent) returns
// ErrBadGraph and disturbs nothing.
func TestGraphStoreRunTwice(t *testing.T) {
	w := gsNew(t, 8)
	e1 := gsEdge(t, w, Policy{MaxItems: 2, Admission: Block})
	started := make(chan struct{})
	var once sync.Once
	g := NewGraph(w)
	g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
		once.Do(func() { close(started) })
		<-ctx.Done()
		return ctx.Err()
	}, e1)
	g.Sink("end", 1, e1, func(context.Context, token.Token) error { return nil })
	first := make(chan error, 1)
	go func() { first <- g.Run(context.Background()) }()
	<-started
	var err2 error
	gsWithin(t, 5*time.Second, "concurrent second Run", func() { err2 = g.Run(context.Background()) })
	if !errors.Is(err2, ErrBadGraph) {
		t.Errorf("concurrent second Run = %v, want ErrBadGraph", err2)
	}
	g.Stop()
	select {
	case err := <-first:
		if err != nil {
			t.Errorf("first Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("first Run hung; goroutines:\n%s", gsDump())
	}
	if err := gsMustReturn(t, g, context.Background()); !errors.Is(err, ErrBadGraph) {
		t.Errorf("third Run = %v, want ErrBadGraph", err)
	}
	w.conserve(t, 0)
}

// TestGraphStoreBadGraphs: Run on a cycle, on nil edges, nil functions,
// no workers, and an edge on another store returns the documented errors
// at once; an empty graph returns nil; a nil store is ErrNilStore.
func TestGraphStoreBadGraphs(t *testing.T) {
	w := gsNew(t, 8)
	other := gsNew(t, 8)
	nop := func(context.Context, token.Token, *Emitter) error { return nil }
	sink := func(context.Context, token.Token) error { return nil }
	src := func(context.Context, *Emitter) error { return nil }
	cases := map[string]struct {
		build func(g *Graph)
		want  []error
	}{
		"empty": {func(g *Graph) {}, nil},
		"cycle": {func(g *Graph) {
			a, b := gsEdge(t, w, Policy{MaxItems: 2}), gsEdge(t, w, Policy{MaxItems: 2})
			g.Source("src", 1, src, a)
			g.Stage("x", 1, a, nop, b)
			g.Stage("y", 1, b, nop, a)
		}, []error{ErrGraphCycle, ErrBadGraph}},
		"self-loop": {func(g *Graph) {
			a := gsEdge(t, w, Policy{MaxItems: 2})
			g.Stage("x", 1, a, nop, a)
		}, []error{ErrGraphCycle, ErrBadGraph}},
		"nil-out": {func(g *Graph) { g.Source("src", 1, src, nil) }, []error{ErrBadGraph}},
		"nil-in":  {func(g *Graph) { g.Sink("end", 1, nil, sink) }, []error{ErrBadGraph}},
		"nil-fn": {func(g *Graph) {
			a := gsEdge(t, w, Policy{MaxItems: 2})
			g.Source("src", 1, nil, a)
			g.Sink("end", 1, a, sink)
		}, []error{ErrBadGraph}},
		"no-workers": {func(g *Graph) {
			a := gsEdge(t, w, Policy{MaxItems: 2})
			g.Source("src", 0, src, a)
			g.Sink("end", 1, a, sink)
		}, []error{ErrBadGraph}},
		"foreign-edge": {func(g *Graph) {
			a := gsEdge(t, other, Policy{MaxItems: 2})
			g.Source("src", 1, src, a)
			g.Sink("end", 1, a, sink)
		}, []error{ErrBadGraph}},
		"unfed-input": {func(g *Graph) {
			a := gsEdge(t, w, Policy{MaxItems: 2})
			g.Sink("end", 1, a, sink)
		}, []error{ErrBadGraph}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			g := NewGraph(w)
			c.build(g)
			err := gsMustReturn(t, g, context.Background())
			if len(c.want) == 0 && err != nil {
				t.Errorf("Run = %v, want nil", err)
			}
			for _, want := range c.want {
				if !errors.Is(err, want) {
					t.Errorf("Run = %v, want %v", err, want)
				}
			}
		})
	}
	if err := gsMustReturn(t, NewGraph(nil), context.Background()); !errors.Is(err, ErrNilStore) {
		t.Errorf("NewGraph(nil).Run = %v, want ErrNilStore", err)
	}
	w.conserve(t, 0)
}

// ---------------------------------------------------------------------------
// A RefStore that misbehaves.
// ---------------------------------------------------------------------------

var errGsFree = errors.New("gs: free refused")
var errGsRetain = errors.New("gs: retain refused")

// gsInRunDrain reports whether the caller is inside Graph.Run's own final
// Drain of an edge (not a worker's).
func gsInRunDrain() bool {
	buf := make([]byte, 64<<10)
	st := string(buf[:runtime.Stack(buf, false)])
	return strings.Contains(st, ".(*Edge).Drain(") && strings.Contains(st, ".(*Graph).Run(")
}

// gsFillChains builds k source -> sink chains whose sinks block on their
// first message until ctx is done, and whose sources fill their edge and
// then wait; it returns the graph, the edges, a func that waits until
// every edge is full, and one that tells whether a token is one still
// queued in an edge (emitted, never received by a sink): such a token is
// freed only by Run's final Drain.
func gsFillChains(t *testing.T, w *gsStore, k, per int) (*Graph, []*Edge, func(), func(token.Token) bool) {
	g := NewGraph(w)
	var edges []*Edge
	var inSink atomic.Int64
	var emitted, received sync.Map
	for i := 0; i < k; i++ {
		e := gsEdge(t, w, Policy{MaxItems: per, Admission: Block})
		edges = append(edges, e)
		g.Source(fmt.Sprint("src", i), 1, func(ctx context.Context, out *Emitter) error {
			for j := 0; j < per+1; j++ {
				tok, err := w.putWait(ctx, Header{}, uint64(i))
				if err != nil {
					return err
				}
				emitted.Store(tok, true)
				if err := out.Emit(tok); err != nil {
					return err
				}
			}
			<-ctx.Done()
			return ctx.Err()
		}, e)
		g.Sink(fmt.Sprint("end", i), 1, e, func(ctx context.Context, tok token.Token) error {
			received.Store(tok, true)
			inSink.Add(1)
			<-ctx.Done()
			return ctx.Err() // the worker quits: the queue is left to Run's Drain
		})
	}
	wait := func() {
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			full := inSink.Load() == int64(k)
			for _, e := range edges {
				full = full && e.Len() == per
			}
			if full {
				return
			}
			time.Sleep(time.Millisecond)
		}
		t.Errorf("chains did not fill")
	}
	queued := func(tok token.Token) bool {
		_, em := emitted.Load(tok)
		_, rc := received.Load(tok)
		return em && !rc
	}
	return g, edges, wait, queued
}

// TestGraphStoreFreePanicTeardown: the store's Free panics for one message
// while Run drains its edges after a cancel. The Graph doc: "Either way,
// when Run returns no token is left in the graph's edges." Whatever Run
// does with the store's panic (re-raise it, as the edge does, or report
// it), every other edge must still be drained and every other message
// freed.
func TestGraphStoreFreePanicTeardown(t *testing.T) {
	w := gsNew(t, 64)
	g, edges, wait, queued := gsFillChains(t, w, 6, 4)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { wait(); cancel() }()
	var victim atomic.Uint64
	w.setFree(func(tok token.Token) error {
		if queued(tok) && gsInRunDrain() && victim.CompareAndSwap(0, uint64(tok)) {
			panic("gs: store Free panicked")
		}
		return nil
	})
	p, _, err := gsRun(t, g, ctx)
	t.Logf("Run with a panicking Free in teardown: err %v, panic %v", err, p)
	if victim.Load() == 0 {
		t.Fatalf("the store's panic never fired")
	}
	left := 0
	for i, e := range edges {
		if n := e.Len(); n != 0 {
			left += n
			t.Errorf("edge %d still holds %d tokens after Run (Run stopped draining at the store's panic)", i, n)
		}
	}
	w.setFree(nil)
	w.conserve(t, 0, token.Token(victim.Load()))
	for _, e := range edges {
		e.Drain()
	}
}

// TestGraphStoreFreeErrorTeardown: a Free that returns an error during the
// teardown drain: Run still returns ctx's error, drains every edge, and
// frees every other message; the edge counts it in FreeErrors.
func TestGraphStoreFreeErrorTeardown(t *testing.T) {
	w := gsNew(t, 64)
	g, edges, wait, queued := gsFillChains(t, w, 4, 3)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { wait(); cancel() }()
	var victim atomic.Uint64
	w.setFree(func(tok token.Token) error {
		if queued(tok) && gsInRunDrain() && victim.CompareAndSwap(0, uint64(tok)) {
			return errGsFree
		}
		return nil
	})
	err := gsMustReturn(t, g, ctx)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v, want context.Canceled", err)
	}
	if victim.Load() == 0 {
		t.Fatalf("the store's error never fired")
	}
	var fe uint64
	for i, e := range edges {
		if e.Len() != 0 {
			t.Errorf("edge %d holds %d tokens", i, e.Len())
		}
		fe += e.Stats().FreeErrors
	}
	w.setFree(nil)
	if fe != 1 {
		t.Errorf("FreeErrors total %d, want 1", fe)
	}
	w.conserve(t, 0, token.Token(victim.Load()))
}

// TestGraphStoreFreeGoexitInWorker: the store's Free calls runtime.Goexit
// (as a test double calling t.FailNow would) when a stage's receive frees
// an expired message. The worker is gone; the graph must still be able to
// finish: Run must return (not hang).
func TestGraphStoreFreeGoexitInWorker(t *testing.T) {
	w := gsNew(t, 32)
	e1 := gsEdge(t, w, Policy{MaxItems: 8, Admission: Block})
	e2 := gsEdge(t, w, Policy{MaxItems: 8, Admission: Block})
	var expiring atomic.Uint64
	w.setFree(func(tok token.Token) error {
		if uint64(tok) == expiring.Load() {
			runtime.Goexit()
		}
		return nil
	})
	g := NewGraph(w)
	g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
		first, err := w.putWait(ctx, Header{}, 0)
		if err != nil {
			return err
		}
		if err := out.Emit(first); err != nil {
			return err
		}
		tok, err := w.putWait(ctx, Header{Deadline: Now() + int64(20*time.Millisecond)}, 1)
		if err != nil {
			return err
		}
		expiring.Store(uint64(tok))
		if err := out.Emit(tok); err != nil {
			return err
		}
		<-ctx.Done()
		return ctx.Err()
	}, e1)
	g.Stage("mid", 1, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
		return out.Emit(tok)
	}, e2)
	g.Sink("end", 1, e2, func(ctx context.Context, tok token.Token) error {
		var v uint64
		_ = w.s.View(tok, func(m *Message[gsPay]) { v = m.Payload.V })
		if v == 0 {
			time.Sleep(50 * time.Millisecond) // the next message expires in e2 meanwhile
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var err error
	// Run should be done in ~100 ms; 3 s (past its own ctx's 2 s) is a hang.
	p, returned := gsWithin(t, 3*time.Second, "Graph.Run (store Free called runtime.Goexit under an edge's lock)", func() { err = g.Run(ctx) })
	t.Logf("Run = %v, panic %v, returned %v", err, p, returned)
	if !returned {
		t.Errorf("Run's goroutine exited instead of returning")
	}
	w.setFree(nil)
}

// TestGraphStoreRetainErrorFanOut: a source's Emit to two edges when the
// store's Retain fails: Emit returns the error and frees t; the source
// returns it, Run returns it; nothing leaks.
func TestGraphStoreRetainErrorFanOut(t *testing.T) {
	for _, where := range []string{"src", "mid"} {
		t.Run(where, func(t *testing.T) {
			w := gsNew(t, 32)
			e0 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
			a := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
			b := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
			var n atomic.Int64
			w.setRetain(func(token.Token) error {
				if n.Add(1) == 10 {
					return errGsRetain
				}
				return nil
			})
			g := NewGraph(w)
			if where == "src" {
				g.Source("src", 1, gsCountSource(w, 1000, nil), a, b)
			} else {
				g.Source("src", 1, gsCountSource(w, 1000, nil), e0)
				g.Stage("mid", 2, e0, func(ctx context.Context, tok token.Token, out *Emitter) error {
					return out.Emit(tok)
				}, a, b)
			}
			g.Sink("a", 1, a, func(context.Context, token.Token) error { return nil })
			g.Sink("b", 1, b, func(context.Context, token.Token) error { return nil })
			if err := gsMustReturn(t, g, context.Background()); !errors.Is(err, errGsRetain) {
				t.Errorf("Run = %v, want the Retain error", err)
			}
			w.setRetain(nil)
			w.conserve(t, 0)
		})
	}
}

// ---------------------------------------------------------------------------
// SendAll with a user store.
// ---------------------------------------------------------------------------

// TestGraphStoreSendAllUserStoreErrors: SendAll over a user RefStore whose
// Retain or Free fails: the documented outcome, and no reference lost.
func TestGraphStoreSendAllUserStoreErrors(t *testing.T) {
	ctx := context.Background()
	t.Run("retain-error", func(t *testing.T) {
		w := gsNew(t, 8)
		es := []*Edge{gsEdge(t, w, Policy{MaxItems: 2}), gsEdge(t, w, Policy{MaxItems: 2}), gsEdge(t, w, Policy{MaxItems: 2})}
		var n atomic.Int64
		w.setRetain(func(token.Token) error {
			if n.Add(1) == 2 {
				return errGsRetain
			}
			return nil
		})
		tok := w.put(t, 1)
		sent, err := SendAll(ctx, w, tok, es...)
		if sent != 0 || !errors.Is(err, errGsRetain) {
			t.Errorf("SendAll = %d, %v; want 0 and the Retain error", sent, err)
		}
		for i, e := range es {
			if e.Len() != 0 {
				t.Errorf("edge %d got t although a Retain failed", i)
			}
		}
		w.setRetain(nil)
		w.conserve(t, 0)
	})
	t.Run("free-error-on-refused-share", func(t *testing.T) {
		w := gsNew(t, 8)
		closed := gsEdge(t, w, Policy{MaxItems: 2})
		closed.Close()
		open := gsEdge(t, w, Policy{MaxItems: 2})
		tok := w.put(t, 1)
		w.setFree(func(token.Token) error { return errGsFree })
		sent, err := SendAll(ctx, w, tok, closed, open)
		w.setFree(nil)
		if sent != 1 || !errors.Is(err, ErrEdgeClosed) || !errors.Is(err, errGsFree) {
			t.Errorf("SendAll = %d, %v; want 1, ErrEdgeClosed and the Free error joined", sent, err)
		}
		if open.Len() != 1 {
			t.Errorf("open edge holds %d, want 1", open.Len())
		}
		open.Drain()
		w.conserve(t, 0, tok) // the refused share's Free failed: one reference kept
	})
}

// TestGraphStoreSendAllUserStorePanics: SendAll "always consumes the
// caller's one reference to t, whatever happens". When the store's Free
// panics on the share the first (closed) edge refused, the panic may reach
// the caller, but the shares of the other edges must not be lost: they
// are sent (or freed). Likewise a Retain that panics must not strand the
// references already taken. Only the reference whose Free panicked may
// stay.
func TestGraphStoreSendAllUserStorePanics(t *testing.T) {
	ctx := context.Background()
	t.Run("free-panics", func(t *testing.T) {
		w := gsNew(t, 8)
		closed := gsEdge(t, w, Policy{MaxItems: 2})
		closed.Close()
		a, b := gsEdge(t, w, Policy{MaxItems: 2}), gsEdge(t, w, Policy{MaxItems: 2})
		tok := w.put(t, 1)
		var fired atomic.Bool
		w.setFree(func(token.Token) error {
			if fired.CompareAndSwap(false, true) {
				panic("gs: free panics")
			}
			return nil
		})
		var sent int
		p, _ := gsWithin(t, 5*time.Second, "SendAll", func() { sent, _ = SendAll(ctx, w, tok, closed, a, b) })
		w.setFree(nil)
		t.Logf("SendAll: sent %d, panic %v; a holds %d, b holds %d, t has %d refs", sent, p, a.Len(), b.Len(), w.alive(tok))
		if got, want := w.alive(tok), 1+a.Len()+b.Len(); got != want {
			t.Errorf("after the panic, t has %d references; want %d (the panicked Free's share + one per edge holding t): %d share(s) stranded",
				got, want, got-want)
		}
		a.Drain()
		b.Drain()
	})
	t.Run("retain-panics", func(t *testing.T) {
		w := gsNew(t, 8)
		es := []*Edge{gsEdge(t, w, Policy{MaxItems: 2}), gsEdge(t, w, Policy{MaxItems: 2}), gsEdge(t, w, Policy{MaxItems: 2})}
		tok := w.put(t, 1)
		var n atomic.Int64
		w.setRetain(func(token.Token) error {
			if n.Add(1) == 2 {
				panic("gs: retain panics")
			}
			return nil
		})
		var sent int
		p, _ := gsWithin(t, 5*time.Second, "SendAll", func() { sent, _ = SendAll(ctx, w, tok, es...) })
		w.setRetain(nil)
		held := 0
		for _, e := range es {
			held += e.Len()
		}
		t.Logf("SendAll: sent %d, panic %v; edges hold %d, t has %d refs", sent, p, held, w.alive(tok))
		if got := w.alive(tok); got != held {
			t.Errorf("after a Retain panic, t has %d references and the edges hold %d: %d reference(s) stranded (\"consumes the caller's one reference to t, whatever happens\")", got, held, got-held)
		}
		for _, e := range es {
			e.Drain()
		}
	})
}

// TestGraphStoreAbortStopsWorkers: the Graph doc: "A failing node, or the
// cancellation of Run's context, aborts instead: all workers stop at once
// and whatever is still queued is freed." A sink whose edge still holds
// messages when Run's context is cancelled must not be handed them
// afterwards: they are freed, not delivered.
func TestGraphStoreAbortStopsWorkers(t *testing.T) {
	w := gsNew(t, 32)
	e := gsEdge(t, w, Policy{MaxItems: 8, Admission: Block})
	ctx, cancel := context.WithCancel(context.Background())
	var calls, afterCancel atomic.Int64
	g := NewGraph(w)
	g.Source("src", 1, func(sctx context.Context, out *Emitter) error {
		if err := gsCountSource(w, 9, nil)(sctx, out); err != nil {
			return err
		}
		for e.Len() != 8 || calls.Load() != 1 {
			time.Sleep(time.Millisecond)
		}
		cancel()
		<-sctx.Done()
		return nil
	}, e)
	g.Sink("end", 1, e, func(sctx context.Context, tok token.Token) error {
		if calls.Add(1) == 1 {
			<-sctx.Done() // the one in flight when the graph aborts
			return nil
		}
		if sctx.Err() != nil {
			afterCancel.Add(1)
		}
		return nil
	})
	err := gsMustReturn(t, g, ctx)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v, want context.Canceled", err)
	}
	if n := afterCancel.Load(); n != 0 {
		t.Errorf("the sink was called %d more times after Run's context was cancelled (edge Stats %+v); the doc says workers stop at once and what is queued is freed", n, e.Stats())
	}
	w.conserve(t, 0)
}
