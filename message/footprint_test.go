package message_test

import (
	"context"
	"errors"
	"runtime"
	"testing"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/message"
)

// A producer goroutine Puts and Sends 4 KiB messages, a consumer goroutine
// Receives and Frees them: the store reuses the slots the consumer frees,
// so the slots ever used stay near the number in flight (plus 64 per shard:
// the arena's fresh budget for slots this size), not the capacity. Before
// the arena's shards recycled each other's frees ahead of their never-used
// slots, the producer took a never-used slot (a page fault) whenever its
// own list was dry: 2M 64-byte messages with 130 in flight touched 51-57%
// of a 65536-slot store. -v prints the count.
func TestStreamReusesFreedSlots(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("needs two Ps: with one, producer and consumer share a shard")
	}
	const (
		slots    = 1 << 16
		room     = 128
		messages = 200_000
	)
	st, err := message.NewStore[[512]uint64](arena.Config{Slots: slots})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	e, err := message.NewEdge(st, message.Policy{MaxItems: room, Admission: message.Block})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	done := make(chan error, 1)
	go func() {
		for {
			tok, err := e.Recv(ctx)
			if errors.Is(err, message.ErrEdgeClosed) {
				done <- nil
				return
			}
			if err == nil {
				err = st.Free(tok)
			}
			if err != nil {
				done <- err
				return
			}
		}
	}()
	var p [512]uint64
	for i := 0; i < messages; i++ {
		p[0] = uint64(i)
		tok, err := st.Put(message.Header{Seq: uint64(i)}, p)
		if err == nil {
			err = e.Send(ctx, tok)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	e.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	s := st.Stats()
	touched := uint64(slots) - s.Untouched
	// In flight: the edge's room, one message each side; per shard the
	// fresh budget (64 slots this size), a taken list and a P cache.
	if bound := uint64(room + 2 + s.Shards*(64+64+1)); touched > bound {
		t.Fatalf("%d messages with at most %d in flight touched %d of %d slots (%.1f%%), want at most %d",
			messages, room+2, touched, slots, 100*float64(touched)/slots, bound)
	}
	t.Logf("%d messages, at most %d in flight: touched %d of %d slots (%.1f%%), %d steals",
		messages, room+2, touched, slots, 100*float64(touched)/slots, s.Steals)
}
