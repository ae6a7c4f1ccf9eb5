package shard_test

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cella-go/cella/shard"
)

func newLayout(t *testing.T, parts []shard.Part) *shard.Set {
	t.Helper()
	var slots int
	for _, p := range parts {
		slots += int(p.Slots)
	}
	mem, err := unix.Mmap(-1, 0, max(slots*4, 4), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	return shard.NewLayout(parts, unsafe.Pointer(&mem[0]), 4)
}

func TestLayoutRangesFollowParts(t *testing.T) {
	s := newLayout(t, []shard.Part{{Slots: 10, Shards: 2, Node: 0}, {Slots: 7, Shards: 3, Node: 1}})
	if s.Len() != 5 || s.Parts() != 2 {
		t.Fatalf("Len=%d Parts=%d", s.Len(), s.Parts())
	}
	want := [][2]uint32{{0, 5}, {5, 10}, {10, 13}, {13, 15}, {15, 17}}
	for i, w := range want {
		lo, hi := s.Range(i)
		if lo != w[0] || hi != w[1] {
			t.Fatalf("shard %d range [%d,%d), want %v", i, lo, hi, w)
		}
		wantPart := 0
		if i >= 2 {
			wantPart = 1
		}
		if s.PartOf(i) != wantPart {
			t.Fatalf("shard %d in part %d", i, s.PartOf(i))
		}
	}
	first, count, node := s.PartShards(1)
	if first != 2 || count != 3 || node != 1 {
		t.Fatalf("PartShards(1) = %d,%d,%d", first, count, node)
	}
}

// A thief drains every shard of its own part before it crosses to another
// part, and crosses only then.
func TestLayoutStealsWithinPartFirst(t *testing.T) {
	s := newLayout(t, []shard.Part{{Slots: 8, Shards: 2, Node: 0}, {Slots: 8, Shards: 2, Node: 1}})
	partOf := func(idx uint32) int {
		if idx < 8 {
			return 0
		}
		return 1
	}
	for i := 0; i < 8; i++ { // home shard 0: its own 4, then shard 1's 4
		idx, _, ok := s.Pop(0)
		if !ok || partOf(idx) != 0 {
			t.Fatalf("pop %d: idx %d ok %v, want part 0 while part 0 has slots", i, idx, ok)
		}
	}
	for i := 0; i < 8; i++ { // now part 0 is empty: cross to part 1
		idx, src, ok := s.Pop(0)
		if !ok || partOf(idx) != 1 {
			t.Fatalf("pop %d: idx %d ok %v, want part 1", i, idx, ok)
		}
		if i == 0 && src != shard.FromSteal {
			t.Fatalf("crossing parts must be a steal, got %v", src)
		}
	}
	if _, _, ok := s.Pop(0); ok {
		t.Fatal("all 16 taken, Pop must fail")
	}
}

// Once its own part is dry, a thief visits the other parts in the order
// OrderParts gave (nearest node first), not in index order.
func TestLayoutCrossPartOrder(t *testing.T) {
	parts := []shard.Part{{Slots: 2, Shards: 1, Node: 0}, {Slots: 2, Shards: 1, Node: 1}, {Slots: 2, Shards: 1, Node: 2}}
	s := newLayout(t, parts)
	dist := [3][3]int{{10, 30, 20}, {30, 10, 20}, {20, 20, 10}}
	s.OrderParts(func(i, a, b int) bool { return dist[i][a] < dist[i][b] })
	partOf := func(idx uint32) uint32 { return idx / 2 }
	var got []uint32
	for i := 0; i < 6; i++ {
		idx, _, ok := s.Pop(0)
		if !ok {
			t.Fatalf("pop %d failed", i)
		}
		got = append(got, partOf(idx))
	}
	want := []uint32{0, 0, 2, 2, 1, 1} // node 2 (distance 20) before node 1 (30)
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("parts visited %v, want %v", got, want)
		}
	}
}

// A thief that crosses to another part takes StealBatch slots of the
// victim's freelist, not the whole list: the rest stay near their node.
func TestLayoutCrossPartStealsABatch(t *testing.T) {
	const per = 40 // more than one StealBatch, less than two
	s := newLayout(t, []shard.Part{{Slots: per, Shards: 1, Node: 0}, {Slots: per, Shards: 1, Node: 1}})
	var part0 []uint32
	for i := 0; i < 2*per; i++ { // home 0 takes everything, its part's first
		idx, _, ok := s.Pop(0)
		if !ok {
			t.Fatalf("pop %d of %d failed", i, 2*per)
		}
		if idx < per {
			part0 = append(part0, idx)
		}
	}
	for _, idx := range part0 {
		s.Push(0, idx)
	}
	want := []shard.Source{shard.FromSteal}
	for j := 1; j < shard.StealBatch; j++ {
		want = append(want, shard.FromList)
	}
	want = append(want, shard.FromSteal)
	for j := 1; j < per-shard.StealBatch; j++ {
		want = append(want, shard.FromList)
	}
	seen := map[uint32]bool{}
	for i, w := range want {
		idx, src, ok := s.Pop(1)
		if !ok || src != w || idx >= per || seen[idx] {
			t.Fatalf("pop %d on part 1's home: (%d, %v, %v), want a fresh part-0 slot from %v", i, idx, src, ok, w)
		}
		seen[idx] = true
	}
	if idx, _, ok := s.Pop(1); ok {
		t.Fatalf("Pop(1) = %d after every free slot was taken", idx)
	}
}
