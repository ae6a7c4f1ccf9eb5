package message

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cella-go/cella/token"
)

// waiter is one goroutine parked in Send or Recv. Waiters form intrusive
// FIFO lists under the edge's mutex; a waker unlinks a waiter and then
// signals its channel, which has room for exactly that one signal. Waiters
// are recycled through a sync.Pool, so parking costs no allocation in the
// steady state.
type waiter struct {
	ch         chan struct{}
	next, prev *waiter
	linked     bool
	need       int64 // senders: the bytes they need
	// Receivers: a token a sender handed over directly (handOffLocked),
	// set before the signal. Senders: handed says the waker admitted sq
	// into lane slane on the sender's behalf (wakeSendersLocked).
	tok    token.Token
	handed bool
	sq     queued
	slane  uint8
	timed  bool // a sender parked with an expiry timer (waitOrExpiry)
	// timer wakes a sender at the head of the queue when a queued message
	// expires (waitOrExpiry); made on first use, kept with the waiter.
	timer *time.Timer
}

var waiterPool = sync.Pool{New: func() any { return &waiter{ch: make(chan struct{}, 1)} }}

func getWaiter() *waiter { return waiterPool.Get().(*waiter) }

// putWaiter recycles w; w must be unlinked and its channel empty.
func putWaiter(w *waiter) {
	w.need, w.tok, w.handed, w.sq, w.slane, w.timed = 0, token.Nil, false, queued{}, 0, false
	waiterPool.Put(w)
}

// waitList is a FIFO of parked waiters, changed under the edge's mutex.
// linked counts its waiters and may be read without the mutex, as a hint.
type waitList struct {
	head, tail *waiter
	linked     atomic.Int32
}

func (l *waitList) empty() bool { return l.head == nil }

func (l *waitList) pushBack(w *waiter) {
	l.linked.Add(1)
	w.prev, w.next, w.linked = l.tail, nil, true
	if l.tail != nil {
		l.tail.next = w
	} else {
		l.head = w
	}
	l.tail = w
}

func (l *waitList) pushFront(w *waiter) {
	l.linked.Add(1)
	w.prev, w.next, w.linked = nil, l.head, true
	if l.head != nil {
		l.head.prev = w
	} else {
		l.tail = w
	}
	l.head = w
}

func (l *waitList) remove(w *waiter) {
	l.linked.Add(-1)
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		l.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		l.tail = w.prev
	}
	w.prev, w.next, w.linked = nil, nil, false
}

// wake unlinks w and signals it. The signal never blocks: a linked waiter's
// channel is always empty.
func (l *waitList) wake(w *waiter) {
	l.remove(w)
	w.ch <- struct{}{}
}

// wakeAll signals every waiter.
func (l *waitList) wakeAll() {
	for l.head != nil {
		l.wake(l.head)
	}
}

// wait parks until w is signalled (true) or done is closed (false). A nil
// done (context.Background and friends) parks on the signal alone, which
// is cheaper than a select.
func (w *waiter) wait(done <-chan struct{}) bool {
	if done == nil {
		<-w.ch
		return true
	}
	select {
	case <-w.ch:
		return true
	case <-done:
		return false
	}
}

// How waitOrExpiry ended.
const (
	waitSignalled = iota // a waker signalled w
	waitDone             // done was closed
	waitExpiry           // the clock passed expiry
)

// waitOrExpiry is wait that also returns when the message clock passes
// expiry (math.MaxInt64: never). A Block sender waits for room this way:
// room appears when a receiver takes a message, and when a queued message
// expires, which nobody announces.
func (w *waiter) waitOrExpiry(done <-chan struct{}, expiry int64) int {
	if expiry == math.MaxInt64 {
		if w.wait(done) {
			return waitSignalled
		}
		return waitDone
	}
	d := time.Duration(expiry-Now()) + time.Microsecond // past the deadline, not at it
	if d <= time.Microsecond {
		return waitExpiry
	}
	if w.timer == nil {
		w.timer = time.NewTimer(d)
	} else {
		w.timer.Reset(d)
	}
	defer w.timer.Stop()
	select {
	case <-w.ch:
		return waitSignalled
	case <-done:
		return waitDone
	case <-w.timer.C:
		return waitExpiry
	}
}
