package message

import (
	"context"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
)

// A receive whose only queued message has expired frees it; if the store's
// Free panics, the godoc says the panic is re-raised to the caller once the
// edge's lock is released (the receive took nothing). Instead recv keeps the
// panic in a local and parks: with context.Background() it never returns.
func TestReviewRecvParksHoldingFreePanic(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 8})
	if err := e.TrySend(usExpiring(s, time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Millisecond)
	usPanicFree(s, usBoom{"recv"})
	done := make(chan any, 1)
	go func() {
		done <- usCatch(func() { e.Recv(context.Background()) })
	}()
	select {
	case r := <-done:
		if _, ok := r.(usBoom); !ok {
			t.Errorf("Recv recovered %v, want the store's panic", r)
		}
	case <-time.After(500 * time.Millisecond):
		s.setFree(nil)
		e.Close() // release the parked receiver
		r := <-done
		t.Errorf("Recv(Background) caught the Free panic and parked with it (still blocked after 500ms); it surfaced only after Close: %v", r)
	}
}

// The same for a Block Send: the reap on admission frees an expired message
// (Free panics), the send still does not fit and parks holding the panic.
func TestReviewSendParksHoldingFreePanic(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxBytes: 11})
	if err := e.TrySend(s.put(Header{Size: 1, Deadline: Now() + int64(usShortLife)})); err != nil {
		t.Fatal(err)
	}
	if err := e.TrySend(s.put(Header{Size: 10})); err != nil {
		t.Fatal(err)
	}
	usOutlive()
	usPanicFree(s, usBoom{"send"})
	tok := s.put(Header{Size: 5})
	done := make(chan any, 1)
	go func() {
		done <- usCatch(func() { e.Send(context.Background(), tok) })
	}()
	select {
	case r := <-done:
		if _, ok := r.(usBoom); !ok {
			t.Errorf("Send recovered %v, want the store's panic", r)
		}
	case <-time.After(500 * time.Millisecond):
		s.setFree(nil)
		e.Close()
		r := <-done
		t.Errorf("Send(Background) caught the Free panic and parked with it (still blocked after 500ms); it surfaced only after Close: %v", r)
	}
}

// HeaderStore godoc: "a receive that has taken tokens by then delivers them
// instead, and the next send, receive or Drain on the edge raises it". A
// receive that takes a token puts the held panic back again (and one on the
// fast path never looks), so the next receive does not raise it.
func TestReviewHeldFreePanicNextRecv(t *testing.T) {
	for _, withFast := range []bool{true, false} {
		name := "slow"
		if withFast {
			name = "fast"
		}
		t.Run(name, func(t *testing.T) {
			s := usNewStore()
			e := usEdge(t, s, Policy{MaxItems: 8})
			b := s.put(Header{Deadline: Now() + int64(time.Hour)})
			a := usExpiring(s, time.Millisecond)
			var c, d token.Token
			if withFast {
				c, d = s.put(Header{}), s.put(Header{})
			} else {
				c = s.put(Header{Deadline: Now() + int64(time.Hour)})
				d = s.put(Header{Deadline: Now() + int64(time.Hour)})
			}
			for _, tok := range []token.Token{b, a, c, d} {
				if err := e.TrySend(tok); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(3 * time.Millisecond)
			usPanicFree(s, usBoom{"held"})
			// Two: b, then c (nextLocked goes on past the expired a whose
			// Free panicked); d stays queued.
			var dst [2]token.Token
			var n int
			r := usCatch(func() { n, _ = e.RecvBatch(context.Background(), dst[:]) })
			if r != nil || n != 2 || dst[0] != b || dst[1] != c {
				t.Fatalf("RecvBatch = %d %v, panic %v", n, dst[:n], r)
			}
			s.setFree(nil)
			var got token.Token
			r = usCatch(func() { got, _ = e.Recv(context.Background()) })
			if r != (usBoom{"held"}) {
				t.Errorf("the next receive (it took %v) panicked with %v, want the held store panic", got, r)
			}
		})
	}
}

// Positions across the wrap of their low 32 bits (where the cells' 32-bit
// sequence words wrapped, when a cell had one): a sanity check of the lap
// parity there.
func TestReviewFastRingSeqWrap(t *testing.T) {
	f := newFastRing(&Policy{MaxItems: 4})
	start := uint64(1)<<32 - 3
	n := uint64(len(f.cells))
	for i := uint64(0); i < n; i++ {
		pos := start + i
		f.clearCell(pos)
	}
	f.head.Store(start)
	f.tail.Store(start)
	f.headCache.Store(start)
	next := uint32(1)
	want := uint32(1)
	for round := 0; round < 20; round++ {
		for f.trySend(token.New(next, 1), 1) {
			next++
		}
		if got := f.queuedHint(); got != 4 {
			t.Fatalf("round %d: ring holds %d, want 4", round, got)
		}
		for {
			tok, ok := f.tryRecv()
			if !ok {
				break
			}
			if tok.Index() != want {
				t.Fatalf("got %v, want index %d", tok, want)
			}
			want++
		}
	}
}
