package clock

import "testing"

// TestCounterSource: the counter is used for tsc, for kvm-clock only when
// the vDSO serves it, and for nothing else; the vDSO is asked about
// kvm-clock only.
func TestCounterSource(t *testing.T) {
	for _, c := range []struct {
		source string
		served bool
		want   bool
		asks   bool
	}{
		{"tsc", false, true, false},
		{"kvm-clock", true, true, true},
		{"kvm-clock", false, false, true},
		{"hpet", true, false, false},
		{"acpi_pm", true, false, false},
		{"xen", true, false, false},
		{"", true, false, false},
	} {
		asked := false
		got := counterSource(c.source, func() bool { asked = true; return c.served })
		if got != c.want || asked != c.asks {
			t.Errorf("counterSource(%q, served=%v) = %v (asked the vDSO: %v), want %v (%v)",
				c.source, c.served, got, asked, c.want, c.asks)
		}
	}
}

// fakeClock is a clock read that advances by the next of steps (the last
// one repeating) per call.
func fakeClock(steps ...int64) func() int64 {
	now, i := int64(1000), 0
	return func() int64 {
		now += steps[min(i, len(steps)-1)]
		i++
		return now
	}
}

// TestVDSOServed: a read of tens of nanoseconds is the vDSO's, one of a
// microsecond a system call's, and one fast round among slow ones (a busy
// host) is enough.
func TestVDSOServed(t *testing.T) {
	for _, c := range []struct {
		name string
		read func() int64
		want bool
	}{
		{"vdso, 33 ns", fakeClock(33), true},
		{"system call, 1.6 µs", fakeClock(1600), false},
		{"just under the bound", fakeClock(vdsoMaxNs - 1), true},
		{"at the bound", fakeClock(vdsoMaxNs), false},
		{"one quiet round of 16", fakeClock(append(repeat(5000, 15*9), 30)...), true},
	} {
		if got := vdsoServed(c.read); got != c.want {
			t.Errorf("%s: vdsoServed = %v, want %v", c.name, got, c.want)
		}
	}
}

func repeat(v int64, n int) []int64 {
	s := make([]int64, n)
	for i := range s {
		s[i] = v
	}
	return s
}
