package arena

import (
	"errors"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cella-go/cella/memclass"
	"github.com/cella-go/cella/token"
)

// residentPayload counts the resident bytes of a's payload region (mincore).
func residentPayload(t *testing.T, c *core) int64 {
	return resident(t, c.region.Base(), c.region.Len())
}

// residentArena counts the resident bytes of all of a's slot memory:
// payloads, state words and versions.
func residentArena(t *testing.T, c *core) int64 {
	return resident(t, c.region.Base(), c.region.Len()) +
		resident(t, c.meta.rgn.Base(), c.meta.rgn.Len())
}

func resident(t *testing.T, base unsafe.Pointer, size uintptr) int64 {
	t.Helper()
	page := uintptr(os.Getpagesize())
	n := (size + page - 1) / page
	vec := make([]byte, n)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(base), n*page, uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	var r int64
	for _, v := range vec {
		r += int64(v & 1)
	}
	return r * int64(page)
}

// A burst of live slots, then 99% freed: Trim gives their payload pages
// back, stale tokens stay stale, recycled slots come back zeroed, and the
// arena is whole.
func TestTrimReleasesFreeSlots(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T)
	}{
		// 64 B: the target is the whole arena at most 15% of its
		// peak after 99% of a burst is freed; what stays is 8 bytes of
		// state per slot and the live 1%.
		{"64B", func(t *testing.T) { trimBurst[[64]byte](t, 1<<20, 4, 0.15) }},
		{"4KiB", func(t *testing.T) { trimBurst[[4096]byte](t, 1<<14, 4, 0.03) }},
		{"5000B", func(t *testing.T) { trimBurst[[5000]byte](t, 1<<13, 2, 0.03) }},
	} {
		t.Run(tc.name, tc.run)
	}
}

func trimBurst[T any](t *testing.T, n, shards int, maxShare float64) {
	a, err := New[T](Config{Slots: n, Shards: shards})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	size := int64(unsafe.Sizeof(*new(T)))
	toks := make([]token.Token, 0, n)
	for i := 0; i < n; i++ {
		tok, p, err := a.Alloc()
		if err != nil {
			t.Fatal(err)
		}
		b := unsafe.Slice((*byte)(unsafe.Pointer(p)), size)
		b[0], b[len(b)-1] = 0xAA, 0xBB
		toks = append(toks, tok)
	}
	peak := residentPayload(t, &a.core)
	peakAll := residentArena(t, &a.core)
	keep := n / 100
	for _, tok := range toks[keep:] { // the oldest 1% stay live
		if err := a.Free(tok); err != nil {
			t.Fatal(err)
		}
	}
	released, err := a.Trim()
	if err != nil {
		t.Fatal(err)
	}
	after := residentPayload(t, &a.core)
	afterAll := residentArena(t, &a.core)
	t.Logf("whole arena resident: peak %d KiB, after Trim %d KiB (%.1f%%)", peakAll>>10, afterAll>>10, 100*float64(afterAll)/float64(peakAll))
	if float64(afterAll) > maxShare*float64(peakAll) {
		t.Errorf("after Trim the arena keeps %.1f%% of its peak resident, want at most %.0f%%",
			100*float64(afterAll)/float64(peakAll), 100*maxShare)
	}
	live := int64(keep) * size
	t.Logf("payload resident: peak %d KiB, after Trim %d KiB (%.1f%%), live %d KiB, released %d KiB",
		peak>>10, after>>10, 100*float64(after)/float64(peak), live>>10, released>>10)
	// What stays: the live slots' pages, at most one page shared at each
	// end of each run of live slots (the goroutine may have moved between
	// Ps, and so between shards' ranges, while it allocated), and the slots
	// parked in P caches.
	liveIdx := make([]int, 0, keep)
	for _, tok := range toks[:keep] {
		liveIdx = append(liveIdx, int(tok.Index()))
	}
	slices.Sort(liveIdx)
	runs := 1
	for i := 1; i < len(liveIdx); i++ {
		if liveIdx[i] != liveIdx[i-1]+1 {
			runs++
		}
	}
	slack := int64(2*runs*os.Getpagesize()) + int64(a.nP)*(size+int64(os.Getpagesize()))
	if after > live+slack {
		t.Fatalf("after Trim %d bytes of payload are resident for %d live bytes (%d runs, slack %d, stats %+v)", after, live, runs, slack, a.Stats())
	}
	if released < peak-after-slack {
		t.Fatalf("Trim reported %d bytes released, resident fell from %d to %d", released, peak, after)
	}
	// Stale tokens stay stale, live ones keep their bytes.
	if _, err := a.Load(toks[n-1]); !errors.Is(err, ErrStale) {
		t.Fatalf("Load of a freed, trimmed slot's token: %v", err)
	}
	for _, tok := range toks[:keep] {
		a.View(tok, func(p *T) {
			b := unsafe.Slice((*byte)(unsafe.Pointer(p)), size)
			if b[0] != 0xAA || b[len(b)-1] != 0xBB {
				t.Fatalf("live slot %v lost its bytes", tok)
			}
		})
	}
	// Every slot comes back, zeroed.
	var again []token.Token
	for {
		tok, p, err := a.Alloc()
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b := unsafe.Slice((*byte)(unsafe.Pointer(p)), size)
		if b[0] != 0 || b[len(b)-1] != 0 {
			t.Fatalf("recycled slot %v not zeroed", tok)
		}
		again = append(again, tok)
	}
	if len(again) != n-keep {
		t.Fatalf("after Trim %d slots could be allocated, want %d", len(again), n-keep)
	}
	for _, tok := range append(again, toks[:keep]...) {
		if err := a.Free(tok); err != nil {
			t.Fatal(err)
		}
	}
	if a.Available() != a.Capacity() {
		t.Fatalf("Available %d, Capacity %d", a.Available(), a.Capacity())
	}
}

// Trim runs while other goroutines allocate and free and while Close comes:
// no slot is lost or handed out twice, no Alloc reports ErrFull while a slot
// is free only because Trim held it, and nothing faults.
func TestTrimConcurrent(t *testing.T) {
	for round := 0; round < 10; round++ {
		a, err := New[[512]byte](Config{Slots: 64, Shards: 4})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var held []token.Token
				for i := 0; ; i++ {
					select {
					case <-stop:
						for _, tok := range held {
							a.Free(tok)
						}
						return
					default:
					}
					if len(held) < 8 { // 4 goroutines hold at most 32 of 64: never full
						// Through Update, not Alloc's pointer: Close may
						// come at any moment, and the pointer dies with it.
						tok, _, err := a.Alloc()
						if errors.Is(err, ErrClosed) {
							return
						}
						if err != nil {
							t.Errorf("Alloc with free slots: %v", err)
							return
						}
						err = a.Update(tok, func(p *[512]byte) {
							if p[0] != 0 || p[511] != 0 {
								t.Errorf("slot %v not zeroed", tok)
							}
							p[0], p[511] = 1, 1
						})
						if err != nil && !errors.Is(err, ErrClosed) {
							t.Error(err)
						}
						held = append(held, tok)
					} else {
						if err := a.Free(held[0]); err != nil && !errors.Is(err, ErrClosed) {
							t.Error(err)
						}
						held = held[1:]
					}
				}
			}()
		}
		for i := 0; i < 50; i++ {
			if _, err := a.Trim(); err != nil {
				t.Fatal(err)
			}
		}
		if round%2 == 0 {
			go a.Trim()
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			close(stop)
			wg.Wait()
			if _, err := a.Trim(); !errors.Is(err, ErrClosed) {
				t.Fatalf("Trim after Close: %v", err)
			}
			continue
		}
		close(stop)
		wg.Wait()
		if a.Available() != a.Capacity() {
			t.Fatalf("Available %d, Capacity %d", a.Available(), a.Capacity())
		}
		a.Close()
	}
}

// Trim on the other memory classes: per-node and THP arenas give pages back
// like host ones; a locked arena keeps its pages (they are pinned) and says
// so by releasing nothing; a zero-size T has nothing to release. None of
// them loses a slot or a stale token.
func TestTrimClasses(t *testing.T) {
	for _, tc := range []struct {
		name    string
		class   memclass.Class
		release bool
	}{
		{"host", memclass.Host(), true},
		{"pernode", memclass.PerNode(), true},
		{"thp", memclass.Host().WithTHP().BestEffort(), true},
		{"locked", memclass.Host().Locked().BestEffort(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := New[[4096]byte](Config{Slots: 256, Class: tc.class})
			if err != nil {
				t.Skipf("New(%s): %v", tc.class, err)
			}
			defer a.Close()
			var toks []token.Token
			for i := 0; i < 256; i++ {
				tok, p, err := a.Alloc()
				if err != nil {
					t.Fatal(err)
				}
				p[0] = 1
				toks = append(toks, tok)
			}
			for _, tok := range toks[8:] {
				if err := a.Free(tok); err != nil {
					t.Fatal(err)
				}
			}
			released, err := a.Trim()
			if err != nil {
				t.Fatal(err)
			}
			locked := a.Class().IsLocked()
			switch {
			case tc.release && !locked && released < 200*4096:
				t.Fatalf("released %d bytes of ~248 free 4 KiB slots", released)
			case locked && released != 0:
				t.Fatalf("a locked arena released %d bytes", released)
			}
			if _, err := a.Load(toks[100]); !errors.Is(err, ErrStale) {
				t.Fatalf("stale token after Trim: %v", err)
			}
			for _, tok := range toks[:8] {
				if err := a.Free(tok); err != nil {
					t.Fatal(err)
				}
			}
			checkFillAll(t, a, 256)
		})
	}
	z, err := New[struct{}](Config{Slots: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	tok, _, _ := z.Alloc()
	z.Free(tok)
	if released, err := z.Trim(); released != 0 || err != nil {
		t.Fatalf("Trim of a zero-size arena = %d, %v", released, err)
	}
}

// checkFillAll allocates every slot (each must come back zeroed), then
// frees them all and checks the arena is whole.
func checkFillAll(t *testing.T, a *Arena[[4096]byte], n int) {
	t.Helper()
	var toks []token.Token
	for {
		tok, p, err := a.Alloc()
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if p[0] != 0 {
			t.Fatalf("slot %v not zeroed", tok)
		}
		toks = append(toks, tok)
	}
	if len(toks) != n {
		t.Fatalf("allocated %d of %d", len(toks), n)
	}
	for _, tok := range toks {
		if err := a.Free(tok); err != nil {
			t.Fatal(err)
		}
	}
	if a.Available() != a.Capacity() {
		t.Fatalf("Available %d, Capacity %d", a.Available(), a.Capacity())
	}
}

// An arena of more than 2^29-1 slots keeps its freelist links in a region
// of their own (the state words have no room for them): allocation, reuse
// through freelists and steals, stale tokens, Trim and Close work the same.
func TestWideArenaLinksOwnRegion(t *testing.T) {
	// One P, so the frees and the Allocs use the same home shard (a home
	// shard's fresh slots come before stealing).
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	a, err := New[[64]byte](Config{Slots: maxLinkedSlots + 1, Shards: 4})
	if err != nil {
		t.Skipf("New of %d slots: %v", maxLinkedSlots+1, err)
	}
	defer a.Close()
	if a.meta.linkStride != 4 || a.meta.linkFlag != 0 {
		t.Fatal("a wide arena must keep its links in their own region, unflagged")
	}
	var toks []token.Token
	for i := 0; i < 5000; i++ {
		tok, p, err := a.Alloc()
		if err != nil {
			t.Fatal(err)
		}
		p[0] = byte(i)
		toks = append(toks, tok)
	}
	for _, tok := range toks {
		if err := a.Free(tok); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Load(toks[42]); !errors.Is(err, ErrStale) {
		t.Fatalf("stale token: %v", err)
	}
	if _, err := a.Trim(); err != nil {
		t.Fatal(err)
	}
	// The freed slots come back through the freelists, zeroed, with new
	// generations.
	seen := map[uint32]bool{}
	for _, tok := range toks {
		seen[tok.Index()] = true
	}
	reused := 0
	for i := 0; i < 5000; i++ {
		tok, p, err := a.Alloc()
		if err != nil {
			t.Fatal(err)
		}
		if seen[tok.Index()] {
			reused++
			if p[0] != 0 {
				t.Fatalf("recycled slot %v not zeroed", tok)
			}
		}
		if err := a.View(tok, func(*[64]byte) {}); err != nil {
			t.Fatal(err)
		}
		toks[i] = tok
	}
	if reused < 4000 {
		t.Fatalf("only %d of 5000 Allocs reused freed slots", reused)
	}
	for _, tok := range toks {
		if err := a.Free(tok); err != nil {
			t.Fatal(err)
		}
	}
	if a.Available() != a.Capacity() {
		t.Fatalf("Available %d, Capacity %d", a.Available(), a.Capacity())
	}
}
