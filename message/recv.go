package message

import (
	"context"
	"runtime"

	"github.com/cella-go/cella/token"
)

// Recv moves the next token out of the edge: the oldest LatencyCritical one
// if any, else the oldest of the other lane. It waits until a token is
// available, until ctx is done (returning ctx.Err()), or until the edge is
// closed and empty (returning ErrEdgeClosed). Expired messages met on the
// way are freed, never returned.
func (e *Edge) Recv(ctx context.Context) (token.Token, error) {
	if ctx == nil { // a nil context waits without a deadline, never panics
		ctx = context.Background()
	}
	e.mu.Lock()
	var w *waiter
	spins := 0
	for {
		if t, ok := e.popLocked(); ok {
			if w != nil && !e.recvq.empty() && e.n > 0 {
				// We were woken for one token; more may wait for others.
				e.recvq.wake(e.recvq.head)
			}
			e.mu.Unlock()
			if w != nil {
				putWaiter(w)
			}
			return t, nil
		}
		if e.closed {
			e.mu.Unlock()
			if w != nil {
				putWaiter(w)
			}
			return token.Nil, ErrEdgeClosed
		}
		if w == nil && spins < recvSpins {
			// Empty: before parking (a futex round trip for both sides), give
			// a producer on another P a moment to deliver.
			spins++
			e.mu.Unlock()
			runtime.Gosched()
			e.mu.Lock()
			continue
		}
		if w == nil {
			w = getWaiter()
			e.recvq.pushBack(w)
		} else {
			e.recvq.pushFront(w)
		}
		e.mu.Unlock()
		if w.wait(ctx.Done()) {
			e.mu.Lock()
		} else {
			e.mu.Lock()
			if !w.linked && e.n > 0 && !e.recvq.empty() {
				// We consumed a wake-up meant for a queued token: pass it on.
				e.recvq.wake(e.recvq.head)
			}
			e.abandonLocked(&e.recvq, w)
			e.mu.Unlock()
			putWaiter(w)
			return token.Nil, ctx.Err()
		}
	}
}

// recvSpins is how many times Recv yields before parking on an empty edge.
const recvSpins = 2

// TryRecv is Recv without waiting. It reports false when nothing
// deliverable is queued, whether or not the edge is closed.
func (e *Edge) TryRecv() (token.Token, bool) {
	e.mu.Lock()
	t, ok := e.popLocked()
	e.mu.Unlock()
	return t, ok
}

// popLocked removes and returns the next deliverable token, freeing expired
// ones it meets, and wakes senders if room was made.
func (e *Edge) popLocked() (token.Token, bool) {
	if e.n == 0 {
		return token.Nil, false
	}
	var now int64
	for e.n > 0 {
		lane := laneCritical
		if e.lanes[laneCritical].len() == 0 {
			lane = laneBestEffort
			bg, be := &e.lanes[laneBackground], &e.lanes[laneBestEffort]
			if be.len() == 0 || (bg.len() > 0 && bg.front().seq < be.front().seq) {
				lane = laneBackground
			}
		}
		q := e.removeLocked(lane)
		if q.deadline != 0 {
			if now == 0 {
				now = Now()
			}
			if now > q.deadline {
				if !q.flags.Has(DegradeAllowed) {
					e.freeLocked(q.tok)
					e.st.Expired++
					continue
				}
				e.st.Late++
			}
		}
		e.st.Delivered++
		if e.sendq.head != nil {
			e.wakeSendersLocked()
		}
		return q.tok, true
	}
	if e.sendq.head != nil {
		e.wakeSendersLocked()
	}
	return token.Nil, false
}
