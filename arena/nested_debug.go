//go:build cella_debug

package arena

import (
	"bytes"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/cella-go/cella/token"
)

// The cella_debug build reports nested access to one slot as
// ErrNestedAccess instead of letting it deadlock. It keeps, per goroutine,
// the slots whose View or Update callback is running, and checks every
// View, Update, Load and LoadInto against them. Finding the goroutine costs
// a stack dump (about a microsecond): a debugging aid, not for production.

// holds maps a goroutine id to the slots whose callbacks it is running.
var holds sync.Map // uint64 → *[]heldSlot

type heldSlot struct {
	c     *core
	idx   uint32
	write bool
}

// goid returns the calling goroutine's id, parsed from its stack header
// ("goroutine 17 [running]:").
func goid() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		b = b[:i]
	}
	id, _ := strconv.ParseUint(string(b), 10, 64)
	return id
}

// debugNested says that this build reports nested access.
const debugNested = true

// checkNested reports ErrNestedAccess if the calling goroutine is inside a
// View or Update callback on slot idx of this arena and t is still valid (a
// freed token gets ErrStale at once, with no deadlock to report).
func (c *core) checkNested(idx uint32, op string, t token.Token) error {
	p := c.gate.EnterAny()
	live := !c.gate.Closed() && valid(atomic.LoadUint64(c.state(idx)), t.Generation())
	c.gate.Exit(p)
	if !live {
		return nil
	}
	v, ok := holds.Load(goid())
	if !ok {
		return nil
	}
	for _, h := range *v.(*[]heldSlot) {
		if h.c == c && h.idx == idx {
			outer := "View"
			if h.write {
				outer = "Update"
			}
			return fmt.Errorf("%w: %s of %v inside a %s callback on the same slot would deadlock",
				ErrNestedAccess, op, t, outer)
		}
	}
	return nil
}

// noteHold records that the calling goroutine runs a callback on slot idx.
func (c *core) noteHold(idx uint32, write bool) {
	id := goid()
	v, _ := holds.LoadOrStore(id, new([]heldSlot))
	s := v.(*[]heldSlot)
	*s = append(*s, heldSlot{c, idx, write})
}

// dropHold forgets the innermost record of slot idx for the calling
// goroutine, if there is one.
func (c *core) dropHold(idx uint32) {
	id := goid()
	v, ok := holds.Load(id)
	if !ok {
		return
	}
	s := v.(*[]heldSlot)
	for i := len(*s) - 1; i >= 0; i-- {
		if (*s)[i].c == c && (*s)[i].idx == idx {
			*s = append((*s)[:i], (*s)[i+1:]...)
			break
		}
	}
	if len(*s) == 0 {
		holds.Delete(id)
	}
}
