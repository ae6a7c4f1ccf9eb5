package shard

import (
	"sync/atomic"

	"github.com/cella-go/cella/internal/atomicx"
)

// Gate guards memory that Close will unmap while other goroutines may still be
// calling in. Every section that touches the memory runs between Enter and
// Exit; Close marks the gate closed and waits for a grace period, after which
// no section that could have missed the mark is still running.
//
// In the default build a section is a pinned stretch of code (see Pin): it
// costs no atomic write at all, and the grace period is one brief
// stop-the-world, which cannot complete while any goroutine is pinned. In the
// purego build each section increments a striped in-flight counter, and the
// grace period waits for every stripe to drain.
//
// A section must be short and must never wait for another goroutine: a pinned
// goroutine that spins on a word held by a descheduled goroutine would stall
// its P (and the grace period) forever.
type Gate struct {
	closed atomic.Bool
	_      atomicx.Pad
	// inflight is used only by the purego build.
	inflight []stripe
}

// pureStripes is how many in-flight counters the purego build spreads
// sections over: enough that two cores rarely pick the same one.
const pureStripes = 64

type stripe struct {
	n atomic.Int64
	_ [atomicx.CacheLine - 8]byte
}

// Init readies a zero Gate (open). Call it once, before use.
func (g *Gate) Init() {
	if !Pinned {
		g.inflight = make([]stripe, pureStripes)
	}
}

// Enter starts a section and returns the caller's P id (in the purego build,
// a stripe id). It returns ok == false, with no section open, once the gate
// is closed.
func (g *Gate) Enter() (p int, ok bool) {
	p = g.EnterAny()
	if g.closed.Load() {
		g.Exit(p)
		return 0, false
	}
	return p, true
}

// EnterAny starts a section even if the gate is closed. It is for finishing
// work that Close waits for (releasing a slot a callback held), and for hot
// paths that spell Enter out (EnterAny, then Closed, then Exit and fail if
// it is closed: the same section, but Enter itself makes two calls and does
// not inline). It is defined per build in pin.go and pin_purego.go, as is
// Exit, which ends the section Enter or EnterAny started; the pinned build's
// versions are a bare procPin and procUnpin and inline.

// Closed reports whether Close has been called.
func (g *Gate) Closed() bool { return g.closed.Load() }

// Close marks the gate closed and waits for the grace period. It returns false
// if the gate was already closed (it then does not wait).
func (g *Gate) Close() bool {
	if !g.closed.CompareAndSwap(false, true) {
		return false
	}
	g.Quiesce()
	return true
}

// Quiesce waits until every section that was open when it was called has
// ended.
func (g *Gate) Quiesce() {
	if Pinned {
		quiesce()
		return
	}
	var b atomicx.Backoff
	for i := range g.inflight {
		for g.inflight[i].n.Load() != 0 {
			b.Wait()
		}
	}
}
