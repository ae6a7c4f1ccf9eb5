package arena_test

import (
	"errors"
	"fmt"
	"runtime"
	"testing"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// The hot paths allocate nothing on the Go heap: Alloc, Free, Store, Load,
// View and Update (with a closure that does not escape), also when Alloc
// steals from another shard and when it reports ErrFull (back-pressure must
// be free).

type alCell struct {
	A, B uint64
	Pad  [48]byte
}

const alRuns = 1000

func alZero(t *testing.T, what string, fn func()) {
	t.Helper()
	if arena.DebugNested {
		t.Skip("cella_debug builds allocate to track callbacks")
	}
	// AllocsPerRun runs fn once more as a warm-up.
	if n := testing.AllocsPerRun(alRuns, fn); n != 0 {
		t.Errorf("%s allocates %.2f times per call, want 0", what, n)
	}
}

func TestAllocsHotPaths(t *testing.T) {
	for _, shards := range []int{0, 1, 3, 8} {
		t.Run(fmt.Sprintf("shards=%d", shards), func(t *testing.T) {
			a := refArena[alCell](t, 2*(alRuns+1)+8, shards)
			toks := make([]token.Token, 0, alRuns+1)
			var err error

			// Alloc alone: alRuns+1 distinct slots.
			alZero(t, "Alloc", func() {
				tok, p, e := a.Alloc()
				if e != nil {
					err = e
					return
				}
				p.A = uint64(len(toks))
				toks = append(toks, tok) // within capacity: no allocation
			})
			if err != nil || len(toks) != alRuns+1 {
				t.Fatalf("Alloc: %v, %d tokens", err, len(toks))
			}
			// Free alone.
			i := 0
			alZero(t, "Free", func() {
				if e := a.Free(toks[i]); e != nil {
					err = e
				}
				i++
			})
			if err != nil || i != alRuns+1 {
				t.Fatalf("Free: %v after %d", err, i)
			}

			// Store alone.
			toks = toks[:0]
			v := alCell{A: 7, B: 9}
			alZero(t, "Store", func() {
				tok, e := a.Store(v)
				if e != nil {
					err = e
					return
				}
				toks = append(toks, tok)
			})
			if err != nil || len(toks) != alRuns+1 {
				t.Fatalf("Store: %v, %d tokens", err, len(toks))
			}

			tok := toks[len(toks)/2]
			var got alCell
			alZero(t, "Load", func() {
				c, e := a.Load(tok)
				if e != nil {
					err = e
				}
				got = c
			})
			if err != nil || got.A != 7 || got.B != 9 {
				t.Fatalf("Load = %+v, %v", got, err)
			}

			var sum uint64
			alZero(t, "View", func() {
				if e := a.View(tok, func(c *alCell) { sum += c.A + c.B }); e != nil {
					err = e
				}
			})
			if err != nil || sum != 16*(alRuns+1) {
				t.Fatalf("View: sum %d, %v", sum, err)
			}

			alZero(t, "Update", func() {
				if e := a.Update(tok, func(c *alCell) { c.A++ }); e != nil {
					err = e
				}
			})
			if c, e := a.Load(tok); err != nil || e != nil || c.A != 7+alRuns+1 {
				t.Fatalf("Update: A = %d, %v %v", c.A, err, e)
			}

			for _, tk := range toks {
				if e := a.Free(tk); e != nil {
					t.Fatal(e)
				}
			}

			// An Alloc+Free pair, the steady state of a pool.
			alZero(t, "Alloc+Free", func() {
				tk, _, e := a.Alloc()
				if e == nil {
					e = a.Free(tk)
				}
				if e != nil {
					err = e
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			if a.Available() != a.Capacity() {
				t.Fatalf("Available() = %d, Capacity() = %d", a.Available(), a.Capacity())
			}
		})
	}
}

// Stealing (the caller's shard is empty) and ErrFull allocate nothing either.
func TestAllocsStealAndFull(t *testing.T) {
	const slots = 64
	a := refArena[alCell](t, slots, 8)
	toks := make([]token.Token, 0, slots)
	var err error
	for {
		tok, _, e := a.Alloc()
		if errors.Is(e, arena.ErrFull) {
			break
		}
		if e != nil {
			t.Fatal(e)
		}
		toks = append(toks, tok)
	}
	if len(toks) != slots {
		t.Fatalf("allocated %d of %d", len(toks), slots)
	}
	if a.Stats().Steals == 0 {
		t.Fatal("filling 8 shards from one goroutine stole nothing")
	}
	alZero(t, "Alloc on a full arena", func() {
		if _, _, e := a.Alloc(); !errors.Is(e, arena.ErrFull) {
			err = e
		}
	})
	alZero(t, "Store on a full arena", func() {
		if _, e := a.Store(alCell{}); !errors.Is(e, arena.ErrFull) {
			err = e
		}
	})
	if err != nil {
		t.Fatalf("want ErrFull, got %v", err)
	}
	for _, tk := range toks {
		if e := a.Free(tk); e != nil {
			t.Fatal(e)
		}
	}

	// Steals themselves: a fresh 8-shard arena filled from one goroutine
	// takes 7/8 of its slots by stealing batches from the other shards'
	// frontiers. Measured like AllocsPerRun: on one P, heap objects counted.
	b := refArena[alCell](t, slots, 8)
	toks = toks[:0]
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for {
		tok, _, e := b.Alloc()
		if e != nil {
			break
		}
		toks = append(toks, tok)
	}
	runtime.ReadMemStats(&after)
	if len(toks) != slots {
		t.Fatalf("filled %d of %d", len(toks), slots)
	}
	if st := b.Stats(); st.Steals == 0 {
		t.Fatalf("filling 8 shards on one P stole nothing: %+v", st)
	}
	if n := after.Mallocs - before.Mallocs; n != 0 {
		t.Errorf("filling by stealing allocated %d heap objects, want 0", n)
	}
}
