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
// Realistic Graph workloads on a real *Store (through the counting gsStore
// wrapper of graphstore_attack_test.go): many sources and workers, chains of
// Block edges with side fan-out to DropNewest / DropOldest / DeadlineQoS
// edges, deadlines, QoS lanes, slow and fast node functions, PutWait
// back-pressure, Stop / cancel / node errors at random moments.
// ---------------------------------------------------------------------------

// g4Msg is what the test knows about one message id (V of gsPay).
type g4Msg struct {
	src      int32 // source worker, -1 for stage-made messages
	seq      int64 // per source worker (and per lane class)
	lc       bool  // LatencyCritical
	deadline bool  // has a deadline without DegradeAllowed: may expire anywhere
	dropped  atomic.Bool
	emitted  atomic.Bool // Emit returned nil (source) or held back without error (stage, graceful)
	main     atomic.Int32
	side     [8]atomic.Int32
}

type g4Cfg struct {
	name        string
	seed        uint64
	srcWorkers  int
	perSource   int // 0: endless until stopped
	depth       int // stages in the Block chain (0..4): the graph is depth+1 deep on the main path
	workers     []int
	sinkWorkers int
	slots       int
	slow        bool // node functions sometimes take > 1 µs per token
	deadlines   bool
	lanes       bool
	stageMakes  bool // stages also Put fresh messages (Put, dropping on ErrFull)
	dropEvery   int  // the first stage drops ids divisible by this (0: never)
	fifo        bool // check per-source FIFO at the main sink (needs single workers)
	keepEmitter bool
}

type g4Graph struct {
	cfg       g4Cfg
	w         *gsStore
	g         *Graph
	msgs      []g4Msg
	next      atomic.Int64
	mainEdges []*Edge
	allEdges  []*Edge
	sideNames []string
	srcID     atomic.Int32
	kept      sync.Map // *Emitter -> struct{}
	failAfter atomic.Int64
	failNode  string
	boom      error
	fifoErrs  atomic.Int64
	fifoMsg   atomic.Pointer[string]
	mainCount atomic.Int64
}

const g4MaxMsgs = 1 << 16

func (x *g4Graph) newID() (uint64, bool) {
	id := x.next.Add(1)
	if id >= int64(len(x.msgs)) {
		return 0, false
	}
	return uint64(id), true
}

func g4Spin(d time.Duration) {
	for start := Now(); Now()-start < int64(d); {
	}
}

func g4Build(t *testing.T, cfg g4Cfg) *g4Graph {
	t.Helper()
	x := &g4Graph{cfg: cfg, w: gsNew(t, cfg.slots), msgs: make([]g4Msg, g4MaxMsgs), boom: errors.New("g4 boom")}
	x.failAfter.Store(-1)
	x.g = NewGraph(x.w)
	r := rand.New(rand.NewPCG(cfg.seed, 7))
	edge := func(p Policy, main bool) *Edge {
		e := gsEdge(t, x.w, p)
		x.allEdges = append(x.allEdges, e)
		if main {
			x.mainEdges = append(x.mainEdges, e)
		}
		return e
	}
	mainPol := func() Policy {
		p := Policy{MaxItems: 2 + r.IntN(7), Admission: Block}
		if r.IntN(2) == 0 {
			p.MaxBytes = 4096
			p.SoftItems = 1
		}
		return p
	}
	sidePols := []Policy{
		{MaxItems: 4, Admission: DropNewest},
		{MaxItems: 3, SoftItems: 2, Admission: DropOldest},
		{MaxItems: 5, SoftItems: 3, MaxBytes: 5 * 64, SoftBytes: 3 * 64, Admission: DeadlineQoS},
		{MaxItems: 2, Admission: DeadlineQoS},
	}
	sideIdx := 0
	sideSink := func(name string, e *Edge, idx int) {
		x.g.Sink(name, 1+r.IntN(2), e, func(ctx context.Context, tok token.Token) error {
			var m gsPay
			if err := x.w.s.View(tok, func(mm *Message[gsPay]) { m = mm.Payload }); err != nil {
				return err
			}
			if m.V < uint64(len(x.msgs)) {
				x.msgs[m.V].side[idx].Add(1)
			}
			if cfg.slow && m.V%3 == 0 {
				time.Sleep(5 * time.Microsecond)
			}
			return x.maybeFail(name)
		})
	}
	addSides := func(owner string, outs []*Edge, k int) []*Edge {
		for j := 0; j < k && sideIdx < 8; j++ {
			p := sidePols[(sideIdx+int(cfg.seed))%len(sidePols)]
			e := edge(p, false)
			name := fmt.Sprintf("%s-side%d-%s", owner, sideIdx, p.Admission)
			x.sideNames = append(x.sideNames, name)
			sideSink(name, e, sideIdx)
			sideIdx++
			outs = append(outs, e)
		}
		return outs
	}

	// Source.
	first := edge(mainPol(), true)
	srcOuts := []*Edge{first}
	if cfg.seed%2 == 0 {
		srcOuts = addSides("src", srcOuts, 1)
	}
	x.g.Source("src", cfg.srcWorkers, func(ctx context.Context, out *Emitter) error {
		me := x.srcID.Add(1) - 1
		var seqN, seqLC int64
		rr := rand.New(rand.NewPCG(cfg.seed, uint64(me)+100))
		for i := 0; cfg.perSource == 0 || i < cfg.perSource; i++ {
			id, ok := x.newID()
			if !ok {
				return nil
			}
			m := &x.msgs[id]
			m.src = me
			h := Header{Seq: id, QoS: BestEffort, Size: uint32(1 + rr.IntN(64))}
			if cfg.lanes {
				switch rr.IntN(4) {
				case 0:
					h.QoS = Background
				case 1:
					h.QoS = LatencyCritical
				}
			}
			if h.QoS == LatencyCritical {
				m.lc = true
				seqLC++
				m.seq = seqLC
			} else {
				seqN++
				m.seq = seqN
			}
			if cfg.deadlines && rr.IntN(3) == 0 {
				h.Deadline = DeadlineIn(time.Duration(rr.IntN(300)) * time.Microsecond)
				if rr.IntN(2) == 0 {
					h.Flags |= DegradeAllowed
				} else {
					m.deadline = true
				}
			}
			tok, err := x.w.putWait(ctx, h, id)
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
			m.emitted.Store(true)
			if cfg.slow && rr.IntN(8) == 0 {
				runtime.Gosched()
			}
		}
		return nil
	}, srcOuts...)

	// Stages.
	in := first
	for s := 0; s < cfg.depth; s++ {
		name := fmt.Sprintf("stage%d", s)
		outMain := edge(mainPol(), true)
		outs := addSides(name, []*Edge{outMain}, r.IntN(3))
		workers := 1
		if s < len(cfg.workers) {
			workers = cfg.workers[s]
		}
		stageNo := s
		x.g.Stage(name, workers, in, func(ctx context.Context, tok token.Token, out *Emitter) error {
			if cfg.keepEmitter {
				x.kept.Store(out, struct{}{})
			}
			var v uint64
			if err := x.w.s.Update(tok, func(m *Message[gsPay]) { v = m.Payload.V }); err != nil {
				return err
			}
			if cfg.slow {
				switch v % 5 {
				case 0:
					g4Spin(3 * time.Microsecond)
				case 1:
					g4Spin(200 * time.Nanosecond)
				}
			}
			if stageNo == 0 && cfg.dropEvery > 0 && v%uint64(cfg.dropEvery) == 0 {
				x.msgs[v].dropped.Store(true)
				if err := out.Free(tok); err != nil {
					return err
				}
				return x.maybeFail(name)
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
			if cfg.stageMakes && v%7 == 0 {
				if id, ok := x.newID(); ok {
					m := &x.msgs[id]
					m.src = -1
					nt, err := x.w.s.Put(Header{Seq: id, QoS: BestEffort, Size: 8}, gsPay{V: id})
					if err == nil {
						x.w.record(nt)
						if err := out.Emit(nt); err != nil {
							return err
						}
						m.emitted.Store(true)
					}
				}
			}
			return x.maybeFail(name)
		}, outs...)
		in = outMain
	}

	// Main sink.
	lastN := map[int32]int64{}
	lastLC := map[int32]int64{}
	sinkWorkers := max(cfg.sinkWorkers, 1)
	var sinkMu sync.Mutex
	x.g.Sink("main", sinkWorkers, in, func(ctx context.Context, tok token.Token) error {
		var v uint64
		if err := x.w.s.View(tok, func(m *Message[gsPay]) { v = m.Payload.V }); err != nil {
			return err
		}
		if v >= uint64(len(x.msgs)) {
			return fmt.Errorf("bad id %d", v)
		}
		m := &x.msgs[v]
		m.main.Add(1)
		x.mainCount.Add(1)
		if cfg.fifo && m.src >= 0 {
			sinkMu.Lock()
			last := lastN
			if m.lc {
				last = lastLC
			}
			if prev, ok := last[m.src]; ok && m.seq <= prev {
				if x.fifoErrs.Add(1) == 1 {
					s := fmt.Sprintf("source worker %d (lc=%v): seq %d after %d (id %d)", m.src, m.lc, m.seq, prev, v)
					x.fifoMsg.Store(&s)
				}
			}
			last[m.src] = m.seq
			sinkMu.Unlock()
		}
		if cfg.slow && v%11 == 0 {
			g4Spin(2 * time.Microsecond)
		}
		return x.maybeFail("main")
	})
	return x
}

func (x *g4Graph) maybeFail(node string) error {
	if node != x.failNode {
		return nil
	}
	if x.failAfter.Add(-1) == 0 {
		return x.boom
	}
	return nil
}

// checkStats checks the Stats identity and emptiness of every edge.
func (x *g4Graph) checkStats(t *testing.T) {
	t.Helper()
	for i, e := range x.allEdges {
		st := e.Stats()
		if st.Len != 0 || st.Bytes != 0 {
			t.Errorf("%s: edge %d (%v) not empty after Run: %+v", x.cfg.name, i, e.Policy().Admission, st)
		}
		if st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained+uint64(st.Len) {
			t.Errorf("%s: edge %d (%v) Stats identity broken: Admitted %d != Delivered %d + Evicted %d + Expired %d + Drained %d + Len %d",
				x.cfg.name, i, e.Policy().Admission, st.Admitted, st.Delivered, st.Evicted, st.Expired, st.Drained, st.Len)
		}
		if !e.Closed() {
			t.Errorf("%s: edge %d not closed after Run", x.cfg.name, i)
		}
	}
}

// checkNoDup: nothing is delivered twice anywhere.
func (x *g4Graph) checkNoDup(t *testing.T) {
	t.Helper()
	n := min(int(x.next.Load()), len(x.msgs)-1)
	bad := 0
	for id := 1; id <= n; id++ {
		m := &x.msgs[id]
		if c := m.main.Load(); c > 1 {
			if bad++; bad < 5 {
				t.Errorf("%s: id %d delivered %d times to the main sink", x.cfg.name, id, c)
			}
		}
		for j := range m.side {
			if c := m.side[j].Load(); c > 1 {
				if bad++; bad < 5 {
					t.Errorf("%s: id %d delivered %d times to side sink %d", x.cfg.name, id, c, j)
				}
			}
		}
		if m.dropped.Load() && m.main.Load() != 0 {
			t.Errorf("%s: id %d was dropped by stage0 but reached the main sink", x.cfg.name, id)
		}
	}
}

// checkGraceful: every message emitted successfully, without an expiring
// deadline and not dropped, reached the main sink exactly once.
func (x *g4Graph) checkGraceful(t *testing.T) {
	t.Helper()
	n := min(int(x.next.Load()), len(x.msgs)-1)
	missing, total := 0, 0
	var first []string
	for id := 1; id <= n; id++ {
		m := &x.msgs[id]
		if !m.emitted.Load() || m.deadline || m.dropped.Load() {
			continue
		}
		total++
		if c := m.main.Load(); c != 1 {
			missing++
			if len(first) < 8 {
				first = append(first, fmt.Sprintf("id %d (src %d seq %d lc %v): %d", id, m.src, m.seq, m.lc, c))
			}
		}
	}
	if missing > 0 {
		t.Errorf("%s: graceful Stop lost or duplicated %d of %d emitted messages on the Block path: %v", x.cfg.name, missing, total, first)
	}
	if x.cfg.fifo {
		if k := x.fifoErrs.Load(); k > 0 {
			t.Errorf("%s: %d FIFO violations on the single-worker Block path; first: %s", x.cfg.name, k, *x.fifoMsg.Load())
		}
	}
}

// checkKept: Emitters kept past Run refuse and free.
func (x *g4Graph) checkKept(t *testing.T) {
	t.Helper()
	x.kept.Range(func(k, _ any) bool {
		out := k.(*Emitter)
		tok := x.w.put(t, uint64(len(x.msgs)+1))
		if err := out.Emit(tok); err == nil {
			t.Errorf("%s: a kept Emitter's Emit after Run returned nil", x.cfg.name)
		}
		if x.w.alive(tok) != 0 {
			t.Errorf("%s: a kept Emitter's refused Emit after Run did not free the token", x.cfg.name)
		}
		return true
	})
}

func g4Configs() []g4Cfg {
	return []g4Cfg{
		{name: "fifo-d1", srcWorkers: 4, perSource: 400, depth: 0, slots: 16, fifo: true, lanes: true},
		{name: "fifo-d3-slow", srcWorkers: 3, perSource: 200, depth: 3, slots: 24, fifo: true, slow: true, lanes: true, keepEmitter: true},
		{name: "fifo-d5-fast", srcWorkers: 8, perSource: 150, depth: 4, slots: 64, fifo: true, lanes: true, deadlines: true},
		{name: "multi-d2", srcWorkers: 6, perSource: 300, depth: 2, workers: []int{8, 3}, sinkWorkers: 4, slots: 32, deadlines: true, lanes: true, stageMakes: true, dropEvery: 13},
		{name: "multi-d4-slow", srcWorkers: 2, perSource: 200, depth: 4, workers: []int{2, 5, 1, 8}, sinkWorkers: 2, slots: 48, slow: true, stageMakes: true, keepEmitter: true},
		{name: "multi-d3-tiny", srcWorkers: 8, perSource: 150, depth: 3, workers: []int{1, 8, 2}, sinkWorkers: 8, slots: 8, deadlines: true, lanes: true, dropEvery: 5},
	}
}

func g4RunCfg(t *testing.T, cfg g4Cfg, ctx context.Context) (*g4Graph, error) {
	t.Helper()
	x := g4Build(t, cfg)
	err := gsMustReturn(t, x.g, ctx)
	return x, err
}

// TestGraph4SourcesFinishExactlyOnce: sources return nil after their
// quota; Run returns nil and every message reaches the main sink once.
func TestGraph4SourcesFinishExactlyOnce(t *testing.T) {
	for i, cfg := range g4Configs() {
		cfg.seed = uint64(i + 1)
		t.Run(cfg.name, func(t *testing.T) {
			x, err := g4RunCfg(t, cfg, context.Background())
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			x.checkNoDup(t)
			x.checkGraceful(t)
			x.checkStats(t)
			x.logSummary(t)
			x.checkKept(t)
			x.w.conserve(t, 0)
		})
	}
}

// TestGraph4StopGraceful: endless sources, Stop early, late or from many
// goroutines at once.
func TestGraph4StopGraceful(t *testing.T) {
	for _, when := range []string{"before", "early", "late", "concurrent"} {
		for i, cfg := range g4Configs() {
			cfg.seed = uint64(i + 11)
			cfg.perSource = 0
			cfg.name = when + "/" + cfg.name
			t.Run(cfg.name, func(t *testing.T) {
				x := g4Build(t, cfg)
				switch when {
				case "before":
					x.g.Stop()
				case "early":
					go x.g.Stop()
				case "late":
					go func() {
						deadline := time.Now().Add(time.Second)
						for x.mainCount.Load() < 500 && time.Now().Before(deadline) {
							time.Sleep(100 * time.Microsecond)
						}
						x.g.Stop()
					}()
				case "concurrent":
					for k := 0; k < 8; k++ {
						go func() {
							time.Sleep(time.Duration(k) * 300 * time.Microsecond)
							x.g.Stop()
						}()
					}
				}
				err := gsMustReturn(t, x.g, context.Background())
				if err != nil {
					t.Fatalf("Run after Stop: %v", err)
				}
				x.checkNoDup(t)
				x.checkGraceful(t)
				x.checkStats(t)
				x.logSummary(t)
				x.checkKept(t)
				x.w.conserve(t, 0)
			})
		}
	}
}

// TestGraph4CancelMidStream: Run's ctx cancelled at random moments:
// Run returns ctx's error, and every message is freed exactly once.
func TestGraph4CancelMidStream(t *testing.T) {
	for _, delay := range []time.Duration{0, 50 * time.Microsecond, 500 * time.Microsecond, 3 * time.Millisecond} {
		for i, cfg := range g4Configs() {
			cfg.seed = uint64(i + 21)
			cfg.perSource = 0
			cfg.name = fmt.Sprintf("%v/%s", delay, cfg.name)
			t.Run(cfg.name, func(t *testing.T) {
				x := g4Build(t, cfg)
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				go func() {
					if delay > 0 {
						time.Sleep(delay)
					}
					cancel()
				}()
				err := gsMustReturn(t, x.g, ctx)
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("Run after cancel = %v, want context.Canceled", err)
				}
				x.checkNoDup(t)
				x.checkStats(t)
				x.logSummary(t)
				x.checkKept(t)
				x.w.conserve(t, 0)
			})
		}
	}
}

// TestGraph4NodeErrorAborts: a stage or sink fails after k tokens; Run
// returns that error; everything is freed once.
func TestGraph4NodeErrorAborts(t *testing.T) {
	for i, cfg := range g4Configs() {
		for _, k := range []int64{1, 17, 300} {
			cfg := cfg
			cfg.seed = uint64(i + 31)
			cfg.perSource = 0
			cfg.name = fmt.Sprintf("%s/after%d", cfg.name, k)
			t.Run(cfg.name, func(t *testing.T) {
				x := g4Build(t, cfg)
				nodes := []string{"main"}
				for s := 0; s < cfg.depth; s++ {
					nodes = append(nodes, fmt.Sprintf("stage%d", s))
				}
				nodes = append(nodes, x.sideNames...)
				x.failNode = nodes[int(k)%len(nodes)]
				x.failAfter.Store(k)
				// A side sink may never see k tokens: stop the graph
				// after a while so that the test ends either way.
				timer := time.AfterFunc(300*time.Millisecond, x.g.Stop)
				defer timer.Stop()
				err := gsMustReturn(t, x.g, context.Background())
				if x.failAfter.Load() <= 0 {
					if !errors.Is(err, x.boom) {
						t.Fatalf("node %q failed; Run = %v, want it to match the node's error", x.failNode, err)
					}
				} else if err != nil {
					t.Fatalf("node never failed (stopped), Run = %v", err)
				}
				x.checkNoDup(t)
				x.checkStats(t)
				x.logSummary(t)
				x.checkKept(t)
				x.w.conserve(t, 0)
			})
		}
	}
}

// TestGraph4StopAndCancelRace: Stop, a cancel and a node error racing.
func TestGraph4StopAndCancelRace(t *testing.T) {
	for iter := 0; iter < 12; iter++ {
		cfg := g4Configs()[iter%6]
		cfg.seed = uint64(iter + 41)
		cfg.perSource = 0
		x := g4Build(t, cfg)
		x.failNode = "main"
		x.failAfter.Store(int64(50 + iter*30))
		ctx, cancel := context.WithCancel(context.Background())
		r := rand.New(rand.NewPCG(uint64(iter), 1))
		d1 := time.Duration(r.IntN(2000)) * time.Microsecond
		d2 := time.Duration(r.IntN(2000)) * time.Microsecond
		go func() { time.Sleep(d1); x.g.Stop() }()
		go func() { time.Sleep(d2); cancel() }()
		err := gsMustReturn(t, x.g, ctx)
		cancel()
		if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, x.boom) {
			t.Errorf("iter %d: Run = %v", iter, err)
		}
		x.checkNoDup(t)
		x.checkStats(t)
		x.logSummary(t)
		x.w.conserve(t, 0)
	}
}

// TestGraph4NodeErrorThenCancel: a sink fails; only after the graph has
// aborted (a source sees its context done) is the caller's ctx cancelled,
// before Run has returned (as a ctx deadline passing during the teardown
// would). The doc: "after a node fails it returns that node's error".
func TestGraph4NodeErrorThenCancel(t *testing.T) {
	w := gsNew(t, 16)
	e := gsEdge(t, w, Policy{MaxItems: 4})
	g := NewGraph(w)
	boom := errors.New("boom")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g.Source("src", 1, func(sctx context.Context, out *Emitter) error {
		tok, err := w.putWait(sctx, Header{}, 1)
		if err != nil {
			return err
		}
		if err := out.Emit(tok); err != nil {
			return err
		}
		<-sctx.Done() // the sink's failure aborts the graph
		cancel()      // the caller's ctx ends after the failure
		return sctx.Err()
	}, e)
	g.Sink("sink", 1, e, func(ctx context.Context, tok token.Token) error {
		return boom
	})
	err := gsMustReturn(t, g, ctx)
	if !errors.Is(err, boom) {
		t.Errorf("Run = %v, want the failing node's error (boom): the node failed first and its error is lost", err)
	}
	w.conserve(t, 0)
}

// TestGraph4NilCtxGraceful: Run(nil) with Stop from another goroutine.
func TestGraph4NilCtxGraceful(t *testing.T) {
	cfg := g4Configs()[3]
	cfg.seed = 99
	cfg.perSource = 0
	x := g4Build(t, cfg)
	go func() {
		for x.mainCount.Load() < 200 {
			time.Sleep(50 * time.Microsecond)
		}
		x.g.Stop()
	}()
	var err error
	gsWithin(t, 10*time.Second, "Run(nil)", func() {
		//lint:ignore SA1012 a nil context is what is tested
		err = x.g.Run(nil)
	})
	if err != nil {
		t.Fatalf("Run(nil) after Stop = %v", err)
	}
	x.checkNoDup(t)
	x.checkGraceful(t)
	x.checkStats(t)
	x.w.conserve(t, 0)
}

// TestGraph4CtxDeadline: Run's ctx has a deadline that passes mid-stream.
func TestGraph4CtxDeadline(t *testing.T) {
	for i, cfg := range g4Configs() {
		cfg.seed = uint64(i + 51)
		cfg.perSource = 0
		t.Run(cfg.name, func(t *testing.T) {
			x := g4Build(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Millisecond)
			defer cancel()
			err := gsMustReturn(t, x.g, ctx)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Run = %v, want DeadlineExceeded", err)
			}
			x.checkNoDup(t)
			x.checkStats(t)
			x.w.conserve(t, 0)
		})
	}
}

// ---------------------------------------------------------------------------
// Zero allocations per message in steady state.
// ---------------------------------------------------------------------------

func g4AllocGraph(t *testing.T, stageSlow bool) (mallocsPerMsg float64, n int) {
	s := newStore[payload](t, 256)
	e1 := mustEdge(t, s, Policy{MaxItems: 64})
	e2 := mustEdge(t, s, Policy{MaxItems: 64})
	g := NewGraph(s)
	work := make(chan int)
	var got atomic.Int64
	g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
		for {
			var k int
			select {
			case k = <-work:
			case <-ctx.Done():
				return ctx.Err()
			}
			for i := 0; i < k; i++ {
				tok, err := s.PutWait(ctx, Header{}, payload{A: uint64(i)})
				if err != nil {
					return err
				}
				if err := out.Emit(tok); err != nil {
					return err
				}
			}
		}
	}, e1)
	g.Stage("stage", 2, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
		if stageSlow {
			g4Spin(2 * time.Microsecond)
		}
		return out.Emit(tok)
	}, e2)
	g.Sink("sink", 1, e2, func(ctx context.Context, tok token.Token) error {
		got.Add(1)
		return nil
	})
	done := make(chan error, 1)
	go func() { done <- g.Run(context.Background()) }()
	batch := func(k int) {
		want := got.Load() + int64(k)
		work <- k
		deadline := time.Now().Add(5 * time.Second)
		for got.Load() < want {
			if time.Now().After(deadline) {
				t.Fatalf("stuck: %d of %d; goroutines:\n%s", got.Load(), want, gsDump())
			}
			runtime.Gosched()
		}
	}
	batch(20000) // warm up: pools, waiters, timing
	const N = 50000
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	batch(N)
	runtime.ReadMemStats(&m1)
	g.Stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("Run did not return after Stop:\n%s", gsDump())
	}
	if s.Available() != s.Capacity() {
		t.Fatalf("leak: %d of %d", s.Available(), s.Capacity())
	}
	return float64(m1.Mallocs-m0.Mallocs) / N, N
}

// TestGraph4SteadyStateZeroAllocs: source -> stage -> sink allocates
// nothing per message once warm (tolerating a small constant).
func TestGraph4SteadyStateZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	for _, slow := range []bool{false, true} {
		per, n := g4AllocGraph(t, slow)
		t.Logf("slow=%v: %.4f mallocs per message over %d", slow, per, n)
		if per*float64(n) > 200 {
			t.Errorf("slow=%v: %.4f mallocs per message (%.0f over %d messages), want ~0", slow, per, per*float64(n), n)
		}
	}
}

func (x *g4Graph) logSummary(t *testing.T) {
	t.Helper()
	var sum EdgeStats
	for _, e := range x.allEdges {
		st := e.Stats()
		sum.Admitted += st.Admitted
		sum.Evicted += st.Evicted
		sum.Expired += st.Expired
		sum.Drained += st.Drained
		sum.Rejected += st.Rejected
		sum.Waited += st.Waited
		sum.Late += st.Late
	}
	t.Logf("%s: ids %d, main %d, admitted %d evicted %d expired %d drained %d rejected %d waited %d late %d",
		x.cfg.name, x.next.Load(), x.mainCount.Load(), sum.Admitted, sum.Evicted, sum.Expired, sum.Drained, sum.Rejected, sum.Waited, sum.Late)
}

// TestGraph4StopSourceAsDocumented: a source written exactly as the
// SourceFunc doc advises (PutWait(ctx, ...) then Emit, returning their
// errors) and a sink that keeps up. The doc says PutWait "returns ctx's
// error when the graph stops" and Emit "honours the source context, so a
// Block edge cannot hold up Stop": Stop must end Run promptly.
func TestGraph4StopSourceAsDocumented(t *testing.T) {
	for _, pol := range []Policy{{MaxItems: 1024}, {MaxItems: 4}, {}} {
		t.Run(fmt.Sprintf("MaxItems%d", pol.MaxItems), func(t *testing.T) {
			s := newStore[payload](t, 1024)
			e := mustEdge(t, s, pol)
			g := NewGraph(s)
			var afterStop atomic.Int64
			var stopped atomic.Bool
			g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
				for {
					tok, err := s.PutWait(ctx, Header{}, payload{})
					if err != nil {
						return err
					}
					if err := out.Emit(tok); err != nil {
						return err
					}
					if stopped.Load() {
						afterStop.Add(1)
					}
				}
			}, e)
			g.Sink("sink", 4, e, func(ctx context.Context, tok token.Token) error { return nil })
			go func() {
				time.Sleep(5 * time.Millisecond)
				stopped.Store(true)
				g.Stop()
			}()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- g.Run(ctx) }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("source emitted %d messages after Stop", afterStop.Load())
				// "return promptly": at most about what the store holds.
				if n := afterStop.Load(); n > int64(s.Capacity()) {
					t.Errorf("the source emitted %d messages after Stop (store capacity %d): Stop did not end it promptly", n, s.Capacity())
				}
			case <-time.After(time.Second):
				t.Errorf("Run did not return 1 s after Stop: the source kept emitting (%d messages after Stop, still going)", afterStop.Load())
				// Unstick it: an abort stops the sink, the edge fills, and
				// Emit or PutWait has to wait at last.
				cancel()
				select {
				case <-done:
				case <-time.After(5 * time.Second):
					t.Fatalf("Run did not return after cancel either:\n%s", gsDump())
				}
			}
			if s.Available() != s.Capacity() {
				t.Errorf("leak: %d of %d", s.Available(), s.Capacity())
			}
		})
	}
}

// TestGraph4NoGoroutineLeak: after Run returns (graceful, cancel, node
// error), no goroutine of the graph is left behind.
func TestGraph4NoGoroutineLeak(t *testing.T) {
	base := runtime.NumGoroutine()
	for i, cfg := range g4Configs() {
		cfg.seed = uint64(i + 61)
		cfg.perSource = 50
		x, err := g4RunCfg(t, cfg, context.Background())
		if err != nil {
			t.Fatal(err)
		}
		x.w.conserve(t, 0)
		cfg.perSource = 0
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		_, err = g4RunCfg(t, cfg, ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Run = %v", err)
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		t.Errorf("%d goroutines left after Run returned (baseline %d):\n%s", n, base, gsDump())
	}
}
