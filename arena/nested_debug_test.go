//go:build cella_debug

package arena_test

import (
	"errors"
	"testing"

	"github.com/cella-go/cella/arena"
)

// In cella_debug builds a nested access to one slot is reported, not
// deadlocked on; other slots and Free stay allowed.
func TestNestedAccessReported(t *testing.T) {
	a := refArena[[4]uint64](t, 4, 1)
	tok, _ := a.Store([4]uint64{1})
	other, _ := a.Store([4]uint64{2})
	var dst [4]uint64
	for name, inner := range map[string]func() error{
		"Load":     func() error { _, err := a.Load(tok); return err },
		"LoadInto": func() error { return a.LoadInto(tok, &dst) },
		"View":     func() error { return a.View(tok, func(*[4]uint64) {}) },
		"Update":   func() error { return a.Update(tok, func(*[4]uint64) {}) },
	} {
		for outer, run := range map[string]func(func(*[4]uint64)) error{
			"View":   func(fn func(*[4]uint64)) error { return a.View(tok, fn) },
			"Update": func(fn func(*[4]uint64)) error { return a.Update(tok, fn) },
		} {
			var got error
			if err := run(func(*[4]uint64) { got = inner() }); err != nil {
				t.Fatal(err)
			}
			if !errors.Is(got, arena.ErrNestedAccess) {
				t.Errorf("%s inside %s: %v, want ErrNestedAccess", name, outer, got)
			}
		}
	}
	// Another slot, inside a callback: fine. After the callback: fine.
	err := a.Update(tok, func(*[4]uint64) {
		if _, err := a.Load(other); err != nil {
			t.Errorf("Load of another slot inside Update: %v", err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Load(tok); err != nil {
		t.Fatalf("Load after the callbacks returned: %v", err)
	}
	// Free inside View is allowed (deferred recycle).
	if err := a.View(tok, func(*[4]uint64) {
		if err := a.Free(tok); err != nil {
			t.Errorf("Free inside View: %v", err)
		}
	}); err != nil {
		t.Fatal(err)
	}
}
