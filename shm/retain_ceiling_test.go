package shm

import (
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cella-go/cella/message"
)

// TestRetainCeilingRace: two Retains racing at the reference ceiling less
// one must not both add: one succeeds, the other gets ErrTooManyRefs, and
// the count stops at the ceiling (a read-then-add let it wrap to 0, which
// would let the next Free recycle a message still referenced). The count
// is set near the ceiling directly: reaching it takes 2^32 Retains.
func TestRetainCeilingRace(t *testing.T) {
	dir := memDir(t)
	s, err := CreateStore[tick]("ceiling", StoreConfig{Slots: 4, Dir: dir, Watch: -1})
	must(t, err, "CreateStore")
	defer s.Close()
	tok, err := s.Put(message.Header{}, tick{})
	must(t, err, "Put")
	idx := tok.Index()
	ref := s.a.store.ref(idx)
	for round := range 20000 {
		atomic.StoreUint32(ref, math.MaxUint32-1)
		var ok, refused, ready atomic.Int32
		var wg sync.WaitGroup
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ready.Add(1)
				for ready.Load() < 2 { // start together: the window is a few atomics wide
				}
				switch err := s.Retain(tok); {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, message.ErrTooManyRefs):
					refused.Add(1)
				default:
					t.Errorf("Retain: %v", err)
				}
			}()
		}
		wg.Wait()
		if got := atomic.LoadUint32(ref); got != math.MaxUint32 || ok.Load() != 1 || refused.Load() != 1 {
			t.Fatalf("round %d: count %d after two racing Retains at the ceiling less one (%d succeeded, %d refused); want the ceiling, 1 and 1",
				round, got, ok.Load(), refused.Load())
		}
		// Give back the one Retain's table entry, and the count.
		if !s.a.store.tab.remove(idx) {
			t.Fatal("the successful Retain left no table entry")
		}
	}
	atomic.StoreUint32(ref, 1)
	must(t, s.Free(tok), "Free")
	if got := s.Available(); got != s.Capacity() {
		t.Errorf("Available %d of %d after the last Free", got, s.Capacity())
	}
}
