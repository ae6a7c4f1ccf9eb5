package message

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"
)

func TestDeadlineAt(t *testing.T) {
	const d = 50 * time.Millisecond
	before := Now()
	got := DeadlineAt(time.Now().Add(d))
	after := Now()
	if got < before+int64(d) || got > after+int64(d) {
		t.Fatalf("DeadlineAt(now+%v) = %d, want in [%d, %d]", d, got, before+int64(d), after+int64(d))
	}
	var h Header
	h.SetDeadline(time.Now().Add(d))
	if h.Expired(Now()) || !h.Expired(Now()+int64(2*d)) {
		t.Fatalf("SetDeadline(now+%v): Deadline %d, Now %d", d, h.Deadline, Now())
	}
	back, ok := h.DeadlineTime()
	if until := time.Until(back); !ok || until <= 0 || until > d {
		t.Fatalf("DeadlineTime = %v, %v (in %v)", back, ok, until)
	}

	// The zero time is no deadline; SetDeadline with it clears one.
	if DeadlineAt(time.Time{}) != 0 {
		t.Fatal("DeadlineAt(zero time) != 0")
	}
	h.SetDeadline(time.Time{})
	if h.Deadline != 0 {
		t.Fatal("SetDeadline(zero time) did not clear the deadline")
	}
	if _, ok := h.DeadlineTime(); ok {
		t.Fatal("DeadlineTime of no deadline reported true")
	}
	// A time in the past has passed; one before the process started still
	// is a deadline (1), never 0.
	if dl := DeadlineAt(time.Now().Add(-time.Second)); dl == 0 || dl >= Now() {
		t.Fatalf("DeadlineAt(a second ago) = %d, Now %d", dl, Now())
	}
	if dl := DeadlineAt(time.Unix(0, 1)); dl != 1 {
		t.Fatalf("DeadlineAt(1970) = %d, want 1", dl)
	}
	// Far future: saturates, never wraps negative.
	if dl := DeadlineAt(time.Unix(1<<62, 0)); dl != math.MaxInt64 {
		t.Fatalf("DeadlineAt(far future) = %d", dl)
	}
	// A wall-clock-only time (no monotonic reading) converts too.
	wall := time.Now().Add(time.Hour).Round(0)
	if dl := DeadlineAt(wall); dl < Now()+int64(59*time.Minute) || dl > Now()+int64(61*time.Minute) {
		t.Fatalf("DeadlineAt(wall clock in an hour) = %d, Now %d", dl, Now())
	}
}

func TestDeadlineFromContext(t *testing.T) {
	if dl, ok := DeadlineFromContext(context.Background()); ok || dl != 0 {
		t.Fatalf("no deadline: %d, %v", dl, ok)
	}
	//lint:ignore SA1012 the test is that nil does not panic
	if dl, ok := DeadlineFromContext(nil); ok || dl != 0 {
		t.Fatalf("nil ctx: %d, %v", dl, ok)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	dl, ok := DeadlineFromContext(ctx)
	if !ok || dl <= Now() || dl > Now()+int64(30*time.Millisecond) {
		t.Fatalf("DeadlineFromContext = %d, %v; Now %d", dl, ok, Now())
	}
}

// TestDeadlineOnEdge: a deadline from Go's clocks is honoured by edges.
func TestDeadlineOnEdge(t *testing.T) {
	s := newStore[payload](t, 4)
	e := mustEdge(t, s, Policy{})
	var h Header
	h.SetDeadline(time.Now().Add(-time.Millisecond))
	late, _ := s.Put(h, payload{})
	if err := e.TrySend(late); !errors.Is(err, ErrExpired) {
		t.Fatalf("TrySend of a message whose deadline passed = %v", err)
	}
	s.Free(late)
	h.SetDeadline(time.Now().Add(2 * time.Millisecond))
	soon, _ := s.Put(h, payload{})
	if err := e.TrySend(soon); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Millisecond)
	if _, ok := e.TryRecv(); ok {
		t.Fatal("delivered after its deadline")
	}
	if st := e.Stats(); st.Expired != 1 || s.Available() != s.Capacity() {
		t.Fatalf("Stats = %+v", st)
	}
}
