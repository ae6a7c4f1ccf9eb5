package clock

// Second review, of 4b056d3 (frozen reads during a renewal, the floor left
// by a dropped line, extend past a line's span). Each test names the claim
// it tries to break. Four failed on 4b056d3: a read frozen at the old line's
// end during a renewal lagged Mono by the idle before it (up to 49 ms:
// TestReview2ReadDuringRenewalNearMono, TestReview2ConcurrentWakeAfterIdle),
// and values of Mono handed out while a line was due went above the line's
// end, so a frozen read after them went back (renew's pair-failure return,
// and the end of calibration with a delayed renewer). Readers now wait for
// the goroutine publishing a line instead of reading a value of their own;
// the tests were rewritten for that (a goroutine holding renewing makes
// readers wait, it no longer gives them a frozen value). Helpers come from clock_test.go (restartForTest,
// running, forgeLead) and review_test.go (counterInUse, publishAhead,
// lockRenewing, reviewTol).

import (
	"math/big"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// tightBracket is the widest Mono bracket (ns) a sample may have to count.
const tightBracket = 20 * int64(time.Microsecond)

// r2Tol is how far from its Mono bracket a read may fall.
func r2Tol() int64 {
	if race {
		return 10 * int64(time.Microsecond)
	}
	return int64(time.Microsecond)
}

// waitPastSpan sleeps until the current line is past its span (two spans).
func waitPastSpan() { time.Sleep(time.Duration(2 * spanNs)) }

// freshLine renews the line now (so that it is current for about a span)
// and returns it.
func freshLine(t *testing.T) *anchor {
	t.Helper()
	waitPastSpan()
	Now()
	a := current.Load()
	if a == nil || state.Load() != stateRunning {
		t.Fatalf("no line after a renewal (state %d)", state.Load())
	}
	return a
}

// TestReview2ExtendBoundaries: extend is at() within the span, exactly the
// line's end at d == span, end + (d-span)*base up to staleSpans*span - 1
// (exact, no overflow, for rates across the sanity range and the slowest
// lead), nondecreasing across the span boundary, refused from staleSpans
// spans on; a counter within skewTicks below the anchor reads as the anchor,
// further below is refused (renew then treats it as stale).
func TestReview2ExtendBoundaries(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	two32 := new(big.Int).Lsh(big.NewInt(1), 32)
	mul := func(d, rate uint64) *big.Int {
		x := new(big.Int).Mul(new(big.Int).SetUint64(d), new(big.Int).SetUint64(rate))
		return x.Quo(x, two32)
	}
	for i := range 20000 {
		var rate float64
		switch i % 4 {
		case 0:
			rate = 1.0/64 + 1e-9
		case 1:
			rate = 64 - 1e-9
		default:
			rate = 1.0/64 + rng.Float64()*(64-1.0/64)
		}
		base := uint64(rate * (1 << 32))
		slowed := rate
		if i%2 == 0 {
			slowed *= 1 - float64(rng.Int64N(maxErrorNs+1))/float64(spanNs)
		}
		l := line{
			tsc:  rng.Uint64(),
			ns:   rng.Int64N(1 << 62),
			mult: uint64(slowed * (1 << 32)),
			span: uint64(float64(spanNs) / rate),
			base: base,
		}
		end := l.end()
		wantEnd := new(big.Int).Add(big.NewInt(l.ns), mul(l.span, l.mult))
		if !wantEnd.IsInt64() || wantEnd.Int64() != end {
			t.Fatalf("line %+v: end %d, want %v", l, end, wantEnd)
		}
		// At the boundary: span-1 is on the line, span is the end.
		vIn, okIn := l.extend(l.tsc + l.span - 1)
		vEnd, okEnd := l.extend(l.tsc + l.span)
		if !okIn || !okEnd || vIn > vEnd || vEnd != end {
			t.Fatalf("line %+v: extend(span-1) = %d,%v; extend(span) = %d,%v; want <= end %d and end", l, vIn, okIn, vEnd, okEnd, end)
		}
		if a, ok := l.at(l.tsc + l.span - 1); !ok || a != vIn {
			t.Fatalf("line %+v: extend(span-1) %d differs from at %d,%v", l, vIn, a, ok)
		}
		// Past the span, up to the last tick before staleSpans spans.
		last := staleSpans*l.span - 1
		prev := vEnd
		for _, d := range []uint64{l.span + 1, l.span + rng.Uint64N((staleSpans-1)*l.span), last} {
			v, ok := l.extend(l.tsc + d)
			if !ok {
				t.Fatalf("line %+v: extend(%d) refused below %d", l, d, staleSpans*l.span)
			}
			want := new(big.Int).Add(big.NewInt(end), mul(d-l.span, l.base))
			if !want.IsInt64() || want.Int64() != v {
				t.Fatalf("line %+v: extend(%d) = %d, want %v", l, d, v, want)
			}
			if v < prev {
				t.Fatalf("line %+v: extend(%d) = %d below an earlier %d", l, d, v, prev)
			}
			prev = v
		}
		// Staleness: from staleSpans spans on, and anything past 2^63.
		for _, d := range []uint64{staleSpans * l.span, staleSpans*l.span + 1, 1<<63 - 1} {
			if v, ok := l.extend(l.tsc + d); ok {
				t.Fatalf("line %+v: extend(%d) = %d accepted", l, d, v)
			}
		}
		// Below the anchor.
		for _, back := range []uint64{1, skewTicks - 1, skewTicks} {
			if v, ok := l.extend(l.tsc - back); !ok || v != l.ns {
				t.Fatalf("line %+v: extend %d below = %d,%v; want the anchor %d", l, back, v, ok, l.ns)
			}
		}
		for _, back := range []uint64{skewTicks + 1, 1 << 40, 1 << 63} {
			if v, ok := l.extend(l.tsc - back); ok {
				t.Fatalf("line %+v: extend %d below = %d accepted", l, back, v)
			}
		}
	}
}

// readDuringRenewal holds renewing (a renewal being published) for delay
// while another goroutine reads Now: the read must wait for the release.
// It returns the read and Mono just before the release.
func readDuringRenewal(t *testing.T, delay time.Duration) (v, released int64) {
	t.Helper()
	lockRenewing()
	waitPastSpan() // the current line is due: readers need the next one
	got := make(chan int64, 1)
	go func() { got <- Now() }()
	time.Sleep(delay)
	select {
	case v := <-got:
		renewing.Store(false)
		t.Fatalf("Now returned %d while a renewal was being published: it must wait", v)
	default:
	}
	released = Mono()
	renewing.Store(false)
	return <-got, released
}

// TestReview2WaitThenNewLine: "nobody goes back across a renewal however
// long the renewer is delayed". A goroutine that reads while a line is
// being published waits for it; its read and the reads after it do not go
// back, whether the old line was behind Mono or ahead (a lead under
// maxErrorNs), and however long the publisher took.
func TestReview2WaitThenNewLine(t *testing.T) {
	useCounter(t)
	for _, c := range []struct {
		name  string
		lead  int64
		delay time.Duration
	}{
		{"behind", 0, 2 * time.Duration(spanNs)},
		{"ahead 30us", 30 * int64(time.Microsecond), 2 * time.Duration(spanNs)},
		{"ahead 45us, publisher delayed 8 spans", 45 * int64(time.Microsecond), 8 * time.Duration(spanNs)},
	} {
		freshLine(t)
		if c.lead != 0 && !publishAhead(c.lead) {
			t.Fatal("no line to publish ahead")
		}
		before := Now()
		v, _ := readDuringRenewal(t, c.delay)
		n := Now()
		if v < before || n < v {
			t.Fatalf("%s: Now %d, then %d while a renewal was published, then %d: back", c.name, before, v, n)
		}
		if s := state.Load(); s != stateRunning {
			t.Fatalf("%s: state %d after the renewal", c.name, s)
		}
	}
}

// TestReview2ReadDuringRenewalNearMono: "it stays within one span's drift
// of CLOCK_MONOTONIC". After the clock was not read for a while (past the
// span), a goroutine that reads while another publishes the next line gets
// a value near Mono when the publication ends, not the old line's end (on
// 4b056d3: behind by the idle, 2.3 ms after 3 ms and 49 ms after 50 ms).
func TestReview2ReadDuringRenewalNearMono(t *testing.T) {
	useCounter(t)
	const idle = 50 * time.Millisecond // beyond staleSpans spans, as after any pause
	for _, d := range []time.Duration{3 * time.Duration(spanNs), idle} {
		freshLine(t)
		time.Sleep(d)
		v, released := readDuringRenewal(t, time.Duration(spanNs))
		if v < released-r2Tol()-maxErrorNs {
			t.Errorf("idle %v: a read that waited for a renewal gave %d, %d ns (%.3f ms) behind Mono at the renewal's end %d", d, v, released-v, float64(released-v)/1e6, released)
		}
	}
}

// TestReview2ConcurrentWakeAfterIdle: the same without holding the lock:
// four goroutines read the clock together after an idle; those that do
// not renew must not read far behind Mono. Only rounds where the reads
// overlapped a renewal can show it; the test counts them.
func TestReview2ConcurrentWakeAfterIdle(t *testing.T) {
	useCounter(t)
	allowed := spanNs + maxErrorNs + r2Tol()
	var go1 atomic.Int32
	var worst atomic.Int64
	var hits atomic.Int32
	const rounds = 100
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := int32(1); r <= rounds; r++ {
				for go1.Load() < r {
					runtime.Gosched()
				}
				a := Mono()
				v := Now()
				b := Mono()
				if b-a > tightBracket {
					continue
				}
				if a-v > allowed {
					hits.Add(1)
					for {
						w := worst.Load()
						if a-v <= w || worst.CompareAndSwap(w, a-v) {
							break
						}
					}
				}
			}
		}()
	}
	for r := int32(1); r <= rounds; r++ {
		time.Sleep(3 * time.Millisecond)
		go1.Store(r)
	}
	wg.Wait()
	if n := hits.Load(); n > 0 {
		t.Errorf("%d reads in %d rounds (4 goroutines woken together after a 3 ms idle): Now up to %d ns behind Mono (allowed %d)", n, rounds, worst.Load(), allowed)
	}
}

// TestReview2GiveUpNeverBack: when Mono cannot be bracketed (maxPairFailures
// tries of five pairs: a machine too loaded to calibrate against), the
// counter is given up. On 4b056d3 a failed pair returned Mono, above the
// end of a line still current, and a later frozen read went back; now
// giveUp drops the line, makes its end the floor and turns the clock off:
// the value it returns and every read after are at least the line's end.
func TestReview2GiveUpNeverBack(t *testing.T) {
	useCounter(t)
	c := freshLine(t)
	const lead = 30 * int64(time.Microsecond)
	if !publishAhead(lead) {
		t.Fatal("no line")
	}
	l, _ := current.Load().load()
	_ = c
	before := Now()
	v := giveUp()
	after := Now()
	if s := state.Load(); s != stateOff || current.Load() != nil {
		t.Fatalf("state %d (line %v) after giveUp, want off without a line", s, current.Load())
	}
	if f := floor.Load(); f < l.end() {
		t.Fatalf("floor %d below the dropped line's end %d", f, l.end())
	}
	if v < before || after < v || v < l.end() {
		t.Fatalf("Now %d, giveUp %d, Now %d (line end %d): back", before, v, after, l.end())
	}
}

// TestReview2RenewEarlyReturn: renew's "another goroutine renewed it
// meanwhile" path: called with a pair inside the current line's span, or
// older than its anchor (a crafted line taken an instant after the pair),
// it publishes nothing and reports done false, so the caller reads the line.
func TestReview2RenewEarlyReturn(t *testing.T) {
	useCounter(t)
	for range 20 {
		c := freshLine(t)
		s, ok := pair()
		if !ok {
			continue
		}
		lockRenewing()
		_, done := renew(s)
		nx := next
		renewing.Store(false)
		if current.Load() != c {
			// The fresh line was past its span by the time the pair was
			// read (preempted): not the path under test.
			t.Logf("renewed instead of early return (next %d)", nx)
			continue
		}
		if done {
			t.Fatal("renew with a pair inside the current line's span reported done without publishing")
		}
	}
	// Crafted: a copy of the current line with its anchor skewTicks/2 ahead
	// of the counter and its time at Mono.
	lockRenewing()
	c := current.Load()
	a := &anchors[next]
	next = (next + 1) % len(anchors)
	m := Mono()
	x := readTSCOrdered() + skewTicks/2
	a.seq.Add(1)
	a.tsc.Store(x)
	a.ns.Store(m)
	a.mult.Store(c.base.Load())
	a.span.Store(c.span.Load())
	a.base.Store(c.base.Load())
	a.seq.Add(1)
	current.Store(a)
	// A pair older than the anchor (read an instant before it was taken):
	// renew must publish nothing and send the caller back to the line.
	_, done := renew(sample{tsc: x - skewTicks, ns: m - 1})
	renewing.Store(false)
	if done || current.Load() != a {
		t.Fatalf("renew with a pair older than the current anchor: done %v, line replaced %v", done, current.Load() != a)
	}
	if n := Now(); n < m {
		t.Fatalf("Now %d below the current anchor's %d", n, m)
	}
}

// TestReview2ResetFloorThenCalibration: "a line more than maxErrorNs off is
// dropped ... its end becomes a floor below which the clock does not read
// meanwhile". One goroutine reads across the reset, the calibration and the
// first new line: never back; the floor is the dropped line's end; a reader
// holding the dropped anchor gets at most the floor; the first new line
// starts at or above the floor.
func TestReview2ResetFloorThenCalibration(t *testing.T) {
	useCounter(t)
	freshLine(t)
	const lead = 3 * maxErrorNs
	if !publishAhead(lead) {
		t.Fatal("no line")
	}
	dropped := current.Load()
	dl, _ := dropped.load()
	last := Now()
	end := Mono() + int64(time.Second)
	for state.Load() == stateRunning && Mono() < end {
		v := Now()
		if v < last {
			t.Fatalf("back by %d ns before the reset", last-v)
		}
		last = v
	}
	if s := state.Load(); s != stateCalibrating {
		t.Fatalf("state %d after a %d ns lead, want calibrating", s, lead)
	}
	f := floor.Load()
	if f != dl.end() {
		t.Fatalf("floor %d, want the dropped line's end %d", f, dl.end())
	}
	// The dropped anchor, read by a goroutine that loaded it before the
	// reset, over its span and the skew below it.
	for k := int64(-2); k <= 100; k++ {
		x := dl.tsc + uint64(k*int64(dl.span)/100)
		if v, ok := dropped.at(x); ok && v > f {
			t.Fatalf("the dropped anchor gives %d above the floor %d at %d of its span", v, f, k)
		}
	}
	// Through calibration to the first line.
	end = Mono() + calibrateNs + 10*spanNs
	for Mono() < end {
		a := Mono()
		v := Now()
		if v < last {
			t.Fatalf("back by %d ns after the reset (state %d, floor %d)", last-v, state.Load(), f)
		}
		if v < f {
			t.Fatalf("Now %d below the floor %d (state %d)", v, f, state.Load())
		}
		if a > f && v < a-r2Tol() {
			t.Fatalf("Now %d behind Mono %d past the floor", v, a)
		}
		last = v
		if i := rand.IntN(64); i == 0 {
			time.Sleep(time.Microsecond)
		}
	}
	c := current.Load()
	if c == nil || state.Load() != stateRunning {
		t.Fatalf("no line after calibration (state %d)", state.Load())
	}
	// The first line after the reset (or a later one): at or above floor.
	if ns := c.ns.Load(); ns < f {
		t.Fatalf("a line after the reset starts at %d, below the floor %d", ns, f)
	}
}

// TestReview2FloorStallBounded: a counter that jumps forward inside the
// span (a line suddenly lead ahead, lead > maxErrorNs) is dropped, and the
// clock reads the floor until Mono reaches it: at most about one span plus
// the lead, then Mono again.
func TestReview2FloorStallBounded(t *testing.T) {
	useCounter(t)
	for _, lead := range []int64{2 * maxErrorNs, 900 * int64(time.Microsecond), 5 * spanNs} {
		restartForTest(t)
		running(t)
		freshLine(t)
		if !publishAhead(lead) {
			t.Fatal("no line")
		}
		m0 := Mono()
		var lastAhead int64 // Mono at the last read above Mono
		last := Now()
		end := m0 + int64(time.Second)
		for Mono() < end {
			a := Mono()
			v := Now()
			b := Mono()
			if v < last {
				t.Fatalf("lead %d: back by %d ns", lead, last-v)
			}
			last = v
			if v > b+r2Tol() {
				lastAhead = b
			} else if state.Load() != stateRunning && b-a <= tightBracket && a-m0 > lead+3*spanNs {
				break
			}
		}
		if lastAhead == 0 {
			t.Logf("lead %d: never read ahead (renewed before the first read)", lead)
			continue
		}
		stall := lastAhead - m0
		if stall > lead+3*spanNs {
			t.Errorf("lead %d ns: the clock read ahead of Mono for %d ns (%.3f ms) after the jump, more than the lead plus a few spans (floor %d)", lead, stall, float64(stall)/1e6, floor.Load())
		}
	}
}

// TestReview2OffFloorAndWarp: the off state (and the purego build) reads
// max(Mono, floor); Warp moves the floor with Mono, so Now does not go back
// across it and the stall stays as long as before it.
func TestReview2OffFloorAndWarp(t *testing.T) {
	keepEpoch(t)
	restartForTest(t)
	lockRenewing()
	state.Store(stateOff)
	ahead := 2 * spanNs
	f := Mono() + ahead
	floor.Store(f)
	renewing.Store(false)
	if v, s := Now(), Stamp(); v != f || s != f {
		t.Fatalf("off with floor %d ahead of Mono: Now %d, Stamp %d; want the floor", f, v, s)
	}
	const w = time.Hour
	before := Now()
	Warp(w)
	after := Now()
	if after < before {
		t.Fatalf("Now back across Warp with a floor: %d after %d", after, before)
	}
	if floor.Load() != f+int64(w) {
		t.Fatalf("floor %d after Warp, want %d", floor.Load(), f+int64(w))
	}
	if m := Mono(); m < f+int64(w) && after != f+int64(w) {
		t.Fatalf("after Warp: Now %d, want the moved floor %d (Mono %d)", after, f+int64(w), m)
	}
	// The stall ends when Mono passes the floor, within ahead.
	last := after
	deadline := Mono() + ahead + int64(time.Second)
	for {
		a := Mono()
		v := Now()
		b := Mono()
		if v < last {
			t.Fatalf("back by %d", last-v)
		}
		last = v
		if b-a <= tightBracket && v >= a && v <= b {
			break // Mono again
		}
		if a > deadline {
			t.Fatalf("still at the floor %d a second after Mono %d should have passed it", v, a)
		}
	}
	if floor.Load() > Mono() {
		t.Fatal("Mono tracked while below the floor")
	}
	if n := testing.AllocsPerRun(100, func() { Now(); Stamp() }); n != 0 {
		t.Fatalf("%v allocs per off read", n)
	}
}

// TestReview2WarpWithFloorRunning: Warp while running after a reset left a
// floor: Now does not go back, and the floor moved with the clock (it is
// still behind Mono, so it does not stall the clock).
func TestReview2WarpWithFloorRunning(t *testing.T) {
	if !counterInUse() {
		t.Skip("the counter is not used here")
	}
	keepEpoch(t)
	restartForTest(t)
	running(t)
	forgeLead(t, 2*maxErrorNs)
	waitPastSpan()
	Now() // reset: floor
	if floor.Load() == 0 {
		t.Fatalf("no floor after a reset (state %d)", state.Load())
	}
	running(t)
	const w = time.Hour
	before := Now()
	Warp(w)
	a := Mono()
	after := Now()
	b := Mono()
	if after < before {
		t.Fatalf("Now back across Warp: %d after %d", after, before)
	}
	if f := floor.Load(); f > a {
		t.Fatalf("floor %d ahead of Mono %d after Warp: the clock stalls", f, a)
	}
	if b-a <= tightBracket && (after < a-r2Tol() || after > b+r2Tol()) {
		t.Fatalf("Now %d outside Mono [%d, %d] after Warp", after, a, b)
	}
}

// TestReview2NoAllocNewPaths: a renewal (the slow path past the span),
// renew's early return and the off state with a floor allocate nothing.
func TestReview2NoAllocNewPaths(t *testing.T) {
	useCounter(t)
	n := testing.AllocsPerRun(20, func() { waitPastSpan(); Now(); Stamp() })
	if n != 0 {
		t.Fatalf("%v allocs per renewal", n)
	}
	freshLine(t)
	s, _ := pair()
	lockRenewing()
	n = testing.AllocsPerRun(100, func() { renew(s) })
	renewing.Store(false)
	if n != 0 {
		t.Fatalf("%v allocs per renew", n)
	}
}

// TestReview2CalibrationEndDelayedRenewer: "nobody goes back across a
// renewal however long the renewer is delayed", at the end of calibration.
// Goroutine H publishes the first line from a pair taken at T0 and is
// delayed for over a span while it holds renewing. On 4b056d3 goroutine G
// read Mono meanwhile (M1 > T0), then the new line frozen at T0 + a span:
// back. Now G waits for H: its reads come from the new line and do not go
// back.
func TestReview2CalibrationEndDelayedRenewer(t *testing.T) {
	useCounter(t)
	lockRenewing() // H
	current.Store(nil)
	state.Store(stateCalibrating)
	calibrateUntil.Store(Mono() - 1)
	s, ok := pair() // H's pair, at T0
	if !ok {
		renewing.Store(false)
		t.Skip("pair failed")
	}
	got := make(chan [2]int64, 1)
	go func() { // G
		v1 := Now()
		got <- [2]int64{v1, Now()}
	}()
	time.Sleep(time.Duration(2 * spanNs)) // H delayed
	select {
	case v := <-got:
		renewing.Store(false)
		t.Fatalf("G read %d while H held renewing with no line: it must wait", v[0])
	default:
	}
	v, done := renew(s) // H publishes the first line from T0, already past its span
	renewing.Store(false)
	if !done || v < s.ns {
		t.Fatalf("renew = %d, %v; want done at or after the pair's %d", v, done, s.ns)
	}
	g := <-got
	if g[0] < v || g[1] < g[0] {
		t.Errorf("G read %d then %d after H's line started at %d: back", g[0], g[1], v)
	}
}
