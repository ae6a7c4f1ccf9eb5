package bench

import (
	"testing"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// cellaPool wraps an arena so the table-driven workloads can drive it like
// the peers. Its pair loops call Alloc and Free on the arena directly.
type cellaPool[T any] struct{ a *arena.Arena[T] }

// newCellaPool builds an arena of capacity slots; shards 0 means one per P.
func newCellaPool[T any](capacity, shards int) *cellaPool[T] {
	a, err := arena.New[T](arena.Config{Slots: capacity, Shards: shards})
	if err != nil {
		panic(err)
	}
	return &cellaPool[T]{a: a}
}

func (c *cellaPool[T]) get() (uint64, *T, bool) {
	t, p, err := c.a.Alloc()
	if err != nil {
		return 0, nil, false
	}
	return uint64(t), p, true
}

func (c *cellaPool[T]) put(h uint64, _ *T) {
	if err := c.a.Free(token.Token(h)); err != nil {
		panic(err)
	}
}

func (c *cellaPool[T]) pairs(n int) {
	a := c.a
	for i := 0; i < n; i++ {
		t, p, err := a.Alloc()
		if err != nil {
			panic(err)
		}
		stamp(p, uint64(i))
		if err := a.Free(t); err != nil {
			panic(err)
		}
	}
}

func (c *cellaPool[T]) pairsPB(pb *testing.PB) {
	a := c.a
	var i uint64
	for pb.Next() {
		t, p, err := a.Alloc()
		if err != nil {
			panic(err)
		}
		stamp(p, i)
		if err := a.Free(t); err != nil {
			panic(err)
		}
		i++
	}
}

func (c *cellaPool[T]) local() pool[T] { return c }

func (c *cellaPool[T]) close() {
	if err := c.a.Close(); err != nil {
		panic(err)
	}
}
