package message

import (
	"context"
	"math"
	"time"

	"github.com/cella-go/cella/internal/clock"
)

// DeadlineAt converts t, a time from Go's clocks (time.Now().Add(d), a
// context's deadline, a parsed wall-clock time), to the Now() clock of
// Header.Deadline. A time with a monotonic reading (anything derived from
// time.Now) converts exactly on the monotonic clock, so setting the system
// clock does not move it; a wall-clock-only time is converted through the
// wall clock. The zero time means no deadline and returns 0. A time
// before the machine booted returns 1, a deadline that has passed; the
// result is never 0 for a non-zero t.
func DeadlineAt(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	// Now() follows time.Since(clock.Epoch) + clock.EpochBoot: the same
	// offset here. Sub saturates at the extreme durations, which only the
	// checks below have to handle.
	d := t.Sub(clock.Epoch)
	if int64(d) <= -clock.EpochBoot {
		return 1
	}
	if int64(d) > math.MaxInt64-clock.EpochBoot {
		return math.MaxInt64
	}
	return int64(d) + clock.EpochBoot
}

// DeadlineFromContext returns ctx's deadline on the Now() clock and true,
// or 0 and false when ctx has no deadline (or is nil). A message created
// on behalf of a request can carry the request's deadline:
//
//	h.Deadline, _ = message.DeadlineFromContext(ctx)
//
// (0 when there is none, which means no deadline.)
func DeadlineFromContext(ctx context.Context) (int64, bool) {
	if ctx == nil {
		return 0, false
	}
	t, ok := ctx.Deadline()
	if !ok {
		return 0, false
	}
	if t.IsZero() {
		// A context whose deadline is the zero time is done from the start:
		// its deadline has passed (0 would mean none).
		return 1, true
	}
	return DeadlineAt(t), true
}

// SetDeadline sets h.Deadline to t (see DeadlineAt); the zero time clears
// it.
func (h *Header) SetDeadline(t time.Time) { h.Deadline = DeadlineAt(t) }

// DeadlineTime converts h.Deadline back to a time.Time with a monotonic
// reading, for context.WithDeadline or time.Until; it reports false when h
// has no deadline.
func (h *Header) DeadlineTime() (time.Time, bool) {
	if h.Deadline == 0 {
		return time.Time{}, false
	}
	return clock.Epoch.Add(time.Duration(h.Deadline - clock.EpochBoot)), true
}
