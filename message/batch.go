package message

import (
	"context"
	"runtime"

	"github.com/cella-go/cella/token"
)

// sendChunk is how many tokens SendBatch checks outside the lock and then
// admits under one acquisition of it. The checked entries live on the
// stack; a longer batch takes the lock once per chunk.
const sendChunk = 32

// SendBatch moves ts[:n] into the edge, in order, and returns n; on error
// the caller keeps ts[n:]. Each token is admitted exactly as Send would
// admit it (the same admission mode, lanes, caps, deadline checks and
// Stats), but up to 32 tokens at a time are admitted under one acquisition
// of the edge's lock, and waiting receivers are woken once per acquisition,
// not once per token.
//
// The batch stops at the first token that is refused: n is its index and
// err says why (the same errors as Send: ErrRejected, ErrEdgeFull,
// ErrExpired, ErrEdgeClosed, a bad or stale token, or ctx.Err()). That one
// refusal is counted in Stats (Rejected or Invalid); the tokens after it
// were not tried and are not counted.
//
// Under Block, a token that does not fit waits for room like Send, and the
// rest of the batch follows as room appears: SendBatch returns once every
// token is in the edge (n == len(ts), nil), or when ctx is done (the count
// sent so far and ctx.Err()), or when the edge is closed (ErrEdgeClosed).
// A batch waits in the FIFO queue of blocked senders; after it has sent
// part of its batch it queues again behind the senders that were already
// waiting, so a long batch cannot starve them. Stats.Waited counts one per
// SendBatch call that had to wait. The other admission modes never wait:
// the context is only looked at when a Block send has to wait, as with
// Send. A nil ctx waits like context.Background(). An empty ts returns
// 0, nil at once.
func (e *Edge) SendBatch(ctx context.Context, ts []token.Token) (n int, err error) {
	var in int
	n, fp, err := e.sendBatchCatching(ctx, ts, &in)
	raise(fp)
	return n, err
}

// sendBatchCatching is SendBatch that returns a panic of the store's Free
// instead of raising it (as sendCatching does), with n, the tokens that
// got in: it stops after the chunk in which it caught one. It also adds to
// *in each token as it gets in, for a caller whose goroutine may end inside
// (runtime.Goexit in the store's Free) and must know what is still its own.
func (e *Edge) sendBatchCatching(ctx context.Context, ts []token.Token, in *int) (n int, fp any, err error) {
	if len(ts) == 0 {
		return 0, nil, nil
	}
	if e.fast != nil && e.meta != nil {
		n = e.sendFastPrefix(ts)
		*in += n
		if n == len(ts) {
			return n, nil, nil
		}
	}
	if ctx == nil {
		ctx = context.Background()
	}
	// The rest is staged: checked into qs, then through the ring or the
	// lock. (Declared here, after the return above: zeroing it costs 64
	// stores.)
	var qs [sendChunk]queued
	var lanes [sendChunk]uint8
	waited := false
	for n < len(ts) {
		chunk := ts[n:min(len(ts), n+sendChunk)]
		// Check outside the lock, as Send does, and stop at the first
		// token that is bad in itself; it is reported only if every token
		// before it gets in.
		valid, cerr := e.checkBatch(chunk, qs[:len(chunk)], lanes[:len(chunk)])
		invalid := cerr != nil && cerr != errOverMaxBytes // that one is policy
		var now int64
		for i := range valid {
			if q := &qs[i]; q.deadline != 0 && !q.flags.Has(DegradeAllowed) {
				if now == 0 {
					now = Now()
				}
				if now > q.deadline {
					valid, cerr, invalid = i, errExpiredOnSend, false
					break
				}
			}
		}
		k := 0
		if e.fast != nil {
			k = e.fastSendBatch(qs[:valid], lanes[:valid])
			*in += k
		}
		k2, fp, err := e.admitBatch(ctx, qs[k:valid], lanes[k:valid], &waited, in)
		k += k2
		n += k
		if err != nil || fp != nil {
			return n, fp, err
		}
		if cerr != nil {
			if invalid {
				e.invalid.Add(1)
			} else {
				e.mu.Lock() // a counter only: no need to leave fast mode
				e.st.Rejected++
				e.mu.Unlock()
			}
			return n, nil, cerr
		}
	}
	return n, nil, nil
}

// admitBatch admits qs in order under one acquisition of the lock (more
// when it has to wait for room) and returns how many it admitted, and a
// panic of the store's Free caught while admission evicted or expired
// (fp: it stops there). On error the refusal has been counted in Stats.
func (e *Edge) admitBatch(ctx context.Context, qs []queued, lanes []uint8, waited *bool, in *int) (int, any, error) {
	if len(qs) == 0 {
		return 0, nil, nil
	}
	var fp any
	e.lock()
	var w *waiter
	i, progress, pushed := 0, false, false
	// woken: the batch was woken to look for room again and is at the
	// front of the queue of senders. recheck: the first index whose
	// deadline is checked again before it is admitted (after a wait, as a
	// Send of it that began then would check it).
	woken, recheck := false, len(qs)
	var err error
	for i < len(qs) {
		if e.freePanic != nil {
			break // a Free panicked: raise it (after the i admitted) rather than go on or wait
		}
		if e.closed {
			err = errSendClosed
			break
		}
		if i >= recheck {
			if q := &qs[i]; q.deadline != 0 && !q.flags.Has(DegradeAllowed) && Now() > q.deadline {
				err = errExpiredOnSend
				break
			}
		}
		// Like send: queue behind senders that are already waiting unless
		// we are the one that was woken. Only the token the batch waited on
		// goes ahead of them: the next is a new send, as if its own Send
		// began now, and queues behind them.
		if woken || e.sendq.head == nil {
			woken = false
			q, lane := &qs[i], int(lanes[i])
			if e.pol.fits(e.n, e.bytes, int64(q.size)) &&
				(lane != laneBackground || e.pol.Admission != DeadlineQoS || !e.pol.softReached(e.n, e.bytes)) {
				// Fast path of admitLocked: it fits and is not shed. The
				// receiver is woken once, after the loop.
				e.pushLocked(q, lane)
				i++
				*in++
				progress, pushed = true, true
				continue
			}
			var ok bool
			ok, err = e.admitLocked(q, lane)
			if err != nil {
				break
			}
			if ok {
				i++
				*in++
				progress, pushed = true, true // queued, or handed to a receiver
				continue
			}
		}
		// Block mode, no room: wait for it.
		if w == nil {
			w = getWaiter()
			e.sendq.pushBack(w)
			if !*waited {
				*waited = true
				e.st.Waited++
			}
		} else if progress {
			// Woken, sent part of the batch, full again: queue behind the
			// senders that waited meanwhile.
			e.sendq.pushBack(w)
		} else {
			// Woken but beaten to the room: keep our place at the front.
			e.sendq.pushFront(w)
		}
		w.need, w.sq, w.slane = int64(qs[i].size), qs[i], lanes[i]
		progress = false
		if pushed {
			e.wakeForBatchLocked()
			pushed = false
		}
		// What we admitted so far may have a receiver to wake; it must not
		// wait for the rest of the batch (it may be what makes room).
		expiry := e.senderExpiryLocked(w)
		e.takeFreePanicLocked(&fp)
		e.unlockAndWake()
		r := w.waitOrExpiry(ctx.Done(), expiry)
		e.lock()
		if r != waitSignalled {
			e.abandonLocked(&e.sendq, w)
		}
		recheck = min(recheck, i+1) // time passed: the later tokens may have expired
		if w.handed {
			// qs[i] was admitted on our behalf (wakeSendersLocked), in
			// queue order, and we left the queue: the rest of the batch goes
			// on only behind the senders still waiting (as a new Send
			// would).
			w.handed = false
			woken = false
			i++
			*in++
			progress = true
			continue
		}
		woken = true
		if r != waitDone {
			continue // Close, a timer to arm, or an expiry: look again
		}
		// Our wake-up may have been meant for room another sender can use.
		e.wakeSendersLocked()
		err = ctx.Err()
		break
	}
	if err != nil {
		e.st.Rejected++
	}
	if pushed {
		e.wakeForBatchLocked()
	}
	if !e.sendq.empty() {
		// Room may remain for the next waiting sender (wakes chain).
		e.wakeSendersLocked()
	}
	e.takeFreePanicLocked(&fp)
	e.unlockAndWake()
	if w != nil {
		putWaiter(w)
	}
	return i, fp, err
}

// wakeForBatchLocked wakes a receiver for what a batch queued under this
// acquisition of the lock. The receiver already picked to be woken
// (wakeRecv) takes a token and passes the wake-up on while more are queued,
// so one is enough, unless it was handed a token of its own (handOffLocked:
// a token of the batch that found the edge empty, after an eviction or
// expiry emptied it); it then returns without looking at the queue, so the
// next parked receiver is woken here for the tokens queued after it.
func (e *Edge) wakeForBatchLocked() {
	if w := e.wakeRecv; w != nil && w.handed {
		if e.n > 0 && !e.recvq.empty() {
			e.recvq.wake(e.recvq.head)
		}
		return
	}
	e.wakeReceiverLocked()
}

// fastChunk is how many tokens sendFastPrefix checks and claims at a time.
const fastChunk = 16

// sendFastPrefix sends the longest prefix of ts that may take the fast path
// (live, BestEffort, no deadline) straight into the ring, up to fastChunk
// tokens per claim, and returns how many it sent. It stops at the first
// token that may not, and when the ring holds its room or the edge is in
// slow mode: SendBatch's staged path takes the rest (and waits, spins or
// reports an error exactly as before). Reading each header once and
// writing only the ring keeps a batch's stores few: the staged path writes
// a 32-byte entry per token and zeroes a kilobyte first.
func (e *Edge) sendFastPrefix(ts []token.Token) int {
	var sizes [fastChunk]uint32
	n := 0
	for n < len(ts) {
		chunk := ts[n:min(len(ts), n+fastChunk)]
		m := e.meta.fastInfoN(chunk, sizes[:len(chunk)])
		k := e.fast.trySendTokens(chunk[:m], sizes[:m])
		n += k
		if k < len(chunk) {
			break
		}
	}
	return n
}

// fastSendBatch sends the longest prefix of qs that may take the fast path
// through the ring, yielding a few times (under Block, where the locked path
// would wait) while a full ring in fast mode may be drained by a receiver on
// another P, and returns how many it sent. The
// rest of qs goes through admitBatch, which puts it behind them.
func (e *Edge) fastSendBatch(qs []queued, lanes []uint8) int {
	f := e.fast
	n := 0
	for i := 0; n < len(qs); {
		k := f.trySendN(qs[n:], lanes[n:])
		n += k
		if k > 0 {
			continue
		}
		if i == fastSendSpins || e.pol.Admission != Block || f.tail.Load()&slowBit != 0 ||
			lanes[n] != laneBestEffort || qs[n].deadline != 0 || !ringable(qs[n].tok) {
			break
		}
		i++
		runtime.Gosched()
	}
	return n
}
