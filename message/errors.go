package message

import (
	"errors"
	"fmt"
)

// Sentinel errors of the message runtime. Match them with errors.Is. Store
// methods also return the arena's sentinels (arena.ErrStale, arena.ErrFull,
// arena.ErrBadToken, arena.ErrClosed), wrapped with the operation and token.
var (
	// ErrEdgeFull means a send was refused because the edge is at its hard
	// cap and its admission policy could not, or may not, make room. The
	// caller keeps its reference.
	ErrEdgeFull = errors.New("message: edge full")
	// ErrRejected means the edge's policy refused this message for a reason
	// other than a full edge: it is larger than MaxBytes, its QoS is not a
	// known class, it was already expired when sent, or a DeadlineQoS edge
	// above its soft cap sheds Background traffic. The caller keeps its
	// reference. ErrEdgeFull errors also match ErrRejected.
	ErrRejected = errors.New("message: rejected by edge policy")
	// ErrExpired marks a send refused because the message's deadline had
	// already passed. It always comes together with ErrRejected.
	ErrExpired = errors.New("message: deadline passed")
	// ErrEdgeClosed is returned by sends on a closed edge, and by receives
	// once a closed edge has been drained.
	ErrEdgeClosed = errors.New("message: edge closed")
	// ErrBadPolicy means a Policy field is out of range; the wrapping error
	// names the field.
	ErrBadPolicy = errors.New("message: bad edge policy")
	// ErrBadGraph means a Graph was wired incorrectly; the wrapping error
	// says where.
	ErrBadGraph = errors.New("message: bad graph")
	// ErrTooManyRefs means Retain would overflow a message's reference count.
	ErrTooManyRefs = errors.New("message: too many references")
	// ErrTooLarge means a payload does not fit in a byte store's slot.
	ErrTooLarge = errors.New("message: payload too large for slot")
)

// Pre-built errors for the send paths: returning them allocates nothing,
// which matters when an overloaded edge refuses millions of messages.
var (
	errFullDropNewest = fmt.Errorf("%w (DropNewest: newest message refused): %w", ErrEdgeFull, ErrRejected)
	errFullTrySend    = fmt.Errorf("%w (Block: TrySend would have to wait): %w", ErrEdgeFull, ErrRejected)
	errFullNoVictim   = fmt.Errorf("%w (DeadlineQoS: nothing of equal or lower QoS to evict): %w", ErrEdgeFull, ErrRejected)
	errShedBackground = fmt.Errorf("%w: DeadlineQoS edge at or above its soft cap sheds Background messages", ErrRejected)
	errOverMaxBytes   = fmt.Errorf("%w: message Size exceeds the edge's MaxBytes and could never fit", ErrRejected)
	errBadQoS         = fmt.Errorf("%w: QoS is not Background, BestEffort or LatencyCritical", ErrRejected)
	errExpiredOnSend  = fmt.Errorf("%w: %w", ErrRejected, ErrExpired)
	errSendClosed     = fmt.Errorf("%w: send refused", ErrEdgeClosed)
	errCloseTwice     = fmt.Errorf("%w: already closed", ErrEdgeClosed)
)
