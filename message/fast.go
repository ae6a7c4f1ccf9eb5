package message

// The edge's lock-free fast path.
//
// An edge whose policy needs no byte accounting (MaxBytes and SoftBytes 0)
// and no shedding (Admission is not DeadlineQoS) has a fastRing: a bounded
// multi-producer multi-consumer ring of tokens. A send of a BestEffort
// message without a deadline and a receive go through the ring without the
// edge's mutex while the edge is in fast mode (SendBatch and RecvBatch claim
// or take a run of cells with one CAS); everything else takes the mutex, and
// the mutex's holder first switches the edge to slow mode.
//
// # The ring
//
// Positions grow without end (64 bits); position pos lives in cell
// pos&mask. A cell is one word: a token and the lap parity of its
// position (fastCell). A sender claims positions with a CAS on the tail
// and publishes each token by storing it, with its position's parity, into
// the cell (publish: a plain store on amd64). A receiver reads the cells
// first, each published for its position when its parity is that of the
// position, and then takes the positions with a CAS on the head: the CAS
// succeeds only if no other receiver took them in between, and a failed
// CAS drops what it read. So only senders write a
// cell, and a sender may reuse the cell of position pos-len(cells) as soon
// as the head has passed it: the receiver that moved the head past it had
// read it already. Senders learn the head from a cache (headCache, at most
// the real head) and reload it when the cache says the ring is full.
//
// This differs from Dmitry Vyukov's ring, where a receiver takes a cell
// first and then releases it with a store to the cell's sequence word:
// there, every cell's cache line goes to the receiver's core and back with
// write ownership on every lap; here the receiver only reads it, and the one line
// it writes is the head's (once per batch).
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
	"math/bits"
	"runtime"
	"sync/atomic"
	"unsafe"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/token"
)

// slowBit, set in a ring's tail and head, closes them to fast operations.
const slowBit = uint64(1) << 63

// fastMaxCells bounds a ring's size: an edge with a larger (or no) item
// cap has a ring of this many cells (8 KiB) and goes to slow mode when it
// fills. Room lets a producer and a consumer of batches work on different
// lines instead of waiting for each other: batches of 16 over an edge of
// MaxItems 1024 took 12.3-12.7 ns per token with 256 cells (slow mode past
// 256 queued) and 10.2-10.9 ns with 1024, on the build machine
// (BenchmarkMessageBatch room=1024).
const fastMaxCells = 1024

// A fastCell is one 64-bit word: the token of the position it holds, with
// bit lapBit set to that position's lap parity (lapOf). Only senders (and
// the mutex's holder) write it, with one release store that publishes the
// position (publish); receivers read it with one atomic load (a plain
// load on amd64), so there is nothing to tear.
//
// One word instead of a sequence word beside the token (a 16-byte cell)
// puts eight cells in a cache line instead of four: a token crossing the
// ring costs the receiver an eighth of a line's miss and the sender an
// eighth of taking it back, not a quarter.
//
// The parity is enough to tell whether a cell holds the position a
// receiver is looking at: while the head is at pos, the cell of pos holds
// either pos's token or that of pos-len(cells) (published before the
// head could pass it; a sender claims pos+len(cells) only once the head
// has passed pos), and those two laps differ in parity. A switch to slow
// mode and back may leave the head where it was; the reopen then publishes
// the positions from there on, so this still holds. A receiver whose head
// was stale may see a later lap of the same parity; its CAS on the head
// then fails.
type fastCell struct {
	word atomic.Uint64
}

// lapBit is the bit of a cell that holds its position's lap parity: the
// top bit of the token's index. Tokens that have it set (an index of 2^31
// or more: only from a store of more than 2^31 slots, or from a
// HeaderStore of another kind) never take the ring; they go the locked
// way (ringable).
const lapBit = uint64(1) << 31

// ringable reports whether t can travel in a cell.
func ringable(t token.Token) bool { return uint64(t)&lapBit == 0 }

// Eight cells share a cache line (a compile error otherwise).
var _ [8 - unsafe.Sizeof(fastCell{})]byte
var _ [unsafe.Sizeof(fastCell{}) - 8]byte

type fastRing struct {
	// Read-only after newFastRing.
	cells []fastCell
	sizes []uint32 // the Size of each cell's token, written before its publish
	mask  uint64
	shift uint   // log2(len(cells)): pos>>shift is pos's lap
	room  uint64 // how many tokens the ring may hold: MaxItems, at most len(cells)

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

// fastMinCells is the smallest ring. The item cap is the room's job, not
// the ring's size. Two cells is a margin kept from the ring's first
// protocol, where receivers released cells: in a ring of one cell,
// "published for position p" (seq p+1) was also "free for position p+1".
// Receivers that read and then claim never need it.
const fastMinCells = 2

func newFastRing(p *Policy) *fastRing {
	n := fastMaxCells
	if p.MaxItems > 0 && p.MaxItems < n {
		n = max(fastMinCells, ceilPow2(p.MaxItems))
	}
	f := &fastRing{cells: make([]fastCell, n), sizes: make([]uint32, n), mask: uint64(n - 1),
		shift: uint(bits.TrailingZeros(uint(n))), room: uint64(n)}
	if p.MaxItems > 0 && p.MaxItems < n {
		f.room = uint64(p.MaxItems)
	}
	for i := range f.cells {
		f.clearCell(uint64(i))
	}
	return f
}

// lapOf is the lap parity of position pos, where a cell holding pos's
// token has it (at lapBit).
func (f *fastRing) lapOf(pos uint64) uint64 { return ((pos >> f.shift) & 1) << 31 }

// holds reports whether w, the word of pos's cell, holds pos's token,
// given that it holds pos's or pos-len(cells)'s (see fastCell).
func (f *fastRing) holds(w, pos uint64) bool { return w&lapBit == f.lapOf(pos) }

// cellToken is the token in a cell's word.
func cellToken(w uint64) token.Token { return token.Token(w &^ lapBit) }

// clearCell makes pos's cell unpublished for pos: it holds the previous
// lap's position, with no token. For a new ring (or a test's).
func (f *fastRing) clearCell(pos uint64) {
	f.cells[pos&f.mask].word.Store(f.lapOf(pos - uint64(len(f.cells))))
}

// full reports whether the ring holds room tokens when a sender is about to
// claim position pos, with h the head it knows; it reloads the head (and
// refreshes the cache) when h says so. It returns the head it decided on.
func (f *fastRing) full(pos, h uint64) (bool, uint64) {
	if pos-h < f.room {
		return false, h
	}
	h = f.head.Load() &^ slowBit
	storeRelease(&f.headCache, h)
	return pos-h >= f.room, h
}

// publish writes position pos's token t (ringable) and its size into the
// ring, and publishes them with the release store of the cell's word
// (atomicx.StoreRelease64: a plain store on amd64, instead of an atomic
// store's full fence, an XCHG, once per token). The size is read only by
// the mutex's holder, after it has seen the word (enterSlowLocked).
func (f *fastRing) publish(pos uint64, t token.Token, size uint32) {
	i := pos & f.mask
	atomicx.StoreRelease32(&f.sizes[i], size)
	atomicx.StoreRelease64((*uint64)(unsafe.Pointer(&f.cells[i].word)), uint64(t)|f.lapOf(pos))
}

// trySend claims a cell for t and publishes it. It fails, changing
// nothing, when the edge is in slow mode, the ring holds its room (the
// item cap, or every cell) or t is not ringable.
func (f *fastRing) trySend(t token.Token, size uint32) bool {
	if !ringable(t) {
		return false
	}
	for {
		pos := f.tail.Load()
		if pos&slowBit != 0 {
			return false
		}
		full, h := f.full(pos, f.headCache.Load())
		if full {
			return false
		}
		if !f.tail.CompareAndSwap(pos, pos+1) {
			continue // another sender claimed pos
		}
		// Length now, counting claimed cells: an upper bound from the
		// cached head; the exact one from the real head only when the
		// bound is above the high water mark.
		if int64(pos+1-h) > f.hw.Load() {
			f.raiseHighWater(pos)
		}
		f.publish(pos, t, size)
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
		w := f.cells[pos&f.mask].word.Load()
		if !f.holds(w, pos) {
			if f.head.Load() == pos {
				return token.Nil, false // empty, or its sender is publishing
			}
			continue // another receiver took pos (w may be a later lap's)
		}
		if !f.head.CompareAndSwap(pos, pos+1) {
			continue // another receiver took pos: w may be a later lap's
		}
		return cellToken(w), true
	}
}

// trySendN is trySend for the longest prefix of qs that may take the fast
// path (BestEffort, no deadline, ringable: lanes[i], qs[i].deadline and
// qs[i].tok), claimed with one CAS. It returns how many it sent, in order;
// 0 when the edge is in slow mode, the item cap is reached or the ring is
// full.
func (f *fastRing) trySendN(qs []queued, lanes []uint8) int {
	m := 0
	for m < len(qs) && lanes[m] == laneBestEffort && qs[m].deadline == 0 && ringable(qs[m].tok) {
		m++
	}
	pos, j := f.claim(m)
	for i := uint64(0); i < j; i++ {
		f.publish(pos+i, qs[i].tok, qs[i].size)
	}
	return int(j)
}

// trySendTokens is trySendN for tokens already known to take the fast path
// (but for being ringable), with their sizes: SendBatch's path without
// staging (sendFastPrefix).
func (f *fastRing) trySendTokens(ts []token.Token, sizes []uint32) int {
	m := 0
	for m < len(ts) && ringable(ts[m]) {
		m++
	}
	pos, j := f.claim(m)
	for i := uint64(0); i < j; i++ {
		f.publish(pos+i, ts[i], sizes[i])
	}
	return int(j)
}

// claim claims up to m positions with one CAS on the tail, as many as the
// room allows, and returns the first and how many (0 when the edge is in
// slow mode or the ring holds its room). The caller writes and publishes
// each claimed cell.
func (f *fastRing) claim(m int) (pos, j uint64) {
	if m == 0 {
		return 0, 0
	}
	for {
		pos := f.tail.Load()
		if pos&slowBit != 0 {
			return 0, 0
		}
		full, h := f.full(pos+uint64(m)-1, f.headCache.Load())
		if full {
			// Not room for all of them: as many as fit.
			if full, h = f.full(pos, h); full {
				return 0, 0
			}
		}
		j := min(uint64(m), f.room-(pos-h))
		if !f.tail.CompareAndSwap(pos, pos+j) {
			continue // another sender claimed pos
		}
		if int64(pos+j-h) > f.hw.Load() {
			f.raiseHighWater(pos + j - 1)
		}
		f.prefetchNext(pos+j, j, h)
		return pos, j
	}
}

// prefetchNext asks for the cells of the j positions from next, the batch
// a sender will likely claim after this one, to be fetched for writing
// while it writes this one. Their lines were last read by the receiver
// that took their previous lap; without the hint, the sender's stores
// wait for those lines and its next claim's CAS waits for the stores (a
// locked instruction drains the store buffer): batches of 16 over an edge
// with room for 1024 went 12% faster with it on the build machine. It asks
// only when h, a head at most the real one, shows the receivers past the
// previous lap of every one of those positions, so that it does not take
// lines from receivers still reading them (but for a cell past next+j that
// shares the last line).
func (f *fastRing) prefetchNext(next, j, h uint64) {
	if next+j-h > uint64(len(f.cells)) {
		return
	}
	for p := next &^ (cellsPerLine - 1); p < next+j; p += cellsPerLine {
		atomicx.PrefetchWrite(unsafe.Pointer(&f.cells[p&f.mask]))
	}
}

// cellsPerLine is how many cells share a 64-byte cache line.
const cellsPerLine = 64 / uint64(unsafe.Sizeof(fastCell{}))

// tryRecvN is tryRecv for up to len(dst) tokens, taken with one CAS. It
// returns how many it took (0 in slow mode or when nothing is published).
// It reads the tokens into dst before the CAS; when another receiver wins
// the CAS, the entries it read are set back to token.Nil before it looks
// again, so dst[n:] never holds a token the caller does not own.
func (f *fastRing) tryRecvN(dst []token.Token) int {
	for {
		pos := f.head.Load()
		if pos&slowBit != 0 {
			return 0
		}
		// At most a lap: the cells past it are the same cells again.
		n := min(uint64(len(dst)), uint64(len(f.cells)))
		k := uint64(0)
		for ; k < n; k++ {
			w := f.cells[(pos+k)&f.mask].word.Load()
			if !f.holds(w, pos+k) {
				break
			}
			dst[k] = cellToken(w)
		}
		if k == 0 {
			if f.head.Load() == pos {
				return 0 // empty, or its sender is publishing
			}
			continue // another receiver took pos
		}
		if !f.head.CompareAndSwap(pos, pos+k) {
			clear(dst[:k])
			continue
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

// storeRelease is a release store (plain on amd64), for the senders'
// cached head.
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
		w := c.word.Load()
		for !f.holds(w, pos) {
			b.Wait() // its sender claimed it before the bit and is publishing
			w = c.word.Load()
		}
		tok, size := cellToken(w), atomic.LoadUint32(&f.sizes[pos&f.mask])
		e.seq++
		d := lane.push()
		d.tok, d.seq, d.deadline, d.size, d.flags = tok, e.seq, 0, size, 0
		e.n++
		e.bytes += int64(size)
		e.laneBytes[laneBestEffort] += int64(size)
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
		if q := lane.at(i); q.deadline != 0 || !ringable(q.tok) {
			return
		}
	}
	// The ring is empty (the head is the tail) and every position before
	// the tail was read by the receiver that took it, or by
	// enterSlowLocked: its cells are free. A receiver that read one of them
	// before the switch may still be reading it; its CAS on the head fails.
	pos := f.tail.Load() &^ slowBit
	for i := uint64(0); lane.len() > 0; i++ {
		q := lane.pop()
		f.publish(pos+i, q.tok, q.size)
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
