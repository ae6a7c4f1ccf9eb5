package message

import (
	"fmt"
	"math"
	"sync/atomic"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/memclass"
	"github.com/cella-go/cella/token"
)

// slotMeta is a store's Go-heap shadow of one arena slot: the reference
// count of the live allocation and the header fields an edge's admission
// needs. It lets Retain, Free and an edge's send check a token with a few
// plain atomic loads and one CAS, instead of taking and dropping an arena
// reader hold (two atomic read-modify-writes, two pin sections and a
// callback) per call. Being on the Go heap, it stays readable after Close
// unmaps the arena, so the fast paths need no gate.
//
// ref packs the generation of the allocation it describes (high 32 bits)
// with its reference count (low 32 bits). Put writes deadline and info,
// then publishes ref = gen<<32 | 1; the last Free sets the count to 0
// before the slot goes back to the arena, and the next Put of the slot
// overwrites the generation. A token matches its slot's metadata only
// while ref carries its generation and a count above zero, and the arena
// never issues a generation twice for one slot, so the check is exact.
type slotMeta struct {
	ref      atomic.Uint64
	deadline atomic.Int64
	info     atomic.Uint64 // packInfo(Header)
}

// packInfo packs what an edge keeps of a header besides its deadline:
// Size in the high 32 bits, the raw QoS in bits 0-7 and DegradeAllowed in
// bit 8.
func packInfo(h *Header) uint64 {
	v := uint64(h.Size)<<32 | uint64(h.QoS)
	if h.Flags.Has(DegradeAllowed) {
		v |= infoDegrade
	}
	return v
}

const infoDegrade = 1 << 8

func refOf(gen uint32, n uint32) uint64 { return uint64(gen)<<32 | uint64(n) }

// Store keeps messages in an off-heap arena and hands out reference-counted
// tokens. Put returns a token holding one reference; Retain adds one (for
// fan-out); Free drops one, and the slot is recycled when the last reference
// is dropped. *Store[P] implements HeaderStore, so its tokens can travel on
// edges. All methods are safe for concurrent use.
//
// Tokens are generation-checked: a token whose slot was freed (or freed and
// reused) gets an error matching arena.ErrStale from every method. A token
// from another store is refused with arena.ErrBadToken or arena.ErrStale
// with high probability (each arena starts its generations at a random
// value), but the token format carries no store identity, so the check is
// not exact: keep tokens with the store that issued them.
//
// Besides the arena, a store keeps 24 bytes of Go-heap (pointer-free,
// never scanned) metadata per slot: reference counts and a copy of the
// header fields edges read, so that a hop does not touch the slot at all.
type Store[P any] struct {
	a      *arena.Arena[Message[P]]
	meta   []slotMeta
	closed atomic.Bool
}

// NewStore creates a store of cfg.Slots messages. P must hold no Go pointers
// (arena.ErrPointerType); cfg errors match arena.ErrInvalidConfig.
func NewStore[P any](cfg arena.Config) (*Store[P], error) {
	a, err := arena.New[Message[P]](cfg)
	if err != nil {
		return nil, fmt.Errorf("message: NewStore: %w", err)
	}
	return &Store[P]{a: a, meta: make([]slotMeta, a.Capacity())}, nil
}

// Put stores a message and returns its token, holding one reference. A zero
// h.Created is stamped with Now(). It fails with arena.ErrFull when every
// slot is in use and arena.ErrClosed after Close (both unwrapped, so that
// back-pressure allocates nothing).
func (s *Store[P]) Put(h Header, p P) (token.Token, error) {
	t, m, err := s.a.Alloc()
	if err != nil {
		return token.Nil, err
	}
	if h.Created == 0 {
		h.Created = Now()
	}
	m.Header = h
	m.Payload = p
	s.publish(t, &h)
	return t, nil
}

// publish makes t's freshly written message visible with one reference.
func (s *Store[P]) publish(t token.Token, h *Header) {
	md := &s.meta[t.Index()]
	md.deadline.Store(h.Deadline)
	md.info.Store(packInfo(h))
	md.ref.Store(refOf(t.Generation(), 1))
}

// PutFunc is Put for payloads too large to copy around: fill writes the
// message in place, in the slot, before anyone else can see it. The slot
// starts zeroed with h as its header (h.Created stamped if zero). If fill
// returns an error, or panics, the slot is freed and the error returned (or
// the panic propagated).
func (s *Store[P]) PutFunc(h Header, fill func(*Message[P]) error) (token.Token, error) {
	if fill == nil {
		return token.Nil, fmt.Errorf("message: PutFunc: %w", arena.ErrNilFunc)
	}
	t, m, err := s.a.Alloc()
	if err != nil {
		return token.Nil, err
	}
	if h.Created == 0 {
		h.Created = Now()
	}
	m.Header = h
	filled := false
	defer func() {
		if !filled {
			// fill panicked: the slot was never published, give it back.
			s.a.Free(t)
		}
	}()
	ferr := fill(m)
	filled = true
	if ferr != nil {
		if err := s.a.Free(t); err != nil {
			return token.Nil, fmt.Errorf("message: PutFunc: %w (and freeing the slot: %v)", ferr, err)
		}
		return token.Nil, ferr
	}
	s.publish(t, &m.Header)
	return t, nil
}

// lookup returns t's metadata, or the error for a token this store cannot
// have issued.
func (s *Store[P]) lookup(op string, t token.Token) (*slotMeta, error) {
	idx := t.Index()
	if t.Generation() == 0 || idx >= uint32(len(s.meta)) {
		return nil, badToken(op, t, len(s.meta))
	}
	if s.closed.Load() {
		return nil, arena.ErrClosed
	}
	return &s.meta[idx], nil
}

// admitInfo is the edges' fast path of Header: it validates t and returns
// the header fields admission needs, with a few atomic loads and without
// touching the slot.
func (s *Store[P]) admitInfo(t token.Token) (deadline int64, info uint64, err error) {
	md, err := s.lookup("Header", t)
	if err != nil {
		return 0, 0, err
	}
	gen := uint64(t.Generation())
	r := md.ref.Load()
	deadline, info = md.deadline.Load(), md.info.Load()
	// A count that was above zero in both loads was above zero in between:
	// for one generation it never comes back from zero, so the fields read
	// belong to this allocation (a later one writes them only after the
	// count reached zero).
	if r>>32 != gen || uint32(r) == 0 {
		return 0, 0, s.staleErr("Header", t)
	}
	if r = md.ref.Load(); r>>32 != gen || uint32(r) == 0 {
		return 0, 0, s.staleErr("Header", t)
	}
	return deadline, info, nil
}

// staleErr reports a token that does not match its slot's live allocation.
func (s *Store[P]) staleErr(op string, t token.Token) error {
	r := s.meta[t.Index()].ref.Load()
	if r>>32 == uint64(t.Generation()) {
		return released(op, t) // last reference dropped, slot not reused yet
	}
	return fmt.Errorf("message: %s of %v: %w", op, t, arena.ErrStale)
}

// live reports whether t holds references, for callers inside an arena hold.
func (s *Store[P]) live(t token.Token) bool {
	r := s.meta[t.Index()].ref.Load()
	return r>>32 == uint64(t.Generation()) && uint32(r) != 0
}

// Header returns a copy of t's header without touching the payload.
func (s *Store[P]) Header(t token.Token) (Header, error) {
	var h Header
	ok := false
	err := s.a.View(t, func(m *Message[P]) {
		if s.live(t) {
			ok = true
			h = m.Header
		}
	})
	if err != nil {
		return Header{}, err
	}
	if !ok {
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
	ok := false
	err := s.a.View(t, func(m *Message[P]) {
		if s.live(t) {
			ok = true
			fn(m)
		}
	})
	if err == nil && !ok {
		err = released("View", t)
	}
	return err
}

// Update runs fn with exclusive access to t's message. fn must not keep the
// pointer. With fan-out, every holder sees the update: copy first (Put a new
// message) if the holders must not. Edges that already hold t keep the
// Deadline, QoS, Flags and Size they read when it was sent.
func (s *Store[P]) Update(t token.Token, fn func(*Message[P])) error {
	if fn == nil {
		return fmt.Errorf("message: Update: %w", arena.ErrNilFunc)
	}
	ok := false
	err := s.a.Update(t, func(m *Message[P]) {
		if s.live(t) {
			ok = true
			defer s.refresh(t, m)
			fn(m)
		}
	})
	if err == nil && !ok {
		err = released("Update", t)
	}
	return err
}

// refresh copies the admission fields of m's header to t's metadata.
func (s *Store[P]) refresh(t token.Token, m *Message[P]) {
	md := &s.meta[t.Index()]
	md.deadline.Store(m.Header.Deadline)
	md.info.Store(packInfo(&m.Header))
}

// Retain adds one reference to t, for handing the same message to one more
// holder (fan-out: one Retain per extra edge). It refuses a token whose last
// reference is already gone.
func (s *Store[P]) Retain(t token.Token) error {
	md, err := s.lookup("Retain", t)
	if err != nil {
		return err
	}
	gen := uint64(t.Generation())
	for {
		r := md.ref.Load()
		if r>>32 != gen || uint32(r) == 0 {
			return s.staleErr("Retain", t)
		}
		if uint32(r) == math.MaxInt32 {
			return fmt.Errorf("message: Retain of %v: %w", t, ErrTooManyRefs)
		}
		if md.ref.CompareAndSwap(r, r+1) {
			return nil
		}
	}
}

// Free drops one reference to t; dropping the last one recycles the slot.
// Freeing more often than t was retained (plus one for Put) returns an error
// matching arena.ErrStale and changes nothing.
func (s *Store[P]) Free(t token.Token) error {
	md, err := s.lookup("Free", t)
	if err != nil {
		return err
	}
	gen := uint64(t.Generation())
	for {
		r := md.ref.Load()
		if r>>32 != gen || uint32(r) == 0 {
			return s.staleErr("Free", t)
		}
		if md.ref.CompareAndSwap(r, r-1) {
			if uint32(r) == 1 {
				return s.a.Free(t)
			}
			return nil
		}
	}
}

// Refs returns t's current reference count (for tests and diagnostics).
func (s *Store[P]) Refs(t token.Token) (int, error) {
	md, err := s.lookup("Refs", t)
	if err != nil {
		return 0, err
	}
	r := md.ref.Load()
	if r>>32 != uint64(t.Generation()) || uint32(r) == 0 {
		return 0, s.staleErr("Refs", t)
	}
	return int(uint32(r)), nil
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
func (s *Store[P]) Close() error {
	s.closed.Store(true)
	return s.a.Close()
}

// released reports a token whose last reference was dropped but whose slot
// is not recycled yet: to the caller it is as stale as a recycled one.
func released(op string, t token.Token) error {
	return fmt.Errorf("message: %s of %v: %w (no references left)", op, t, arena.ErrStale)
}

func badToken(op string, t token.Token, slots int) error {
	if t.IsNil() {
		return fmt.Errorf("message: %s of the Nil token: %w", op, arena.ErrBadToken)
	}
	return fmt.Errorf("message: %s of %v: %w (index must be < %d slots)", op, t, arena.ErrBadToken, slots)
}

// HeaderStore is implemented by every Store.
var _ HeaderStore = (*Store[struct{}])(nil)

// admitter is the fast path an edge uses instead of HeaderStore.Header when
// its store offers it.
type admitter interface {
	admitInfo(token.Token) (deadline int64, info uint64, err error)
}

var _ admitter = (*Store[struct{}])(nil)
