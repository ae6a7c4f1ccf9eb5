package arena

import "errors"

// Sentinel errors. Match them with errors.Is: configuration and token errors
// come wrapped with context (which field, which token, which operation).
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
