package arena

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/cella-go/cella/internal/arenalink"
	"github.com/cella-go/cella/token"
)

// freeMarking calls arenalink.FreeMarking on a, as message.Store does.
func freeMarking[T any](a *Arena[T], t token.Token, word *uint64, mark uint64) error {
	return arenalink.FreeMarking(arenalink.Core(a), t, word, mark)
}

// FreeMarking writes its mark only from the call that frees the slot:
// never for a stale, double, forged or out-of-range token, nor after Close.
func TestFreeMarkingMarksOnlyWhenItFrees(t *testing.T) {
	a, err := New[uint64](Config{Slots: 4})
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := a.Alloc()
	if err != nil {
		t.Fatal(err)
	}
	word := uint64(7)
	if err := freeMarking(a, tok, &word, 42); err != nil {
		t.Fatalf("FreeMarking: %v", err)
	}
	if word != 42 {
		t.Fatalf("word = %d after the freeing call, want 42", word)
	}
	if got := a.Available(); got != 4 {
		t.Fatalf("Available = %d after FreeMarking, want 4", got)
	}
	word = 7
	if err := freeMarking(a, tok, &word, 43); !errors.Is(err, ErrStale) {
		t.Fatalf("second FreeMarking: %v, want ErrStale", err)
	}
	forged := token.New(tok.Index(), tok.Generation()+5)
	if err := freeMarking(a, forged, &word, 44); !errors.Is(err, ErrStale) {
		t.Fatalf("FreeMarking of a forged generation: %v, want ErrStale", err)
	}
	if err := freeMarking(a, token.New(99, 1), &word, 45); !errors.Is(err, ErrBadToken) {
		t.Fatalf("FreeMarking out of range: %v, want ErrBadToken", err)
	}
	if word != 7 {
		t.Fatalf("word = %d after calls that freed nothing, want 7", word)
	}
	// Plain Free marks nothing and still works.
	tok2, _, _ := a.Alloc()
	if err := a.Free(tok2); err != nil {
		t.Fatal(err)
	}
	tok3, _, _ := a.Alloc()
	a.Close()
	if err := freeMarking(a, tok3, &word, 46); !errors.Is(err, ErrClosed) {
		t.Fatalf("FreeMarking after Close: %v, want ErrClosed", err)
	}
	if word != 7 {
		t.Fatalf("word = %d after FreeMarking on a closed arena, want 7", word)
	}
}

// Inside a View of the slot, FreeMarking marks at once (the token is dead
// from then on) while the slot itself is recycled only when the View ends.
func TestFreeMarkingUnderView(t *testing.T) {
	a, err := New[uint64](Config{Slots: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	tok, err := a.Store(5)
	if err != nil {
		t.Fatal(err)
	}
	var word uint64
	err = a.View(tok, func(v *uint64) {
		if err := freeMarking(a, tok, &word, 9); err != nil {
			t.Errorf("FreeMarking inside View: %v", err)
		}
		if word != 9 {
			t.Errorf("word = %d inside View after FreeMarking, want 9", word)
		}
		// The viewed slot is not recycled yet: only the other one is free.
		other, _, err := a.Alloc()
		if err != nil {
			t.Errorf("Alloc inside View: %v", err)
			return
		}
		if other.Index() == tok.Index() {
			t.Errorf("Alloc inside View reused the viewed slot")
		}
		if _, _, err := a.Alloc(); !errors.Is(err, ErrFull) {
			t.Errorf("second Alloc inside View: %v, want ErrFull", err)
		}
		a.Free(other)
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Alloc(); err != nil {
		t.Fatalf("Alloc after the View: %v", err)
	}
}

// Goroutines racing to free one token: exactly one wins, and the word holds
// a mark (the losers' calls leave it alone).
func TestFreeMarkingRaceOneWinner(t *testing.T) {
	a, err := New[uint64](Config{Slots: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	const racers = 4
	rounds := 2000
	if raceEnabled {
		rounds = 300
	}
	var word uint64
	for round := range rounds {
		tok, _, err := a.Alloc()
		if err != nil {
			t.Fatal(err)
		}
		atomic.StoreUint64(&word, 1)
		var wins atomic.Int32
		var wg sync.WaitGroup
		for r := range racers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := freeMarking(a, tok, &word, uint64(100+r))
				switch {
				case err == nil:
					wins.Add(1)
				case !errors.Is(err, ErrStale):
					t.Errorf("round %d: FreeMarking: %v", round, err)
				}
			}()
		}
		wg.Wait()
		if n := wins.Load(); n != 1 {
			t.Fatalf("round %d: %d FreeMarking calls won, want 1", round, n)
		}
		if w := atomic.LoadUint64(&word); w < 100 || w >= 100+racers {
			t.Fatalf("round %d: word = %d, want one racer's mark", round, w)
		}
	}
	if got := a.Available(); got != 1 {
		t.Fatalf("Available = %d, want 1", got)
	}
}

// Core panics for anything but an arena, rather than handing out garbage.
func TestCoreOfArena(t *testing.T) {
	a, err := New[uint64](Config{Slots: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if got, want := arenalink.Core(a), unsafe.Pointer(&a.core); got != want {
		t.Fatalf("Core = %p, want the arena's core %p", got, want)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("Core of a non-arena did not panic")
		}
	}()
	arenalink.Core(42)
}

// LoadHead copies the start of a live slot, returns the word it was given,
// and refuses stale tokens and a closed arena as Load does.
func TestLoadHead(t *testing.T) {
	type val struct{ A, B, C uint64 }
	a, err := New[val](Config{Slots: 2})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := a.Store(val{1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	word := uint64(99)
	head, w, err := arenalink.LoadHead(arenalink.Core(a), tok, 16, "Test", &word)
	if err != nil {
		t.Fatal(err)
	}
	if head[0] != 1 || head[1] != 2 || head[2] != 0 || w != 99 {
		t.Fatalf("LoadHead = %v, %d; want [1 2 0 ...], 99", head, w)
	}
	if _, w, err = arenalink.LoadHead(arenalink.Core(a), tok, 8, "Test", nil); err != nil || w != 0 {
		t.Fatalf("LoadHead without a word = %d, %v", w, err)
	}
	if err := a.Free(tok); err != nil {
		t.Fatal(err)
	}
	if _, _, err := arenalink.LoadHead(arenalink.Core(a), tok, 16, "Test", &word); !errors.Is(err, ErrStale) {
		t.Fatalf("LoadHead of a freed token: %v, want ErrStale", err)
	}
	if _, _, err := arenalink.LoadHead(arenalink.Core(a), token.New(7, 1), 16, "Test", &word); !errors.Is(err, ErrBadToken) {
		t.Fatalf("LoadHead out of range: %v, want ErrBadToken", err)
	}
	tok2, _ := a.Store(val{4, 5, 6})
	a.Close()
	if _, _, err := arenalink.LoadHead(arenalink.Core(a), tok2, 16, "Test", &word); !errors.Is(err, ErrClosed) {
		t.Fatalf("LoadHead after Close: %v, want ErrClosed", err)
	}
}
