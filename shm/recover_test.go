package shm

// Death and recovery in one process: die (helpers_test.go) makes a
// handle's process look dead, holdAsDead leaves a View or Update of it
// running forever. Recover must free what the dead owned (not what was
// Adopted away from it or disowned by a Close), drop its holds, return its
// caches, free its record, and report all of it; with nobody dead it does
// nothing.

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
)

// TestAttachRecoversSnapshot: Attach to a snapshot of a segment (every
// record alive, no lock held: every process died) recovers it at once:
// the allocations the dead owned are freed, one that a handle Closed
// before the snapshot (so nobody owns it) survives.
func TestAttachRecoversSnapshot(t *testing.T) {
	dir := t.TempDir()
	hs := segment[pay](t, 3, Config{Slots: 6, Dir: t.TempDir()})
	owned, err := hs[0].Store(patterned(1, 1))
	must(t, err, "Store")
	_, err = hs[1].Store(patterned(2, 2))
	must(t, err, "Store")
	orphan, err := hs[2].Store(patterned(3, 3))
	must(t, err, "Store")
	must(t, hs[2].Close(), "Close")
	copyFile(t, hs[0].Path(), segFile(dir))

	b := attachTo[pay](t, dir, -1)
	st := b.Stats()
	if st.Recoveries != 1 || st.Processes != 1 {
		t.Fatalf("after Attach to a dead segment: %+v", st)
	}
	if n := b.Available(); n != 5 {
		t.Fatalf("Available = %d, want 5 (the orphan survives)", n)
	}
	_, err = b.Load(owned)
	wantErr(t, err, ErrStale, "a dead process's allocation")
	v, err := b.Load(orphan)
	if err != nil || v != patterned(3, 3) {
		t.Fatalf("the orphaned allocation: %v %v", v, err)
	}
	toks := allocAll(t, []*Arena[pay]{b}, 6)
	if len(toks) != 5 {
		t.Fatalf("%d allocations after recovery, want 5", len(toks))
	}
}

// TestRecoverNobodyDead: Recover with every process alive reports
// nothing, counts no recovery and changes nothing.
func TestRecoverNobodyDead(t *testing.T) {
	hs := segment[pay](t, 3, Config{Slots: 8})
	var toks []token.Token
	for i, h := range hs {
		tok, err := h.Store(patterned(uint64(i), 1))
		must(t, err, "Store")
		toks = append(toks, tok)
	}
	must(t, hs[1].Free(toks[1]), "Free") // a slot in a cache
	for _, h := range hs {
		rep, err := h.Recover()
		must(t, err, "Recover")
		if rep != (Recovery{}) {
			t.Fatalf("Recover with nobody dead: %+v", rep)
		}
	}
	for _, h := range hs {
		if st := h.Stats(); st.Recoveries != 0 || st.Processes != 3 {
			t.Fatalf("Stats: %+v", st)
		}
		if h.Available() != 6 {
			t.Fatalf("Available %d", h.Available())
		}
	}
	for _, i := range []int{0, 2} {
		if v, err := hs[1].Load(toks[i]); err != nil || v != patterned(uint64(i), 1) {
			t.Fatalf("token %v after Recover: %v %v", toks[i], v, err)
		}
	}
	if got := len(allocAll(t, hs, 8)); got != 6 {
		t.Fatalf("%d allocations after Recover, want 6", got)
	}
}

// TestRecoverAfterDeath: after the process behind A dies, Recover from B
// frees the allocations A owned (not the one B Adopted), drops A's holds
// (an Update waiting on A's reader goes through), returns the slot in A's
// cache, frees A's record for a new process, and reports it all.
func TestRecoverAfterDeath(t *testing.T) {
	hs := segment[pay](t, 3, Config{Slots: 8, Shards: 2})
	a, b, c := hs[0], hs[1], hs[2]
	var mine []token.Token
	for i := range 4 {
		tok, err := a.Store(patterned(1, uint64(i)))
		must(t, err, "Store")
		mine = append(mine, tok)
	}
	must(t, b.Adopt(mine[1]), "Adopt")
	must(t, a.Free(mine[3]), "Free") // into A's cache
	if cachedSlots(a) == 0 {
		t.Fatal("A's cache is empty: the case is not exercised")
	}
	bTok, err := b.Store(patterned(2, 0))
	must(t, err, "Store")
	holdAsDead(t, a, bTok, false) // A dies inside a View of B's slot
	holdAsDead(t, a, mine[2], true)
	die(a)

	if st := b.Stats(); st.Processes != 3 {
		t.Fatalf("before recovery the dead still count: %+v", st)
	}
	rep, err := b.Recover()
	must(t, err, "Recover")
	if rep != (Recovery{Dead: 1, Reclaimed: 2, Holds: 2}) {
		t.Fatalf("Recover: %+v, want 1 dead, 2 reclaimed (mine[0], mine[2]), 2 holds", rep)
	}
	rep, err = c.Recover()
	must(t, err, "second Recover")
	if rep != (Recovery{}) {
		t.Fatalf("a second Recover found more: %+v", rep)
	}
	for _, h := range []*Arena[pay]{b, c} {
		if st := h.Stats(); st.Recoveries != 1 || st.Processes != 2 {
			t.Fatalf("Stats after recovery: %+v", st)
		}
		if n := h.Available(); n != 6 {
			t.Fatalf("Available = %d, want 6 (mine[1] and B's slot are live)", n)
		}
		for _, tok := range []token.Token{mine[0], mine[2], mine[3]} {
			_, err := h.Load(tok)
			wantErr(t, err, ErrStale, "a dead process's allocation after recovery")
		}
		if v, err := h.Load(mine[1]); err != nil || v != patterned(1, 1) {
			t.Fatalf("the adopted allocation: %v %v", v, err)
		}
	}
	within(t, 5*time.Second, "Update of a slot the dead process viewed", func() {
		must(t, c.Update(bTok, func(p *pay) { *p = patterned(2, 1) }), "Update")
	})
	// The record is free again, and the whole capacity is reachable.
	d := attachTo[pay](t, dirOf(b), -1)
	if st := d.Stats(); st.Processes != 3 {
		t.Fatalf("after a new Attach: %+v", st)
	}
	if got := len(allocAll(t, []*Arena[pay]{d, b}, 8)); got != 6 {
		t.Fatalf("%d allocations after recovery, want 6", got)
	}
}

// TestWaitRecoversDeadHolder: an Update that waits on a slot whose reader
// died recovers the segment itself (nobody called Recover and no watcher
// runs) and goes through; a handle with a watcher recovers on its own.
func TestWaitRecoversDeadHolder(t *testing.T) {
	hs := segment[pay](t, 2, Config{Slots: 4})
	a, b := hs[0], hs[1]
	tok, err := b.Store(patterned(2, 0))
	must(t, err, "Store")
	holdAsDead(t, a, tok, false)
	die(a)
	within(t, 10*time.Second, "Update waiting on a dead reader", func() {
		must(t, b.Update(tok, func(p *pay) { p.Seq = 9 }), "Update")
	})
	if st := b.Stats(); st.Recoveries != 1 {
		t.Fatalf("the waiting Update did not recover: %+v", st)
	}

	w := segment[pay](t, 2, Config{Slots: 4, Watch: 5 * time.Millisecond})
	tok, err = w[0].Store(pay{})
	must(t, err, "Store")
	die(w[0])
	deadline := time.Now().Add(10 * time.Second)
	for w[1].Stats().Recoveries == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the watcher never recovered after a death")
		}
		time.Sleep(time.Millisecond)
	}
	_, err = w[1].Load(tok)
	wantErr(t, err, ErrStale, "the dead watcher-peer's allocation")
}

// TestAdopt: Adopt moves ownership: the adopter answers for the
// allocation (it survives its allocator's death, dies with the adopter),
// Adopt of a stale token is ErrStale.
func TestAdopt(t *testing.T) {
	hs := segment[pay](t, 3, Config{Slots: 4})
	a, b, c := hs[0], hs[1], hs[2]
	tok, err := a.Store(patterned(1, 1))
	must(t, err, "Store")
	if o := ownerOf(atomic.LoadUint64(a.state(tok.Index()))); o != a.me {
		t.Fatalf("owner %d after Alloc by record %d", o, a.me)
	}
	must(t, b.Adopt(tok), "Adopt")
	if o := ownerOf(atomic.LoadUint64(a.state(tok.Index()))); o != b.me {
		t.Fatalf("owner %d after Adopt by record %d", o, b.me)
	}
	must(t, b.Adopt(tok), "Adopt twice")
	die(b)
	rep, err := c.Recover()
	must(t, err, "Recover")
	if rep.Reclaimed != 1 {
		t.Fatalf("the adopter died: %+v, want its adopted allocation reclaimed", rep)
	}
	_, err = c.Load(tok)
	wantErr(t, err, ErrStale, "adopted by the dead")
	wantErr(t, c.Adopt(tok), ErrStale, "Adopt of a stale token")
}

// TestCloseDisowns: an allocation whose owner Closed belongs to nobody: a
// later process that reuses the closed one's record and dies does not take
// it along.
func TestCloseDisowns(t *testing.T) {
	hs := segment[pay](t, 2, Config{Slots: 4})
	a, b := hs[0], hs[1]
	tok, err := a.Store(patterned(1, 1))
	must(t, err, "Store")
	rec := a.me
	must(t, a.Close(), "Close")
	c := attachTo[pay](t, dirOf(b), -1)
	if c.me != rec {
		t.Fatalf("the new handle took record %d, not the closed one's %d: the case is not exercised", c.me, rec)
	}
	die(c)
	rep, err := b.Recover()
	must(t, err, "Recover")
	if rep != (Recovery{Dead: 1}) {
		t.Fatalf("Recover: %+v, want one dead and nothing reclaimed", rep)
	}
	if v, err := b.Load(tok); err != nil || v != patterned(1, 1) {
		t.Fatalf("the closed owner's allocation: %v %v", v, err)
	}
}

// TestRecoverTakesOver: a process that died while leading a recovery
// leaves the recovering word set; the next Recover takes the recovery over,
// finishes it (the dead leader's allocations too) and reports it. It used
// to report nothing.
func TestRecoverTakesOver(t *testing.T) {
	hs := segment[pay](t, 3, Config{Slots: 4})
	a, b, c := hs[0], hs[1], hs[2]
	_, err := a.Store(pay{})
	must(t, err, "Store")
	kept, err := c.Store(patterned(3, 3))
	must(t, err, "Store")
	atomic.StoreUint32(&a.hdr.recovering, uint32(a.me+1)) // a leads...
	die(a)                                                // ...and dies
	var rep Recovery
	within(t, 5*time.Second, "Recover after a dead leader", func() {
		rep, err = b.Recover()
	})
	must(t, err, "Recover")
	if rep != (Recovery{Dead: 1, Reclaimed: 1}) {
		t.Fatalf("Recover that took over: %+v, want 1 dead, 1 reclaimed", rep)
	}
	if st := c.Stats(); st.Recoveries != 1 || st.Processes != 2 {
		t.Fatalf("Stats: %+v", st)
	}
	if v, err := c.Load(kept); err != nil || v != patterned(3, 3) || c.Available() != 3 {
		t.Fatalf("after the recovery: %v %v, Available %d", v, err, c.Available())
	}
}

// TestStaleRecoveringWordNamesSelf: a recovering word that names a
// process's own record while none of its goroutines leads a recovery (a
// corrupt segment; FuzzAttachHeader found it) is taken over by the next
// operation or Recover instead of being waited for forever.
func TestStaleRecoveringWordNamesSelf(t *testing.T) {
	for _, viaRecover := range []bool{false, true} {
		hs := segment[pay](t, 2, Config{Slots: 2})
		a, b := hs[0], hs[1]
		tok, err := a.Store(patterned(1, 1))
		must(t, err, "Store")
		atomic.StoreUint32(&b.hdr.recovering, uint32(b.me+1))
		within(t, 5*time.Second, "an operation meeting a stale recovering word", func() {
			if viaRecover {
				rep, err := b.Recover()
				if err != nil || rep != (Recovery{}) {
					t.Errorf("Recover: %+v %v", rep, err)
				}
			}
			if v, err := b.Load(tok); err != nil || v != patterned(1, 1) {
				t.Errorf("Load: %v %v", v, err)
			}
		})
		if w := atomic.LoadUint32(&a.hdr.recovering); w != 0 {
			t.Fatalf("recovering word still %d", w)
		}
	}
}
