package clock

// Review tests for 0e1ed0b (package clock). Each test names the claim of the
// package comment it tries to break. Three failed on 0e1ed0b and pass since
// the fix: TestReviewStaleReaderAcrossLeadRenewal (readers of the old line
// during a renewal went past the new line's start: they now wait for the
// new line), TestReviewResetAfterLeadNeverBack (dropping a line that ran
// ahead went back to Mono: the dropped line's end is now a floor) and
// TestReviewAbsorbedLeadThenIdleNoReset (a renewal after an idle judged the
// slowed line over several spans and reset: past its span a line now
// extends at the measured rate).

import (
	"math/big"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// counterInUse reports whether this build and machine convert the counter
// (otherwise Now and Stamp are Mono and the anchor tests have nothing to
// test).
func counterInUse() bool { return haveTSC && trusted() }

// useCounter skips a test that needs the counter where it is not used;
// otherwise it starts the clock afresh and calibrates it, and starts it
// afresh again when the test ends.
func useCounter(t *testing.T) {
	t.Helper()
	if !counterInUse() {
		t.Skip("the counter is not used here")
	}
	restartForTest(t)
	t.Cleanup(func() { restartForTest(t) })
	running(t)
}

// keepEpoch puts Epoch back, with the clock started afresh, when a test
// that warps the clock (or moves Epoch itself) ends.
func keepEpoch(t *testing.T) {
	saved := Epoch
	t.Cleanup(func() {
		restartForTest(t)
		lockRenewing()
		Epoch = saved
		renewing.Store(false)
	})
}

// reviewTol is how far outside a tight Mono bracket a read may fall: the
// package comment promises "nanoseconds to tens of nanoseconds"; the race
// detector slows Mono (the calibration reference) down, so it gets more.
func reviewTol() int64 {
	if race {
		return int64(time.Microsecond)
	}
	return 200 // ns: generous for "tens of nanoseconds"
}

// lockRenewing takes the renewal lock as Warp and restartForTest do.
func lockRenewing() {
	for !renewing.CompareAndSwap(false, true) {
		time.Sleep(time.Microsecond)
	}
}

// publishAhead publishes, the way renew does (next ring slot, seqlock, then
// current), a copy of the current anchor whose line is lead ns ahead: what a
// renewal publishes after a counter that jumped forward by lead. Unlike
// forgeLead it never makes current's sequence odd, so concurrent readers are
// not pushed to the Mono fallback by the test itself.
func publishAhead(lead int64) bool {
	lockRenewing()
	defer renewing.Store(false)
	c := current.Load()
	if c == nil {
		return false
	}
	a := &anchors[next]
	if a == c {
		panic("ring slot of the current anchor")
	}
	next = (next + 1) % len(anchors)
	a.seq.Add(1)
	a.tsc.Store(c.tsc.Load())
	a.ns.Store(c.ns.Load() + lead)
	a.mult.Store(c.mult.Load())
	a.span.Store(c.span.Load())
	a.base.Store(c.base.Load())
	a.mono.Store(c.mono.Load())
	a.seq.Add(1)
	current.Store(a)
	return true
}

// TestReviewAtExact: at() is floor(ns + d*mult/2^32) for every d within the
// span, and extend() the same (to within the rounding of the span's end)
// up to staleSpans spans when the measured rate is the line's, for rates
// across the whole range the sanity check lets through (1/64 to 64 ns per
// tick, and the 5% slow-down of a lead); counters a little below the anchor
// read as the anchor, further below or past the spans are refused. No
// overflow for the largest d and mult.
func TestReviewAtExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	two32 := new(big.Int).Lsh(big.NewInt(1), 32)
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
		if i%3 == 0 {
			rate *= 1 - float64(maxErrorNs)/float64(spanNs) // the slowest a lead makes it
		}
		mult := uint64(rate * (1 << 32))
		span := uint64(float64(spanNs) / rate)
		t0 := rng.Uint64()
		ns := rng.Int64N(1 << 62)
		var a anchor
		a.tsc.Store(t0)
		a.ns.Store(ns)
		a.mult.Store(mult)
		a.span.Store(span)
		a.base.Store(mult)
		l, _ := a.load()
		at := func(x uint64, spans uint64) (int64, bool) {
			if spans == 1 {
				return a.at(x)
			}
			return l.extend(x)
		}
		for _, spans := range []uint64{1, staleSpans} {
			lim := span * spans
			for _, d := range []uint64{0, 1, lim / 2, lim - 1, rng.Uint64N(lim)} {
				v, ok := at(t0+d, spans)
				if !ok {
					t.Fatalf("rate %v: at(t0+%d, %d) refused inside %d ticks", rate, d, spans, lim)
				}
				want := new(big.Int).Mul(new(big.Int).SetUint64(d), new(big.Int).SetUint64(mult))
				want.Quo(want, two32)
				want.Add(want, big.NewInt(ns))
				if slack := int64(spans / staleSpans); !want.IsInt64() || v < want.Int64()-slack || v > want.Int64() {
					t.Fatalf("rate %v mult %d: at(t0+%d) = %d, want %v", rate, mult, d, v, want)
				}
			}
			if _, ok := at(t0+lim, spans); ok {
				t.Fatalf("rate %v: at(t0+%d spans) accepted", rate, spans)
			}
			if _, ok := at(t0+1<<63-1, spans); ok {
				t.Fatal("at 2^63-1 ticks after the anchor accepted")
			}
			if _, ok := at(t0+1<<63, spans); ok {
				t.Fatal("at 2^63 ticks from the anchor accepted")
			}
			for _, back := range []uint64{1, skewTicks / 2, skewTicks - 1} {
				if v, ok := at(t0-back, spans); !ok || v != ns {
					t.Fatalf("at %d ticks below the anchor = %d, %v; want the anchor's %d", back, v, ok, ns)
				}
			}
			if _, ok := at(t0-skewTicks-1, spans); ok {
				t.Fatal("at more than skewTicks below the anchor accepted")
			}
		}
	}
}

// TestReviewNowWithinTensOfNs: "it stays within one span's drift of
// CLOCK_MONOTONIC: nanoseconds to tens of nanoseconds". Only reads whose
// Mono bracket is tight (no preemption, no interrupt) count; they must lie
// within reviewTol of it, across 30 renewals.
func TestReviewNowWithinTensOfNs(t *testing.T) {
	if !running(t) {
		t.Skip("the counter is not used here")
	}
	tol := reviewTol()
	maxBracket := int64(300)
	if race {
		maxBracket = 3000
	}
	var worst, n int64
	end := Mono() + 30*spanNs
	for Mono() < end {
		for _, read := range []func() int64{Now, Stamp} {
			a := Mono()
			v := read()
			b := Mono()
			if b-a > maxBracket {
				continue
			}
			n++
			if v < a-tol || v > b+tol {
				t.Fatalf("read %d is %d ns outside its Mono bracket [%d, %d] (width %d); state %d", v, max(a-v, v-b), a, b, b-a, state.Load())
			}
			worst = max(worst, a-v, v-b)
		}
	}
	if n < 1000 {
		t.Skipf("only %d tight brackets: machine too noisy", n)
	}
	t.Logf("%d tight samples, worst %d ns outside the bracket", n, worst)
}

// TestReviewNeverBackManyGoroutines: "Now never goes back within a
// goroutine", with more goroutines than CPUs (so renewers get preempted),
// reading Now, Stamp and both, while leads are published now and then (a
// counter that jumped forward by a few microseconds, below maxErrorNs) so
// that renewals take the "ahead" branch with its slower rate.
func TestReviewNeverBackManyGoroutines(t *testing.T) {
	useCounter(t)
	dur := 60 * spanNs
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(3 * time.Millisecond):
			}
			publishAhead(int64(1+i%4) * int64(time.Microsecond))
		}
	}()
	var readers sync.WaitGroup
	for g := range 8 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			var lastNow, lastStamp int64
			end := Mono() + dur
			for i := 0; Mono() < end; i++ {
				switch g % 3 {
				case 0:
					v := Now()
					if v < lastNow {
						t.Errorf("goroutine %d: Now %d after %d: back %d ns", g, v, lastNow, lastNow-v)
						return
					}
					lastNow = v
				case 1:
					v := Stamp()
					if v < lastStamp {
						t.Errorf("goroutine %d: Stamp %d after %d: back %d ns", g, v, lastStamp, lastStamp-v)
						return
					}
					lastStamp = v
				case 2:
					v := Now()
					if v < lastNow {
						t.Errorf("goroutine %d (mixed): Now %d after %d: back %d ns", g, v, lastNow, lastNow-v)
						return
					}
					lastNow = v
					s := Stamp()
					if s < lastStamp {
						t.Errorf("goroutine %d (mixed): Stamp %d after %d: back %d ns", g, s, lastStamp, lastStamp-s)
						return
					}
					lastStamp = s
				}
				if i%256 == 0 {
					time.Sleep(time.Duration(i%5) * time.Microsecond)
				}
			}
		}()
	}
	readers.Wait()
	close(stop)
	wg.Wait()
	if s := state.Load(); s != stateRunning {
		t.Errorf("state %d after leads of at most 4 us, want running", s)
	}
}

// TestReviewStaleReaderAcrossLeadRenewal: "a renewal never steps back". A
// renewer reads its pair (counter, Mono) and only then publishes. On
// 0e1ed0b the other goroutines kept extending the old line past the pair
// meanwhile, above the slower new line (back by 4 us with a 40 us lead and
// a 100 us delay); on 4b056d3 they read it frozen at its end, which could
// lag Mono by an idle's length. Now they wait for the publication, so every
// value of the old line is at most its end: the new line, from the pair on,
// must never be below that end.
func TestReviewStaleReaderAcrossLeadRenewal(t *testing.T) {
	useCounter(t)
	const lead = 40 * int64(time.Microsecond) // below maxErrorNs: absorbed, not reset
	forgeLead(t, lead)
	old := current.Load()
	time.Sleep(time.Duration(2 * spanNs))
	Now() // renews
	nw := current.Load()
	if nw == old || state.Load() != stateRunning {
		t.Fatalf("no renewal in the ahead branch (state %d)", state.Load())
	}
	pairTSC := nw.tsc.Load()
	window := uint64(float64(100*time.Microsecond) * float64(1<<32) / float64(old.mult.Load()))
	var worst int64
	var worstAt uint64
	for k := uint64(0); k <= 100; k++ {
		x := pairTSC + window*k/100
		ol, okOld := old.load()
		if !okOld {
			t.Fatalf("old anchor rewritten")
		}
		vOld := ol.end()        // the most any read of the old line gave
		vNew, okNew := nw.at(x) // the next read, on the new anchor
		if !okNew {
			t.Fatalf("new anchor refused %d ticks after its start", x-pairTSC)
		}
		if vOld-vNew > worst {
			worst, worstAt = vOld-vNew, x-pairTSC
		}
	}
	if worst > 0 {
		t.Fatalf("the old line's end is %d ns later than the new line %d ticks after the renewal's pair: Now goes back by %d ns across the renewal", worst, worstAt, worst)
	}
}

// TestReviewResetAfterLeadNeverBack: "a renewal never steps back", "Now never
// goes back", and "a lead beyond maxErrorNs starts calibration again". A line
// ahead of Mono by more than maxErrorNs (a counter that jumped forward) is
// dropped, and calibration returns Mono: behind what the same goroutine read
// an instant before from the line.
func TestReviewResetAfterLeadNeverBack(t *testing.T) {
	if !counterInUse() {
		t.Skip("the counter is not used here")
	}
	restartForTest(t)
	defer restartForTest(t)
	const lead = 2 * maxErrorNs
	for attempt := 1; ; attempt++ {
		running(t)
		forgeLead(t, lead)
		// Read until the reset. It counts only if this goroutine read the
		// line ahead (by lead/2 at least) just before (within 20 us of
		// Mono): otherwise it was descheduled across the renewal.
		var last, lastAhead, lastM, worst int64
		sawAhead := false
		end := Mono() + 5*spanNs
		for Mono() < end && state.Load() == stateRunning {
			v := Now()
			m := Mono()
			if v-m > lead/2 {
				sawAhead, lastAhead = true, v
			}
			worst = max(worst, last-v)
			last = max(last, v)
			if state.Load() == stateRunning {
				lastM = m
			} else if m-lastM > 20*int64(time.Microsecond) {
				sawAhead = false // descheduled between the last two reads
			}
		}
		if s := state.Load(); s != stateCalibrating {
			t.Fatalf("state %d after a lead of %d ns, want calibrating (a reset)", s, lead)
		}
		v := Now() // one more, right after the reset
		worst = max(worst, last-v)
		if !sawAhead {
			if attempt < 10 {
				t.Logf("attempt %d: no read of the forged line just before the reset; again", attempt)
				continue
			}
			t.Skip("never read the forged line just before its reset: machine too noisy")
		}
		if worst > 0 {
			t.Fatalf("Now went back by %d ns within one goroutine when the line %d ns ahead was reset (last read on the line %d, first after the reset %d)", worst, lead, lastAhead, v)
		}
		return
	}
}

// TestReviewAbsorbedLeadThenIdleNoReset: "a lead or lag beyond maxErrorNs (a
// counter that jumped) starts calibration again". A small lead (20 us, well
// under maxErrorNs) is absorbed by a slower rate meant for one span; if the
// process then reads no clock for a few milliseconds (under staleSpans), the
// next renewal extrapolates the slowed line over all those spans (renew,
// a.at(s.tsc, staleSpans)), finds it far behind Mono and resets, though the
// counter never jumped. After maxResets such idles the counter is given up
// for good.
func TestReviewAbsorbedLeadThenIdleNoReset(t *testing.T) {
	useCounter(t)
	const lead = 20 * int64(time.Microsecond)
	resetsSeen := 0
	for i := 1; i <= maxResets+1; i++ {
		forgeLead(t, lead)
		time.Sleep(time.Duration(2 * spanNs))
		Now() // renews: ahead, rate slowed by lead/spanNs
		if s := state.Load(); s != stateRunning {
			t.Fatalf("round %d: state %d after a %d ns lead, want running", i, s, lead)
		}
		time.Sleep(8 * time.Millisecond) // idle: no read, under staleSpans spans
		Now()
		if s := state.Load(); s != stateRunning {
			resetsSeen++
			t.Logf("round %d: state %d after 8 ms idle following an absorbed %d ns lead (resets %d)", i, s, lead, resets)
			if s == stateOff {
				break
			}
			running(t)
		}
	}
	if resetsSeen > 0 {
		t.Fatalf("%d resets (state now %d, off is %d) from absorbed leads of %d ns (< maxErrorNs %d) followed by 8 ms without a read: the counter never jumped", resetsSeen, state.Load(), stateOff, lead, maxErrorNs)
	}
}

// TestReviewCalibrationBoundary: "for calibrateNs every call returns Mono",
// then an anchor; Now never goes back within a goroutine across the first
// anchor's publication, with several goroutines reading at the boundary.
func TestReviewCalibrationBoundary(t *testing.T) {
	if !counterInUse() {
		t.Skip("the counter is not used here")
	}
	defer restartForTest(t)
	for round := range 6 {
		restartForTest(t)
		first := Now() // starts calibrating
		if state.Load() != stateCalibrating {
			t.Fatalf("round %d: state %d after the first read", round, state.Load())
		}
		var wg sync.WaitGroup
		for g := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				last := Now()
				end := first + calibrateNs + 3*spanNs
				for Mono() < end {
					a := Mono()
					v := Now()
					c := current.Load()
					b := Mono()
					if v < last {
						t.Errorf("round %d goroutine %d: Now %d after %d: back %d ns at the calibration boundary", round, g, v, last, last-v)
						return
					}
					last = v
					if c == nil && (v < a || v > b) {
						// no anchor yet after the read: Now was Mono
						t.Errorf("round %d: Now %d during calibration outside Mono [%d, %d]", round, v, a, b)
						return
					}
					if c != nil && b < first+calibrateNs {
						// the anchor was published before b was read
						t.Errorf("round %d: an anchor before calibrateNs passed (%d ns early)", round, first+calibrateNs-b)
						return
					}
				}
			}()
		}
		wg.Wait()
		// The state moves on a read: make sure one came after the end
		// of calibration (on a loaded machine every goroutine's last read
		// may have been before it, each descheduled past its last check).
		Now()
		if state.Load() != stateRunning {
			t.Fatalf("round %d: state %d after calibration", round, state.Load())
		}
	}
}

// TestReviewWarpTogether: Warp moves Mono, Now, Stamp and the Epoch
// conversion (message.DeadlineAt) together, Now does not go back across it,
// and the renewals after it neither reset nor drift (the baselines moved
// too). Also when Warp falls inside calibration.
func TestReviewWarpTogether(t *testing.T) {
	keepEpoch(t)
	deadlineAt := func(tm time.Time) int64 { return int64(tm.Sub(Epoch)) + EpochBoot } // message.DeadlineAt
	const w = time.Hour
	check := func(phase string) {
		t.Helper()
		tol := reviewTol()
		for try := 0; ; try++ {
			a := Mono()
			n0, s0, d0 := Now(), Stamp(), deadlineAt(time.Now())
			b := Mono()
			if b-a > 20*int64(time.Microsecond) && try < 100 {
				continue
			}
			Warp(w)
			a2 := Mono()
			n1, s1, d1 := Now(), Stamp(), deadlineAt(time.Now())
			b2 := Mono()
			if b2-a2 > 20*int64(time.Microsecond) && try < 100 {
				Warp(-w) // retry the sample; the clock is back where it was
				continue
			}
			if n1 < n0 {
				t.Fatalf("%s: Now went back across Warp: %d after %d", phase, n1, n0)
			}
			for _, r := range []struct {
				name string
				v0   int64
				v1   int64
			}{{"Now", n0, n1}, {"Stamp", s0, s1}, {"DeadlineAt(time.Now())", d0, d1}} {
				if r.v0 < a-tol || r.v0 > b+tol {
					t.Fatalf("%s: %s %d before Warp outside Mono [%d, %d]", phase, r.name, r.v0, a, b)
				}
				if r.v1 < a2-tol || r.v1 > b2+tol {
					t.Fatalf("%s: %s %d after Warp outside Mono [%d, %d] (off by %d ns)", phase, r.name, r.v1, a2, b2, max(a2-r.v1, r.v1-b2))
				}
			}
			if a2-b < int64(w) || a2-b > int64(w)+int64(time.Second) {
				t.Fatalf("%s: Mono moved by %d across Warp(%v)", phase, a2-b, w)
			}
			return
		}
	}
	track := func(phase string, spans int64) {
		t.Helper()
		tol := int64(time.Microsecond)
		if race {
			tol *= 10
		}
		last := Now()
		end := Mono() + spans*spanNs
		for Mono() < end {
			a := Mono()
			v := Now()
			b := Mono()
			if v < last {
				t.Fatalf("%s: Now back by %d ns", phase, last-v)
			}
			last = v
			if b-a > 20*int64(time.Microsecond) {
				continue
			}
			if v < a-tol || v > b+tol {
				t.Fatalf("%s: Now %d outside Mono [%d, %d] by %d ns (state %d)", phase, v, a, b, max(a-v, v-b), state.Load())
			}
		}
	}

	if counterInUse() {
		restartForTest(t)
		running(t)
		r0 := resets
		check("running")
		track("after Warp", 10)
		if state.Load() != stateRunning || resets != r0 {
			t.Fatalf("state %d, resets %d -> %d after Warp while running", state.Load(), r0, resets)
		}
		// Inside calibration: the 20 ms still run on real time.
		restartForTest(t)
		Now()
		check("calibrating")
		if state.Load() != stateCalibrating {
			t.Fatalf("state %d right after Warp in calibration", state.Load())
		}
		time.Sleep(time.Duration(2 * calibrateNs))
		Now()
		if state.Load() != stateRunning {
			t.Fatalf("state %d after calibration with a Warp inside it, want running", state.Load())
		}
		track("calibrated across Warp", 10)
	}
	// Off (or a build without the counter): Mono all the way.
	restartForTest(t)
	lockRenewing()
	state.Store(stateOff)
	renewing.Store(false)
	check("off")
}

// TestReviewNoAllocSlowPaths: "no allocation", including the paths the
// package test does not measure: calibrating reads, a restart, a reset.
func TestReviewNoAllocSlowPaths(t *testing.T) {
	if !counterInUse() {
		t.Skip("the counter is not used here")
	}
	restartForTest(t)
	defer restartForTest(t)
	if n := testing.AllocsPerRun(100, func() {
		lockRenewing()
		current.Store(nil)
		state.Store(stateUnknown)
		resets = 0
		renewing.Store(false)
		Now()   // restart
		Stamp() // calibrating
	}); n != 0 {
		t.Fatalf("%v allocs per restart and calibrating read", n)
	}
	running(t)
	if n := testing.AllocsPerRun(5, func() {
		lockRenewing()
		if a := current.Load(); a != nil {
			a.seq.Add(1)
			a.ns.Add(-2 * maxErrorNs)
			a.seq.Add(1)
		}
		resets = 0
		renewing.Store(false)
		time.Sleep(time.Duration(2 * spanNs))
		Now() // reset
		time.Sleep(time.Duration(calibrateNs + spanNs))
		Now() // anchor again
	}); n != 0 {
		t.Fatalf("%v allocs per reset and recalibration", n)
	}
}

// TestReviewRateSanityGivesUpWithoutGoingBack: a rate outside 1/64..64 ns
// per tick gives the counter up; reads are Mono from then on and do not go
// back from what the line gave.
func TestReviewRateSanityGivesUpWithoutGoingBack(t *testing.T) {
	useCounter(t)
	lockRenewing()
	older.ns -= 1 << 50 // the baseline now says ~10^15 ns passed: rate way above 64
	renewing.Store(false)
	last := Now()
	end := Mono() + 3*spanNs
	for Mono() < end {
		v := Now()
		if v < last {
			t.Fatalf("Now back by %d ns when the counter was given up", last-v)
		}
		last = v
	}
	// The renewal that judges the rate runs on a read past the span: make
	// sure one came (descheduled, the loop may have read last before it).
	if v := Now(); v < last {
		t.Fatalf("Now back by %d ns when the counter was given up", last-v)
	}
	if state.Load() != stateOff || current.Load() != nil {
		t.Fatalf("state %d after an impossible rate, want off", state.Load())
	}
	a := Mono()
	v := Now()
	b := Mono()
	if v < a || v > b {
		t.Fatalf("off: Now %d not Mono [%d, %d]", v, a, b)
	}
}

// TestReviewPuregoIsMono: in a build without the counter (purego, other
// architectures) Now and Stamp are Mono from the first call on, with no
// calibration and no anchor. Run with -tags purego to exercise it.
func TestReviewPuregoIsMono(t *testing.T) {
	if haveTSC {
		t.Skip("this build reads the counter (try -tags purego)")
	}
	restartForTest(t)
	defer restartForTest(t)
	for range 1000 {
		a := Mono()
		v, s := Now(), Stamp()
		b := Mono()
		if v < a || v > b || s < a || s > b {
			t.Fatalf("Now %d, Stamp %d outside Mono [%d, %d]", v, s, a, b)
		}
	}
	if state.Load() != stateOff || current.Load() != nil {
		t.Fatalf("state %d, anchor %v without a counter", state.Load(), current.Load())
	}
}

// TestReviewSeqlockNeverMixes: "readers never mix fields of two anchors". A
// writer rewrites one anchor, as renew does, alternately with two lines;
// readers' at() must return one line's value or refuse, never a mix.
func TestReviewSeqlockNeverMixes(t *testing.T) {
	type line struct{ tsc, ns, mult, span uint64 }
	lines := [2]line{{1000, 5000, 1 << 32, 100}, {1040, 9000, 3 << 32, 400}}
	const x = 1050
	// at(1050): line 0 gives 5050; line 1 gives 9000 + 10*3 = 9030.
	want := map[int64]bool{5050: true, 9030: true}
	var a anchor
	write := func(l line) {
		a.seq.Add(1)
		a.tsc.Store(l.tsc)
		a.ns.Store(int64(l.ns))
		a.mult.Store(l.mult)
		a.span.Store(l.span)
		a.seq.Add(1)
	}
	write(lines[0])
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			write(lines[i%2])
		}
	}()
	var readers sync.WaitGroup
	var refused, read [4]int
	for g := range 4 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for range 200000 {
				v, ok := a.at(x)
				if !ok {
					refused[g]++
					continue
				}
				read[g]++
				if !want[v] {
					t.Errorf("at mixed two anchors: %d", v)
					return
				}
			}
		}()
	}
	readers.Wait()
	close(stop)
	wg.Wait()
	t.Logf("reads %v, refused %v", read, refused)
}

// TestReviewRingWrapStaleReader: a reader that loaded current, then was
// preempted while the ring of 4 came round (more than 4 renewals), must get
// from its anchor pointer either a refusal or a value on a genuine line
// (near Mono): with a counter read before the wrap (Now reads the counter
// before at() loads the fields) or after it.
func TestReviewRingWrapStaleReader(t *testing.T) {
	useCounter(t)
	tol := int64(time.Microsecond)
	if race {
		tol *= 10
	}
	for round := range 5 {
		held := current.Load()
		heldTSC := held.tsc.Load()
		m0 := Mono()
		x0 := readTSCOrdered() // read before the wrap
		for range len(anchors) + 1 + round {
			time.Sleep(time.Duration(spanNs + spanNs/4))
			Now() // renews
		}
		if c := current.Load(); c.tsc.Load() == heldTSC {
			t.Fatalf("round %d: no renewal", round)
		}
		if held.tsc.Load() == heldTSC {
			t.Logf("round %d: the held slot was not rewritten (a renewal's pair failed)", round)
		}
		if v, ok := held.at(x0); ok && (v < m0-tol || v > Mono()) {
			t.Fatalf("round %d: stale pointer with a counter read before the wrap gave %d, not on a line near %d", round, v, m0)
		}
		a := Mono()
		v, ok := held.at(readTSCOrdered())
		b := Mono()
		if ok && b-a < 20*int64(time.Microsecond) && (v < a-tol || v > b+tol) {
			t.Fatalf("round %d: stale pointer after the wrap gave %d outside Mono [%d, %d]", round, v, a, b)
		}
	}
}
