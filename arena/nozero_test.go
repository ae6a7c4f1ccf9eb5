package arena_test

import (
	"context"
	"testing"

	"github.com/cella-go/cella/arena"
)

type nzVal struct{ A, B uint64 }

// nzCycle allocates the one slot of a one-slot arena, fills it, frees it
// and allocates it again (with alloc), returning what the second Alloc
// found in it.
func nzCycle(t *testing.T, cfg arena.Config, alloc func(*arena.Arena[nzVal]) (*nzVal, error)) (first, second nzVal) {
	t.Helper()
	cfg.Slots = 1
	a, err := arena.New[nzVal](cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	tok, v, err := a.Alloc()
	if err != nil {
		t.Fatal(err)
	}
	first = *v
	*v = nzVal{A: 0xfeed, B: 0xbeef}
	if err := a.Free(tok); err != nil {
		t.Fatal(err)
	}
	v, err = alloc(a)
	if err != nil {
		t.Fatal(err)
	}
	return first, *v
}

func nzAlloc(a *arena.Arena[nzVal]) (*nzVal, error) {
	_, v, err := a.Alloc()
	return v, err
}

func nzAllocWait(a *arena.Arena[nzVal]) (*nzVal, error) {
	_, v, err := a.AllocWait(context.Background())
	return v, err
}

// Alloc and AllocWait zero a recycled slot by default; with NoZero they
// hand it out as its last user left it. A never-used slot is zero either
// way.
func TestNoZero(t *testing.T) {
	for _, c := range []struct {
		name  string
		alloc func(*arena.Arena[nzVal]) (*nzVal, error)
	}{{"Alloc", nzAlloc}, {"AllocWait", nzAllocWait}} {
		t.Run(c.name, func(t *testing.T) {
			first, second := nzCycle(t, arena.Config{}, c.alloc)
			if first != (nzVal{}) || second != (nzVal{}) {
				t.Errorf("default: fresh %+v, recycled %+v; want both zero", first, second)
			}
			first, second = nzCycle(t, arena.Config{NoZero: true}, c.alloc)
			if first != (nzVal{}) {
				t.Errorf("NoZero: a never-used slot holds %+v", first)
			}
			if second != (nzVal{A: 0xfeed, B: 0xbeef}) {
				t.Errorf("NoZero: recycled slot holds %+v, want what its last user wrote", second)
			}
		})
	}
}

// Store copies its value in whatever NoZero says.
func TestNoZeroStore(t *testing.T) {
	a, err := arena.New[nzVal](arena.Config{Slots: 1, NoZero: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	tok, v, err := a.Alloc()
	if err != nil {
		t.Fatal(err)
	}
	*v = nzVal{A: 1, B: 2}
	if err := a.Free(tok); err != nil {
		t.Fatal(err)
	}
	tok, err = a.Store(nzVal{A: 3})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := a.Load(tok); err != nil || got != (nzVal{A: 3}) {
		t.Fatalf("Load = %+v, %v; want {A:3 B:0}", got, err)
	}
}
