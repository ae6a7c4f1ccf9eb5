package shm

// The segment's life as a file: Create of a name in use, Create over what
// dead processes left (a snapshot of a live segment, an unfinished one,
// garbage), and Creates and Attaches racing each other by name.

import (
	"errors"
	"os"
	"sync"
	"testing"
)

// TestCreateExisting: Create of a name a live handle uses is ErrExists;
// once every handle closed, Create makes it again, fresh.
func TestCreateExisting(t *testing.T) {
	hs := segment[pay](t, 2, Config{Slots: 4})
	dir := dirOf(hs[0])
	_, err := Create[pay](segName, Config{Slots: 4, Dir: dir, Watch: -1})
	wantErr(t, err, ErrExists, "Create while in use")
	_, err = Create[[3]uint64](segName, Config{Slots: 9, Dir: dir, Watch: -1})
	wantErr(t, err, ErrExists, "Create of another type while in use")
	must(t, hs[0].Close(), "Close")
	_, err = Create[pay](segName, Config{Slots: 4, Dir: dir, Watch: -1})
	wantErr(t, err, ErrExists, "Create while B is still attached")
	_, err = hs[1].Store(pay{})
	must(t, err, "the existing segment still works")
	must(t, hs[1].Close(), "Close")
	c, err := Create[pay](segName, Config{Slots: 4, Dir: dir, Watch: -1})
	must(t, err, "Create after every handle closed")
	defer c.Close()
	if c.Available() != 4 {
		t.Fatalf("re-created segment: Available %d", c.Available())
	}
}

func dirOf[T any](a *Arena[T]) string {
	p := a.Path()
	return p[:len(p)-len(filePrefix)-len(segName)-1]
}

// TestCreateOverStale: a segment file nobody alive has attached (a
// snapshot of a live segment, whose records say alive but whose locks
// nobody holds; a file whose creator died before finishing it; garbage) is
// removed by Create, which makes a fresh segment in its place. Attach to
// such a file is ErrNotExist (unfinished) or ErrCorrupt (garbage).
func TestCreateOverStale(t *testing.T) {
	dir := t.TempDir()
	live := segment[pay](t, 2, Config{Slots: 6, Dir: t.TempDir()})
	for range 3 {
		_, err := live[0].Store(pay{})
		must(t, err, "Store")
	}
	stale := segFile(dir)

	copyFile(t, live[0].Path(), stale)
	c, err := Create[pay](segName, Config{Slots: 6, Dir: dir, Watch: -1})
	must(t, err, "Create over a segment whose processes all died")
	if c.Available() != 6 || c.Stats().Processes != 1 {
		t.Fatalf("Create over a stale segment: Available %d, Processes %d", c.Available(), c.Stats().Processes)
	}
	must(t, c.Close(), "Close")

	// A creator that died before setting ready.
	copyFile(t, live[0].Path(), stale)
	setHeader(t, stale, func(h *header) { h.ready = 0 })
	_, err = Attach[pay](segName, Config{Dir: dir, Watch: -1})
	wantErr(t, err, ErrNotExist, "Attach to an unfinished segment")
	c, err = Create[pay](segName, Config{Slots: 6, Dir: dir, Watch: -1})
	must(t, err, "Create over an unfinished segment")
	must(t, c.Close(), "Close")

	must(t, os.WriteFile(stale, []byte("not a segment"), 0o600), "write")
	_, err = Attach[pay](segName, Config{Dir: dir, Watch: -1})
	wantErr(t, err, ErrCorrupt, "Attach to garbage")
	c, err = Create[pay](segName, Config{Slots: 6, Dir: dir, Watch: -1})
	must(t, err, "Create over garbage")
	must(t, c.Close(), "Close")
}

// TestCreateRace: Creates of one name racing each other (each handle has
// its own open file description, as separate processes would): exactly
// one wins, the others get ErrExists, and the winner's segment is the one
// the path names. A Create could lose its still-empty file to a racing
// Create that took it for a dead creator's, and carry on with an unlinked
// segment: two winners.
func TestCreateRace(t *testing.T) {
	dir := t.TempDir()
	rounds := 200
	if testing.Short() {
		rounds = 30
	}
	for round := range rounds {
		var wg sync.WaitGroup
		var mu sync.Mutex
		var won []*Arena[pay]
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a, err := Create[pay](segName, Config{Slots: 4, Dir: dir, Watch: -1})
				if err != nil {
					if !errors.Is(err, ErrExists) {
						t.Errorf("round %d: Create: %v", round, err)
					}
					return
				}
				mu.Lock()
				won = append(won, a)
				mu.Unlock()
			}()
		}
		wg.Wait()
		if len(won) != 1 {
			t.Fatalf("round %d: %d Creates of one name succeeded", round, len(won))
		}
		if !sameFile(won[0].file, segFile(dir)) {
			t.Fatalf("round %d: the winner's segment is not the file its name names", round)
		}
		must(t, won[0].Close(), "Close")
	}
}

// TestAttachRacesCreate: an Attach racing the Create of its segment gets
// ErrNotExist until the segment is ready, then attaches; never ErrCorrupt
// (it used to, on the empty file between the creator's open and flock).
func TestAttachRacesCreate(t *testing.T) {
	dir := t.TempDir()
	rounds := 200
	if testing.Short() {
		rounds = 30
	}
	for round := range rounds {
		var wg sync.WaitGroup
		var a *Arena[pay]
		wg.Add(2)
		go func() {
			defer wg.Done()
			var err error
			a, err = Create[pay](segName, Config{Slots: 4, Dir: dir, Watch: -1})
			if err != nil {
				t.Errorf("round %d: Create: %v", round, err)
			}
		}()
		go func() {
			defer wg.Done()
			for {
				b, err := Attach[pay](segName, Config{Dir: dir, Watch: -1})
				if err == nil {
					_ = b.Close()
					return
				}
				if !errors.Is(err, ErrNotExist) {
					t.Errorf("round %d: Attach racing Create: %v", round, err)
					return
				}
			}
		}()
		wg.Wait()
		if a == nil {
			t.FailNow()
		}
		must(t, a.Close(), "Close")
	}
}
