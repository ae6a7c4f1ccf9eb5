package arena

// Clean teardown: after Close the arena's mappings are gone from
// /proc/self/maps, the memory it touched is given back (VmRSS), and no
// goroutine is left behind (the library starts none).

import (
	"runtime"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
)

type pageVal [4096]byte // stride is exactly one 4 KiB page

// settle retries f until it reports true or d passes; the runtime may map or
// start something of its own at any moment, so counts are compared with a
// little patience.
func settle(d time.Duration, f func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if f() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTeardownMappingsGone(t *testing.T) {
	if debugNested {
		t.Skip("cella_debug builds keep per-goroutine records that the runtime maps memory for")
	}
	if runtime.GOOS != "linux" {
		t.Skip("needs /proc/self/maps")
	}
	const n = 12
	// Warm up: the first arena makes the runtime grow its own structures.
	if w, err := New[pageVal](Config{Slots: 64}); err == nil {
		w.Close()
	}
	runtime.GC()
	before := countMaps(t)
	type rng struct{ base, size uintptr }
	var (
		arenas []*Arena[pageVal]
		ranges []rng
	)
	for i := 0; i < n; i++ {
		a, err := New[pageVal](Config{Slots: 256 + i, Shards: 1 + i%3})
		if err != nil {
			t.Fatal(err)
		}
		arenas = append(arenas, a)
		ranges = append(ranges,
			rng{uintptr(a.region.Base()), a.region.Len()},
			rng{uintptr(a.meta.rgn.Base()), a.meta.rgn.Len()},
			rng{uintptr(a.counters.Base()), a.counters.Len()})
		// Touch a few slots so the mappings have resident pages.
		for j := 0; j < 10; j++ {
			tk, p, err := a.Alloc()
			if err != nil {
				t.Fatal(err)
			}
			p[len(p)-1] = byte(j)
			if j%2 == 0 {
				a.Free(tk)
			}
		}
	}
	afterNew := countMaps(t)
	for _, r := range ranges {
		if !mapped(t, r.base, r.size) {
			t.Fatalf("range %#x+%#x not in /proc/self/maps after New", r.base, r.size)
		}
	}
	// Adjacent anonymous mappings with equal flags may merge into one line,
	// so New adds at least one line, not necessarily 2n.
	if afterNew <= before {
		t.Fatalf("/proc/self/maps: %d lines before New, %d after %d arenas", before, afterNew, n)
	}
	for _, a := range arenas {
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// A mapping that overlaps a range is a leak of ours if it lies wholly
	// inside our ranges (adjacent ones merge into one line). Once every
	// arena is closed the kernel may hand the addresses to someone else
	// (the runtime maps memory of its own, top-down, into the freshest
	// hole): a mapping that reaches beyond them is not ours.
	ours := func(lo, hi uintptr) bool {
		for lo < hi {
			next := lo
			for _, r := range ranges {
				if r.base <= lo && lo < r.base+r.size {
					next = r.base + r.size
				}
			}
			if next == lo {
				return false
			}
			lo = next
		}
		return true
	}
	for _, r := range ranges {
		var leaked bool
		settle(time.Second, func() bool {
			leaked = false
			for _, m := range procMaps(t) {
				if m[0] < r.base+r.size && r.base < m[1] && ours(m[0], m[1]) {
					leaked = true
				}
			}
			return !leaked
		})
		if leaked {
			t.Fatalf("range %#x+%#x still mapped after Close", r.base, r.size)
		}
	}
	// The exact check is the one above (by address). The runtime may map
	// something of its own meanwhile (heap growth, race detector), so the
	// line count gets a little slack: 3n mappings were added (payloads,
	// metadata, counters), so a leak of even one mapping per Close would
	// show.
	const slack = 5
	var afterClose int
	if !settle(time.Second, func() bool { afterClose = countMaps(t); return afterClose <= before+slack }) {
		t.Fatalf("/proc/self/maps: %d lines before New, %d after New, %d after Close", before, afterNew, afterClose)
	}
	t.Logf("/proc/self/maps lines: %d before New, %d after New (%d arenas), %d after Close", before, afterNew, n, afterClose)
}

func TestTeardownRSS(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("needs /proc/self/status")
	}
	slots := 32 << 10 // 128 MiB of 4 KiB slots
	if testing.Short() {
		slots = 12 << 10 // 48 MiB
	}
	touched := int64(slots) * 4 // KiB
	tokens := make([]token.Token, 0, slots)
	runtime.GC()
	rssBefore := procStatusKiB(t, "VmRSS")

	a, err := New[pageVal](Config{Slots: slots, Shards: 2})
	if err != nil {
		t.Fatal(err)
	}
	rssNew := procStatusKiB(t, "VmRSS")
	for i := 0; i < slots; i++ {
		tk, p, err := a.Alloc()
		if err != nil {
			t.Fatalf("Alloc %d: %v", i, err)
		}
		p[0], p[len(p)-1] = 1, 2
		tokens = append(tokens, tk)
	}
	rssTouched := procStatusKiB(t, "VmRSS")
	for _, tk := range tokens {
		if err := a.Free(tk); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	rssClosed := procStatusKiB(t, "VmRSS")
	t.Logf("VmRSS KiB: %d before New, %d after New, %d after touching %d KiB, %d after Close",
		rssBefore, rssNew, rssTouched, touched, rssClosed)
	// New commits nothing; touching commits (nearly) every page; Close
	// gives it all back.
	if rssNew-rssBefore > touched/8 {
		t.Errorf("New alone raised VmRSS by %d KiB (the arena is %d KiB)", rssNew-rssBefore, touched)
	}
	if rssTouched-rssBefore < touched*3/4 {
		t.Errorf("touching %d KiB raised VmRSS by only %d KiB; the measure is not working", touched, rssTouched-rssBefore)
	}
	if slack := touched / 8; rssClosed-rssBefore > slack {
		t.Errorf("VmRSS after Close is %d KiB above where it was before New (slack %d KiB)", rssClosed-rssBefore, slack)
	}
}

func TestTeardownNoGoroutines(t *testing.T) {
	runtime.GC()
	before := runtime.NumGoroutine()
	a, err := New[faultVal](Config{Slots: 1024})
	if err != nil {
		t.Fatal(err)
	}
	if n := runtime.NumGoroutine(); n != before {
		t.Errorf("New started goroutines: %d before, %d after", before, n)
	}
	// Exercise every path that could lazily start something.
	var ts []token.Token
	for i := 0; i < 600; i++ {
		tk, err := a.Store(faultVal{A: uint64(i)})
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, tk)
	}
	for _, tk := range ts {
		a.View(tk, func(*faultVal) {})
		a.Update(tk, func(p *faultVal) { p.B++ })
		a.Load(tk)
		a.Free(tk)
	}
	_ = a.Stats()
	_ = a.Available()
	if n := runtime.NumGoroutine(); n != before {
		t.Errorf("use started goroutines: %d before, %d now", before, n)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	var n int
	if !settle(time.Second, func() bool { n = runtime.NumGoroutine(); return n <= before }) {
		buf := make([]byte, 1<<16)
		t.Fatalf("goroutines: %d before New, %d after Close\n%s", before, n, buf[:runtime.Stack(buf, true)])
	}
}
