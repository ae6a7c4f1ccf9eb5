package bench

import (
	"sync/atomic"
	"testing"
)

// treiberPool is ONE shared lock-free LIFO freelist (a Treiber stack) over a
// preallocated []T: the design of a single global freelist that cella's
// per-P shards replace.
//
// The head is one 64-bit word: the high 32 bits are a tag bumped by every
// successful CAS (so a head that was popped and pushed back in between does
// not fool a stale CAS: the ABA problem), the low 32 bits are index+1 of the
// top slot (0 = empty). Links live in next, one uint32 per slot, holding
// index+1 of the slot below. Links are read and written atomically: a popper
// may read the link of a slot another goroutine has just pushed back.
type treiberPool[T any] struct {
	_    [64]byte
	head atomic.Uint64
	_    [56]byte
	next []uint32
	data []T
}

const treiberIdxMask = 1<<32 - 1

func newTreiberPool[T any](capacity int) *treiberPool[T] {
	if capacity <= 0 || uint64(capacity) >= treiberIdxMask {
		panic("treiber: bad capacity")
	}
	s := &treiberPool[T]{next: make([]uint32, capacity), data: make([]T, capacity)}
	// Chain 0 -> 1 -> ... -> capacity-1 so index 0 is popped first.
	for i := 0; i < capacity-1; i++ {
		s.next[i] = uint32(i + 2)
	}
	s.head.Store(1)
	return s
}

// pop takes the top index off the stack; ok is false when it is empty.
func (s *treiberPool[T]) pop() (uint32, bool) {
	for {
		h := s.head.Load()
		top := uint32(h & treiberIdxMask)
		if top == 0 {
			return 0, false
		}
		below := atomic.LoadUint32(&s.next[top-1])
		tag := h>>32 + 1
		if s.head.CompareAndSwap(h, tag<<32|uint64(below)) {
			return top - 1, true
		}
	}
}

// push puts index i back on top.
func (s *treiberPool[T]) push(i uint32) {
	for {
		h := s.head.Load()
		atomic.StoreUint32(&s.next[i], uint32(h&treiberIdxMask))
		tag := h>>32 + 1
		if s.head.CompareAndSwap(h, tag<<32|uint64(i+1)) {
			return
		}
	}
}

func (s *treiberPool[T]) get() (uint64, *T, bool) {
	i, ok := s.pop()
	if !ok {
		return 0, nil, false
	}
	p := &s.data[i]
	zero(p)
	return uint64(i), p, true
}

func (s *treiberPool[T]) put(h uint64, _ *T) { s.push(uint32(h)) }

func (s *treiberPool[T]) pairs(n int) {
	for i := 0; i < n; i++ {
		h, p, ok := s.get()
		if !ok {
			panic("treiber: empty")
		}
		stamp(p, uint64(i))
		s.put(h, p)
	}
}

func (s *treiberPool[T]) pairsPB(pb *testing.PB) {
	var i uint64
	for pb.Next() {
		h, p, ok := s.get()
		if !ok {
			panic("treiber: empty")
		}
		stamp(p, i)
		s.put(h, p)
		i++
	}
}

func (s *treiberPool[T]) local() pool[T] { return s }
func (s *treiberPool[T]) close()         {}
