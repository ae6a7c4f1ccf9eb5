package shm

import (
	"errors"

	"github.com/cella-go/cella/arena"
)

// The token and capacity errors are the arena package's own sentinels, so
// that code written against arena.ErrStale or arena.ErrFull handles a shared
// arena unchanged.
var (
	ErrFull          = arena.ErrFull
	ErrStale         = arena.ErrStale
	ErrBadToken      = arena.ErrBadToken
	ErrClosed        = arena.ErrClosed
	ErrInvalidConfig = arena.ErrInvalidConfig
	ErrPointerType   = arena.ErrPointerType
	ErrNilFunc       = arena.ErrNilFunc
	ErrNilPointer    = arena.ErrNilPointer
)

// Errors of the segment itself.
var (
	// ErrExists means Create found a segment of that name that a live
	// process still has attached.
	ErrExists = errors.New("shm: segment exists and is in use")
	// ErrNotExist means Attach found no segment of that name (or only one
	// whose creator died before finishing it).
	ErrNotExist = errors.New("shm: no such segment")
	// ErrMismatch means the segment was made for another payload type or
	// layout version; the wrapping message says which field differs.
	ErrMismatch = errors.New("shm: segment does not match")
	// ErrCorrupt means the segment is truncated or its header is not one
	// cella writes.
	ErrCorrupt = errors.New("shm: segment is truncated or corrupt")
	// ErrTooManyProcs means MaxProcs processes already have the segment
	// attached.
	ErrTooManyProcs = errors.New("shm: too many processes attached")
	// ErrBadName means the segment name is empty, too long, or holds a
	// character other than letters, digits, '.', '_' and '-'.
	ErrBadName = errors.New("shm: bad segment name")
)
