package bench

import (
	"sync"
	"testing"
)

// syncPool is sync.Pool used the usual way: Get, type-assert, reset, Put.
type syncPool[T any] struct{ p sync.Pool }

func newSyncPool[T any]() *syncPool[T] {
	s := &syncPool[T]{}
	s.p.New = func() any { return new(T) }
	return s
}

func (s *syncPool[T]) get() (uint64, *T, bool) {
	p := s.p.Get().(*T)
	zero(p)
	return 0, p, true
}

func (s *syncPool[T]) put(_ uint64, p *T) { s.p.Put(p) }

func (s *syncPool[T]) pairs(n int) {
	for i := 0; i < n; i++ {
		_, p, _ := s.get()
		stamp(p, uint64(i))
		s.put(0, p)
	}
}

func (s *syncPool[T]) pairsPB(pb *testing.PB) {
	var i uint64
	for pb.Next() {
		_, p, _ := s.get()
		stamp(p, i)
		s.put(0, p)
		i++
	}
}

func (s *syncPool[T]) local() pool[T] { return s }
func (s *syncPool[T]) close()         {}
