package shm

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

// TestStoreCloseWhileWaiting: Close of a Store while this process has
// goroutines parked or polling in Recv, in a Block Send, in PutWait, and
// running Views; every one returns (an error), none faults, and the other
// process's handle keeps working.
func TestStoreCloseWhileWaiting(t *testing.T) {
	for round := range 20 {
		dir := t.TempDir()
		s, err := CreateStore[tick]("closewait", StoreConfig{Slots: 4, Dir: dir, Watch: -1,
			Edges: []message.Policy{{MaxItems: 1}, {MaxItems: 1}}})
		if err != nil {
			t.Fatal(err)
		}
		peer, err := AttachStore[tick]("closewait", StoreConfig{Dir: dir, Watch: -1})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		// Edge 1 full, so that a Send waits; the store nearly full.
		full, _ := peer.Put(message.Header{}, tick{})
		if err := peer.Edge(1).Send(ctx, full); err != nil {
			t.Fatal(err)
		}
		held, _ := s.Put(message.Header{}, tick{})
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		run := func(f func() error) {
			wg.Add(1)
			go func() { defer wg.Done(); errs <- f() }()
		}
		run(func() error { _, err := s.Edge(0).Recv(ctx); return err })
		run(func() error { _, err := s.Edge(0).RecvBatch(ctx, make([]token.Token, 4)); return err })
		run(func() error { return s.Edge(1).Send(ctx, held) })
		run(func() error {
			for {
				if _, err := s.PutWait(ctx, message.Header{}, tick{}); err != nil {
					return err
				}
			}
		})
		run(func() error {
			for {
				if err := s.View(held, func(*message.Message[tick]) { time.Sleep(10 * time.Microsecond) }); err != nil {
					return err
				}
			}
		})
		time.Sleep(time.Duration(round%5) * 5 * time.Millisecond)
		if err := s.Close(); err != nil && !errors.Is(err, message.ErrReferenced) {
			t.Fatalf("round %d: Close: %v", round, err)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err == nil {
				t.Fatalf("round %d: a waiter returned nil after Close", round)
			}
		}
		// The peer is unaffected: its message is still queued, and a
		// receive gets it.
		got, err := peer.Edge(1).Recv(ctx)
		if err != nil || got != full {
			t.Fatalf("round %d: peer Recv after the other handle closed: %v, %v", round, got, err)
		}
		if err := peer.Free(got); err != nil {
			t.Fatal(err)
		}
		if err := peer.Close(); err != nil && !errors.Is(err, message.ErrReferenced) {
			t.Fatal(err)
		}
	}
}
