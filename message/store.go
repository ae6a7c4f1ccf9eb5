package message

import (
	"fmt"
	"math"
	"sync/atomic"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/memclass"
	"github.com/cella-go/cella/token"
)

// entry is what one arena slot holds: the reference count and the message.
type entry[P any] struct {
	refs atomic.Int32
	msg  Message[P]
}

// Store keeps messages in an off-heap arena and hands out reference-counted
// tokens. Put returns a token holding one reference; Retain adds one (for
// fan-out); Free drops one, and the slot is recycled when the last reference
// is dropped. *Store[P] implements HeaderStore, so its tokens can travel on
// edges. All methods are safe for concurrent use.
//
// Tokens are generation-checked by the arena: a token whose slot was freed
// (or freed and reused) gets an error matching arena.ErrStale from every
// method. A token from another store is refused with arena.ErrBadToken or
// arena.ErrStale with high probability (each arena starts its generations
// at a random value), but the token format carries no store identity, so
// the check is not exact: keep tokens with the store that issued them.
type Store[P any] struct {
	a *arena.Arena[entry[P]]
}

// NewStore creates a store of cfg.Slots messages. P must hold no Go pointers
// (arena.ErrPointerType); cfg errors match arena.ErrInvalidConfig.
func NewStore[P any](cfg arena.Config) (*Store[P], error) {
	a, err := arena.New[entry[P]](cfg)
	if err != nil {
		return nil, fmt.Errorf("message: NewStore: %w", err)
	}
	return &Store[P]{a: a}, nil
}

// Put stores a message and returns its token, holding one reference. A zero
// h.Created is stamped with Now(). It fails with arena.ErrFull when every
// slot is in use and arena.ErrClosed after Close (both unwrapped, so that
// back-pressure allocates nothing).
func (s *Store[P]) Put(h Header, p P) (token.Token, error) {
	t, e, err := s.a.Alloc()
	if err != nil {
		return token.Nil, err
	}
	if h.Created == 0 {
		h.Created = Now()
	}
	e.msg.Header = h
	e.msg.Payload = p
	e.refs.Store(1)
	return t, nil
}

// PutFunc is Put for payloads too large to copy around: fill writes the
// message in place, in the slot, before anyone else can see it. The slot
// starts zeroed with h as its header (h.Created stamped if zero). If fill
// returns an error the slot is freed and the error returned.
func (s *Store[P]) PutFunc(h Header, fill func(*Message[P]) error) (token.Token, error) {
	if fill == nil {
		return token.Nil, fmt.Errorf("message: PutFunc: %w", arena.ErrNilFunc)
	}
	t, e, err := s.a.Alloc()
	if err != nil {
		return token.Nil, err
	}
	if h.Created == 0 {
		h.Created = Now()
	}
	e.msg.Header = h
	if err := fill(&e.msg); err != nil {
		if ferr := s.a.Free(t); ferr != nil {
			return token.Nil, fmt.Errorf("message: PutFunc: %w (and freeing the slot: %v)", err, ferr)
		}
		return token.Nil, err
	}
	e.refs.Store(1)
	return t, nil
}

// Header returns a copy of t's header without touching the payload.
func (s *Store[P]) Header(t token.Token) (Header, error) {
	var h Header
	live := false
	err := s.a.View(t, func(e *entry[P]) {
		if e.refs.Load() > 0 {
			live = true
			h = e.msg.Header
		}
	})
	if err != nil {
		return Header{}, err
	}
	if !live {
		return Header{}, released("Header", t)
	}
	return h, nil
}

// View runs fn with shared access to t's message; other View calls may run
// at the same time. fn must not keep the pointer or call Update on t.
func (s *Store[P]) View(t token.Token, fn func(*Message[P])) error {
	if fn == nil {
		return fmt.Errorf("message: View: %w", arena.ErrNilFunc)
	}
	live := false
	err := s.a.View(t, func(e *entry[P]) {
		if e.refs.Load() > 0 {
			live = true
			fn(&e.msg)
		}
	})
	if err == nil && !live {
		err = released("View", t)
	}
	return err
}

// Update runs fn with exclusive access to t's message. fn must not keep the
// pointer. With fan-out, every holder sees the update: copy first (Put a new
// message) if the holders must not.
func (s *Store[P]) Update(t token.Token, fn func(*Message[P])) error {
	if fn == nil {
		return fmt.Errorf("message: Update: %w", arena.ErrNilFunc)
	}
	live := false
	err := s.a.Update(t, func(e *entry[P]) {
		if e.refs.Load() > 0 {
			live = true
			fn(&e.msg)
		}
	})
	if err == nil && !live {
		err = released("Update", t)
	}
	return err
}

// Retain adds one reference to t, for handing the same message to one more
// holder (fan-out: one Retain per extra edge). It refuses a token whose last
// reference is already gone.
func (s *Store[P]) Retain(t token.Token) error {
	ok, overflow := false, false
	err := s.a.View(t, func(e *entry[P]) {
		for {
			r := e.refs.Load()
			if r <= 0 {
				return
			}
			if r == math.MaxInt32 {
				overflow = true
				return
			}
			if e.refs.CompareAndSwap(r, r+1) {
				ok = true
				return
			}
		}
	})
	switch {
	case err != nil:
		return err
	case overflow:
		return fmt.Errorf("message: Retain of %v: %w", t, ErrTooManyRefs)
	case !ok:
		return released("Retain", t)
	}
	return nil
}

// Free drops one reference to t; dropping the last one recycles the slot.
// Freeing more often than t was retained (plus one for Put) returns an error
// matching arena.ErrStale and changes nothing.
func (s *Store[P]) Free(t token.Token) error {
	dropped, last := false, false
	err := s.a.View(t, func(e *entry[P]) {
		for {
			r := e.refs.Load()
			if r <= 0 {
				return
			}
			if e.refs.CompareAndSwap(r, r-1) {
				dropped, last = true, r == 1
				return
			}
		}
	})
	if err != nil {
		return err
	}
	if !dropped {
		return released("Free", t)
	}
	if last {
		return s.a.Free(t)
	}
	return nil
}

// Refs returns t's current reference count (for tests and diagnostics).
func (s *Store[P]) Refs(t token.Token) (int, error) {
	n := int32(0)
	err := s.a.View(t, func(e *entry[P]) { n = e.refs.Load() })
	if err == nil && n <= 0 {
		return 0, released("Refs", t)
	}
	return int(n), err
}

// Available returns how many messages can still be stored; exact when no
// operation is in flight.
func (s *Store[P]) Available() int { return s.a.Available() }

// Capacity returns how many messages the store holds at most.
func (s *Store[P]) Capacity() int { return s.a.Capacity() }

// Class returns the memory class of the store's arena.
func (s *Store[P]) Class() memclass.Class { return s.a.Class() }

// Stats returns the underlying arena's counters.
func (s *Store[P]) Stats() arena.Stats { return s.a.Stats() }

// Close releases the store's memory. Every later call returns an error
// matching arena.ErrClosed; a second Close too. Close edges (and Drain them)
// before closing the store they free into.
func (s *Store[P]) Close() error { return s.a.Close() }

// released reports a token whose last reference was dropped but whose slot
// is not recycled yet: to the caller it is as stale as a recycled one.
func released(op string, t token.Token) error {
	return fmt.Errorf("message: %s of %v: %w (no references left)", op, t, arena.ErrStale)
}

// HeaderStore is implemented by every Store.
var _ HeaderStore = (*Store[struct{}])(nil)
