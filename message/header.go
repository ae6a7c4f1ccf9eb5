package message

import (
	"strconv"
	"time"

	"github.com/cella-go/cella/internal/clock"
)

// QoS is a message's quality-of-service class. Higher values are more urgent.
type QoS uint8

const (
	// Background messages are the first to be shed under pressure.
	Background QoS = 1
	// BestEffort is the ordinary class. The zero QoS is treated as BestEffort.
	BestEffort QoS = 2
	// LatencyCritical messages travel in an edge's priority lane and are
	// always received before any other queued message.
	LatencyCritical QoS = 3
)

// String returns the class name, "BestEffort(0)" for 0 (which means
// BestEffort), or "QoS(n)" for values outside the known set.
func (q QoS) String() string {
	switch q {
	case 0:
		return "BestEffort(0)"
	case Background:
		return "Background"
	case BestEffort:
		return "BestEffort"
	case LatencyCritical:
		return "LatencyCritical"
	}
	return "QoS(" + strconv.Itoa(int(q)) + ")"
}

// Valid reports whether q is 0 (meaning BestEffort) or one of the three
// named classes. Edges refuse messages whose QoS is not valid.
func (q QoS) Valid() bool { return q <= LatencyCritical }

// effective maps the zero QoS to BestEffort.
func (q QoS) effective() QoS {
	if q == 0 {
		return BestEffort
	}
	return q
}

// lane is the index of the edge lane a valid QoS goes to (laneBackground,
// laneBestEffort or laneCritical: QoS-1, the zero QoS as BestEffort).
func (q QoS) lane() int { return int(q.effective()) - 1 }

// Flags are per-message bits.
type Flags uint32

const (
	// FirstInBatch marks the first message of a batch.
	FirstInBatch Flags = 1 << iota
	// LastInBatch marks the last message of a batch.
	LastInBatch
	// DegradeAllowed says that a late answer is better than none: an edge
	// still delivers such a message after its deadline has passed (and counts
	// it as late) instead of expiring it. See Edge for the details.
	DegradeAllowed
)

// Has reports whether every bit of mask is set in f.
func (f Flags) Has(mask Flags) bool { return f&mask == mask }

// Header is the fixed-size, pointer-free metadata stored in a slot next to
// its payload. Edges make their admission decisions from the header alone.
type Header struct {
	Trace    uint64 // trace id, carried unchanged through a pipeline
	Seq      uint64 // sequence number, set by the producer
	Created  int64  // Now() when stored; 0 asks Store.Put to stamp it
	Deadline int64  // Now() clock; 0 means no deadline
	QoS      QoS    // 0 is treated as BestEffort
	Flags    Flags
	Size     uint32 // payload bytes counted against an edge's byte caps
}

// Expired reports whether the header has a deadline and now is past it.
func (h *Header) Expired(now int64) bool { return h.Deadline != 0 && now > h.Deadline }

// Age returns how long ago, on the Now() clock, the message was created.
func (h *Header) Age(now int64) time.Duration { return time.Duration(now - h.Created) }

// DeadlineIn returns the Deadline value that lies d from now.
func DeadlineIn(d time.Duration) int64 { return Now() + int64(d) }

// Now returns the clock used by Header.Created and Header.Deadline:
// CLOCK_MONOTONIC nanoseconds (since boot), always greater than zero. It is
// not wall-clock time; it is the same clock in every process on the
// machine, so deadlines and creation times mean the same thing to
// processes that share a store (package shm). It never goes back within a
// goroutine.
//
// Where Linux itself reads CLOCK_MONOTONIC from the CPU's time-stamp
// counter (amd64, clock source "tsc", or "kvm-clock" served by the vDSO),
// Now reads the counter and converts it with a rate re-anchored to
// CLOCK_MONOTONIC every millisecond, so it stays within nanoseconds of the
// kernel's clock: 22 ns on the build machine against 30 ns through the
// runtime (Put's stamp of Created skips the counter's fence and takes
// 11.7 ns; go test -bench Now ./internal/clock). Elsewhere, and in the
// purego build, it is CLOCK_MONOTONIC through the runtime.
func Now() int64 { return clock.Now() }

// Message is what a Store keeps in one slot: a header and a payload. P must
// be free of Go pointers (the arena checks this when the store is created).
type Message[P any] struct {
	Header  Header
	Payload P
}
