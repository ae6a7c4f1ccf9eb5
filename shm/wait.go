package shm

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/cella-go/cella/token"
)

// Waiting across processes: a waiter reads a futex word, re-checks its
// condition, and sleeps in FUTEX_WAIT on the word while it still holds that
// value; whoever changes the condition bumps the word and, if the waiter
// count says anyone sleeps, wakes them. The sleep is bounded (parkSlice) so
// that a wake-up lost with a dead process costs a moment, not forever, and
// ctx cancellation wakes the sleeper at once (context.AfterFunc bumps the
// word). Close wakes every sleeper of this process and waits until they are
// gone before it unmaps.

const parkSlice = 200 * time.Millisecond

// park sleeps while *word == seq, at most parkSlice. It returns false when
// ctx is done or this handle is closing. The caller holds an outside window
// (parked raised before its section closed), so the word stays mapped.
func (a *seg) park(ctx context.Context, word *uint32, seq uint32) bool {
	return a.parkFor(ctx, word, seq, parkSlice)
}

// parkFor is park for at most d (at most parkSlice).
func (a *seg) parkFor(ctx context.Context, word *uint32, seq uint32, d time.Duration) bool {
	d = min(d, parkSlice)
	if a.closed.Load() {
		return false
	}
	if ctx.Done() == nil {
		futexWait(word, seq, d)
		return !a.closed.Load()
	}
	if ctx.Err() != nil {
		return false
	}
	done := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(done)
		atomic.AddUint32(word, 1)
		futexWake(word)
	})
	futexWait(word, seq, d)
	if !stop() {
		<-done
	}
	return ctx.Err() == nil && !a.closed.Load()
}

// wakeParked wakes every futex word this process may sleep on (Close).
func (a *seg) wakeParked() {
	words := []*uint32{&a.hdr.freeSeq, &a.hdr.recovering}
	if a.store != nil {
		for _, e := range a.store.edges {
			words = append(words, &e.ctl.recvSeq, &e.ctl.sendSeq)
		}
	}
	for _, w := range words {
		if w != &a.hdr.recovering {
			atomic.AddUint32(w, 1)
		}
		futexWake(w)
	}
}

// awaitFree parks until some process frees a slot (or ctx is done, or the
// handle closes). Callers retry their allocation after it returns nil.
//
// It returns at once only when a slot can be taken now (!full: a freelist,
// cache or frontier holds one), not when Available counts one: a slot freed
// while a callback still holds it counts as available but cannot be taken
// until the callback returns, and returning for it would spin. While
// nothing is freed for deadCheckAfter it looks for dead processes (whose
// slots recovery frees), as every other wait does.
func (a *seg) awaitFree(ctx context.Context) error {
	if ctx == nil {
		ctx = context.Background()
	}
	// An outside window: Close waits for it before it unmaps.
	a.parked.Add(1)
	defer a.parked.Add(-1)
	if a.closed.Load() {
		return ErrClosed
	}
	seq := atomic.LoadUint32(&a.hdr.freeSeq)
	// The segment's count first, this record's second (and the reverse on
	// the way out): a process killed in between leaves recovery, which
	// subtracts the record's count, an excess, never a shortfall.
	atomic.AddUint32(&a.hdr.freeWaiters, 1)
	atomic.AddUint32(&a.rec.freeWaiters, 1)
	defer func() {
		atomic.AddUint32(&a.rec.freeWaiters, ^uint32(0))
		atomic.AddUint32(&a.hdr.freeWaiters, ^uint32(0))
	}()
	// Re-check after announcing ourselves: a slot freed before the waiter
	// count rose bumped nothing.
	if !a.full() {
		return nil
	}
	// Poll a while first: a consumer in another process frees within
	// microseconds when it keeps up.
	start := time.Now()
	for i := 0; atomic.LoadUint32(&a.hdr.freeSeq) == seq; i++ {
		if i%32 == 31 {
			if time.Since(start) > spinFor {
				break
			}
			runtime.Gosched()
		}
	}
	for d := deadCheckAfter; atomic.LoadUint32(&a.hdr.freeSeq) == seq; d = parkSlice {
		if !a.parkFor(ctx, &a.hdr.freeSeq, seq, d) {
			if a.closed.Load() {
				return ErrClosed
			}
			return ctx.Err()
		}
		if atomic.LoadUint32(&a.hdr.freeSeq) != seq {
			break
		}
		a.checkDead() // nothing freed for a while: a dead process may hold the slots
		if !a.full() {
			break
		}
	}
	return nil
}

// notifyFree wakes processes waiting for a free slot, if any.
func (a *seg) notifyFree() {
	if atomic.LoadUint32(&a.hdr.freeWaiters) != 0 {
		atomic.AddUint32(&a.hdr.freeSeq, 1)
		futexWake(&a.hdr.freeSeq)
	}
}

// AllocWait is Alloc that waits (parked, not spinning) while the arena is
// full, until any process frees a slot, ctx is done (the error matches
// ctx.Err()), or this handle is closed (ErrClosed).
func (a *Arena[T]) AllocWait(ctx context.Context) (token.Token, *T, error) {
	for {
		t, p, err := a.Alloc()
		if !errors.Is(err, ErrFull) {
			return t, p, err
		}
		if err := a.awaitFree(ctx); err != nil {
			return token.Nil, nil, err
		}
	}
}

// StoreWait is Store that waits like AllocWait. The value is copied into
// the slot inside the allocation's section (as Store does), never after
// it: a Close racing the call may unmap the segment once no section is open.
func (a *Arena[T]) StoreWait(ctx context.Context, v T) (token.Token, error) {
	for {
		t, _, err := a.alloc(&v)
		if !errors.Is(err, ErrFull) {
			return t, err
		}
		if err := a.awaitFree(ctx); err != nil {
			return token.Nil, err
		}
	}
}
