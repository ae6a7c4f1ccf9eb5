package arena

import (
	"sync/atomic"
	"unsafe"

	"github.com/cella-go/cella/internal/arenalink"
	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/token"
)

// This file fills in internal/arenalink: the arena operations package
// message needs and arena does not publish.

// markWord stores a FreeMarking mark: a plain store, atomic under the race
// detector (see raceEnabled). The freed slot's state was just CASed, and the
// slot reaches another allocator only through a freelist's synchronising
// push and pop, so whoever allocates it next sees the mark.
func markWord(word *uint64, mark uint64) {
	if raceEnabled {
		atomic.StoreUint64(word, mark)
		return
	}
	*word = mark
}

// corePtr gives arenalink.Core the core of an *Arena[T].
func (c *core) corePtr() *core { return c }

func init() {
	arenalink.Core = func(a any) unsafe.Pointer {
		return unsafe.Pointer(a.(interface{ corePtr() *core }).corePtr())
	}
	arenalink.FreeMarking = func(c unsafe.Pointer, t token.Token, word *uint64, mark uint64) error {
		return (*core)(c).free(t, word, mark)
	}
	arenalink.Hold = func(c unsafe.Pointer, t token.Token, op string, word *uint64) (v unsafe.Pointer, w uint64, err error) {
		co := (*core)(c)
		if i := t.Index(); i < co.slots {
			// The hold's CAS waits for the state word's line; meanwhile
			// the lines the caller reads next are on their way.
			if word != nil {
				atomicx.PrefetchWrite(unsafe.Pointer(word))
			}
			atomicx.Prefetch(co.slot(i))
		}
		idx, err := co.lock(t, op, false)
		if err != nil {
			return nil, 0, err
		}
		if debugNested {
			co.noteHold(idx, false)
		}
		if word != nil {
			w = atomic.LoadUint64(word)
		}
		return co.slot(idx), w, nil
	}
	arenalink.Release = func(c unsafe.Pointer, t token.Token) {
		co := (*core)(c)
		if debugNested {
			co.dropHold(t.Index())
		}
		co.unlockRead(t.Index())
	}
	arenalink.Touched = func(c unsafe.Pointer, f func(lo, hi uint32)) {
		set := (*core)(c).set
		for sh := 0; sh < set.Len(); sh++ {
			f(set.Touched(sh)) // Go memory: readable after Close too
		}
	}
	arenalink.LoadHead = func(c unsafe.Pointer, t token.Token, n uintptr, op string, word *uint64) (head [arenalink.HeadMax / 8]uint64, w uint64, err error) {
		w, err = (*core)(c).loadBytes(t, unsafe.Pointer(&head), min(n, arenalink.HeadMax), op, word)
		return
	}
}
