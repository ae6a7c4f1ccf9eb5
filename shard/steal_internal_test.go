package shard

import (
	"runtime"
	"testing"
	"unsafe"
)

// stealList hands the victim's chain to a thief whose list is no longer
// empty (a Push landed after its home looked dry): the chain becomes the
// list and what had landed goes back on top of it, and nothing is lost.
func TestStealListOntoNonEmptyList(t *testing.T) {
	links := make([]uint32, 16)
	s := New(16, 2, unsafe.Pointer(&links[0]), 4)
	for i := 0; i < 16; i++ {
		if _, _, ok := s.Pop(0); !ok {
			t.Fatalf("pop %d of 16 failed", i)
		}
	}
	for _, idx := range []uint32{0, 1, 2, 3, 4} {
		s.Push(0, idx)
	}
	for _, idx := range []uint32{10, 11} {
		s.Push(1, idx)
	}
	me, victim := &s.shards[1], &s.shards[0]
	idx, ok := s.stealList(me, victim)
	if !ok || idx != 4 {
		t.Fatalf("stealList = (%d, %v), want (4, true): the victim's top", idx, ok)
	}
	if _, ok := s.popList(victim); ok {
		t.Fatal("the victim still has a list after its whole list was taken")
	}
	want := []uint32{11, 10, 3, 2, 1, 0}
	for i, w := range want {
		got, ok := s.popList(me)
		if !ok || got != w {
			t.Fatalf("pop %d from the thief: (%d, %v), want %d", i, got, ok, w)
		}
	}
	if got, ok := s.popList(me); ok {
		t.Fatalf("the thief's list holds %d past the %d slots it was given", got, len(want))
	}
	runtime.KeepAlive(links)
}

// stealList onto an empty list installs the chain with one CAS and leaves
// its last link at the end of the list.
func TestStealListOntoEmptyList(t *testing.T) {
	links := make([]uint32, 16)
	s := New(16, 2, unsafe.Pointer(&links[0]), 4)
	for i := 0; i < 16; i++ {
		if _, _, ok := s.Pop(0); !ok {
			t.Fatalf("pop %d of 16 failed", i)
		}
	}
	for _, idx := range []uint32{5, 6, 7} {
		s.Push(0, idx)
	}
	me, victim := &s.shards[1], &s.shards[0]
	before := me.head.Load() >> 32
	if idx, ok := s.stealList(me, victim); !ok || idx != 7 {
		t.Fatalf("stealList = (%d, %v), want (7, true)", idx, ok)
	}
	if tag := me.head.Load() >> 32; tag != before+1 {
		t.Fatalf("thief's tag went %d -> %d, want one CAS", before, tag)
	}
	for i, w := range []uint32{6, 5} {
		if got, ok := s.popList(me); !ok || got != w {
			t.Fatalf("pop %d from the thief: (%d, %v), want %d", i, got, ok, w)
		}
	}
	if got, ok := s.popList(me); ok {
		t.Fatalf("the thief's list holds %d past the chain's end", got)
	}
	runtime.KeepAlive(links)
}

// stealWhole takes a long list whole, without walking it: the thief gets
// every slot, in the victim's order, with one CAS on each head; onto a
// list that a Push reached meanwhile, what had landed stays on top.
func TestStealWhole(t *testing.T) {
	for _, landed := range [][]uint32{nil, {200, 201}} {
		links := make([]uint32, 256)
		s := New(256, 2, unsafe.Pointer(&links[0]), 4)
		for i := 0; i < 256; i++ {
			if _, _, ok := s.Pop(0); !ok {
				t.Fatalf("pop %d of 256 failed", i)
			}
		}
		var pushed []uint32
		for idx := uint32(0); idx < 3*stealKeep; idx++ {
			s.Push(0, idx)
			pushed = append(pushed, idx)
		}
		for _, idx := range landed {
			s.Push(1, idx)
		}
		me, victim := &s.shards[1], &s.shards[0]
		vtag, mtag, w0 := victim.head.Load()>>32, me.head.Load()>>32, s.steals.Load()
		idx, ok := s.stealWhole(me, victim)
		if top := pushed[len(pushed)-1]; !ok || idx != top {
			t.Fatalf("landed %v: stealWhole = (%d, %v), want (%d, true): the victim's top", landed, idx, ok, top)
		}
		if got := victim.head.Load(); uint32(got) != 0 || got>>32 != vtag+1 {
			t.Fatalf("landed %v: victim head %#x, want empty after one CAS (tag %d)", landed, got, vtag+1)
		}
		if len(landed) == 0 && me.head.Load()>>32 != mtag+1 {
			t.Fatalf("thief's tag went %d -> %d, want one CAS", mtag, me.head.Load()>>32)
		}
		var want []uint32
		for i := len(landed) - 1; i >= 0; i-- {
			want = append(want, landed[i])
		}
		for i := len(pushed) - 2; i >= 0; i-- {
			want = append(want, pushed[i])
		}
		for i, w := range want {
			if got, ok := s.popList(me); !ok || got != w {
				t.Fatalf("landed %v: pop %d from the thief: (%d, %v), want %d", landed, i, got, ok, w)
			}
		}
		if got, ok := s.popList(me); ok {
			t.Fatalf("landed %v: the thief's list holds %d past the %d slots it was given", landed, got, len(want))
		}
		if w := s.steals.Load(); w != w0 {
			t.Fatalf("stealWhole touched the steal word (its caller's job): %#x -> %#x", w0, w)
		}
		runtime.KeepAlive(links)
	}
}

// giveBack lands a cut-off chain under what was pushed onto the victim
// since the steal: the new pushes stay on top, in their order, then the
// chain, and nothing else; the victim's tag moves once per CAS.
func TestGiveBackUnderPushes(t *testing.T) {
	links := make([]uint32, 16)
	s := New(16, 2, unsafe.Pointer(&links[0]), 4)
	for i := 0; i < 16; i++ {
		if _, _, ok := s.Pop(0); !ok {
			t.Fatalf("pop %d of 16 failed", i)
		}
	}
	// The chain 3 → 2 → 1 → 0, taken off shard 0's list.
	for _, idx := range []uint32{0, 1, 2, 3} {
		s.Push(0, idx)
	}
	victim := &s.shards[0]
	first, ok := s.Detach(0)
	if !ok || first != 3 {
		t.Fatalf("Detach = (%d, %v), want (3, true)", first, ok)
	}
	// Pushes land meanwhile.
	for _, idx := range []uint32{8, 9} {
		s.Push(0, idx)
	}
	before := victim.head.Load() >> 32
	s.giveBack(victim, first)
	if tag := victim.head.Load() >> 32; tag != before+2 {
		t.Fatalf("victim's tag went %d -> %d, want two CASes (take the pushes out, land the chain)", before, tag)
	}
	s.steals.Add(stealDone - 1) // end the steal Detach began
	for i, w := range []uint32{9, 8, 3, 2, 1, 0} {
		if got, ok := s.popList(victim); !ok || got != w {
			t.Fatalf("pop %d from the victim: (%d, %v), want %d", i, got, ok, w)
		}
	}
	if got, ok := s.popList(victim); ok {
		t.Fatalf("the victim's list holds %d past the chain's end", got)
	}
	// Onto an empty list: one CAS.
	for _, idx := range []uint32{4, 5} {
		s.Push(0, idx)
	}
	first, _ = s.Detach(0)
	before = victim.head.Load() >> 32
	s.giveBack(victim, first)
	s.steals.Add(stealDone - 1)
	if tag := victim.head.Load() >> 32; tag != before+1 {
		t.Fatalf("victim's tag went %d -> %d, want one CAS", before, tag)
	}
	for i, w := range []uint32{5, 4} {
		if got, ok := s.popList(victim); !ok || got != w {
			t.Fatalf("pop %d from the victim: (%d, %v), want %d", i, got, ok, w)
		}
	}
	runtime.KeepAlive(links)
}
