package message

import (
	"context"
	"iter"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// PutWait is Put that waits for a free slot instead of failing with
// arena.ErrFull. It returns at once when a slot is free (also when ctx is
// done already); otherwise it parks
// (no busy spinning) until a Free makes room, ctx is done (the error then
// matches ctx.Err() with errors.Is), or the store is closed
// (arena.ErrClosed). A nil ctx waits like context.Background(). Waiters are
// served in arrival order, and a waiter that gives up loses no slot.
// h.Created and h.Size get Put's defaults.
func (s *Store[P]) PutWait(ctx context.Context, h Header, p P) (token.Token, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	if s.gate.Closed() {
		return token.Nil, arena.ErrClosed
	}
	t, m, err := s.a.AllocWait(ctx)
	if err != nil {
		return token.Nil, err
	}
	return s.finishPut(t, m, &h, &p)
}

// Tokens yields the token of every message that holds references when the
// iteration reaches its slot. It is weakly consistent, like sync.Map.Range:
// a message that is live for the whole iteration is yielded exactly once,
// a message whose last reference is freed before its slot is reached is not
// yielded, and messages put or freed meanwhile may or may not be. Breaking
// out of the loop is fine. After Close it yields nothing. The loop body may
// call any store method, including Free of the yielded token.
//
// Use it for leak reports in tests, clean-up at shutdown and snapshots; it
// visits every slot the arena ever used, so it is not for hot paths.
func (s *Store[P]) Tokens() iter.Seq[token.Token] {
	return func(yield func(token.Token) bool) {
		for t := range s.a.Tokens() {
			// The arena yields allocated slots; the store's own view is the
			// reference count (a slot is allocated before Put publishes it
			// and after its last reference is dropped).
			g := s.gate.EnterAny()
			if s.gate.Closed() {
				s.gate.Exit(g)
				return
			}
			r := s.md(t.Index()).ref.Load()
			s.gate.Exit(g)
			if r>>32 != uint64(t.Generation()) || uint32(r) == 0 {
				continue
			}
			if !yield(t) {
				return
			}
		}
	}
}

// Trim gives the memory of free message slots back to the operating system
// (see arena.Arena.Trim) and reports how many bytes of payload it released.
// Tokens stay exactly as stale as before, and a recycled slot still comes
// back zeroed. The store's own metadata pages (24 bytes per slot: reference
// count, deadline, admission info) go back too where every slot on the page
// is free: a free slot's reference count is zero, which is what a released
// page reads as, so every check of a stale token still fails. After Close,
// Trim returns arena.ErrClosed.
func (s *Store[P]) Trim() (released int64, err error) {
	if s.gate.Closed() {
		return 0, arena.ErrClosed
	}
	page := uintptr(os.Getpagesize())
	return s.a.TrimWith(func(first, end uint32) {
		// The arena holds slots [first, end): nobody can publish one of
		// them meanwhile, and a stale token's Free or Retain only reads
		// their zero counts. Close waits for this Trim before it unmaps.
		lo := (uintptr(first)*metaSize + page - 1) &^ (page - 1)
		hi := uintptr(end) * metaSize &^ (page - 1)
		if hi > lo {
			unix.Madvise(unsafe.Slice((*byte)(unsafe.Add(s.meta, lo)), hi-lo), unix.MADV_DONTNEED)
		}
	})
}
