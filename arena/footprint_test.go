package arena_test

import (
	"runtime"
	"testing"
	"unsafe"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// freshBudget mirrors arena's: the slot memory a shard hands out never-used
// before it recycles slots freed onto other shards ahead of its own.
const freshBudget = 256 << 10

// A stream from a producer goroutine to a consumer goroutine that frees
// (the message store's pattern) reuses the slots it frees: the slots ever
// used stay within what is in flight plus each shard's fresh budget
// (256 KiB of slots, at least 64), whatever the capacity. Before the shards
// recycled other shards' frees ahead of their own never-used slots, a
// producer whose frees landed on the consumer's shard took a never-used
// slot whenever its own list was dry: 4 KiB slots each cost a page fault
// when first touched, and the slots touched grew towards Capacity.
func TestStreamReusesFreedSlots(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("needs two Ps: with one, producer and consumer share a shard")
	}
	t.Run("4KiB", func(t *testing.T) { streamFootprint[[512]uint64](t, 1<<16, 100_000) })
	t.Run("64B", func(t *testing.T) { streamFootprint[[8]uint64](t, 1<<20, 2_000_000) })
}

func streamFootprint[T any](t *testing.T, slots, messages int) {
	const inFlight = 128
	a, err := arena.New[T](arena.Config{Slots: slots})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ch := make(chan token.Token, inFlight)
	done := make(chan error)
	go func() {
		for tok := range ch {
			if err := a.Free(tok); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	var v T
	for i := 0; i < messages; i++ {
		tok, err := a.Store(v)
		if err != nil {
			t.Fatal(err)
		}
		ch <- tok
	}
	close(ch)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st := a.Stats()
	touched := uint64(slots) - st.Untouched
	// In flight: the channel, one slot each side; per shard its fresh
	// budget, a stolen batch (64) and a P cache.
	fresh := max(64, freshBudget/int(unsafe.Sizeof(v)))
	if bound := uint64(inFlight + 2 + st.Shards*(fresh+64+1)); touched > bound {
		t.Fatalf("%d messages with at most %d in flight touched %d of %d slots, want at most %d",
			messages, inFlight+2, touched, slots, bound)
	}
	t.Logf("touched %d of %d slots (%d shards, %d steals)", touched, slots, st.Shards, st.Steals)
}
