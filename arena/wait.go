package arena

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/token"
)

// Waiting for a free slot (AllocWait, StoreWait).
//
// A goroutine that finds the arena full registers a waiter in a FIFO queue
// guarded by a mutex and parks on the waiter's channel. Every operation that
// makes a slot free again (Free, and the View/Update/Load that drops the last
// hold on a slot freed while it was held) then calls freed, which costs one
// load of the waiter count and, only when it is non-zero, takes the slow path
// (wakeOne). freed always runs after the gate section has ended: the slow
// path locks a mutex and readies a goroutine, neither of which may happen
// while pinned.
//
// # Wake-ups
//
// A waiter is signalled by a send on its channel (buffered, one element) and
// by its signalled flag, both under the queue's mutex; the flag is cleared,
// again under the mutex, by the waiter when it takes the signal, and only
// then does it retry the allocation. So a flag that is set means "this waiter
// will retry after now". wakeOne signals the first waiter in arrival order
// whose flag is clear; if every waiter is signalled already, each of them
// retries after the slot was released, so the free slot is seen anyway.
//
// A waiter stays in the queue, at its place, until it gets a slot, its ctx
// is done or the arena is closed. A woken waiter whose retry fails (a plain
// Alloc or Store, which never waits, took the slot first) parks again without
// losing its place, and is the first to be woken by the next Free. What holds:
// wake-ups go to waiters in arrival order; calls that do not wait may take a
// freed slot ahead of the waiters (no hand-off: a hand-off would put a mutex
// on every Free); when several waiters are woken at once they race each other
// for the slots, so among them completion order is not guaranteed.
//
// A waiter that leaves (success, ctx done, close) while signalled passes its
// signal on to the next waiter whose flag is clear: the signal stood for a
// slot freed after the leaver's last retry, which the leaver may not have
// seen. At worst this wakes one waiter for nothing (it retries, fails and
// parks again at its place); a free slot is never left behind by a waiter
// that gave up.
//
// # The lost wake-up
//
// The race to rule out: a waiter registers, retries and fails, and parks;
// meanwhile a Free releases a slot and reads the count. The two sides are
//
//	waiter:  count++            (under the mutex, an atomic add: a locked instruction)
//	         barrier()          (see below)
//	         retry the allocation
//	         park
//	Free:    release the slot   (CAS of its state word; then, on the fast path, a plain
//	                             store of it into the P's one-slot cache)
//	         load the count     (a plain MOV on amd64)
//
// If Free's load sees the waiter's count, Free wakes a waiter (and, by the
// signalled-flag argument above, someone retries after the release). If it
// does not, the waiter's retry must see the released slot. With sequentially
// consistent atomics on both sides that is the classic Dekker argument. But
// Free's fast path publishes the slot with a plain store into its P's cache
// (the whole point of the cache is to spend no fence on it), and a store
// followed by a load on another address may be reordered by the CPU (x86's
// store buffer does exactly that): Free could read count 0 while its cache
// store is still invisible to the waiter's retry, which then finds the arena
// full, and the waiter would sleep next to a free slot.
//
// The waiter therefore issues an asymmetric barrier after registering and
// before its first retry (barrier_linux.go: membarrier(2), which makes every
// running thread of the process execute a full fence; elsewhere a brief
// stop-the-world, which has the same effect). Take any Free racing the
// registration. Its thread passes a fence at some instant B inside the
// barrier call. If Free's cache store comes before B in its program order,
// the store is visible to everyone once the barrier returns, so the retry
// finds the slot. If it comes after B, then so does Free's load of the count,
// and B is after the count++ became globally visible (a locked instruction,
// completed before the barrier began), so the load sees the waiter. Either
// way the waiter does not sleep next to the slot. A Free that releases the
// slot with a CAS instead (a push onto a shard's freelist) needs no barrier
// (the CAS is a fence), nor does the race detector's build (its cache stores
// are atomic). The barrier is paid once per wait, not per Free, and not per
// retry: the waiter stays registered until it leaves, so every later Free
// sees the count.
//
// The count must be loaded after the slot is findable by Alloc: the only
// ordering Free must keep (see the hooks marked "issue 11" in alloc.go and
// access.go).

// waitQueue is the FIFO of goroutines parked in AllocWait/StoreWait.
type waitQueue struct {
	// n is the number of registered waiters: the one word Free reads. It is
	// written only when a waiter comes or goes.
	n atomic.Int32
	// The rest is written on the slow path only; the pad keeps it off the
	// line Free reads.
	_          atomicx.Pad
	mu         sync.Mutex
	head, tail *waiter
	closed     bool // Close has woken everyone: no new waiter may register
}

// waiter is one parked goroutine. It is allocated only when an arena is full.
type waiter struct {
	next, prev *waiter
	ch         chan struct{} // capacity 1; a send is a wake-up
	signalled  bool          // under mu: a wake-up was sent and not yet taken
}

// freed is called after an operation made a slot free (outside any gate
// section). It costs one load of the waiter count when nobody waits.
func (c *core) freed() {
	if c.waitq.n.Load() != 0 {
		c.waitq.wakeOne()
	}
}

// wakeOne signals the first waiter, in arrival order, that has no wake-up
// pending.
func (q *waitQueue) wakeOne() {
	q.mu.Lock()
	q.signalNext(q.head)
	q.mu.Unlock()
}

// signalNext signals the first waiter from w on whose flag is clear. Called
// with mu held.
func (q *waitQueue) signalNext(w *waiter) {
	for ; w != nil; w = w.next {
		if !w.signalled {
			w.signal()
			return
		}
	}
}

// signal sends w its wake-up; with mu held and w's flag clear, the buffer is
// empty (the flag is cleared only after the receive), so the send never
// blocks.
func (w *waiter) signal() {
	w.signalled = true
	w.ch <- struct{}{}
}

// register queues a new waiter, or returns nil once the arena is closed.
func (q *waitQueue) register() *waiter {
	w := &waiter{ch: make(chan struct{}, 1)}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil
	}
	w.prev = q.tail
	if q.tail != nil {
		q.tail.next = w
	} else {
		q.head = w
	}
	q.tail = w
	q.n.Add(1)
	return w
}

// take acknowledges the wake-up w has just received: w retries after this.
func (q *waitQueue) take(w *waiter) {
	q.mu.Lock()
	w.signalled = false
	q.mu.Unlock()
}

// leave removes w from the queue. A wake-up pending for w goes to the next
// waiter that has none (see the file comment: nothing is lost).
func (q *waitQueue) leave(w *waiter) {
	q.mu.Lock()
	next := w.next
	if w.prev != nil {
		w.prev.next = next
	} else {
		q.head = next
	}
	if next != nil {
		next.prev = w.prev
	} else {
		q.tail = w.prev
	}
	w.next, w.prev = nil, nil
	q.n.Add(-1)
	if w.signalled {
		// Pass it on from the head, not from w: a waiter ahead of w may
		// have taken its own wake-up since and parked again, and arrival
		// order decides who is next.
		q.signalNext(q.head)
	}
	q.mu.Unlock()
}

// close wakes every waiter and refuses new ones. Called by Close after the
// gate is closed, so every woken waiter's retry returns ErrClosed.
func (q *waitQueue) close() {
	q.mu.Lock()
	q.closed = true
	for w := q.head; w != nil; w = w.next {
		if !w.signalled {
			w.signal()
		}
	}
	q.mu.Unlock()
}

// await parks until try succeeds or fails with anything but ErrFull, ctx is
// done, or the arena is closed. try is a non-waiting allocation (Alloc or
// Store) that has just failed with ErrFull.
func (c *core) await(ctx context.Context, op string, try func() error) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if ctx.Err() != nil {
		return waitError(ctx, op)
	}
	q := &c.waitq
	w := q.register()
	if w == nil {
		return ErrClosed
	}
	barrier() // see "The lost wake-up" above
	done := ctx.Done()
	for {
		err := try()
		if err == nil || !errors.Is(err, ErrFull) {
			q.leave(w)
			return err
		}
		select {
		case <-w.ch:
			q.take(w)
		case <-done:
			q.leave(w)
			return waitError(ctx, op)
		}
	}
}

// waitError is the error of a wait whose ctx is done: it matches ctx.Err()
// (and the context's cause, when it has one of its own).
func waitError(ctx context.Context, op string) error {
	err := ctx.Err()
	if cause := context.Cause(ctx); cause != nil && cause != err {
		return fmt.Errorf("arena: %s: waiting for a free slot: %w (%w)", op, err, cause)
	}
	return fmt.Errorf("arena: %s: waiting for a free slot: %w", op, err)
}

// AllocWait is Alloc that waits for a free slot. It returns at once when a
// slot is free (also when ctx is done already: ctx only ends a wait);
// otherwise it parks (no spinning) until a Free makes room,
// ctx is done (the error then matches ctx.Err() with errors.Is), or the arena
// is closed (ErrClosed). A nil ctx waits like context.Background().
//
// Waiters are woken in arrival order (the order in which they began to
// wait: a call still making its first look at the shards is not waiting
// yet, and takes a slot it finds like Alloc), and a woken waiter that loses
// the slot to a call that does not wait (Alloc, Store) keeps its place at
// the front.
// No slot is lost when a waiter gives up: a wake-up meant for it goes to the
// next waiter. Waiting costs Free one load of a counter while nobody waits.
func (a *Arena[T]) AllocWait(ctx context.Context) (token.Token, *T, error) {
	t, v, err := a.allocQuiet()
	if err == nil || !errors.Is(err, ErrFull) {
		return t, v, err
	}
	return a.allocWait(ctx)
}

// allocWait is AllocWait's slow path, out of line so that the closure's
// captures cost the fast path nothing.
func (a *Arena[T]) allocWait(ctx context.Context) (t token.Token, v *T, err error) {
	err = a.await(ctx, "AllocWait", func() error {
		t, v, err = a.allocQuiet()
		return err
	})
	if err != nil {
		return token.Nil, nil, err
	}
	return t, v, nil
}

// StoreWait is Store that waits for a free slot, as AllocWait does.
func (a *Arena[T]) StoreWait(ctx context.Context, v T) (token.Token, error) {
	t, err := a.storeQuiet(&v)
	if err == nil || !errors.Is(err, ErrFull) {
		return t, err
	}
	return a.storeWait(ctx, &v)
}

// storeWait is StoreWait's slow path (see allocWait). v points to the
// caller's copy, so a large T is not copied again per retry.
func (a *Arena[T]) storeWait(ctx context.Context, v *T) (t token.Token, err error) {
	err = a.await(ctx, "StoreWait", func() error {
		t, err = a.storeQuiet(v)
		return err
	})
	if err != nil {
		return token.Nil, err
	}
	return t, nil
}

// allocQuiet is Alloc for the wait paths: an ErrFull it returns is not
// counted in Stats.Failed, since the waiting call does not return it.
func (a *Arena[T]) allocQuiet() (token.Token, *T, error) {
	p, idx, gen, res, err := a.takeQuiet()
	if err != nil {
		return token.Nil, nil, err
	}
	return a.allocated(p, idx, gen, res)
}

// storeQuiet is Store for the wait paths, as allocQuiet is Alloc.
func (a *Arena[T]) storeQuiet(v *T) (token.Token, error) {
	p, idx, gen, _, err := a.takeQuiet()
	if err != nil {
		return token.Nil, err
	}
	a.put(idx, v)
	a.gate.Exit(p)
	return token.New(idx, gen), nil
}

// takeQuiet takes a slot as Alloc does, from this P's cache first, without
// counting an ErrFull. On success it returns pinned, inside a gate section
// (see takeSlow).
func (a *Arena[T]) takeQuiet() (p int, idx, gen uint32, res takeResult, err error) {
	p = a.gate.EnterAny()
	if !a.gate.Closed() && p < a.nP {
		pc := a.pc(p)
		if w := a.takeCached(pc); w != 0 {
			pc.allocs++
			idx, gen = cacheSlot(w)
			return p, idx, gen, tookRecycled, nil
		}
	}
	a.gate.Exit(p)
	return a.takeSlow(false)
}
