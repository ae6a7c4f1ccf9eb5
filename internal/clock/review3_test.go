package clock

// Third review, of 9be32c3 (the pair read outside the lock, readers that
// wait for a publication, renew's done=false refusal, giveUp). Each test
// names the claim it tries to break. Helpers come from clock_test.go
// (restartForTest, running, forgeLead), review_test.go (counterInUse,
// lockRenewing, publishAhead, reviewTol) and review2_test.go (freshLine,
// waitPastSpan, r2Tol, tightBracket). TestReview3CounterJumpedBack failed
// on 9be32c3 (Now spun until a counter that jumped back climbed past the
// old anchor) and passes since 9ec1d40.

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// r3Timeout bounds every read that could hang.
const r3Timeout = 2 * time.Second

// r3Read reads Now in another goroutine and reports its value, or false if
// it did not return within d.
func r3Read(d time.Duration) (chan int64, func() (int64, bool)) {
	got := make(chan int64, 1)
	go func() { got <- Now() }()
	return got, func() (int64, bool) {
		select {
		case v := <-got:
			return v, true
		case <-time.After(d):
			return 0, false
		}
	}
}

// r3PublishAt publishes (as renew does: next slot, seqlock, current) a
// copy of the current line with its anchor at counter tsc and time ns.
func r3PublishAt(t *testing.T, tsc uint64, ns int64) *anchor {
	t.Helper()
	lockRenewing()
	defer renewing.Store(false)
	c := current.Load()
	if c == nil {
		t.Fatal("no line")
	}
	a := &anchors[next]
	next = (next + 1) % len(anchors)
	a.seq.Add(1)
	a.tsc.Store(tsc)
	a.ns.Store(ns)
	a.mult.Store(c.base.Load())
	a.span.Store(c.span.Load())
	a.base.Store(c.base.Load())
	a.mono.Store(Mono()) // published now: a pair read before is older
	a.seq.Add(1)
	current.Store(a)
	return a
}

// TestReview3OlderPairPublishedSecond: "renew ... publishes nothing when s
// is older than the current line". Two pairs read while the line is due;
// the newer one publishes first, then the older one must be refused (and
// so must a pair read long before, after several lines were published and
// expired meanwhile).
func TestReview3OlderPairPublishedSecond(t *testing.T) {
	useCounter(t)
	tried := 0
	for range 20 {
		freshLine(t)
		waitPastSpan()
		s1, ok1 := pair()
		s2, ok2 := pair()
		if !ok1 || !ok2 {
			continue
		}
		tried++
		lockRenewing()
		v2, done2 := renew(s2)
		a2 := current.Load()
		_, done1 := renew(s1)
		a1 := current.Load()
		renewing.Store(false)
		if !done2 {
			t.Fatalf("renew of a pair past the line's span: done false")
		}
		if done1 || a1 != a2 {
			t.Fatalf("the older pair (tsc %d, ns %d) was published after the newer (tsc %d, ns %d): done %v, line replaced %v", s1.tsc, s1.ns, s2.tsc, s2.ns, done1, a1 != a2)
		}
		if n := Now(); n < v2 {
			t.Fatalf("Now %d below the line start %d", n, v2)
		}
	}
	if tried == 0 {
		t.Skip("no pair bracketed")
	}
	// A renewer delayed between pair and CAS for several spans while other
	// reads renewed the line several times (each published, then expired).
	waitPastSpan()
	s, ok := pair()
	if !ok {
		t.Skip("pair failed")
	}
	before := current.Load()
	for range 5 {
		waitPastSpan()
		Now()
	}
	if current.Load() == before {
		t.Fatal("no renewal in five spans")
	}
	lockRenewing()
	c := current.Load()
	_, done := renew(s)
	after := current.Load()
	renewing.Store(false)
	if done || after != c {
		t.Fatalf("a pair read five renewals ago was published: done %v, line replaced %v", done, after != c)
	}
}

// TestReview3StalePairAcrossResetAndGiveUp: a pair read while running is
// published after a reset put the clock in calibrating (current nil), and
// after giveUp put it off. renew must publish nothing, leave the baselines
// of the new calibration alone, and return at least the floor (the dropped
// line's end) and at least what this goroutine read before its pair.
func TestReview3StalePairAcrossResetAndGiveUp(t *testing.T) {
	useCounter(t)
	freshLine(t)
	if !publishAhead(40 * int64(time.Microsecond)) {
		t.Fatal("no line")
	}
	waitPastSpan()
	before := Now() // renews: a line that goes on from the lead
	waitPastSpan()
	s, ok := pair() // H's pair, while the line is due
	if !ok {
		t.Skip("pair failed")
	}
	// Another goroutine finds the line off and resets.
	forgeLead(t, 3*maxErrorNs)
	done := make(chan struct{})
	go func() { Now(); close(done) }()
	select {
	case <-done:
	case <-time.After(r3Timeout):
		t.Fatal("reset read did not return")
	}
	if st := state.Load(); st != stateCalibrating {
		t.Fatalf("state %d after a %d ns lead, want calibrating", st, 3*maxErrorNs)
	}
	f := floor.Load()
	lockRenewing()
	o, r, cu := older, recent, calibrateUntil.Load()
	v, ok2 := renew(s)
	o2, r2, cu2, c2, st2 := older, recent, calibrateUntil.Load(), current.Load(), state.Load()
	renewing.Store(false)
	if !ok2 {
		t.Fatal("renew of a stale pair while calibrating: done false (the caller would read Mono next: fine, but unexpected)")
	}
	if o2 != o || r2 != r || cu2 != cu || c2 != nil || st2 != stateCalibrating {
		t.Fatalf("a stale pair changed the calibration: older %v->%v recent %v->%v until %d->%d line %v state %d", o, o2, r, r2, cu, cu2, c2, st2)
	}
	if v < f || v < before {
		t.Fatalf("stale pair's value %d below the floor %d or below the earlier read %d", v, f, before)
	}
	if n := Now(); n < v {
		t.Fatalf("Now %d after the stale pair's %d: back", n, v)
	}
	// The same after giveUp (off).
	running(t)
	waitPastSpan()
	s, ok = pair()
	if !ok {
		t.Skip("pair failed")
	}
	g := giveUp()
	lockRenewing()
	v, ok2 = renew(s)
	c2, st2 = current.Load(), state.Load()
	renewing.Store(false)
	if !ok2 || c2 != nil || st2 != stateOff {
		t.Fatalf("stale pair after giveUp: done %v, line %v, state %d", ok2, c2, st2)
	}
	if v < floor.Load() {
		t.Fatalf("stale pair after giveUp gave %d below the floor %d (giveUp returned %d)", v, floor.Load(), g)
	}
}

// TestReview3CalibratingReadsBelowFirstLine: "every value the clock hands
// out comes from a line or from Mono while no line is due". H holds
// renewing from before calibrateUntil, reads its pair after it and is
// delayed a span before publishing the first line; readers on several
// goroutines meanwhile must get Mono only below calibrateUntil (so below
// the line's start) and then wait; each goroutine's reads never go back.
func TestReview3CalibratingReadsBelowFirstLine(t *testing.T) {
	if !counterInUse() {
		t.Skip("the counter is not used here")
	}
	restartForTest(t)
	defer restartForTest(t)
	Now()          // restart: calibrating
	lockRenewing() // H, for the whole calibration: nobody else publishes
	if state.Load() != stateCalibrating || current.Load() != nil {
		renewing.Store(false)
		t.Fatalf("state %d, want calibrating", state.Load())
	}
	cu := calibrateUntil.Load()
	var published, stop atomic.Bool
	var bad atomic.Int64 // a value read before publication at or above cu
	var back atomic.Int64
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := int64(0)
			for !stop.Load() {
				v := Now()
				if !published.Load() && v >= cu {
					bad.Store(v)
				}
				if v < last {
					back.Store(last - v)
				}
				last = v
				runtime.Gosched()
			}
		}()
	}
	for Mono() < cu+spanNs/4 {
		runtime.Gosched()
	}
	s, ok := pair()
	for !ok {
		s, ok = pair()
	}
	time.Sleep(time.Duration(spanNs)) // H delayed before publishing
	v, done := renew(s)
	published.Store(true)
	renewing.Store(false)
	time.Sleep(5 * time.Duration(spanNs))
	stop.Store(true)
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(r3Timeout):
		t.Fatal("readers did not stop")
	}
	if !done || v < cu || v < s.ns {
		t.Fatalf("first line: renew = %d, %v; want done at or after calibrateUntil %d and the pair %d", v, done, cu, s.ns)
	}
	if b := bad.Load(); b != 0 {
		t.Errorf("a read completed before the first line was published gave %d, at or above calibrateUntil %d (line start %d)", b, cu, v)
	}
	if b := back.Load(); b != 0 {
		t.Errorf("a reader went back by %d ns across the end of calibration", b)
	}
}

// TestReview3WarpBetweenPairAndPublish: Warp (documented for quiescent
// clocks only) between a renewer's pair and its publication. The renewer's
// value must not be below what it read before, reads after the Warp must
// not go back, and the clock must not be given up for it.
func TestReview3WarpBetweenPairAndPublish(t *testing.T) {
	if !counterInUse() {
		t.Skip("the counter is not used here")
	}
	keepEpoch(t)
	restartForTest(t)
	running(t)
	for _, w := range []time.Duration{time.Hour, 10 * time.Microsecond, 200 * time.Microsecond} {
		freshLine(t)
		before := Now()
		waitPastSpan()
		s, ok := pair()
		if !ok {
			continue
		}
		Warp(w)
		lockRenewing()
		v, done := renew(s)
		renewing.Store(false)
		after := Now()
		t.Logf("Warp %v between pair and publish: renew %d (done %v), state %d, resets %d", w, v-before, done, state.Load(), resets)
		if done && v < before {
			t.Errorf("Warp %v: renew gave %d below the earlier read %d", w, v, before)
		}
		if after < before+int64(w) || (done && after < v) {
			t.Errorf("Warp %v: Now %d after %d (renew %d): back", w, after, before, v)
		}
		if state.Load() == stateOff {
			t.Errorf("Warp %v: the counter was given up", w)
		}
		if state.Load() != stateRunning {
			running(t)
		}
	}
}

// TestReview3CounterJumpedBack: "a line more than maxErrorNs off (a counter
// that jumped: a migrated virtual machine ...) is dropped", and a line idle
// or jumped beyond staleSpans spans "simply starts a new line". A counter
// that jumps BACK (its reads now below the current anchor by more than
// skewTicks: migration, or a counter reset by a suspend) must not keep
// Now from returning. On 9be32c3 renew's refusal
// `int64(s.tsc-old.tsc) < int64(old.span)` (clock.go:369) treats every
// such pair as "older than the current line", and slow loops on
// pair/renew until the counter climbs back past the old anchor's span.
func TestReview3CounterJumpedBack(t *testing.T) {
	useCounter(t)
	for _, c := range []struct {
		name  string
		spans uint64
		limit time.Duration
	}{
		{"back 50 spans", 50, 10 * time.Millisecond},
		{"back 10 s", 10000, time.Second},
	} {
		restartForTest(t) // the case before left a line far behind Mono
		running(t)
		cur := freshLine(t)
		before := Now()
		back := c.spans * cur.span.Load()
		// The anchor stands at the counter + back: the counter's next reads
		// are back ticks below it, as after a jump back by back ticks.
		r3PublishAt(t, readTSCOrdered()+back, before)
		start := time.Now()
		got, wait := r3Read(c.limit)
		v, ok := wait()
		took := time.Since(start)
		if !ok {
			t.Errorf("%s: Now did not return within %v (slow loops: renew refuses every pair below the anchor)", c.name, c.limit)
			select {
			case <-got: // the counter climbed back past the anchor's span
				t.Logf("%s: Now returned by itself after %v", c.name, time.Since(start))
			case <-time.After(200 * time.Millisecond):
				restartForTest(t) // rescue: state unknown lets the loop restart
				select {
				case <-got:
					t.Logf("%s: Now returned only after a restart, %v", c.name, time.Since(start))
				case <-time.After(r3Timeout):
					t.Fatalf("%s: Now still not returned after a restart", c.name)
				}
			}
			continue
		}
		t.Logf("%s: Now returned after %v", c.name, took)
		if v < before {
			t.Errorf("%s: Now %d below the earlier %d", c.name, v, before)
		}
	}
}

// TestReview3SkewedAnchorReturns: a counter read a little more than
// skewTicks below the anchor (another CPU's counter a few µs behind) does
// not read as the anchor; the reader must still return soon, and not below
// the line.
func TestReview3SkewedAnchorReturns(t *testing.T) {
	useCounter(t)
	for range 10 {
		freshLine(t)
		before := Now()
		// What a renewer on a CPU whose counter is 3*skewTicks ahead
		// publishes: that counter, and Mono (so the line is off by the
		// skew only, well under maxErrorNs).
		a := r3PublishAt(t, readTSCOrdered()+3*skewTicks, Mono())
		start := time.Now()
		_, wait := r3Read(r3Timeout)
		v, ok := wait()
		if !ok {
			t.Fatalf("Now did not return within %v with the anchor %d ticks ahead", r3Timeout, 3*skewTicks)
		}
		if took := time.Since(start); took > 50*time.Millisecond {
			t.Errorf("Now took %v with the anchor %d ticks ahead", took, 3*skewTicks)
		}
		if v < before || v < a.ns.Load() && current.Load() == a {
			t.Errorf("Now %d below the earlier %d or the anchor %d", v, before, a.ns.Load())
		}
	}
}

// TestReview3GiveUpWaitsForPublisher: giveUp waits for a publication in
// progress (it spins on renewing) and returns when it ends, at least the
// line's end; readers meanwhile wait too and do not go back after.
func TestReview3GiveUpWaitsForPublisher(t *testing.T) {
	useCounter(t)
	freshLine(t)
	before := Now()
	lockRenewing()
	l, _ := current.Load().load()
	gv := make(chan int64, 1)
	go func() { gv <- giveUp() }()
	got, wait := r3Read(3 * time.Duration(spanNs))
	_ = got
	time.Sleep(3 * time.Duration(spanNs))
	select {
	case v := <-gv:
		renewing.Store(false)
		t.Fatalf("giveUp returned %d while renewing was held", v)
	default:
	}
	renewing.Store(false)
	var g int64
	select {
	case g = <-gv:
	case <-time.After(r3Timeout):
		t.Fatal("giveUp did not return after renewing was released")
	}
	v, ok := wait()
	if !ok {
		select {
		case v = <-got:
		case <-time.After(r3Timeout):
			t.Fatal("reader did not return after renewing was released")
		}
	}
	if g < l.end() || g < before {
		t.Errorf("giveUp %d below the line's end %d or an earlier read %d", g, l.end(), before)
	}
	if v < before {
		t.Errorf("reader %d below an earlier read %d", v, before)
	}
	if n := Now(); n < g {
		t.Errorf("Now %d after giveUp's %d: back", n, g)
	}
}

// TestReview3NearMonoUnderLoad: "it stays within one span's drift of
// CLOCK_MONOTONIC", with four times GOMAXPROCS goroutines reading, each
// idling now and then (so renewals race, pairs are delayed, readers wait).
// Only reads inside a tight Mono bracket count.
func TestReview3NearMonoUnderLoad(t *testing.T) {
	useCounter(t)
	tol := r2Tol()
	n := 4 * runtime.GOMAXPROCS(0)
	if n < 8 {
		n = 8
	}
	var worst, bad, samples, back atomic.Int64
	var wg sync.WaitGroup
	end := Mono() + int64(time.Second)
	for g := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			read := Now
			if g%2 == 1 {
				read = Stamp
			}
			last := int64(0)
			for Mono() < end {
				if rng.IntN(40) == 0 {
					time.Sleep(time.Duration(rng.Int64N(3 * spanNs)))
				}
				a := Mono()
				v := read()
				b := Mono()
				if v < last {
					back.Store(last - v)
				}
				last = v
				if b-a > tightBracket {
					continue
				}
				samples.Add(1)
				d := max(a-v, v-b)
				if d > tol {
					bad.Add(1)
				}
				for {
					w := worst.Load()
					if d <= w || worst.CompareAndSwap(w, d) {
						break
					}
				}
			}
		}()
	}
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("readers did not finish")
	}
	t.Logf("%d goroutines, %d tight samples, worst %d ns outside the bracket, state %d", n, samples.Load(), worst.Load(), state.Load())
	if b := back.Load(); b != 0 {
		t.Errorf("a goroutine went back by %d ns", b)
	}
	if b := bad.Load(); b != 0 {
		t.Errorf("%d of %d tight samples more than %d ns outside Mono (worst %d)", b, samples.Load(), tol, worst.Load())
	}
	if state.Load() != stateRunning {
		t.Errorf("state %d after the load, want running (given up or reset under load)", state.Load())
	}
}

// TestReview3TransitionsNeverBack: readers on many goroutines across
// resets (a line ahead by more than maxErrorNs), recalibrations, an
// absorbed lead and finally giveUp: no goroutine goes back, nobody hangs,
// and (under -race) no race.
func TestReview3TransitionsNeverBack(t *testing.T) {
	useCounter(t)
	var stop atomic.Bool
	var back atomic.Int64
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			read := Now
			if g%2 == 1 {
				read = Stamp
			}
			last := int64(0)
			for i := 0; !stop.Load(); i++ {
				v := read()
				if v < last {
					back.Store(last - v)
				}
				last = v
				if i%128 == 0 {
					time.Sleep(time.Duration(i%5) * 100 * time.Microsecond)
				}
			}
		}()
	}
	for range 2 {
		time.Sleep(3 * time.Duration(spanNs))
		publishAhead(30 * int64(time.Microsecond))
		time.Sleep(3 * time.Duration(spanNs))
		publishAhead(3 * maxErrorNs) // reset
		time.Sleep(time.Duration(calibrateNs + 5*spanNs))
	}
	giveUp()
	time.Sleep(5 * time.Duration(spanNs))
	stop.Store(true)
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(r3Timeout):
		t.Fatal("readers hung")
	}
	if b := back.Load(); b != 0 {
		t.Errorf("a goroutine went back by %d ns across the transitions", b)
	}
	if state.Load() != stateOff {
		t.Errorf("state %d after giveUp, want off", state.Load())
	}
}

// TestReview3NoAllocNewPaths: renew's refusal, its calibrating branch for a
// stale pair, giveUp and a read that waits for a publication allocate
// nothing.
func TestReview3NoAllocNewPaths(t *testing.T) {
	useCounter(t)
	freshLine(t)
	s, _ := pair()
	lockRenewing()
	if n := testing.AllocsPerRun(100, func() { renew(s) }); n != 0 {
		renewing.Store(false)
		t.Fatalf("%v allocs per refused renew", n)
	}
	renewing.Store(false)
	if n := testing.AllocsPerRun(20, func() { waitPastSpan(); Now() }); n != 0 {
		t.Fatalf("%v allocs per renewal", n)
	}
	if n := testing.AllocsPerRun(5, func() {
		lockRenewing()
		current.Store(nil)
		state.Store(stateUnknown)
		resets = 0
		renewing.Store(false)
		Now()
		giveUp()
		Now()
	}); n != 0 {
		t.Fatalf("%v allocs per restart, giveUp and off read", n)
	}
}
