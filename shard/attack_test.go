package shard_test

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/cella-go/cella/shard"
)

// atkSet makes a Set over slots indices with its links in a Go slice.
func atkSet(slots uint32, shards int) (*shard.Set, []uint32) {
	links := make([]uint32, max(slots, 1))
	return shard.New(slots, shards, unsafe.Pointer(&links[0]), 4), links
}

// popAll pops from home until the Set says empty (retrying Busy) and
// returns what it got.
func popAll(t *testing.T, s *shard.Set, home func(i int) int, limit int) []uint32 {
	t.Helper()
	var got []uint32
	busy := 0
	for len(got) <= limit {
		idx, src, ok := s.Pop(home(len(got)))
		if ok {
			got = append(got, idx)
			continue
		}
		if src == shard.Busy {
			busy++
			if busy > 1000 {
				t.Fatal("Pop keeps reporting Busy on a Set nobody else touches")
			}
			continue
		}
		return got
	}
	t.Fatalf("popped more than %d slots", limit)
	return nil
}

// TestAttackExactCapacity: for any shard count (more shards than slots
// included), one caller pops exactly slots distinct indices in [0, slots),
// then Pop reports empty (not Busy); after pushing them back onto arbitrary
// shards it pops exactly slots again.
func TestAttackExactCapacity(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, slots := range []uint32{1, 2, 3, 31, 32, 33, 64, 65, 100, 1000} {
		for _, shards := range []int{1, 2, 3, 7, 32, 33, 64, int(slots), int(slots) + 1, 2*int(slots) + 3} {
			t.Run(fmt.Sprintf("slots=%d/shards=%d", slots, shards), func(t *testing.T) {
				s, links := atkSet(slots, shards)
				defer runtime.KeepAlive(links)
				if s.Len() != shards || s.Parts() != 1 || s.Untouched() != uint64(slots) {
					t.Fatalf("Len %d Parts %d Untouched %d", s.Len(), s.Parts(), s.Untouched())
				}
				var next uint32
				for sh := 0; sh < shards; sh++ {
					a, b := s.Range(sh)
					if a != next || b < a {
						t.Fatalf("shard %d range [%d,%d), want start %d", sh, a, b, next)
					}
					next = b
					if s.PartOf(sh) != 0 || s.Of(sh) != sh {
						t.Fatalf("PartOf/Of(%d)", sh)
					}
				}
				if next != slots {
					t.Fatalf("ranges cover %d of %d", next, slots)
				}
				for _, p := range []int{shards, shards + 1, 5 * shards, 1<<20 + 3} {
					if o := s.Of(p); o < 0 || o >= shards {
						t.Fatalf("Of(%d) = %d with %d shards", p, o, shards)
					}
				}
				for round := range 3 {
					home := func(i int) int { return (i*7 + round) % shards }
					if round == 2 {
						home = func(int) int { return r.IntN(shards) }
					}
					got := popAll(t, s, home, int(slots))
					if len(got) != int(slots) {
						t.Fatalf("round %d: popped %d of %d", round, len(got), slots)
					}
					seen := make([]bool, slots)
					for _, idx := range got {
						if idx >= slots || seen[idx] {
							t.Fatalf("round %d: index %d out of range or twice", round, idx)
						}
						seen[idx] = true
					}
					if s.Untouched() != 0 {
						t.Fatalf("Untouched %d after every slot was handed out", s.Untouched())
					}
					for _, h := range []int{0, shards - 1} {
						if _, src, ok := s.Pop(h); ok || src == shard.Busy {
							t.Fatalf("Pop on a quiet empty Set: ok %v src %v", ok, src)
						}
					}
					for _, idx := range got {
						s.Push(r.IntN(shards), idx)
					}
				}
			})
		}
	}
}

// TestAttackLayoutSteal: a thief drains its own part before it crosses, and
// crosses in the order OrderParts sets.
func TestAttackLayoutSteal(t *testing.T) {
	links := make([]uint32, 12)
	parts := []shard.Part{{Slots: 5, Shards: 2, Node: 0}, {Slots: 0, Shards: 1, Node: 1}, {Slots: 3, Shards: 1, Node: 2}, {Slots: 4, Shards: 3, Node: 3}}
	s := shard.NewLayout(parts, unsafe.Pointer(&links[0]), 4)
	// From part 0, visit part 3 before part 2 (and part 1, which is empty).
	s.OrderParts(func(i, a, b int) bool { return a > b })
	if s.Parts() != 4 || s.Len() != 7 {
		t.Fatalf("Parts %d Len %d", s.Parts(), s.Len())
	}
	for i, want := range [][3]int{{0, 2, 0}, {2, 1, 1}, {3, 1, 2}, {4, 3, 3}} {
		f, c, n := s.PartShards(i)
		if f != want[0] || c != want[1] || n != want[2] {
			t.Fatalf("PartShards(%d) = %d,%d,%d", i, f, c, n)
		}
	}
	var got []uint32
	for {
		idx, src, ok := s.Pop(0)
		if !ok {
			if src == shard.Busy {
				continue
			}
			break
		}
		got = append(got, idx)
	}
	if len(got) != 12 {
		t.Fatalf("popped %d of 12: %v", len(got), got)
	}
	for i, idx := range got {
		var wantLo, wantHi uint32
		switch {
		case i < 5:
			wantLo, wantHi = 0, 5 // own part first
		case i < 9:
			wantLo, wantHi = 8, 12 // then part 3 (OrderParts)
		default:
			wantLo, wantHi = 5, 8 // then part 2
		}
		if idx < wantLo || idx >= wantHi {
			t.Fatalf("pop %d took index %d, want in [%d,%d): order %v", i, idx, wantLo, wantHi, got)
		}
	}
}

// TestAttackNeverFalseEmpty: with more slots than callers can hold at once,
// a free slot exists at every instant, so Pop must never report empty
// (ok false without Busy), however slots move between shards.
func TestAttackNeverFalseEmpty(t *testing.T) {
	for _, cfg := range []struct {
		shards, workers int
	}{{2, 3}, {4, 3}, {8, 5}, {3, 2}} {
		t.Run(fmt.Sprintf("shards=%d/workers=%d", cfg.shards, cfg.workers), func(t *testing.T) {
			slots := uint32(cfg.workers + 1)
			s, links := atkSet(slots, cfg.shards)
			defer runtime.KeepAlive(links)
			var falseEmpty, pops, busy atomic.Int64
			deadline := time.Now().Add(300 * time.Millisecond)
			var wg sync.WaitGroup
			for w := range cfg.workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(w), 9))
					for i := 0; ; i++ {
						if i%256 == 0 && time.Now().After(deadline) {
							return
						}
						home := r.IntN(cfg.shards)
						idx, src, ok := s.Pop(home)
						if !ok {
							if src == shard.Busy {
								busy.Add(1)
								runtime.Gosched()
								continue
							}
							falseEmpty.Add(1)
							continue
						}
						pops.Add(1)
						if r.IntN(4) == 0 {
							runtime.Gosched()
						}
						s.Push(r.IntN(cfg.shards), idx)
					}
				}()
			}
			wg.Wait()
			if n := falseEmpty.Load(); n != 0 {
				t.Fatalf("Pop reported empty %d times (of %d pops, %d Busy) although at most %d of %d slots were ever held",
					n, pops.Load(), busy.Load(), cfg.workers, slots)
			}
			got := popAll(t, s, func(i int) int { return i % cfg.shards }, int(slots))
			if len(got) != int(slots) {
				t.Fatalf("after the churn %d of %d slots could be popped: slots lost", len(got), slots)
			}
			t.Logf("%d pops, %d Busy", pops.Load(), busy.Load())
		})
	}
}

// TestAttackDetachReattach: slots in Detach's hands make Pop report Busy,
// not empty; Reattach gives them back; a Detach of an empty list ends its
// steal at once.
func TestAttackDetachReattach(t *testing.T) {
	s, links := atkSet(8, 2)
	defer runtime.KeepAlive(links)
	s.SetLinkFlag(1 << 31)
	got := popAll(t, s, func(int) int { return 0 }, 8)
	if len(got) != 8 {
		t.Fatalf("popped %d", len(got))
	}
	for _, idx := range got[:5] {
		s.Push(1, idx)
	}
	for _, idx := range got[5:] {
		s.Push(0, idx)
	}
	first, ok := s.Detach(1)
	if !ok {
		t.Fatal("Detach of a non-empty list")
	}
	chain := []uint32{first}
	last := first
	for {
		n, ok := s.Next(last)
		if !ok {
			break
		}
		chain = append(chain, n)
		last = n
	}
	if len(chain) != 5 {
		t.Fatalf("chain %v", chain)
	}
	for _, idx := range chain {
		if links[idx]&(1<<31) == 0 && idx != last {
			t.Fatalf("link of %d (%#x) lacks the link flag", idx, links[idx])
		}
	}
	// Take the other three, then Pop must say Busy (slots are in Detach's hands).
	for range 3 {
		if _, _, ok := s.Pop(0); !ok {
			t.Fatal("Pop of a free slot failed")
		}
	}
	if _, src, ok := s.Pop(0); ok || src != shard.Busy {
		t.Fatalf("Pop while 5 slots are detached: ok %v src %v, want Busy", ok, src)
	}
	s.Reattach(1, first, last)
	again := popAll(t, s, func(int) int { return 0 }, 8)
	if len(again) != 5 {
		t.Fatalf("after Reattach popped %d, want 5", len(again))
	}
	if _, ok := s.Detach(0); ok {
		t.Fatal("Detach of an empty list")
	}
	if _, src, ok := s.Pop(1); ok || src == shard.Busy {
		t.Fatalf("empty Set after an empty Detach: ok %v src %v, want exact empty", ok, src)
	}
}

// TestAttackGate: Close waits for a section in progress, later Enters fail,
// a second Close returns false at once, EnterAny still works.
func TestAttackGate(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("needs two Ps")
	}
	var g shard.Gate
	g.Init()
	if g.Closed() {
		t.Fatal("a fresh gate is closed")
	}
	p, ok := g.Enter()
	if !ok || p < 0 {
		t.Fatal("Enter on an open gate")
	}
	g.Exit(p)
	g.Quiesce()

	var entered, done atomic.Bool
	go func() {
		p, ok := g.Enter()
		if !ok {
			return
		}
		entered.Store(true)
		// A short pinned busy loop, no blocking.
		x := uint64(1)
		for i := 0; i < 20_000_000; i++ {
			x = x*6364136223846793005 + 1442695040888963407
		}
		if x == 0 {
			panic("impossible")
		}
		done.Store(true)
		g.Exit(p)
	}()
	for !entered.Load() {
		runtime.Gosched()
	}
	if !g.Close() {
		t.Fatal("first Close returned false")
	}
	if !done.Load() {
		t.Fatal("Close returned while a section that entered before it was still running")
	}
	if !g.Closed() {
		t.Fatal("Closed false after Close")
	}
	if _, ok := g.Enter(); ok {
		t.Fatal("Enter succeeded on a closed gate")
	}
	if g.Close() {
		t.Fatal("second Close returned true")
	}
	q := g.EnterAny()
	g.Exit(q)
}

// TestAttackMaxSlots: a Set of MaxSlots indices hands out the last index
// and never one beyond.
func TestAttackMaxSlots(t *testing.T) {
	// One shard, popped from its frontier only: no link is read or written,
	// so one word stands in for the 16 GiB of links.
	var link uint32
	s := shard.New(shard.MaxSlots, 1, unsafe.Pointer(&link), 0)
	a, b := s.Range(0)
	if a != 0 || b != shard.MaxSlots {
		t.Fatalf("Range = [%d,%d)", a, b)
	}
	idx, src, ok := s.Pop(0)
	if !ok || idx != 0 || src != shard.FromFresh {
		t.Fatalf("first Pop = %d %v %v", idx, src, ok)
	}
	if s.Untouched() != shard.MaxSlots-1 {
		t.Fatalf("Untouched = %d", s.Untouched())
	}
}
