package arena

import (
	"iter"
	"sync/atomic"

	"github.com/cella-go/cella/token"
)

// tokensChunk is how many state words Tokens reads in one gate section: long
// enough that pinning costs little per slot, short enough that a section
// stays brief (a few hundred nanoseconds) and Close's grace period is not
// held up.
const tokensChunk = 256

// Tokens returns an iterator over the tokens of the arena's live allocations,
// in slot order within each shard's range. It is weakly consistent, like
// sync.Map.Range: each slot is looked at once, and its token is yielded if
// the slot is allocated when the iteration reaches it. So every slot that
// stays allocated for the whole iteration is yielded exactly once, a token
// that is freed before the iteration reaches it is not yielded, and a slot
// allocated or freed meanwhile may or may not be. A token is checked again
// just before it is yielded, so a token freed by the loop body (or by another
// goroutine) after its chunk was read is not yielded either.
//
// The loop body runs outside any arena section: it may call any method of the
// arena, including Free of the yielded token (shutdown clean-up) and Close.
// Breaking out of the loop is fine. After Close the iterator yields nothing,
// and a Close during the iteration ends it.
//
// Only the slots ever handed out are read, so iterating a large arena that
// was little used is cheap.
func (a *Arena[T]) Tokens() iter.Seq[token.Token] {
	return a.core.tokens
}

// tokens is Tokens's iterator. State words are read only inside gate
// sections (one per chunk, one per yielded token), never while yield runs, so
// a Close during the iteration cannot make it touch unmapped memory.
func (c *core) tokens(yield func(token.Token) bool) {
	var live [tokensChunk]uint32
	for sh := 0; sh < c.set.Len(); sh++ {
		lo, hi := c.set.Touched(sh) // Go memory: readable after Close too
		for idx := lo; idx < hi; {
			p, ok := c.gate.Enter()
			if !ok {
				return
			}
			n := 0
			for end := idx + min(hi-idx, tokensChunk); idx < end; idx++ {
				if atomic.LoadUint64(c.state(idx))&allocBit != 0 {
					live[n] = idx
					n++
				}
			}
			c.gate.Exit(p)
			for _, i := range live[:n] {
				t, ok := c.liveToken(i)
				if !ok {
					continue
				}
				if !yield(t) {
					return
				}
			}
			if c.gate.Closed() {
				return
			}
		}
	}
}

// liveToken returns the token of slot idx if the slot is allocated now.
func (c *core) liveToken(idx uint32) (token.Token, bool) {
	p, ok := c.gate.Enter()
	if !ok {
		return token.Nil, false
	}
	s := atomic.LoadUint64(c.state(idx))
	c.gate.Exit(p)
	if s&allocBit == 0 {
		return token.Nil, false
	}
	return token.New(idx, genOf(s)), true
}
