package message

// Review tests for 0e1ed0b at the message level: Created is stamped with
// clock.Stamp (unfenced counter), Now is clock.Now, DeadlineAt converts
// through clock.Epoch/EpochBoot.

import (
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/internal/clock"
	"github.com/cella-go/cella/token"
)

type clockReviewPayload struct{ N uint64 }

// warmClock gets the clock past its calibration (20 ms of Mono).
func warmClock() {
	Now()
	time.Sleep(50 * time.Millisecond)
	Now()
}

// TestClockReviewCreatedBetweenNows: Put's (and PutFunc's, PutBytes') Created
// lies between Now() read before and after the call in the same goroutine,
// across many renewals of the clock's anchor.
func TestClockReviewCreatedBetweenNows(t *testing.T) {
	warmClock()
	s, err := NewStore[clockReviewPayload](arena.Config{Slots: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	bs, err := NewByteStore[[64]byte](arena.Config{Slots: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	puts := []struct {
		name string
		put  func() (token.Token, error)
		hdr  func(token.Token) (Header, error)
		free func(token.Token) error
	}{
		{"Put", func() (token.Token, error) { return s.Put(Header{}, clockReviewPayload{1}) }, s.Header, s.Free},
		{"PutFunc", func() (token.Token, error) {
			return s.PutFunc(Header{}, func(m *Message[clockReviewPayload]) error { m.Payload.N = 2; return nil })
		}, s.Header, s.Free},
		{"PutBytes", func() (token.Token, error) { return bs.PutBytes(Header{}, []byte("x")) }, bs.Header, bs.Free},
	}
	end := clock.Mono() + int64(30*time.Millisecond)
	n := 0
	for clock.Mono() < end || n < 3000 {
		p := puts[n%len(puts)]
		n++
		before := Now()
		tok, err := p.put()
		after := Now()
		if err != nil {
			t.Fatal(err)
		}
		h, err := p.hdr(tok)
		if err != nil {
			t.Fatal(err)
		}
		if h.Created < before || h.Created > after {
			t.Fatalf("%s #%d: Created %d outside [Now before %d, Now after %d] (%d ns before, %d ns after)", p.name, n, h.Created, before, after, before-h.Created, h.Created-after)
		}
		if err := p.free(tok); err != nil {
			t.Fatal(err)
		}
	}
}

// TestClockReviewDeadlineAtNowExpires: a deadline of time.Now() has passed
// by Now() a moment (1 us of CLOCK_MONOTONIC; 10 us under the race
// detector) later, and DeadlineTime gives time.Now() back.
func TestClockReviewDeadlineAtNowExpires(t *testing.T) {
	warmClock()
	wait := int64(time.Microsecond)
	if raceEnabled {
		wait *= 10
	}
	end := clock.Mono() + int64(30*time.Millisecond)
	n, immediate := 0, 0
	for clock.Mono() < end || n < 3000 {
		n++
		tn := time.Now()
		h := Header{Deadline: DeadlineAt(tn)}
		if !h.Expired(Now()) {
			immediate++ // allowed: Now may equal the deadline right away
		}
		for m := clock.Mono(); clock.Mono() < m+wait; {
		}
		if now := Now(); !h.Expired(now) {
			t.Fatalf("#%d: deadline %d (time.Now()) not expired %d ns later: Now %d is %d ns behind it", n, h.Deadline, wait, now, h.Deadline-now)
		}
		back, ok := h.DeadlineTime()
		if !ok || back.Sub(tn) > time.Microsecond || tn.Sub(back) > time.Microsecond {
			t.Fatalf("#%d: DeadlineTime %v for time.Now() %v", n, back, tn)
		}
	}
	t.Logf("%d deadlines; %d not yet expired by an immediate Now()", n, immediate)
}

// TestClockReviewWarpMovesDeadlines: clock.Warp moves Now, Put's Created and
// DeadlineAt together (FuzzEdgeModel's efWarp relies on it).
func TestClockReviewWarpMovesDeadlines(t *testing.T) {
	warmClock()
	saved := clock.Epoch
	defer func() {
		clock.Warp(-saved.Sub(clock.Epoch)) // back
		if clock.Epoch != saved {
			t.Errorf("Epoch %v not restored to %v", clock.Epoch, saved)
		}
	}()
	s, err := NewStore[clockReviewPayload](arena.Config{Slots: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h := Header{Deadline: DeadlineAt(time.Now().Add(time.Minute))}
	if h.Expired(Now()) {
		t.Fatal("a deadline a minute ahead has expired")
	}
	clock.Warp(2 * time.Minute)
	if !h.Expired(Now()) {
		t.Fatalf("a deadline a minute ahead has not expired after Warp(2m): Now %d, deadline %d", Now(), h.Deadline)
	}
	before := Now()
	tok, err := s.Put(Header{}, clockReviewPayload{})
	after := Now()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := s.Header(tok)
	s.Free(tok)
	if got.Created < before || got.Created > after {
		t.Fatalf("Created %d outside [%d, %d] after Warp", got.Created, before, after)
	}
	if d := DeadlineAt(time.Now()); d < before || d > Now()+int64(time.Microsecond) {
		t.Fatalf("DeadlineAt(time.Now()) %d disagrees with Now %d after Warp", d, before)
	}
}
