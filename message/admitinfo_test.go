package message

import (
	"errors"
	"testing"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// TestEdgeSendChecksTokens checks the store's fast admission path (slot
// metadata instead of an arena read) against every kind of bad token, and
// that it sees what Update and PutFunc wrote.
func TestEdgeSendChecksTokens(t *testing.T) {
	s := newStore[payload](t, 2)
	e := mustEdge(t, s, Policy{MaxItems: 8, MaxBytes: 100})

	tok, _ := s.Put(Header{Size: 10}, payload{})
	if err := s.Free(tok); err != nil {
		t.Fatal(err)
	}
	if err := e.TrySend(tok); !errors.Is(err, arena.ErrStale) {
		t.Fatalf("send of a freed token = %v", err)
	}
	// Reuse the slot: the old token stays stale, the new one is accepted.
	var reused token.Token
	for i := 0; i < 2; i++ {
		n, _ := s.Put(Header{Size: 10}, payload{})
		if n.Index() == tok.Index() {
			reused = n
		} else {
			defer s.Free(n)
		}
	}
	if reused.IsNil() {
		t.Fatal("slot not reused")
	}
	if err := e.TrySend(tok); !errors.Is(err, arena.ErrStale) {
		t.Fatalf("send of a token whose slot was reused = %v", err)
	}
	foreign := token.New(tok.Index(), tok.Generation()+7)
	if err := e.TrySend(foreign); !errors.Is(err, arena.ErrStale) {
		t.Fatalf("send of a foreign generation = %v", err)
	}
	if err := e.TrySend(token.New(1000, 1)); !errors.Is(err, arena.ErrBadToken) {
		t.Fatalf("send of an out-of-range token = %v", err)
	}
	if err := e.TrySend(token.New(0, 0)); !errors.Is(err, arena.ErrBadToken) {
		t.Fatalf("send of generation 0 = %v", err)
	}

	// Update changes what the next send sees.
	if err := s.Update(reused, func(m *Message[payload]) { m.Header.Size = 200 }); err != nil {
		t.Fatal(err)
	}
	if err := e.TrySend(reused); !errors.Is(err, ErrRejected) {
		t.Fatalf("send over MaxBytes after Update = %v", err)
	}
	if err := s.Update(reused, func(m *Message[payload]) {
		m.Header.Size, m.Header.QoS, m.Header.Flags = 30, LatencyCritical, DegradeAllowed
		m.Header.Deadline = 1 // long past, but DegradeAllowed
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.TrySend(reused); err != nil {
		t.Fatalf("send after Update = %v", err)
	}
	if e.Bytes() != 30 {
		t.Fatalf("Bytes = %d, want the updated Size 30", e.Bytes())
	}
	got, ok := e.TryRecv()
	if !ok || got != reused || e.Stats().Late != 1 {
		t.Fatalf("TryRecv = %v %v, stats %+v", got, ok, e.Stats())
	}
	s.Free(got)

	// PutFunc's fill may change the header; the edge sees the final one.
	bs, err := NewByteStore[[64]byte](arena.Config{Slots: 2, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	be := mustEdge(t, bs, Policy{MaxBytes: 64})
	w, err := bs.Write(Header{}, func(b []byte) (int, error) { return copy(b, "hello"), nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := be.TrySend(w); err != nil || be.Bytes() != 5 {
		t.Fatalf("byte send = %v, Bytes %d", err, be.Bytes())
	}
	be.Close()
	be.Drain()

	// After Close every token is refused with ErrClosed, and nothing crashes;
	// the one reference outstanding at Close may still be freed, once.
	live, _ := s.Put(Header{}, payload{})
	if err := s.Close(); !errors.Is(err, ErrReferenced) {
		t.Errorf("Close with a reference outstanding = %v", err)
	}
	for name, err := range map[string]error{
		"send":   e.TrySend(live),
		"Retain": s.Retain(live),
	} {
		if !errors.Is(err, arena.ErrClosed) {
			t.Errorf("%s after store Close = %v", name, err)
		}
	}
	if err := s.Free(live); err != nil {
		t.Errorf("Free of the reference outstanding at Close = %v", err)
	}
	if err := s.Free(live); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("second Free after store Close = %v", err)
	}
	if _, err := s.Refs(live); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("Refs after store Close = %v", err)
	}
}
