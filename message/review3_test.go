package message

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// ---------------------------------------------------------------------------
// rv3Store: a gsStore whose Free can misbehave AFTER it really freed (a test
// double that records the free, then calls t.FailNow or panics), the case
// the code's "uncount before the Free" rule is written for (freeOwed,
// fanOut.free, flush). Header and Retain hooks are gsStore's (run before the
// real call).
// ---------------------------------------------------------------------------

type rv3Store struct {
	*gsStore
	after atomic.Pointer[func(token.Token)]
}

func rv3New(t testing.TB, slots int) *rv3Store { return &rv3Store{gsStore: gsNew(t, slots)} }

func (r *rv3Store) Free(t token.Token) error {
	err := r.gsStore.Free(t)
	if f := r.after.Load(); f != nil && *f != nil {
		(*f)(t)
	}
	return err
}

func (r *rv3Store) setAfter(f func(token.Token)) { r.after.Store(&f) }

func (r *rv3Store) clearHooks() {
	r.setAfter(nil)
	r.setHeader(nil)
	r.setRetain(nil)
	r.setFree(nil)
}

// rv3Misbehave is what a hook does when it fires.
func rv3Misbehave(mode string) {
	if mode == "goexit" {
		runtime.Goexit()
	}
	panic("rv3: store " + mode)
}

// ---------------------------------------------------------------------------
// 1. A source's Emit (the direct path) whose store calls runtime.Goexit.
// ---------------------------------------------------------------------------

// TestReview3GraphEmitGoexitStrandsShares: a node's Emit to 1..3 output
// edges meets a store method that calls runtime.Goexit: the k-th Header of
// t, the k-th Retain of t, or the Free of a message an output edge evicts.
// The README's guarantee row: "a store that panics or calls runtime.Goexit
// in Header, Retain or Free strands no share and frees none twice: Emit, a
// stage's held-back sends, SendAll ... finish their bookkeeping"; Emit
// "always takes the caller's reference"; the Emitter's owed "counts the
// shares of owedTok an Emit in progress holds ... discard reads them when
// a worker ends inside either". A stage's worker calls discard as it ends;
// a source's worker (work returns n.source(...) before the deferred
// cleanup is set up) never does, so the shares a source's Emit still owed
// stay referenced forever.
func TestReview3GraphEmitGoexitStrandsShares(t *testing.T) { rv3GraphGoexitMatrix(t, "source") }

// TestReview3StageEmitGoexitNoStrand: the same with the Emit in a stage
// (held-back path and flush): the worker's discard frees what is owed.
func TestReview3StageEmitGoexitNoStrand(t *testing.T) { rv3GraphGoexitMatrix(t, "stage") }

func rv3GraphGoexitMatrix(t *testing.T, via string) {
	{
		for _, nEdges := range []int{1, 2, 3} {
			for _, kind := range []string{"Header", "Retain", "Evict"} {
				calls := nEdges
				switch kind {
				case "Retain":
					calls = nEdges - 1
				case "Header":
					if via == "stage" {
						calls = nEdges + 1 // Emit's check of edge 0, then flush's per edge
					}
				case "Evict":
					calls = nEdges // the DropOldest edge's position
				}
				for k := 1; k <= calls; k++ {
					name := fmt.Sprintf("%s/%dedges/%s%d", via, nEdges, kind, k)
					t.Run(name, func(t *testing.T) { rv3GraphGoexitCase(t, via, nEdges, kind, k) })
				}
			}
		}
	}
}

func rv3GraphGoexitCase(t *testing.T, via string, nEdges int, kind string, k int) {
	w := rv3New(t, 64)
	var armed atomic.Bool
	var target atomic.Uint64
	var fired atomic.Bool
	var hcalls, rcalls atomic.Int32
	outs := make([]*Edge, nEdges)
	evictAt := -1
	if kind == "Evict" {
		evictAt = k - 1
	}
	for i := range outs {
		p := Policy{MaxItems: 16, Admission: Block}
		if i == evictAt {
			p = Policy{MaxItems: 1, Admission: DropOldest}
		}
		outs[i] = gsEdge(t, w, p)
	}
	switch kind {
	case "Header":
		w.setHeader(func(x token.Token) error {
			if armed.Load() && uint64(x) == target.Load() && int(hcalls.Add(1)) == k && fired.CompareAndSwap(false, true) {
				runtime.Goexit()
			}
			return nil
		})
	case "Retain":
		w.setRetain(func(x token.Token) error {
			if armed.Load() && uint64(x) == target.Load() && int(rcalls.Add(1)) == k && fired.CompareAndSwap(false, true) {
				runtime.Goexit()
			}
			return nil
		})
	case "Evict":
		w.setAfter(func(x token.Token) {
			if rv2StackHas("evictLocked") && fired.CompareAndSwap(false, true) {
				runtime.Goexit()
			}
		})
	}
	// emit is the node function's part: one token for Header/Retain (armed
	// around its Emit), several for Evict (the DropOldest edge fills up).
	emit := func(ctx context.Context, out *Emitter, first token.Token) error {
		if kind != "Evict" {
			target.Store(uint64(first))
			armed.Store(true) // stays armed: a stage's flush runs after the function returns
			return out.Emit(first)
		}
		if err := out.Emit(first); err != nil {
			return err
		}
		for i := range 6 {
			tok, err := w.putWait(ctx, Header{}, uint64(100+i))
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
		}
		return nil
	}
	g := NewGraph(w)
	if via == "source" {
		g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
			tok, err := w.putWait(ctx, Header{}, 1)
			if err != nil {
				return err
			}
			if err := emit(ctx, out, tok); err != nil {
				return err
			}
			<-ctx.Done()
			return nil
		}, outs...)
	} else {
		in := gsEdge(t, w, Policy{MaxItems: 16, Admission: Block})
		g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
			tok, err := w.putWait(ctx, Header{}, 1)
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
			<-ctx.Done()
			return nil
		}, in)
		g.Stage("mid", 1, in, func(ctx context.Context, tok token.Token, out *Emitter) error {
			return emit(ctx, out, tok)
		}, outs...)
	}
	for i, e := range outs {
		if i == evictAt {
			var once sync.Once
			g.Sink(fmt.Sprintf("hold%d", i), 1, e, func(ctx context.Context, tok token.Token) error {
				once.Do(func() { <-ctx.Done() }) // hold the first: the edge fills up
				return nil
			})
			continue
		}
		g.Sink(fmt.Sprintf("sink%d", i), 1, e, func(ctx context.Context, tok token.Token) error { return nil })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var err error
	p, returned := gsWithin(t, 6*time.Second, "Graph.Run", func() { err = g.Run(ctx) })
	w.clearHooks()
	if !fired.Load() {
		t.Skipf("the hook never fired (Run = %v)", err)
	}
	if p != nil || !returned {
		t.Fatalf("Run panicked %v / returned %v", p, returned)
	}
	if !errors.Is(err, ErrNodeExited) {
		t.Errorf("Run = %v, want ErrNodeExited", err)
	}
	w.conserve(t, 0)
}

// ---------------------------------------------------------------------------
// 2. SendAll and the Emitter (direct and held-back paths) under every store
// misbehaviour, 1..3 edges, every position.
// ---------------------------------------------------------------------------

type rv3Case struct {
	mode   string // "panic" or "goexit"
	kind   string // Header, Retain, Evict, Refused, Held
	nEdges int
	k      int // which call / edge position (1-based)
}

// rv3Cases lists the cases for an operation with hdrCalls Header calls of
// t per attempt (nEdges for a direct send, nEdges+1 for the held-back path).
func rv3Cases(heldBack bool) []rv3Case {
	var cs []rv3Case
	for _, mode := range []string{"panic", "goexit"} {
		for nEdges := 1; nEdges <= 3; nEdges++ {
			hdr := nEdges
			if heldBack {
				hdr++
			}
			for k := 1; k <= hdr; k++ {
				cs = append(cs, rv3Case{mode, "Header", nEdges, k})
			}
			for k := 1; k < nEdges; k++ {
				cs = append(cs, rv3Case{mode, "Retain", nEdges, k})
			}
			for k := 1; k <= nEdges; k++ {
				cs = append(cs, rv3Case{mode, "Evict", nEdges, k})
				cs = append(cs, rv3Case{mode, "Refused", nEdges, k})
				if mode == "panic" {
					cs = append(cs, rv3Case{mode, "Held", nEdges, k})
				}
			}
		}
	}
	return cs
}

func (c rv3Case) String() string {
	return fmt.Sprintf("%s/%s%d/%dedges", c.mode, c.kind, c.k, c.nEdges)
}

// rv3Setup builds the edges and the hooks of c and returns t (the token to
// send), the edges, and fired (whether the misbehaviour happened).
func rv3Setup(t *testing.T, w *rv3Store, c rv3Case) (token.Token, []*Edge, *atomic.Bool) {
	t.Helper()
	var fired atomic.Bool
	edges := make([]*Edge, c.nEdges)
	for i := range edges {
		p := Policy{MaxItems: 8, Admission: Block}
		if i == c.k-1 {
			switch c.kind {
			case "Evict":
				p = Policy{MaxItems: 1, Admission: DropOldest}
			case "Refused":
				p = Policy{MaxItems: 1, Admission: DropNewest}
			}
		}
		edges[i] = gsEdge(t, w, p)
	}
	tok := w.put(t, 7)
	var hcalls, rcalls atomic.Int32
	switch c.kind {
	case "Header":
		w.setHeader(func(x token.Token) error {
			if x == tok && int(hcalls.Add(1)) == c.k && fired.CompareAndSwap(false, true) {
				rv3Misbehave(c.mode)
			}
			return nil
		})
	case "Retain":
		w.setRetain(func(x token.Token) error {
			if x == tok && int(rcalls.Add(1)) == c.k && fired.CompareAndSwap(false, true) {
				rv3Misbehave(c.mode)
			}
			return nil
		})
	case "Evict":
		victim := w.put(t, 8)
		if err := edges[c.k-1].TrySend(victim); err != nil {
			t.Fatal(err)
		}
		w.setAfter(func(x token.Token) {
			if x == victim && fired.CompareAndSwap(false, true) {
				rv3Misbehave(c.mode)
			}
		})
	case "Refused":
		filler := w.put(t, 8)
		if err := edges[c.k-1].TrySend(filler); err != nil {
			t.Fatal(err)
		}
		w.setAfter(func(x token.Token) {
			if x == tok && fired.CompareAndSwap(false, true) {
				rv3Misbehave(c.mode)
			}
		})
	case "Held":
		e := edges[c.k-1]
		live := w.put(t, 8)
		exp, err := w.putWait(context.Background(), Header{Deadline: Now() + int64(usShortLife)}, 9)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range []token.Token{live, exp} {
			if err := e.TrySend(x); err != nil {
				t.Fatal(err)
			}
		}
		usOutlive()
		w.setAfter(func(x token.Token) {
			if x == exp {
				panic("rv3: held Free panic")
			}
		})
		var dst [4]token.Token
		var n int
		pp, _ := gsWithin(t, 2*time.Second, "RecvBatch", func() { n, _ = e.RecvBatch(context.Background(), dst[:]) })
		w.setAfter(nil)
		if pp != nil || n != 1 {
			t.Fatalf("setting up a held panic: RecvBatch = %d, panic %v", n, pp)
		}
		_ = w.Free(dst[0])
		fired.Store(true)
	}
	return tok, edges, &fired
}

func rv3DrainAll(t *testing.T, edges []*Edge) {
	t.Helper()
	for _, e := range edges {
		for range 3 {
			if usCatch(func() { e.Drain() }) == nil {
				break
			}
		}
		if e.Len() != 0 {
			t.Errorf("edge still holds %d after Drain", e.Len())
		}
	}
}

// rv3Check checks what an operation that met c's misbehaviour did: a panic
// re-raised (mode panic), the goroutine ended (mode goexit), and every
// reference accounted for.
func rv3Check(t *testing.T, w *rv3Store, c rv3Case, fired *atomic.Bool, p any, returned bool, tok token.Token, edges []*Edge) {
	t.Helper()
	w.clearHooks()
	if !fired.Load() {
		t.Skip("the misbehaviour never happened")
	}
	switch c.mode {
	case "panic":
		if p == nil {
			t.Errorf("the store's panic was not re-raised (returned %v)", returned)
		}
	case "goexit":
		if p != nil || returned {
			t.Errorf("want the goroutine ended by Goexit; panic %v, returned %v", p, returned)
		}
	}
	held := 0
	for _, e := range edges {
		for {
			var x token.Token
			var ok bool
			if pp := usCatch(func() { x, ok = e.TryRecv() }); pp != nil {
				continue // a held panic: raised before anything is taken
			}
			if !ok {
				break
			}
			if x == tok {
				held++
			}
			_ = w.Free(x)
		}
	}
	if got := w.alive(tok); got != 0 {
		t.Errorf("t has %d live references beyond the %d shares the edges held", got, held)
	}
	rv3DrainAll(t, edges)
	w.conserve(t, 0)
}

// TestReview3SendAllMisbehaviourMatrix: SendAll's doc: a panic of the
// store's Header, Retain or Free (or one an edge raises for its store)
// "does not strand any share"; with runtime.Goexit "the shares it still
// holds are freed first".
func TestReview3SendAllMisbehaviourMatrix(t *testing.T) {
	for _, c := range rv3Cases(false) {
		t.Run(c.String(), func(t *testing.T) {
			w := rv3New(t, 32)
			tok, edges, fired := rv3Setup(t, w, c)
			p, returned := gsWithin(t, 2*time.Second, "SendAll", func() { _, _ = SendAll(context.Background(), w, tok, edges...) })
			rv3Check(t, w, c, fired, p, returned, tok, edges)
		})
	}
}

// TestReview3EmitDirectMisbehaviourMatrix: a source-style Emit (pending
// nil). For a Goexit the test then calls discard as a worker's cleanup
// would: it must free exactly the shares Emit still owed. After a panic
// the Emitter's counters must be back at rest (owed 0, not flushing), and
// a later discard frees nothing.
func TestReview3EmitDirectMisbehaviourMatrix(t *testing.T) {
	for _, c := range rv3Cases(false) {
		t.Run(c.String(), func(t *testing.T) {
			w := rv3New(t, 32)
			tok, edges, fired := rv3Setup(t, w, c)
			o := &Emitter{rs: w, edges: edges, ctx: context.Background()}
			p, returned := gsWithin(t, 2*time.Second, "Emit", func() { _ = o.Emit(tok) })
			if c.mode == "panic" && (o.owed.n != 0 || o.flushing) {
				t.Errorf("after a panic from Emit: owed %d flushing %v, want 0 false", o.owed.n, o.flushing)
			}
			w.clearHooks()
			o.discard()
			rv3Check(t, w, c, fired, p, returned, tok, edges)
		})
	}
}

// TestReview3EmitHeldBackMisbehaviourMatrix: a stage-style Emit (pending
// set) followed by the flush the worker does; discard afterwards as the
// worker's cleanup would.
func TestReview3EmitHeldBackMisbehaviourMatrix(t *testing.T) {
	for _, c := range rv3Cases(true) {
		t.Run(c.String(), func(t *testing.T) {
			w := rv3New(t, 32)
			tok, edges, fired := rv3Setup(t, w, c)
			o := &Emitter{rs: w, edges: edges, ctx: context.Background(), pending: make([]token.Token, 0, graphBatch)}
			p, returned := gsWithin(t, 2*time.Second, "Emit+flush", func() {
				_ = o.Emit(tok)
				_ = o.flush()
			})
			if c.mode == "panic" && (o.owed.n != 0 || o.flushing || len(o.pending) != 0) {
				t.Errorf("after a panic: owed %d flushing %v pending %d, want 0 false 0", o.owed, o.flushing, len(o.pending))
			}
			w.clearHooks()
			o.discard()
			rv3Check(t, w, c, fired, p, returned, tok, edges)
		})
	}
}

// ---------------------------------------------------------------------------
// 3. A worker that frees what it holds when its node function fails, and
// meets a Free that calls runtime.Goexit (after really freeing, as
// usGoexitFree's store does): the deferred cleanup of work frees again.
// ---------------------------------------------------------------------------

// TestReview3SinkErrorBufferFreeGoexitDoubleFree: a sink worker received a
// batch of tokens; the sink fails on one of them; loop frees the rest of
// the batch (buf[*next:got]) and only then advances *next. The first of
// those Frees calls runtime.Goexit: work's deferred cleanup frees
// buf[next:k] again, the token whose Free ended the goroutine included.
// The code's own rule (freeOwed, fanOut.free, flush: "uncounted before its
// Free, so that a Free that never returns is not repeated") and the
// README row ("strands no share and frees none twice").
func TestReview3SinkErrorBufferFreeGoexitDoubleFree(t *testing.T) {
	for attempt := 0; attempt < 5; attempt++ {
		w := rv3New(t, 64)
		in := gsEdge(t, w, Policy{MaxItems: 64, Admission: Block})
		const total, failAt = 40, 30
		vals := map[token.Token]uint64{}
		for i := range total {
			tok := w.put(t, uint64(i))
			vals[tok] = uint64(i)
			if err := in.TrySend(tok); err != nil {
				t.Fatal(err)
			}
		}
		var mu sync.Mutex
		var fired atomic.Bool
		w.setAfter(func(x token.Token) {
			mu.Lock()
			v, ok := vals[x]
			mu.Unlock()
			if ok && v > failAt && rv2StackHas("(*Graph).loop") && !rv2StackHas("Drain") && fired.CompareAndSwap(false, true) {
				runtime.Goexit()
			}
		})
		g := NewGraph(w)
		g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
			<-ctx.Done()
			return nil
		}, in)
		g.Sink("end", 1, in, func(ctx context.Context, tok token.Token) error {
			mu.Lock()
			v := vals[tok]
			mu.Unlock()
			if v == failAt {
				return errors.New("rv3: sink fails")
			}
			return nil
		})
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		var err error
		p, returned := gsWithin(t, 6*time.Second, "Graph.Run", func() { err = g.Run(ctx) })
		cancel()
		w.clearHooks()
		if !fired.Load() {
			continue // the failing token was the last of its batch: try again
		}
		t.Logf("Run = %v, panic %v, returned %v", err, p, returned)
		w.conserve(t, 0)
		return
	}
	t.Skip("the sink never failed in the middle of a received batch")
}

// TestReview3StageErrorDiscardGoexitDoubleFree: a stage emits (held back
// in pending) and then fails; loop calls discard, whose first Free calls
// runtime.Goexit after really freeing. discard resets pending only after
// the loop, so work's deferred cleanup calls discard again and frees every
// pending token once more (the first twice).
func TestReview3StageErrorDiscardGoexitDoubleFree(t *testing.T) {
	w := rv3New(t, 64)
	in := gsEdge(t, w, Policy{MaxItems: 8, Admission: Block})
	out := gsEdge(t, w, Policy{MaxItems: 8, Admission: Block})
	// The sink takes this first and holds it: nobody is parked on out, so
	// the stage's emits are held back (consumerWaiting is false).
	hold := w.put(t, 1)
	if err := out.TrySend(hold); err != nil {
		t.Fatal(err)
	}
	x := w.put(t, 2)
	if err := in.TrySend(x); err != nil {
		t.Fatal(err)
	}
	var fired atomic.Bool
	w.setAfter(func(tok token.Token) {
		if rv2StackHas("discard") && fired.CompareAndSwap(false, true) {
			runtime.Goexit()
		}
	})
	sinkHas := make(chan struct{})
	g := NewGraph(w)
	g.Source("src", 1, func(ctx context.Context, o *Emitter) error {
		<-ctx.Done()
		return nil
	}, in)
	g.Stage("mid", 1, in, func(ctx context.Context, tok token.Token, o *Emitter) error {
		select {
		case <-sinkHas:
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := o.Emit(tok); err != nil {
			return err
		}
		n, err := w.putWait(ctx, Header{}, 3)
		if err != nil {
			return err
		}
		if err := o.Emit(n); err != nil {
			return err
		}
		if len(o.pending) != 2 {
			return fmt.Errorf("rv3: %d pending, want 2 (held back)", len(o.pending))
		}
		return errors.New("rv3: stage fails")
	}, out)
	var once sync.Once
	g.Sink("end", 1, out, func(ctx context.Context, tok token.Token) error {
		once.Do(func() {
			close(sinkHas)
			<-ctx.Done()
		})
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var err error
	p, returned := gsWithin(t, 6*time.Second, "Graph.Run", func() { err = g.Run(ctx) })
	w.clearHooks()
	t.Logf("Run = %v, panic %v, returned %v", err, p, returned)
	if !fired.Load() {
		t.Fatalf("discard's Free never ran (Run = %v)", err)
	}
	w.conserve(t, 0)
}

// ---------------------------------------------------------------------------
// 4. ring.insertBySeq against a model: empty, full (grows), wrapped, any
// insertion order.
// ---------------------------------------------------------------------------

func TestReview3InsertBySeqModel(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	for trial := range 3000 {
		r := &ring{limit: []int{0, 1, 3, 4, 8, 64, 100}[trial%7]}
		var model []uint64
		seq := uint64(0)
		// Wrap the head: push and pop a few.
		for range rng.Intn(200) {
			seq++
			r.push().seq = seq
			model = append(model, seq)
			if rng.Intn(3) > 0 && r.len() > 0 {
				if got := r.pop().seq; got != model[0] {
					t.Fatalf("trial %d: pop %d, want %d", trial, got, model[0])
				}
				model = model[1:]
			}
		}
		// Take a random subset out (as an expiry scan does), then put it
		// back by seq, in increasing order (exitLocked) or any order.
		var out []queued
		r.compact(func(q *queued) bool {
			if rng.Intn(3) == 0 {
				out = append(out, *q)
				return true
			}
			return false
		})
		if trial%2 == 1 {
			rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
		}
		for i := range out {
			out[i].size = uint32(out[i].seq) // a payload field to check the copy
			r.insertBySeq(&out[i])
		}
		if r.len() != len(model) {
			t.Fatalf("trial %d: len %d, want %d", trial, r.len(), len(model))
		}
		for i := range model {
			q := r.at(i)
			if q.seq != model[i] {
				t.Fatalf("trial %d: entry %d has seq %d, want %d", trial, i, q.seq, model[i])
			}
		}
		for _, o := range out {
			found := false
			for i := range r.len() {
				if q := r.at(i); q.seq == o.seq {
					found = q.size == o.size
				}
			}
			if !found {
				t.Fatalf("trial %d: reinserted entry %d lost its fields", trial, o.seq)
			}
		}
	}
}

// TestReview3InsertBySeqFullRingGrows: the reap's lane ring is exactly
// full when its victims come back (the lane was full, then more came in
// after the compact: impossible under the lock, but insertBySeq must grow
// anyway): entries keep their order.
func TestReview3InsertBySeqFullRingGrows(t *testing.T) {
	r := &ring{limit: 4}
	for i := range 4 {
		r.push().seq = uint64(10 + i)
	}
	r.pop()
	r.push().seq = 14 // head wrapped, ring full: 11 12 13 14
	r.insertBySeq(&queued{seq: 5})
	r.insertBySeq(&queued{seq: 13}) // a duplicate seq goes after its twin
	r.insertBySeq(&queued{seq: 20})
	want := []uint64{5, 11, 12, 13, 13, 14, 20}
	for i, w := range want {
		if got := r.at(i).seq; got != w || r.len() != len(want) {
			t.Fatalf("entry %d: seq %d (len %d), want %v", i, got, r.len(), want)
		}
	}
}

// ---------------------------------------------------------------------------
// 5. EdgeStats: every refusal of Send, TrySend and SendBatch counted once,
// in Rejected (policy, closed, done context; Size above MaxBytes) or
// Invalid (a bad token or QoS), and Admitted for what got in.
// ---------------------------------------------------------------------------

type rv3StatStore struct {
	name string
	hs   HeaderStore
	put  func(h Header) token.Token
	free func(token.Token)
}

func rv3StatStores(t *testing.T) []rv3StatStore {
	s := newStore[payload](t, 4096)
	u := usNewStore()
	return []rv3StatStore{
		{"Store", s, func(h Header) token.Token {
			tok, err := s.Put(h, payload{})
			if err != nil {
				t.Fatal(err)
			}
			return tok
		}, func(x token.Token) { _ = s.Free(x) }},
		{"userStore", u, func(h Header) token.Token { return u.put(h) }, func(x token.Token) { _ = u.Free(x) }},
	}
}

func TestReview3StatsEveryRefusal(t *testing.T) {
	kinds := []struct {
		name    string
		invalid bool
		pol     Policy
		prefill int // items queued before (BestEffort); -1: so many that the refused one finds the edge full
		bad     func(st rv3StatStore) token.Token
		closed  bool
		waitCtx bool // the refusal is a Block wait ended by a done ctx
		want    error
	}{
		{"nil", true, Policy{MaxItems: 256}, 0, func(rv3StatStore) token.Token { return token.Nil }, false, false, nil},
		{"stale", true, Policy{MaxItems: 256}, 0, func(st rv3StatStore) token.Token {
			x := st.put(Header{Size: 8})
			st.free(x)
			return x
		}, false, false, nil},
		{"badQoS", true, Policy{MaxItems: 256}, 0, func(st rv3StatStore) token.Token { return st.put(Header{QoS: 9, Size: 8}) }, false, false, ErrRejected},
		{"overMaxBytes", false, Policy{MaxItems: 256, MaxBytes: 100000}, 0, func(st rv3StatStore) token.Token { return st.put(Header{Size: 200000}) }, false, false, ErrRejected},
		{"expired", false, Policy{MaxItems: 256}, 0, func(st rv3StatStore) token.Token {
			return st.put(Header{Size: 8, Deadline: max(Now()-int64(time.Second), 1)})
		}, false, false, ErrExpired},
		{"dropNewestFull", false, Policy{MaxItems: 128, Admission: DropNewest}, -1, nil, false, false, ErrEdgeFull},
		{"blockFull", false, Policy{MaxItems: 128, Admission: Block}, -1, nil, false, true, context.Canceled},
		{"shedBackground", false, Policy{MaxItems: 256, SoftItems: 1, Admission: DeadlineQoS}, 1, func(st rv3StatStore) token.Token {
			return st.put(Header{QoS: Background, Size: 8})
		}, false, false, ErrRejected},
		{"closed", false, Policy{MaxItems: 256}, 0, nil, true, false, ErrEdgeClosed},
	}
	for _, st := range rv3StatStores(t) {
		for _, k := range kinds {
			for _, op := range []string{"Send", "TrySend", "SendBatch0", "SendBatch5", "SendBatch32", "SendBatch40", "SendBatch70"} {
				if k.closed && op != "Send" && op != "TrySend" && op != "SendBatch0" {
					continue
				}
				t.Run(st.name+"/"+k.name+"/"+op, func(t *testing.T) {
					e := usEdge(t, st.hs, k.pol)
					pos := 0
					fmt.Sscanf(op, "SendBatch%d", &pos)
					prefill := k.prefill
					if prefill < 0 {
						prefill = k.pol.MaxItems - pos // the batch's token pos finds the edge full
					}
					for range prefill {
						if err := e.TrySend(st.put(Header{Size: 8})); err != nil {
							t.Fatal(err)
						}
					}
					if k.closed {
						e.Close()
					}
					var ts []token.Token
					for i := range pos {
						h := Header{Size: 8}
						switch {
						case i%7 == 3:
							h.QoS = LatencyCritical // the locked path
						case i%5 == 4 && k.name != "shedBackground":
							h.Deadline = Now() + int64(time.Hour) // the locked path, lane with a deadline
						}
						ts = append(ts, st.put(h))
					}
					var bad token.Token
					if k.bad != nil {
						bad = k.bad(st)
					} else {
						bad = st.put(Header{Size: 8})
					}
					ts = append(ts, bad, st.put(Header{Size: 8}), st.put(Header{Size: 8}))
					before := e.Stats()
					ctx := context.Background()
					if k.waitCtx {
						c, cancel := context.WithCancel(ctx)
						cancel()
						ctx = c
					}
					var n int
					var err error
					if !usWithin(2*time.Second, func() {
						switch op {
						case "Send":
							err = e.Send(ctx, bad)
						case "TrySend":
							err = e.TrySend(bad)
						default:
							n, err = e.SendBatch(ctx, ts)
						}
					}) {
						t.Fatalf("%s hung:\n%s", op, gsDump())
					}
					want := k.want
					if op == "TrySend" && k.waitCtx {
						want = ErrEdgeFull
					}
					after := e.Stats()
					if err == nil {
						t.Fatalf("%s of the %s token: no error (n %d)", op, k.name, n)
					}
					if want != nil && !errors.Is(err, want) {
						t.Errorf("err %v, want %v", err, want)
					}
					if n != pos {
						t.Errorf("n = %d, want %d", n, pos)
					}
					dA := after.Admitted - before.Admitted
					dR := after.Rejected - before.Rejected
					dI := after.Invalid - before.Invalid
					wantR, wantI := uint64(1), uint64(0)
					if k.invalid {
						wantR, wantI = 0, 1
					}
					if dA != uint64(pos) || dR != wantR || dI != wantI {
						t.Errorf("Stats delta: Admitted %d Rejected %d Invalid %d, want %d %d %d (err %v)", dA, dR, dI, pos, wantR, wantI, err)
					}
					if e.Len() != prefill+pos && !k.closed {
						t.Errorf("Len %d, want %d", e.Len(), prefill+pos)
					}
					usConserve(t, op, e)
				})
			}
		}
	}
}

// TestReview3StatsLongBatchMixed: a 100-token SendBatch mixing fast-ring
// tokens and locked-path tokens, under every admission mode with room:
// n, Admitted and what is received agree, in order per lane.
func TestReview3StatsLongBatchMixed(t *testing.T) {
	for _, st := range rv3StatStores(t) {
		for _, adm := range []Admission{Block, DropNewest, DropOldest, DeadlineQoS} {
			t.Run(fmt.Sprintf("%s/%v", st.name, adm), func(t *testing.T) {
				e := usEdge(t, st.hs, Policy{MaxItems: 256, Admission: adm})
				var ts []token.Token
				for i := range 100 {
					h := Header{Size: 8}
					if (i/20)%2 == 1 && i%3 == 0 {
						h.QoS = LatencyCritical
					}
					ts = append(ts, st.put(h))
				}
				var n int
				var err error
				if !usWithin(2*time.Second, func() {
					//lint:ignore SA1012 a nil context is what is tested
					n, err = e.SendBatch(nil, ts)
				}) {
					t.Fatalf("SendBatch hung:\n%s", gsDump())
				}
				s := e.Stats()
				if err != nil || n != 100 || s.Admitted != 100 || s.Rejected != 0 || s.Invalid != 0 || s.Len != 100 {
					t.Errorf("SendBatch = %d, %v; stats %+v", n, err, s)
				}
				e.Drain()
			})
		}
	}
}

// ---------------------------------------------------------------------------
// 6. Send and TrySend with the raising flag: a held Free panic is still
// raised, the caller keeps its token, a nil ctx works, the fast path is
// unaffected.
// ---------------------------------------------------------------------------

// rv3HoldPanic leaves a panic of the store's Free held back on e.
func rv3HoldPanic(t *testing.T, s *usStore, e *Edge) {
	t.Helper()
	live := s.put(Header{})
	exp := usExpiring(s, usShortLife)
	for _, x := range []token.Token{live, exp} {
		if err := e.TrySend(x); err != nil {
			t.Fatal(err)
		}
	}
	usOutlive()
	s.setFree(func(x token.Token) error {
		if x == exp {
			panic(usBoom{"rv3 held"})
		}
		return nil
	})
	var dst [4]token.Token
	var n int
	var p any
	if !usWithin(time.Second, func() { p = usCatch(func() { n, _ = e.RecvBatch(context.Background(), dst[:]) }) }) {
		t.Fatalf("RecvBatch hung")
	}
	s.setFree(nil)
	if p != nil || n != 1 {
		t.Fatalf("RecvBatch = %d, panic %v; want 1 and the panic held", n, p)
	}
	s.Free(dst[0])
}

func TestReview3SendRaisesHeldPanic(t *testing.T) {
	for _, adm := range []Admission{Block, DropOldest, DropNewest, DeadlineQoS} {
		for _, op := range []string{"Send", "SendNilCtx", "TrySend", "SendBatch", "SendBatchNilCtx"} {
			t.Run(fmt.Sprintf("%v/%s", adm, op), func(t *testing.T) {
				s := usNewStore()
				e := usEdge(t, s, Policy{MaxItems: 8, Admission: adm})
				rv3HoldPanic(t, s, e)
				tok := s.put(Header{})
				before := e.Stats()
				var err error
				var p any
				if !usWithin(time.Second, func() {
					p = usCatch(func() {
						switch op {
						case "Send":
							err = e.Send(context.Background(), tok)
						case "SendNilCtx":
							//lint:ignore SA1012 a nil context is what is tested
							err = e.Send(nil, tok)
						case "TrySend":
							err = e.TrySend(tok)
						case "SendBatch":
							_, err = e.SendBatch(context.Background(), []token.Token{tok})
						case "SendBatchNilCtx":
							//lint:ignore SA1012 a nil context is what is tested
							_, err = e.SendBatch(nil, []token.Token{tok})
						}
					})
				}) {
					t.Fatalf("%s hung:\n%s", op, gsDump())
				}
				if _, ok := p.(usBoom); !ok {
					t.Errorf("%s: recovered %v (err %v), want the held panic", op, p, err)
				}
				if e.Len() != 0 || !s.isLive(tok) {
					t.Errorf("%s: Len %d, token live %v: the caller must keep its token", op, e.Len(), s.isLive(tok))
				}
				after := e.Stats()
				if after.Admitted != before.Admitted {
					t.Errorf("%s: Admitted moved %d -> %d", op, before.Admitted, after.Admitted)
				}
				// Now the edge works again, on the fast path too.
				//lint:ignore SA1012 a nil context is what is tested
				if err := e.Send(nil, tok); err != nil {
					t.Errorf("Send after the raise: %v", err)
				}
				if got, ok := e.TryRecv(); !ok || got != tok {
					t.Errorf("TryRecv = %v %v, want %v", got, ok, tok)
				}
				s.Free(tok)
				usConserve(t, op, e)
				usLiveIs(t, op, s, 0)
			})
		}
	}
}

// TestReview3SendCatchingHeldReturnsErr: without raising, a send stopped
// by a held panic returns the panic and a non-nil error (the token did not
// get in); one that evicted with a panicking Free and got in returns the
// panic and nil.
func TestReview3SendCatchingHeldReturnsErr(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 8, Admission: Block})
	rv3HoldPanic(t, s, e)
	tok := s.put(Header{})
	fp, err := e.sendCatching(context.Background(), tok, true, false)
	if fp == nil || err == nil || e.Len() != 0 {
		t.Errorf("held: fp %v err %v Len %d; want the panic, an error, nothing queued", fp, err, e.Len())
	}
	fp, err = e.sendCatching(context.Background(), tok, false, false)
	if fp != nil || err != nil || e.Len() != 1 {
		t.Errorf("after: fp %v err %v Len %d; want nil nil 1", fp, err, e.Len())
	}
	e.Drain()

	d := usEdge(t, s, Policy{MaxItems: 1, Admission: DropOldest})
	v := s.put(Header{})
	if err := d.TrySend(v); err != nil {
		t.Fatal(err)
	}
	usPanicFree(s, usBoom{"evict"})
	x := s.put(Header{})
	fp, err = d.sendCatching(context.Background(), x, false, false)
	s.setFree(nil)
	if fp == nil || err != nil || d.Len() != 1 {
		t.Errorf("evicting: fp %v err %v Len %d; want the panic, nil, 1", fp, err, d.Len())
	}
	d.Drain()
	usLiveIs(t, "after", s, 0)
}

// ---------------------------------------------------------------------------
// 7. arena token errors: the same text as the old fmt.Errorf, errors.Is for
// the sentinel, nothing else matched.
// ---------------------------------------------------------------------------

func TestReview3ArenaTokenErrors(t *testing.T) {
	a, err := arena.New[uint64](arena.Config{Slots: 4, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	live, _ := a.Store(5)
	dead, _ := a.Store(6)
	_ = a.Free(dead)
	big, gen0 := token.New(100, 1), token.New(1, 0)
	badMsg := func(op string, tk token.Token) error {
		if tk.IsNil() {
			return fmt.Errorf("%w: %s of the Nil token", arena.ErrBadToken, op)
		}
		return fmt.Errorf("%w: %s of %v (index must be < %d slots, generation 1..%d)", arena.ErrBadToken, op, tk, 4, uint32(1<<32-2))
	}
	staleMsg := func(op string, tk token.Token) error { return fmt.Errorf("%w: %s of %v", arena.ErrStale, op, tk) }
	var v uint64
	cases := []struct {
		name string
		got  error
		want error
	}{
		{"Load nil", func() error { _, e := a.Load(token.Nil); return e }(), badMsg("Load", token.Nil)},
		{"Load big", func() error { _, e := a.Load(big); return e }(), badMsg("Load", big)},
		{"Load gen0", func() error { _, e := a.Load(gen0); return e }(), badMsg("Load", gen0)},
		{"Load dead", func() error { _, e := a.Load(dead); return e }(), staleMsg("Load", dead)},
		{"View dead", a.View(dead, func(*uint64) {}), staleMsg("View", dead)},
		{"Update big", a.Update(big, func(*uint64) {}), badMsg("Update", big)},
		{"Free nil", a.Free(token.Nil), badMsg("Free", token.Nil)},
		{"Free dead", a.Free(dead), staleMsg("Free", dead)},
		{"View nil fn", a.View(live, nil), fmt.Errorf("%w: %s of %v", arena.ErrNilFunc, "View", live)},
		{"Update nil fn", a.Update(token.Nil, nil), fmt.Errorf("%w: %s of %v", arena.ErrNilFunc, "Update", token.Nil)},
		{"LoadInto nil", a.LoadInto(live, nil), fmt.Errorf("%w: LoadInto of %v into a nil *T", arena.ErrNilPointer, live)},
		{"LoadInto dead", a.LoadInto(dead, &v), staleMsg("Load", dead)},
	}
	// LoadInto names itself "Load" or "LoadInto" depending on the build
	// (the race detector's build takes another path), before and after the
	// change alike: accept either.
	if e := cases[len(cases)-1].got; e != nil && e.Error() == staleMsg("LoadInto", dead).Error() {
		cases[len(cases)-1].want = staleMsg("LoadInto", dead)
	}
	sentinels := []error{arena.ErrStale, arena.ErrBadToken, arena.ErrNilFunc, arena.ErrNilPointer, arena.ErrClosed, arena.ErrFull}
	for _, c := range cases {
		if c.got == nil {
			t.Errorf("%s: nil error", c.name)
			continue
		}
		if c.got.Error() != c.want.Error() {
			t.Errorf("%s: %q, want %q", c.name, c.got.Error(), c.want.Error())
		}
		for _, s := range sentinels {
			if errors.Is(c.got, s) != errors.Is(c.want, s) {
				t.Errorf("%s: errors.Is(%v) = %v, want %v", c.name, s, errors.Is(c.got, s), errors.Is(c.want, s))
			}
		}
		if u := errors.Unwrap(c.got); u != errors.Unwrap(c.want) {
			t.Errorf("%s: Unwrap = %v, want %v", c.name, u, errors.Unwrap(c.want))
		}
		// Through message's wrapping (withContext) too.
		if w := withContext("op", c.got); !errors.Is(w, errors.Unwrap(c.want)) {
			t.Errorf("%s: the sentinel is lost through withContext", c.name)
		}
		var me *tokenError // message's own token error type must not match the arena's
		if errors.As(c.got, &me) {
			t.Errorf("%s: errors.As matched message's *tokenError", c.name)
		}
	}
}

// TestReview3FlushHeaderPanicMidBatchDropsGoodTokens: a stage's held-back
// tokens [a b c] are flushed to one edge; the store's Header panics for c
// (the third of the chunk SendBatch checks before admitting any). flush
// (storePanic.sendBatch: n = what got in = 0) takes the error as a refusal
// of pending[flushed] and frees a, not c; it retries [b c], meets the
// panic again and frees b, then c. flush's doc: the pending tokens are sent
// "with the outcome Emit would have had for each token: a token an edge
// refuses is freed ... and the send goes on with the next one". Emit would
// have sent a and b (their headers are fine) and freed only c.
func TestReview3FlushHeaderPanicMidBatchDropsGoodTokens(t *testing.T) {
	w := rv3New(t, 16)
	e := gsEdge(t, w, Policy{MaxItems: 8, Admission: Block})
	o := &Emitter{rs: w, edges: []*Edge{e}, ctx: context.Background(), pending: make([]token.Token, 0, graphBatch)}
	a, b, c := w.put(t, 1), w.put(t, 2), w.put(t, 3)
	for _, x := range []token.Token{a, b, c} {
		if err := o.Emit(x); err != nil {
			t.Fatal(err)
		}
	}
	if len(o.pending) != 3 {
		t.Fatalf("%d pending, want 3", len(o.pending))
	}
	w.setHeader(func(x token.Token) error {
		if x == c {
			panic("rv3: Header panics for c")
		}
		return nil
	})
	p, _ := gsWithin(t, 2*time.Second, "flush", func() { _ = o.flush() })
	w.clearHooks()
	if p == nil {
		t.Errorf("flush did not re-raise the Header panic")
	}
	var got []token.Token
	for {
		x, ok := e.TryRecv()
		if !ok {
			break
		}
		got = append(got, x)
		_ = w.Free(x)
	}
	if len(got) != 2 || got[0] != a || got[1] != b {
		t.Errorf("the edge delivered %v, want [%v %v] (a and b are good; only c's Header panicked)", got, a, b)
	}
	w.conserve(t, 0)
}
