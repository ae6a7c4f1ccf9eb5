package arena_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/memclass"
	"github.com/cella-go/cella/token"
)

// Issue 11 item 2: Arena.Tokens.

type tokCell struct{ A, B uint64 }

func newTokArena(t *testing.T, cfg arena.Config) *arena.Arena[tokCell] {
	t.Helper()
	a, err := arena.New[tokCell](cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	return a
}

func collect(a *arena.Arena[tokCell]) []token.Token {
	var out []token.Token
	for tok := range a.Tokens() {
		out = append(out, tok)
	}
	return out
}

// sameSet fails unless got holds exactly the tokens of want, each once.
func sameSet(t *testing.T, got []token.Token, want map[token.Token]bool) {
	t.Helper()
	seen := map[token.Token]bool{}
	for _, tok := range got {
		if seen[tok] {
			t.Fatalf("%v yielded twice", tok)
		}
		seen[tok] = true
		if !want[tok] {
			t.Fatalf("%v yielded but not live", tok)
		}
	}
	if len(seen) != len(want) {
		t.Fatalf("yielded %d tokens, %d live", len(seen), len(want))
	}
}

// Tokens yields exactly the live set, across shards, after frees and reuse.
func TestTokensLiveSet(t *testing.T) {
	for _, cfg := range []arena.Config{
		{Slots: 1, Shards: 1},
		{Slots: 1000, Shards: 1},
		{Slots: 1000, Shards: 3},
		{Slots: 5000},
		{Slots: 3000, Class: memclass.PerNode()},
	} {
		t.Run(fmt.Sprintf("%+v", cfg), func(t *testing.T) {
			a := newTokArena(t, cfg)
			if got := collect(a); len(got) != 0 {
				t.Fatalf("an empty arena yielded %v", got)
			}
			live := map[token.Token]bool{}
			var order []token.Token
			for i := 0; i < cfg.Slots; i++ {
				tok, err := a.Store(tokCell{A: uint64(i)})
				if err != nil {
					t.Fatal(err)
				}
				live[tok] = true
				order = append(order, tok)
			}
			sameSet(t, collect(a), live)
			// Free every third, reuse some of them: the old tokens are
			// not yielded, the new ones are.
			for i, tok := range order {
				if i%3 == 0 {
					if err := a.Free(tok); err != nil {
						t.Fatal(err)
					}
					delete(live, tok)
				}
			}
			sameSet(t, collect(a), live)
			for i := 0; i < cfg.Slots/6; i++ {
				tok, err := a.Store(tokCell{})
				if err != nil {
					t.Fatal(err)
				}
				live[tok] = true
			}
			sameSet(t, collect(a), live)
			for tok := range live {
				if err := a.Free(tok); err != nil {
					t.Fatal(err)
				}
			}
			if got := collect(a); len(got) != 0 {
				t.Fatalf("all freed, yet yielded %v", got)
			}
		})
	}
}

// A token freed by the loop body before the iteration reaches it (in the
// same chunk) is not yielded; freeing the yielded token itself is fine.
func TestTokensSkipsFreedDuringIteration(t *testing.T) {
	a := newTokArena(t, arena.Config{Slots: 100, Shards: 1})
	var toks []token.Token
	for i := 0; i < 100; i++ {
		tok, _, err := a.Alloc()
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	freed := map[token.Token]bool{}
	n := 0
	for tok := range a.Tokens() {
		if freed[tok] {
			t.Fatalf("%v yielded after it was freed", tok)
		}
		n++
		// Free this one and the one after it in slot order.
		if err := a.Free(tok); err != nil {
			t.Fatal(err)
		}
		if next := tok.Index() + 1; next < 100 {
			nt := toks[next]
			if err := a.Free(nt); err == nil {
				freed[nt] = true
			} else if !errors.Is(err, arena.ErrStale) {
				t.Fatal(err)
			}
		}
	}
	if n != 50 || a.Available() != a.Capacity() {
		t.Fatalf("yielded %d (want 50); Available %d of %d", n, a.Available(), a.Capacity())
	}
}

func TestTokensBreak(t *testing.T) {
	a := newTokArena(t, arena.Config{Slots: 1000, Shards: 2})
	for i := 0; i < 1000; i++ {
		if _, _, err := a.Alloc(); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	for range a.Tokens() {
		n++
		if n == 10 {
			break
		}
	}
	if n != 10 {
		t.Fatalf("got %d", n)
	}
	// The iterator can be used again.
	if got := len(collect(a)); got != 1000 {
		t.Fatalf("second iteration yielded %d", got)
	}
}

// Close from the loop body ends the iteration; after Close it yields
// nothing.
func TestTokensCloseInBody(t *testing.T) {
	a, err := arena.New[tokCell](arena.Config{Slots: 2000, Shards: 2})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2000; i++ {
		if _, _, err := a.Alloc(); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	for range a.Tokens() {
		n++
		if n == 5 {
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n != 5 {
		t.Fatalf("iteration went on after Close: %d yielded", n)
	}
	if got := len(collect(a)); got != 0 {
		t.Fatalf("after Close: %d yielded", got)
	}
}

// Close from another goroutine during iterations: no fault, no race, and
// each iteration ends.
func TestTokensCloseConcurrent(t *testing.T) {
	for round := 0; round < 20; round++ {
		a, err := arena.New[tokCell](arena.Config{Slots: 20000})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 20000; i++ {
			if _, _, err := a.Alloc(); err != nil {
				t.Fatal(err)
			}
		}
		var wg sync.WaitGroup
		var started atomic.Int32
		for g := 0; g < 2; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					n := 0
					for tok := range a.Tokens() {
						started.Add(1)
						// Use the token: a call after Close says closed.
						if _, err := a.Load(tok); err != nil && !errors.Is(err, arena.ErrClosed) {
							t.Error(err)
							return
						}
						n++
					}
					if n == 0 {
						return // closed
					}
				}
			}()
		}
		for started.Load() < 100 {
			runtime.Gosched()
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
	}
}

// Allocations and frees while iterating: every token held for the whole
// iteration is yielded exactly once; no slot is yielded twice; everything
// yielded was issued by this arena.
func TestTokensConcurrentChurn(t *testing.T) {
	a := newTokArena(t, arena.Config{Slots: 4096})
	stable := map[token.Token]bool{}
	for i := 0; i < 1000; i++ {
		tok, err := a.Store(tokCell{A: 1})
		if err != nil {
			t.Fatal(err)
		}
		stable[tok] = true
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []token.Token
			for {
				select {
				case <-stop:
					for _, tok := range mine {
						_ = a.Free(tok)
					}
					return
				default:
				}
				if len(mine) < 500 && rand.IntN(2) == 0 {
					if tok, err := a.Store(tokCell{A: 2}); err == nil {
						mine = append(mine, tok)
					}
				} else if len(mine) > 0 {
					i := rand.IntN(len(mine))
					if err := a.Free(mine[i]); err != nil {
						t.Error(err)
						return
					}
					mine[i] = mine[len(mine)-1]
					mine = mine[:len(mine)-1]
				}
			}
		}()
	}
	for it := 0; it < 30; it++ {
		seenIdx := map[uint32]bool{}
		found := 0
		for tok := range a.Tokens() {
			if seenIdx[tok.Index()] {
				t.Fatalf("slot %d yielded twice", tok.Index())
			}
			seenIdx[tok.Index()] = true
			if stable[tok] {
				found++
			}
		}
		if found != len(stable) {
			t.Fatalf("iteration %d yielded %d of the %d tokens held throughout", it, found, len(stable))
		}
	}
	close(stop)
	wg.Wait()
	for tok := range stable {
		if err := a.Free(tok); err != nil {
			t.Fatal(err)
		}
	}
	if a.Available() != a.Capacity() {
		t.Fatal("slot lost")
	}
}
