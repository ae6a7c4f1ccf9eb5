package bench

import (
	"testing"
	"unsafe"
)

// heapRingBytes is how much each heap ring keeps alive. The heap peer
// allocates with new(T) and "frees" by dropping the object into a ring that
// overwrites its oldest entry, so the GC always has a live set to mark and a
// steady stream of garbage to sweep: its cost is part of the figure, as it is
// for a real program. 8 MiB per ring keeps the live heap above the runtime's
// 4 MiB minimum heap goal, so GC cycles run at the GOGC pace of a real
// program rather than at the minimum-heap pace.
const heapRingBytes = 8 << 20

// heapPool allocates every object with new(T). Each goroutine gets its own
// ring (see local), so there is no shared state between goroutines.
type heapPool[T any] struct {
	ring []*T
	pos  int
}

func newHeapPool[T any]() *heapPool[T] {
	var z T
	n := heapRingBytes / int(unsafe.Sizeof(z))
	if n < 64 {
		n = 64
	}
	return &heapPool[T]{ring: make([]*T, n)}
}

func (h *heapPool[T]) get() (uint64, *T, bool) { return 0, new(T), true }

func (h *heapPool[T]) put(_ uint64, p *T) {
	h.ring[h.pos] = p
	h.pos++
	if h.pos == len(h.ring) {
		h.pos = 0
	}
}

func (h *heapPool[T]) pairs(n int) {
	for i := 0; i < n; i++ {
		_, p, _ := h.get()
		stamp(p, uint64(i))
		h.put(0, p)
	}
}

func (h *heapPool[T]) pairsPB(pb *testing.PB) {
	l := newHeapPool[T]()
	var i uint64
	for pb.Next() {
		_, p, _ := l.get()
		stamp(p, i)
		l.put(0, p)
		i++
	}
}

func (h *heapPool[T]) local() pool[T] { return newHeapPool[T]() }
func (h *heapPool[T]) close()         { clear(h.ring) }
