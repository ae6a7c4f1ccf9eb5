package message

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// Header copies without a hold, so it must retry rather than return a
// header that an Update was halfway through writing.
func TestHeaderNeverTornByUpdate(t *testing.T) {
	s, err := NewStore[[64]byte](arena.Config{Slots: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tok, err := s.Put(Header{Trace: 1, Seq: 1, Created: 1, Deadline: 0}, [64]byte{})
	if err != nil {
		t.Fatal(err)
	}
	n := 20000
	if raceEnabled {
		n = 2000
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := uint64(2); !stop.Load(); i++ {
			err := s.Update(tok, func(m *Message[[64]byte]) {
				m.Header.Trace = i
				m.Header.Seq = i
				m.Header.Created = int64(i)
				m.Header.Size = uint32(i)
			})
			if err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for range n {
		h, err := s.Header(tok)
		if err != nil {
			t.Fatal(err)
		}
		if h.Seq != h.Trace || int64(h.Seq) != h.Created || (h.Seq > 1 && uint32(h.Seq) != h.Size) {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("torn header: %+v", h)
		}
	}
	stop.Store(true)
	wg.Wait()
}

// A token for a slot that is allocated but not yet published (PutFunc's
// fill is still writing it) is refused: its generation can be guessed, and
// the copy alone would hand out a half-written header.
func TestHeaderRefusesUnpublished(t *testing.T) {
	s, err := NewStore[uint64](arena.Config{Slots: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t0, err := s.Put(Header{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Free(t0); err != nil {
		t.Fatal(err)
	}
	next := token.New(t0.Index(), t0.Generation()+1) // the slot's next life
	var inFill error
	t1, err := s.PutFunc(Header{Seq: 7}, func(m *Message[uint64]) error {
		_, inFill = s.Header(next)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if t1 != next {
		t.Fatalf("PutFunc issued %v, the test guessed %v", t1, next)
	}
	if !errors.Is(inFill, arena.ErrStale) {
		t.Fatalf("Header of an unpublished message: %v, want ErrStale", inFill)
	}
	h, err := s.Header(t1)
	if err != nil || h.Seq != 7 {
		t.Fatalf("Header once published = %+v, %v", h, err)
	}
	if err := s.Free(t1); err != nil {
		t.Fatal(err)
	}
	for _, tok := range []token.Token{t0, t1} {
		if _, err := s.Header(tok); !errors.Is(err, arena.ErrStale) {
			t.Fatalf("Header of freed %v: %v, want ErrStale", tok, err)
		}
	}
	if _, err := s.Header(token.New(5, 1)); !errors.Is(err, arena.ErrBadToken) {
		t.Fatalf("Header out of range: %v, want ErrBadToken", err)
	}
	s.Close()
	if _, err := s.Header(t1); !errors.Is(err, arena.ErrClosed) {
		t.Fatalf("Header after Close: %v, want ErrClosed", err)
	}
}

// View takes the arena's hold without a callback of the arena's own: a
// panic in fn must still drop it (an Update afterwards would wait forever
// otherwise), and a Free of the last reference inside fn recycles the
// slot only when fn returns.
func TestViewReleasesItsHold(t *testing.T) {
	s, err := NewStore[uint64](arena.Config{Slots: 1})
	if err != nil {
		t.Fatal(err)
	}
	// No deferred Close: with a leaked hold it would wait forever.
	tok, err := s.Put(Header{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("View did not propagate fn's panic")
			}
		}()
		s.View(tok, func(*Message[uint64]) { panic("fn") })
	}()
	done := make(chan error, 1)
	go func() { done <- s.Update(tok, func(m *Message[uint64]) { m.Payload = 2 }) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Update after a panicking View: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Update after a panicking View waits: the hold was not dropped")
	}
	err = s.View(tok, func(m *Message[uint64]) {
		if err := s.Free(tok); err != nil {
			t.Errorf("Free inside View: %v", err)
		}
		if m.Payload != 2 {
			t.Errorf("payload inside View after Free = %d, want 2", m.Payload)
		}
		if _, err := s.Put(Header{}, 3); !errors.Is(err, arena.ErrFull) {
			t.Errorf("Put inside View after the last Free: %v, want ErrFull (the slot is recycled when View returns)", err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(Header{}, 4); err != nil {
		t.Fatalf("Put after the View: %v", err)
	}
	s.Close()
}
