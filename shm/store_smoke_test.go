package shm

import (
	"context"
	"errors"
	"testing"

	"github.com/cella-go/cella/message"
)

type tick struct {
	Seq   uint64
	Price float64
}

func TestStoreSmoke(t *testing.T) {
	dir := t.TempDir()
	s, err := CreateStore[tick]("st", StoreConfig{Slots: 8, Dir: dir, Edges: []message.Policy{{MaxItems: 4}}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := AttachStore[tick]("st", StoreConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 4 {
		tok, err := s.Put(message.Header{Seq: uint64(i)}, tick{Seq: uint64(i)})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Edge(0).Send(ctx, tok); err != nil {
			t.Fatal(err)
		}
		if err := s.Free(tok); !errors.Is(err, ErrNotHeld) {
			t.Fatalf("Free after Send: %v", err)
		}
	}
	tok, _ := s.Put(message.Header{}, tick{})
	if err := s.Edge(0).TrySend(tok); !errors.Is(err, message.ErrEdgeFull) {
		t.Fatalf("TrySend on a full edge: %v", err)
	}
	for i := range 4 {
		got, err := r.Edge(0).Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var seq uint64
		if err := r.View(got, func(m *message.Message[tick]) { seq = m.Payload.Seq }); err != nil || seq != uint64(i) {
			t.Fatalf("recv %d: seq %d, %v", i, seq, err)
		}
		if err := r.Free(got); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Free(tok); err != nil {
		t.Fatal(err)
	}
	if s.Available() != 8 {
		t.Fatalf("Available %d", s.Available())
	}
	st := s.Edge(0).Stats()
	if st.Admitted != 4 || st.Delivered != 4 || st.Rejected != 1 {
		t.Fatalf("%+v", st)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
