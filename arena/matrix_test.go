package arena_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// The concurrent-pool test matrix: pools of several sizes, stress runs,
// exhaustion, free-list integrity, mixed operations, scaling, and
// producer/consumer. Every goroutine writes a pattern of its own (its id, a
// sequence number, derived fill words and a checksum) into each slot it owns,
// and checks it on every read, so a torn value, a write into the wrong slot
// or a slot handed out twice shows up as a wrong pattern. An owner table,
// claimed with a CAS on every successful Alloc, catches a slot handed out
// twice directly; the Stats counters are checked against the test's own
// counts at the end.

// mxCell is the payload: 56 bytes, one field derived from the next, so no
// partial write goes unnoticed.
type mxCell struct {
	Owner uint64 // goroutine id (≥ 1); 0 only in a zeroed slot
	Seq   uint64
	Fill  [4]uint64
	Sum   uint64
}

func mxMix(x uint64) uint64 { // splitmix64 finaliser
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

func mxSum(c *mxCell) uint64 {
	s := mxMix(c.Owner*0x9e3779b97f4a7c15 ^ c.Seq)
	for _, f := range c.Fill {
		s = mxMix(s ^ f)
	}
	return s
}

func mxPattern(owner, seq uint64) mxCell {
	c := mxCell{Owner: owner, Seq: seq}
	h := mxMix(owner<<40 ^ seq)
	for i := range c.Fill {
		h = mxMix(h + uint64(i) + 1)
		c.Fill[i] = h
	}
	c.Sum = mxSum(&c)
	return c
}

// consistent reports whether c is a whole pattern (of any owner and seq).
func (c *mxCell) consistent() bool { return *c == mxPattern(c.Owner, c.Seq) }

// mxRun is one arena under test and the test's own view of it.
type mxRun struct {
	t      testing.TB
	a      *arena.Arena[mxCell]
	owner  []atomic.Uint64 // slot index → id of the goroutine holding it, 0 = free
	failed atomic.Bool
	errMu  sync.Mutex
	errs   int

	allocs, frees, fulls atomic.Uint64
}

const mxSharedOwner = 1 << 62 // owner id of slots shared by every goroutine

func mxNewRun(t testing.TB, slots, shards int) *mxRun {
	t.Helper()
	a, err := arena.New[mxCell](arena.Config{Slots: slots, Shards: shards})
	if err != nil {
		t.Fatalf("New(Slots=%d, Shards=%d): %v", slots, shards, err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil && !errors.Is(err, arena.ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return &mxRun{t: t, a: a, owner: make([]atomic.Uint64, slots)}
}

// fail records an error from any goroutine and tells every worker to stop.
// Only the first few are printed.
func (r *mxRun) fail(format string, args ...any) {
	r.failed.Store(true)
	r.errMu.Lock()
	defer r.errMu.Unlock()
	r.errs++
	if r.errs <= 5 {
		r.t.Errorf(format, args...)
	}
}

func (r *mxRun) stopped() bool { return r.failed.Load() }

func (r *mxRun) claim(tok token.Token, id uint64) bool {
	if tok.IsNil() || int(tok.Index()) >= len(r.owner) {
		r.fail("allocation returned malformed token %v (capacity %d)", tok, len(r.owner))
		return false
	}
	if !r.owner[tok.Index()].CompareAndSwap(0, id) {
		r.fail("slot %d (token %v) handed to goroutine %d while goroutine %d holds it",
			tok.Index(), tok, id, r.owner[tok.Index()].Load())
		return false
	}
	return true
}

func (r *mxRun) release(tok token.Token, id uint64) bool {
	if !r.owner[tok.Index()].CompareAndSwap(id, 0) {
		r.fail("goroutine %d frees slot %d but the owner table says %d", id, tok.Index(), r.owner[tok.Index()].Load())
		return false
	}
	return true
}

// finish checks the arena once every goroutine has freed everything: no slot
// held, counters exact, and every slot still there: one goroutine can take
// exactly Capacity distinct slots, then ErrFull.
func (r *mxRun) finish() {
	t := r.t
	t.Helper()
	if r.stopped() {
		return
	}
	for i := range r.owner {
		if id := r.owner[i].Load(); id != 0 {
			t.Fatalf("slot %d still owned by %d at the end", i, id)
		}
	}
	a := r.a
	if a.Available() != a.Capacity() {
		t.Fatalf("Available() = %d, Capacity() = %d after every token was freed", a.Available(), a.Capacity())
	}
	st := a.Stats()
	if st.Allocs != r.allocs.Load() || st.Frees != r.frees.Load() || st.Allocs != st.Frees || st.Live != 0 {
		t.Fatalf("Stats = %+v; the test counted %d allocs, %d frees", st, r.allocs.Load(), r.frees.Load())
	}
	if st.Failed != r.fulls.Load() {
		t.Fatalf("Stats.Failed = %d; the test saw ErrFull %d times", st.Failed, r.fulls.Load())
	}
	if st.Steals > st.Allocs {
		t.Fatalf("Stats.Steals = %d > Allocs = %d", st.Steals, st.Allocs)
	}
	mxAllocAll(t, a, a.Capacity())
}

// mxAllocAll takes every slot on one goroutine, checks that exactly want
// distinct slots come back, zeroed, and then ErrFull, and frees them again.
func mxAllocAll(t testing.TB, a *arena.Arena[mxCell], want int) {
	t.Helper()
	seen := make(map[uint32]bool, want)
	toks := make([]token.Token, 0, want)
	for {
		tok, p, err := a.Alloc()
		if errors.Is(err, arena.ErrFull) {
			break
		}
		if err != nil {
			t.Fatalf("Alloc: %v", err)
		}
		if seen[tok.Index()] || int(tok.Index()) >= want {
			t.Fatalf("Alloc handed out slot %d twice or out of range (capacity %d)", tok.Index(), want)
		}
		if *p != (mxCell{}) {
			t.Fatalf("Alloc returned slot %d not zeroed: %+v", tok.Index(), *p)
		}
		seen[tok.Index()] = true
		toks = append(toks, tok)
		if len(toks) > want {
			t.Fatalf("more than %d slots allocated", want)
		}
	}
	if len(toks) != want {
		t.Fatalf("one goroutine allocated %d slots, want exactly %d (slots lost)", len(toks), want)
	}
	for _, tok := range toks {
		if err := a.Free(tok); err != nil {
			t.Fatalf("Free(%v): %v", tok, err)
		}
	}
	if a.Available() != want {
		t.Fatalf("Available() = %d after freeing everything, want %d", a.Available(), want)
	}
}

type mxHeld struct {
	tok token.Token
	seq uint64
}

// mxWorker is one goroutine's state. It owns the tokens in held.
type mxWorker struct {
	r     *mxRun
	id    uint64
	rng   *rand.Rand
	seq   uint64
	hold  int // most tokens held at once
	held  []mxHeld
	stale []token.Token // recently freed tokens: must stay ErrStale
	ops   int
}

func (r *mxRun) worker(id int, hold int) *mxWorker {
	return &mxWorker{r: r, id: uint64(id) + 1, rng: rand.New(rand.NewPCG(uint64(id), 0xce11a)), hold: hold}
}

func (w *mxWorker) nextSeq() uint64 { w.seq++; return w.seq }

// alloc takes a slot with Alloc or Store and fills it with this worker's
// pattern. It returns false on ErrFull or on a failure.
func (w *mxWorker) alloc(useStore bool) (mxHeld, bool) {
	r := w.r
	seq := w.nextSeq()
	var tok token.Token
	var err error
	if useStore {
		tok, err = r.a.Store(mxPattern(w.id, seq))
	} else {
		var p *mxCell
		tok, p, err = r.a.Alloc()
		if err == nil {
			if p == nil {
				r.fail("Alloc returned a nil pointer with token %v", tok)
				return mxHeld{}, false
			}
			if *p != (mxCell{}) {
				r.fail("Alloc by %d returned slot %d not zeroed: %+v (handed out twice?)", w.id, tok.Index(), *p)
				return mxHeld{}, false
			}
			if !r.claim(tok, w.id) {
				return mxHeld{}, false
			}
			*p = mxPattern(w.id, seq)
		}
	}
	if errors.Is(err, arena.ErrFull) {
		r.fulls.Add(1)
		return mxHeld{}, false
	}
	if err != nil {
		r.fail("alloc: %v", err)
		return mxHeld{}, false
	}
	r.allocs.Add(1)
	if useStore && !r.claim(tok, w.id) {
		return mxHeld{}, false
	}
	h := mxHeld{tok, seq}
	w.held = append(w.held, h)
	return h, w.check(h)
}

// check reads h's slot with Load and with View and wants this worker's pattern.
func (w *mxWorker) check(h mxHeld) bool {
	r := w.r
	want := mxPattern(w.id, h.seq)
	got, err := r.a.Load(h.tok)
	if err != nil || got != want {
		r.fail("goroutine %d: Load(%v) = %+v, %v; want its pattern seq %d", w.id, h.tok, got, err, h.seq)
		return false
	}
	ok := true
	err = r.a.View(h.tok, func(c *mxCell) {
		if *c != want {
			ok = false
			r.fail("goroutine %d: View(%v) sees %+v; want its pattern seq %d", w.id, h.tok, *c, h.seq)
		}
	})
	if err != nil {
		r.fail("goroutine %d: View(%v): %v", w.id, h.tok, err)
		return false
	}
	return ok
}

// update rewrites held[i] under Update, checking the old pattern first.
func (w *mxWorker) update(i int) bool {
	r := w.r
	h := &w.held[i]
	old, seq := mxPattern(w.id, h.seq), w.nextSeq()
	ok := true
	err := r.a.Update(h.tok, func(c *mxCell) {
		if *c != old {
			ok = false
			r.fail("goroutine %d: Update(%v) sees %+v; want its pattern seq %d", w.id, h.tok, *c, h.seq)
		}
		*c = mxPattern(w.id, seq)
	})
	if err != nil {
		r.fail("goroutine %d: Update(%v): %v", w.id, h.tok, err)
		return false
	}
	h.seq = seq
	return ok && w.check(*h)
}

// free releases held[i] and checks that its token is stale at once.
func (w *mxWorker) free(i int) bool {
	r := w.r
	h := w.held[i]
	w.held[i] = w.held[len(w.held)-1]
	w.held = w.held[:len(w.held)-1]
	if !w.check(h) || !r.release(h.tok, w.id) {
		return false
	}
	if err := r.a.Free(h.tok); err != nil {
		r.fail("goroutine %d: Free(%v): %v", w.id, h.tok, err)
		return false
	}
	r.frees.Add(1)
	if _, err := r.a.Load(h.tok); !errors.Is(err, arena.ErrStale) {
		r.fail("goroutine %d: Load(%v) right after Free = %v, want ErrStale", w.id, h.tok, err)
		return false
	}
	if len(w.stale) < 16 {
		w.stale = append(w.stale, h.tok)
	} else {
		w.stale[w.rng.IntN(len(w.stale))] = h.tok
	}
	return true
}

// useStale tries a freed token through a random method: always ErrStale,
// even after the slot was reused by someone else.
func (w *mxWorker) useStale() bool {
	if len(w.stale) == 0 {
		return true
	}
	r := w.r
	tok := w.stale[w.rng.IntN(len(w.stale))]
	called := false
	fn := func(*mxCell) { called = true }
	var err error
	switch w.rng.IntN(4) {
	case 0:
		_, err = r.a.Load(tok)
	case 1:
		err = r.a.View(tok, fn)
	case 2:
		err = r.a.Update(tok, fn)
	case 3:
		err = r.a.Free(tok)
	}
	if !errors.Is(err, arena.ErrStale) || called {
		r.fail("goroutine %d: use of freed token %v = %v (callback ran: %v), want ErrStale", w.id, tok, err, called)
		return false
	}
	return true
}

// step does one random operation on the worker's own slots.
func (w *mxWorker) step() bool {
	w.ops++
	n := len(w.held)
	switch x := w.rng.IntN(100); {
	case n == 0 || (n < w.hold && x < 35):
		_, ok := w.alloc(x%2 == 0)
		return ok || !w.r.stopped()
	case x < 55:
		return w.check(w.held[w.rng.IntN(n)])
	case x < 70:
		return w.update(w.rng.IntN(n))
	case x < 95:
		return w.free(w.rng.IntN(n))
	default:
		return w.useStale()
	}
}

func (w *mxWorker) releaseAll() {
	for len(w.held) > 0 && !w.r.stopped() {
		w.free(len(w.held) - 1)
	}
}

// runWorkers runs n workers, each doing ops steps (or until deadline, if
// set), and then freeing what it holds.
func (r *mxRun) runWorkers(n, hold, ops int, deadline time.Time) (total int) {
	var wg sync.WaitGroup
	counts := make([]int, n)
	for g := 0; g < n; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			w := r.worker(g, hold)
			for i := 0; !r.stopped(); i++ {
				if deadline.IsZero() {
					if i >= ops {
						break
					}
				} else if i%8 == 0 && time.Now().After(deadline) {
					break
				}
				if !w.step() {
					break
				}
			}
			w.releaseAll()
			counts[g] = w.ops
		}(g)
	}
	wg.Wait()
	for _, c := range counts {
		total += c
	}
	return total
}

// Pools of 100, 1000 and 10000 slots, 4 goroutines each.
func TestMatrixPoolSizes(t *testing.T) {
	for _, c := range []struct{ slots, ops int }{{100, 100}, {1000, 100}, {10000, 50}} {
		for _, shards := range []int{0, 1, 3, 8} {
			t.Run(fmt.Sprintf("slots=%d/shards=%d", c.slots, shards), func(t *testing.T) {
				r := mxNewRun(t, c.slots, shards)
				hold := c.slots / 4 // 4 goroutines could fill the pool together
				if c.slots > 1000 {
					hold = 64
				}
				ops := r.runWorkers(4, hold, c.ops*4, time.Time{})
				if ops == 0 {
					t.Fatal("no operations ran")
				}
				r.finish()
			})
		}
	}
}

// Stress: many goroutines for a fixed time on one pool, then tiny pools
// where goroutines outnumber slots.
func TestMatrixStress(t *testing.T) {
	long := func(d time.Duration) time.Duration {
		if testing.Short() {
			return 100 * time.Millisecond
		}
		return d
	}
	cases := []struct {
		goroutines, slots, shards, hold int
		d                               time.Duration
	}{
		{10, 5000, 0, 32, long(time.Second)},
		{20, 5000, 3, 32, long(time.Second)},
		{50, 5000, 8, 32, long(2 * time.Second)},
		{16, 7, 3, 2, long(250 * time.Millisecond)},
		{16, 1, 8, 1, long(250 * time.Millisecond)},
		{50, 20, 0, 1, long(250 * time.Millisecond)},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("g=%d/slots=%d/shards=%d/%v", c.goroutines, c.slots, c.shards, c.d), func(t *testing.T) {
			r := mxNewRun(t, c.slots, c.shards)
			start := time.Now()
			ops := r.runWorkers(c.goroutines, c.hold, 0, start.Add(c.d))
			el := time.Since(start)
			if ops < c.goroutines {
				t.Fatalf("only %d operations in %v", ops, el)
			}
			t.Logf("%d goroutines: %d ops in %v (%.0f ops/s), %d allocs, %d ErrFull, %d steals",
				c.goroutines, ops, el.Round(time.Millisecond), float64(ops)/el.Seconds(),
				r.allocs.Load(), r.fulls.Load(), r.a.Stats().Steals)
			// With room for every goroutine's slots plus a steal batch in
			// flight per other goroutine, some shard always has a free slot:
			// ErrFull would be wrong.
			if roomy := c.slots > c.goroutines*c.hold+(c.goroutines-1)*31; roomy && r.fulls.Load() != 0 {
				t.Errorf("ErrFull %d times although at most %d of %d slots were ever held", r.fulls.Load(), c.goroutines*c.hold, c.slots)
			}
			r.finish()
		})
	}
}

// ErrFull only when no slot is free: 8 goroutines each hold at most 8 slots
// of a 65-slot arena, so at every instant at least one slot is free (a slot
// counts as held from before its Alloc starts until its Free returns). No
// Alloc may report ErrFull. This catches an Alloc that gives up while free
// slots are in flight between shards: a thief that popped a batch from a
// victim and has not pushed it on its own list yet, or a scan that missed a
// batch moving from a shard it had not looked at to one it had.
func TestMatrixNoErrFullWithFreeSlot(t *testing.T) {
	const goroutines, hold = 8, 8
	d := 300 * time.Millisecond
	if testing.Short() {
		d = 100 * time.Millisecond
	}
	for _, shards := range []int{2, 3, 8} {
		t.Run(fmt.Sprintf("shards=%d", shards), func(t *testing.T) {
			r := mxNewRun(t, goroutines*hold+1, shards)
			ops := r.runWorkers(goroutines, hold, 0, time.Now().Add(d))
			if n := r.fulls.Load(); n != 0 {
				t.Errorf("Alloc/Store returned ErrFull %d times (in %d operations, %d allocations) although a slot was always free",
					n, ops, r.allocs.Load())
			}
			r.finish()
		})
	}
}

// Exhaustion under concurrency: goroutines allocate until ErrFull, holding
// everything. Nobody frees, so the number of free slots only goes down: once
// any ErrFull is correct, every slot is taken. Together they must hold
// exactly Capacity slots, and one more Alloc must fail. Then they free
// everything concurrently and do it again (now from the freelists).
func TestMatrixExhaustionConcurrent(t *testing.T) {
	for _, slots := range []int{1, 7, 64, 1000} {
		for _, shards := range []int{0, 1, 3, 8} {
			for _, g := range []int{2, 8} {
				t.Run(fmt.Sprintf("slots=%d/shards=%d/g=%d", slots, shards, g), func(t *testing.T) {
					r := mxNewRun(t, slots, shards)
					rounds := 5
					for round := 0; round < rounds && !r.stopped(); round++ {
						workers := make([]*mxWorker, g)
						var wg sync.WaitGroup
						start := make(chan struct{})
						for i := range workers {
							workers[i] = r.worker(i, slots)
							wg.Add(1)
							go func(w *mxWorker) {
								defer wg.Done()
								<-start
								for !r.stopped() {
									if _, ok := w.alloc(w.rng.IntN(2) == 0); !ok {
										return
									}
								}
							}(workers[i])
						}
						close(start)
						wg.Wait()
						if r.stopped() {
							return
						}
						total := 0
						for _, w := range workers {
							total += len(w.held)
						}
						extra := 0
						for {
							tok, err := r.a.Store(mxPattern(1<<40, 1))
							if err != nil {
								if !errors.Is(err, arena.ErrFull) {
									t.Fatalf("round %d: Store on a full arena: %v", round, err)
								}
								r.fulls.Add(1)
								break
							}
							extra++
							r.allocs.Add(1)
							if err := r.a.Free(tok); err != nil {
								t.Fatal(err)
							}
							r.frees.Add(1)
						}
						if total != slots || extra != 0 {
							t.Fatalf("round %d: goroutines hold %d slots after each saw ErrFull, and %d more could be allocated; capacity %d",
								round, total, extra, slots)
						}
						if r.a.Available() != 0 {
							t.Fatalf("round %d: Available() = %d on a full arena", round, r.a.Available())
						}
						for _, w := range workers {
							for _, h := range w.held {
								if !w.check(h) {
									return
								}
							}
						}
						for _, w := range workers {
							wg.Add(1)
							go func(w *mxWorker) { defer wg.Done(); w.releaseAll() }(w)
						}
						wg.Wait()
						if r.a.Available() != slots {
							t.Fatalf("round %d: Available() = %d after freeing all, want %d", round, r.a.Available(), slots)
						}
					}
					r.finish()
				})
			}
		}
	}
}

// Free-list integrity: 1000 rounds of allocate-everything, free-everything.
// In each round the slots handed out are exactly Capacity distinct indices,
// and after it Available() == Capacity(). Frees go in different orders and,
// every few rounds, from other goroutines (so slots land on other shards'
// lists).
func TestMatrixFreeListIntegrity(t *testing.T) {
	rounds := 1000
	for _, slots := range []int{1, 7, 64} {
		for _, shards := range []int{0, 1, 3, 8} {
			t.Run(fmt.Sprintf("slots=%d/shards=%d", slots, shards), func(t *testing.T) {
				a := refArena[mxCell](t, slots, shards)
				rng := rand.New(rand.NewPCG(uint64(slots), uint64(shards)))
				toks := make([]token.Token, 0, slots)
				seen := make([]int, slots) // round+1 in which index was last handed out
				var allocs uint64
				for round := 0; round < rounds; round++ {
					toks = toks[:0]
					for {
						tok, p, err := a.Alloc()
						if errors.Is(err, arena.ErrFull) {
							break
						}
						if err != nil {
							t.Fatalf("round %d: Alloc: %v", round, err)
						}
						idx := tok.Index()
						if int(idx) >= slots {
							t.Fatalf("round %d: index %d out of range", round, idx)
						}
						if seen[idx] == round+1 {
							t.Fatalf("round %d: slot %d handed out twice", round, idx)
						}
						seen[idx] = round + 1
						if *p != (mxCell{}) {
							t.Fatalf("round %d: slot %d not zeroed: %+v", round, idx, *p)
						}
						*p = mxPattern(uint64(round)+1, uint64(idx))
						toks = append(toks, tok)
					}
					allocs += uint64(len(toks))
					if len(toks) != slots || a.Available() != 0 {
						t.Fatalf("round %d: %d slots handed out (Available %d), want exactly %d", round, len(toks), a.Available(), slots)
					}
					switch round % 4 {
					case 1:
						for i, j := 0, len(toks)-1; i < j; i, j = i+1, j-1 {
							toks[i], toks[j] = toks[j], toks[i]
						}
					case 2, 3:
						rng.Shuffle(len(toks), func(i, j int) { toks[i], toks[j] = toks[j], toks[i] })
					}
					free := func(part []token.Token) {
						for _, tok := range part {
							if c, err := a.Load(tok); err != nil || c != mxPattern(uint64(round)+1, uint64(tok.Index())) {
								t.Errorf("round %d: Load(%v) = %+v, %v", round, tok, c, err)
							}
							if err := a.Free(tok); err != nil {
								t.Errorf("round %d: Free(%v): %v", round, tok, err)
							}
						}
					}
					if round%4 == 3 {
						var wg sync.WaitGroup
						half := len(toks) / 2
						for _, part := range [][]token.Token{toks[:half], toks[half:]} {
							wg.Add(1)
							go func() { defer wg.Done(); free(part) }()
						}
						wg.Wait()
					} else {
						free(toks)
					}
					if t.Failed() {
						t.FailNow()
					}
					if a.Available() != a.Capacity() || a.Capacity() != slots {
						t.Fatalf("round %d: Available() = %d, Capacity() = %d, want %d", round, a.Available(), a.Capacity(), slots)
					}
				}
				if st := a.Stats(); st.Allocs != allocs || st.Frees != allocs || st.Failed != uint64(rounds) {
					t.Fatalf("Stats = %+v, want %d allocs and frees, %d failed", st, allocs, rounds)
				}
			})
		}
	}
}

// Mixed operations, 8 goroutines × 500: Alloc, Store, Load, View, Update and
// Free on their own slots and on freed tokens; meanwhile they all Update one
// shared counter slot (no update may be lost) and Load/View it (never torn).
func TestMatrixMixedOps(t *testing.T) {
	const goroutines, ops = 8, 500
	for _, slots := range []int{16, 64, 1000} {
		for _, shards := range []int{0, 1, 3, 8} {
			t.Run(fmt.Sprintf("slots=%d/shards=%d", slots, shards), func(t *testing.T) {
				r := mxNewRun(t, slots, shards)
				counter, err := r.a.Store(mxPattern(mxSharedOwner, 0))
				if err != nil {
					t.Fatal(err)
				}
				r.allocs.Add(1)
				r.claim(counter, mxSharedOwner)
				var updates atomic.Uint64
				var wg sync.WaitGroup
				for g := 0; g < goroutines; g++ {
					wg.Add(1)
					go func(g int) {
						defer wg.Done()
						w := r.worker(g, (slots-1)/goroutines)
						for i := 0; i < ops && !r.stopped(); i++ {
							switch w.rng.IntN(10) {
							case 0:
								if err := r.a.Update(counter, func(c *mxCell) {
									if !c.consistent() || c.Owner != mxSharedOwner {
										r.fail("shared counter inconsistent under Update: %+v", *c)
									}
									*c = mxPattern(mxSharedOwner, c.Seq+1)
								}); err != nil {
									r.fail("Update(counter): %v", err)
								}
								updates.Add(1)
							case 1:
								c, err := r.a.Load(counter)
								if err != nil || !c.consistent() || c.Owner != mxSharedOwner {
									r.fail("Load(counter) = %+v, %v: torn or wrong", c, err)
								}
							case 2:
								if err := r.a.View(counter, func(c *mxCell) {
									if !c.consistent() || c.Owner != mxSharedOwner {
										r.fail("View(counter) sees %+v: torn or wrong", *c)
									}
								}); err != nil {
									r.fail("View(counter): %v", err)
								}
							default:
								if !w.step() {
									return
								}
							}
						}
						w.releaseAll()
					}(g)
				}
				wg.Wait()
				c, err := r.a.Load(counter)
				if err != nil || c != mxPattern(mxSharedOwner, updates.Load()) {
					t.Fatalf("counter = %+v, %v after %d updates (lost updates?)", c, err, updates.Load())
				}
				r.release(counter, mxSharedOwner)
				if err := r.a.Free(counter); err != nil {
					t.Fatal(err)
				}
				r.frees.Add(1)
				r.finish()
			})
		}
	}
}

// Integrity at 1, 2, 4, 8, 16 and 32 goroutines on one pool.
func TestMatrixIntegrityScaling(t *testing.T) {
	const slots = 256
	perG := 8000
	if testing.Short() {
		perG = 2000
	}
	for i, g := range []int{1, 2, 4, 8, 16, 32} {
		shards := []int{0, 1, 3, 8}[i%4]
		t.Run(fmt.Sprintf("g=%d/shards=%d", g, shards), func(t *testing.T) {
			r := mxNewRun(t, slots, shards)
			start := time.Now()
			ops := r.runWorkers(g, max(1, slots/g), max(perG/g, 200), time.Time{})
			t.Logf("%d goroutines: %d ops in %v", g, ops, time.Since(start).Round(time.Millisecond))
			r.finish()
		})
	}
}

// Producer/consumer: tokens cross goroutines over a channel. Producers fill
// slots with their pattern; consumers check it, rewrite it with Update,
// check again and Free: frees happen on another goroutine than the allocs.
// Small pools make producers meet ErrFull and retry.
func TestMatrixProducerConsumer(t *testing.T) {
	perProducer := 2000
	if testing.Short() {
		perProducer = 300
	}
	type item struct {
		tok        token.Token
		owner, seq uint64
	}
	cases := []struct{ producers, consumers, slots, shards int }{
		{1, 1, 1, 0},
		{1, 1, 16, 1},
		{4, 4, 16, 3},
		{2, 6, 64, 8},
		{6, 2, 8, 0},
		{4, 4, 1000, 8},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("p=%d/c=%d/slots=%d/shards=%d", c.producers, c.consumers, c.slots, c.shards), func(t *testing.T) {
			r := mxNewRun(t, c.slots, c.shards)
			ch := make(chan item, c.slots)
			var prodWG, consWG sync.WaitGroup
			var consumed atomic.Uint64
			for p := 0; p < c.producers; p++ {
				prodWG.Add(1)
				go func(p int) {
					defer prodWG.Done()
					w := r.worker(p, 1)
					for i := 0; i < perProducer && !r.stopped(); i++ {
						h, ok := w.alloc(i%2 == 0)
						for !ok && !r.stopped() {
							runtime.Gosched() // ErrFull: wait for the consumers
							h, ok = w.alloc(i%2 == 0)
						}
						if !ok {
							return
						}
						// Hand the slot over: the owner table follows it.
						w.held = w.held[:0]
						if !r.owner[h.tok.Index()].CompareAndSwap(w.id, 0) {
							r.fail("owner table lost slot %d", h.tok.Index())
							return
						}
						ch <- item{h.tok, w.id, h.seq}
					}
				}(p)
			}
			for cn := 0; cn < c.consumers; cn++ {
				consWG.Add(1)
				go func(cn int) {
					defer consWG.Done()
					w := r.worker(1000+cn, 1)
					for it := range ch {
						if r.stopped() {
							continue // drain so producers never block
						}
						if !r.claim(it.tok, w.id) {
							continue
						}
						got, err := r.a.Load(it.tok)
						if err != nil || got != mxPattern(it.owner, it.seq) {
							r.fail("consumer: Load(%v) = %+v, %v; want producer %d's pattern %d", it.tok, got, err, it.owner, it.seq)
							continue
						}
						// Take the slot over: rewrite it with this consumer's pattern.
						seq := w.nextSeq()
						if err := r.a.Update(it.tok, func(c *mxCell) {
							if *c != mxPattern(it.owner, it.seq) {
								r.fail("consumer: Update(%v) sees %+v", it.tok, *c)
							}
							*c = mxPattern(w.id, seq)
						}); err != nil {
							r.fail("consumer: Update(%v): %v", it.tok, err)
							continue
						}
						w.held = append(w.held[:0], mxHeld{it.tok, seq})
						if !w.free(0) {
							continue
						}
						consumed.Add(1)
					}
				}(cn)
			}
			prodWG.Wait()
			close(ch)
			consWG.Wait()
			if r.stopped() {
				return
			}
			if want := uint64(c.producers * perProducer); consumed.Load() != want {
				t.Fatalf("consumed %d items, produced %d", consumed.Load(), want)
			}
			r.finish()
		})
	}
}
