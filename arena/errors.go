package arena

import (
	"errors"
	"fmt"

	"github.com/cella-go/cella/token"
)

// Sentinel errors. Match them with errors.Is: configuration and token errors
// come wrapped with context (which field, which token, which operation; a
// token error is one small allocation, formatted only when printed).
// ErrFull and ErrClosed come bare from the hot paths, so that back-pressure
// costs no allocation.
var (
	// ErrFull means no shard had a free slot, after stealing from all of them.
	ErrFull = errors.New("arena: full (no free slot in any shard)")
	// ErrStale means the token's slot was freed since the token was issued:
	// a double free, a use after free, or a token whose slot was reused.
	ErrStale = errors.New("arena: stale or foreign token (freed since it was issued, or issued by another arena)")
	// ErrBadToken means the Nil token, an index outside the arena, or a
	// generation no arena issues.
	ErrBadToken = errors.New("arena: bad token")
	// ErrClosed means the arena was closed.
	ErrClosed = errors.New("arena: closed")
	// ErrInvalidConfig means a Config field is out of range; the wrapping
	// message names the field.
	ErrInvalidConfig = errors.New("arena: invalid config")
	// ErrPointerType means the payload type holds Go pointers, which the
	// garbage collector could not see in off-heap memory.
	ErrPointerType = errors.New("arena: payload type holds Go pointers")
	// ErrNilFunc means View or Update was given a nil callback.
	ErrNilFunc = errors.New("arena: nil callback")
	// ErrNestedAccess means a View, Update, Load or LoadInto of a slot
	// from inside a View or Update callback on the same slot: it would
	// deadlock. Only builds with -tags cella_debug detect it.
	ErrNestedAccess = errors.New("arena: nested access to a slot from its own callback")
	// ErrNilPointer means LoadInto was given a nil destination.
	ErrNilPointer = errors.New("arena: nil destination pointer")
)

// tokenError is a refused call's error: the sentinel (err), the operation
// and the token. The message is formatted only when Error is called, so a
// refusal costs one small allocation, not a formatted string (a stale check
// in a loop stays cheap).
type tokenError struct {
	err   error // ErrStale, ErrBadToken, ErrNilFunc or ErrNilPointer
	op    string
	t     token.Token
	slots uint32 // the arena's, for ErrBadToken's message
}

func (e *tokenError) Error() string {
	switch {
	case e.err == ErrBadToken && e.t.IsNil():
		return fmt.Sprintf("%v: %s of the Nil token", e.err, e.op)
	case e.err == ErrBadToken:
		return fmt.Sprintf("%v: %s of %v (index must be < %d slots, generation 1..%d)",
			e.err, e.op, e.t, e.slots, uint32(retiredGen-1))
	case e.err == ErrNilPointer:
		return fmt.Sprintf("%v: %s of %v into a nil *T", e.err, e.op, e.t)
	}
	return fmt.Sprintf("%v: %s of %v", e.err, e.op, e.t)
}

func (e *tokenError) Unwrap() error { return e.err }
