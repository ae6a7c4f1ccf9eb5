package message

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cella-go/cella/internal/errs"
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
	// ErrGraphCycle means a Graph's edges form a cycle (a stage feeding its
	// own input, directly or through other nodes): a graceful Stop could
	// never finish. Errors matching it also match ErrBadGraph and name the
	// nodes of the cycle.
	ErrGraphCycle = errors.New("message: graph has a cycle")
	// ErrNodeExited means a Graph node function called runtime.Goexit: the
	// graph was aborted (see Graph).
	ErrNodeExited = errors.New("message: graph node function called runtime.Goexit")
	// ErrNilEdge means a nil *Edge was passed where an edge is needed.
	ErrNilEdge = errors.New("message: nil edge")
	// ErrNilStore means a nil store was passed where one is needed.
	ErrNilStore = errors.New("message: nil store")
	// ErrTooManyRefs means Retain would overflow a message's reference count.
	ErrTooManyRefs = errors.New("message: too many references")
	// ErrTooLarge means a payload does not fit in a byte store's slot.
	ErrTooLarge = errors.New("message: payload too large for slot")
)

// ErrReferenced is returned by Store.Close when messages still held
// references: the store is closed all the same, and each of those
// references may still be freed once (Free returns nil). The wrapping error
// counts them and names a few.
var ErrReferenced = errors.New("message: store closed with references outstanding")

// Pre-built errors for the send paths: returning them allocates nothing,
// which matters when an overloaded edge refuses millions of messages. Each
// reads with one "message:" prefix and matches every sentinel it names.
var (
	errFullDropNewest = multiSentinel("message: edge full (DropNewest: newest message refused)", ErrEdgeFull, ErrRejected)
	errFullTrySend    = multiSentinel("message: edge full (Block: TrySend would have to wait)", ErrEdgeFull, ErrRejected)
	errFullNoVictim   = multiSentinel("message: edge full (DeadlineQoS: nothing of equal or lower QoS to evict)", ErrEdgeFull, ErrRejected)
	errShedBackground = fmt.Errorf("%w: DeadlineQoS edge at or above its soft cap sheds Background messages", ErrRejected)
	errOverMaxBytes   = fmt.Errorf("%w: message Size exceeds the edge's MaxBytes and could never fit", ErrRejected)
	errBadQoS         = fmt.Errorf("%w: QoS is not Background, BestEffort or LatencyCritical", ErrRejected)
	errExpiredOnSend  = multiSentinel("message: rejected by edge policy: deadline passed", ErrRejected, ErrExpired)
	errSendClosed     = fmt.Errorf("%w: send refused", ErrEdgeClosed)
	errCloseTwice     = fmt.Errorf("%w: already closed", ErrEdgeClosed)
	errFreePanicked   = errors.New("message: the store's Free panicked")
	errStorePanicked  = errors.New("message: a store or edge call panicked")
)

// multiSentinel is an error with its own text that matches several
// sentinels with errors.Is (one "message:" prefix, not one per sentinel).
var multiSentinel = errs.Multi

// contextError adds context to an error and keeps one "message:" prefix:
// "message: <what>: <err without its own message: prefix>".
type contextError struct {
	msg string
	err error
}

func (e *contextError) Error() string { return e.msg }
func (e *contextError) Unwrap() error { return e.err }

// withContext wraps err (matched by errors.Is through the result) with
// what, keeping one "message:" prefix. It allocates: use it on error paths
// only.
func withContext(what string, err error) error {
	return &contextError{msg: pkgPrefix + what + ": " + strings.TrimPrefix(err.Error(), pkgPrefix), err: err}
}

const pkgPrefix = "message: "
