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

// TryRecv's doc: "It reports false when nothing deliverable is queued".
// A single receiver that has received fewer tokens than the number of Sends
// that had returned before its TryRecv began knows a token is queued (no
// eviction, no expiry, no other receiver), so TryRecv must report true.
//
// In fast mode TryRecv reports false as soon as the ring's head cell is not
// published, even when later cells hold tokens of Sends that have returned:
// a sender preempted between its claim (the CAS on the tail) and its publish
// hides every token queued after it (TestFastAttackTryRecvHiddenByClaimedCell
// is the same interleaving, made deterministic).
func TestFastAttackTryRecvMissesCompletedSend(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4)) // more threads than CPUs: the OS preempts senders anywhere
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{})
	producers := 3
	deadline := time.Now().Add(3 * time.Second)
	var completed atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	// The edge never looks at references: each producer sends its own token
	// over and over, and the receiver only counts. The producers pause
	// between sends so that the receiver keeps up and waits at the ring's
	// head, where a stalled sender's cell comes up before the ring fills
	// (a full ring sends the others to slow mode, and TryRecv to the lock).
	spin := 100
	var sink atomic.Int64
	for p := 0; p < producers; p++ {
		tok := fs.put(Header{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if err := e.Send(context.Background(), tok); err != nil {
					t.Error(err)
					return
				}
				completed.Add(1)
				for j := 0; j < spin; j++ {
					sink.Add(0)
				}
			}
		}()
	}
	// A collector in a loop: stack scans and stop-the-worlds suspend the
	// senders at arbitrary instructions (asynchronous preemption).
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			runtime.GC()
		}
	}()
	received, misses, falses := int64(0), 0, 0
	for time.Now().Before(deadline) && misses == 0 {
		c := completed.Load()
		if _, ok := e.TryRecv(); ok {
			received++
			continue
		}
		falses++
		if c > received {
			misses++
			t.Errorf("TryRecv reported false with %d completed Sends and %d receives (Len now %d)", c, received, e.Len())
		}
	}
	t.Logf("received %d, false %d", received, falses)
	stop.Store(true)
	go func() {
		for {
			if _, err := e.Recv(context.Background()); err != nil {
				return
			}
		}
	}()
	wg.Wait()
	e.Close()
}

// The interleaving behind TestFastAttackTryRecvMissesCompletedSend, made
// deterministic: sender A claims the ring's next cell exactly as trySend
// does (the CAS on the tail) and is "preempted" before it publishes;
// sender B's Send then claims the following cell, publishes and returns.
// B's token is queued, so TryRecv must report true (with A's token, if it
// waits for A, or B's); it reports false. A resumes and publishes after
// 200 ms, so a TryRecv that waits for it (taking the lock: enterSlowLocked
// waits for claimed cells) still returns.
func TestFastAttackTryRecvHiddenByClaimedCell(t *testing.T) {
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 8})
	f := e.fast
	tokA, tokB := fs.put(Header{}), fs.put(Header{})
	pos := f.tail.Load()
	if pos&slowBit != 0 || !f.tail.CompareAndSwap(pos, pos+1) {
		t.Fatal("edge not in fast mode")
	}
	published := make(chan struct{})
	go func() { // sender A resumes
		defer close(published)
		time.Sleep(200 * time.Millisecond)
		f.publish(pos, tokA, 0)
	}()
	if err := e.Send(context.Background(), tokB); err != nil { // sender B
		t.Fatal(err)
	}
	got, ok := e.TryRecv()
	<-published
	if !ok {
		t.Errorf("TryRecv reported false after a Send had returned (its token queued: Len %d)", e.Len())
	}
	// Both tokens are delivered, A's first.
	var rest []token.Token
	if ok {
		rest = append(rest, got)
	}
	for len(rest) < 2 {
		tok, ok := e.TryRecv()
		if !ok {
			t.Fatalf("TryRecv false with Len %d", e.Len())
		}
		rest = append(rest, tok)
	}
	if rest[0] != tokA || rest[1] != tokB {
		t.Errorf("got %v, want %v then %v", rest, tokA, tokB)
	}
	if st := e.Stats(); st.Admitted != 2 || st.Delivered != 2 || st.Len != 0 {
		t.Errorf("Stats %+v", st)
	}
}

// faPolicies are the policies that keep a fast ring: every small item cap,
// no cap, and caps around the ring's largest size, under each admission
// mode that keeps a ring; a few with SoftItems.
func faPolicies() []Policy {
	var ps []Policy
	for _, a := range []Admission{Block, DropNewest, DropOldest} {
		for _, m := range []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255, 256, 257} {
			p := Policy{MaxItems: m, Admission: a}
			if m > 2 && m%3 == 0 {
				p.SoftItems = m / 2
			}
			ps = append(ps, p)
		}
	}
	return ps
}

type faTag struct {
	prod, seq int
	crit      bool
}

// faStress runs producers (Send with and without deadlines on the context,
// TrySend, SendBatch of 1 to 70), consumers (Recv with and without context
// deadlines, TryRecv, RecvBatch of 1 to 40) and a monitor (Len, Stats) on
// one edge for d, with a mixture of messages that keeps switching it
// between fast and slow mode, then closes it while everything still runs,
// lets the consumers drain it and checks that every token was received
// once, refused once, or freed by the edge once; per-producer FIFO per lane
// as each consumer sees it; the caps; and the Stats balance.
func faStress(t *testing.T, p Policy, d time.Duration, seed uint64, slowIn int, drain bool) {
	const producers, consumers = 3, 2
	fs := newFakeStore()
	e := mustEdge(t, fs, p)
	var mu sync.Mutex
	tags := map[token.Token]faTag{}
	var refused, received atomic.Int64
	var pwg, cwg, mwg sync.WaitGroup
	var stopMon atomic.Bool
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf("%+v: "+format, append([]any{p}, args...)...)
	}
	okSendErr := func(err error) bool {
		return errors.Is(err, ErrRejected) || errors.Is(err, ErrEdgeFull) || errors.Is(err, ErrEdgeClosed) ||
			errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
	}
	giveBack := func(ts []token.Token) {
		mu.Lock()
		for _, tok := range ts {
			if _, ok := tags[tok]; !ok {
				fail("refused token %v already received", tok)
			}
			delete(tags, tok)
		}
		mu.Unlock()
		for _, tok := range ts {
			if err := fs.Free(tok); err != nil {
				fail("refused token %v: %v", tok, err)
			}
		}
		refused.Add(int64(len(ts)))
	}
	for w := 0; w < producers; w++ {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			seq := 0
			mk := func() token.Token {
				h := Header{Size: 1}
				switch r := rng.IntN(slowIn); {
				case r == 0:
					h.QoS = LatencyCritical
				case r == 1:
					h.QoS = Background
				case r == 2:
					h.Deadline = 1 << 62
				case r == 3:
					h.Deadline = Now() + int64(rng.IntN(300))*int64(time.Microsecond)
				case r == 4:
					h.Deadline = Now() + int64(rng.IntN(300))*int64(time.Microsecond)
					h.Flags = DegradeAllowed
				}
				tok := fs.put(h)
				mu.Lock()
				tags[tok] = faTag{w, seq, h.QoS == LatencyCritical}
				mu.Unlock()
				seq++
				return tok
			}
			for {
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				if rng.IntN(4) == 0 {
					ctx, cancel = context.WithTimeout(ctx, time.Duration(rng.IntN(200))*time.Microsecond)
				}
				var err error
				switch r := rng.IntN(10); {
				case r < 4:
					tok := mk()
					if err = e.Send(ctx, tok); err != nil {
						giveBack([]token.Token{tok})
					}
				case r < 6:
					tok := mk()
					if err = e.TrySend(tok); err != nil {
						giveBack([]token.Token{tok})
					}
				default:
					ts := make([]token.Token, 1+rng.IntN(70))
					for i := range ts {
						ts[i] = mk()
					}
					var n int
					n, err = e.SendBatch(ctx, ts)
					if n < 0 || n > len(ts) || (err == nil) != (n == len(ts)) {
						fail("SendBatch of %d: %d, %v", len(ts), n, err)
						n = max(0, min(n, len(ts)))
					}
					giveBack(ts[n:])
				}
				cancel()
				if err != nil && !okSendErr(err) {
					fail("send: %v", err)
				}
				if errors.Is(err, ErrEdgeClosed) {
					return
				}
			}
		}()
	}
	for c := 0; c < consumers; c++ {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			rng := rand.New(rand.NewPCG(seed, 100+uint64(c)))
			last := map[[2]int]int{}
			dst := make([]token.Token, 40)
			for {
				var got []token.Token
				var err error
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				if rng.IntN(4) == 0 {
					ctx, cancel = context.WithTimeout(ctx, time.Duration(rng.IntN(200))*time.Microsecond)
				}
				switch r := rng.IntN(10); {
				case r < 4:
					var tok token.Token
					if tok, err = e.Recv(ctx); err == nil {
						got = []token.Token{tok}
					}
				case r < 6:
					if tok, ok := e.TryRecv(); ok {
						got = []token.Token{tok}
					}
				default:
					var n int
					n, err = e.RecvBatch(ctx, dst[:1+rng.IntN(len(dst))])
					if err != nil && n != 0 {
						fail("RecvBatch: %d with %v", n, err)
					}
					got = dst[:n]
				}
				cancel()
				if err != nil && !errors.Is(err, ErrEdgeClosed) && !errors.Is(err, context.DeadlineExceeded) {
					fail("recv: %v", err)
				}
				for _, tok := range got {
					if tok.IsNil() {
						fail("received the nil token")
						continue
					}
					mu.Lock()
					tg, ok := tags[tok]
					delete(tags, tok)
					mu.Unlock()
					if !ok {
						fail("received %v twice, or refused, or never sent", tok)
						continue
					}
					if !fs.isLive(tok) {
						fail("received %v after the edge freed it", tok)
						continue
					}
					k := [2]int{tg.prod, 0}
					if tg.crit {
						k[1] = 1
					}
					if prev, seen := last[k]; seen && tg.seq <= prev {
						fail("producer %d (critical %v): got %d after %d", tg.prod, tg.crit, tg.seq, prev)
					}
					last[k] = tg.seq
					received.Add(1)
					if err := fs.Free(tok); err != nil {
						fail("free of received %v: %v", tok, err)
					}
				}
				if errors.Is(err, ErrEdgeClosed) {
					if n := e.Len(); n != 0 {
						fail("ErrEdgeClosed with Len %d", n)
					}
					return
				}
			}
		}()
	}
	mwg.Add(1)
	go func() {
		defer mwg.Done()
		for !stopMon.Load() {
			n := e.Len()
			st := e.Stats()
			if p.MaxItems > 0 && (n > p.MaxItems || st.Len > p.MaxItems || st.HighWater > p.MaxItems) {
				fail("Len %d, Stats.Len %d, HighWater %d over MaxItems", n, st.Len, st.HighWater)
			}
			if drain && rand.IntN(20) == 0 {
				e.Drain()
			}
			time.Sleep(50 * time.Microsecond)
		}
	}()
	time.Sleep(d)
	if err := e.Close(); err != nil {
		fail("Close: %v", err)
	}
	pwg.Wait()
	cwg.Wait()
	stopMon.Store(true)
	mwg.Wait()
	if n := e.Drain(); n != 0 {
		fail("Drain after the consumers saw ErrEdgeClosed freed %d", n)
	}
	st := e.Stats()
	mu.Lock()
	defer mu.Unlock()
	freedByEdge := uint64(0)
	for tok := range tags {
		if fs.isLive(tok) {
			fail("token %v neither received, refused nor freed", tok)
		}
		freedByEdge++
	}
	if st.Evicted+st.Expired+st.Drained != freedByEdge {
		fail("edge freed %d tokens; Stats %+v", freedByEdge, st)
	}
	if st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained+uint64(st.Len) || st.Delivered != uint64(received.Load()) ||
		st.FreeErrors != 0 || st.Len != 0 {
		fail("received %d; Stats %+v", received.Load(), st)
	}
	if p.MaxItems > 0 && st.HighWater > p.MaxItems {
		fail("HighWater %d over MaxItems", st.HighWater)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for tok, n := range fs.freed {
		if n != 1 {
			fail("token %v freed to zero %d times", tok, n)
		}
	}
	if len(fs.live) != 0 {
		fail("%d tokens still live", len(fs.live))
	}
}

func TestFastAttackStressPolicies(t *testing.T) {
	for i, p := range faPolicies() {
		t.Run(fmt.Sprintf("%d/%d/%v", p.MaxItems, p.SoftItems, p.Admission), func(t *testing.T) {
			faStress(t, p, faDur, uint64(i)+faSeed, 40, false)
		})
	}
}

var (
	faDur  = 15 * time.Millisecond
	faSeed = uint64(0)
)

// Parked receivers must all wake while tokens are queued: a producer sends
// a burst (Send, TrySend, SendBatch of 1 to 70, a mixture of fast and slow
// messages), then waits until the edge is empty; receivers (Recv and
// RecvBatch, some with contexts that end, racing their wake-ups) take
// everything. A token left queued for a second while receivers park is a
// lost wake-up.
func faWakeups(t *testing.T, p Policy, rounds int, seed uint64) {
	const receivers = 4
	fs := newFakeStore()
	e := mustEdge(t, fs, p)
	var got atomic.Int64
	var wg sync.WaitGroup
	for r := 0; r < receivers; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 10+uint64(r)))
			dst := make([]token.Token, 1+r*5)
			for {
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				if rng.IntN(3) == 0 {
					ctx, cancel = context.WithTimeout(ctx, time.Duration(rng.IntN(100))*time.Microsecond)
				}
				n, err := e.RecvBatch(ctx, dst)
				cancel()
				for _, tok := range dst[:n] {
					fs.Free(tok)
				}
				got.Add(int64(n))
				if errors.Is(err, ErrEdgeClosed) {
					return
				}
			}
		}()
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	mk := func() token.Token {
		h := Header{}
		switch rng.IntN(12) {
		case 0:
			h.QoS = LatencyCritical
		case 1:
			h.QoS = Background
		case 2:
			h.Deadline = 1 << 62
		}
		return fs.put(h)
	}
	for round := 0; round < rounds; round++ {
		for k := rng.IntN(4); k >= 0; k-- {
			switch rng.IntN(3) {
			case 0:
				if tok := mk(); e.Send(context.Background(), tok) != nil {
					fs.Free(tok)
				}
			case 1:
				if tok := mk(); e.TrySend(tok) != nil {
					fs.Free(tok)
				}
			default:
				ts := make([]token.Token, 1+rng.IntN(70))
				for i := range ts {
					ts[i] = mk()
				}
				n, _ := e.SendBatch(context.Background(), ts)
				for _, tok := range ts[n:] {
					fs.Free(tok)
				}
			}
		}
		// Wait for the receivers to empty the edge.
		start := time.Now()
		for {
			n := e.Len()
			if n == 0 {
				break
			}
			if time.Since(start) > 5*time.Second { // generous: CI machines are loaded
				t.Fatalf("%+v round %d: %d tokens queued for 5s with %d receivers parked (received %d, Stats %+v)",
					p, round, n, e.recvq.linked.Load(), got.Load(), e.Stats())
			}
			time.Sleep(20 * time.Microsecond)
		}
	}
	e.Close()
	wg.Wait()
	st := e.Stats()
	if st.Delivered != uint64(got.Load()) || st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained || fs.liveCount() != 0 {
		t.Fatalf("%+v: received %d, live %d, Stats %+v", p, got.Load(), fs.liveCount(), st)
	}
}

func TestFastAttackNoLostWakeup(t *testing.T) {
	for i, p := range faPolicies() {
		t.Run(fmt.Sprintf("%d/%d/%v", p.MaxItems, p.SoftItems, p.Admission), func(t *testing.T) {
			faWakeups(t, p, faRounds, uint64(i)+faSeed)
		})
	}
}

var faRounds = 60

// faStress again with few slow messages (mostly the ring), Drain racing
// everything, more threads than CPUs and a collector in a loop (both
// preempt goroutines at arbitrary instructions).
func TestFastAttackStressDrainPreempt(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(6))
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			runtime.GC()
			time.Sleep(time.Millisecond)
		}
	}()
	defer func() { stop.Store(true); <-done }()
	for i, p := range faPolicies() {
		t.Run(fmt.Sprintf("%d/%d/%v", p.MaxItems, p.SoftItems, p.Admission), func(t *testing.T) {
			faStress(t, p, faDur, uint64(i)+faSeed, 400, true)
		})
	}
}

// Sequential use on every ring size: k sends (TrySend, SendBatch, Send with
// a nil context) leave exactly min(k, cap) queued, in FIFO order (the
// newest under DropOldest), HighWater exact, Stats balanced; Close keeps
// them deliverable to Recv, then ErrEdgeClosed; TryRecv then false; Drain 0.
func TestFastAttackSequentialFill(t *testing.T) {
	for _, p := range faPolicies() {
		for _, k := range []int{1, 2, 3, 7, 9, 31, 33, 70, 255, 256, 257, 300} {
			fs := newFakeStore()
			e := mustEdge(t, fs, p)
			ts := make([]token.Token, k)
			for i := range ts {
				ts[i] = fs.put(Header{})
			}
			sent := 0
			switch k % 3 {
			case 0:
				for _, tok := range ts {
					if e.TrySend(tok) == nil {
						sent++
					}
				}
			case 1:
				batch := ts
				if p.Admission == Block && p.MaxItems > 0 && k > p.MaxItems {
					batch = ts[:p.MaxItems] // the rest would wait
				}
				sent, _ = e.SendBatch(context.Background(), batch)
			default:
				for _, tok := range ts {
					if p.Admission == Block && p.MaxItems > 0 && sent >= p.MaxItems {
						break
					}
					//lint:ignore SA1012 a nil context is what is tested
					if e.Send(nil, tok) == nil {
						sent++
					}
				}
			}
			want := sent
			if p.MaxItems > 0 {
				want = min(sent, p.MaxItems)
			}
			first := 0
			if p.Admission == DropOldest {
				first = sent - want
			}
			st := e.Stats()
			if st.Len != want || e.Len() != want || st.HighWater != want || st.Admitted != uint64(sent) || st.Evicted != uint64(sent-want) {
				t.Errorf("%+v k %d: sent %d, want %d queued; Stats %+v", p, k, sent, want, st)
				continue
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < want; i++ {
				var tok token.Token
				var err error
				if i%2 == 0 {
					tok, err = e.Recv(context.Background())
				} else {
					var ok bool
					if tok, ok = e.TryRecv(); !ok {
						err = errors.New("TryRecv false")
					}
				}
				if err != nil || tok != ts[first+i] {
					t.Fatalf("%+v k %d: receive %d: %v, %v; want %v", p, k, i, tok, err, ts[first+i])
				}
			}
			if _, err := e.Recv(context.Background()); !errors.Is(err, ErrEdgeClosed) {
				t.Errorf("%+v k %d: Recv on a closed empty edge: %v", p, k, err)
			}
			if _, ok := e.TryRecv(); ok {
				t.Errorf("%+v k %d: TryRecv true on a closed empty edge", p, k)
			}
			if n := e.Drain(); n != 0 {
				t.Errorf("%+v k %d: Drain %d", p, k, n)
			}
			st = e.Stats()
			if st.Delivered != uint64(want) || st.Admitted != st.Delivered+st.Evicted || st.HighWater != want {
				t.Errorf("%+v k %d: Stats %+v", p, k, st)
			}
		}
	}
}

// Parked Block senders must wake as room appears: producers (Send, some
// with contexts that end, and SendBatch of 1 to 70, mixed fast and slow
// messages) push a fixed number of tokens through a small edge; one
// consumer takes them with TryRecv, Recv and RecvBatch. A stall of a
// second with room in the edge and senders parked is a lost wake-up.
func TestFastAttackBlockedSendersWake(t *testing.T) {
	for _, m := range []int{1, 2, 3, 4, 5, 7, 9, 256, 257} {
		for _, soft := range []int{0, (m + 1) / 2} {
			p := Policy{MaxItems: m, SoftItems: soft}
			fs := newFakeStore()
			e := mustEdge(t, fs, p)
			const producers, per = 4, 600
			var pwg sync.WaitGroup
			var refused atomic.Int64
			for w := 0; w < producers; w++ {
				pwg.Add(1)
				go func() {
					defer pwg.Done()
					rng := rand.New(rand.NewPCG(uint64(m), uint64(w)))
					for i := 0; i < per; {
						ts := make([]token.Token, min(per-i, 1+rng.IntN(70)))
						for j := range ts {
							h := Header{}
							if rng.IntN(10) == 0 {
								h.QoS = Background
							}
							ts[j] = fs.put(h)
						}
						i += len(ts)
						ctx, cancel := context.Background(), context.CancelFunc(func() {})
						if rng.IntN(5) == 0 {
							ctx, cancel = context.WithTimeout(ctx, time.Duration(rng.IntN(300))*time.Microsecond)
						}
						var n int
						if len(ts) == 1 {
							if e.Send(ctx, ts[0]) == nil {
								n = 1
							}
						} else {
							n, _ = e.SendBatch(ctx, ts)
						}
						cancel()
						for _, tok := range ts[n:] {
							fs.Free(tok)
						}
						refused.Add(int64(len(ts) - n))
					}
				}()
			}
			got := 0
			rng := rand.New(rand.NewPCG(uint64(m), 99))
			dst := make([]token.Token, 8)
			last, lastGot := time.Now(), 0
			for int64(got)+refused.Load() < producers*per {
				var n int
				switch rng.IntN(3) {
				case 0:
					if tok, ok := e.TryRecv(); ok {
						dst[0], n = tok, 1
					}
				case 1:
					ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
					if tok, err := e.Recv(ctx); err == nil {
						dst[0], n = tok, 1
					}
					cancel()
				default:
					ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
					n, _ = e.RecvBatch(ctx, dst[:1+rng.IntN(len(dst))])
					cancel()
				}
				for _, tok := range dst[:n] {
					fs.Free(tok)
				}
				got += n
				if got != lastGot {
					last, lastGot = time.Now(), got
				} else if time.Since(last) > 5*time.Second { // generous: CI machines are loaded
					t.Fatalf("%+v: no progress for 5s: got %d, refused %d, Len %d, %d senders parked, Stats %+v",
						p, got, refused.Load(), e.Len(), e.sendq.linked.Load(), e.Stats())
				}
			}
			pwg.Wait()
			if st := e.Stats(); st.Delivered != uint64(got) || st.Len != 0 || fs.liveCount() != 0 {
				t.Fatalf("%+v: got %d, live %d, Stats %+v", p, got, fs.liveCount(), st)
			}
		}
	}
}
