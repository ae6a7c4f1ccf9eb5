// Command soak runs many goroutines doing random work on a small arena and on
// a few message edges for a long time and checks the guarantees all the
// while. For the arena:
//
//   - no slot is handed out twice: every allocation claims its slot index in
//     an owner table with a CAS, and gives it back before Free;
//   - no slot is lost: at regular stop points every goroutine parks, the
//     coordinator checks Available() == Capacity() - held and the Stats, and
//     every so often frees everything and checks Available() == Capacity();
//   - every payload is intact: each value carries its owner, a sequence
//     number and a checksum over a filler pattern, checked on every Load,
//     View and Update;
//   - a freed token is stale through every method.
//
// For the message runtime (see edges.go): a message.Store and three edges
// (Block, DropOldest, DeadlineQoS) that the same goroutines Put, Send,
// fan out (Retain), Recv and Free through, with deadlines; an owner table
// catches a reference lost or duplicated and a payload that is not intact,
// and at the stop points every edge is drained and the store must agree
// exactly with what the workers hold (whole again when they free it all).
// Edges are closed under load now and then and replaced.
//
// Usage:
//
//	go run ./cmd/soak -d 60s -g 50
//
// It prints a summary and exits 1 on any violation. It is not part of the
// default test run.
package main

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// payload is what every slot holds. Sum covers everything else, so a torn
// or foreign write shows up.
type payload struct {
	Owner uint32
	Epoch uint32 // bumped by every Update
	Seq   uint64
	Fill  [6]uint64
	Sum   uint64
}

func fill(owner uint32, seq uint64, epoch uint32) payload {
	p := payload{Owner: owner, Seq: seq, Epoch: epoch}
	xorshiftFill(p.Fill[:], uint64(owner)<<40^seq*0x9e3779b97f4a7c15^uint64(epoch)<<20)
	p.Sum = p.checksum()
	return p
}

// xorshiftFill fills dst with a xorshift64 sequence from seed: a pattern
// that any corruption of a payload is sure to break.
func xorshiftFill(dst []uint64, seed uint64) {
	x := seed
	for i := range dst {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		dst[i] = x
	}
}

func (p *payload) checksum() uint64 {
	s := uint64(p.Owner)*31 + uint64(p.Epoch)*131 + p.Seq*1009
	for _, f := range p.Fill {
		s = s*0x100000001b3 ^ f
	}
	return s
}

func (p *payload) intact() bool { return p.Sum == p.checksum() && *p == fill(p.Owner, p.Seq, p.Epoch) }

type held struct {
	tok   token.Token
	seq   uint64
	epoch uint32
}

type worker struct {
	id   uint32
	rng  *rand.Rand
	held []held
	dead []token.Token // recently freed tokens, to check staleness

	ops, allocs, frees, full, stale uint64

	msg msgWorker
}

type soak struct {
	a     *arena.Arena[payload]
	owner []atomic.Uint32 // per slot index: owner id + 1, 0 = free
	m     *msgs           // the message store and edges

	// The stop barrier: workers hold stop.RLock while they work one step;
	// the coordinator takes stop.Lock to see every worker parked between
	// steps.
	stop sync.RWMutex
	done atomic.Bool

	mu         sync.Mutex
	violations []string
	checks     atomic.Uint64
	drains     atomic.Uint64
}

func (s *soak) violate(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.violations) < 50 {
		s.violations = append(s.violations, msg)
	}
	if len(s.violations) == 1 {
		fmt.Fprintln(os.Stderr, "VIOLATION:", msg)
	}
}

func (s *soak) failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.violations) > 0
}

// step does one random operation.
func (s *soak) step(w *worker, maxHeld int) {
	a := s.a
	w.ops++
	if w.rng.IntN(100) < s.m.pct {
		s.msgStep(w, maxHeld)
		return
	}
	switch op := w.rng.IntN(100); {
	case op < 30 && len(w.held) < maxHeld: // allocate
		var (
			tk  token.Token
			err error
			seq = w.ops
		)
		v := fill(w.id, seq, 0)
		if op < 15 {
			var p *payload
			tk, p, err = a.Alloc()
			if err == nil {
				if *p != (payload{}) {
					s.violate("Alloc(%v) by %d: slot not zeroed: %+v", tk, w.id, *p)
				}
				s.claim(w, tk)
				*p = v
			}
		} else {
			tk, err = a.Store(v)
			if err == nil {
				s.claim(w, tk)
			}
		}
		switch {
		case errors.Is(err, arena.ErrFull):
			w.full++
		case err != nil:
			s.violate("alloc by %d: %v", w.id, err)
		default:
			w.allocs++
			w.held = append(w.held, held{tok: tk, seq: seq})
		}
	case op < 50 && len(w.held) > 0: // load
		h := &w.held[w.rng.IntN(len(w.held))]
		v, err := a.Load(h.tok)
		s.checkVal(w, "Load", h, &v, err)
	case op < 65 && len(w.held) > 0: // view
		h := &w.held[w.rng.IntN(len(w.held))]
		var v payload
		err := a.View(h.tok, func(p *payload) { v = *p })
		s.checkVal(w, "View", h, &v, err)
	case op < 78 && len(w.held) > 0: // update
		h := &w.held[w.rng.IntN(len(w.held))]
		var old payload
		err := a.Update(h.tok, func(p *payload) {
			old = *p
			*p = fill(w.id, h.seq, h.epoch+1)
		})
		s.checkVal(w, "Update", h, &old, err)
		if err == nil {
			h.epoch++
		}
	case op < 95 && len(w.held) > 0: // free
		k := w.rng.IntN(len(w.held))
		h := w.held[k]
		w.held[k] = w.held[len(w.held)-1]
		w.held = w.held[:len(w.held)-1]
		s.release(w, h)
	case len(w.dead) > 0: // a freed token must be stale everywhere
		tk := w.dead[w.rng.IntN(len(w.dead))]
		_, e1 := a.Load(tk)
		e2 := a.View(tk, func(*payload) { s.violate("View ran for stale %v", tk) })
		e3 := a.Update(tk, func(*payload) { s.violate("Update ran for stale %v", tk) })
		e4 := a.Free(tk)
		for _, e := range []error{e1, e2, e3, e4} {
			if !errors.Is(e, arena.ErrStale) {
				s.violate("stale %v by %d: got %v, want ErrStale", tk, w.id, e)
			}
		}
		w.stale++
	}
}

// claim records w as tk's slot owner; a slot that already has an owner was
// handed out twice.
func (s *soak) claim(w *worker, tk token.Token) {
	idx := tk.Index()
	if int(idx) >= len(s.owner) {
		s.violate("token %v: index out of range", tk)
		return
	}
	if !s.owner[idx].CompareAndSwap(0, w.id+1) {
		s.violate("slot %d handed out twice: to %d as %v while owned by %d", idx, w.id, tk, s.owner[idx].Load()-1)
	}
}

// release gives h's slot back: owner table first (after Free someone else
// may take the slot at once), then Free.
func (s *soak) release(w *worker, h held) {
	idx := h.tok.Index()
	if !s.owner[idx].CompareAndSwap(w.id+1, 0) {
		s.violate("slot %d: %d frees it but the owner table says %d", idx, w.id, s.owner[idx].Load()-1)
	}
	if err := s.a.Free(h.tok); err != nil {
		s.violate("Free(%v) by %d: %v", h.tok, w.id, err)
		return
	}
	w.frees++
	if len(w.dead) < 32 {
		w.dead = append(w.dead, h.tok)
	} else {
		w.dead[w.rng.IntN(len(w.dead))] = h.tok
	}
}

func (s *soak) checkVal(w *worker, op string, h *held, v *payload, err error) {
	if err != nil {
		s.violate("%s(%v) by %d: %v", op, h.tok, w.id, err)
		return
	}
	if !v.intact() || v.Owner != w.id || v.Seq != h.seq || v.Epoch != h.epoch {
		s.violate("%s(%v) by %d: payload corrupt or foreign: %+v (want owner %d seq %d epoch %d)",
			op, h.tok, w.id, *v, w.id, h.seq, h.epoch)
	}
	if owner := s.owner[h.tok.Index()].Load(); owner != w.id+1 {
		s.violate("%s(%v) by %d: owner table says %d", op, h.tok, w.id, owner-1)
	}
}

// quiescent runs with every worker parked: nothing is in flight, so
// Available and Stats must be exact.
func (s *soak) quiescent(workers []*worker, drain bool) {
	a := s.a
	live := 0
	for _, w := range workers {
		live += len(w.held)
	}
	if got, want := a.Available(), a.Capacity()-live; got != want {
		s.violate("quiescent: Available() = %d, want Capacity() %d - held %d = %d (slot lost or doubled)", got, a.Capacity(), live, want)
	}
	st := a.Stats()
	if st.Live != uint64(live) || st.Allocs-st.Frees != uint64(live) {
		s.violate("quiescent: Stats %+v, but %d slots are held", st, live)
	}
	owned := 0
	for i := range s.owner {
		if s.owner[i].Load() != 0 {
			owned++
		}
	}
	if owned != live {
		s.violate("quiescent: owner table has %d slots, workers hold %d", owned, live)
	}
	if drain {
		for _, w := range workers {
			for _, h := range w.held {
				s.release(w, h)
			}
			w.held = w.held[:0]
		}
		if a.Available() != a.Capacity() {
			s.violate("after freeing everything: Available() = %d, Capacity() = %d (slot lost)", a.Available(), a.Capacity())
		}
		if st := a.Stats(); st.Allocs != st.Frees || st.Live != 0 {
			s.violate("after freeing everything: Stats %+v", st)
		}
		s.drains.Add(1)
	}
	s.msgQuiescent(workers, drain)
	s.checks.Add(1)
}

func main() {
	var (
		dur      = flag.Duration("d", 60*time.Second, "how long to run")
		nG       = flag.Int("g", 50, "worker goroutines")
		slots    = flag.Int("slots", 256, "arena capacity (small, so that it fills up and slots are reused a lot)")
		shards   = flag.Int("shards", 0, "arena shards (0 = one per P)")
		maxHeld  = flag.Int("hold", 8, "most tokens one goroutine holds at a time")
		every    = flag.Duration("check", 200*time.Millisecond, "interval between quiescent checks")
		flipProc = flag.Bool("procs", true, "change GOMAXPROCS now and then")
		seed     = flag.Uint64("seed", uint64(time.Now().UnixNano()), "random seed")
		mslots   = flag.Int("msgslots", 256, "message store capacity")
		msgPct   = flag.Int("msgpct", 40, "percentage of steps that work on messages and edges (0 = arena only)")
	)
	flag.Parse()

	a, err := arena.New[payload](arena.Config{Slots: *slots, Shards: *shards})
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	m, err := newMsgs(*mslots, *msgPct)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	s := &soak{a: a, owner: make([]atomic.Uint32, *slots), m: m}
	workers := make([]*worker, *nG)
	for i := range workers {
		workers[i] = &worker{id: uint32(i), rng: rand.New(rand.NewPCG(*seed, uint64(i)))}
	}

	start := time.Now()
	orig := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func(w *worker) {
			defer wg.Done()
			for !s.done.Load() {
				s.stop.RLock()
				for i := 0; i < 64; i++ {
					s.step(w, *maxHeld)
				}
				s.stop.RUnlock()
			}
		}(w)
	}

	procs := []int{orig, 1, orig * 2, 3, orig}
	tick := time.NewTicker(*every)
	deadline := time.After(*dur)
	status := time.NewTicker(10 * time.Second)
	n := 0
loop:
	for {
		select {
		case <-deadline:
			break loop
		case <-status.C:
			st := a.Stats()
			fmt.Printf("soak: %v: allocs %d frees %d full %d steals %d, %d quiescent checks\n",
				time.Since(start).Round(time.Second), st.Allocs, st.Frees, st.Failed, st.Steals, s.checks.Load())
		case <-tick.C:
			n++
			s.stop.Lock() // every worker parked between steps
			s.quiescent(workers, n%5 == 0)
			s.stop.Unlock()
			if *flipProc && n%3 == 0 {
				runtime.GOMAXPROCS(max(1, procs[n%len(procs)]))
			}
			if n%7 == 3 {
				// Close an edge under load; the next stop point drains and
				// replaces it.
				s.closeOne((n / 7) % len(s.m.edges))
			}
			if s.failed() {
				break loop
			}
		}
	}
	s.done.Store(true)
	wg.Wait()
	runtime.GOMAXPROCS(orig)
	s.quiescent(workers, true)
	s.msgFinish()

	st := a.Stats()
	var ops, stale uint64
	for _, w := range workers {
		ops += w.ops
		stale += w.stale
	}
	elapsed := time.Since(start)
	if err := a.Close(); err != nil {
		s.violate("Close: %v", err)
	}
	if _, err := a.Store(payload{}); !errors.Is(err, arena.ErrClosed) {
		s.violate("Store after Close: %v", err)
	}

	fmt.Printf("soak: %v, %d goroutines, %d slots, %d shards\n", elapsed.Round(time.Millisecond), *nG, *slots, st.Shards)
	fmt.Printf("  ops %d (%.0f/s), allocs %d, frees %d, ErrFull %d, steals %d, stale checks %d\n",
		ops, float64(ops)/elapsed.Seconds(), st.Allocs, st.Frees, st.Failed, st.Steals, stale)
	fmt.Println(s.m.summary(workers))
	fmt.Printf("  quiescent checks %d (%d with everything freed), seed %d\n", s.checks.Load(), s.drains.Load(), *seed)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.violations) > 0 {
		fmt.Printf("FAIL: %d violations\n", len(s.violations))
		for _, v := range s.violations {
			fmt.Println("  ", v)
		}
		os.Exit(1)
	}
	fmt.Println("PASS: no slot handed out twice, no slot or message reference lost or duplicated, every payload intact")
}
