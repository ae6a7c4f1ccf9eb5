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
	if f := e.fast; f != nil {
		if t, ok := f.tryRecv(); ok {
			return t, nil
		}
	}
	var one [1]token.Token
	_, err := e.recv(ctx, one[:], 1)
	return one[0], err
}

// RecvBatch is Recv for up to len(dst) tokens under one acquisition of the
// edge's lock. It waits exactly like Recv until at least one token is
// deliverable, then moves every deliverable token it can, up to len(dst),
// into dst[:n] in the order Recv would return them (the LatencyCritical
// lane first), without waiting for more. The receiver owns every token in
// dst[:n]. On error n is 0: ctx.Err() when ctx is done first, ErrEdgeClosed
// once the edge is closed and empty. An empty dst returns 0, nil at once.
// Entries of dst past n may be overwritten (with token.Nil), never with a
// token the caller does not own.
func (e *Edge) RecvBatch(ctx context.Context, dst []token.Token) (n int, err error) {
	if len(dst) == 0 {
		return 0, nil
	}
	return e.recv(ctx, dst, 1)
}

// recv waits for at least one deliverable token and moves up to len(dst)
// of them into dst; len(dst) must be at least 1. With share > 1 (the number
// of goroutines consuming the edge together, as in a Graph node) it takes
// at most a 1/share part of what is queued, rounded up, so one consumer
// does not take a whole burst while the others idle.
func (e *Edge) recv(ctx context.Context, dst []token.Token, share int) (n int, err error) {
	if ctx == nil { // a nil context waits without a deadline, never panics
		ctx = context.Background()
	}
	if f := e.fast; f != nil {
		for i := 0; ; i++ {
			limit := len(dst)
			if share > 1 {
				limit = max(1, min(limit, (f.queuedHint()+share-1)/share))
			}
			if k := f.tryRecvN(dst[:limit]); k > 0 {
				return k, nil
			}
			if i == fastRecvSpins || f.head.Load()&slowBit != 0 {
				break
			}
			runtime.Gosched()
		}
	}
	// Expired messages are freed on the way. A panic of the store's Free
	// (caught now, or held back by an earlier receive) is raised instead
	// of taking anything or waiting; a receive that took tokens when one
	// is caught delivers them (they would be lost with the panic) and
	// holds it back for the next operation.
	//
	// taken counts the tokens in dst while an expiry's Free may run: if that
	// Free calls runtime.Goexit, this goroutine ends before it can deliver
	// them, and they are freed here (exitLocked has released the lock).
	var fp any
	taken := 0
	defer func() {
		if taken > 0 {
			var quiet storePanic // dropped: the goroutine is ending
			for _, t := range dst[:taken] {
				_ = quiet.free(e.hs, t)
			}
			return
		}
		if fp != nil && n > 0 {
			e.holdFreePanic(fp)
			return
		}
		raise(fp)
	}()
	e.lock()
	var w *waiter
	spins := 0
	for {
		if e.n > 0 && e.freePanic == nil {
			limit := len(dst)
			if share > 1 {
				limit = min(limit, (e.n+share-1)/share)
			}
			k := 0
			for k < limit {
				taken = k
				t, ok := e.nextLocked()
				if !ok {
					break
				}
				dst[k] = t
				k++
				if e.freePanic != nil {
					break // deliver what was taken (see above)
				}
			}
			taken = 0
			if e.sendq.head != nil {
				e.wakeSendersLocked()
			}
			if k > 0 {
				if w != nil && !e.recvq.empty() && e.n > 0 {
					// We were woken for one token; more may wait for others.
					e.recvq.wake(e.recvq.head)
				}
				e.unlockTaking(&fp)
				if w != nil {
					putWaiter(w)
				}
				return k, nil
			}
		}
		if e.freePanic != nil || fp != nil {
			e.unlockTaking(&fp) // nothing taken: the deferred raise fires
			if w != nil {
				putWaiter(w)
			}
			return 0, nil
		}
		if e.closed {
			e.unlockTaking(&fp)
			if w != nil {
				putWaiter(w)
			}
			return 0, ErrEdgeClosed
		}
		if w == nil && spins < recvSpins {
			// Empty: before parking (a futex round trip for both sides), give
			// a producer on another P a moment to deliver. The edge stays in
			// slow mode meanwhile (the raw unlock): reopening it for a moment
			// would only cost the next holder a switch. Another holder may
			// reopen it, so relocking goes through lock.
			spins++
			e.takeFreePanicLocked(&fp)
			e.mu.Unlock()
			runtime.Gosched()
			e.lock()
			continue
		}
		if w == nil {
			w = getWaiter()
			e.recvq.pushBack(w)
		} else {
			e.recvq.pushFront(w)
		}
		e.unlockTaking(&fp)
		if w.wait(ctx.Done()) {
			if w.handed {
				// A sender handed us its token directly (handOffLocked).
				dst[0] = w.tok
				putWaiter(w)
				return 1, nil
			}
			e.lock()
		} else {
			e.lock()
			if !w.linked && w.handed {
				// Our context ended as a sender handed us a token: the
				// receive happened; take its signal and the token.
				<-w.ch
				e.unlockTaking(&fp)
				dst[0] = w.tok
				putWaiter(w)
				return 1, nil
			}
			if !w.linked && e.n > 0 && !e.recvq.empty() {
				// We consumed a wake-up meant for a queued token: pass it on.
				e.recvq.wake(e.recvq.head)
			}
			e.abandonLocked(&e.recvq, w)
			e.unlockTaking(&fp)
			putWaiter(w)
			return 0, ctx.Err()
		}
	}
}

// recvSpins is how many times Recv yields before parking on an empty edge.
const recvSpins = 2

// fastRecvSpins is how many times recv yields on an empty ring in fast mode
// before it takes the mutex (and with it the edge out of fast mode) to park.
//
// It trades a little CPU for tail latency. A receiver that parks is woken
// through the scheduler, and when its P has gone idle that takes an OS
// thread wake-up, which on a VM can mean waking a halted vCPU: tens to
// hundreds of microseconds. Sixteen yields (a few microseconds while
// nothing else is runnable, and other goroutines' turns when something is)
// keep a receiver of a steady stream from parking between messages. On the
// build machine (2 vCPUs), against 2 yields: the paced 3-stage pipeline's
// p99 per hop fell from 249-315 µs to 3-20 µs in 7 of 9 runs and to
// 93-122 µs in the other two, still under the channels' 160-205 µs (as a
// Graph, the median of 5 went from 248 to 20 µs); a 4 KiB fan-out to 4
// consumers took 1.22 µs instead of 1.82; batches did not change; the
// saturated pipeline, where the polls compete with the producer for the 2
// CPUs, got about 5% slower.
const fastRecvSpins = 16

// TryRecv is Recv without waiting. It reports false when nothing
// deliverable is queued, whether or not the edge is closed.
func (e *Edge) TryRecv() (t token.Token, ok bool) {
	if f := e.fast; f != nil {
		if t, ok := f.tryRecv(); ok {
			return t, true
		}
		if h := f.head.Load(); h&slowBit == 0 && f.tail.Load() == h {
			// Fast mode and nothing claimed: the locked lanes are empty
			// too. (A claimed cell whose token is not published yet may
			// sit before one whose Send has returned: the locked path
			// waits for it.) The tail must be free of the slow bit too:
			// reopenLocked stores the head before the tail, and an old
			// tail with the bit can equal the new head while the ring
			// holds what the lanes held.
			return token.Nil, false
		}
	}
	var fp any
	defer func() {
		if fp != nil && ok { // as in recv: a token taken is delivered first
			e.holdFreePanic(fp)
			return
		}
		raise(fp)
	}()
	e.lock()
	if e.freePanic == nil { // else raise the one held back, taking nothing
		t, ok = e.nextLocked()
	}
	if e.sendq.head != nil {
		e.wakeSendersLocked()
	}
	e.unlockTaking(&fp)
	return t, ok
}

// nextLocked removes and returns the next deliverable token, freeing
// expired ones it meets. It does not wake senders: callers do that once
// per operation, after taking everything they take.
func (e *Edge) nextLocked() (token.Token, bool) {
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
					e.st.Expired++ // counted before the Free (exitLocked)
					e.freeLocked(q.tok)
					continue
				}
				e.st.Late++
			}
		}
		e.st.Delivered++
		return q.tok, true
	}
	return token.Nil, false
}
