package arena

import (
	"errors"
	"runtime"
	"testing"

	"github.com/cella-go/cella/shard"
	"github.com/cella-go/cella/token"
)

// A free slot parked in the cache of a P that never runs again (GOMAXPROCS
// lowered) is still found before Alloc reports ErrFull, and a stale cache
// entry can never hand its slot out a second time.
func TestCacheStealFindsParkedSlot(t *testing.T) {
	a, toks := fullOnP0(t)
	// Free one slot: it lands in P0's cache. Move the entry to P1's cache,
	// as if P1 had freed it and then stopped running.
	p1 := parkInP1(t, a, toks[2])
	stale := p1.cache

	before := a.Stats().Steals
	tok, p, err := a.Alloc()
	if err != nil {
		t.Fatalf("a free slot sits in P1's cache, Alloc must find it: %v", err)
	}
	if tok.Index() != toks[2].Index() || *p != [4]uint64{} {
		t.Fatalf("got slot %v (payload %v), want the parked slot %v zeroed", tok, *p, toks[2])
	}
	if a.Stats().Steals != before+1 {
		t.Fatal("a claim from another P's cache counts as a steal")
	}
	if _, _, err := a.Alloc(); !errors.Is(err, ErrFull) {
		t.Fatalf("all 4 slots taken: %v", err)
	}
	// P1's entry is stale now. Free the slot again and take it again: the
	// stale entry must never let a second Alloc have it.
	if err := a.Free(tok); err != nil {
		t.Fatal(err)
	}
	again, _, err := a.Alloc()
	if err != nil || again.Index() != tok.Index() || again.Generation() == tok.Generation() {
		t.Fatalf("re-alloc of the freed slot: %v, %v", again, err)
	}
	if p1.cache != stale {
		t.Fatal("thieves must not write another P's cache word")
	}
	if _, _, err := a.Alloc(); !errors.Is(err, ErrFull) {
		t.Fatalf("the stale entry handed a slot out twice: %v", err)
	}
	for _, x := range []token.Token{toks[0], toks[1], toks[3], again} {
		if err := a.Free(x); err != nil {
			t.Fatal(err)
		}
	}
	if a.Available() != a.Capacity() {
		t.Fatalf("Available %d, Capacity %d", a.Available(), a.Capacity())
	}
}

// A thief that drains a P's cache leaves the P cooling: the P's frees skip
// its cache (so the next thief finds them on a freelist, with no fence)
// until coolFrees of them have passed, and then it caches again. An owner
// that finds a thief's mark after clearing its cache claims with a CAS,
// and loses cleanly to the thief.
func TestCacheCooling(t *testing.T) {
	a, toks := fullOnP0(t)
	// Park toks[0] in P1's cache, as if P1 had freed it.
	p1 := parkInP1(t, a, toks[0])
	parked := p1.cache
	drains := a.Stats().Drains
	tok, _, err := a.Alloc() // shards and P0's cache are empty: drain P1
	if err != nil || tok.Index() != toks[0].Index() {
		t.Fatalf("Alloc = %v, %v: want the slot parked in P1's cache", tok, err)
	}
	if a.Stats().Drains != drains+1 {
		t.Fatal("claiming from another P's cache must fence (count a drain)")
	}
	if p1.steal != coolingBit {
		t.Fatalf("P1's steal word after the drain = %#x, want cooling and no thief inside", p1.steal)
	}
	// P1's owner comes back: its cache entry is stale, its claim (a CAS,
	// since the mark is set) fails, and the entry is gone.
	if w := a.takeCached(p1); w != 0 || p1.cache != 0 {
		t.Fatalf("the owner took a slot a thief had claimed: %#x (cache %#x, was %#x)", w, p1.cache, parked)
	}
	// While cooling, P1 does not cache; after coolFrees frees it does.
	if err := a.Free(tok); err != nil {
		t.Fatal(err)
	}
	idx, gen := tok.Index(), tok.Generation()
	free := uint64(gen+1) << genShift
	for i := 1; i < coolFrees; i++ {
		if a.cachePut(p1, idx, free) {
			t.Fatalf("free %d of a cooling P went to its cache", i)
		}
	}
	if !a.cachePut(p1, idx, free) {
		t.Fatal("after coolFrees frees the P must cache again")
	}
	if p1.steal != 0 {
		t.Fatalf("steal word %#x after cooling, want 0", p1.steal)
	}
	setCache(p1, 0) // the entry above was a probe, not a real free
	for _, x := range toks[1:] {
		if err := a.Free(x); err != nil {
			t.Fatal(err)
		}
	}
}

// The double collect: a slot freed into a P cache after the caches were
// scanned and before the shards are looked at again must not let Alloc
// report ErrFull (the cache's put counter moved, so Alloc looks again and
// finds it).
func TestErrFullDoubleCollect(t *testing.T) {
	if !shard.Pinned {
		t.Skip("the purego build has no per-P cache")
	}
	a, err := New[uint64](Config{Slots: 1, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	held, _, err := a.Alloc()
	if err != nil {
		t.Fatal(err)
	}
	fired := false
	testHookAfterCacheScan = func() {
		if fired {
			return
		}
		fired = true
		// The only slot becomes free, into this P's cache, in the
		// window between the two collects.
		if err := a.Free(held); err != nil {
			t.Error(err)
		}
	}
	defer func() { testHookAfterCacheScan = nil }()
	tok, _, err := a.Alloc()
	if !fired {
		t.Fatal("the hook did not run: the arena was not full")
	}
	if err != nil {
		t.Fatalf("Alloc = %v while the slot freed during its scan sat in a cache", err)
	}
	if tok.Index() != held.Index() {
		t.Fatalf("got slot %v, want %v", tok, held)
	}
	if err := a.Free(tok); err != nil {
		t.Fatal(err)
	}
}

// fullOnP0 makes a full 4-slot, 1-shard arena with only P0 running (for the
// rest of the test), slot i holding i+1, and returns it with its tokens.
func fullOnP0(t *testing.T) (*Arena[[4]uint64], []token.Token) {
	t.Helper()
	if !shard.Pinned {
		t.Skip("the purego build has no per-P cache")
	}
	prev := runtime.GOMAXPROCS(1)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	a, err := New[[4]uint64](Config{Slots: 4, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if a.nP < 2 {
		t.Skip("needs a per-P table of at least two Ps")
	}
	var toks []token.Token
	for i := 0; i < 4; i++ {
		tok, p, err := a.Alloc()
		if err != nil {
			t.Fatal(err)
		}
		p[0] = uint64(i + 1)
		toks = append(toks, tok)
	}
	return a, toks
}

// parkInP1 frees tok on P0 (into P0's cache) and moves the cache entry to
// P1, as if P1 had freed the slot and then stopped running.
func parkInP1(t *testing.T, a *Arena[[4]uint64], tok token.Token) (p1 *pCounters) {
	t.Helper()
	if err := a.Free(tok); err != nil {
		t.Fatal(err)
	}
	p0, p1 := a.pc(0), a.pc(1)
	if p0.cache == 0 {
		t.Fatal("Free on P0 did not use P0's cache")
	}
	p1.cache, p0.cache = p0.cache, 0
	return p1
}
