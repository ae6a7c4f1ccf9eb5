package bench

import (
	"sync"
	"testing"
)

// mutexPool is the freelist most Go code starts with: a preallocated []T and
// a slice of free indices behind one sync.Mutex.
type mutexPool[T any] struct {
	mu   sync.Mutex
	free []uint32
	data []T
}

func newMutexPool[T any](capacity int) *mutexPool[T] {
	m := &mutexPool[T]{data: make([]T, capacity), free: make([]uint32, capacity)}
	for i := range m.free {
		m.free[i] = uint32(capacity - 1 - i) // index 0 is handed out first
	}
	return m
}

func (m *mutexPool[T]) get() (uint64, *T, bool) {
	m.mu.Lock()
	n := len(m.free)
	if n == 0 {
		m.mu.Unlock()
		return 0, nil, false
	}
	i := m.free[n-1]
	m.free = m.free[:n-1]
	m.mu.Unlock()
	p := &m.data[i]
	zero(p)
	return uint64(i), p, true
}

func (m *mutexPool[T]) put(h uint64, _ *T) {
	m.mu.Lock()
	m.free = append(m.free, uint32(h))
	m.mu.Unlock()
}

func (m *mutexPool[T]) pairs(n int) {
	for i := 0; i < n; i++ {
		h, p, ok := m.get()
		if !ok {
			panic("mutex pool: empty")
		}
		stamp(p, uint64(i))
		m.put(h, p)
	}
}

func (m *mutexPool[T]) pairsPB(pb *testing.PB) {
	var i uint64
	for pb.Next() {
		h, p, ok := m.get()
		if !ok {
			panic("mutex pool: empty")
		}
		stamp(p, i)
		m.put(h, p)
		i++
	}
}

func (m *mutexPool[T]) local() pool[T] { return m }
func (m *mutexPool[T]) close()         {}
