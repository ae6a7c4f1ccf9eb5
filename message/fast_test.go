package message

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
)

// Tests of the edge's lock-free fast path (fast.go). FuzzEdgeModel checks
// its semantics against the model (inputs with bit 6 of a policy's second
// byte have no byte caps, hence a fast ring); these check that the path is
// taken when it should be and the mode switches under concurrency.

// inFastMode reports whether e is in fast mode, with its mutex.
func (e *Edge) inFastMode() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.fast != nil && !e.slow
}

func TestFastEligible(t *testing.T) {
	fs := newFakeStore()
	for _, c := range []struct {
		p    Policy
		fast bool
	}{
		{Policy{}, true},
		{Policy{MaxItems: 3, SoftItems: 2, Admission: Block}, true},
		{Policy{MaxItems: 1000, Admission: DropNewest}, true},
		{Policy{MaxItems: 5, Admission: DropOldest}, true},
		{Policy{MaxItems: 5, Admission: DeadlineQoS}, false},
		{Policy{MaxItems: 5, MaxBytes: 100}, false},
		{Policy{MaxItems: 5, MaxBytes: 100, SoftBytes: 10}, false},
	} {
		e := mustEdge(t, fs, c.p)
		if got := e.fast != nil; got != c.fast || e.inFastMode() != c.fast {
			t.Errorf("%+v: fast ring %v, fast mode %v; want %v", c.p, got, e.inFastMode(), c.fast)
		}
	}
}

// Plain BestEffort sends and receives stay in fast mode and count in Stats;
// a LatencyCritical message switches to slow mode, overtakes the queued
// ones, and the edge reopens fast mode with the rest moved back in order.
func TestFastPathAndSwitch(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 8})
	ctx := context.Background()
	var be []token.Token
	for i := 0; i < 5; i++ {
		tok := fs.put(Header{Size: 4})
		be = append(be, tok)
		if err := e.Send(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	f := e.fast
	if got := f.tail.Load(); got != 5 || !e.inFastMode() {
		t.Fatalf("after 5 plain sends: tail %d, fast mode %v; want 5, true", got, e.inFastMode())
	}
	if tok, err := e.Recv(ctx); err != nil || tok != be[0] {
		t.Fatalf("Recv = %v, %v; want %v", tok, err, be[0])
	}
	if f.head.Load() != 1 {
		t.Fatalf("the receive did not take the fast path: head %d", f.head.Load())
	}
	crit := fs.put(Header{QoS: LatencyCritical, Size: 4})
	if err := e.Send(ctx, crit); err != nil {
		t.Fatal(err)
	}
	if e.inFastMode() {
		t.Fatal("a LatencyCritical message is queued, yet the edge is in fast mode")
	}
	if tok, ok := e.TryRecv(); !ok || tok != crit {
		t.Fatalf("TryRecv = %v, %v; want the LatencyCritical %v first", tok, ok, crit)
	}
	if !e.inFastMode() {
		t.Fatal("only plain messages queued, yet the edge stayed in slow mode")
	}
	st := e.Stats()
	if st.Admitted != 6 || st.Delivered != 2 || st.Len != 4 || st.Bytes != 16 || st.HighWater != 5 {
		t.Fatalf("Stats = %+v; want Admitted 6, Delivered 2, Len 4, Bytes 16, HighWater 5", st)
	}
	for _, want := range be[1:] {
		if tok, ok := e.TryRecv(); !ok || tok != want {
			t.Fatalf("TryRecv = %v, %v; want %v (FIFO across the switches)", tok, ok, want)
		}
	}
	if tok, ok := e.TryRecv(); ok {
		t.Fatalf("TryRecv of an empty edge = %v", tok)
	}
	st = e.Stats()
	if st.Admitted != 6 || st.Delivered != 6 || st.Len != 0 || st.HighWater != 5 {
		t.Fatalf("Stats = %+v; want Admitted 6, Delivered 6, Len 0, HighWater 5", st)
	}
}

// An edge without an item cap holds more than its ring: the overflow goes
// to the locked lane, and fast mode reopens only once it fits again.
func TestFastRingOverflow(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{})
	n := fastMaxCells + 10
	toks := make([]token.Token, n)
	for i := range toks {
		toks[i] = fs.put(Header{Size: 1})
		if err := e.TrySend(toks[i]); err != nil {
			t.Fatal(err)
		}
	}
	if e.inFastMode() {
		t.Fatalf("%d queued in a ring of %d, yet in fast mode", n, fastMaxCells)
	}
	for i, want := range toks {
		tok, err := e.Recv(context.Background())
		if err != nil || tok != want {
			t.Fatalf("Recv %d = %v, %v; want %v", i, tok, err, want)
		}
		if left := n - i - 1; left > 0 && left <= fastMaxCells && !e.inFastMode() {
			t.Fatalf("%d left, fits the ring, yet in slow mode", left)
		}
	}
	if st := e.Stats(); st.Admitted != uint64(n) || st.Delivered != uint64(n) || st.HighWater != n {
		t.Fatalf("Stats = %+v", st)
	}
}

// A full Block edge in fast mode parks its sender (slow mode) and the
// receive that makes room wakes it.
func TestFastFullBlocks(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 2})
	ctx := context.Background()
	a, b, c := fs.put(Header{}), fs.put(Header{}), fs.put(Header{})
	for _, tok := range []token.Token{a, b} {
		if err := e.Send(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.TrySend(c); !errors.Is(err, ErrEdgeFull) {
		t.Fatalf("TrySend on a full edge = %v", err)
	}
	done := make(chan error)
	go func() { done <- e.Send(ctx, c) }()
	waitFor(t, func() bool { return e.waitingSenders() == 1 })
	if tok, err := e.Recv(ctx); err != nil || tok != a {
		t.Fatalf("Recv = %v, %v; want %v", tok, err, a)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, want := range []token.Token{b, c} {
		if tok, err := e.Recv(ctx); err != nil || tok != want {
			t.Fatalf("Recv = %v, %v; want %v", tok, err, want)
		}
	}
	if st := e.Stats(); st.Admitted != 3 || st.Delivered != 3 || st.Waited != 1 || st.Rejected != 1 || st.HighWater != 2 {
		t.Fatalf("Stats = %+v", st)
	}
}

// Producers send numbered messages, most plain (fast), some
// LatencyCritical or Background or with a far deadline (slow: each takes
// the edge out of fast mode), one of them with SendBatch, while consumers
// receive (one with RecvBatch) and a monitor reads Stats (another switch). Every message arrives exactly once, each
// consumer sees each producer's messages of one lane in order, and the
// counters balance.
func TestFastSwitchStress(t *testing.T) {
	for _, p := range []Policy{{MaxItems: 4}, {MaxItems: 64, Admission: DropNewest}, {}, {MaxItems: 3, Admission: DropOldest}} {
		t.Run(fmt.Sprintf("%+v", p), func(t *testing.T) { fastStress(t, p) })
	}
}

func fastStress(t *testing.T, p Policy) {
	const producers, consumers = 3, 2
	per := 4000
	if testing.Short() {
		per = 800
	}
	fs := newFakeStore()
	e := mustEdge(t, fs, p)
	ctx := context.Background()
	type tag struct{ prod, seq, lane int }
	var mu sync.Mutex
	tags := map[token.Token]tag{}
	var refused, received atomic.Int64
	var pwg, cwg sync.WaitGroup
	stop := make(chan struct{})
	go func() { // monitor
		for {
			select {
			case <-stop:
				return
			default:
				if st := e.Stats(); p.MaxItems > 0 && st.Len > p.MaxItems {
					t.Errorf("Len %d over MaxItems %d", st.Len, p.MaxItems)
				}
				runtime.Gosched() // with GOMAXPROCS=1 it would hog the P

			}
		}
	}()
	for w := 0; w < producers; w++ {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			var batch []token.Token
			for i := 0; i < per; i++ {
				h := Header{Size: 1}
				switch r := rng.IntN(20); {
				case r == 0:
					h.QoS = LatencyCritical
				case r == 1:
					h.QoS = Background
				case r == 2:
					h.Deadline = 1 << 62
				}
				tok := fs.put(h)
				lane := int(h.QoS.effective())
				if lane == int(Background) {
					lane = int(BestEffort) // one FIFO with BestEffort
				}
				mu.Lock()
				tags[tok] = tag{w, i, lane}
				mu.Unlock()
				if w == 0 { // producer 0 sends in batches
					batch = append(batch, tok)
					if len(batch) < 1+i%7 && i < per-1 {
						continue
					}
					n, err := e.SendBatch(ctx, batch)
					if err != nil && !errors.Is(err, ErrRejected) {
						t.Error(err)
					}
					for _, tok := range batch[n:] {
						refused.Add(1)
						fs.Free(tok)
					}
					batch = batch[:0]
					continue
				}
				if err := e.Send(ctx, tok); err != nil {
					if !errors.Is(err, ErrRejected) {
						t.Error(err)
					}
					refused.Add(1)
					fs.Free(tok)
				}
			}
		}()
	}
	for c := 0; c < consumers; c++ {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			last := map[[2]int]int{}
			var dst [5]token.Token
			for {
				var got []token.Token
				if c == 0 { // consumer 0 receives in batches
					n, err := e.RecvBatch(ctx, dst[:])
					if errors.Is(err, ErrEdgeClosed) {
						return
					}
					if err != nil {
						t.Error(err)
						return
					}
					got = dst[:n]
				} else {
					tok, err := e.Recv(ctx)
					if errors.Is(err, ErrEdgeClosed) {
						return
					}
					if err != nil {
						t.Error(err)
						return
					}
					dst[0] = tok
					got = dst[:1]
				}
				for _, tok := range got {
					mu.Lock()
					tg, ok := tags[tok]
					delete(tags, tok)
					mu.Unlock()
					if !ok {
						t.Errorf("received %v twice or never sent", tok)
						continue
					}
					k := [2]int{tg.prod, tg.lane}
					if prev, seen := last[k]; seen && tg.seq <= prev {
						t.Errorf("producer %d lane %d: got %d after %d", tg.prod, tg.lane, tg.seq, prev)
					}
					last[k] = tg.seq
					received.Add(1)
					fs.Free(tok)
				}
			}
		}()
	}
	pwg.Wait()
	close(stop)
	e.Close()
	cwg.Wait()
	st := e.Stats()
	total := int64(producers * per)
	evicted := int64(st.Evicted)
	if received.Load()+refused.Load()+evicted != total || int64(st.Delivered) != received.Load() ||
		st.Admitted != st.Delivered+st.Evicted || st.FreeErrors != 0 {
		t.Fatalf("received %d + refused %d + evicted %d != %d sent; Stats %+v", received.Load(), refused.Load(), evicted, total, st)
	}
	if p.MaxItems > 0 && st.HighWater > p.MaxItems {
		t.Fatalf("HighWater %d over MaxItems %d", st.HighWater, p.MaxItems)
	}
}

// The switches allocate nothing either: a LatencyCritical message takes
// the edge to slow mode and its receive reopens fast mode.
func TestFastSwitchAllocs(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 4})
	plain, crit := fs.put(Header{}), fs.put(Header{QoS: LatencyCritical})
	ctx := context.Background()
	allocs := testing.AllocsPerRun(1000, func() {
		if e.Send(ctx, plain) != nil || e.Send(ctx, crit) != nil {
			t.Fatal("send failed")
		}
		if tok, _ := e.Recv(ctx); tok != crit {
			t.Fatal("LatencyCritical not first")
		}
		if tok, _ := e.Recv(ctx); tok != plain {
			t.Fatal("plain message lost")
		}
	})
	if allocs != 0 {
		t.Fatalf("Send+Recv through the mode switches allocates %.1f times", allocs)
	}
}

// A sender that claimed a cell before the edge left fast mode publishes it
// without the mutex: the switch waits for it and keeps its token, in order.
// The test plays that sender by hand.
func TestFastSwitchWaitsForClaimedCell(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 4})
	first, late := fs.put(Header{Size: 2}), fs.put(Header{Size: 3})
	if err := e.TrySend(first); err != nil {
		t.Fatal(err)
	}
	f := e.fast
	pos := f.tail.Load()
	if !f.tail.CompareAndSwap(pos, pos+1) { // claimed, not yet published
		t.Fatal("claim failed")
	}
	got := make(chan EdgeStats)
	go func() { got <- e.Stats() }() // switches to slow mode
	waitFor(t, func() bool { return f.tail.Load()&slowBit != 0 })
	select {
	case st := <-got:
		t.Fatalf("Stats returned %+v before the claimed cell was published", st)
	default:
	}
	f.publish(pos, late, 3)
	st := <-got
	if st.Admitted != 2 || st.Len != 2 || st.Bytes != 5 {
		t.Fatalf("Stats = %+v; want the claimed send counted: Admitted 2, Len 2, Bytes 5", st)
	}
	for _, want := range []token.Token{first, late} {
		if tok, ok := e.TryRecv(); !ok || tok != want {
			t.Fatalf("TryRecv = %v, %v; want %v", tok, ok, want)
		}
	}
}

// A receiver reads a cell before its CAS on the head. One that read a cell
// and was overtaken (the edge left fast mode and came back, reusing the
// cell for a later position) loses its CAS and gets nothing: the token it
// read is delivered once, by the lane and then the ring. The test plays
// that receiver by hand.
func TestFastStaleReaderLosesItsTake(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 2}) // two cells: b reuses the one read
	a, b := fs.put(Header{}), fs.put(Header{})
	if err := e.TrySend(a); err != nil {
		t.Fatal(err)
	}
	f := e.fast
	pos := f.head.Load()
	if got := cellToken(f.cells[pos&f.mask].word.Load()); got != a {
		t.Fatalf("cell holds %v, want %v", got, a)
	}
	// A LatencyCritical send switches to slow mode (a moves to the lane);
	// its receive reopens fast mode and moves a back into the ring at the
	// position after its own; b's send takes the one after that: a's first
	// cell again.
	crit := fs.put(Header{QoS: LatencyCritical})
	if err := e.TrySend(crit); err != nil {
		t.Fatal(err)
	}
	if tok, ok := e.TryRecv(); !ok || tok != crit {
		t.Fatalf("TryRecv = %v, %v; want %v", tok, ok, crit)
	}
	if !e.inFastMode() {
		t.Fatal("not back in fast mode")
	}
	if err := e.TrySend(b); err != nil {
		t.Fatal(err)
	}
	if got := cellToken(f.cells[pos&f.mask].word.Load()); got != b {
		t.Fatalf("cell holds %v, want b %v", got, b)
	}
	if f.head.CompareAndSwap(pos, pos+1) {
		t.Fatal("the stale receiver's take succeeded: a would be delivered twice")
	}
	for _, want := range []token.Token{a, b} {
		if tok, ok := e.TryRecv(); !ok || tok != want {
			t.Fatalf("TryRecv = %v, %v; want %v", tok, ok, want)
		}
	}
	if tok, ok := e.TryRecv(); ok {
		t.Fatalf("TryRecv = %v after the last token", tok)
	}
}

// A sender reuses a cell only once the head has passed its previous lap's
// position: a receiver that read the cell and lost its take to another
// receiver finds the next lap's token there and its CAS fails; a full ring
// (head not passed) refuses the sender instead of overwriting the cell.
func TestFastSenderReusesCellOnlyPastHead(t *testing.T) {
	f := newFastRing(&Policy{MaxItems: 2})
	tok := func(i uint32) token.Token { return token.New(i, 1) }
	if !f.trySend(tok(1), 1) || !f.trySend(tok(2), 1) {
		t.Fatal("two sends into a ring of room 2 failed")
	}
	if f.trySend(tok(3), 1) {
		t.Fatal("a third send overwrote a cell nobody took")
	}
	pos := f.head.Load()
	read := cellToken(f.cells[pos&f.mask].word.Load()) // the slow receiver reads pos...
	if got, ok := f.tryRecv(); !ok || got != tok(1) {  // ...another takes it
		t.Fatalf("tryRecv = %v, %v", got, ok)
	}
	if !f.trySend(tok(3), 1) { // the head passed pos: its cell is free
		t.Fatal("send into the freed cell failed")
	}
	if got := cellToken(f.cells[pos&f.mask].word.Load()); got != tok(3) {
		t.Fatalf("cell holds %v, want the next lap's %v", got, tok(3))
	}
	if read != tok(1) || f.head.CompareAndSwap(pos, pos+1) {
		t.Fatal("the slow receiver's take of a rewritten cell succeeded")
	}
	var dst [4]token.Token
	if n := f.tryRecvN(dst[:]); n != 2 || dst[0] != tok(2) || dst[1] != tok(3) || !dst[2].IsNil() {
		t.Fatalf("tryRecvN = %d, %v", n, dst)
	}
}

// A send to an empty edge with a parked receiver hands the token over
// directly: the receiver returns it without taking the lock again, and the
// counters read as one send and one receive.
func TestHandOffToParkedReceiver(t *testing.T) {
	for _, p := range []Policy{{MaxItems: 4}, {MaxItems: 4, MaxBytes: 100}} { // with and without a fast ring
		fs := newFakeStore()
		e := mustEdge(t, fs, p)
		got := make(chan token.Token)
		go func() {
			tok, err := e.Recv(context.Background())
			if err != nil {
				t.Error(err)
			}
			got <- tok
		}()
		waitFor(t, func() bool { return e.recvq.linked.Load() == 1 })
		tok := fs.put(Header{Size: 3})
		if err := e.Send(context.Background(), tok); err != nil {
			t.Fatal(err)
		}
		if r := <-got; r != tok {
			t.Fatalf("%+v: parked receiver got %v, want %v", p, r, tok)
		}
		if st := e.Stats(); st.Admitted != 1 || st.Delivered != 1 || st.HighWater != 1 || st.Len != 0 || st.Bytes != 0 {
			t.Fatalf("%+v: Stats = %+v", p, st)
		}
	}
}

// A receiver whose context ends while a token is handed to it keeps the
// token: its receive happened. Both orders of the race are run (the
// receiver's select picks the signal or the done channel at random).
func TestHandOffRacesContext(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 4})
	for i := 0; i < 40; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		type result struct {
			tok token.Token
			err error
		}
		got := make(chan result)
		go func() {
			tok, err := e.Recv(ctx)
			got <- result{tok, err}
		}()
		waitFor(t, func() bool { return e.recvq.linked.Load() == 1 })
		tok := fs.put(Header{})
		e.lock()
		q := queued{tok: tok}
		if !e.handOffLocked(&q) {
			t.Fatal("no hand-off to the parked receiver")
		}
		cancel() // both the signal (after the unlock) and done are ready
		e.unlockAndWake()
		if r := <-got; r.err != nil || r.tok != tok {
			t.Fatalf("round %d: Recv = %v, %v; want %v, nil", i, r.tok, r.err, tok)
		}
		fs.Free(tok)
	}
	if st := e.Stats(); st.Admitted != 40 || st.Delivered != 40 || st.Len != 0 {
		t.Fatalf("Stats = %+v", st)
	}
}

// TestFastRingOfOneItem: an edge of MaxItems 1 in fast mode delivers every
// token exactly once while a sender and receivers race on its one slot. In
// a ring of one cell, Vyukov's "published for position p" (seq p+1) equals
// "free for position p+1": a sender that saw the head move past p reused
// the cell before the receiver that claimed p had read it, so that token
// was lost and the next one delivered twice. Rings now have two cells at
// least; MaxItems still caps the queue at one.
func TestFastRingOfOneItem(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 1, Admission: Block})
	if len(e.fast.cells) < 2 {
		t.Fatalf("a ring of %d cell", len(e.fast.cells))
	}
	const n = 20000
	toks := make([]token.Token, n)
	want := map[token.Token]bool{}
	for i := range toks {
		toks[i] = fs.put(Header{})
		want[toks[i]] = true
	}
	ctx := context.Background()
	got := make(chan token.Token, 2*n) // room for duplicates, so that they are reported
	var wg sync.WaitGroup
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]token.Token, 4)
			for i := 0; ; i++ {
				k := 1
				var err error
				if i%2 == 0 {
					buf[0], err = e.Recv(ctx)
				} else {
					k, err = e.RecvBatch(ctx, buf)
				}
				if err != nil {
					return
				}
				for _, tok := range buf[:k] {
					got <- tok
				}
			}
		}()
	}
	for i := 0; i < n; i += 2 {
		if err := e.Send(ctx, toks[i]); err != nil {
			t.Fatal(err)
		}
		if _, err := e.SendBatch(ctx, toks[i+1:i+2]); err != nil {
			t.Fatal(err)
		}
	}
	e.Close()
	wg.Wait()
	close(got)
	seen := map[token.Token]bool{}
	for tok := range got {
		if seen[tok] {
			t.Fatalf("token %v delivered twice", tok)
		}
		if !want[tok] {
			t.Fatalf("token %v was never sent", tok)
		}
		seen[tok] = true
	}
	if len(seen) != n {
		t.Fatalf("%d of %d tokens delivered", len(seen), n)
	}
	if st := e.Stats(); st.HighWater > 1 {
		t.Fatalf("HighWater %d on an edge of MaxItems 1", st.HighWater)
	}
}

// TestFastRingCellSeqWraps runs a ring across the point where positions
// pass 2^32 (where the cells' 32-bit sequence words wrapped to 0, when a
// cell had one; the lap parity must hold there too): sends and
// receives, one at a time and in batches, stay in order, a full ring still
// refuses, and an empty one still reports empty.
func TestFastRingCellSeqWraps(t *testing.T) {
	for _, start := range []uint64{1<<32 - 5, 1<<32 - 1, 2<<32 - 3} {
		// A wrong comparison spins in trySend: bound the run.
		done := make(chan struct{})
		go func() {
			defer close(done)
			runRingAcrossWrap(t, start)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("start %#x: the ring is stuck at the wrap", start)
		}
	}
}

func runRingAcrossWrap(t *testing.T, start uint64) {
	f := newFastRing(&Policy{MaxItems: 4})
	for pos := start; pos < start+uint64(len(f.cells)); pos++ {
		f.clearCell(pos)
	}
	f.tail.Store(start)
	f.head.Store(start)
	f.headCache.Store(start)
	next, want := uint32(1), uint32(1)
	tok := func(i uint32) token.Token { return token.New(i, 1) }
	for round := range 40 {
		if round%2 == 0 {
			for f.trySend(tok(next), 1) {
				next++
			}
		} else {
			var qs [3]queued
			var lanes [3]uint8
			for i := range qs {
				qs[i].tok, lanes[i] = tok(next+uint32(i)), laneBestEffort
			}
			next += uint32(f.trySendN(qs[:], lanes[:]))
		}
		if got := next - want; got != 4 && round%2 == 0 {
			t.Errorf("start %#x round %d: %d queued before the ring refused, want 4", start, round, got)
			return
		}
		var dst [2]token.Token
		k := f.tryRecvN(dst[:])
		for _, got := range dst[:k] {
			if got != tok(want) {
				t.Errorf("start %#x round %d: received %v, want %v", start, round, got, tok(want))
				return
			}
			want++
		}
		for {
			got, ok := f.tryRecv()
			if !ok {
				break
			}
			if got != tok(want) {
				t.Errorf("start %#x round %d: received %v, want %v", start, round, got, tok(want))
				return
			}
			want++
		}
		if want != next {
			t.Errorf("start %#x round %d: ring empty after %d of %d tokens", start, round, want-1, next-1)
			return
		}
	}
	if end := f.tail.Load(); end>>32 == start>>32 {
		t.Errorf("start %#x: the run did not cross the wrap (tail %#x)", start, end)
		return
	}
}
