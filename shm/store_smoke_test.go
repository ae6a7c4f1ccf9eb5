package shm

import (
	"context"
	"errors"
	"testing"
	"time"

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

// TestSendDuringUpdate: a Send of a message another goroutine is updating
// does not wait for the Update (as with message.Edge): it admits the
// message with header fields the message had, each read whole, and the
// edge keeps the ones it admitted it with after the Update changes them.
func TestSendDuringUpdate(t *testing.T) {
	s, err := CreateStore[tick]("su", StoreConfig{Slots: 8, Dir: t.TempDir(), Watch: -1,
		Edges: []message.Policy{{MaxItems: 4, MaxBytes: 1 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tok, err := s.Put(message.Header{Size: 100, QoS: message.LatencyCritical}, tick{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Retain(tok); err != nil { // one reference for the Send, one kept
		t.Fatal(err)
	}
	inside, release := make(chan struct{}), make(chan struct{})
	updated := make(chan error, 1)
	go func() {
		updated <- s.Update(tok, func(m *message.Message[tick]) {
			close(inside)
			<-release
			m.Header.Size = 300
		})
	}()
	<-inside
	sent := make(chan error, 1)
	go func() { sent <- s.Edge(0).Send(context.Background(), tok) }()
	select {
	case err := <-sent:
		if err != nil {
			t.Fatalf("Send during Update: %v", err)
		}
	case <-time.After(5 * time.Second):
		close(release)
		t.Fatal("Send waited for the Update")
	}
	close(release)
	if err := <-updated; err != nil {
		t.Fatal(err)
	}
	if b := s.Edge(0).Bytes(); b != 100 {
		t.Fatalf("edge counts %d bytes, want the 100 it admitted the message with", b)
	}
	got, err := s.Edge(0).Recv(context.Background())
	if err != nil || got != tok {
		t.Fatalf("Recv: %v %v", got, err)
	}
	if b := s.Edge(0).Bytes(); b != 0 {
		t.Fatalf("edge counts %d bytes after the Recv, want 0", b)
	}
	for range 2 {
		if err := s.Free(tok); err != nil {
			t.Fatal(err)
		}
	}
}
