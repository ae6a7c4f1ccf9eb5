package message

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
)

// saEdge builds an edge on a fake store or fails the test.
func saEdge(t testing.TB, hs HeaderStore, p Policy) *Edge {
	t.Helper()
	e, err := NewEdge(hs, p)
	if err != nil {
		t.Fatalf("NewEdge(%+v): %v", p, err)
	}
	return e
}

// saWaitFor polls cond for up to d.
func saWaitFor(d time.Duration, cond func() bool) bool {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if cond() {
			return true
		}
		time.Sleep(200 * time.Microsecond)
	}
	return cond()
}

// saParkedSenders counts the senders parked on e.
func saParkedSenders(e *Edge) int { return int(e.sendq.linked.Load()) }

// TestSlowAttackSecondSenderGetsRoomOfExpired: the Edge doc says "a Block
// sender parked on a full edge looks again when the earliest queued message
// expires, and takes its room". Here the sender that becomes the head of the
// senders' queue only after it parked (because the sender ahead of it got in
// with a message that has a deadline, or gave up) never looks again: it stays
// parked although the queued message expired long ago.
func TestSlowAttackSecondSenderGetsRoomOfExpired(t *testing.T) {
	for _, batch := range []bool{false, true} {
		for _, how := range []string{"head-got-in", "head-gave-up"} {
			t.Run(fmt.Sprintf("batch=%v/%s", batch, how), func(t *testing.T) {
				fs := newFakeStore()
				e := saEdge(t, fs, Policy{MaxItems: 1, MaxBytes: 1000, Admission: Block})
				send := func(ctx context.Context, tok token.Token) error {
					if batch {
						_, err := e.SendBatch(ctx, []token.Token{tok})
						return err
					}
					return e.Send(ctx, tok)
				}
				var first token.Token
				var headCtx context.Context = context.Background()
				var headCancel context.CancelFunc = func() {}
				var headMsg token.Token
				if how == "head-got-in" {
					// The queue holds a message without deadline; the head
					// sender's message has a short deadline.
					first = fs.put(Header{Size: 10})
					headMsg = fs.put(Header{Size: 10, Deadline: DeadlineIn(80 * time.Millisecond)})
				} else {
					// The queued message has a deadline; the head gives up
					// before it expires.
					first = fs.put(Header{Size: 10, Deadline: DeadlineIn(120 * time.Millisecond)})
					headMsg = fs.put(Header{Size: 10})
					headCtx, headCancel = context.WithTimeout(context.Background(), 30*time.Millisecond)
				}
				defer headCancel()
				if err := e.Send(context.Background(), first); err != nil {
					t.Fatal(err)
				}
				headDone := make(chan error, 1)
				go func() { headDone <- send(headCtx, headMsg) }()
				if !saWaitFor(2*time.Second, func() bool { return saParkedSenders(e) == 1 }) {
					t.Fatal("head sender did not park")
				}
				second := fs.put(Header{Size: 10})
				ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
				defer cancel()
				secondDone := make(chan error, 1)
				start := time.Now()
				go func() { secondDone <- send(ctx, second) }()
				if !saWaitFor(2*time.Second, func() bool { return saParkedSenders(e) == 2 }) {
					t.Fatal("second sender did not park")
				}
				if how == "head-got-in" {
					// Make room for the head only.
					got, ok := e.TryRecv()
					if !ok || got != first {
						t.Fatalf("TryRecv = %v, %v", got, ok)
					}
					fs.Free(got)
					if err := <-headDone; err != nil {
						t.Fatalf("head send: %v", err)
					}
				} else {
					if err := <-headDone; !errors.Is(err, context.DeadlineExceeded) {
						t.Fatalf("head send = %v, want its context's error", err)
					}
				}
				// Now the queue holds one message with a deadline, and the
				// second sender heads the senders' queue.
				err := <-secondDone
				if err != nil {
					t.Fatalf("batch=%v %s: second parked sender = %v after %v; want nil once the queued message expired (within ~120ms)",
						batch, how, err, time.Since(start).Round(time.Millisecond))
				}
				if st := e.Stats(); st.Expired != 1 {
					t.Errorf("Stats.Expired = %d, want 1", st.Expired)
				}
				e.Close()
				e.Drain()
			})
		}
	}
}

// TestSlowAttackWokenSendersKeepFIFO: senders parked on a Block edge are
// served in FIFO order (doc.go: "Waiting goroutines park on pooled waiters,
// in FIFO order"; send: "A new sender queues behind senders that are already
// waiting (FIFO)"). Here three senders park in order W1, W2, W3; one receive
// makes room for all three and wakes them, but before they run a newcomer
// takes the room (the woken senders are no longer linked, so the newcomer sees
// no one waiting). Each woken sender then re-queues at the FRONT of the queue
// in the order the scheduler happens to run them, which reverses their order:
// their messages are then admitted out of FIFO order.
func TestSlowAttackWokenSendersKeepFIFO(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var bad int
	const rounds = 5
	for round := 0; round < rounds; round++ {
		fs := newFakeStore()
		e := saEdge(t, fs, Policy{MaxItems: 3, MaxBytes: 1 << 20, Admission: Block})
		for i := 0; i < 3; i++ {
			if err := e.Send(context.Background(), fs.put(Header{Size: 1})); err != nil {
				t.Fatal(err)
			}
		}
		ws := make([]token.Token, 3)
		errs := make(chan error, 3)
		for i := range ws {
			ws[i] = fs.put(Header{Size: 1, Seq: uint64(100 + i)})
			go func(tok token.Token) { errs <- e.Send(context.Background(), tok) }(ws[i])
			if !saWaitFor(2*time.Second, func() bool { return saParkedSenders(e) == i+1 }) {
				t.Fatalf("sender %d did not park", i)
			}
		}
		// One receive of three wakes all three senders; the newcomers take
		// the room before the woken senders run (GOMAXPROCS 1).
		var dst [3]token.Token
		n, err := e.RecvBatch(context.Background(), dst[:])
		if err != nil || n != 3 {
			t.Fatalf("RecvBatch = %d, %v", n, err)
		}
		newcomers := 0
		for i := 0; i < 3; i++ {
			if e.TrySend(fs.put(Header{Size: 1})) == nil {
				newcomers++
			}
		}
		for _, tok := range dst[:n] {
			fs.Free(tok)
		}
		// Let the woken senders run and re-queue.
		// (With senders admitted in queue order as room appears, the
		// newcomers find no room and are refused: then 3 messages, not 6.)
		if !saWaitFor(2*time.Second, func() bool { return saParkedSenders(e)+e.Len() == 3+newcomers }) {
			t.Fatalf("senders did not settle: parked %d, len %d, newcomers %d", saParkedSenders(e), e.Len(), newcomers)
		}
		// Receive everything, one at a time, letting one sender in each time.
		var order []uint64
		for len(order) < 3+newcomers {
			tok, err := e.Recv(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			order = append(order, fs.header(t, tok).Seq)
			fs.Free(tok)
			time.Sleep(time.Millisecond)
		}
		for i := 0; i < 3; i++ {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		var got []uint64
		for _, s := range order {
			if s >= 100 {
				got = append(got, s)
			}
		}
		if len(got) != 3 || got[0] != 100 || got[1] != 101 || got[2] != 102 {
			bad++
			t.Logf("round %d: %d newcomers got in; parked senders W1,W2,W3 (Seq 100,101,102) were admitted in order %v", round, newcomers, got)
		}
		e.Close()
		e.Drain()
	}
	if bad > 0 {
		t.Errorf("%d/%d rounds admitted the parked senders out of FIFO order", bad, rounds)
	}
}

// TestSlowAttackLargeSenderStarvedBySmall: on a Block edge with a byte cap a
// parked large sender must not be starved by a stream of small ones (edge.go:
// "A new sender queues behind senders that are already waiting (FIFO), so a
// stream of small messages cannot starve a large one"; wakeSendersLocked:
// "the head of the queue is never starved by smaller messages behind it").
// Each receive that makes room for the large sender wakes it, but a small
// newcomer arriving before it runs sees an empty senders' queue (the woken
// sender is unlinked) and takes part of the room; the large sender then no
// longer fits and parks again. A steady stream starves it for ever.
func TestSlowAttackLargeSenderStarvedBySmall(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	fs := newFakeStore()
	e := saEdge(t, fs, Policy{MaxBytes: 100, Admission: Block})
	if err := e.Send(context.Background(), fs.put(Header{Size: 100, Seq: 1})); err != nil {
		t.Fatal(err)
	}
	large := fs.put(Header{Size: 100, Seq: 999})
	done := make(chan error, 1)
	go func() { done <- e.Send(context.Background(), large) }()
	if !saWaitFor(2*time.Second, func() bool { return saParkedSenders(e) == 1 }) {
		t.Fatal("large sender did not park")
	}
	const rounds = 20
	smallIn := 0
	for i := 0; i < rounds; i++ {
		tok, ok := e.TryRecv()
		if !ok {
			t.Fatalf("round %d: nothing to receive", i)
		}
		seq := fs.header(t, tok).Seq
		fs.Free(tok)
		if seq == 999 {
			break
		}
		// A small sender that arrives while the large one is woken but not
		// yet running.
		if e.TrySend(fs.put(Header{Size: 10, Seq: uint64(10 + i)})) == nil {
			smallIn++
		}
		time.Sleep(time.Millisecond) // let the large sender run
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		if smallIn > 0 {
			t.Errorf("%d small newcomers got in ahead of the parked large sender", smallIn)
		}
	default:
		t.Errorf("large sender still parked after %d receives that each made room for it; %d small newcomers got in ahead of it", rounds, smallIn)
		e.Close()
		<-done
	}
	e.Close()
	e.Drain()
}

// TestSlowAttackConcurrentByteCaps: producers (Send, TrySend, SendBatch) and
// consumers (Recv, TryRecv, RecvBatch) hammer locked-path edges with byte caps
// and a mix of QoS, sizes, deadlines and DegradeAllowed, while a watcher
// samples the caps. Checks: Len <= MaxItems and Bytes <= MaxBytes at every
// sample, the watermark matches Len/Bytes in one Stats snapshot, no expired
// message without DegradeAllowed is delivered, per-producer FIFO within each
// lane for the single consumer, exact conservation of the Stats, and every
// token freed exactly once.
func TestSlowAttackConcurrentByteCaps(t *testing.T) {
	pols := []Policy{
		{MaxItems: 16, MaxBytes: 300, SoftBytes: 100, Admission: DeadlineQoS},
		{MaxBytes: 200, SoftBytes: 50, SoftItems: 5, Admission: DeadlineQoS},
		{MaxItems: 8, MaxBytes: 150, Admission: DropOldest},
		{MaxBytes: 120, SoftBytes: 60, Admission: DropNewest},
		{MaxItems: 10, MaxBytes: 160, SoftItems: 4, Admission: Block},
		{MaxBytes: 100, Admission: Block},
	}
	for pi, p := range pols {
		t.Run(fmt.Sprintf("%d-%v", pi, p.Admission), func(t *testing.T) { saConcurrent(t, p) })
	}
}

func saConcurrent(t *testing.T, p Policy) {
	fs := newFakeStore()
	e := saEdge(t, fs, p)
	const producers, perProducer = 3, 600
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	fail := func(f string, a ...any) {
		mu.Lock()
		if len(failures) < 10 {
			failures = append(failures, fmt.Sprintf(f, a...))
		}
		mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for pr := 0; pr < producers; pr++ {
		wg.Add(1)
		go func(pr int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(pr), 7))
			mk := func(i int) token.Token {
				h := Header{Trace: uint64(pr), Seq: uint64(i), Size: uint32(rng.IntN(40))}
				switch r := rng.IntN(10); {
				case r < 2:
					h.QoS = LatencyCritical
				case r < 4:
					h.QoS = Background
				case r < 5:
					h.QoS = 0
				default:
					h.QoS = BestEffort
				}
				if rng.IntN(4) == 0 {
					h.Deadline = DeadlineIn(time.Duration(rng.IntN(300)) * time.Microsecond)
					if rng.IntN(2) == 0 {
						h.Flags |= DegradeAllowed
					}
				}
				return fs.put(h)
			}
			for i := 0; i < perProducer; {
				switch rng.IntN(3) {
				case 0:
					tok := mk(i)
					i++
					sctx, c := context.WithTimeout(ctx, time.Millisecond)
					if err := e.Send(sctx, tok); err != nil {
						fs.Free(tok)
					}
					c()
				case 1:
					tok := mk(i)
					i++
					if err := e.TrySend(tok); err != nil {
						fs.Free(tok)
					}
				default:
					k := min(1+rng.IntN(6), perProducer-i)
					ts := make([]token.Token, k)
					for j := range ts {
						ts[j] = mk(i)
						i++
					}
					sctx, c := context.WithTimeout(ctx, time.Millisecond)
					n, _ := e.SendBatch(sctx, ts)
					c()
					for _, tok := range ts[n:] {
						fs.Free(tok)
					}
				}
			}
		}(pr)
	}
	stop := make(chan struct{})
	var cwg sync.WaitGroup
	// The watcher.
	cwg.Add(1)
	go func() {
		defer cwg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			st := e.Stats()
			if p.MaxItems > 0 && st.Len > p.MaxItems {
				fail("Len %d > MaxItems %d", st.Len, p.MaxItems)
			}
			if p.MaxBytes > 0 && st.Bytes > p.MaxBytes {
				fail("Bytes %d > MaxBytes %d", st.Bytes, p.MaxBytes)
			}
			if want := p.level(st.Len, st.Bytes); st.Watermark != want {
				fail("Watermark %v for Len %d Bytes %d, want %v", st.Watermark, st.Len, st.Bytes, want)
			}
			if b := e.Bytes(); p.MaxBytes > 0 && b > p.MaxBytes {
				fail("Bytes() %d > MaxBytes %d", b, p.MaxBytes)
			}
			runtime.Gosched()
		}
	}()
	// The consumer: one, so that per-producer FIFO within a lane is checkable.
	last := map[[2]uint64]uint64{} // (producer, lane) -> last Seq + 1
	check := func(t0 int64, tok token.Token) {
		h, err := fs.Header(tok)
		if err != nil {
			fail("received a token the edge no longer owns: %v", err)
			return
		}
		if h.Deadline != 0 && !h.Flags.Has(DegradeAllowed) && h.Deadline < t0 {
			fail("delivered a message expired %v before the receive started", time.Duration(t0-h.Deadline))
		}
		lane := uint64(0)
		if h.QoS == LatencyCritical {
			lane = 1
		}
		k := [2]uint64{h.Trace, lane}
		if prev, ok := last[k]; ok && h.Seq+1 <= prev {
			fail("producer %d lane %d: Seq %d received after %d", h.Trace, lane, h.Seq, prev-1)
		}
		last[k] = h.Seq + 1
		fs.Free(tok)
	}
	cwg.Add(1)
	go func() {
		defer cwg.Done()
		rng := rand.New(rand.NewPCG(42, 42))
		var dst [7]token.Token
		for {
			t0 := Now()
			switch rng.IntN(3) {
			case 0:
				tok, err := e.Recv(context.Background())
				if err != nil {
					return
				}
				check(t0, tok)
			case 1:
				if tok, ok := e.TryRecv(); ok {
					check(t0, tok)
				} else if e.Closed() && e.Len() == 0 {
					return
				} else {
					runtime.Gosched()
				}
			default:
				n, err := e.RecvBatch(context.Background(), dst[:1+rng.IntN(len(dst))])
				if err != nil {
					return
				}
				for _, tok := range dst[:n] {
					check(t0, tok)
				}
			}
		}
	}()
	wg.Wait()
	e.Close()
	close(stop)
	cwg.Wait()
	e.Drain()
	for _, f := range failures {
		t.Error(f)
	}
	st := e.Stats()
	if st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained+uint64(st.Len) {
		t.Errorf("conservation: %+v", st)
	}
	if st.FreeErrors != 0 {
		t.Errorf("FreeErrors %d", st.FreeErrors)
	}
	if n := fs.liveCount(); n != 0 {
		t.Errorf("%d tokens still live", n)
	}
	for tok, n := range fs.freed {
		if n != 1 {
			t.Errorf("token %v freed to zero %d times", tok, n)
		}
	}
	if len(fs.freed) != producers*perProducer {
		t.Errorf("%d tokens freed, want %d", len(fs.freed), producers*perProducer)
	}
}

// saMsg is a message of saModel.
type saMsg struct {
	tok      token.Token
	lane     int // 0 Background, 1 BestEffort, 2 LatencyCritical
	size     int64
	deadline int64
	degrade  bool
}

// saModel is a sequential model of a locked-path edge with deadlines, from
// the documentation: expired messages are freed when a receiver meets them
// or when a sender needs room (before refusing or evicting), DegradeAllowed
// messages are delivered late and never expire, the rest as zaModel.
type saModel struct {
	p  Policy
	q  []saMsg
	st EdgeStats
}

func (m *saModel) bytes() int64 {
	var b int64
	for _, x := range m.q {
		b += x.size
	}
	return b
}

func (m *saModel) fits(size int64) bool { return m.p.fits(len(m.q), m.bytes(), size) }

func saExpired(x saMsg, now int64) bool { return x.deadline != 0 && !x.degrade && now > x.deadline }

func (m *saModel) reap(now int64) {
	kept := m.q[:0]
	for _, x := range m.q {
		if saExpired(x, now) {
			m.st.Expired++
			continue
		}
		kept = append(kept, x)
	}
	m.q = kept
}

// send returns nil or the error the edge must match; wait reports a Block
// send that would wait.
func (m *saModel) send(x saMsg, now int64) (err error, wait bool) {
	p := m.p
	if saExpired(x, now) {
		m.st.Rejected++
		return ErrExpired, false
	}
	if p.MaxBytes > 0 && x.size > p.MaxBytes {
		m.st.Invalid++ // Rejected and Invalid are compared as a sum
		return ErrRejected, false
	}
	if p.Admission == DeadlineQoS && x.lane == 0 && p.softReached(len(m.q), m.bytes()) {
		m.reap(now) // expired messages do not count towards the soft cap
		if p.softReached(len(m.q), m.bytes()) {
			m.st.Rejected++
			return ErrRejected, false
		}
	}
	if !m.fits(x.size) {
		m.reap(now)
	}
	if !m.fits(x.size) {
		switch p.Admission {
		case Block:
			return nil, true
		case DropNewest:
			m.st.Rejected++
			return ErrEdgeFull, false
		case DropOldest:
			for !m.fits(x.size) && len(m.q) > 0 {
				m.q = m.q[1:]
				m.st.Evicted++
			}
		case DeadlineQoS:
			items, bytes := 0, int64(0)
			for _, y := range m.q {
				if y.lane <= x.lane {
					items++
					bytes += y.size
				}
			}
			if !p.fits(len(m.q)-items, m.bytes()-bytes, x.size) {
				m.st.Rejected++
				return ErrEdgeFull, false
			}
			for l := 0; l <= x.lane && !m.fits(x.size); l++ {
				for i := 0; i < len(m.q) && !m.fits(x.size); {
					if m.q[i].lane == l {
						m.q = append(m.q[:i], m.q[i+1:]...)
						m.st.Evicted++
					} else {
						i++
					}
				}
			}
		}
	}
	m.q = append(m.q, x)
	m.st.Admitted++
	m.st.HighWater = max(m.st.HighWater, len(m.q))
	return nil, false
}

func (m *saModel) recv(now int64) (saMsg, bool) {
	for len(m.q) > 0 {
		idx := 0
		for i, x := range m.q {
			if x.lane == 2 {
				idx = i
				break
			}
		}
		x := m.q[idx]
		m.q = append(m.q[:idx], m.q[idx+1:]...)
		if saExpired(x, now) {
			m.st.Expired++
			continue
		}
		if x.deadline != 0 && now > x.deadline {
			m.st.Late++
		}
		m.st.Delivered++
		return x, true
	}
	return saMsg{}, false
}

// TestSlowAttackExpiryModel: a sequential random walk over locked-path edges
// (byte caps or DeadlineQoS) with messages whose deadlines pass while they
// are queued (and DegradeAllowed ones), compared step by step with saModel:
// errors, token order, Stats, watermark and frees. A step during which a
// deadline might have passed is ambiguous: the walk stops there.
func TestSlowAttackExpiryModel(t *testing.T) {
	pols := []Policy{
		{MaxItems: 6, SoftItems: 3, MaxBytes: 100, SoftBytes: 40, Admission: DeadlineQoS},
		{MaxItems: 5, Admission: DeadlineQoS},
		{MaxBytes: 60, SoftBytes: 30, Admission: DeadlineQoS},
		{MaxItems: 5, MaxBytes: 80, Admission: DropOldest},
		{MaxBytes: 50, SoftItems: 2, Admission: DropNewest},
		{MaxItems: 4, MaxBytes: 70, SoftBytes: 20, Admission: Block},
	}
	for pi, p := range pols {
		t.Run(fmt.Sprintf("%d-%v", pi, p.Admission), func(t *testing.T) {
			for seed := uint64(0); seed < 3; seed++ {
				saModelWalk(t, p, seed)
			}
		})
	}
}

func saModelWalk(t *testing.T, p Policy, seed uint64) {
	fs := newFakeStore()
	e := saEdge(t, fs, p)
	defer func() { e.Close(); e.Drain() }()
	m := &saModel{p: p}
	rng := rand.New(rand.NewPCG(seed, 1234))
	msgs := map[token.Token]saMsg{}
	var maxSoon int64
	newMsg := func() saMsg {
		x := saMsg{lane: 1, size: int64(rng.IntN(25))}
		h := Header{Size: uint32(x.size)}
		switch r := rng.IntN(10); {
		case r < 2:
			h.QoS, x.lane = LatencyCritical, 2
		case r < 5:
			h.QoS, x.lane = Background, 0
		}
		switch rng.IntN(3) {
		case 0:
			h.Deadline = Now() + int64(4*time.Millisecond)
			maxSoon = max(maxSoon, h.Deadline)
			if rng.IntN(3) == 0 {
				h.Flags |= DegradeAllowed
				x.degrade = true
			}
		case 1:
			h.Deadline = Now() + int64(time.Hour)
		}
		x.deadline = h.Deadline
		x.tok = fs.put(h)
		msgs[x.tok] = x
		return x
	}
	// ambiguous reports whether a deadline of a message in play may have
	// passed between t0 and t1.
	ambiguous := func(t0, t1 int64, extra []saMsg) bool {
		for _, xs := range [][]saMsg{m.q, extra} {
			for _, x := range xs {
				if x.deadline != 0 && x.deadline >= t0 && x.deadline < t1 {
					return true
				}
			}
		}
		return false
	}
	ages := 0
	for step := 0; step < 400; step++ {
		before := append([]saMsg(nil), m.q...)
		var desc string
		var pending []saMsg
		t0 := Now()
		var check func(t1 int64)
		switch op := rng.IntN(12); {
		case op < 5: // TrySend
			x := newMsg()
			pending = []saMsg{x}
			err := e.TrySend(x.tok)
			desc = fmt.Sprintf("TrySend(lane %d size %d deadline %v degrade %v)", x.lane, x.size, x.deadline != 0, x.degrade)
			check = func(t1 int64) {
				want, wait := m.send(x, t0)
				if wait {
					m.st.Rejected++
					want = ErrEdgeFull
				}
				saCompareErr(t, desc, err, want)
				if err != nil {
					fs.Free(x.tok)
				}
			}
		case op < 7: // SendBatch
			k := 1 + rng.IntN(5)
			xs := make([]saMsg, k)
			ts := make([]token.Token, k)
			for i := range xs {
				xs[i] = newMsg()
				ts[i] = xs[i].tok
			}
			pending = xs
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // a Block batch that must wait gives up at once
			n, err := e.SendBatch(ctx, ts)
			desc = fmt.Sprintf("SendBatch(%d)", k)
			check = func(t1 int64) {
				var want error
				wantN := 0
				for _, x := range xs {
					var wait bool
					want, wait = m.send(x, t0)
					if wait {
						m.st.Rejected++
						m.st.Waited++
						want = context.Canceled
					}
					if want != nil {
						break
					}
					wantN++
				}
				if n != wantN {
					t.Fatalf("seed %d step %d %s: n = %d, model %d (err %v, model %v)", seed, step, desc, n, wantN, err, want)
				}
				saCompareErr(t, desc, err, want)
				for _, tok := range ts[n:] {
					fs.Free(tok)
				}
			}
		case op < 9: // TryRecv
			tok, ok := e.TryRecv()
			desc = "TryRecv"
			check = func(t1 int64) {
				x, wok := m.recv(t0)
				if ok != wok || (ok && tok != x.tok) {
					t.Fatalf("seed %d step %d TryRecv = %v (%+v), %v; model %v (%+v), %v; queue before %+v",
						seed, step, tok, msgs[tok], ok, x.tok, x, wok, before)
				}
				if ok {
					fs.Free(tok)
				}
			}
		case op < 11: // RecvBatch
			var dst [4]token.Token
			k := 1 + rng.IntN(len(dst))
			// A cancelled context: RecvBatch takes what is deliverable and
			// gives up instead of waiting when nothing is.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			n, err := e.RecvBatch(ctx, dst[:k])
			desc = fmt.Sprintf("RecvBatch(%d)", k)
			check = func(t1 int64) {
				var got []token.Token
				for len(got) < k {
					x, ok := m.recv(t0)
					if !ok {
						break
					}
					got = append(got, x.tok)
				}
				if len(got) == 0 {
					// Nothing deliverable: the receive gives up.
					if n != 0 || !errors.Is(err, context.Canceled) {
						t.Fatalf("seed %d step %d %s = %d, %v; model: nothing deliverable", seed, step, desc, n, err)
					}
					return
				}
				if err != nil || n != len(got) || fmt.Sprint(dst[:n]) != fmt.Sprint(got) {
					t.Fatalf("seed %d step %d %s = %v, %v; model %v; queue before %+v", seed, step, desc, dst[:n], err, got, before)
				}
				for _, tok := range dst[:n] {
					fs.Free(tok)
				}
			}
		default: // age: every "soon" deadline passes
			if ages >= 10 {
				continue
			}
			ages++
			if d := time.Duration(maxSoon - Now()); d > 0 {
				time.Sleep(d + time.Millisecond)
			}
			desc = "age"
			t0 = Now()
			check = func(int64) {}
		}
		t1 := Now()
		if ambiguous(t0, t1, pending) {
			t.Logf("seed %d: step %d ambiguous (a deadline passed during it): stopping the walk", seed, step)
			return
		}
		check(t1)
		st := e.Stats()
		want := m.st
		want.Len, want.Bytes, want.Watermark = len(m.q), m.bytes(), p.level(len(m.q), m.bytes())
		got := st
		got.Rejected += got.Invalid
		want.Rejected += want.Invalid
		got.Invalid, want.Invalid = 0, 0
		if got != want {
			t.Fatalf("seed %d step %d after %s:\n got  %+v\n want %+v\nqueue before %+v", seed, step, desc, got, want, before)
		}
		if w := e.Watermark(); w != want.Watermark {
			t.Fatalf("seed %d step %d: Watermark() %v, want %v", seed, step, w, want.Watermark)
		}
		if n := fs.liveCount(); n != len(m.q) {
			t.Fatalf("seed %d step %d after %s: %d live tokens, model queues %d", seed, step, desc, n, len(m.q))
		}
		for _, x := range m.q {
			if !fs.isLive(x.tok) {
				t.Fatalf("seed %d step %d: queued %+v was freed", seed, step, x)
			}
		}
	}
}

// saCompareErr checks err against the model's want (nil or a sentinel).
func saCompareErr(t *testing.T, desc string, err, want error) {
	t.Helper()
	switch {
	case want == nil && err != nil, want != nil && !errors.Is(err, want):
		t.Fatalf("%s = %v, model wants %v", desc, err, want)
	case want == ErrRejected && errors.Is(err, ErrEdgeFull):
		t.Fatalf("%s = %v: model wants a refusal that is not ErrEdgeFull", desc, err)
	}
}
