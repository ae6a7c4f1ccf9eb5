// Package arenalink carries the one arena operation that package message
// needs and package arena does not publish: a Free that also marks a word
// of the caller's own per-slot metadata, at the one moment when nobody else
// can see the slot (it is freed, and not yet back on a freelist).
//
// message.Store keeps a reference count per slot beside the arena. Before,
// dropping the last reference took two locked instructions: a CAS of the
// count to zero (which picked one winner among racing Frees), then the
// arena's CAS of the slot's state. With FreeMarking the arena's CAS picks
// the winner and the count is zeroed with a plain store: one locked
// instruction less on every message's last Free.
//
// Package arena sets the functions in its init; nothing else may set them.
package arenalink

import (
	"unsafe"

	"github.com/cella-go/cella/token"
)

// Core returns the part of an *arena.Arena[T] (passed as a) that does not
// depend on T, for FreeMarking. Call it once per arena and keep the result
// for the arena's life. a must be an *arena.Arena[T]; anything else panics.
var Core func(a any) unsafe.Pointer

// FreeMarking frees t in the arena whose Core is c, exactly as Arena.Free
// does (same errors, same deferred recycling under running callbacks).
// When, and only when, this call is the one that frees t, it also stores
// mark into *word: after the slot's state says freed, before the slot can
// be allocated again. A call that does not free t (a stale or foreign
// token, a Free that lost a race, a closed arena) leaves *word alone.
//
// word must stay mapped while the call runs and may be read concurrently
// with atomic loads; the store is a plain one (atomic under the race
// detector), so nobody may write *word with anything but a CAS meanwhile.
var FreeMarking func(c unsafe.Pointer, t token.Token, word *uint64, mark uint64) error
