package shm

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

type otherTick struct {
	Seq   uint64
	Price float32 // differs from tick's float64
	_     uint32
}

// TestStoreAttachMismatch: a Store segment refuses another payload type,
// a plain Arena handle, and a Store handle refuses an Arena segment.
func TestStoreAttachMismatch(t *testing.T) {
	dir := t.TempDir()
	s, err := CreateStore[tick]("mm", StoreConfig{Slots: 4, Dir: dir, Watch: -1, Edges: []message.Policy{{MaxItems: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := AttachStore[otherTick]("mm", StoreConfig{Dir: dir}); !errors.Is(err, ErrMismatch) {
		t.Fatalf("AttachStore with another P: %v, want ErrMismatch", err)
	}
	if _, err := Attach[message.Message[tick]]("mm", Config{Dir: dir}); !errors.Is(err, ErrMismatch) {
		t.Fatalf("Attach (Arena) to a Store segment: %v, want ErrMismatch", err)
	}
	a, err := Create[tick]("plain", Config{Slots: 4, Dir: dir, Watch: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := AttachStore[tick]("plain", StoreConfig{Dir: dir}); !errors.Is(err, ErrMismatch) {
		t.Fatalf("AttachStore to an Arena segment: %v, want ErrMismatch", err)
	}
	if _, err := CreateStore[tick]("bad", StoreConfig{Slots: 4, Dir: dir, Edges: []message.Policy{{MaxItems: -1}}}); !errors.Is(err, message.ErrBadPolicy) {
		t.Fatalf("CreateStore with a bad policy: %v, want message.ErrBadPolicy", err)
	}
	if _, err := CreateStore[tick]("bad", StoreConfig{Slots: 4, Dir: dir, Edges: make([]message.Policy, MaxEdges+1)}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("CreateStore with too many edges: %v, want ErrInvalidConfig", err)
	}
	if _, err := CreateStore[*int]("bad", StoreConfig{Slots: 4, Dir: dir}); !errors.Is(err, ErrPointerType) {
		t.Fatalf("CreateStore of a pointer payload: %v, want ErrPointerType", err)
	}
}

// TestStoreAttachCorruptEdge: a segment whose edge block was scribbled on
// (a lane capacity or a ring offset that would index outside the mapping,
// an unknown admission mode) is refused with ErrCorrupt, never mapped and
// used.
func TestStoreAttachCorruptEdge(t *testing.T) {
	for _, c := range []struct {
		name string
		hit  func(*edgeCtl)
	}{
		{"laneCap", func(c *edgeCtl) { c.laneCap = 1 << 40 }},
		{"zeroLaneCap", func(c *edgeCtl) { c.laneCap = 0 }},
		{"ringOff", func(c *edgeCtl) { c.ringOff += 4096 }},
		{"admission", func(c *edgeCtl) { c.admission = 9 }},
		{"softAboveMax", func(c *edgeCtl) { c.softItems = c.maxItems + 1 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := CreateStore[tick]("ce", StoreConfig{Slots: 4, Dir: dir, Watch: -1, Edges: []message.Policy{{MaxItems: 2}}})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			c.hit(s.a.edgeCtl(0))
			if _, err := AttachStore[tick]("ce", StoreConfig{Dir: dir}); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("AttachStore: %v, want ErrCorrupt", err)
			}
		})
	}
}

// TestStoreMisuse: forged, stale, foreign and not-held tokens on every
// Store and Edge method: an error, never a fault, never a lost reference.
func TestStoreMisuse(t *testing.T) {
	dir := t.TempDir()
	s, err := CreateStore[tick]("mu", StoreConfig{Slots: 4, Dir: dir, Watch: -1, Edges: []message.Policy{{MaxItems: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	other, err := CreateStore[tick]("mu2", StoreConfig{Slots: 4, Dir: dir, Watch: -1, Edges: []message.Policy{{MaxItems: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	peer, err := AttachStore[tick]("mu", StoreConfig{Dir: dir, Watch: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	ctx := context.Background()
	live, err := s.Put(message.Header{}, tick{Seq: 1})
	if err != nil {
		t.Fatal(err)
	}
	freed, _ := s.Put(message.Header{}, tick{})
	if err := s.Free(freed); err != nil {
		t.Fatal(err)
	}
	foreign, _ := other.Put(message.Header{}, tick{})
	bad := []struct {
		name string
		t    token.Token
		want error
	}{
		{"nil", token.Nil, ErrBadToken},
		{"index out of range", token.New(99, live.Generation()), ErrBadToken},
		{"generation 0", token.New(live.Index(), 0), ErrBadToken},
		{"future generation", token.New(live.Index(), live.Generation()+1), ErrStale},
		{"freed", freed, ErrStale},
		{"foreign", token.New(foreign.Index(), foreign.Generation()), ErrStale},
	}
	for _, b := range bad {
		if b.name == "foreign" && foreign.Index() == live.Index() && foreign.Generation() == live.Generation() {
			continue // one chance in 2^30 that the two segments agree
		}
		calls := map[string]error{
			"Header":  func() error { _, err := s.Header(b.t); return err }(),
			"View":    s.View(b.t, func(*message.Message[tick]) {}),
			"Update":  s.Update(b.t, func(*message.Message[tick]) {}),
			"Retain":  s.Retain(b.t),
			"Free":    s.Free(b.t),
			"Send":    s.Edge(0).Send(ctx, b.t),
			"TrySend": s.Edge(0).TrySend(b.t),
		}
		for op, err := range calls {
			if !errors.Is(err, b.want) {
				t.Errorf("%s of a %s token: %v, want %v", op, b.name, err, b.want)
			}
		}
	}
	// The peer holds no reference to live: it cannot free or send it.
	if err := peer.Free(live); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("Free by a process that holds no reference: %v, want ErrNotHeld", err)
	}
	if err := peer.Edge(0).Send(ctx, live); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("Send by a process that holds no reference: %v, want ErrNotHeld", err)
	}
	if all, mine, err := s.Refs(live); err != nil || all != 1 || mine != 1 {
		t.Fatalf("Refs after the refused calls: %d %d %v, want 1 1", all, mine, err)
	}
	if err := s.View(live, nil); !errors.Is(err, ErrNilFunc) {
		t.Fatalf("View(nil): %v", err)
	}
	if _, err := s.PutFunc(message.Header{}, nil); !errors.Is(err, ErrNilFunc) {
		t.Fatalf("PutFunc(nil): %v", err)
	}
	if e := s.Edge(1); e != nil {
		t.Fatalf("Edge(1) of a one-edge store: %v, want nil", e)
	}
	if err := s.Free(live); err != nil {
		t.Fatal(err)
	}
	if s.Available() != s.Capacity() {
		t.Fatalf("Available %d, want %d", s.Available(), s.Capacity())
	}
}

// TestStoreFillPanics: a PutFunc whose fill panics frees its slot and
// passes the panic on.
func TestStoreFillPanics(t *testing.T) {
	s, err := CreateStore[tick]("fp", StoreConfig{Slots: 2, Dir: t.TempDir(), Watch: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the panic did not come through")
			}
		}()
		_, _ = s.PutFunc(message.Header{}, func(*message.Message[tick]) error { panic("boom") })
	}()
	if _, err := s.PutFunc(message.Header{}, func(*message.Message[tick]) error { return os.ErrInvalid }); !errors.Is(err, os.ErrInvalid) {
		t.Fatalf("fill error: %v", err)
	}
	if s.Available() != 2 {
		t.Fatalf("Available %d after failed fills, want 2", s.Available())
	}
}
