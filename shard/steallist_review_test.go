package shard

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"
)

// Review tests for the whole-list steal (stealList, adoptChain): white-box,
// so that they can look at heads, tags and the steal word directly.

// rvSet is a Set over links in a Go slice (kept alive by the Set's pointer
// and by the field).
type rvSet struct {
	*Set
	links []uint32
	slots uint32
}

func rvLayout(parts []Part, flag uint32) *rvSet {
	var slots uint32
	for _, p := range parts {
		slots += p.Slots
	}
	links := make([]uint32, max(slots, 1))
	s := NewLayout(parts, unsafe.Pointer(&links[0]), 4)
	s.SetLinkFlag(flag)
	return &rvSet{Set: s, links: links, slots: slots}
}

func rvNew(slots uint32, shards int, flag uint32) *rvSet {
	return rvLayout([]Part{{Slots: slots, Shards: shards, Node: -1}}, flag)
}

func tagOf(h uint64) uint32 { return uint32(h >> 32) }

// popQuiet pops from home on a Set nobody else uses: Busy is a failure.
func (s *rvSet) popQuiet(t *testing.T, home int) (uint32, Source, bool) {
	t.Helper()
	idx, src, ok := s.Pop(home)
	if !ok && src == Busy {
		t.Fatalf("Pop(%d) on a quiet Set reported Busy (steal word %#x)", home, s.steals.Load())
	}
	if ok && idx >= s.slots {
		t.Fatalf("Pop(%d) = %d (%v), out of range [0, %d)", home, idx, src, s.slots)
	}
	return idx, src, ok
}

// drainAll pops everything from the given homes in turn (quiet Set) and
// checks that each index comes once.
func (s *rvSet) drainAll(t *testing.T, home func(i int) int) []uint32 {
	t.Helper()
	seen := make([]bool, s.slots)
	var out []uint32
	for {
		idx, _, ok := s.popQuiet(t, home(len(out)))
		if !ok {
			return out
		}
		if seen[idx] {
			t.Fatalf("index %d handed out twice", idx)
		}
		seen[idx] = true
		out = append(out, idx)
	}
}

// list walks shard sh's freelist (quiet Set) from the top, checking that
// every index is in range, that every link carries the link flag, and that
// the chain ends within slots steps.
func (s *rvSet) list(t *testing.T, sh int) []uint32 {
	t.Helper()
	h := s.shards[sh].head.Load()
	var out []uint32
	for top := uint32(h); top != 0; {
		idx := top - 1
		if idx >= s.slots || uint32(len(out)) >= s.slots {
			t.Fatalf("shard %d's list runs to index %d after %v: corrupt chain", sh, idx, out)
		}
		out = append(out, idx)
		raw := atomic.LoadUint32(&s.links[idx])
		if s.linkFlag != 0 && raw&s.linkFlag == 0 {
			t.Fatalf("link of free slot %d is %#x, without the link flag %#x", idx, raw, s.linkFlag)
		}
		top = raw &^ s.linkFlag
	}
	return out
}

func sameSeq(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// 1 and 2 (and 5): many goroutines Pop and Push on random homes (P ids up to
// three times Len, mapped with Of), on one-part and multi-part layouts, with
// and without the link flag, while another goroutine Detaches and Reattaches
// random shards' lists. The owner table catches an index handed out twice
// (also one a Pop hands out while it is detached); the final drain catches
// a lost one. In the roomy cases (slots > goroutines*hold) a free slot
// exists at every instant (on a shard, in a thief's hands or detached), so
// a Pop that reports empty without Busy is wrong.
func TestReviewConcurrentConservation(t *testing.T) {
	ops := 30000
	if testing.Short() || raceEnabled {
		ops = 6000
	}
	one := func(slots uint32, shards int) []Part { return []Part{{Slots: slots, Shards: shards, Node: -1}} }
	cases := []struct {
		name       string
		parts      []Part
		goroutines int
		hold       int
		flag       uint32
		detach     bool
	}{
		{"1slot/1shard", one(1, 1), 3, 1, 0, true},
		{"1slot/3shards", one(1, 3), 3, 1, 1 << 31, true},
		{"2slots/2shards/roomy", one(2, 2), 1, 1, 0, true},
		{"3slots/4shards/roomy", one(3, 4), 2, 1, 1 << 31, true},
		{"5slots/3shards/roomy", one(5, 3), 2, 2, 0, false},
		{"8slots/2shards/roomy", one(8, 2), 3, 2, 1 << 31, true},
		{"8slots/8shards", one(8, 8), 6, 2, 0, true},
		{"8slots/8shards/roomy", one(8, 8), 7, 1, 1 << 31, false},
		{"300slots/4shards/roomy", one(300, 4), 6, 40, 0, true},
		{"2000slots/3shards/roomy", one(2000, 3), 4, 300, 1 << 31, true},
		{"parts 3+2 slots/roomy", []Part{{3, 2, 0}, {2, 1, 1}}, 2, 2, 0, true},
		{"parts 3+2 slots", []Part{{3, 2, 0}, {2, 1, 1}}, 4, 2, 1 << 31, true},
		{"parts 4+0+4 slots/roomy", []Part{{4, 2, 0}, {0, 1, 1}, {4, 2, 2}}, 3, 2, 1 << 31, true},
		{"parts 1+1+1 slots", []Part{{1, 1, 0}, {1, 2, 1}, {1, 1, 2}}, 3, 1, 0, true},
		{"parts 100+50+77/roomy", []Part{{100, 3, 0}, {50, 2, 1}, {77, 2, 2}}, 6, 30, 1 << 31, true},
		{"parts 1000+1000/roomy", []Part{{1000, 4, 0}, {1000, 4, 1}}, 4, 200, 0, true},
		{"parts 64+64", []Part{{64, 2, 0}, {64, 2, 1}}, 8, 32, 1 << 31, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := rvLayout(c.parts, c.flag)
			n := s.Len()
			roomy := int(s.slots) > c.goroutines*c.hold
			ops := ops
			if s.slots <= 8 {
				ops *= 4 // cheap, and where a mis-counted steal shows most
			}
			owner := make([]atomic.Int32, s.slots)
			var falseEmpty, empties, busy, pops, detaches atomic.Int64
			var errOnce sync.Once
			var firstErr string
			report := func(format string, args ...any) {
				errOnce.Do(func() { firstErr = fmt.Sprintf(format, args...) })
			}
			var stop atomic.Bool
			var wg sync.WaitGroup
			if c.detach {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(99, uint64(n)))
					const me = -1
					for !stop.Load() {
						first, ok := s.Detach(rng.IntN(n))
						if !ok {
							runtime.Gosched()
							continue
						}
						detaches.Add(1)
						chain := []uint32{first}
						for last := first; ; {
							next, ok := s.Next(last)
							if !ok {
								break
							}
							if next >= s.slots || uint32(len(chain)) >= s.slots {
								report("detached chain runs to %d after %d slots", next, len(chain))
								return
							}
							chain = append(chain, next)
							last = next
						}
						for _, idx := range chain {
							if prev := owner[idx].Swap(me); prev != 0 {
								report("Detach took %d while goroutine %d held it", idx, prev-1)
								return
							}
						}
						if rng.IntN(2) == 0 {
							runtime.Gosched()
						}
						for _, idx := range chain {
							if prev := owner[idx].Swap(0); prev != me {
								report("detached %d was taken by goroutine %d meanwhile", idx, prev-1)
								return
							}
						}
						s.Reattach(rng.IntN(n), first, chain[len(chain)-1])
					}
				}()
			}
			var workers sync.WaitGroup
			for g := 0; g < c.goroutines; g++ {
				workers.Add(1)
				go func(g int) {
					defer workers.Done()
					rng := rand.New(rand.NewPCG(uint64(g), 7))
					held := make([]uint32, 0, c.hold)
					me := int32(g + 1)
					for i := 0; i < ops; i++ {
						home := s.Of(rng.IntN(3 * n))
						if len(held) < c.hold && (len(held) == 0 || rng.IntN(2) == 0) {
							idx, src, ok := s.Pop(home)
							if !ok {
								if src == Busy {
									busy.Add(1)
								} else {
									empties.Add(1)
									if roomy {
										falseEmpty.Add(1)
									}
								}
								runtime.Gosched()
								continue
							}
							pops.Add(1)
							if idx >= s.slots {
								report("Pop(%d) = %d, out of range [0, %d)", home, idx, s.slots)
								return
							}
							if prev := owner[idx].Swap(me); prev != 0 {
								report("index %d handed to goroutine %d (%v) while %d held it", idx, g, src, prev)
								return
							}
							held = append(held, idx)
							continue
						}
						j := rng.IntN(len(held))
						idx := held[j]
						held[j] = held[len(held)-1]
						held = held[:len(held)-1]
						if prev := owner[idx].Swap(0); prev != me {
							report("goroutine %d returns %d but the owner table says %d", g, idx, prev)
							return
						}
						s.Push(home, idx)
					}
					for _, idx := range held {
						owner[idx].Store(0)
						s.Push(s.Of(g), idx)
					}
				}(g)
			}
			workers.Wait()
			stop.Store(true)
			wg.Wait()
			if firstErr != "" {
				t.Fatal(firstErr)
			}
			t.Logf("%d slots, %d shards, roomy %v: %d pops, %d empty, %d Busy, %d detaches",
				s.slots, n, roomy, pops.Load(), empties.Load(), busy.Load(), detaches.Load())
			if k := falseEmpty.Load(); k > 0 {
				t.Errorf("Pop reported empty (not Busy) %d times although at least %d of %d slots were free at every instant",
					k, int(s.slots)-c.goroutines*c.hold, s.slots)
			}
			if w := s.steals.Load(); uint32(w) != 0 {
				t.Fatalf("steal word %#x after the run: %d steals still in progress", w, uint32(w))
			}
			got := s.drainAll(t, func(int) int { return 0 })
			if len(got) != int(s.slots) {
				t.Fatalf("after the run %d slots can be popped, want %d", len(got), s.slots)
			}
			if u := s.Untouched(); u != 0 {
				t.Fatalf("Untouched() = %d after every slot was popped", u)
			}
			for h := 0; h < n; h++ {
				if idx, src, ok := s.popQuiet(t, h); ok {
					t.Fatalf("Pop(%d) = (%d, %v) after every slot was popped", h, idx, src)
				}
			}
		})
	}
}

// 2, deterministic: on a quiet Set, when every slot is out Pop from every
// home reports empty (not Busy); when exactly one slot is free, on any
// shard's list, Pop from every home finds it. Rounds push the slots back in
// different ways (all onto one shard for long whole-list steals, spread,
// onto another part) and drain them from rotating homes; the steal word has
// no steal in progress after each.
func TestReviewEmptyIsExactWhenQuiet(t *testing.T) {
	layouts := [][]Part{
		{{Slots: 1, Shards: 1, Node: -1}},
		{{Slots: 3, Shards: 5, Node: -1}},
		{{Slots: 70, Shards: 2, Node: -1}},
		{{Slots: 100, Shards: 4, Node: -1}},
		{{Slots: 5, Shards: 2, Node: 0}, {Slots: 3, Shards: 1, Node: 1}},
		{{Slots: 40, Shards: 2, Node: 0}, {Slots: 0, Shards: 1, Node: 1}, {Slots: 90, Shards: 3, Node: 2}},
	}
	for li, parts := range layouts {
		for _, flag := range []uint32{0, 1 << 31} {
			t.Run(fmt.Sprintf("layout=%d/flag=%#x", li, flag), func(t *testing.T) {
				s := rvLayout(parts, flag)
				n := s.Len()
				rng := rand.New(rand.NewPCG(uint64(li), 3))
				checkEmpty := func(when string) {
					t.Helper()
					for h := 0; h < 3*n; h++ {
						if idx, src, ok := s.popQuiet(t, s.Of(h)); ok {
							t.Fatalf("%s: Pop(%d) = (%d, %v) with every slot out", when, s.Of(h), idx, src)
						}
					}
					if w := s.steals.Load(); uint32(w) != 0 {
						t.Fatalf("%s: steal word %#x, a steal still in progress", when, w)
					}
				}
				got := s.drainAll(t, func(i int) int { return s.Of(i * 5) })
				if len(got) != int(s.slots) {
					t.Fatalf("drained %d of %d", len(got), s.slots)
				}
				checkEmpty("first drain")
				// One free slot on each shard's list in turn: every home finds it.
				if len(got) > 0 {
					idx := got[0]
					for k := 0; k < n; k++ {
						for h := 0; h < n; h++ {
							s.Push(k, idx)
							again, src, ok := s.popQuiet(t, h)
							if !ok || again != idx {
								t.Fatalf("slot %d on shard %d's list: Pop(%d) = (%d, %v, %v), want it", idx, k, h, again, src, ok)
							}
						}
					}
				}
				checkEmpty("single slot moves")
				for round := 0; round < 6; round++ {
					switch round % 3 {
					case 0: // everything onto one shard
						k := rng.IntN(n)
						for _, idx := range got {
							s.Push(k, idx)
						}
					case 1: // spread
						for _, idx := range got {
							s.Push(rng.IntN(n), idx)
						}
					case 2: // onto the last shard (the last part)
						for _, idx := range got {
							s.Push(n-1, idx)
						}
					}
					start := rng.IntN(n)
					got = s.drainAll(t, func(i int) int { return (start + i/7) % n })
					if len(got) != int(s.slots) {
						t.Fatalf("round %d: drained %d of %d", round, len(got), s.slots)
					}
					checkEmpty(fmt.Sprintf("round %d", round))
				}
			})
		}
	}
}

// 3 and 4 (and 5), white-box: stealList for every mix of victim list length
// (1, 2, 3, 40, stealKeep, stealKeep+1, 100) and thief list length (0:
// one-CAS install; 1, 5: the install takes the thief's list out and pushes
// it back on top). The caller gets the victim's top; the thief's list is
// what it held, then the rest of the victim's top stealKeep, in order; the
// victim keeps the rest of its chain, in order (empty up to stealKeep);
// each head's tag moved by exactly its CAS count (victim one, two with a
// give-back; thief none without a chain to adopt, else one, or two when it
// held a list); every link keeps the flag, and the chain's flagged 0 ends
// end both lists.
func TestReviewStealListChains(t *testing.T) {
	for _, flag := range []uint32{0, 1 << 31} {
		for _, vn := range []int{1, 2, 3, 40, stealKeep, stealKeep + 1, 100} {
			for _, tn := range []int{0, 1, 5} {
				t.Run(fmt.Sprintf("flag=%#x/victim=%d/thief=%d", flag, vn, tn), func(t *testing.T) {
					s := rvNew(128, 3, flag)
					all := s.drainAll(t, func(int) int { return 2 })
					if len(all) != 128 {
						t.Fatalf("drained %d of 128", len(all))
					}
					rng := rand.New(rand.NewPCG(uint64(vn), uint64(tn)))
					rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
					vic, thf := all[:vn], all[vn:vn+tn]
					for _, idx := range vic {
						s.Push(0, idx)
					}
					for _, idx := range thf {
						s.Push(1, idx)
					}
					// A stack: the last pushed is the top.
					rev := func(a []uint32) []uint32 {
						r := make([]uint32, len(a))
						for i, x := range a {
							r[len(a)-1-i] = x
						}
						return r
					}
					vlist, tlist := s.list(t, 0), s.list(t, 1)
					if !sameSeq(vlist, rev(vic)) || !sameSeq(tlist, rev(thf)) {
						t.Fatalf("setup: victim %v thief %v", vlist, tlist)
					}
					me, victim := &s.shards[1], &s.shards[0]
					vh, th := victim.head.Load(), me.head.Load()
					w := s.steals.Load()
					idx, ok := s.stealList(me, victim)
					if !ok || idx != vlist[0] {
						t.Fatalf("stealList = (%d, %v), want (%d, true): the victim's top", idx, ok, vlist[0])
					}
					vh2, th2 := victim.head.Load(), me.head.Load()
					// The victim keeps what lies past the top stealKeep:
					// one more CAS (giveBack) when there is any.
					kept := min(vn, stealKeep)
					if vn <= stealKeep {
						if uint32(vh2) != 0 || tagOf(vh2) != tagOf(vh)+1 {
							t.Fatalf("victim head %#x -> %#x, want empty with the tag bumped once", vh, vh2)
						}
					} else if tagOf(vh2) != tagOf(vh)+2 {
						t.Fatalf("victim head %#x -> %#x, want the tag bumped twice (steal, give back)", vh, vh2)
					}
					// One CAS installs the rest of the chain; when the
					// thief's list was not empty, one more puts what it
					// held back on top.
					wantThiefCAS := uint32(0)
					if vn > 1 {
						wantThiefCAS = 1
						if tn > 0 {
							wantThiefCAS = 2
						}
					}
					if tagOf(th2) != tagOf(th)+wantThiefCAS {
						t.Fatalf("thief head %#x -> %#x, want its tag bumped %d time(s)", th, th2, wantThiefCAS)
					}
					if s.steals.Load() != w {
						t.Fatalf("stealList touched the steal word: %#x -> %#x", w, s.steals.Load())
					}
					want := append(append([]uint32{}, tlist...), vlist[1:kept]...)
					if got := s.list(t, 1); !sameSeq(got, want) {
						t.Fatalf("thief's list after the steal %v, want %v", got, want)
					}
					if got := s.list(t, 0); !sameSeq(got, vlist[kept:]) {
						t.Fatalf("victim's list after the steal %v, want %v", got, vlist[kept:])
					}
					// The victim's home pops what it kept, in order; the
					// thief's home then gets the rest.
					for i, wi := range vlist[kept:] {
						got, src, ok := s.popQuiet(t, 0)
						if !ok || got != wi || src != FromList {
							t.Fatalf("pop %d on the victim's home: (%d, %v, %v), want (%d, FromList)", i, got, src, ok, wi)
						}
					}
					// And through the public API: the thief's home pops them
					// in that order, then everything is out.
					for i, wi := range want {
						got, src, ok := s.popQuiet(t, 1)
						if !ok || got != wi || src != FromList {
							t.Fatalf("pop %d on the thief's home: (%d, %v, %v), want (%d, FromList)", i, got, src, ok, wi)
						}
					}
					for h := 0; h < 3; h++ {
						if got, src, ok := s.popQuiet(t, h); ok {
							t.Fatalf("Pop(%d) = (%d, %v) after every slot was taken", h, got, src)
						}
					}
				})
			}
		}
	}
}

// 3, concurrently: a Push onto the thief's shard races a direct stealList
// (so adoptChain installs the chain on an empty list or takes the pushed
// slot out and puts it back), and a popper on the thief's shard races both. Afterwards exactly the victim's
// chain plus the pushed slot are accounted for, each once.
func TestReviewStealListRacesPush(t *testing.T) {
	rounds := 3000
	if testing.Short() || raceEnabled {
		rounds = 600
	}
	s := rvNew(64, 2, 1<<31)
	all := s.drainAll(t, func(int) int { return 0 })
	rng := rand.New(rand.NewPCG(11, 12))
	var onTop, taken int
	for r := 0; r < rounds; r++ {
		rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
		k := 1 + rng.IntN(20)
		chain, x := all[:k], all[k]
		for _, idx := range chain {
			s.Push(0, idx)
		}
		me, victim := &s.shards[1], &s.shards[0]
		var start, ready atomic.Int32
		var popped uint32
		var poppedOK bool
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			ready.Add(1)
			for start.Load() == 0 {
				runtime.Gosched()
			}
			s.Push(1, x)
		}()
		go func() {
			defer wg.Done()
			ready.Add(1)
			for start.Load() == 0 {
				runtime.Gosched()
			}
			popped, poppedOK = s.popList(me)
		}()
		for ready.Load() != 2 {
			runtime.Gosched()
		}
		start.Store(1)
		top, ok := s.stealList(me, victim)
		wg.Wait()
		if !ok || top != chain[k-1] {
			t.Fatalf("round %d: stealList = (%d, %v), want (%d, true)", r, top, ok, chain[k-1])
		}
		rest := s.list(t, 1)
		// The pushed slot ends on top of the thief's list either way:
		// pushed after the install, or taken out by it and pushed back
		// (adoptChain never walks the stolen chain). Unless the racing
		// pop took it, it is there.
		for i, idx := range rest {
			if idx == x && i != 0 {
				t.Fatalf("round %d: the pushed slot %d is at depth %d of the thief's list %v, want the top", r, x, i, rest)
			}
		}
		if len(rest) > 0 && rest[0] == x {
			onTop++
		} else {
			taken++
		}
		seen := map[uint32]bool{top: true}
		for _, idx := range append(rest, s.list(t, 0)...) {
			if seen[idx] {
				t.Fatalf("round %d: index %d twice", r, idx)
			}
			seen[idx] = true
		}
		if poppedOK {
			if seen[popped] {
				t.Fatalf("round %d: the racing pop got %d, which is also on a list or stolen", r, popped)
			}
			seen[popped] = true
		}
		for _, idx := range append(chain, x) {
			if !seen[idx] {
				t.Fatalf("round %d: slot %d lost (chain %v, pushed %d, popped %d/%v, thief %v)", r, idx, chain, x, popped, poppedOK, rest)
			}
		}
		if len(seen) != k+1 {
			t.Fatalf("round %d: %d slots accounted for, want %d", r, len(seen), k+1)
		}
		// Take them all out again for the next round.
		for _, sh := range []int{0, 1} {
			for {
				if _, ok := s.popList(&s.shards[sh]); !ok {
					break
				}
			}
		}
	}
	t.Logf("%d rounds: the pushed slot on top of the thief's list %d times, taken by the racing pop %d times", rounds, onTop, taken)
}

// 4: every successful head CAS bumps the tag by exactly one (Push, popList,
// Detach, Reattach, stealList on both heads), and the tag still wraps.
// A popper that read the victim's head before the whole-list CAS fails its
// CAS even after the victim's head is back at the same index (the ABA case):
// the test recycles the victim's head to the stale index with as low a tag
// as it can reach, so that a steal that did not advance the tag would let
// the stale CAS through and put a slot on two lists.
func TestReviewTagsAndStalePopper(t *testing.T) {
	s := rvNew(16, 2, 1<<31)
	all := s.drainAll(t, func(int) int { return 0 })
	victim, me := &s.shards[0], &s.shards[1]
	step := func(what string, st *shardState, f func()) {
		t.Helper()
		before := st.head.Load()
		f()
		if after := st.head.Load(); tagOf(after) != tagOf(before)+1 {
			t.Fatalf("%s: head %#x -> %#x, want the tag bumped once", what, before, after)
		}
	}
	a, b, c, x := all[0], all[1], all[2], all[3]
	step("push c", victim, func() { s.Push(0, c) })
	step("push b", victim, func() { s.Push(0, b) })
	step("push a", victim, func() { s.Push(0, a) })
	step("popList", victim, func() {
		if got, ok := s.popList(victim); !ok || got != a {
			t.Fatalf("popList = (%d, %v), want %d", got, ok, a)
		}
	})
	step("push a again", victim, func() { s.Push(0, a) })
	var first uint32
	step("Detach", victim, func() {
		var ok bool
		if first, ok = s.Detach(0); !ok || first != a {
			t.Fatalf("Detach = (%d, %v), want %d", first, ok, a)
		}
	})
	step("Reattach", victim, func() { s.Reattach(0, a, c) })

	// A popper reads the victim's head and its top's link, then stalls.
	old := victim.head.Load()
	staleNext := s.loadLink(uint32(old) - 1)
	if uint32(old) != a+1 || staleNext != b+1 {
		t.Fatalf("victim head %#x, link %d: want a (%d) on top of b (%d)", old, staleNext, a, b)
	}
	var got uint32
	step("stealList on the victim", victim, func() {
		step("stealList on the thief", me, func() {
			var ok bool
			if got, ok = s.stealList(me, victim); !ok || got != a {
				t.Fatalf("stealList = (%d, %v), want %d", got, ok, a)
			}
		})
	})
	// The victim's owner recycles: the head goes back to a, with the lowest
	// tag reachable (toggling x while the tag is below the stale one).
	for tagOf(victim.head.Load())+1 < tagOf(old) {
		if uint32(victim.head.Load()) == 0 {
			s.Push(0, x)
		} else if _, ok := s.popList(victim); !ok {
			t.Fatal("toggle pop failed")
		}
	}
	s.Push(0, a)
	now := victim.head.Load()
	if uint32(now) != uint32(old) {
		t.Fatalf("victim head %#x: want index a again (ABA setup)", now)
	}
	if victim.head.CompareAndSwap(old, (old>>32+1)<<32|uint64(staleNext)) {
		t.Fatalf("a popper's stale CAS (%#x -> next %d) succeeded after the whole list was stolen: head was %#x; b (%d) is now on two lists", old, staleNext-1, now, b)
	}
	// Everything is still there exactly once: a (victim), b and c (thief),
	// maybe x (victim), the rest out.
	seen := map[uint32]int{}
	for _, sh := range []int{0, 1} {
		for _, idx := range s.list(t, sh) {
			seen[idx]++
		}
	}
	for _, idx := range []uint32{a, b, c} {
		if seen[idx] != 1 {
			t.Fatalf("slot %d on %d lists, want 1 (lists %v / %v)", idx, seen[idx], s.list(t, 0), s.list(t, 1))
		}
	}

	// Tag wrap: a victim whose tag is at its maximum is stolen from, and the
	// tag wraps to 0.
	for _, sh := range []int{0, 1} {
		for {
			if _, ok := s.popList(&s.shards[sh]); !ok {
				break
			}
		}
	}
	s.Push(0, c)
	s.Push(0, b)
	victim.head.Store(uint64(^uint32(0))<<32 | uint64(b+1))
	if got, ok := s.stealList(me, victim); !ok || got != b {
		t.Fatalf("stealList at the top tag = (%d, %v), want %d", got, ok, b)
	}
	if h := victim.head.Load(); h != 0 {
		t.Fatalf("victim head after the steal at tag 2^32-1: %#x, want tag 0, empty", h)
	}
	if l := s.list(t, 1); !sameSeq(l, []uint32{c}) {
		t.Fatalf("thief's list %v, want [%d]", l, c)
	}
}

// 6: a thief steals from its own part first, whole lists there and even a
// frontier before another part's list; across parts it takes StealBatch
// slots of a list (the rest stay on the victim) and StealBatch of a
// frontier.
func TestReviewCrossPartBatches(t *testing.T) {
	// Part 0: shards 0, 1 over [0, 100); part 1: shards 2, 3 over [100, 200);
	// part 2: shard 4 over [200, 300).
	s := rvLayout([]Part{{100, 2, 0}, {100, 2, 1}, {100, 1, 2}}, 1<<31)
	all := s.drainAll(t, func(int) int { return 0 })
	if len(all) != 300 {
		t.Fatalf("drained %d of 300", len(all))
	}
	var p0, p1 []uint32
	for _, idx := range all {
		switch {
		case idx < 100:
			p0 = append(p0, idx)
		case idx < 200:
			p1 = append(p1, idx)
		}
	}
	// 70 part-0 slots on shard 1's list, 40 part-1 slots on shard 3's (more
	// than StealBatch: in its own part a thief takes them all).
	for _, idx := range p0[:70] {
		s.Push(1, idx)
	}
	for _, idx := range p1[:40] {
		s.Push(3, idx)
	}
	own := s.list(t, 3)
	// Home 2 (part 1, empty): its own part's shard 3 first, whole list.
	for i, w := range own {
		idx, src, ok := s.popQuiet(t, 2)
		wantSrc := FromList
		if i == 0 {
			wantSrc = FromSteal
		}
		if !ok || idx != w || src != wantSrc {
			t.Fatalf("pop %d on home 2: (%d, %v, %v), want (%d, %v) from its own part", i, idx, src, ok, w, wantSrc)
		}
	}
	if l := len(s.list(t, 1)); l != 70 {
		t.Fatalf("shard 1 (another part) holds %d slots after home 2 stole from its own part, want 70", l)
	}
	// Then across: StealBatch at a time from shard 1's list (the top one
	// returned, the next StealBatch-1 onto home 2's list), leaving the rest.
	left := 70
	for left > 0 {
		batch := min(left, StealBatch)
		top := s.list(t, 1)[:batch]
		idx, src, ok := s.popQuiet(t, 2)
		if !ok || idx != top[0] || src != FromSteal {
			t.Fatalf("%d left on shard 1: Pop(2) = (%d, %v, %v), want (%d, FromSteal)", left, idx, src, ok, top[0])
		}
		if l := len(s.list(t, 1)); l != left-batch {
			t.Fatalf("a cross-part steal left %d of %d on the victim, want %d (a batch of %d)", l, left, left-batch, StealBatch)
		}
		rest := map[uint32]bool{}
		for _, idx := range top[1:] {
			rest[idx] = true
		}
		for i := 1; i < batch; i++ {
			idx, src, ok := s.popQuiet(t, 2)
			if !ok || !rest[idx] || src != FromList {
				t.Fatalf("%d left on shard 1, pop %d on home 2: (%d, %v, %v), want FromList one of %v", left, i, idx, src, ok, top[1:])
			}
			delete(rest, idx)
		}
		left -= batch
	}
	if idx, src, ok := s.popQuiet(t, 2); ok {
		t.Fatalf("Pop(2) = (%d, %v) with every slot out", idx, src)
	}

	// A frontier in its own part comes before a list in another part. Part
	// 0: shard 0 over [0, 10); part 1: shards 1, 2 over [10, 74), [74, 138).
	s2 := rvLayout([]Part{{10, 1, 0}, {128, 2, 1}}, 0)
	for i := 0; i < 10; i++ { // home 0 takes its part
		if _, _, ok := s2.popQuiet(t, 0); !ok {
			t.Fatal("setup pop")
		}
	}
	for i := 0; i < 64; i++ { // home 1 takes its range
		if _, _, ok := s2.popQuiet(t, 1); !ok {
			t.Fatal("setup pop")
		}
	}
	s2.Push(0, 3) // a list in part 0
	idx, src, ok := s2.popQuiet(t, 1)
	if !ok || src != FromSteal || idx != 74 {
		t.Fatalf("Pop(1) = (%d, %v, %v), want (74, FromSteal) from its own part's frontier", idx, src, ok)
	}
	if f := s2.shards[2].frontier.Load(); f != 74+StealBatch {
		t.Fatalf("own-part frontier at %d, want %d (one batch)", f, 74+StealBatch)
	}
	if l := s2.list(t, 0); !sameSeq(l, []uint32{3}) {
		t.Fatalf("part 0's list %v, want [3] untouched", l)
	}
	// A cross-part frontier steal takes StealBatch too: home 0 takes 3 from
	// its list, then (shard 1's list emptied) part 1's frontier.
	if idx, src, ok := s2.popQuiet(t, 0); !ok || idx != 3 || src != FromList {
		t.Fatalf("Pop(0) = (%d, %v, %v), want (3, FromList)", idx, src, ok)
	}
	for len(s2.list(t, 1)) > 0 {
		s2.popQuiet(t, 1)
	}
	if idx, src, ok := s2.popQuiet(t, 0); !ok || src != FromSteal || idx != 74+StealBatch {
		t.Fatalf("Pop(0) = (%d, %v, %v), want (%d, FromSteal) from part 1's frontier", idx, src, ok, 74+StealBatch)
	}
	if f := s2.shards[2].frontier.Load(); f != 138 {
		t.Fatalf("cross-part frontier steal left the frontier at %d, want 138 (a batch of %d)", f, StealBatch)
	}
	if l := len(s2.list(t, 0)); l != StealBatch-1 {
		t.Fatalf("home 0's list holds %d after a cross-part frontier steal, want %d", l, StealBatch-1)
	}
}

// A thief cuts a long chain (more than stealKeep) and gives the rest back
// while the victim's home pushes and pops on the same list: every slot is
// accounted for exactly once afterwards, on a list, stolen, or popped.
func TestStealListGiveBackRacesVictim(t *testing.T) {
	rounds := 2000
	if testing.Short() || raceEnabled {
		rounds = 400
	}
	const slots = 256
	s := rvNew(slots, 2, 1<<31)
	all := s.drainAll(t, func(int) int { return 0 })
	rng := rand.New(rand.NewPCG(21, 22))
	for r := 0; r < rounds; r++ {
		rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
		k := stealKeep + 1 + rng.IntN(slots-stealKeep-40)
		chain, extra := all[:k], all[k:k+1+rng.IntN(30)]
		for _, idx := range chain {
			s.Push(0, idx)
		}
		me, victim := &s.shards[1], &s.shards[0]
		var start, ready atomic.Int32
		var popped []uint32
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { // the victim's home frees
			defer wg.Done()
			ready.Add(1)
			for start.Load() == 0 {
				runtime.Gosched()
			}
			for _, idx := range extra {
				s.Push(0, idx)
			}
		}()
		go func() { // and allocates
			defer wg.Done()
			ready.Add(1)
			for start.Load() == 0 {
				runtime.Gosched()
			}
			for range 5 {
				if idx, ok := s.popList(victim); ok {
					popped = append(popped, idx)
				}
			}
		}()
		for ready.Load() != 2 {
			runtime.Gosched()
		}
		start.Store(1)
		s.steals.Add(1) // as stealFrom does: the steal is in progress
		top, ok := s.stealList(me, victim)
		s.steals.Add(stealDone - 1)
		wg.Wait()
		seen := map[uint32]bool{}
		add := func(where string, idx uint32) {
			if seen[idx] {
				t.Fatalf("round %d: index %d twice (%s)", r, idx, where)
			}
			seen[idx] = true
		}
		if ok {
			add("stolen", top)
		}
		thief := s.list(t, 1)
		if ok && len(thief) > stealKeep-1 {
			t.Fatalf("round %d: the thief kept %d slots besides the one returned, want at most %d", r, len(thief), stealKeep-1)
		}
		for _, idx := range thief {
			add("thief's list", idx)
		}
		for _, idx := range s.list(t, 0) {
			add("victim's list", idx)
		}
		for _, idx := range popped {
			add("popped", idx)
		}
		for _, idx := range append(append([]uint32{}, chain...), extra...) {
			if !seen[idx] {
				t.Fatalf("round %d: slot %d lost (chain of %d, %d pushed, %d popped)", r, idx, k, len(extra), len(popped))
			}
		}
		if len(seen) != k+len(extra) {
			t.Fatalf("round %d: %d slots accounted for, want %d", r, len(seen), k+len(extra))
		}
		for _, sh := range []int{0, 1} {
			for {
				if _, ok := s.popList(&s.shards[sh]); !ok {
					break
				}
			}
		}
	}
}
