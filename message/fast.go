package message

// The edge's lock-free fast path.
//
// An edge whose policy needs no byte accounting (MaxBytes and SoftBytes 0)
// and no shedding (Admission is not DeadlineQoS) has a fastRing: a bounded
// multi-producer multi-consumer ring of tokens (Dmitry Vyukov's design: one
// sequence word per cell, a CAS on the tail to claim a cell, a CAS on the
// head to take one). A send of a BestEffort message without a deadline and
// a receive go through the ring without the edge's mutex while the edge is
// in fast mode (SendBatch and RecvBatch claim or take a run of cells with
// one CAS); everything else takes the mutex, and the mutex's holder first
// switches the edge to slow mode. A cell's sequence word is published and
// released with publishCell: a plain store on amd64.
//
// # Modes
//
// Fast mode holds only while, under the mutex, nothing needs it: the locked
// lanes are empty, no sender or receiver is parked, and the edge is open.
// In fast mode the ring is the whole queue, so its head is the next token
// Recv must return and its length is Len.
//
// Slow mode is entered by the holder of the mutex (enterSlowLocked): it sets
// slowBit in the tail, then in the head. A fast sender or receiver CASes the
// bit-free value it loaded, so from then on every fast attempt fails and
// takes the mutex. The claims made before the bit (tail positions below
// the tail the holder saw) are finished by their senders without the
// mutex, so the holder waits for each of those cells to be published, moves
// the ring's entries, in order, to the front of the BestEffort lane, and
// counts the fast sends and receives in the edge's Stats. In slow mode the
// ring is empty and unused, and the edge is the locked queue of edge.go.
// The holder of the mutex reopens fast mode when it unlocks (unlock) and
// the conditions above hold again with something queued (an empty edge
// waits for the next send to reopen: see reopenLocked).
//
// A send that claimed its cell before the bit overlaps the operation that
// set it, so taking it after that operation's effect is a valid order; and a
// Send that returned before another began is in the ring or a lane before
// the other starts, so FIFO holds. A parked receiver or sender implies slow
// mode, so a fast operation never has anyone to wake.
//
// # Counters
//
// Admitted and Delivered are derived from positions: the tail and head
// moved by fast operations since the last reopen (t0). HighWater is kept
// exact in sequential use: a fast sender reads the head after its claim
// and before it publishes (so no receiver can pass its cell), which gives
// the length at that instant counting claimed cells, and raises hw with a
// CAS when it is higher. In slow mode the edge's own counters rule; the
// switch merges them.
//
// The item cap is checked against a cached head, never above the real one
// (positions only grow), so a stale cache can only refuse the fast path,
// never exceed MaxItems; the sender then reloads the head.

import (
	"runtime"
	"sync/atomic"
	"unsafe"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/token"
)

// slowBit, set in a ring's tail and head, closes them to fast operations.
const slowBit = uint64(1) << 63

// fastMaxCells bounds a ring's size: an edge with a larger (or no) item
// cap has a ring of this many cells and goes to slow mode when it fills.
const fastMaxCells = 256

type fastCell struct {
	// seq is the cell's state, as the low 32 bits of a position (cellSeq):
	// pos when free for the claim of position pos, pos+1 once that
	// position's token is published, pos+len(cells) once it is taken (free
	// for the next lap). 32 bits are enough: a ring has at most
	// fastMaxCells cells, so the values a cell can hold for the positions
	// a sender or receiver is looking at are a few laps apart, and the
	// claim itself is a CAS on the 64-bit tail or head.
	seq  atomic.Uint32
	size uint32
	tok  token.Token
}

// A cell is 16 bytes: four share a cache line, so a batch of 16 tokens
// moves 4 lines between the sender's and the receiver's cores, not 8 (a
// compile error otherwise).
var _ [16 - unsafe.Sizeof(fastCell{})]byte
var _ [unsafe.Sizeof(fastCell{}) - 16]byte

// cellSeq is position pos as a cell's sequence word holds it.
func cellSeq(pos uint64) uint32 { return uint32(pos) }

// behind reports whether a cell's sequence word seq is below want, the
// value it must have for the caller's position (a wrapping comparison).
func behind(seq uint32, want uint64) bool { return int32(seq-cellSeq(want)) < 0 }

type fastRing struct {
	// Read-only after newFastRing.
	cells []fastCell
	mask  uint64
	limit uint64 // MaxItems, or 0 for no item cap

	_ atomicx.Pad
	// Senders' line.
	tail      atomic.Uint64 // next position to claim, | slowBit in slow mode
	headCache atomic.Uint64 // a head seen by a sender, at most the real one
	hw        atomic.Int64  // HighWater, as fast senders know it

	_ atomicx.Pad
	// Receivers' line.
	head atomic.Uint64 // next position to take, | slowBit in slow mode

	_ atomicx.Pad
	// Under the edge's mutex.
	t0, h0 uint64 // tail and head when fast mode last opened
}

// fastEligible reports whether an edge with policy p can have a fast ring.
func fastEligible(p *Policy) bool {
	return p.MaxBytes == 0 && p.SoftBytes == 0 && p.Admission != DeadlineQoS
}

// fastMinCells is the smallest ring. In a ring of one cell, a cell's
// "published for position p" (seq p+1) would be its "free for position p+1"
// too: a sender could reuse the cell before the receiver that claimed p
// has read it. With two cells or more the next lap's free value is p+len,
// never p+1. The item cap is the limit's job, not the ring's size.
const fastMinCells = 2

func newFastRing(p *Policy) *fastRing {
	n := fastMaxCells
	if p.MaxItems > 0 && p.MaxItems < n {
		n = max(fastMinCells, ceilPow2(p.MaxItems))
	}
	f := &fastRing{cells: make([]fastCell, n), mask: uint64(n - 1), limit: uint64(p.MaxItems)}
	for i := range f.cells {
		f.cells[i].seq.Store(cellSeq(uint64(i)))
	}
	return f
}

// trySend claims a cell for t and publishes it. It fails, changing
// nothing, when the edge is in slow mode, the item cap is reached or the
// ring is full.
func (f *fastRing) trySend(t token.Token, size uint32) bool {
	for {
		pos := f.tail.Load()
		if pos&slowBit != 0 {
			return false
		}
		h := f.headCache.Load()
		if f.limit > 0 && pos-h >= f.limit {
			h = f.head.Load() &^ slowBit
			storeRelease(&f.headCache, h)
			if pos-h >= f.limit {
				return false
			}
		}
		c := &f.cells[pos&f.mask]
		seq := c.seq.Load()
		if seq != cellSeq(pos) {
			if behind(seq, pos) {
				return false // the cell of the previous lap is not taken yet: full
			}
			continue // another sender claimed pos
		}
		if !f.tail.CompareAndSwap(pos, pos+1) {
			continue
		}
		// Length now, counting claimed cells: an upper bound from the
		// cached head; the exact one from the real head only when the
		// bound is above the high water mark.
		if int64(pos+1-h) > f.hw.Load() {
			f.raiseHighWater(pos)
		}
		c.tok, c.size = t, size
		publishCell(c, pos+1)
		return true
	}
}

// raiseHighWater records the ring's length after the claim of pos, read
// before pos is published (so the head is at most pos).
func (f *fastRing) raiseHighWater(pos uint64) {
	h := f.head.Load() &^ slowBit
	storeRelease(&f.headCache, h) // any head once seen is at most the real one
	n := int64(pos + 1 - h)
	for {
		hw := f.hw.Load()
		if n <= hw || f.hw.CompareAndSwap(hw, n) {
			return
		}
	}
}

// tryRecv takes the oldest token. It fails when the edge is in slow mode
// or the ring holds no published token.
func (f *fastRing) tryRecv() (token.Token, bool) {
	for {
		pos := f.head.Load()
		if pos&slowBit != 0 {
			return token.Nil, false
		}
		c := &f.cells[pos&f.mask]
		seq := c.seq.Load()
		if seq != cellSeq(pos+1) {
			if behind(seq, pos+1) {
				return token.Nil, false // empty, or its sender is publishing
			}
			continue // another receiver took pos
		}
		if !f.head.CompareAndSwap(pos, pos+1) {
			continue
		}
		t := c.tok
		publishCell(c, pos+uint64(len(f.cells)))
		return t, true
	}
}

// trySendN is trySend for the longest prefix of qs that may take the fast
// path (BestEffort, no deadline: lanes[i] and qs[i].deadline), claimed with
// one CAS. It returns how many it sent, in order; 0 when the edge is in
// slow mode, the item cap is reached or the ring is full.
func (f *fastRing) trySendN(qs []queued, lanes []uint8) int {
	m := 0
	for m < len(qs) && lanes[m] == laneBestEffort && qs[m].deadline == 0 {
		m++
	}
	if m == 0 {
		return 0
	}
	for {
		pos := f.tail.Load()
		if pos&slowBit != 0 {
			return 0
		}
		k := uint64(m)
		h := f.headCache.Load()
		if f.limit > 0 && pos-h+k > f.limit {
			h = f.head.Load() &^ slowBit
			storeRelease(&f.headCache, h)
			if pos-h >= f.limit {
				return 0
			}
			k = min(k, f.limit-(pos-h))
		}
		// The free cells from pos on (a cell not free for its position is
		// one the previous lap has not released: the ring is full there).
		j := uint64(0)
		for j < k && f.cells[(pos+j)&f.mask].seq.Load() == cellSeq(pos+j) {
			j++
		}
		if j == 0 {
			if behind(f.cells[pos&f.mask].seq.Load(), pos) {
				return 0
			}
			continue // another sender claimed pos
		}
		if !f.tail.CompareAndSwap(pos, pos+j) {
			continue
		}
		if int64(pos+j-h) > f.hw.Load() {
			f.raiseHighWater(pos + j - 1)
		}
		for i := uint64(0); i < j; i++ {
			c := &f.cells[(pos+i)&f.mask]
			c.tok, c.size = qs[i].tok, qs[i].size
			publishCell(c, pos+i+1)
		}
		return int(j)
	}
}

// tryRecvN is tryRecv for up to len(dst) tokens, taken with one CAS. It
// returns how many it took (0 in slow mode or when nothing is published).
func (f *fastRing) tryRecvN(dst []token.Token) int {
	for {
		pos := f.head.Load()
		if pos&slowBit != 0 {
			return 0
		}
		k := uint64(0)
		for k < uint64(len(dst)) && f.cells[(pos+k)&f.mask].seq.Load() == cellSeq(pos+k+1) {
			k++
		}
		if k == 0 {
			if behind(f.cells[pos&f.mask].seq.Load(), pos+1) {
				return 0 // empty, or its sender is publishing
			}
			continue // another receiver took pos
		}
		if !f.head.CompareAndSwap(pos, pos+k) {
			continue
		}
		for i := uint64(0); i < k; i++ {
			c := &f.cells[(pos+i)&f.mask]
			dst[i] = c.tok
			publishCell(c, pos+i+uint64(len(f.cells)))
		}
		return int(k)
	}
}

// queuedHint is the ring's length in fast mode (0 in slow mode), without
// synchronisation: for sharing a burst among workers, never for a decision
// the semantics depend on.
func (f *fastRing) queuedHint() int {
	t, h := f.tail.Load(), f.head.Load()
	if t&slowBit != 0 || h&slowBit != 0 || t < h {
		return 0
	}
	return int(t - h)
}

// publishCell stores position pos into c's sequence word, ordered after
// every earlier load and store of the goroutine, as the publish (by a
// sender) or the release (by a receiver) of the cell: atomicx.StoreRelease32,
// a plain store on amd64 instead of an atomic store's full fence (an XCHG,
// one per token on each side, 16 per batch of 16). Readers load the word
// atomically.
func publishCell(c *fastCell, pos uint64) {
	atomicx.StoreRelease32((*uint32)(unsafe.Pointer(&c.seq)), cellSeq(pos))
}

// storeRelease is publishCell for the senders' cached head.
func storeRelease(w *atomic.Uint64, v uint64) {
	atomicx.StoreRelease64((*uint64)(unsafe.Pointer(w)), v)
}

// lock takes the edge's mutex and puts the edge in slow mode.
func (e *Edge) lock() {
	e.mu.Lock()
	if e.fast != nil && !e.slow {
		e.enterSlowLocked()
	}
}

// unlock reopens fast mode if nothing needs slow mode any more, then
// releases the mutex.
func (e *Edge) unlock() {
	e.reopenLocked()
	e.mu.Unlock()
}

// enterSlowLocked closes the ring to fast operations and moves what it
// holds to the front of the BestEffort lane (see the file comment).
func (e *Edge) enterSlowLocked() {
	f := e.fast
	e.slow = true
	tail := f.tail.Or(slowBit)
	head := f.head.Or(slowBit)
	lane := &e.lanes[laneBestEffort]
	for pos := head; pos < tail; pos++ {
		c := &f.cells[pos&f.mask]
		var b atomicx.Backoff
		for c.seq.Load() != cellSeq(pos+1) {
			b.Wait() // its sender claimed it before the bit and is publishing
		}
		e.seq++
		d := lane.push()
		d.tok, d.seq, d.deadline, d.size, d.flags = c.tok, e.seq, 0, c.size, 0
		e.n++
		e.bytes += int64(c.size)
		e.laneBytes[laneBestEffort] += int64(c.size)
		publishCell(c, pos+uint64(len(f.cells)))
	}
	f.head.Store(tail | slowBit)
	e.st.Admitted += tail - f.t0
	e.st.Delivered += head - f.h0
	e.st.HighWater = max(e.st.HighWater, int(f.hw.Load()))
}

// reopenLocked returns the edge to fast mode when it is in slow mode and
// nothing needs it there: no waiters, an open edge, and a queue that is
// only plain BestEffort messages (no deadline) that fit in the ring, at
// least one. Those are moved back into the ring, in order.
func (e *Edge) reopenLocked() {
	if !e.slow || e.fast == nil || e.closed || e.recvq.head != nil || e.sendq.head != nil || e.wakeRecv != nil ||
		e.freePanic != nil {
		return
	}
	f := e.fast
	lane := &e.lanes[laneBestEffort]
	if e.n == 0 || e.n != lane.len() || e.n > len(f.cells) {
		// An empty edge stays in slow mode until a send queues something:
		// where receivers park for every message (a paced stream), each
		// reopen would cost the next parking receiver a switch (stores to
		// the senders' and receivers' lines, a cache miss each), for no
		// fast operation in between.
		return
	}
	for i := 0; i < lane.len(); i++ {
		if lane.at(i).deadline != 0 {
			return
		}
	}
	pos := f.tail.Load() &^ slowBit // == the head: the ring is empty
	for i := uint64(0); lane.len() > 0; i++ {
		c := &f.cells[(pos+i)&f.mask]
		var b atomicx.Backoff
		for c.seq.Load() != cellSeq(pos+i) {
			b.Wait() // a receiver that took it before the bit is releasing it
		}
		q := lane.pop()
		c.tok, c.size = q.tok, q.size
		publishCell(c, pos+i+1)
	}
	end := pos + uint64(e.n)
	e.n, e.bytes, e.laneBytes[laneBestEffort] = 0, 0, 0
	f.t0, f.h0 = end, pos
	f.hw.Store(int64(e.st.HighWater))
	f.headCache.Store(pos)
	f.head.Store(pos)
	f.tail.Store(end)
	e.slow = false
}

// spinSend gives a receiver on another P a moment to make room in a full
// ring in fast mode before a Block Send takes the mutex (and with it the
// edge out of fast mode) to wait.
func (e *Edge) spinSend(t token.Token, size uint32) bool {
	f := e.fast
	for i := 0; i < fastSendSpins; i++ {
		if f.tail.Load()&slowBit != 0 {
			break
		}
		runtime.Gosched()
		if f.trySend(t, size) {
			return true
		}
	}
	return false
}

// fastSendSpins is how many times Send yields on a full ring in fast mode.
const fastSendSpins = 4
