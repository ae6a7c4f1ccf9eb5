package shm

// Stress: many goroutines over several handles of one tiny segment, every
// operation through a randomly chosen handle, so that frees, views and
// updates cross "processes" all the time. Run it under -race.
//
// Tokens that are allocated and stamped sit in a shared pool; a goroutine
// frees only a token it took out of the pool, so every Free must succeed,
// while Loads, Views, Updates and Adopts of pool tokens may meet a
// concurrent Free and then must say ErrStale. Checks:
//   - no slot is handed out twice: an index → live token table in Go memory
//     is claimed with a CAS on every Alloc and cleared before the Free;
//   - no allocation sees another's writes: the allocator stamps its id into
//     the payload under Update, and every View, Load and Update of the
//     token must find that id;
//   - no torn payload: Updates rewrite the fill with a yield half-way, and
//     every reader checks the fill matches the owner and sequence;
//   - in "roomy" mode at most Slots-1-workers allocations exist at any
//     instant; a freed slot still held by a View, Update or Load is not
//     reusable until it is released, but each worker holds at most one, so
//     a slot is always free and ErrFull is always wrong (a census that
//     trusts a moving freelist);
//   - at the end Available == Capacity on every handle, allocations equal
//     frees, and one goroutine can allocate the whole capacity again.

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cella-go/cella/token"
)

type poolEntry struct {
	tok   token.Token
	owner uint64
}

type stressPool struct {
	mu      sync.Mutex
	entries []poolEntry
}

func (p *stressPool) put(e poolEntry) {
	p.mu.Lock()
	p.entries = append(p.entries, e)
	p.mu.Unlock()
}

// pick returns a random entry, removing it if take.
func (p *stressPool) pick(r *rand.Rand, take bool) (poolEntry, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.entries) == 0 {
		return poolEntry{}, false
	}
	i := r.IntN(len(p.entries))
	e := p.entries[i]
	if take {
		p.entries[i] = p.entries[len(p.entries)-1]
		p.entries = p.entries[:len(p.entries)-1]
	}
	return e, true
}

func TestStress(t *testing.T) {
	ops := 15000
	if testing.Short() {
		ops = 1000
	}
	for _, c := range []struct {
		name                    string
		slots, handles, workers int
		roomy                   bool
	}{
		{"tight/2handles", 8, 2, 6, false},
		{"tight/4handles", 8, 4, 8, false},
		{"roomy/3handles", 12, 3, 6, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			hs := segment[pay](t, c.handles, Config{Slots: c.slots, Shards: 2})
			stress(t, hs, c.workers, ops, c.roomy)
		})
	}
}

func stress(t *testing.T, hs []*Arena[pay], workers, ops int, roomy bool) {
	slots := hs[0].Capacity()
	var (
		pool     stressPool
		owners   = make([]atomic.Uint64, slots) // index → live token, 0 if none
		reserved atomic.Int64                   // roomy: allocations that may exist
		failed   atomic.Bool
		wg       sync.WaitGroup
	)
	fail := func(format string, args ...any) {
		if failed.CompareAndSwap(false, true) {
			t.Errorf(format, args...)
		}
	}
	check := func(what string, e poolEntry, p *pay) {
		if p.Owner != e.owner {
			fail("%s %v: owner %d in the payload, allocated by %d (slot shared by two allocations)", what, e.tok, p.Owner, e.owner)
		} else if !p.whole() {
			fail("%s %v: torn payload %+v", what, e.tok, *p)
		}
	}
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 42))
			me := uint64(g + 1)
			var seq uint64
			for i := 0; i < ops && !failed.Load(); i++ {
				h := hs[r.IntN(len(hs))]
				switch op := r.IntN(16); {
				case op < 4: // allocate, stamp, publish
					if roomy && reserved.Add(1) > int64(slots-1-workers) {
						reserved.Add(-1)
						continue
					}
					seq++
					var tok token.Token
					var err error
					if seq%2 == 0 {
						tok, err = h.Store(patterned(0, seq))
					} else {
						var p *pay
						if tok, p, err = h.Alloc(); err == nil {
							if *p != (pay{}) {
								fail("Alloc of %v: slot not zeroed: %+v", tok, *p)
							}
							*p = patterned(0, seq)
						}
					}
					if errors.Is(err, ErrFull) {
						if roomy {
							fail("ErrFull with at most %d of %d slots allocated or held", slots-1, slots)
						}
						continue
					}
					if err != nil {
						fail("Store: %v", err)
						return
					}
					if prev := owners[tok.Index()].Swap(uint64(tok)); prev != 0 {
						fail("slot %d handed out as %v while %v is live", tok.Index(), tok, token.Token(prev))
						return
					}
					// Stamp through another handle than the allocating one.
					err = hs[r.IntN(len(hs))].Update(tok, func(p *pay) {
						if *p != patterned(0, seq) {
							fail("new allocation %v holds %+v, not what Store wrote", tok, *p)
						}
						*p = patterned(me, seq)
					})
					if err != nil {
						fail("stamping Update: %v", err)
						return
					}
					pool.put(poolEntry{tok, me})
				case op < 7: // free through any handle
					e, ok := pool.pick(r, true)
					if !ok {
						continue
					}
					if !owners[e.tok.Index()].CompareAndSwap(uint64(e.tok), 0) {
						fail("index table lost %v", e.tok)
					}
					if err := h.Free(e.tok); err != nil {
						fail("Free of a live token %v: %v", e.tok, err)
						return
					}
					if roomy {
						reserved.Add(-1)
					}
				case op < 10:
					e, ok := pool.pick(r, false)
					if !ok {
						continue
					}
					err := h.View(e.tok, func(p *pay) {
						check("View", e, p)
						runtime.Gosched()
						check("View after a yield", e, p)
					})
					if err != nil && !errors.Is(err, ErrStale) {
						fail("View: %v", err)
					}
				case op < 12:
					e, ok := pool.pick(r, false)
					if !ok {
						continue
					}
					err := h.Update(e.tok, func(p *pay) {
						check("Update", e, p)
						next := p.Seq + 1
						for i := range p.Fill {
							p.Fill[i] = fillOf(p.Owner, next, i)
							if i == len(p.Fill)/2 {
								runtime.Gosched()
							}
						}
						p.Seq = next
					})
					if err != nil && !errors.Is(err, ErrStale) {
						fail("Update: %v", err)
					}
				case op < 14:
					e, ok := pool.pick(r, false)
					if !ok {
						continue
					}
					var v pay
					var err error
					if op == 12 {
						v, err = h.Load(e.tok)
					} else {
						err = h.LoadInto(e.tok, &v)
					}
					if err == nil {
						check("Load", e, &v)
					} else if !errors.Is(err, ErrStale) {
						fail("Load: %v", err)
					}
				case op == 14:
					e, ok := pool.pick(r, false)
					if !ok {
						continue
					}
					if err := h.Adopt(e.tok); err != nil && !errors.Is(err, ErrStale) {
						fail("Adopt: %v", err)
					}
				default:
					if i%8 != 0 {
						continue
					}
					rep, err := h.Recover()
					if err != nil || rep != (Recovery{}) {
						fail("Recover with nobody dead: %+v, %v", rep, err)
					}
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, e := range pool.entries {
		must(t, hs[int(e.tok)%len(hs)].Free(e.tok), "final Free")
	}
	var allocs, frees uint64
	for i, h := range hs {
		if n := h.Available(); n != slots {
			t.Fatalf("handle %d: Available = %d after every token was freed, capacity %d", i, n, slots)
		}
		st := h.Stats()
		allocs, frees = allocs+st.Allocs, frees+st.Frees
	}
	if allocs != frees {
		t.Fatalf("Allocs %d != Frees %d after every token was freed", allocs, frees)
	}
	if got := len(allocAll(t, hs[:1], slots)); got != slots {
		t.Fatalf("%d allocations after the stress, capacity %d", got, slots)
	}
	t.Logf("%s", fmt.Sprint(allocs, " allocations"))
}

// TestNoSpuriousFull: each worker holds one slot and keeps swapping it
// (Free the old one through one handle, Alloc a new one through another),
// Slots-1 workers, so at most Slots-1 slots are allocated at any instant
// and no callback holds a freed slot: every Alloc must succeed. The free
// slot keeps moving between caches and freelists of different records
// while Allocs scan for it: an Alloc that declares the arena full after a
// scan that missed it (no census) fails here, when the scheduler lets a
// swap overtake a scan.
func TestNoSpuriousFull(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(8))
	const slots = 6
	iters := 100000
	if testing.Short() {
		iters = 5000
	}
	hs := segment[pay](t, 5, Config{Slots: slots, Shards: 3})
	var wg sync.WaitGroup
	var fulls atomic.Int64
	for g := range slots - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			held, _, err := hs[g%len(hs)].Alloc()
			if err != nil {
				t.Error(err)
				return
			}
			for i := range iters {
				if err := hs[(g+i)%len(hs)].Free(held); err != nil {
					t.Error(err)
					return
				}
				held, _, err = hs[(g+2*i+1)%len(hs)].Alloc()
				for errors.Is(err, ErrFull) {
					fulls.Add(1)
					held, _, err = hs[(g+2*i+1)%len(hs)].Alloc()
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
			if err := hs[g%len(hs)].Free(held); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := fulls.Load(); n != 0 {
		t.Fatalf("%d Allocs returned ErrFull with at most %d of %d slots allocated", n, slots-1, slots)
	}
	for _, h := range hs {
		if h.Available() != slots {
			t.Fatalf("Available = %d at the end", h.Available())
		}
	}
}

// TestConcurrentDrain: goroutines on several handles allocate from a fresh
// segment until ErrFull, free everything (through other handles than they
// allocated on), and drain it again: every round hands out each slot
// exactly once, capacity slots in all, from the frontiers in the first
// round and from the freelists and caches after.
func TestConcurrentDrain(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(8))
	const slots, workers, rounds = 2048, 6, 8
	for _, shards := range []int{1, 5} {
		hs := segment[pay](t, 3, Config{Slots: slots, Shards: shards})
		for round := range rounds {
			got := make([][]token.Token, workers)
			var wg sync.WaitGroup
			for g := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; ; i++ {
						tok, _, err := hs[(g+i)%len(hs)].Alloc()
						if errors.Is(err, ErrFull) {
							return
						}
						if err != nil {
							t.Error(err)
							return
						}
						got[g] = append(got[g], tok)
					}
				}()
			}
			wg.Wait()
			seen := make([]bool, slots)
			n := 0
			for _, toks := range got {
				for _, tok := range toks {
					if seen[tok.Index()] {
						t.Fatalf("shards %d round %d: slot %d handed out twice", shards, round, tok.Index())
					}
					seen[tok.Index()] = true
					n++
				}
			}
			if n != slots {
				t.Fatalf("shards %d round %d: %d allocations before ErrFull, capacity %d", shards, round, n, slots)
			}
			for g, toks := range got {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i, tok := range toks {
						if err := hs[(g+i+1)%len(hs)].Free(tok); err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			if a := hs[0].Available(); a != slots {
				t.Fatalf("Available = %d after freeing everything", a)
			}
		}
	}
}
