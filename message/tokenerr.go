package message

import (
	"math"
	"strconv"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

var errNilToken error = &tokenError{op: "send", t: token.Nil, kind: badIndex}

// tokenKind says what is known about a token a store refused.
type tokenKind uint8

const (
	// staleOrForeign: the token does not match its slot's live message. It
	// was freed, or another store (or nobody) issued it: tokens carry no
	// store identity, so the two cannot be told apart.
	staleOrForeign tokenKind = iota
	// released: the slot's last message had this token's generation and
	// its last reference was freed (the slot may not be reused yet).
	released
	// badIndex: the Nil token, a generation no arena issues, or an index
	// outside the store.
	badIndex
	// tooManyRefs: Retain would overflow the reference count.
	tooManyRefs
)

// tokenError is a store's error about one token. It reads once ("message:
// Free of 7@3: stale or foreign token") and matches the arena's sentinel
// for its kind (arena.ErrStale, arena.ErrBadToken) or ErrTooManyRefs. With
// an empty op it leaves out the "message: op of token:" part, for callers
// that add their own (an edge's send).
type tokenError struct {
	op    string
	t     token.Token
	kind  tokenKind
	slots uint32 // badIndex: the store's slot count, 0 = not known
}

// staleKind classifies a token of generation gen refused by a slot whose
// metadata reads r.
func staleKind(r, gen uint64) tokenKind {
	if r>>32 == gen {
		return released
	}
	return staleOrForeign
}

func (e *tokenError) Error() string {
	var b []byte
	if e.op != "" {
		b = append(b, "message: "...)
		b = append(b, e.op...)
		if e.t.IsNil() {
			b = append(b, " of the Nil token: "...)
		} else {
			b = append(b, " of "...)
			b = append(b, e.t.String()...)
			b = append(b, ": "...)
		}
	}
	switch e.kind {
	case staleOrForeign:
		b = append(b, "stale or foreign token (freed, or not issued by this store)"...)
	case released:
		b = append(b, "stale token (its last reference was freed)"...)
	case tooManyRefs:
		b = append(b, "too many references"...)
	default:
		b = append(b, "bad token"...)
		if !e.t.IsNil() && e.slots != 0 && e.t.Index() >= e.slots {
			b = append(b, " (index must be < "...)
			b = strconv.AppendUint(b, uint64(e.slots), 10)
			b = append(b, " slots)"...)
		} else if !e.t.IsNil() && e.t.Generation() == 0 {
			b = append(b, " (generation 0 is never issued)"...)
		}
	}
	return string(b)
}

func (e *tokenError) Unwrap() error {
	switch e.kind {
	case staleOrForeign, released:
		return arena.ErrStale
	case tooManyRefs:
		return ErrTooManyRefs
	}
	return arena.ErrBadToken
}

// unissued reports a generation no arena issues: 0, and 2^32-1, the
// generation of a retired slot.
func unissued(gen uint64) bool { return gen == 0 || gen == math.MaxUint32 }
