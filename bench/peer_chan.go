package bench

import "testing"

// chanPool is a freelist kept in a buffered channel of indices: receive to
// allocate, send to free. Preallocated []T, like mutexPool.
type chanPool[T any] struct {
	free chan uint32
	data []T
}

func newChanPool[T any](capacity int) *chanPool[T] {
	c := &chanPool[T]{data: make([]T, capacity), free: make(chan uint32, capacity)}
	for i := 0; i < capacity; i++ {
		c.free <- uint32(i)
	}
	return c
}

func (c *chanPool[T]) get() (uint64, *T, bool) {
	select {
	case i := <-c.free:
		p := &c.data[i]
		zero(p)
		return uint64(i), p, true
	default:
		return 0, nil, false
	}
}

func (c *chanPool[T]) put(h uint64, _ *T) { c.free <- uint32(h) }

// The pair loops use a plain blocking receive, the way the idiom is
// usually written; get's select only serves workloads that may run dry.

func (c *chanPool[T]) pairs(n int) {
	for i := 0; i < n; i++ {
		h := <-c.free
		p := &c.data[h]
		zero(p)
		stamp(p, uint64(i))
		c.free <- h
	}
}

func (c *chanPool[T]) pairsPB(pb *testing.PB) {
	var i uint64
	for pb.Next() {
		h := <-c.free
		p := &c.data[h]
		zero(p)
		stamp(p, i)
		c.free <- h
		i++
	}
}

func (c *chanPool[T]) local() pool[T] { return c }
func (c *chanPool[T]) close()         {}
