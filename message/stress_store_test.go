package message

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cella-go/cella/token"
)

// TestStressStoreFanOut pushes real stored messages through two tiny Block
// edges (fan-out) with many producers and consumers, checks every payload on
// receipt, that each message arrives exactly once per edge, and that the
// store gets every slot back.
func TestStressStoreFanOut(t *testing.T) {
	const producers, consumersPerEdge, per = 4, 3, 2000
	s := newStore[payload](t, 16)
	edges := []*Edge{mustEdge(t, s, Policy{MaxItems: 2}), mustEdge(t, s, Policy{MaxItems: 3, MaxBytes: 100})}
	seen := make([][]atomic.Uint32, len(edges))
	for i := range seen {
		seen[i] = make([]atomic.Uint32, producers*per)
	}
	ctx := context.Background()
	var pwg, cwg sync.WaitGroup
	for ei, e := range edges {
		for c := 0; c < consumersPerEdge; c++ {
			cwg.Add(1)
			go func() {
				defer cwg.Done()
				for {
					tok, err := e.Recv(ctx)
					if errors.Is(err, ErrEdgeClosed) {
						return
					}
					var seq uint64
					ok := false
					s.View(tok, func(m *Message[payload]) {
						seq = m.Payload.A
						ok = m.Payload.B == checksum(seq) && m.Header.Seq == seq && m.Payload.Pad[7] == byte(seq)
					})
					if !ok {
						t.Errorf("corrupt payload for seq %d", seq)
					} else {
						seen[ei][seq].Add(1)
					}
					if err := s.Free(tok); err != nil {
						t.Error(err)
					}
				}
			}()
		}
	}
	for p := 0; p < producers; p++ {
		pwg.Add(1)
		go func(p int) {
			defer pwg.Done()
			for i := 0; i < per; i++ {
				seq := uint64(p*per + i)
				pl := payload{A: seq, B: checksum(seq)}
				pl.Pad[7] = byte(seq)
				var tok token.Token
				for {
					var err error
					tok, err = s.Put(Header{Seq: seq, Size: 30}, pl)
					if err == nil {
						break
					}
				}
				s.Retain(tok)
				for _, e := range edges {
					if err := e.Send(ctx, tok); err != nil {
						t.Error(err)
						s.Free(tok)
					}
				}
			}
		}(p)
	}
	pwg.Wait()
	for _, e := range edges {
		e.Close()
	}
	cwg.Wait()
	for ei := range seen {
		for seq := range seen[ei] {
			if n := seen[ei][seq].Load(); n != 1 {
				t.Fatalf("edge %d: seq %d received %d times", ei, seq, n)
			}
		}
	}
	if s.Available() != s.Capacity() {
		t.Fatalf("leak: %d of %d", s.Available(), s.Capacity())
	}
}
