package arena_test

import (
	"runtime"
	"testing"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// A stream from a producer goroutine to a consumer goroutine that frees
// (the message store's pattern) reuses the slots it frees: the slots ever
// used stay near the number in flight, whatever the capacity. Before the
// shards recycled other shards' frees ahead of their own never-used slots,
// a producer whose frees landed on the consumer's shard took never-used
// slots whenever its own list was dry: this test touched 1903 slots for
// 130 in flight, each a first touch (a page fault, for 4 KiB slots), and
// message's stream test about half of its store.
func TestStreamReusesFreedSlots(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("needs two Ps: with one, producer and consumer share a shard")
	}
	const (
		slots    = 1 << 16
		inFlight = 128
		messages = 400_000
	)
	a, err := arena.New[[8]uint64](arena.Config{Slots: slots})
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
	for i := 0; i < messages; i++ {
		tok, err := a.Store([8]uint64{uint64(i)})
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
	// In flight: the channel, one slot each side, a stolen batch each
	// shard (stealKeep), a P cache each.
	if bound := uint64(inFlight + 2 + st.Shards*(64+1)); touched > bound {
		t.Fatalf("%d messages with at most %d in flight touched %d of %d slots, want at most %d",
			messages, inFlight+2, touched, slots, bound)
	}
	t.Logf("touched %d of %d slots (%d shards, %d steals)", touched, slots, st.Shards, st.Steals)
}
