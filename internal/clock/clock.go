// Package clock is the clock of message headers (Created, Deadline) and of
// every expiry check: CLOCK_MONOTONIC in nanoseconds since boot, the same
// clock in every process on the machine, so that processes sharing a store
// agree on what a deadline means.
//
// Mono reads it through Go's runtime (the kernel's vDSO): about 30 ns on the
// build machines so far, a fifth to a quarter of a message's whole life
// (Put, Send, Recv, View, Free). Now and Stamp read the CPU's time-stamp
// counter instead and turn it into CLOCK_MONOTONIC with an anchor: a
// counter value, the Mono time it stands for, and a rate in nanoseconds
// per tick. Now reads the counter after every earlier instruction has
// completed (LFENCE; RDTSC, as the vDSO does); Stamp reads it without the
// fence (RDTSC alone), for Created: it may then read a few cycles early,
// which only makes a creation time earlier, never later than the moment
// the message became visible.
//
// # When the counter is used
//
// Only where the kernel reads CLOCK_MONOTONIC from the same counter, on
// amd64 (not in the purego build), when the current clock source is
//
//   - "tsc": Linux picks it only for a counter that is invariant (constant
//     rate, running in every power state) and synchronised across CPUs;
//   - or "kvm-clock" served by the vDSO: a KVM guest's clock is then the
//     counter scaled by a line the host publishes, the same line on every
//     vCPU (the host offers the vDSO only with its stable-counter flag set,
//     which says so; without it every read is a system call). So the
//     kernel's own reads are a line of the counter there too, the line the
//     anchors below follow. Whether the vDSO serves it is told by its cost
//     (vdsoServed): tens of nanoseconds, against a microsecond or more for
//     the system call on such a guest (1.6 µs on the build machine, whose
//     Mono costs 33 ns).
//
// Everywhere else Now and Stamp are Mono. On a kvm-clock guest that is
// more than the vDSO's 33 ns: its LFENCE waits for every earlier
// instruction, so the misses of the previous message stop overlapping
// with the next Put. The build machine's producer → consumer hop (Put with
// a stamp, Send / Recv, View, Free on two goroutines) took 275 ns with
// Mono and 172 ns with the counter read alone.
//
// # Calibration and renewal
//
// The first call starts calibrating, and for calibrateNs every call returns
// Mono. Then the rate is measured over a long baseline (from the start at
// first; later from between rebaseNs and twice that ago, so that it follows
// the kernel's own frequency corrections while the clock is read
// steadily), and a line is published: an
// anchor and a span (spanNs of counter) for which it is current. The first
// call past the span renews it (one goroutine at a time); it reads the
// counter, Mono and the counter again, and where the old line stands at
// that instant (along the line to its end, then at the measured rate):
//
//   - behind Mono (the usual case for a drift of a few nanoseconds), the new
//     line starts at Mono: a step forward;
//   - ahead of it, the new line starts where the old one is, never back,
//     with a rate slowed to absorb the lead within its span.
//
// The pair is read without a lock; the publication (a few stores) runs
// under renewing, and a reader that finds one in progress waits for it
// rather than hand out a value of its own. So every value the clock hands
// out comes from a line (at most its end) or from Mono while no line is
// due (calibrating, off), and a new line starts at or after all of those:
// the old line's end, Mono at its pair, the floor. Nobody goes back across
// a renewal, however long the renewer is delayed. A line more than
// maxErrorNs off (a counter that jumped: a migrated virtual machine; or a
// rate far off) is dropped and calibration starts again; its end becomes a
// floor below which the clock does not read meanwhile. After maxResets of
// those, or when Mono cannot be bracketed by two counter reads (a machine
// too loaded to calibrate against), the counter is given up for Mono
// (still at least the floor). A line idle for more than staleSpans
// spans, or whose counter now reads far below its anchor (it jumped back),
// is not judged: the next starts at Mono or at what the old line can have
// handed out (line.handed: its end, or its time as far on as Mono has gone
// since its pair with a margin for a line slightly fast and for its own
// bracket, whichever is sooner), whichever is later. Such a renewal also
// restarts the rate's baselines from its pair (a jump smaller than an
// idle cannot be told from it, and a rate measured across it would be off
// by it); the last rate serves until they are calibrateNs long. So a
// process that reads the clock only in bursts shorter than that, between
// idles, keeps the rate of its calibration; each such renewal still starts
// at Mono, so the error stays within one span's drift at that rate.
//
// Between renewals the counter is trusted as the kernel trusts its clock
// source: a counter that jumps back by less than the time since the
// current line's anchor still lies within the line's span, and Now steps
// back with it until the next renewal, at most a span later, which finds
// the line behind Mono and steps forward (or, past maxErrorNs, drops it
// with its end as the floor). Linux stops using a counter that does this.
//
// Apart from that, Now never goes back within a goroutine (as Mono, it
// may disagree by the drift of one span between two goroutines that do not
// synchronise), and it stays within one span's drift of CLOCK_MONOTONIC:
// nanoseconds to tens of nanoseconds at the rates of a disciplined clock.
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
	"math"
	"math/bits"
	"os"
	"runtime"
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
		if v, ok := a.at(readTSCOrdered()); ok {
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
		if v, ok := a.at(readTSC()); ok {
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
	// staleSpans: a renewal judges the old line against Mono only if it
	// was current at most this many spans ago; after a longer idle (or a
	// counter that jumped further, either way) it simply starts a new
	// line, at Mono or at what the old line can have handed out,
	// whichever is later.
	staleSpans = 16
	// skewTicks: a counter read this little below an anchor's (the anchor
	// was taken on another CPU an instant later) reads as the anchor.
	skewTicks = 1 << 14
	// bracketTicks: the counter reads around Mono in a renewal must be
	// this close, or the pair is taken again (the goroutine was
	// preempted between them).
	bracketTicks = 1 << 14
)

// anchor is one line of the clock, as published: counter tsc stands for
// ns, and each tick after it for mult / 2^32 nanoseconds, for span ticks.
type anchor struct {
	seq   atomic.Uint64 // odd while the fields are written
	tsc   atomic.Uint64
	ns    atomic.Int64
	mult  atomic.Uint64 // the line's rate, slowed while it absorbs a lead
	span  atomic.Uint64 // ticks after tsc for which the line is current
	base  atomic.Uint64 // the measured rate: how the line extends past its span
	mono  atomic.Int64  // Mono of the pair the line was made from
	width atomic.Uint64 // that pair's bracket, in ticks
}

// line is an anchor's fields, read under its seqlock. Rates are
// nanoseconds per tick in 32.32 fixed point.
type line struct {
	tsc        uint64
	ns         int64
	mult, span uint64
	base       uint64
	mono       int64
	width      uint64
}

// load reads a's fields, or reports false if a was being rewritten.
func (a *anchor) load() (line, bool) {
	s := a.seq.Load()
	l := line{tsc: a.tsc.Load(), ns: a.ns.Load(), mult: a.mult.Load(), span: a.span.Load(), base: a.base.Load(),
		mono: a.mono.Load(), width: a.width.Load()}
	return l, s&1 == 0 && a.seq.Load() == s
}

// at is the fast path: a's time at counter value tsc, if tsc is within
// the line's span and a was not rewritten meanwhile. It reads the fields
// into registers (a line copied through the stack costs the fast path a
// failed store forwarding: 10 ns).
func (a *anchor) at(tsc uint64) (int64, bool) {
	s := a.seq.Load()
	t0, ns, mult, span := a.tsc.Load(), a.ns.Load(), a.mult.Load(), a.span.Load()
	if a.seq.Load() != s || s&1 != 0 {
		return 0, false
	}
	return lineAt(tsc, t0, ns, mult, span)
}

// at returns the line's time at counter value tsc, if tsc is within its
// span.
func (l *line) at(tsc uint64) (int64, bool) { return lineAt(tsc, l.tsc, l.ns, l.mult, l.span) }

// lineAt is the time at counter value tsc on the line through (t0, ns) at
// rate mult, if tsc is within span ticks of t0. A counter just below t0
// (read on another CPU an instant before the anchor was taken) reads as
// the anchor.
func lineAt(tsc, t0 uint64, ns int64, mult, span uint64) (int64, bool) {
	d := tsc - t0
	if d >= span {
		if int64(d) >= 0 || int64(d) < -skewTicks {
			return 0, false
		}
		d = 0
	}
	return ns + mulRate(d, mult), true
}

// end is the line's time at the end of its span: above every value it
// hands out, and at most where the next line starts (renew).
func (l *line) end() int64 { return l.ns + mulRate(l.span, l.mult) }

// extend is the line's time at tsc as a renewal judges it: along the line
// to its end, then at the measured rate (a lead the line absorbed is not
// absorbed again past its span). It reports false beyond staleSpans spans.
func (l *line) extend(tsc uint64) (int64, bool) {
	d := tsc - l.tsc
	if d < l.span || int64(d) < 0 {
		return l.at(tsc)
	}
	if d >= staleSpans*l.span {
		return 0, false
	}
	return l.end() + mulRate(d-l.span, l.base), true
}

// handed bounds what the line can have handed out by the time s was read:
// its end, or, if sooner, its time at its pair plus what Mono went on
// since, with room for a line a little faster than Mono (a rate measured to
// within a bracket, the kernel's corrections since: a thousandth of the
// time) and for its counter being read up to half its bracket after its
// Mono.
func (l *line) handed(s sample) int64 {
	elapsed := max(s.ns-l.mono, 0)
	margin := elapsed>>10 + mulRate(l.width/2+1, l.base)
	return min(l.end(), l.ns+elapsed+margin)
}

// mulRate is d ticks at a 32.32 rate, in nanoseconds.
func mulRate(d, rate uint64) int64 {
	hi, lo := bits.Mul64(d, rate)
	return int64(hi<<32 | lo>>32)
}

// The clock's states.
const (
	stateUnknown     = iota // trusted not asked yet
	stateCalibrating        // Mono (at least floor) until calibrateUntil
	stateRunning            // a line is current (or being renewed)
	stateOff                // Mono (at least floor) for good
)

var (
	current        atomic.Pointer[anchor] // nil unless running
	state          atomic.Int32
	calibrateUntil atomic.Int64 // Mono at which calibration may end
	renewing       atomic.Bool  // held by the goroutine renewing
	// floor is what the last line dropped (reset, giveUp) can have handed
	// out: while Mono is below it, the clock reads floor, so that dropping
	// a line that ran ahead does not take a goroutine's clock back.
	floor atomic.Int64

	// Under renewing.
	anchors       [4]anchor
	next          int
	older, recent sample // baselines: the rate is measured from older
	resets        int
)

// sample is a counter reading and the Mono time it was taken at.
type sample struct {
	tsc   uint64
	ns    int64
	width uint64 // ticks between the two counter reads around ns
}

// trusted reports whether the kernel reads CLOCK_MONOTONIC from the
// time-stamp counter (see "When the counter is used").
var trusted = sync.OnceValue(func() bool {
	return haveTSC && counterSource(Source(), func() bool { return vdsoServed(Mono) })
})

// Source is the kernel's current clock source ("tsc", "kvm-clock", ...),
// read once; "" where it cannot be read.
var Source = sync.OnceValue(func() string {
	b, err := os.ReadFile("/sys/devices/system/clocksource/clocksource0/current_clocksource")
	if err != nil {
		return ""
	}
	return string(bytes.TrimSpace(b))
})

// UsesCounter reports whether Now and Stamp read the time-stamp counter on
// this machine (see "When the counter is used"), rather than Mono. It can
// still be given up later, if the counter stops following Mono.
func UsesCounter() bool { return trusted() }

// counterSource reports whether the clock source named source reads the
// time-stamp counter as a line; served tells whether the vDSO serves the
// clock, asked only for kvm-clock.
func counterSource(source string, served func() bool) bool {
	switch source {
	case "tsc":
		return true
	case "kvm-clock":
		return served()
	}
	return false
}

// vdsoMaxNs is the most a clock read served by the vDSO is taken to cost;
// a system call costs more even on a fast guest, and several times more
// on most (1.6 µs on the build machine).
const vdsoMaxNs = 150

// vdsoServed reports whether read (Mono) costs what a vDSO read costs: the
// fastest of 16 rounds of 8 reads, so that a preemption or a busy host
// does not make a fast clock look slow.
func vdsoServed(read func() int64) bool {
	const rounds, reads = 16, 8
	best := int64(math.MaxInt64)
	for range rounds {
		t0 := read()
		t := t0
		for range reads {
			t = read()
		}
		best = min(best, t-t0)
	}
	return best < vdsoMaxNs*reads
}

// atLeastFloor is Mono's reading v, or floor while Mono is below it.
func atLeastFloor(v int64) int64 { return max(v, floor.Load()) }

// slow is Now and Stamp when no line is current: calibrating, off, or due
// for renewal. A renewal is two steps: the caller reads a pair (counter,
// Mono) without any lock, then publishes the next line under renewing, a
// section of a few stores. A reader that finds a renewal being published
// waits for it (it is that short) rather than hand out a value of its own:
// every value the clock hands out then comes from Mono while no line was
// due (calibrating, off) or from a line, and a new line starts at or
// after both (renew), so nothing goes back.
//
//go:noinline
func slow() int64 {
	failed := 0 // pairs that found no tight bracket
	for wait := 0; ; {
		switch state.Load() {
		case stateOff:
			return atLeastFloor(Mono())
		case stateUnknown:
			if !trusted() {
				state.Store(stateOff)
				return atLeastFloor(Mono())
			}
		case stateCalibrating:
			if now := Mono(); now < calibrateUntil.Load() {
				return atLeastFloor(now)
			}
		case stateRunning:
			// The fast path may have failed on an anchor the ring rewrote
			// while this goroutine was preempted: the current one may do.
			if a := current.Load(); a != nil {
				if v, ok := a.at(readTSCOrdered()); ok {
					return v
				}
			}
		}
		if renewing.Load() {
			awaitRenewal(&wait)
			continue
		}
		s, ok := pair()
		if !ok {
			if failed++; failed < maxPairFailures {
				runtime.Gosched()
				continue
			}
			// Mono cannot be bracketed here: give the counter up (the
			// floor keeps what lines handed out).
			return giveUp()
		}
		if !renewing.CompareAndSwap(false, true) {
			awaitRenewal(&wait)
			continue
		}
		v, done := renew(s)
		renewing.Store(false)
		if done {
			return v
		}
	}
}

// maxPairFailures bounds the tries at bracketing Mono (five pairs each)
// before the counter is given up.
const maxPairFailures = 64

// awaitRenewal waits a little for the goroutine publishing a line: spins
// first (the section is a few stores), then yields its P.
func awaitRenewal(wait *int) {
	*wait++
	if *wait < 64 {
		for i := 0; i < 32 && renewing.Load(); i++ {
		}
		return
	}
	runtime.Gosched()
}

// renew publishes the next line from s, a pair taken before the caller
// took renewing (or starts, or goes on, calibrating), and returns its
// time. It reports done false, publishing nothing, when s is older than
// the current line's pair (another goroutine renewed meanwhile: judged by
// Mono, which never jumps) or the line still covers s: the caller reads
// the clock again. A pair whose counter lies far below the line's although
// it is newer is a counter that jumped back: the next line starts from it.
// A line starts at or after Mono at s, the floor, and everything the old
// line can have handed out (where it stands at s if s is fresh, else
// line.handed).
func renew(s sample) (int64, bool) {
	var old line
	haveOld := false
	if a := current.Load(); a != nil {
		old, haveOld = a.load() // only renew writes anchors: always whole here
		if s.ns < old.mono {
			return 0, false // renewed since s was read
		}
		if _, ok := old.at(s.tsc); ok {
			return 0, false // not due yet
		}
	}
	switch state.Load() {
	case stateOff:
		return atLeastFloor(s.ns), true
	case stateUnknown:
		return restart(s), true
	}
	// s is fresh if it lies within staleSpans of the old line: that line
	// is judged for a lead. Otherwise the clock idled past it or the
	// counter jumped; a counter that jumped by less than an idle's length
	// cannot be told from the idle, and a rate measured across the jump
	// would be off by it, so the rate is measured anew from s (the last
	// rate serves until the baseline is calibrateNs long).
	var ext int64
	fresh := false
	if haveOld {
		if ext, fresh = old.extend(s.tsc); !fresh {
			older, recent = s, s
		}
	}
	var rate float64 // ns per tick
	switch {
	case s.ns-older.ns >= calibrateNs:
		rate = float64(s.ns-older.ns) / float64(s.tsc-older.tsc)
		if !(rate > 1.0/64 && rate < 64) {
			// Not a counter between 16 MHz and 64 GHz: not one to trust.
			return reset(s, old, haveOld, fresh, true), true
		}
	case haveOld:
		rate = float64(old.base) / (1 << 32)
	default:
		return atLeastFloor(s.ns), true // calibrating
	}
	if s.ns-recent.ns >= rebaseNs {
		older, recent = recent, s
	}
	start, slowed := atLeastFloor(s.ns), rate
	switch {
	case fresh:
		lead := ext - s.ns
		if lead > maxErrorNs || lead < -maxErrorNs {
			return reset(s, old, haveOld, fresh, false), true
		}
		if lead > 0 {
			// Ahead: go on from the line, slower, so that the next
			// renewal finds it near Mono again.
			start = max(start, ext)
			slowed = rate * (1 - float64(lead)/float64(spanNs))
		}
	case haveOld:
		// Idle for long, or the counter jumped (or this CPU's lags the
		// renewer's): start afresh, but not below what the old line can
		// have handed out.
		start = max(start, old.handed(s))
	}
	a := &anchors[next]
	next = (next + 1) % len(anchors)
	a.seq.Add(1)
	a.tsc.Store(s.tsc)
	a.ns.Store(start)
	a.mult.Store(uint64(slowed * (1 << 32)))
	a.span.Store(uint64(float64(spanNs) / rate))
	a.base.Store(uint64(rate * (1 << 32)))
	a.mono.Store(s.ns)
	a.width.Store(s.width)
	a.seq.Add(1)
	current.Store(a)
	state.Store(stateRunning)
	return start, true
}

// giveUp turns the counter off for good after Mono could not be bracketed:
// the current line's end becomes the floor.
func giveUp() int64 {
	for !renewing.CompareAndSwap(false, true) {
		runtime.Gosched()
	}
	if a := current.Load(); a != nil {
		if l, ok := a.load(); ok {
			floor.Store(max(floor.Load(), l.end()))
		}
	}
	current.Store(nil)
	state.Store(stateOff)
	renewing.Store(false)
	return atLeastFloor(Mono())
}

// restart begins calibrating from s.
func restart(s sample) int64 {
	older, recent = s, s
	calibrateUntil.Store(s.ns + calibrateNs)
	state.Store(stateCalibrating)
	return atLeastFloor(s.ns)
}

// reset drops the current line after it went too far off (or the rate made
// no sense: giveUp) and calibrates again, or gives the counter up after
// maxResets. What the dropped line can have handed out becomes the floor:
// its end if s is within staleSpans of it (fresh), else its bound handed.
func reset(s sample, old line, haveOld, fresh, giveUp bool) int64 {
	switch {
	case fresh:
		// Past its span: readers may have read it right up to its end.
		floor.Store(max(floor.Load(), old.end()))
	case haveOld:
		floor.Store(max(floor.Load(), old.handed(s)))
	}
	current.Store(nil)
	resets++
	if giveUp || resets > maxResets {
		state.Store(stateOff)
		return atLeastFloor(s.ns)
	}
	return restart(s)
}

// pair reads the counter and Mono at one instant: Mono between two counter
// reads. Of a few tries it keeps the one whose counter reads are closest
// (the others were slowed down between them: preempted, or an interrupt),
// and fails if even that one is not close. (Stopping at the first narrow
// try saved nothing measurable: a renewal after an idle costs about 3 µs
// here, 0.85 µs warm, either way, most of it caches gone cold.)
func pair() (sample, bool) {
	best, width := sample{}, uint64(bracketTicks)
	for range 5 {
		t1 := readTSCOrdered()
		ns := Mono()
		t2 := readTSCOrdered()
		if w := t2 - t1; w < width {
			best, width = sample{tsc: t1 + w/2, ns: ns, width: w}, w
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
	if f := floor.Load(); f != 0 {
		floor.Store(f + int64(d))
	}
	older.ns += int64(d)
	recent.ns += int64(d)
	calibrateUntil.Add(int64(d))
	if a := current.Load(); a != nil {
		a.seq.Add(1)
		a.ns.Add(int64(d))
		a.mono.Add(int64(d))
		a.seq.Add(1)
	}
	renewing.Store(false)
}
