package message

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// After the last Free the count reads zero: every use of the token is
// refused as released, and an edge will not take it.
func TestFreeLastZeroesTheCount(t *testing.T) {
	s, err := NewStore[uint64](arena.Config{Slots: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	e, err := NewEdge(s, Policy{MaxItems: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	tok, err := s.Put(Header{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Retain(tok); err != nil {
		t.Fatal(err)
	}
	if err := s.Free(tok); err != nil { // 2 -> 1: not the last
		t.Fatal(err)
	}
	if n, err := s.Refs(tok); err != nil || n != 1 {
		t.Fatalf("Refs = %d, %v; want 1", n, err)
	}
	if err := s.Free(tok); err != nil { // the last
		t.Fatal(err)
	}
	if _, err := s.Refs(tok); !errors.Is(err, arena.ErrStale) {
		t.Fatalf("Refs after the last Free: %v, want ErrStale", err)
	}
	if err := s.Retain(tok); !errors.Is(err, arena.ErrStale) {
		t.Fatalf("Retain after the last Free: %v, want ErrStale", err)
	}
	if err := s.Free(tok); !errors.Is(err, arena.ErrStale) {
		t.Fatalf("Free after the last Free: %v, want ErrStale", err)
	}
	if err := e.TrySend(tok); !errors.Is(err, arena.ErrStale) {
		t.Fatalf("TrySend after the last Free: %v, want ErrStale", err)
	}
	if got := s.Available(); got != 2 {
		t.Fatalf("Available = %d, want 2", got)
	}
}

// Frees racing for one last reference (a double free from two goroutines):
// exactly one returns nil, the others ErrStale, and none of them touches
// the messages that reuse the slot. A second goroutine keeps Putting and
// checking its own messages on the same two slots meanwhile, so a loser
// that wrote the count late would break one of them (its Refs would fail,
// or its slot would never come back).
func TestFreeLastDoubleFreeRace(t *testing.T) {
	s, err := NewStore[uint64](arena.Config{Slots: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rounds := 3000
	if raceEnabled {
		rounds = 400
	}
	stop := make(chan struct{})
	var churnErr atomic.Value
	var churn sync.WaitGroup
	churn.Add(1)
	go func() {
		defer churn.Done()
		for i := uint64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			tok, err := s.Put(Header{}, i)
			if errors.Is(err, arena.ErrFull) {
				continue
			}
			if err != nil {
				churnErr.Store(err)
				return
			}
			for range 3 {
				if n, err := s.Refs(tok); err != nil || n != 1 {
					churnErr.Store(errors.Join(errors.New("a live message's count changed under it"), err))
					return
				}
				var got uint64
				if err := s.View(tok, func(m *Message[uint64]) { got = m.Payload }); err != nil || got != i {
					churnErr.Store(errors.Join(errors.New("a live message changed under it"), err))
					return
				}
			}
			if err := s.Free(tok); err != nil {
				churnErr.Store(err)
				return
			}
		}
	}()
	const racers = 3
	for round := range rounds {
		var tok token.Token
		for {
			tok, err = s.Put(Header{}, uint64(round))
			if err == nil {
				break
			}
			if !errors.Is(err, arena.ErrFull) {
				t.Fatal(err)
			}
		}
		var wins atomic.Int32
		var wg sync.WaitGroup
		for range racers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				switch err := s.Free(tok); {
				case err == nil:
					wins.Add(1)
				case !errors.Is(err, arena.ErrStale):
					t.Errorf("round %d: Free: %v", round, err)
				}
			}()
		}
		wg.Wait()
		if n := wins.Load(); n != 1 {
			t.Fatalf("round %d: %d Frees of one reference returned nil, want 1", round, n)
		}
		if v := churnErr.Load(); v != nil {
			t.Fatalf("round %d: churn: %v", round, v)
		}
	}
	close(stop)
	churn.Wait()
	if v := churnErr.Load(); v != nil {
		t.Fatalf("churn: %v", v)
	}
	if got := s.Available(); got != 2 {
		t.Fatalf("Available = %d after every message was freed, want 2 (a slot was lost)", got)
	}
}

// Last Frees racing Close: each returns nil exactly once (before Close, or
// as a reference outstanding at Close), Close counts only references that
// no Free had dropped, and nothing is freed twice.
func TestFreeLastRacingClose(t *testing.T) {
	rounds := 200
	if raceEnabled {
		rounds = 40
	}
	for round := range rounds {
		const n = 64
		s, err := NewStore[uint64](arena.Config{Slots: n})
		if err != nil {
			t.Fatal(err)
		}
		toks := make([]token.Token, n)
		for i := range toks {
			if toks[i], err = s.Put(Header{}, uint64(i)); err != nil {
				t.Fatal(err)
			}
		}
		var freed atomic.Int64
		var wg sync.WaitGroup
		for w := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < n; i += 2 {
					if err := s.Free(toks[i]); err != nil {
						t.Errorf("round %d: Free of a held reference: %v", round, err)
						continue
					}
					freed.Add(1)
				}
			}()
		}
		cerr := s.Close()
		wg.Wait()
		var re *referencedError
		switch {
		case cerr == nil:
		case errors.As(cerr, &re):
			if re.refs < 1 || re.refs > n {
				t.Fatalf("round %d: Close counted %d references of %d", round, re.refs, n)
			}
		default:
			t.Fatalf("round %d: Close: %v", round, cerr)
		}
		if got := freed.Load(); got != n {
			t.Fatalf("round %d: %d Frees returned nil, want %d", round, got, n)
		}
		for i, tok := range toks {
			if err := s.Free(tok); !errors.Is(err, arena.ErrClosed) {
				t.Fatalf("round %d: second Free of %d after Close: %v, want ErrClosed", round, i, err)
			}
		}
		s.late.mu.Lock()
		mapped := s.late.region != nil
		s.late.mu.Unlock()
		if mapped {
			t.Fatalf("round %d: metadata still mapped after every reference was freed", round)
		}
	}
}

// The interleaving TestFreeLastRacingClose can only hope to hit, set up
// directly: the last Free passed the store's section before Close marked
// it, and reaches the arena after Close closed it. The reference must be
// dropped as one outstanding at Close: Free returns nil, Close does not
// count it, and the metadata is released.
func TestFreeLastAfterArenaClosed(t *testing.T) {
	s, err := NewStore[uint64](arena.Config{Slots: 2})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := s.Put(Header{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	s.a.Close() // the store's gate is still open: Free's section passes
	if err := s.Free(tok); err != nil {
		t.Fatalf("Free reaching a closed arena: %v, want nil", err)
	}
	if n, err := s.Refs(tok); err == nil {
		t.Fatalf("Refs after the Free = %d, want an error", n)
	}
	if err := s.Close(); errors.As(err, new(*referencedError)) {
		t.Fatalf("Close counted a reference that Free had dropped: %v", err)
	}
	s.late.mu.Lock()
	mapped := s.late.region != nil
	s.late.mu.Unlock()
	if mapped {
		t.Fatal("metadata still mapped with no reference outstanding")
	}
	if err := s.Free(tok); !errors.Is(err, arena.ErrClosed) {
		t.Fatalf("second Free: %v, want ErrClosed", err)
	}
}
