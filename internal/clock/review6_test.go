package clock

// Sixth review, of 28604b2 (every renewal that is not fresh restarts the
// rate's baselines; the last rate serves until they are calibrateNs long),
// under realistic use: real time passing, real sleeps, no crafted anchors
// except where a 30 s wait is simulated (the rebase). Each test names the
// claim it tries to break. Helpers come from clock_test.go (restartForTest,
// running), review_test.go (counterInUse, lockRenewing, reviewTol),
// review2_test.go (tightBracket, r2Tol), review3_test.go (r3Timeout) and
// review4_test.go (r4Run, r4TrackSigned).

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// r6Pair is a pair (counter, Mono) with a tight bracket, read as renew
// reads its own.
func r6Pair(t *testing.T) sample {
	t.Helper()
	for range 1000 {
		if s, ok := pair(); ok {
			return s
		}
		runtime.Gosched()
	}
	t.Fatal("no tight pair in 1000 tries")
	return sample{}
}

// r6Rate is the rate (ns per tick) between two pairs.
func r6Rate(a, b sample) float64 { return float64(b.ns-a.ns) / float64(b.tsc-a.tsc) }

// r6Rel is how far the 32.32 rate base lies from rate, relatively.
func r6Rel(base uint64, rate float64) float64 {
	return (float64(base)/(1<<32) - rate) / rate
}

// r6Baselines reads older and recent under renewing (no Now meanwhile).
func r6Baselines() (o, r sample, n int) {
	lockRenewing()
	defer renewing.Store(false)
	return older, recent, resets
}

// r6Load keeps the machine busy as a server would be: GOMAXPROCS
// goroutines computing and allocating (so the collector runs, with its
// stop-the-world pauses, and readers are preempted). It returns the stop.
func r6Load() func() {
	var stop atomic.Bool
	var wg sync.WaitGroup
	for g := range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var keep [][]byte
			for i := 0; !stop.Load(); i++ {
				b := make([]byte, 512+i%4096)
				b[0] = byte(g)
				keep = append(keep, b)
				if len(keep) > 1<<12 {
					keep = keep[:0]
				}
			}
		}()
	}
	return func() { stop.Store(true); wg.Wait() }
}

// r6Sample is a read of Now (or Stamp) inside a Mono bracket.
type r6Sample struct{ a, v, b int64 }

func (s r6Sample) tight() bool { return s.b-s.a <= tightBracket }
func (s r6Sample) off() int64  { return max(s.a-s.v, s.v-s.b) }

func r6Read(read func() int64) r6Sample {
	a := Mono()
	v := read()
	b := Mono()
	return r6Sample{a, v, b}
}

// TestReview6SparseReadsNeverFresh: "it stays within one span's drift of
// CLOCK_MONOTONIC: nanoseconds to tens of nanoseconds" and "Now never goes
// back", for a process that reads the clock once every 17-40 ms (real
// sleeps) for over a second, from its very first read (calibration
// included). Every renewal after calibration is then not fresh: it
// restarts the baselines, and the rate measured at calibration serves
// forever. After each sparse read the goroutine reads on for most of the
// line's span (so the line's rate is visible, without renewing). Checks:
// no read back, no read further than reviewTol from a tight Mono bracket,
// no reset, the state running from the end of calibration on, every
// renewal not fresh (baselines at its pair), the base unchanged; logs how
// far the calibration rate lies from the rate over the whole run (and so
// how far a line would drift per span and over the run).
func TestReview6SparseReadsNeverFresh(t *testing.T) {
	if !counterInUse() {
		t.Skip("the counter is not used here")
	}
	t.Run("idle machine", func(t *testing.T) { r6Sparse(t, 1200*time.Millisecond) })
	t.Run("loaded", func(t *testing.T) {
		defer r6Load()()
		r6Sparse(t, 800*time.Millisecond)
	})
}

func r6Sparse(t *testing.T, dur time.Duration) {
	restartForTest(t)
	defer restartForTest(t)
	p0 := r6Pair(t)
	rng := rand.New(rand.NewPCG(6, 1))
	tol := reviewTol()
	var (
		last, worst                int64
		sparse, tight, calibrating int
		renewals, notFresh, cross  int
		baseCal                    uint64
		firstLine                  *anchor
		worstWithin                int64 // worst off at the end of a line's span
		sparseWidth, lineWidth     int64 // Mono brackets of the renewing reads, of the others
		lineReads                  int64
	)
	_, _, r0 := r6Baselines()
	end := time.Now().Add(dur)
	var failures []string
	fail := func(f string, args ...any) {
		if len(failures) < 8 {
			failures = append(failures, fmt.Sprintf(f, args...))
		}
	}
	check := func(s r6Sample, what string) {
		if s.v < last {
			fail("%s: Now %d after %d: back %d ns", what, s.v, last, last-s.v)
		}
		last = max(last, s.v)
		if s.tight() {
			tight++
			if s.off() > tol {
				fail("%s: Now %d is %d ns outside its Mono bracket [%d, %d] (tolerance %d)", what, s.v, s.off(), s.a, s.b, tol)
			}
			worst = max(worst, s.off())
		}
	}
	r4Run(t, "sparse reads", func() {
		for i := 0; time.Now().Before(end); i++ {
			if i > 0 {
				time.Sleep(time.Duration(17+rng.IntN(24)) * time.Millisecond)
			}
			before := current.Load()
			s := r6Read(Now)
			sparse++
			check(s, fmt.Sprintf("sparse read %d", i))
			st := state.Load()
			a := current.Load()
			if st == stateCalibrating {
				calibrating++
				if firstLine != nil {
					fail("sparse read %d: calibrating again after the first line", i)
				}
				continue
			}
			if st != stateRunning || a == nil {
				fail("sparse read %d: state %d, anchor %v", i, st, a)
				return
			}
			l, _ := a.load()
			if firstLine == nil {
				firstLine, baseCal = a, l.base
				continue
			}
			if a == before {
				fail("sparse read %d: no renewal after a sleep past staleSpans", i)
				continue
			}
			renewals++
			sparseWidth += s.b - s.a
			o, r, _ := r6Baselines()
			if o == r && o.ns == l.mono && o.tsc == l.tsc {
				notFresh++
			}
			if l.base != baseCal {
				fail("sparse read %d: base %d, calibration's %d", i, l.base, baseCal)
			}
			// Read on along the line for most of its span.
			until := l.mono + spanNs*8/10
			var s2 r6Sample
			for Mono() < until {
				s2 = r6Read(Now)
				lineWidth += s2.b - s2.a
				lineReads++
				check(s2, fmt.Sprintf("read on the line of sparse read %d", i))
			}
			if current.Load() != a {
				cross++ // preempted past the span: a fresh renewal
			} else if s2.tight() {
				worstWithin = max(worstWithin, s2.off())
			}
		}
	})
	p1 := r6Pair(t)
	_, _, r1 := r6Baselines()
	ref := r6Rate(p0, p1)
	rel := 0.0
	if firstLine != nil {
		rel = r6Rel(baseCal, ref)
	}
	run := p1.ns - p0.ns
	if renewals > 0 && lineReads > 0 {
		t.Logf("Mono bracket of a renewing read %d ns on average, of a read on the line %d ns", sparseWidth/int64(renewals), lineWidth/lineReads)
	}
	t.Logf("%d sparse reads (%d calibrating), %d renewals, %d not fresh, %d crossed a span; %d tight samples, worst %d ns off Mono (%d at 0.8 span); calibration rate %+.3g off the run's (%.1f ns per span, %.0f ns over the %.2f s run if a line were extended); resets %d -> %d",
		sparse, calibrating, renewals, notFresh, cross, tight, worst, worstWithin, rel, rel*float64(spanNs), rel*float64(run), float64(run)/1e9, r0, r1)
	for _, f := range failures {
		t.Error(f)
	}
	if firstLine == nil {
		t.Fatal("no line published")
	}
	if r1 != r0 {
		t.Errorf("resets %d -> %d under sparse reads", r0, r1)
	}
	if renewals < 10 || notFresh < renewals-cross {
		t.Errorf("%d renewals, %d of them not fresh (%d crossed a span): the pattern did not keep every renewal not fresh", renewals, notFresh, cross)
	}
	// The calibration rate serves forever here: a line drifts by rel per
	// ns; it must stay within the tolerance over a span (and a fresh
	// renewal after up to staleSpans spans must not find it far off).
	if d := rel * float64(staleSpans*spanNs); d > float64(tol) || d < -float64(tol) {
		t.Errorf("calibration rate %+.3g off the rate over the run: %.0f ns over staleSpans spans (tolerance %d)", rel, d, tol)
	}
}

// TestReview6BurstsAndIdles: "Now never goes back within a goroutine" and
// "stays within one span's drift of CLOCK_MONOTONIC", for bursts (four
// goroutines reading Now and Stamp continuously for 50 ms) and idles
// (20-200 ms, nobody reads: the next renewal is not fresh and restarts the
// baselines, so each burst measures its rate anew from 20 ms on), with
// GOMAXPROCS dropped to 1 in the middle of one burst and restored in the
// middle of a later one. No reset, state running throughout.
func TestReview6BurstsAndIdles(t *testing.T) {
	if !counterInUse() {
		t.Skip("the counter is not used here")
	}
	t.Run("idle machine", func(t *testing.T) { r6Bursts(t, 7) })
	t.Run("loaded", func(t *testing.T) {
		defer r6Load()()
		r6Bursts(t, 5)
	})
}

func r6Bursts(t *testing.T, rounds int) {
	restartForTest(t)
	defer restartForTest(t)
	running(t)
	procs := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(procs)
	p0 := r6Pair(t)
	_, _, r0 := r6Baselines()
	tol := reviewTol()
	const goroutines = 4
	rng := rand.New(rand.NewPCG(6, 2))
	var (
		samples, bad, back, worst, states atomic.Int64
		mu                                sync.Mutex
		msgs                              []string
	)
	report := func(s string) {
		mu.Lock()
		if len(msgs) < 8 {
			msgs = append(msgs, s)
		}
		mu.Unlock()
	}
	var bases []uint64
	lastPerG := make([]int64, goroutines)
	r4Run(t, "bursts and idles", func() {
		for r := range rounds {
			burstEnd := Mono() + 50*spanNs
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					read := Now
					if g%2 == 1 {
						read = Stamp
					}
					last := lastPerG[g]
					for i := 0; ; i++ {
						s := r6Read(read)
						if s.a >= burstEnd {
							break
						}
						if st := state.Load(); st != stateRunning {
							states.Add(1)
						}
						if s.v < last {
							back.Add(1)
							report(fmt.Sprintf("round %d goroutine %d: read %d after %d: back %d ns", r, g, s.v, last, last-s.v))
						}
						last = max(last, s.v)
						if !s.tight() {
							continue
						}
						samples.Add(1)
						d := s.off()
						if d > tol {
							bad.Add(1)
							report(fmt.Sprintf("round %d goroutine %d: %d ns outside [%d, %d] (tolerance %d)", r, g, d, s.a, s.b, tol))
						}
						for {
							w := worst.Load()
							if d <= w || worst.CompareAndSwap(w, d) {
								break
							}
						}
						if i%4096 == 0 {
							runtime.Gosched()
						}
					}
					lastPerG[g] = last
				}()
			}
			// GOMAXPROCS changes in the middle of bursts 2 and 4.
			if r == 2 || r == 4 {
				time.Sleep(20 * time.Millisecond)
				if r == 2 {
					runtime.GOMAXPROCS(1)
				} else {
					runtime.GOMAXPROCS(procs)
				}
			}
			wg.Wait()
			if c := current.Load(); c != nil {
				bases = append(bases, c.base.Load())
			}
			time.Sleep(time.Duration(20+rng.IntN(181)) * time.Millisecond)
		}
	})
	p1 := r6Pair(t)
	_, _, r1 := r6Baselines()
	ref := r6Rate(p0, p1)
	var rels []string
	worstRel := 0.0
	for _, b := range bases {
		rel := r6Rel(b, ref)
		rels = append(rels, fmt.Sprintf("%+.2g", rel))
		worstRel = max(worstRel, rel, -rel)
	}
	t.Logf("%d rounds, %d tight samples, worst %d ns off Mono; rates at the end of each burst relative to the run's: %v; resets %d -> %d",
		rounds, samples.Load(), worst.Load(), rels, r0, r1)
	for _, m := range msgs {
		t.Error(m)
	}
	if r1 != r0 || states.Load() != 0 || state.Load() != stateRunning {
		t.Errorf("resets %d -> %d, %d reads in another state than running, state %d now", r0, r1, states.Load(), state.Load())
	}
	if d := worstRel * float64(staleSpans*spanNs); d > float64(tol) {
		t.Errorf("a burst's rate %.3g off the run's: %.0f ns over staleSpans spans (tolerance %d)", worstRel, d, tol)
	}
}

// TestReview6StampBetweenNowsWithIdles: message's order at the clock's
// level on one goroutine: Now, then Stamp, then Now: Now1 <= Stamp <= Now2
// and Now1 never below the previous Now2, over millions of iterations
// broken by idles of every kind (none; 100 us, inside a span; 2-5 ms, a
// fresh renewal after several spans; 17-25 ms, a renewal that is not
// fresh).
func TestReview6StampBetweenNowsWithIdles(t *testing.T) {
	running(t)
	defer restartForTest(t)
	rng := rand.New(rand.NewPCG(6, 3))
	var iters, early, late, backs int
	var worstEarly, worstLate, worstBack int64
	var first []string
	r4Run(t, "Now, Stamp, Now", func() {
		end := time.Now().Add(1500 * time.Millisecond)
		last := Now()
		for time.Now().Before(end) {
			for range 1 << 14 {
				n1 := Now()
				s := Stamp()
				n2 := Now()
				iters++
				if n1 < last {
					backs++
					worstBack = max(worstBack, last-n1)
				}
				if s < n1 {
					early++
					worstEarly = max(worstEarly, n1-s)
					if len(first) < 5 {
						first = append(first, fmt.Sprintf("iteration %d: Now %d, Stamp %d (%d ns early), Now %d", iters, n1, s, n1-s, n2))
					}
				}
				if n2 < s {
					late++
					worstLate = max(worstLate, s-n2)
					if len(first) < 5 {
						first = append(first, fmt.Sprintf("iteration %d: Now %d, Stamp %d, Now %d (%d ns below the Stamp)", iters, n1, s, n2, s-n2))
					}
				}
				last = n2
			}
			switch rng.IntN(6) {
			case 1:
				time.Sleep(100 * time.Microsecond)
			case 2:
				time.Sleep(time.Duration(2+rng.IntN(4)) * time.Millisecond)
			case 3:
				time.Sleep(time.Duration(17+rng.IntN(9)) * time.Millisecond)
			}
		}
	})
	t.Logf("%d iterations: Stamp below the Now before it %d times (worst %d ns), above the Now after it %d times (worst %d ns), Now back %d times (worst %d ns); state %d",
		iters, early, worstEarly, late, worstLate, backs, worstBack, state.Load())
	for _, f := range first {
		t.Error(f)
	}
	if backs > 0 {
		t.Errorf("Now went back %d times (worst %d ns)", backs, worstBack)
	}
	if iters < 1e6 && !race {
		t.Errorf("only %d iterations", iters)
	}
}

// TestReview6RebaseKeepsRate: "the rate is measured over a long baseline
// (from the start at first; later from between rebaseNs and twice that
// ago)". A run of continuous reads gives a reference rate (the test's own
// pairs 300 ms apart); then the baselines are moved back by rebaseNs (30 s
// of Mono, and 30 s of counter at the reference rate: as if the process had
// read the clock continuously for 30 s), so the next renewal rebases; then
// again (a second rebase, 30 s later). After each, the rate stays within a
// few ppm of the reference, Now near Mono, no reset, never back. Then a
// real idle of 25 ms (baselines restarted: the last rate serves) and 40 ms
// of reads (a rate measured anew over 20 ms): still accurate.
func TestReview6RebaseKeepsRate(t *testing.T) {
	useCounter(t)
	tol := reviewTol()
	var p0, p1 sample
	var worst0, back0 int64
	var st0 map[int32]bool
	r4Run(t, "reference", func() {
		p0 = r6Pair(t)
		worst0, _, _, back0, st0 = r4TrackSigned(300)
		p1 = r6Pair(t)
	})
	ref := r6Rate(p0, p1)
	o, r, res0 := r6Baselines()
	t.Logf("reference rate %.9f ns/tick over %.0f ms; baselines older %d recent %d (same: %v); line's base %+.3g off; %d ns off Mono, back %d, states %v",
		ref, float64(p1.ns-p0.ns)/1e6, o.ns, r.ns, o == r, r6Rel(current.Load().base.Load(), ref), worst0, back0, st0)
	ticks := uint64(float64(rebaseNs) / ref)
	shift := func() (o, r sample) {
		lockRenewing()
		defer renewing.Store(false)
		older.ns -= rebaseNs
		older.tsc -= ticks
		recent.ns -= rebaseNs
		recent.tsc -= ticks
		return older, recent
	}
	last := Now()
	for k := 1; k <= 2; k++ {
		so, sr := shift()
		var worst, ahead, behind, back int64
		var states map[int32]bool
		var first int64
		r4Run(t, fmt.Sprintf("rebase %d", k), func() {
			first = Now()
			worst, ahead, behind, back, states = r4TrackSigned(40)
		})
		no, nr, res := r6Baselines()
		base := current.Load().base.Load()
		rel := r6Rel(base, ref)
		rebased := no == sr && nr.ns > sr.ns+rebaseNs
		t.Logf("rebase %d: older %d -> %d, recent %d -> %d (rebased %v); rate %+.3g off the reference; %d ns ahead, %d behind Mono; back %d; states %v",
			k, so.ns, no.ns, sr.ns, nr.ns, rebased, rel, ahead, behind, back, states)
		if !rebased && no == nr && no.ns > sr.ns {
			// Baselines restarted at a fresh pair: the renewal found the
			// line idle for staleSpans spans, i.e. the tracking goroutine
			// was descheduled that long (a loaded machine). That is the
			// idle path, which the end of this test covers; this run
			// cannot judge the rebase.
			t.Skipf("rebase %d: the reads stopped for staleSpans spans (baselines restarted at %v): no rebase to judge", k, no)
		}
		if !rebased {
			t.Errorf("rebase %d: baselines older %v recent %v after moving them to %v %v: no rebase", k, no, nr, so, sr)
		}
		if first < last || back > 0 || res != res0 || len(states) != 1 || !states[stateRunning] {
			t.Errorf("rebase %d: first read %d after %d, back %d, resets %d -> %d, states %v", k, first, last, back, res0, res, states)
		}
		if worst > tol {
			t.Errorf("rebase %d: %d ns off Mono (tolerance %d)", k, worst, tol)
		}
		if rel > 2e-6 || rel < -2e-6 {
			t.Errorf("rebase %d: rate %+.3g off the reference", k, rel)
		}
		last = Now()
	}
	// A real idle past staleSpans, then reads: the rate serves, then is
	// measured anew over 20-40 ms.
	baseBefore := current.Load().base.Load()
	time.Sleep(25 * time.Millisecond)
	var worst, back int64
	var states map[int32]bool
	var first int64
	r4Run(t, "idle after the rebase", func() {
		first = Now()
		worst, _, _, back, states = r4TrackSigned(40)
	})
	no, nr, res := r6Baselines()
	base := current.Load().base.Load()
	t.Logf("after a 25 ms idle: baselines restarted (older %d, recent %d), rate %+.3g off the reference (before the idle %+.3g); %d ns off Mono; states %v",
		no.ns, nr.ns, r6Rel(base, ref), r6Rel(baseBefore, ref), worst, states)
	if first < last || back > 0 || res != res0 || len(states) != 1 || !states[stateRunning] {
		t.Errorf("after the idle: first read %d after %d, back %d, resets %d -> %d, states %v", first, last, back, res0, res, states)
	}
	if worst > tol {
		t.Errorf("after the idle: %d ns off Mono (tolerance %d)", worst, tol)
	}
	if rel := r6Rel(base, ref); rel*float64(staleSpans*spanNs) > float64(tol) || -rel*float64(staleSpans*spanNs) > float64(tol) {
		t.Errorf("after the idle: rate %+.3g off the reference: %.0f ns over staleSpans spans", rel, rel*float64(staleSpans*spanNs))
	}
}

// TestReview6MonotonicAcrossIdleLengths: "Now never goes back" and "near
// Mono" at the freshness boundary, for real: a single goroutine sleeps
// around staleSpans spans (14-19 ms, the renewal fresh or not depending on
// a millisecond), reads Now once, then for a few spans; the first read
// after each sleep must lie near Mono, whichever branch took it.
func TestReview6MonotonicAcrossIdleLengths(t *testing.T) {
	useCounter(t)
	tol := reviewTol()
	_, _, r0 := r6Baselines()
	var worstFirst, worstAfter, back int64
	var fresh, stale int
	var msgs []string
	r4Run(t, "reads around staleSpans", func() {
		last := Now()
		end := time.Now().Add(800 * time.Millisecond)
		for i := 0; time.Now().Before(end); i++ {
			time.Sleep(time.Duration(14*spanNs + int64(i%6)*spanNs))
			o0, _, _ := r6Baselines()
			s := r6Read(Now)
			o1, _, _ := r6Baselines()
			if o1 != o0 {
				stale++
			} else {
				fresh++
			}
			back = max(back, last-s.v)
			last = max(last, s.v)
			if s.tight() {
				worstFirst = max(worstFirst, s.off())
				if s.off() > tol && len(msgs) < 5 {
					msgs = append(msgs, fmt.Sprintf("sleep %d ms: first read %d ns off Mono [%d, %d]", 14+i%6, s.off(), s.a, s.b))
				}
			}
			w, _, _, b, _ := r4TrackSigned(3)
			worstAfter, back = max(worstAfter, w), max(back, b)
			last = max(last, Now())
		}
	})
	_, _, r1 := r6Baselines()
	t.Logf("%d renewals kept the baselines (fresh), %d restarted them; first reads up to %d ns off Mono, later ones %d; back %d; resets %d -> %d",
		fresh, stale, worstFirst, worstAfter, back, r0, r1)
	for _, m := range msgs {
		t.Error(m)
	}
	if back > 0 || r1 != r0 || state.Load() != stateRunning || worstAfter > tol {
		t.Errorf("back %d, resets %d -> %d, state %d, %d ns off Mono after the first reads (tolerance %d)", back, r0, r1, state.Load(), worstAfter, tol)
	}
}

// TestReview6HandoffOrdered: what the contract implies across goroutines
// that synchronise ("it may disagree by the drift of one span between two
// goroutines that do not synchronise"; CLOCK_MONOTONIC itself never goes
// back across a happens-before edge): two goroutines pass a token over a
// channel, each reads Now after receiving it and must not read below the
// value the other read before sending. One side idles now and then (none,
// inside a span, a few spans, past staleSpans) so that renewals of every
// kind fall between the two reads. Stamp after a receive is logged, not
// checked (it may read its counter a few cycles before the receive ended).
func TestReview6HandoffOrdered(t *testing.T) {
	running(t)
	defer restartForTest(t)
	var backs, stampEarly, n atomic.Int64
	var worstBack, worstStamp atomic.Int64
	var mu sync.Mutex
	var msgs []string
	ping, pong := make(chan int64), make(chan int64)
	var stop atomic.Bool
	side := func(in <-chan int64, out chan<- int64, idles bool, seed uint64) {
		rng := rand.New(rand.NewPCG(6, seed))
		for v := range in {
			s := Stamp()
			w := Now()
			n.Add(1)
			if w < v {
				backs.Add(1)
				worstBack.Store(max(worstBack.Load(), v-w))
				mu.Lock()
				if len(msgs) < 5 {
					msgs = append(msgs, fmt.Sprintf("Now %d after a receive of %d: back %d ns (state %d)", w, v, v-w, state.Load()))
				}
				mu.Unlock()
			}
			if s < v {
				stampEarly.Add(1)
				worstStamp.Store(max(worstStamp.Load(), v-s))
			}
			if idles && rng.IntN(64) == 0 {
				switch rng.IntN(4) {
				case 0:
					time.Sleep(100 * time.Microsecond)
				case 1:
					time.Sleep(time.Duration(2+rng.IntN(4)) * time.Millisecond)
				case 2:
					time.Sleep(time.Duration(17+rng.IntN(9)) * time.Millisecond)
				}
			}
			if stop.Load() {
				close(out)
				return
			}
			out <- Now()
		}
		close(out)
	}
	r4Run(t, "handoff", func() {
		go side(pong, ping, false, 1)
		time.AfterFunc(time.Second, func() { stop.Store(true) })
		done := make(chan struct{})
		go func() { side(ping, pong, true, 2); close(done) }()
		ping <- Now()
		<-done
		for range pong {
		}
	})
	t.Logf("%d handoffs: Now below the sender's %d times (worst %d ns); Stamp below it %d times (worst %d ns); state %d",
		n.Load(), backs.Load(), worstBack.Load(), stampEarly.Load(), worstStamp.Load(), state.Load())
	for _, m := range msgs {
		t.Error(m)
	}
}
