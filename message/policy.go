package message

import (
	"fmt"
	"strconv"
)

// Admission says what an edge does with a send that would take it past a
// hard cap.
type Admission uint8

const (
	// Block makes Send wait, honouring its context, until the message fits
	// under the hard caps. TrySend returns ErrEdgeFull instead of waiting.
	Block Admission = iota
	// DropNewest refuses the new message with ErrEdgeFull; the caller keeps
	// its reference.
	DropNewest
	// DropOldest evicts the oldest queued messages (by admission order, in
	// any lane) until the new one fits, and frees them.
	DropOldest
	// DeadlineQoS first frees expired messages, then evicts the lowest-QoS
	// messages, oldest first, but never one of higher QoS than the message
	// being sent; if that cannot make room the send is refused with
	// ErrEdgeFull. At or above a soft cap that is set (counting only the
	// messages that have not expired: expired ones are freed first) it also
	// refuses Background messages outright, keeping the space up to the hard
	// cap for BestEffort and LatencyCritical traffic; with no soft cap,
	// Background competes at the hard cap like any other QoS.
	DeadlineQoS
)

// String returns the admission mode's name.
func (a Admission) String() string {
	switch a {
	case Block:
		return "Block"
	case DropNewest:
		return "DropNewest"
	case DropOldest:
		return "DropOldest"
	case DeadlineQoS:
		return "DeadlineQoS"
	}
	return "Admission(" + strconv.Itoa(int(a)) + ")"
}

// Policy bounds an edge. Items count queued tokens; bytes sum the Size field
// of their headers. A zero cap means "no cap" for that dimension. Soft caps
// only move the watermark (and, under DeadlineQoS, shed Background
// messages); hard caps trigger the admission mode.
//
// An edge with neither MaxItems nor MaxBytes is still bounded by its store:
// every queued token holds one slot.
type Policy struct {
	MaxItems, SoftItems int
	MaxBytes, SoftBytes int64
	Admission           Admission
}

// Validate reports the first out-of-range field, wrapped in ErrBadPolicy.
func (p Policy) Validate() error {
	switch {
	case p.MaxItems < 0:
		return fmt.Errorf("%w: MaxItems is negative (%d)", ErrBadPolicy, p.MaxItems)
	case p.SoftItems < 0:
		return fmt.Errorf("%w: SoftItems is negative (%d)", ErrBadPolicy, p.SoftItems)
	case p.MaxBytes < 0:
		return fmt.Errorf("%w: MaxBytes is negative (%d)", ErrBadPolicy, p.MaxBytes)
	case p.SoftBytes < 0:
		return fmt.Errorf("%w: SoftBytes is negative (%d)", ErrBadPolicy, p.SoftBytes)
	case p.MaxItems > 0 && p.SoftItems > p.MaxItems:
		return fmt.Errorf("%w: SoftItems (%d) is above MaxItems (%d)", ErrBadPolicy, p.SoftItems, p.MaxItems)
	case p.MaxBytes > 0 && p.SoftBytes > p.MaxBytes:
		return fmt.Errorf("%w: SoftBytes (%d) is above MaxBytes (%d)", ErrBadPolicy, p.SoftBytes, p.MaxBytes)
	case p.Admission > DeadlineQoS:
		return fmt.Errorf("%w: unknown Admission %d", ErrBadPolicy, p.Admission)
	}
	return nil
}

// Watermark is an edge's fill level against its caps.
type Watermark uint8

const (
	// BelowSoft: every soft cap that is set is not yet reached, and no hard
	// cap is reached.
	BelowSoft Watermark = iota
	// SoftReached: at or above some soft cap, below every hard cap.
	// Producers should slow down.
	SoftReached
	// HardReached: at or above some hard cap; the next send that needs room
	// triggers the admission mode.
	HardReached
)

// String returns the level's name.
func (w Watermark) String() string {
	switch w {
	case BelowSoft:
		return "BelowSoft"
	case SoftReached:
		return "SoftReached"
	case HardReached:
		return "HardReached"
	}
	return "Watermark(" + strconv.Itoa(int(w)) + ")"
}

// level computes the watermark for n items holding b bytes.
func (p *Policy) level(n int, b int64) Watermark {
	if (p.MaxItems > 0 && n >= p.MaxItems) || (p.MaxBytes > 0 && b >= p.MaxBytes) {
		return HardReached
	}
	if (p.SoftItems > 0 && n >= p.SoftItems) || (p.SoftBytes > 0 && b >= p.SoftBytes) {
		return SoftReached
	}
	return BelowSoft
}

// softReached reports whether n items holding b bytes are at or above a soft
// cap that is set. Unlike level, a hard cap alone does not count.
func (p *Policy) softReached(n int, b int64) bool {
	return (p.SoftItems > 0 && n >= p.SoftItems) || (p.SoftBytes > 0 && b >= p.SoftBytes)
}

// fits reports whether one more message of size bytes fits under the hard
// caps when n items holding b bytes are queued.
func (p *Policy) fits(n int, b, size int64) bool {
	return (p.MaxItems == 0 || n < p.MaxItems) && (p.MaxBytes == 0 || b+size <= p.MaxBytes)
}
