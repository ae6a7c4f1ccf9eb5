// Package clock is the clock of message headers (Created, Deadline) and of
// every expiry check: CLOCK_MONOTONIC in nanoseconds since boot, the same
// clock in every process on the machine, so that processes sharing a store
// agree on what a deadline means.
//
// Mono reads it through Go's runtime (the kernel's vDSO): about 30 ns on the
// build machine, a fifth of a message's whole life (Put, Send, Recv, View,
// Free). Now and Stamp read the CPU's time-stamp counter instead and turn
// it into CLOCK_MONOTONIC with an anchor: a counter value, the Mono time it
// stands for, and a rate in nanoseconds per tick. Now reads the counter
// after every earlier instruction has completed (LFENCE; RDTSC, as the vDSO
// does); Stamp reads it without the fence (RDTSC alone), for Created: it
// may then read a few cycles early, which only makes a creation time
// earlier, never later than the moment the message became visible.
//
// # When the counter is used
//
// Only where the kernel reads CLOCK_MONOTONIC from the same counter: on
// amd64 (not in the purego build), when the current clock source is "tsc".
// Linux picks it only for a counter that is invariant (constant rate,
// running in every power state) and synchronised across CPUs. Everywhere
// else Now and Stamp are Mono.
//
// # Calibration and renewal
//
// The first call starts calibrating, and for calibrateNs every call returns
// Mono. Then the rate is measured over a long baseline (from the start at
// first; later from between rebaseNs and twice that ago, so that it follows
// the kernel's own frequency corrections), and an anchor is published. A
// call that finds its anchor older than spanNs of counter renews it (one
// goroutine at a time; the others keep the old anchor meanwhile): it reads
// the counter, Mono and the counter again, and where the old anchor's line
// stands at that instant:
//
//   - behind Mono (the usual case for a drift of a few nanoseconds), the new
//     anchor starts at Mono: a step forward;
//   - ahead of it, the new anchor starts where the line is, never back, with
//     a rate slowed to absorb the lead within the next span.
//
// So Now never goes back within a goroutine (as Mono, it may disagree by
// the drift of one span between two goroutines that do not synchronise),
// and it stays within one span's drift of CLOCK_MONOTONIC: nanoseconds to
// tens of nanoseconds at the rates of a disciplined clock. A lead or lag
// beyond maxErrorNs (a counter that jumped: a migrated virtual machine)
// starts calibration again, and after maxResets of those the counter is
// given up for Mono.
//
// # Publication
//
// Anchors live in a small static ring (renewal allocates nothing), each
// with a sequence word that is odd while the anchor is written (a seqlock):
// a reader that was preempted while the ring came round sees the sequence
// change and takes the slow path instead of mixing two anchors' fields.
package clock

import (
	"bytes"
	"math/bits"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Epoch anchors Mono. time.Since on a time.Time taken with time.Now reads
// only the monotonic clock, so Mono never jumps when the wall clock is set.
// EpochBoot is Epoch on CLOCK_MONOTONIC (nanoseconds since boot), which
// every process on the machine shares.
var Epoch, EpochBoot = bootAnchor()

func bootAnchor() (time.Time, int64) {
	t := time.Now()
	boot, width := int64(0), time.Duration(1<<62)
	for range 5 {
		// CLOCK_MONOTONIC between two readings of Go's monotonic clock:
		// the closest pair of five gives the offset between them.
		var ts unix.Timespec
		a := time.Since(t)
		if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
			return t, 1
		}
		b := time.Since(t)
		if b-a < width {
			boot, width = ts.Nano()-int64(a+(b-a)/2), b-a
		}
	}
	return t, max(boot, 1)
}

// Mono returns CLOCK_MONOTONIC nanoseconds (since boot), always greater than
// zero, read through Go's runtime.
func Mono() int64 { return int64(time.Since(Epoch)) + EpochBoot }

// Now returns Mono's clock, read from the time-stamp counter where that is
// trusted (see the package comment). It never goes back within a
// goroutine.
func Now() int64 {
	if a := current.Load(); a != nil {
		if v, ok := a.at(readTSCOrdered(), 1); ok {
			return v
		}
	}
	return slow()
}

// Stamp is Now for creation times: the counter read is not fenced, so it
// may come from a few cycles before the call (never after what follows it
// uses the result). About 10 ns cheaper than Now on the build machine.
func Stamp() int64 {
	if a := current.Load(); a != nil {
		if v, ok := a.at(readTSC(), 1); ok {
			return v
		}
	}
	return slow()
}

const (
	spanNs      = int64(time.Millisecond)      // renew an anchor this often
	calibrateNs = 20 * int64(time.Millisecond) // shortest baseline for a rate
	rebaseNs    = 30 * int64(time.Second)      // baselines move this often
	maxErrorNs  = 50 * int64(time.Microsecond) // a line this far off: recalibrate
	maxResets   = 3                            // then give the counter up
	// staleSpans: while another goroutine renews, an anchor serves up to
	// this many spans past its own.
	staleSpans = 16
	// skewTicks: a counter read this little below an anchor's (the anchor
	// was taken on another CPU an instant later) reads as the anchor.
	skewTicks = 1 << 14
	// bracketTicks: the counter reads around Mono in a renewal must be
	// this close, or the pair is taken again (the goroutine was
	// preempted between them).
	bracketTicks = 1 << 14
)

// anchor is one line of the clock: counter tsc stands for ns, and each tick
// after it for mult / 2^32 nanoseconds, for span ticks.
type anchor struct {
	seq  atomic.Uint64 // odd while the fields are written
	tsc  atomic.Uint64
	ns   atomic.Int64
	mult atomic.Uint64 // nanoseconds per tick, 32.32 fixed point
	span atomic.Uint64 // ticks after tsc for which the anchor is current
}

// at returns the anchor's time at counter value tsc, if tsc is within
// spans of its span and the anchor was not rewritten meanwhile.
func (a *anchor) at(tsc uint64, spans uint64) (int64, bool) {
	s := a.seq.Load()
	t0, ns, mult, span := a.tsc.Load(), a.ns.Load(), a.mult.Load(), a.span.Load()
	if a.seq.Load() != s || s&1 != 0 {
		return 0, false
	}
	d := tsc - t0
	if d >= span*spans {
		if int64(d) >= 0 || int64(d) < -skewTicks {
			return 0, false
		}
		d = 0
	}
	hi, lo := bits.Mul64(d, mult)
	return ns + int64(hi<<32|lo>>32), true
}

// The clock's states.
const (
	stateUnknown     = iota // trusted not asked yet
	stateCalibrating        // Mono until calibrateUntil
	stateRunning            // an anchor is current (or being renewed)
	stateOff                // Mono for good
)

var (
	current        atomic.Pointer[anchor] // nil unless running
	state          atomic.Int32
	calibrateUntil atomic.Int64 // Mono at which calibration may end
	renewing       atomic.Bool  // held by the goroutine renewing

	// Under renewing.
	anchors       [4]anchor
	next          int
	older, recent sample // baselines: the rate is measured from older
	resets        int
)

// sample is a counter reading and the Mono time it was taken at.
type sample struct {
	tsc uint64
	ns  int64
}

// trusted reports whether the kernel reads CLOCK_MONOTONIC from the
// time-stamp counter.
var trusted = sync.OnceValue(func() bool {
	if !haveTSC {
		return false
	}
	b, err := os.ReadFile("/sys/devices/system/clocksource/clocksource0/current_clocksource")
	return err == nil && string(bytes.TrimSpace(b)) == "tsc"
})

// slow is Now and Stamp when no anchor is current: calibrating, off, or due
// for renewal.
//
//go:noinline
func slow() int64 {
	switch state.Load() {
	case stateOff:
		return Mono()
	case stateUnknown:
		if !trusted() {
			state.Store(stateOff)
			return Mono()
		}
	case stateCalibrating:
		if now := Mono(); now < calibrateUntil.Load() {
			return now
		}
	}
	if !renewing.CompareAndSwap(false, true) {
		// Another goroutine renews: its old anchor serves a while longer.
		if a := current.Load(); a != nil {
			if v, ok := a.at(readTSCOrdered(), staleSpans); ok {
				return v
			}
		}
		return Mono()
	}
	v := renew()
	renewing.Store(false)
	return v
}

// renew publishes the next anchor (or starts, or goes on, calibrating) and
// returns its time. The caller holds renewing.
func renew() int64 {
	s, ok := pair()
	if !ok {
		return Mono()
	}
	switch state.Load() {
	case stateOff:
		return s.ns
	case stateUnknown:
		return restart(s)
	}
	if s.ns-older.ns < calibrateNs {
		return s.ns // calibrating
	}
	rate := float64(s.ns-older.ns) / float64(s.tsc-older.tsc) // ns per tick
	if !(rate > 1.0/64 && rate < 64) {
		// Not a counter between 16 MHz and 64 GHz: not one to trust.
		return reset(s, true)
	}
	if s.ns-recent.ns >= rebaseNs {
		older, recent = recent, s
	}
	start := s.ns
	if a := current.Load(); a != nil {
		if line, ok := a.at(s.tsc, staleSpans); ok {
			lead := line - s.ns
			if lead > maxErrorNs || lead < -maxErrorNs {
				return reset(s, false)
			}
			if lead > 0 {
				// Ahead: go on from the line, slower, so that the next
				// renewal finds it near Mono again.
				start = line
				rate *= 1 - float64(lead)/float64(spanNs)
			}
		}
	}
	a := &anchors[next]
	next = (next + 1) % len(anchors)
	a.seq.Add(1)
	a.tsc.Store(s.tsc)
	a.ns.Store(start)
	a.mult.Store(uint64(rate * (1 << 32)))
	a.span.Store(uint64(float64(spanNs) / rate))
	a.seq.Add(1)
	current.Store(a)
	state.Store(stateRunning)
	return start
}

// restart begins calibrating from s.
func restart(s sample) int64 {
	older, recent = s, s
	calibrateUntil.Store(s.ns + calibrateNs)
	state.Store(stateCalibrating)
	return s.ns
}

// reset drops the current anchor after a line went too far off (or the
// rate made no sense: giveUp) and calibrates again, or gives the counter
// up after maxResets.
func reset(s sample, giveUp bool) int64 {
	current.Store(nil)
	resets++
	if giveUp || resets > maxResets {
		state.Store(stateOff)
		return s.ns
	}
	return restart(s)
}

// pair reads the counter and Mono at one instant: Mono between two counter
// reads. Of a few tries it keeps the one whose counter reads are closest
// (the others were slowed down between them: preempted, or an interrupt),
// and fails if even that one is not close.
func pair() (sample, bool) {
	best, width := sample{}, uint64(bracketTicks)
	for range 5 {
		t1 := readTSCOrdered()
		ns := Mono()
		t2 := readTSCOrdered()
		if w := t2 - t1; w < width {
			best, width = sample{tsc: t1 + w/2, ns: ns}, w
		}
	}
	return best, width < bracketTicks
}

// Warp moves the clock forward by d: Mono, Now, Stamp and the conversions
// through Epoch alike. It is for tests that need deadlines to pass without
// waiting (message's FuzzEdgeModel), and writes Epoch, a plain variable: it
// must only run while no other goroutine reads the clock.
func Warp(d time.Duration) {
	for !renewing.CompareAndSwap(false, true) {
		time.Sleep(time.Microsecond)
	}
	Epoch = Epoch.Add(-d)
	older.ns += int64(d)
	recent.ns += int64(d)
	calibrateUntil.Add(int64(d))
	if a := current.Load(); a != nil {
		a.seq.Add(1)
		a.ns.Add(int64(d))
		a.seq.Add(1)
	}
	renewing.Store(false)
}
