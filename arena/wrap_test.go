package arena

// Generation wrap: a slot whose generation would reach retiredGen (2^32-1)
// on Free is retired, never reused. These tests start slots near the wrap
// with the newArena test hook.

import (
	"errors"
	"sync"
	"testing"

	"github.com/cella-go/cella/token"
)

type wrapVal struct{ V, W uint64 }

// nearWrap returns the first generation that lets every slot be allocated
// uses times before it retires.
func nearWrap(uses uint32) uint32 { return retiredGen - uses }

func newWrapArena(t *testing.T, slots, shards int, uses uint32) *Arena[wrapVal] {
	t.Helper()
	a, err := newArena[wrapVal](Config{Slots: slots, Shards: shards}, nearWrap(uses))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func wrapCheckCounts(t *testing.T, a *Arena[wrapVal], wantCap, wantAvail int, wantRetired uint64) {
	t.Helper()
	if got := a.Capacity(); got != wantCap {
		t.Fatalf("Capacity() = %d, want %d", got, wantCap)
	}
	if got := a.Available(); got != wantAvail {
		t.Fatalf("Available() = %d, want %d", got, wantAvail)
	}
	if st := a.Stats(); st.Retired != wantRetired {
		t.Fatalf("Stats().Retired = %d, want %d (%+v)", st.Retired, wantRetired, st)
	}
}

// TestWrapRetiresSlot walks one slot through its last generations: the
// token from before the wrap never matches the new occupant, and once the
// generation is used up the slot is gone for good.
func TestWrapRetiresSlot(t *testing.T) {
	a := newWrapArena(t, 1, 1, 2)
	t1, err := a.Store(wrapVal{V: 1})
	if err != nil {
		t.Fatal(err)
	}
	if t1.Generation() != retiredGen-2 {
		t.Fatalf("first token %v, want generation %d", t1, uint32(retiredGen-2))
	}
	if err := a.Free(t1); err != nil {
		t.Fatal(err)
	}
	wrapCheckCounts(t, a, 1, 1, 0)

	// Last generation: the slot is reused, the old token does not see it.
	t2, p, err := a.Alloc()
	if err != nil {
		t.Fatal(err)
	}
	if t2.Index() != t1.Index() || t2.Generation() != retiredGen-1 {
		t.Fatalf("second token %v, want %d@%d", t2, t1.Index(), uint32(retiredGen-1))
	}
	if *p != (wrapVal{}) {
		t.Fatalf("reused slot not zeroed: %+v", *p)
	}
	*p = wrapVal{V: 2, W: 2}
	wrapAllStale(t, a, t1)

	// Freeing the last generation retires the slot.
	if err := a.Free(t2); err != nil {
		t.Fatal(err)
	}
	wrapCheckCounts(t, a, 0, 0, 1)
	wrapAllStale(t, a, t1)
	wrapAllStale(t, a, t2)
	for i := 0; i < 3; i++ {
		if _, _, err := a.Alloc(); !errors.Is(err, ErrFull) {
			t.Fatalf("Alloc after retirement = %v, want ErrFull", err)
		}
		if _, err := a.Store(wrapVal{}); !errors.Is(err, ErrFull) {
			t.Fatalf("Store after retirement = %v, want ErrFull", err)
		}
	}
	// The retired generation itself is never a valid token.
	forged := token.New(t2.Index(), retiredGen)
	if _, err := a.Load(forged); !errors.Is(err, ErrBadToken) {
		t.Fatalf("Load(%v) = %v, want ErrBadToken", forged, err)
	}
	// And the generation does not wrap round to the values before.
	for _, g := range []uint32{0, 1, 2, a.firstGen} {
		forged := token.New(t2.Index(), g)
		if err := a.Free(forged); err == nil || !(errors.Is(err, ErrStale) || errors.Is(err, ErrBadToken)) {
			t.Fatalf("Free(%v) = %v, want ErrStale or ErrBadToken", forged, err)
		}
	}
	if st := a.Stats(); st.Allocs != 2 || st.Frees != 2 || st.Failed != 6 {
		t.Fatalf("Stats = %+v, want 2 allocs, 2 frees, 6 failed", st)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if got := a.Capacity(); got != 0 {
		t.Fatalf("Capacity after Close = %d, want 0", got)
	}
}

func wrapAllStale(t *testing.T, a *Arena[wrapVal], tk token.Token) {
	t.Helper()
	if _, err := a.Load(tk); !errors.Is(err, ErrStale) {
		t.Fatalf("Load(%v) = %v, want ErrStale", tk, err)
	}
	called := false
	if err := a.View(tk, func(*wrapVal) { called = true }); !errors.Is(err, ErrStale) {
		t.Fatalf("View(%v) = %v, want ErrStale", tk, err)
	}
	if err := a.Update(tk, func(p *wrapVal) { called = true; p.V = 99 }); !errors.Is(err, ErrStale) {
		t.Fatalf("Update(%v) = %v, want ErrStale", tk, err)
	}
	if err := a.Free(tk); !errors.Is(err, ErrStale) {
		t.Fatalf("Free(%v) = %v, want ErrStale", tk, err)
	}
	if called {
		t.Fatalf("a callback ran for stale token %v", tk)
	}
}

// TestWrapCapacityShrinks retires slots one at a time over several shards:
// Capacity drops by one per retirement, Available stays Capacity minus the
// live slots, and ErrFull comes exactly when every slot is retired.
func TestWrapCapacityShrinks(t *testing.T) {
	for _, shards := range []int{1, 2, 3, 8} {
		const slots = 6
		a := newWrapArena(t, slots, shards, 1) // every slot retires on its first Free
		var live []token.Token
		for i := 0; i < slots; i++ {
			tk, err := a.Store(wrapVal{V: uint64(i)})
			if err != nil {
				t.Fatalf("shards %d: Store %d: %v", shards, i, err)
			}
			if tk.Generation() != retiredGen-1 {
				t.Fatalf("shards %d: token %v, want generation %d", shards, tk, uint32(retiredGen-1))
			}
			live = append(live, tk)
		}
		wrapCheckCounts(t, a, slots, 0, 0)
		for i, tk := range live {
			if err := a.Free(tk); err != nil {
				t.Fatal(err)
			}
			retired := i + 1
			left := slots - retired
			// Capacity and Available both exclude the retired slots.
			wrapCheckCounts(t, a, left, 0, uint64(retired))
			if _, _, err := a.Alloc(); !errors.Is(err, ErrFull) {
				t.Fatalf("shards %d: Alloc with %d retired and %d live = %v, want ErrFull", shards, retired, left, err)
			}
		}
		wrapCheckCounts(t, a, 0, 0, slots)
		st := a.Stats()
		if st.Allocs != slots || st.Frees != slots || st.Live != 0 {
			t.Fatalf("shards %d: Stats = %+v", shards, st)
		}
	}
}

// TestWrapExactUses gives every slot a few generations before the wrap and
// checks that each slot is handed out exactly that many times, each time with
// the next generation and zeroed, before it retires.
func TestWrapExactUses(t *testing.T) {
	const slots, uses = 5, 4
	a := newWrapArena(t, slots, 2, uses)
	seen := map[token.Token]bool{}
	perIdx := map[uint32]int{}
	for round := 0; ; round++ {
		var got []token.Token
		for {
			tk, p, err := a.Alloc()
			if errors.Is(err, ErrFull) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if *p != (wrapVal{}) {
				t.Fatalf("%v: recycled slot not zeroed: %+v", tk, *p)
			}
			*p = wrapVal{V: uint64(tk), W: ^uint64(tk)}
			if seen[tk] {
				t.Fatalf("token %v issued twice", tk)
			}
			seen[tk] = true
			if want := nearWrap(uses) + uint32(perIdx[tk.Index()]); tk.Generation() != want {
				t.Fatalf("token %v: generation %d, want %d", tk, tk.Generation(), want)
			}
			perIdx[tk.Index()]++
			got = append(got, tk)
		}
		if len(got) == 0 {
			break
		}
		if round >= uses {
			t.Fatalf("round %d still allocated %d slots; every slot should have retired", round, len(got))
		}
		for _, tk := range got {
			v, err := a.Load(tk)
			if err != nil || v != (wrapVal{V: uint64(tk), W: ^uint64(tk)}) {
				t.Fatalf("Load(%v) = %+v, %v", tk, v, err)
			}
			if err := a.Free(tk); err != nil {
				t.Fatal(err)
			}
		}
	}
	for idx := uint32(0); idx < slots; idx++ {
		if perIdx[idx] != uses {
			t.Fatalf("slot %d used %d times, want %d", idx, perIdx[idx], uses)
		}
	}
	wrapCheckCounts(t, a, 0, 0, slots)
	for tk := range seen {
		wrapAllStale(t, a, tk)
	}
}

// TestWrapDeferredRetire frees a last-generation slot while a View holds it:
// the token is stale at once, the slot retires when the View returns, and
// it is never handed out again.
func TestWrapDeferredRetire(t *testing.T) {
	for _, update := range []bool{false, true} {
		a := newWrapArena(t, 2, 1, 1)
		tk, err := a.Store(wrapVal{V: 7})
		if err != nil {
			t.Fatal(err)
		}
		access := a.View
		if update {
			access = a.Update
		}
		err = access(tk, func(p *wrapVal) {
			if err := a.Free(tk); err != nil {
				t.Errorf("Free inside callback: %v", err)
			}
			if _, err := a.Load(tk); !errors.Is(err, ErrStale) {
				t.Errorf("Load inside callback after Free = %v, want ErrStale", err)
			}
			if p.V != 7 {
				t.Errorf("payload changed under the callback: %+v", *p)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		wrapCheckCounts(t, a, 1, 1, 1)
		// The other slot can still be used; the retired one never comes back.
		t2, err := a.Store(wrapVal{V: 8})
		if err != nil {
			t.Fatal(err)
		}
		if t2.Index() == tk.Index() {
			t.Fatalf("retired slot %d handed out again as %v", tk.Index(), t2)
		}
		if _, err := a.Store(wrapVal{}); !errors.Is(err, ErrFull) {
			t.Fatalf("Store = %v, want ErrFull", err)
		}
		if err := a.Free(t2); err != nil {
			t.Fatal(err)
		}
		wrapCheckCounts(t, a, 0, 0, 2)
	}
}

// TestWrapConcurrent has many goroutines churn an arena whose slots each
// allow a few uses: every slot is used exactly that many times, no token is
// issued twice, and the arena ends fully retired with exact Stats.
func TestWrapConcurrent(t *testing.T) {
	const slots, uses, workers = 64, 6, 8
	a := newWrapArena(t, slots, 4, uses)
	var (
		mu   sync.Mutex
		seen = map[token.Token]bool{}
		wg   sync.WaitGroup
	)
	record := func(ts []token.Token) {
		mu.Lock()
		defer mu.Unlock()
		for _, tk := range ts {
			if seen[tk] {
				t.Errorf("token %v issued twice", tk)
			}
			seen[tk] = true
		}
	}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []token.Token
			misses := 0
			for misses < 50 {
				tk, err := a.Store(wrapVal{V: uint64(len(mine)), W: 1})
				if errors.Is(err, ErrFull) {
					misses++
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				misses = 0
				mine = append(mine, tk)
				if err := a.Update(tk, func(p *wrapVal) { p.V = uint64(tk) }); err != nil {
					t.Error(err)
				}
				v, err := a.Load(tk)
				if err != nil || v.V != uint64(tk) {
					t.Errorf("Load(%v) = %+v, %v", tk, v, err)
				}
				if err := a.Free(tk); err != nil {
					t.Error(err)
				}
			}
			record(mine)
		}()
	}
	wg.Wait()
	// Finish in one goroutine: whatever the workers left (ErrFull may come
	// while another goroutine has slots in hand) is used up here.
	var rest []token.Token
	for {
		tk, err := a.Store(wrapVal{})
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		rest = append(rest, tk)
		if err := a.Free(tk); err != nil {
			t.Fatal(err)
		}
	}
	record(rest)
	if len(seen) != slots*uses {
		t.Fatalf("%d distinct tokens issued, want %d", len(seen), slots*uses)
	}
	perIdx := map[uint32]int{}
	for tk := range seen {
		perIdx[tk.Index()]++
		if tk.Generation() < nearWrap(uses) || tk.Generation() >= retiredGen {
			t.Fatalf("token %v outside the allowed generations", tk)
		}
	}
	for idx, n := range perIdx {
		if n != uses {
			t.Fatalf("slot %d used %d times, want %d", idx, n, uses)
		}
	}
	wrapCheckCounts(t, a, 0, 0, slots)
	if st := a.Stats(); st.Allocs != slots*uses || st.Frees != slots*uses {
		t.Fatalf("Stats = %+v, want %d allocs and frees", st, slots*uses)
	}
}
