// Package arenalink carries the arena operations that package message
// needs and package arena does not publish: a Free that also marks a word
// of the caller's own per-slot metadata, at the one moment when nobody else
// can see the slot (it is freed, and not yet back on a freelist); an
// optimistic copy of the start of a slot (a message's header); and View's
// reader hold taken and dropped without a callback in between.
//
// message.Store keeps a reference count per slot beside the arena. Before,
// dropping the last reference took two locked instructions: a CAS of the
// count to zero (which picked one winner among racing Frees), then the
// arena's CAS of the slot's state. With FreeMarking the arena's CAS picks
// the winner and the count is zeroed with a plain store: one locked
// instruction less on every message's last Free. Store.Header read the
// header under an arena reader hold (two locked instructions); LoadHead
// copies it as Arena.Load copies a value, with none, and reads the count in
// the same section.
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

// HeadMax is the most LoadHead copies.
const HeadMax = 64

// LoadHead returns a copy of the first n bytes (n at most HeadMax and at
// most the arena's value size) of t's value in the arena whose Core is c,
// with Arena.Load's guarantees (never torn by a concurrent Update; nothing
// written to shared memory, so no locked instruction; a reader hold under
// the race detector) and its errors, op naming the call in them. If word is
// not nil it also returns *word, loaded (atomically) while the copy's slot
// was allocated with t's generation and the arena open: message.Store.Header
// reads the message's reference count with it, in the same pinned section,
// where the metadata cannot be unmapped.
//
// The copy is returned by value, in 8-byte words (aligned for a Header): a
// pointer passed through a function variable would make the caller's buffer
// escape to the heap.
var LoadHead func(c unsafe.Pointer, t token.Token, n uintptr, op string, word *uint64) (head [HeadMax / 8]uint64, w uint64, err error)

// Hold takes a reader hold on t's slot in the arena whose Core is c, as
// Arena.View does before it runs its callback (same errors, op naming the
// call), and returns the slot's value and, if word is not nil, *word loaded
// under the hold. Release(c, t) drops the hold; call it exactly once for
// every Hold that returned no error, from any goroutine. message.Store.View
// uses the pair instead of Arena.View: no callback between the arena and
// the user's function, and the count read under the hold it already takes.
var Hold func(c unsafe.Pointer, t token.Token, op string, word *uint64) (v unsafe.Pointer, w uint64, err error)

// Release drops a hold taken by Hold.
var Release func(c unsafe.Pointer, t token.Token)

// Touched calls f with each shard's range of the slots ever handed out in
// the arena whose Core is c, [lo, hi): the only slots whose own per-slot
// metadata a caller's scan needs to read (message.Store.Close counts the
// references still held). The rest were never allocated, and reading
// their metadata would commit it: Close of a store of 2^28 slots with 800
// messages held grew the process by 3.0-4.7 GiB before (two runs), and a
// store of 2^31 slots had it OOM-killed. Usable after the arena is closed.
var Touched func(c unsafe.Pointer, f func(lo, hi uint32))
