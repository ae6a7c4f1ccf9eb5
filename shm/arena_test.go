package shm

// Semantics of a shared arena, through one handle and through several
// handles on one segment (each handle stands for a process: see
// helpers_test.go): exact ErrFull, stale tokens, View/Update holds, Free
// during a callback, panics in callbacks, Stats, allocations, generation
// wrap. Close is in close_test.go, death and recovery in recover_test.go,
// the segment file's life in segment_test.go, misuse in misuse_test.go,
// stress in stress_test.go, the model fuzzers in fuzz_test.go. What each
// test proves is said above it; every test was seen to fail with the code
// it guards broken on purpose.

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
)

// allocAll allocates through hs[i%len(hs)] until ErrFull, checking that
// no index is handed out twice, and returns the tokens.
func allocAll[T any](t *testing.T, hs []*Arena[T], limit int) []token.Token {
	t.Helper()
	seen := map[uint32]token.Token{}
	var toks []token.Token
	for i := 0; ; i++ {
		if i > limit {
			t.Fatalf("more than %d allocations succeeded", limit)
		}
		tok, _, err := hs[i%len(hs)].Alloc()
		if errors.Is(err, ErrFull) {
			return toks
		}
		must(t, err, "Alloc")
		if old, dup := seen[tok.Index()]; dup {
			t.Fatalf("slot %d handed out twice: %v and %v", tok.Index(), old, tok)
		}
		seen[tok.Index()] = tok
		toks = append(toks, tok)
	}
}

// TestExactFull: with capacity N and 1, 3 or 16 shards, one goroutine
// allocates exactly N slots, through one handle or alternating two, and
// the N+1-th is ErrFull; also when the free slots sit in the other handle's
// way caches (freed through B, allocated through A), and after the
// whole capacity went round once. Available is exact at each rest point.
// Fails if Alloc stops looking in other processes' caches (ErrFull too
// early, or a census that never concludes: the test times out).
func TestExactFull(t *testing.T) {
	for _, c := range []struct{ slots, shards int }{{37, 1}, {37, 3}, {37, 16}, {5, 16}, {1, 1}} {
		t.Run(fmt.Sprintf("slots=%d/shards=%d", c.slots, c.shards), func(t *testing.T) {
			hs := segment[pay](t, 2, Config{Slots: c.slots, Shards: c.shards})
			a, b := hs[0], hs[1]
			within(t, 20*time.Second, "exact-full rounds", func() {
				check := func(what string, toks []token.Token) {
					t.Helper()
					if len(toks) != c.slots {
						t.Fatalf("%s: %d allocations before ErrFull, capacity %d", what, len(toks), c.slots)
					}
					for _, h := range hs {
						if _, _, err := h.Alloc(); !errors.Is(err, ErrFull) {
							t.Fatalf("%s: Alloc past capacity: %v", what, err)
						}
						if n := h.Available(); n != 0 {
							t.Fatalf("%s: Available = %d when full", what, n)
						}
					}
				}
				freeAll := func(h *Arena[pay], toks []token.Token) {
					t.Helper()
					for _, tok := range toks {
						must(t, h.Free(tok), "Free")
					}
					for _, h := range hs {
						if n := h.Available(); n != c.slots {
							t.Fatalf("Available = %d after every free, capacity %d", n, c.slots)
						}
					}
				}
				toks := allocAll(t, hs[:1], c.slots)
				check("one handle", toks)
				freeAll(a, toks)

				toks = allocAll(t, hs, c.slots)
				check("two handles", toks)
				// Free through B: B's caches fill first, the rest goes to
				// B's home shard; A must find both.
				freeAll(b, toks)
				if cachedSlots(b) == 0 {
					t.Fatal("no slot sits in B's caches after B freed everything: the case is not exercised")
				}
				toks = allocAll(t, hs[:1], c.slots)
				check("through A after frees through B", toks)
				if cachedSlots(b) != 0 {
					t.Fatal("A reported ErrFull while B's caches held slots")
				}
				freeAll(a, toks)
			})
		})
	}
}

// TestStale: a freed token is ErrStale for every method on every handle,
// whichever handle freed it, and stays stale after its slot is reused
// (the new token has the next generation); the new token works.
func TestStale(t *testing.T) {
	hs := segment[pay](t, 2, Config{Slots: 1, Shards: 1})
	for round := range 4 {
		freer := hs[round%2]
		old, err := hs[(round+1)%2].Store(patterned(1, uint64(round)))
		must(t, err, "Store")
		must(t, freer.Free(old), "Free")
		staleEverywhere(t, hs, old)
		// Capacity 1: the next allocation reuses the slot.
		reuse, err := hs[round%2].Store(patterned(2, uint64(round)))
		must(t, err, "Store after Free")
		if reuse.Index() != old.Index() || reuse.Generation() != old.Generation()+1 {
			t.Fatalf("reuse of %v is %v, want generation +1", old, reuse)
		}
		staleEverywhere(t, hs, old)
		for _, h := range hs {
			v, err := h.Load(reuse)
			if err != nil || v != patterned(2, uint64(round)) {
				t.Fatalf("Load of the new token: %v, %v", v, err)
			}
		}
		must(t, hs[(round+1)%2].Free(reuse), "Free")
	}
}

func staleEverywhere(t *testing.T, hs []*Arena[pay], tok token.Token) {
	t.Helper()
	for i, h := range hs {
		var dst pay
		_, err := h.Load(tok)
		wantErr(t, err, ErrStale, fmt.Sprintf("handle %d Load %v", i, tok))
		wantErr(t, h.LoadInto(tok, &dst), ErrStale, "LoadInto")
		wantErr(t, h.View(tok, func(*pay) { t.Error("View ran on a stale token") }), ErrStale, "View")
		wantErr(t, h.Update(tok, func(*pay) { t.Error("Update ran on a stale token") }), ErrStale, "Update")
		wantErr(t, h.Adopt(tok), ErrStale, "Adopt")
		wantErr(t, h.Free(tok), ErrStale, "Free")
		if dst != (pay{}) {
			t.Fatalf("LoadInto wrote %v on error", dst)
		}
	}
}

// TestViewsRunTogether: two Views of one slot, from two handles, are
// inside their callbacks at the same time (each waits for the other to
// enter; a View that excluded Views would deadlock and time out).
func TestViewsRunTogether(t *testing.T) {
	hs := segment[pay](t, 2, Config{Slots: 4})
	tok, err := hs[0].Store(patterned(1, 1))
	must(t, err, "Store")
	var wg sync.WaitGroup
	in := [2]chan struct{}{make(chan struct{}), make(chan struct{})}
	errs := make(chan error, 2)
	for i, h := range hs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- h.View(tok, func(p *pay) {
				close(in[i])
				select {
				case <-in[1-i]:
				case <-time.After(5 * time.Second):
					t.Error("the other View never ran while this one held the slot")
				}
				if !p.whole() {
					t.Error("torn payload")
				}
			})
		}()
	}
	wg.Wait()
	for range 2 {
		must(t, <-errs, "View")
	}
}

// TestUpdateExcludes: Updates through two handles exclude each other and
// every View on the slot (counted in Go memory inside the callbacks), and
// a plain increment inside Update loses no update.
func TestUpdateExcludes(t *testing.T) {
	hs := segment[pay](t, 2, Config{Slots: 4})
	tok, err := hs[0].Store(patterned(1, 0))
	must(t, err, "Store")
	var writers, readers atomic.Int32
	var bad atomic.Value
	const perG = 300
	var wg sync.WaitGroup
	for g := range 4 {
		h := hs[g%2]
		wg.Add(2)
		go func() { // writer
			defer wg.Done()
			for range perG {
				err := h.Update(tok, func(p *pay) {
					if writers.Add(1) != 1 || readers.Load() != 0 {
						bad.Store("Update overlapped another callback")
					}
					seq := p.Seq + 1
					for i := range p.Fill {
						p.Fill[i] = fillOf(p.Owner, seq, i)
						if i == 2 {
							runtime.Gosched()
						}
					}
					p.Seq = seq
					writers.Add(-1)
				})
				if err != nil {
					bad.Store(err.Error())
				}
			}
		}()
		go func() { // reader
			defer wg.Done()
			for range perG {
				err := h.View(tok, func(p *pay) {
					readers.Add(1)
					whole := p.whole()
					runtime.Gosched()
					if writers.Load() != 0 {
						bad.Store("View overlapped an Update")
					}
					if !whole || !p.whole() {
						bad.Store("View saw a half-written payload")
					}
					readers.Add(-1)
				})
				if err != nil {
					bad.Store(err.Error())
				}
			}
		}()
	}
	wg.Wait()
	if b := bad.Load(); b != nil {
		t.Fatal(b)
	}
	v, err := hs[1].Load(tok)
	must(t, err, "Load")
	if v.Seq != 4*perG || !v.whole() {
		t.Fatalf("after %d Updates: Seq %d, whole %v", 4*perG, v.Seq, v.whole())
	}
}

// TestFreeDuringCallback: Free of a slot a View or Update holds (through
// the same or the other handle) returns at once and makes the token stale
// at once, but the slot is recycled only after the callback returns: with
// capacity 1, Alloc inside the callback is ErrFull, and succeeds after.
func TestFreeDuringCallback(t *testing.T) {
	for _, c := range []struct {
		name   string
		update bool
		freer  int
	}{{"View/other", false, 1}, {"View/same", false, 0}, {"Update/other", true, 1}, {"Update/same", true, 0}} {
		t.Run(c.name, func(t *testing.T) {
			hs := segment[pay](t, 2, Config{Slots: 1, Shards: 1})
			tok, err := hs[0].Store(patterned(3, 3))
			must(t, err, "Store")
			access := hs[0].View
			if c.update {
				access = hs[0].Update
			}
			var ran bool
			within(t, 10*time.Second, "Free during a callback", func() {
				err = access(tok, func(p *pay) {
					ran = true
					must(t, hs[c.freer].Free(tok), "Free during the callback")
					for _, h := range hs {
						_, err := h.Load(tok)
						wantErr(t, err, ErrStale, "Load after Free, callback running")
						if _, _, err := h.Alloc(); !errors.Is(err, ErrFull) {
							t.Errorf("Alloc while the freed slot is held: %v, want ErrFull", err)
						}
					}
					if !p.whole() || p.Owner != 3 {
						t.Error("payload changed under the callback")
					}
				})
			})
			must(t, err, "callback")
			if !ran {
				t.Fatal("callback did not run")
			}
			for _, h := range hs {
				if n := h.Available(); n != 1 {
					t.Fatalf("Available = %d after the callback returned", n)
				}
			}
			next, _, err := hs[1].Alloc()
			must(t, err, "Alloc after the callback returned")
			if next.Generation() != tok.Generation()+1 {
				t.Fatalf("reused as %v after %v", next, tok)
			}
		})
	}
}

// TestPanicReleasesHold: a panic inside a View or Update callback reaches
// the caller, and the hold is released: a later Update (from either
// handle) runs, and Close does not wait for a hold that is gone.
func TestPanicReleasesHold(t *testing.T) {
	hs := segment[pay](t, 2, Config{Slots: 2})
	tok, err := hs[0].Store(patterned(1, 1))
	must(t, err, "Store")
	for _, update := range []bool{false, true} {
		for i, h := range hs {
			access := h.View
			if update {
				access = h.Update
			}
			got := func() (r any) {
				defer func() { r = recover() }()
				_ = access(tok, func(*pay) { panic("boom") })
				return nil
			}()
			if got != "boom" {
				t.Fatalf("handle %d: recovered %v, want the callback's panic", i, got)
			}
			for _, other := range hs {
				within(t, 5*time.Second, "Update after a panicking callback", func() {
					must(t, other.Update(tok, func(p *pay) { p.Seq++ }), "Update")
				})
			}
		}
	}
	within(t, 5*time.Second, "Close after panicking callbacks", func() {
		for _, h := range hs {
			must(t, h.Close(), "Close")
		}
	})
}

// TestStats: Allocs, Frees and Steals count this handle's operations;
// Processes counts attached handles; Allocs == Frees once all is freed.
func TestStats(t *testing.T) {
	hs := segment[pay](t, 2, Config{Slots: 16, Shards: 4})
	a, b := hs[0], hs[1]
	toks := allocAll(t, hs[:1], 16)
	for _, tok := range toks[:10] {
		must(t, b.Free(tok), "Free")
	}
	for _, tok := range toks[10:] {
		must(t, a.Free(tok), "Free")
	}
	sa, sb := a.Stats(), b.Stats()
	if sa.Allocs != 16 || sa.Frees != 6 || sb.Allocs != 0 || sb.Frees != 10 {
		t.Fatalf("A %+v, B %+v", sa, sb)
	}
	if sa.Processes != 2 || sb.Processes != 2 || sa.Recoveries != 0 {
		t.Fatalf("A %+v", sa)
	}
	if sa.Allocs+sb.Allocs != sa.Frees+sb.Frees {
		t.Fatal("Allocs != Frees after every token was freed")
	}
	// A steal, whatever the build's P numbering: the only free slot sits
	// in the other handle's cache.
	one := segment[pay](t, 2, Config{Slots: 1})
	tok, err := one[0].Store(pay{})
	must(t, err, "Store")
	must(t, one[1].Free(tok), "Free")
	before := one[0].Stats().Steals
	_, err = one[0].Store(pay{})
	must(t, err, "Store")
	if got := one[0].Stats().Steals - before; got != 1 {
		t.Fatalf("taking a slot from another process's cache counted %d steals", got)
	}
}

// TestFullCensus: the census Alloc runs before it answers ErrFull sees a
// free slot wherever it sits: on a shard's frontier, on a shard's
// freelist, in another process's one-slot cache; and reports full only
// when every slot is allocated. (Whether two censuses bracket an instant
// is a concurrency property: TestNoSpuriousFull.)
func TestFullCensus(t *testing.T) {
	hs := segment[pay](t, 2, Config{Slots: 4, Shards: 2})
	a, b := hs[0], hs[1]
	var toks []token.Token
	for range 3 {
		tok, _, err := a.Alloc()
		must(t, err, "Alloc")
		toks = append(toks, tok)
	}
	if a.full() {
		t.Fatal("full() with a slot left on a frontier")
	}
	tok, _, err := a.Alloc()
	must(t, err, "Alloc")
	toks = append(toks, tok)
	if !a.full() || !b.full() {
		t.Fatal("full() false with every slot allocated")
	}
	must(t, b.Free(toks[0]), "Free")
	if cachedSlots(b) != 1 {
		t.Fatal("the freed slot is not in B's cache: the case is not exercised")
	}
	if a.full() || b.full() {
		t.Fatal("full() with a slot in B's cache")
	}
	// Move it from the cache to a freelist, as a second free would.
	for k := range b.rec.ways {
		if idx, ok := b.takeCache(&b.rec.ways[k].cache); ok {
			b.push(b.shard(1), idx)
		}
	}
	if a.full() || b.full() {
		t.Fatal("full() with a slot on a freelist")
	}
	again, _, err := a.Alloc()
	must(t, err, "Alloc")
	if again.Index() != toks[0].Index() || !a.full() {
		t.Fatalf("Alloc took %v, full() %v", again, a.full())
	}
}

// TestNoErrFullWhileChainMoves: while a flush moves a way's chain of freed
// slots to a shard (detached from the cache, not yet on the freelist), an
// Alloc in another process must not report ErrFull: the chain is in the
// mover's moving word, which the census reads. Before the moving word the
// chain was out of sight for the length of the walk to its tail, and a
// census that ran inside that window (a preempted flusher makes it long)
// said full with flushAt slots free.
func TestNoErrFullWhileChainMoves(t *testing.T) {
	hs := segment[pay](t, 2, Config{Slots: flushAt, Shards: 1})
	a, b := hs[0], hs[1]
	var toks []token.Token
	for range flushAt {
		tok, err := a.Store(pay{})
		must(t, err, "Store")
		toks = append(toks, tok)
	}
	moving, release := make(chan struct{}), make(chan struct{})
	testHookMoving = func() {
		close(moving)
		<-release
	}
	defer func() { testHookMoving = nil }()
	freed := make(chan error, 1)
	go func() {
		// Every free lands in one way's cache only if they run on one P;
		// the flush that follows the flushAt-th is the one the hook stops.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var err error
		for _, tok := range toks {
			if e := a.Free(tok); e != nil && err == nil {
				err = e
			}
		}
		freed <- err
	}()
	select {
	case <-moving:
	case err := <-freed:
		t.Skipf("the frees never filled one way's cache (%v): the case is not exercised", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no flush started")
	}
	testHookMoving = nil
	got := make(chan error, 1)
	go func() {
		_, _, err := b.Alloc()
		got <- err
	}()
	select {
	case err := <-got:
		close(release)
		t.Fatalf("Alloc while %d freed slots were moving to a shard: %v", flushAt, err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	within(t, 5*time.Second, "Alloc once the chain arrived", func() {
		must(t, <-got, "Alloc")
	})
	must(t, <-freed, "Free")
}

// TestDeadMoverIsRecovered: a process that died in the middle of a move
// (its chain detached from its cache, still in its moving word) leaves
// slots that are free but in no freelist. The census sees them, so Alloc
// in a survivor does not say ErrFull; it must not spin on them forever
// either: after a while it runs the recovery, which relinks them.
func TestDeadMoverIsRecovered(t *testing.T) {
	hs := segment[pay](t, 2, Config{Slots: 4, Shards: 1}) // no watcher
	a, b := hs[0], hs[1]
	var toks []token.Token
	for range 4 {
		tok, err := a.Store(pay{})
		must(t, err, "Store")
		toks = append(toks, tok)
	}
	for _, tok := range toks {
		must(t, a.Free(tok), "Free")
	}
	moved := false
	for k := range a.rec.ways {
		w := &a.rec.ways[k]
		if v := atomic.LoadUint64(&w.cache); uint32(v) != 0 {
			// What a flush leaves between detaching the chain and splicing it.
			atomic.StoreUint64(&w.moving, v)
			atomic.StoreUint64(&w.cache, (v>>32+1)<<32)
			moved = true
		}
	}
	if !moved {
		t.Fatal("the freed slots are in no cache of A: the case is not exercised")
	}
	die(a)
	within(t, 5*time.Second, "Alloc with the free slots in a dead process's moving word", func() {
		for range 4 {
			_, _, err := b.Alloc()
			must(t, err, "Alloc")
		}
	})
}

// TestHotPathsDoNotAllocate: Alloc, Store, Load, LoadInto, View, Update,
// Adopt and Free allocate nothing on the Go heap.
func TestHotPathsDoNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	hs := segment[pay](t, 2, Config{Slots: 8})
	a, b := hs[0], hs[1]
	keep, err := a.Store(patterned(1, 1))
	must(t, err, "Store")
	var dst pay
	view := func(p *pay) { dst.Seq = p.Seq }
	update := func(p *pay) { p.Seq++ }
	for name, fn := range map[string]func(){
		"Alloc+Free": func() {
			tok, _, _ := a.Alloc()
			_ = b.Free(tok)
		},
		"Store+Free": func() {
			tok, _ := a.Store(dst)
			_ = a.Free(tok)
		},
		"Load":     func() { dst, _ = b.Load(keep) },
		"LoadInto": func() { _ = b.LoadInto(keep, &dst) },
		"View":     func() { _ = b.View(keep, view) },
		"Update":   func() { _ = a.Update(keep, update) },
		"Adopt":    func() { _ = b.Adopt(keep) },
	} {
		if n := testing.AllocsPerRun(200, fn); n != 0 {
			t.Errorf("%s: %v allocations per call", name, n)
		}
	}
}

// TestGenerationWrap: a slot is handed out up to generation 2^32-1; freed
// there it is retired, never handed out again, and every token of it stays
// stale. (The generations are advanced by writing the state word: 2^32
// frees take too long.)
func TestGenerationWrap(t *testing.T) {
	hs := segment[pay](t, 2, Config{Slots: 2, Shards: 1})
	a, b := hs[0], hs[1]
	tok, err := a.Store(pay{})
	must(t, err, "Store")
	filler, err := a.Store(pay{}) // so that tok's slot is the only one free below
	must(t, err, "Store")
	st := a.state(tok.Index())
	s := atomic.LoadUint64(st)
	atomic.StoreUint64(st, s&^genMask|(genMask-1))
	near := token.New(tok.Index(), genMask-1)
	_, err = a.Load(tok)
	wantErr(t, err, ErrStale, "the token before the jump")
	must(t, b.Free(near), "Free at generation 2^32-2")
	last, err := b.Store(patterned(9, 9))
	must(t, err, "Store")
	if last != token.New(tok.Index(), genMask) {
		t.Fatalf("after 2^32-2 the slot came back as %v", last)
	}
	if v, err := a.Load(last); err != nil || v != patterned(9, 9) {
		t.Fatalf("Load at generation 2^32-1: %v %v", v, err)
	}
	must(t, a.Free(last), "Free at generation 2^32-1")
	for _, old := range []token.Token{tok, near, last} {
		staleEverywhere(t, hs, old)
	}
	for _, h := range hs {
		if _, _, err := h.Alloc(); !errors.Is(err, ErrFull) {
			t.Fatalf("Alloc with one slot live and one retired: %v, want ErrFull", err)
		}
	}
	must(t, b.Free(filler), "Free")
	other, err := a.Store(pay{})
	must(t, err, "Store")
	if other.Index() == tok.Index() {
		t.Fatalf("the retired slot was handed out again as %v", other)
	}
	// A recovery keeps it retired.
	must(t, b.Free(other), "Free")
	die(a)
	_, err = b.Recover()
	must(t, err, "Recover")
	if got := len(allocAll(t, hs[1:], 2)); got != 1 {
		t.Fatalf("%d allocations after a recovery, want 1 (one slot retired)", got)
	}
	t.Logf("Available with one slot live, one retired: %d (a retired slot counts as free)", b.Available())
}

// TestOddPayloadSizes: a zero-size payload (slots of stride 1) and a 3 MiB
// one (past the 128 KiB where Go copies through heap temporaries) work
// across handles.
func TestOddPayloadSizes(t *testing.T) {
	hs := segment[struct{}](t, 2, Config{Slots: 3})
	toks := allocAll(t, hs, 3)
	if len(toks) != 3 {
		t.Fatalf("%d zero-size slots of 3", len(toks))
	}
	for _, tok := range toks {
		_, err := hs[1].Load(tok)
		must(t, err, "Load")
		must(t, hs[0].Update(tok, func(*struct{}) {}), "Update")
		must(t, hs[1].Free(tok), "Free")
	}
	big := segment[[3 << 20]byte](t, 2, Config{Slots: 1})
	tok, p, err := big[0].Alloc()
	must(t, err, "Alloc")
	p[len(p)-1] = 7
	dst := new([3 << 20]byte)
	must(t, big[1].LoadInto(tok, dst), "LoadInto")
	if dst[len(dst)-1] != 7 {
		t.Fatal("the last byte of a 3 MiB payload did not cross handles")
	}
	must(t, big[1].Free(tok), "Free")
	tok, p, err = big[1].Alloc()
	must(t, err, "Alloc")
	for _, b := range p {
		if b != 0 {
			t.Fatalf("a reused 3 MiB slot (%v) is not zeroed", tok)
		}
	}
}
