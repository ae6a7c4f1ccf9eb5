package message

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// RefStore is what a Graph needs from a store: headers and frees for its
// edges, and Retain for fan-out. *Store[P] and *ByteStore[B] implement it.
type RefStore interface {
	HeaderStore
	Retain(token.Token) error
}

// SourceFunc produces messages: it Puts them in the store and hands them to
// out.Emit until it is done (return nil) or ctx is done (the graph is
// stopping: return promptly). Returning an error aborts the graph, so a
// source should Put with Store.PutWait(ctx, ...), which waits for a free
// slot while the store is full, rather than Put, whose arena.ErrFull would
// abort the graph. Once the graph is stopping, out.Emit refuses (it frees
// the token and returns ctx's error) even when nothing has to wait: a
// source that returns Emit's error ends promptly. Returning ctx's error is
// a clean stop, not a failure.
type SourceFunc func(ctx context.Context, out *Emitter) error

// StageFunc handles one token from the stage's input edge. It owns t: it
// must pass it on with out.Emit (the same token, possibly after an
// in-place Store.Update) or drop it with out.Free, and may Emit new tokens
// too. Returning an error aborts the graph; if the function returns an
// error or panics before it has passed t on or dropped it through out, the
// graph frees t.
type StageFunc func(ctx context.Context, t token.Token, out *Emitter) error

// SinkFunc consumes one token. It borrows t: the graph frees it when the
// function returns, or panics (call Retain to keep it longer). Returning an
// error aborts the graph.
type SinkFunc func(ctx context.Context, t token.Token) error

// Graph wires sources, stages and sinks together with edges and runs each
// with its own number of worker goroutines. An edge is consumed by exactly
// one node and fed by one or more; a node with several output edges fans
// out: every emitted token goes to every output edge, zero-copy (one Retain
// per extra edge).
//
// Stopping is graceful: Stop ends the sources; each edge is closed once
// every worker feeding it has returned, and each stage drains its input
// edge before returning, so everything in flight reaches the sinks. A
// failing node, or the cancellation of Run's context, aborts instead: all
// workers stop at once and whatever is still queued is freed. Either way,
// when Run returns no token is left in the graph's edges.
//
// The graph must be acyclic (a stage may not feed its own input, directly
// or through other nodes) and every edge must be built on the graph's
// store; Run checks both and returns ErrGraphCycle (naming the nodes) or
// ErrBadGraph. Workers receive with RecvBatch, up to 16 tokens at a time
// and at most their share of what is queued, and stages send what they
// emitted with SendBatch (see Emitter.Emit). A node whose function takes
// more than about a microsecond per token gets one token at a time, so
// that a batch never holds tokens back long from expiry, eviction or the
// next node.
//
// A node function that panics aborts the graph like an error; once every
// worker has stopped and the edges are drained, Run panics in its caller's
// goroutine with a *NodePanic that holds the value and the node's stack (so
// the caller may recover it). One that calls runtime.Goexit aborts the
// graph too, and Run returns an error matching ErrNodeExited. A panic of
// the store's Free while Run drains the edges at the end is re-raised by
// Run once every edge is drained (after a node's panic, if any); a worker
// that meets one fails like a panicking node.
//
// After an abort, a worker hands no further token to its node function:
// the tokens it had received and not handled yet are freed with the rest.
//
// Build the graph, then call Run once.
type Graph struct {
	rs    RefStore
	nodes []*node
	err   error

	stopOnce sync.Once
	stop     chan struct{}
	ran      atomic.Bool

	panicked atomic.Pointer[NodePanic] // the first node function's panic
}

// NodePanic is the value Run panics with when a node function panicked. It
// is an error; Unwrap gives the panic value when that is an error.
type NodePanic struct {
	Node  string // the node's name
	Value any    // what the function panicked with
	Stack []byte // the worker's stack at the panic
}

func (p *NodePanic) Error() string {
	return fmt.Sprintf("message: node %q panicked: %v", p.Node, p.Value)
}

// Unwrap returns the panic value if it is an error, else nil.
func (p *NodePanic) Unwrap() error {
	err, _ := p.Value.(error)
	return err
}

type node struct {
	name    string
	workers int
	in      *Edge
	outs    []*Edge
	source  SourceFunc
	stage   StageFunc
	sink    SinkFunc
}

// NewGraph returns an empty graph whose tokens live in rs.
func NewGraph(rs RefStore) *Graph {
	g := &Graph{rs: rs, stop: make(chan struct{})}
	if nilStore(rs) {
		g.err = fmt.Errorf("%w: NewGraph needs the store its tokens live in", ErrNilStore)
	}
	return g
}

// Source adds a node that runs fn on workers goroutines and emits to out.
func (g *Graph) Source(name string, workers int, fn SourceFunc, out ...*Edge) {
	g.add(&node{name: name, workers: workers, source: fn, outs: out}, fn == nil)
}

// Stage adds a node that runs fn for every token received from in, on
// workers goroutines, and emits to out.
func (g *Graph) Stage(name string, workers int, in *Edge, fn StageFunc, out ...*Edge) {
	g.add(&node{name: name, workers: workers, in: in, stage: fn, outs: out}, fn == nil)
}

// Sink adds a node that runs fn for every token received from in, on
// workers goroutines.
func (g *Graph) Sink(name string, workers int, in *Edge, fn SinkFunc) {
	g.add(&node{name: name, workers: workers, in: in, sink: fn}, fn == nil)
}

func (g *Graph) add(n *node, nilFn bool) {
	switch {
	case g.err != nil:
	case nilFn:
		g.err = fmt.Errorf("%w: node %q has a nil function", ErrBadGraph, n.name)
	case n.workers < 1:
		g.err = fmt.Errorf("%w: node %q needs at least one worker (got %d)", ErrBadGraph, n.name, n.workers)
	case n.source == nil && n.in == nil:
		g.err = fmt.Errorf("%w: node %q has no input edge", ErrBadGraph, n.name)
	}
	for _, e := range n.outs {
		if e == nil && g.err == nil {
			g.err = fmt.Errorf("%w: node %q has a nil output edge", ErrBadGraph, n.name)
		}
	}
	g.nodes = append(g.nodes, n)
}

// Stop asks a running graph to stop gracefully: sources see their context
// done, and everything already emitted drains through to the sinks. It may
// be called at any time, more than once, from any goroutine.
func (g *Graph) Stop() { g.stopOnce.Do(func() { close(g.stop) }) }

// edgeState tracks how many workers still feed an edge.
type edgeState struct {
	writers   atomic.Int64
	consumers int
}

// Run starts every node and blocks until the graph has stopped: after a
// graceful Stop (or when every source has returned nil), it returns nil
// once everything is drained; after a node fails it returns that node's
// error; when ctx is cancelled it returns ctx's error. Edges are closed and
// drained on return. A nil ctx runs like context.Background(). A node
// function's panic is re-raised here (see Graph).
func (g *Graph) Run(ctx context.Context) error {
	if g.err != nil {
		return g.err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	if !g.ran.CompareAndSwap(false, true) {
		return fmt.Errorf("%w: Run called twice", ErrBadGraph)
	}
	edges, err := g.wire()
	if err != nil {
		return err
	}
	runCtx, abort := context.WithCancelCause(ctx)
	defer abort(nil)
	srcCtx, stopSources := context.WithCancel(runCtx)
	defer stopSources()
	go func() {
		select {
		case <-g.stop:
			stopSources()
		case <-srcCtx.Done():
		}
	}()

	var wg sync.WaitGroup
	for _, n := range g.nodes {
		for w := 0; w < n.workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer g.retire(n, edges)
				if err := g.guard(n, runCtx, srcCtx, abort); err != nil && runCtx.Err() == nil {
					abort(&nodeFailed{g, withContext(fmt.Sprintf("node %q", n.name), err)})
				}
			}()
		}
	}
	wg.Wait()
	// A panic of the store's Free while an edge is drained (Drain raises
	// it) must not leave the other edges undrained: it is re-raised once
	// every edge is empty, after a node function's panic if there is one.
	var sp storePanic
	for e := range edges {
		e.Close()
		sp.drain(e)
	}
	if p := g.panicked.Load(); p != nil {
		panic(p)
	}
	sp.raise()
	// A node that failed first wins over a cancellation of ctx that came
	// while the graph was aborting and draining. (The cause is recognised
	// by its type and graph, never compared with ctx's errors: a cause may
	// be of any type, comparable or not.)
	if nf, ok := context.Cause(runCtx).(*nodeFailed); ok && nf.g == g {
		return nf.err
	}
	return ctx.Err()
}

// nodeFailed is the cause a Graph's run is aborted with when one of its
// nodes fails: Run returns err.
type nodeFailed struct {
	g   *Graph
	err error
}

func (f *nodeFailed) Error() string { return f.err.Error() }
func (f *nodeFailed) Unwrap() error { return f.err }

// wire checks that every edge has exactly one consumer and at least one
// producer, and counts the workers feeding each edge.
func (g *Graph) wire() (map[*Edge]*edgeState, error) {
	edges := map[*Edge]*edgeState{}
	state := func(e *Edge) *edgeState {
		s := edges[e]
		if s == nil {
			s = &edgeState{}
			edges[e] = s
		}
		return s
	}
	for _, n := range g.nodes {
		if n.in != nil {
			state(n.in).consumers++
		}
		for _, e := range n.outs {
			state(e).writers.Add(int64(n.workers))
		}
	}
	for _, n := range g.nodes {
		if n.in != nil {
			s := edges[n.in]
			if s.consumers > 1 {
				return nil, fmt.Errorf("%w: the input edge of %q is consumed by %d nodes", ErrBadGraph, n.name, s.consumers)
			}
			if s.writers.Load() == 0 {
				return nil, fmt.Errorf("%w: nothing feeds the input edge of %q", ErrBadGraph, n.name)
			}
		}
		for _, e := range n.outs {
			if edges[e].consumers == 0 {
				return nil, fmt.Errorf("%w: an output edge of %q has no consumer", ErrBadGraph, n.name)
			}
		}
	}
	graphStore := storeIdentity(g.rs)
	for _, n := range g.nodes {
		if n.in != nil && !sameStore(storeIdentity(n.in.hs), graphStore) {
			return nil, fmt.Errorf("%w: the input edge of %q was built on another store than the graph's", ErrBadGraph, n.name)
		}
		for i, e := range n.outs {
			if !sameStore(storeIdentity(e.hs), graphStore) {
				return nil, fmt.Errorf("%w: output edge %d of %q was built on another store than the graph's", ErrBadGraph, i, n.name)
			}
		}
	}
	if err := g.findCycle(); err != nil {
		return nil, err
	}
	return edges, nil
}

// findCycle returns an error matching ErrGraphCycle and ErrBadGraph that
// names the nodes of a cycle, if the graph has one. In a cycle no edge can
// be closed before the others, so a graceful Stop could never finish.
func (g *Graph) findCycle() error {
	consumer := map[*Edge]*node{}
	for _, n := range g.nodes {
		if n.in != nil {
			consumer[n.in] = n
		}
	}
	const (
		unseen = iota
		onPath
		done
	)
	color := map[*node]int{}
	var path []*node
	var visit func(n *node) []*node
	visit = func(n *node) []*node {
		color[n] = onPath
		path = append(path, n)
		for _, e := range n.outs {
			next := consumer[e]
			if next == nil {
				continue
			}
			switch color[next] {
			case onPath:
				for i, p := range path {
					if p == next {
						return append(path[i:len(path):len(path)], next)
					}
				}
			case unseen:
				if c := visit(next); c != nil {
					return c
				}
			}
		}
		path = path[:len(path)-1]
		color[n] = done
		return nil
	}
	for _, n := range g.nodes {
		if color[n] != unseen {
			continue
		}
		if c := visit(n); c != nil {
			names := make([]string, len(c))
			for i, n := range c {
				names[i] = strconv.Quote(n.name)
			}
			return multiSentinel("message: bad graph: cycle "+strings.Join(names, " -> ")+
				" (a graceful Stop could never finish)", ErrBadGraph, ErrGraphCycle)
		}
	}
	return nil
}

// retire closes each output edge of n once its last feeding worker is done.
func (g *Graph) retire(n *node, edges map[*Edge]*edgeState) {
	for _, e := range n.outs {
		if edges[e].writers.Add(-1) == 0 {
			e.Close()
		}
	}
}

// guard runs one worker (work) and turns a panic or runtime.Goexit in a
// node function into an abort of the graph: work has freed what it held;
// a panic is kept for Run to re-raise.
func (g *Graph) guard(n *node, runCtx, srcCtx context.Context, abort context.CancelCauseFunc) (err error) {
	returned := false
	defer func() {
		if returned {
			return
		}
		if r := recover(); r != nil {
			g.panicked.CompareAndSwap(nil, &NodePanic{Node: n.name, Value: r, Stack: debug.Stack()})
			abort(&nodeFailed{g, fmt.Errorf("message: node %q panicked: %v", n.name, r)})
			err = nil
			return
		}
		// runtime.Goexit: the worker ends whatever we do; the graph must
		// not wait for what it would have done.
		abort(&nodeFailed{g, fmt.Errorf("%w: node %q", ErrNodeExited, n.name)})
	}()
	err = g.work(n, runCtx, srcCtx)
	returned = true
	return err
}

// graphBatch is the most tokens a Graph worker receives at once with
// RecvBatch, and the most emitted tokens a stage holds before it sends them
// with SendBatch.
const graphBatch = 16

// work runs one worker of n until its input is drained, its source is done,
// or the graph aborts.
func (g *Graph) work(n *node, runCtx, srcCtx context.Context) error {
	out := &Emitter{rs: g.rs, edges: n.outs, ctx: runCtx}
	var buf [graphBatch]token.Token
	var next, k int // buf[next:k] are received tokens not yet handled
	returned := false
	defer func() {
		if returned {
			return
		}
		// A node function panicked or called runtime.Goexit (itself, or
		// in a store method): free what this worker holds, so that no slot
		// is lost (a panic of the store's Free here is dropped: the worker
		// is failing already). Each token is uncounted before its Free,
		// so that a Free that never returns is not repeated.
		out.dropCurrent()
		var dropped storePanic
		g.freeReceived(&dropped, &buf, &next, k)
		out.discard()
		out.pending = nil // as on a normal return
	}()
	if n.source != nil {
		out.ctx, out.stop = srcCtx, srcCtx.Done()
		err := n.source(srcCtx, out)
		returned = true
		if err != nil && srcCtx.Err() != nil && errors.Is(err, srcCtx.Err()) {
			return nil // stopped
		}
		return err
	}
	if n.stage != nil && len(n.outs) > 0 {
		out.pending = make([]token.Token, 0, graphBatch)
	}
	err := g.loop(n, runCtx, out, &buf, &next, &k)
	returned = true
	// Whatever is still held back is sent (or, when the worker failed,
	// freed); then an Emit after the worker is done (the Emitter kept past
	// the node function) must not hold a token back for a flush that never
	// comes: it sends at once, and the closed edges refuse and free it.
	if err == nil {
		err = out.flush()
	}
	out.discard()
	out.pending = nil
	return err
}

// loop is work's receive loop for a stage or sink; buf[*next:*k] are the
// tokens received and not yet handed to the node function.
func (g *Graph) loop(n *node, runCtx context.Context, out *Emitter, buf *[graphBatch]token.Token, next, k *int) error {
	limit := 1 // until the node function is timed
	aborted := runCtx.Done()
	for {
		// Take a share of what is queued: with several workers on one
		// edge, one of them must not take a whole burst while the others
		// idle.
		got, err := n.in.recv(runCtx, buf[:limit], n.workers)
		if err != nil {
			if errors.Is(err, ErrEdgeClosed) || runCtx.Err() != nil {
				return nil
			}
			return err
		}
		*next, *k = 0, got
		// Tokens taken together wait in buf for their turn, where the edge
		// can no longer expire or evict them, and a stage's emits wait for
		// the batch's end. That is worth it only while each token is quick
		// to handle: time the batch (two clock reads per batch) and fall
		// back to one token at a time for slow node functions.
		var start int64
		if got > 1 || limit == 1 {
			start = Now()
		}
		for *next < got {
			select {
			case <-aborted:
				// The graph is aborting: stop at once and free what this
				// worker holds (what is queued is freed by Run).
				var sp storePanic
				g.freeReceived(&sp, buf, next, got)
				out.discard()
				sp.raise()
				return nil
			default:
			}
			t := buf[*next]
			*next++
			out.cur, out.holding = t, true // until the function passes t on
			if n.stage != nil {
				err = n.stage(runCtx, t, out)
			} else {
				err = n.sink(runCtx, t)
				out.holding = false
				if ferr := g.rs.Free(t); err == nil && ferr != nil {
					err = ferr
				}
			}
			if err != nil {
				// t, if the stage kept it, and the tokens received with it
				// are still ours: free them, and what the stage emitted
				// but we did not send yet.
				out.dropCurrent()
				var sp storePanic
				g.freeReceived(&sp, buf, next, got)
				out.discard()
				sp.raise()
				return err
			}
			out.holding = false
		}
		if err := out.flush(); err != nil {
			return err
		}
		if start != 0 {
			limit = graphBatch
			if (Now()-start)/int64(got) > graphSlowToken {
				limit = 1
			}
		}
	}
}

// freeReceived frees buf[*next:got], the received tokens a failing or
// aborting worker has not handed to its node function, uncounting each
// before its Free (a Free that never returns, runtime.Goexit, must not be
// repeated by work's cleanup). A panic of the store's Free is kept in sp.
func (g *Graph) freeReceived(sp *storePanic, buf *[graphBatch]token.Token, next *int, got int) {
	for *next < got {
		t := buf[*next]
		*next++
		_ = sp.free(g.rs, t)
	}
}

// graphSlowToken is the time per token above which a Graph worker stops
// receiving in batches: a token then waits at most about 15 times this
// behind the others of its batch.
const graphSlowToken = int64(time.Microsecond)

// Emitter sends tokens to a node's output edges.
type Emitter struct {
	rs    RefStore
	edges []*Edge
	ctx   context.Context
	stop  <-chan struct{} // a source's: ctx.Done(), Emit refuses once closed
	// pending holds a stage's emitted tokens (one reference per output
	// edge each) until flush sends them with SendBatch: after the stage
	// has handled the tokens it received together, when pending is full,
	// or at once when a consumer of an output edge is parked waiting.
	// Sources emit directly (pending is nil).
	pending []token.Token
	// cur is the token the node function is handling; holding says the
	// worker still owns it (a stage has not emitted or freed it through
	// the Emitter, or a sink is running), so that it is freed if the
	// function fails or panics.
	cur     token.Token
	holding bool
	// owed counts the shares of the token an Emit in progress holds;
	// flushing, flushEdge and flushed say how far a flush has got (the
	// edge it sends to, and how many pending tokens that edge has taken or
	// refused). discard reads them when a worker ends inside either.
	owed      shares
	flushing  bool
	flushEdge int
	flushed   int
}

// passed notes that the node function passed t on or dropped it.
func (o *Emitter) passed(t token.Token) {
	if o.holding && t == o.cur {
		o.holding = false
	}
}

// dropCurrent frees the token the node function was handling if the
// worker still owns it.
func (o *Emitter) dropCurrent() {
	if o.holding {
		o.holding = false
		var sp storePanic // dropped: this runs as the worker fails
		_ = sp.free(o.rs, o.cur)
	}
}

// Emit hands t to every output edge of the node and always takes the
// caller's reference: with several edges it adds one reference per extra
// edge, and whatever an edge refuses by policy (full, expired, shed) is
// freed and counted in that edge's Stats, not reported. Emit returns an
// error only when the graph is stopping (a done context or a closed edge),
// or when t is bad; then every share of t that an edge did not take has
// been freed too (with several edges, those that took it before the graph
// began stopping deliver it). A source's Emit honours the source context:
// once the graph is stopping it refuses every token (with the context's
// error) even when an edge has room, and a Block edge cannot hold up Stop.
//
// A source's Emit sends at once. A stage's Emit may hold t back briefly to
// send it together with the other tokens the stage emits while handling
// the tokens it received together (at most 16): it sends at once when a
// consumer of an output edge is waiting, and in any case before the stage
// receives again. An error of a held-back send (the graph stopping) is
// then reported by the worker rather than by Emit. An Emitter used after
// its worker has ended sends at once (and, the graph being stopped, is
// refused and frees t); whatever is still held back when the worker ends
// is sent first.
//
// An Emitter belongs to its worker: use it from the node function's own
// goroutine while the function runs. It is not safe for use by another
// goroutine while the worker runs; once Run has returned, a kept Emitter
// may be used from any one goroutine (and refuses, as above).
//
// A panic of the store's Header, Retain or Free, or one an edge raises for
// its store (see HeaderStore), reaches Emit's caller only after every share
// of t has been sent or freed; if one of them calls runtime.Goexit, the
// worker's cleanup frees the shares Emit still held.
func (o *Emitter) Emit(t token.Token) error {
	o.passed(t)
	// A panic of the store (or one an edge raises for it) is re-raised
	// only once every share of t is sent or freed. o.owed counts the
	// shares this call holds, for a worker that ends inside it
	// (runtime.Goexit in a store method: see discard).
	var sp storePanic
	defer sp.raise()
	o.owed = shares{t, 1}
	if o.stop != nil {
		select {
		case <-o.stop:
			// A source's graph is stopping: refuse even when nothing would
			// have to wait, so that a source that never waits still ends.
			_ = o.owed.freeAll(&sp, o.rs)
			return o.ctx.Err()
		default:
		}
	}
	if len(o.edges) == 0 {
		return o.owed.freeAll(&sp, o.rs)
	}
	for i := 1; i < len(o.edges); i++ {
		if err := sp.retain(o.rs, t); err != nil {
			_ = o.owed.freeAll(&sp, o.rs)
			return err
		}
		o.owed.n++
	}
	if o.pending != nil {
		// Held back, t is sent later, where an error is no longer the
		// caller's: a bad t is reported now, and freed, as the direct path
		// does.
		var q queued
		if err := sp.check(o.edges[0], t, &q); err != nil && !errors.Is(err, ErrRejected) {
			_ = o.owed.freeAll(&sp, o.rs)
			return err
		}
		o.pending = append(o.pending, t)
		o.owed.n = 0
		if len(o.pending) == cap(o.pending) || o.consumerWaiting() {
			return o.flush()
		}
		return nil
	}
	var first error
	for _, e := range o.edges {
		if err := sp.send(o.ctx, e, t); err != nil {
			_ = o.owed.free(&sp, o.rs)
			if first == nil && !errors.Is(err, ErrRejected) {
				first = err
			}
			continue
		}
		o.owed.n--
	}
	return first
}

// consumerWaiting reports whether a receiver is parked on an output edge:
// then holding tokens back costs latency for nothing.
func (o *Emitter) consumerWaiting() bool {
	for _, e := range o.edges {
		if e.recvq.linked.Load() != 0 {
			return true
		}
	}
	return false
}

// flush sends the pending tokens to every output edge with SendBatch, with
// the outcome Emit would have had for each token: a token an edge refuses
// is freed (one reference per edge) and the send goes on with the next
// one; the first refusal that is not a policy refusal is returned.
func (o *Emitter) flush() error {
	if len(o.pending) == 0 {
		return nil
	}
	var sp storePanic // re-raised once every pending token is sent or freed
	defer sp.raise()
	var first error
	// flushEdge and flushed say how far the sends have got, for a worker
	// that ends inside one (runtime.Goexit in a store method: see discard).
	o.flushing = true
	for i, e := range o.edges {
		o.flushEdge, o.flushed = i, 0
		for o.flushed < len(o.pending) {
			_, err := sp.sendBatch(o.ctx, e, o.pending[o.flushed:], &o.flushed)
			if err == errStorePanicked {
				// The store's Header panicked for a token of the chunk,
				// before any of it got in: which one is not known, so the
				// next goes alone (a panic for it is its own refusal).
				err = sp.send(o.ctx, e, o.pending[o.flushed])
				if err == nil {
					o.flushed++
					continue
				}
			}
			if err != nil {
				t := o.pending[o.flushed]
				o.flushed++ // before the Free: see shares
				_ = sp.free(o.rs, t)
				if first == nil && !tokenRefusal(err) {
					first = err
				}
			}
			// Without an error, either all got in or a panic stopped the
			// batch (kept in sp): send the rest.
		}
	}
	o.flushing = false
	o.pending = o.pending[:0]
	return first
}

// tokenRefusal reports whether err refuses one token and leaves the edge
// open for the next: a policy refusal, or a token gone bad after Emit
// checked it (freed meanwhile); the others mean the graph is stopping.
func tokenRefusal(err error) bool {
	return errors.Is(err, ErrRejected) || errors.Is(err, arena.ErrStale) || errors.Is(err, arena.ErrBadToken)
}

// discard frees the pending tokens (one reference per output edge each).
//
// A worker that ended inside a flush (runtime.Goexit in a store method)
// holds only the shares not sent yet: none for the edges done, and for the
// edge it was sending to, those of the tokens that had not got in. One that
// ended inside Emit holds the shares Emit still owed.
//
// Every share is uncounted before its Free (through owed: see shares), so that when a
// Free never returns (runtime.Goexit), discard run again by the worker's
// cleanup frees only what is left.
func (o *Emitter) discard() {
	var sp storePanic // dropped: this runs as the worker fails or aborts
	_ = o.owed.freeAll(&sp, o.rs)
	for len(o.pending) > 0 {
		// From the last: the indices below flushed keep their meaning.
		j := len(o.pending) - 1
		n := len(o.edges)
		if o.flushing {
			n = len(o.edges) - o.flushEdge - 1
			if j >= o.flushed {
				n++
			}
		}
		o.owed = shares{o.pending[j], n}
		o.pending = o.pending[:j]
		_ = o.owed.freeAll(&sp, o.rs)
	}
	o.flushing = false
}

// Free drops a reference the node holds (a stage dropping its input).
func (o *Emitter) Free(t token.Token) error {
	o.passed(t)
	return o.rs.Free(t)
}

// Context returns the context the node's emits honour.
func (o *Emitter) Context() context.Context { return o.ctx }
