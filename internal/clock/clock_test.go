package clock

import (
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// restartForTest puts the clock back where a process starts it.
func restartForTest(t *testing.T) {
	t.Helper()
	for !renewing.CompareAndSwap(false, true) {
		time.Sleep(time.Microsecond)
	}
	current.Store(nil)
	state.Store(stateUnknown)
	floor.Store(0)
	resets = 0
	for i := range anchors {
		// A test that put Epoch back after a Warp left lines from the
		// future: none of them may judge a later pair as older.
		anchors[i].mono.Store(0)
	}
	renewing.Store(false)
}

// running calibrates the clock (it takes calibrateNs) and reports whether
// it runs on the counter here; where it does not, Now must be Mono.
func running(t *testing.T) bool {
	t.Helper()
	Now()
	time.Sleep(2 * time.Duration(calibrateNs))
	Now()
	if !trusted() {
		if state.Load() != stateOff {
			t.Fatalf("state %d on a machine whose counter is not trusted, want off", state.Load())
		}
		return false
	}
	if state.Load() != stateRunning || current.Load() == nil {
		t.Fatalf("state %d after calibration, want running", state.Load())
	}
	return true
}

func clockGettime(t *testing.T) int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano()
}

func TestMonoIsClockMonotonic(t *testing.T) {
	for range 100 {
		a := clockGettime(t)
		m := Mono()
		b := clockGettime(t)
		// Epoch and EpochBoot were read a few tens of ns apart.
		if m < a-int64(time.Microsecond) || m > b+int64(time.Microsecond) {
			t.Fatalf("Mono %d outside [%d, %d] of CLOCK_MONOTONIC", m, a, b)
		}
	}
}

// TestNowTracksMono reads Now between two Mono reads for several spans (so
// across renewals): it must stay within a microsecond of them.
func TestNowTracksMono(t *testing.T) {
	running(t)
	tol := int64(time.Microsecond)
	if race {
		tol *= 10 // every read is instrumented: calibration is coarser
	}
	worst := int64(0)
	end := Mono() + 20*spanNs
	for n := 0; Mono() < end || n < 1000; n++ {
		for _, read := range []func() int64{Now, Stamp} {
			a := Mono()
			v := read()
			b := Mono()
			if b-a > 20*int64(time.Microsecond) {
				continue // preempted between the reads
			}
			if v < a-tol || v > b+tol {
				t.Fatalf("read %d outside [%d, %d] (Mono before and after) by more than %d ns", v, a, b, tol)
			}
			worst = max(worst, a-v, v-b)
		}
	}
	t.Logf("worst distance outside the Mono bracket: %d ns", worst)
}

// TestNowNeverGoesBack reads Now in a loop across many renewals, on several
// goroutines at once (so that renewals race with readers).
func TestNowNeverGoesBack(t *testing.T) {
	running(t)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			read := Now
			if g%2 == 1 {
				read = Stamp
			}
			last := read()
			end := Mono() + 30*spanNs
			for i := 0; Mono() < end; i++ {
				v := read()
				if v < last {
					t.Errorf("goroutine %d: read %d after %d: back by %d ns", g, v, last, last-v)
					return
				}
				last = v
				if i%64 == 0 {
					time.Sleep(time.Duration(i%3) * time.Microsecond) // let renewals fall anywhere
				}
			}
		}()
	}
	wg.Wait()
}

// TestNowWithoutCounter: when the counter is not trusted (or this build
// has none), Now and Stamp are Mono.
func TestNowWithoutCounter(t *testing.T) {
	restartForTest(t)
	defer restartForTest(t)
	state.Store(stateOff)
	a := Mono()
	v, s := Now(), Stamp()
	b := Mono()
	if v < a || v > b || s < a || s > b {
		t.Fatalf("Now %d, Stamp %d outside [%d, %d]: not Mono", v, s, a, b)
	}
	if current.Load() != nil {
		t.Fatal("an anchor while off")
	}
}

// TestCalibrationStartsWithMono: right after start (calibrating), reads are
// Mono's, and no anchor is published before calibrateNs has passed.
func TestCalibrationStartsWithMono(t *testing.T) {
	if !haveTSC || !trusted() {
		t.Skip("the counter is not used here")
	}
	restartForTest(t)
	defer restartForTest(t)
	a := Mono()
	v := Now()
	b := Mono()
	if v < a || v > b {
		t.Fatalf("first Now %d outside [%d, %d]", v, a, b)
	}
	if state.Load() != stateCalibrating || current.Load() != nil {
		t.Fatalf("state %d (anchor %v) right after the first read, want calibrating without an anchor", state.Load(), current.Load())
	}
	running(t)
}

// forgeLead moves the current anchor's time by d, as a counter that jumped
// or a rate that drifted would.
func forgeLead(t *testing.T, d int64) {
	t.Helper()
	for !renewing.CompareAndSwap(false, true) {
		time.Sleep(time.Microsecond)
	}
	defer renewing.Store(false)
	a := current.Load()
	if a == nil {
		t.Fatal("no anchor")
	}
	a.seq.Add(1)
	a.ns.Add(d)
	a.seq.Add(1)
}

// TestRenewAbsorbsLead: an anchor ahead of Mono by a little is followed by
// one that starts on its line (Now does not go back) and runs slower, so
// that a few spans later Now is back near Mono.
func TestRenewAbsorbsLead(t *testing.T) {
	if !haveTSC || !trusted() {
		t.Skip("the counter is not used here")
	}
	restartForTest(t)
	defer restartForTest(t)
	running(t)
	const lead = 20 * int64(time.Microsecond)
	forgeLead(t, lead)
	before := Now()
	if m := Mono(); before-m < lead/2 {
		t.Fatalf("forged lead not visible: Now %d, Mono %d", before, m)
	}
	time.Sleep(time.Duration(2 * spanNs))
	after := Now() // renews
	if after < before {
		t.Fatalf("Now went back across the renewal: %d after %d", after, before)
	}
	if state.Load() != stateRunning {
		t.Fatalf("state %d after a lead under maxErrorNs, want running", state.Load())
	}
	// Each span absorbs up to a span's worth of the lead at the slowed rate.
	deadline := time.Now().Add(time.Second)
	for {
		time.Sleep(time.Duration(spanNs))
		v := Now()
		b := Mono() // after Now: what Now may not pass by much
		if v-b < int64(time.Microsecond) || race && v-b < 10*int64(time.Microsecond) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lead not absorbed after 1 s: Now %d ns ahead of a later Mono", v-b)
		}
	}
}

// TestJumpRecalibrates: a line more than maxErrorNs off starts calibration
// again (Now is Mono meanwhile); after maxResets of those the counter is
// given up.
func TestJumpRecalibrates(t *testing.T) {
	if !haveTSC || !trusted() {
		t.Skip("the counter is not used here")
	}
	restartForTest(t)
	defer restartForTest(t)
	running(t)
	for i := 1; i <= maxResets+1; i++ {
		forgeLead(t, -2*maxErrorNs) // behind: a reset must not go back
		time.Sleep(time.Duration(2 * spanNs))
		a := Mono()
		v := Now() // renews, finds the line off, resets
		b := Mono()
		if v < a || v > b {
			t.Fatalf("reset %d: Now %d outside [%d, %d]", i, v, a, b)
		}
		if i <= maxResets {
			if state.Load() != stateCalibrating {
				t.Fatalf("reset %d: state %d, want calibrating", i, state.Load())
			}
			running(t)
		} else if state.Load() != stateOff {
			t.Fatalf("after %d resets: state %d, want off", i, state.Load())
		}
	}
}

// TestStaleAnchorRefused: a reader holding an anchor that is rewritten
// under it (the ring came round while it was preempted) must not mix the
// two.
func TestStaleAnchorRefused(t *testing.T) {
	var a anchor
	a.tsc.Store(1 << 20)
	a.ns.Store(5000)
	a.mult.Store(1 << 32) // 1 ns per tick
	a.base.Store(2 << 32) // measured: 2 ns per tick
	a.span.Store(100)
	if v, ok := a.at(1<<20 + 50); !ok || v != 5050 {
		t.Fatalf("at(+50) = %d, %v; want 5050, true", v, ok)
	}
	if _, ok := a.at(1<<20 + 100); ok {
		t.Fatal("at past the span accepted")
	}
	if v, ok := a.at(1<<20 - 10); !ok || v != 5000 {
		t.Fatalf("at a counter just below the anchor = %d, %v; want the anchor's 5000", v, ok)
	}
	if _, ok := a.at(1<<20 - 2*skewTicks); ok {
		t.Fatal("at a counter far below the anchor accepted")
	}
	l, _ := a.load()
	if v := l.end(); v != 5100 {
		t.Fatalf("end = %d, want 5100", v)
	}
	if v, ok := l.extend(1<<20 + 150); !ok || v != 5200 {
		t.Fatalf("extend 50 ticks past the span = %d, %v; want 5100 + 50*2", v, ok)
	}
	if _, ok := l.extend(1<<20 + staleSpans*100); ok {
		t.Fatal("extend beyond staleSpans accepted")
	}
	a.seq.Add(1) // being written
	if _, ok := a.at(1<<20 + 50); ok {
		t.Fatal("at of an anchor being written accepted")
	}
}

func TestNowAllocatesNothing(t *testing.T) {
	running(t)
	if n := testing.AllocsPerRun(1000, func() { Now(); Stamp() }); n != 0 {
		t.Fatalf("%v allocs per Now+Stamp", n)
	}
	// Renewals included.
	if n := testing.AllocsPerRun(20, func() { time.Sleep(time.Duration(spanNs)); Now() }); n != 0 {
		t.Fatalf("%v allocs per renewal", n)
	}
}

func BenchmarkNow(b *testing.B) {
	for range 3 {
		Now()
		time.Sleep(time.Duration(calibrateNs))
	}
	b.Run("Mono", func(b *testing.B) {
		var s int64
		for range b.N {
			s += Mono()
		}
		sink = s
	})
	b.Run("Now", func(b *testing.B) {
		var s int64
		for range b.N {
			s += Now()
		}
		sink = s
	})
	b.Run("Stamp", func(b *testing.B) {
		var s int64
		for range b.N {
			s += Stamp()
		}
		sink = s
	})
}

var sink int64
