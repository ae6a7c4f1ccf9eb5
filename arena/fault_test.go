package arena

// Fault injection: panics and runtime.Goexit in callbacks, Close racing
// every method, GOMAXPROCS changing under load, mmap failing, and hostile
// token values. In every case: no crash, no lost slot, a clear error.

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cella-go/cella/memclass"
	"github.com/cella-go/cella/token"
)

type faultVal struct {
	A, B uint64
	Pad  [40]byte
}

func newFaultArena(t testing.TB, slots, shards int) *Arena[faultVal] {
	t.Helper()
	a, err := New[faultVal](Config{Slots: slots, Shards: shards})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// within runs fn on a new goroutine and fails the test if it has not returned
// after d (a lock left held shows up as a hang, not as a wrong answer).
func within(t *testing.T, d time.Duration, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s: still blocked after %v (a slot lock was not released?)", what, d)
	}
}

// faultUsable checks that tk's slot can be viewed, updated, loaded and that
// nothing is waiting on it.
func faultUsable(t *testing.T, a *Arena[faultVal], tk token.Token, want uint64) {
	t.Helper()
	within(t, 5*time.Second, "use after fault", func() {
		if err := a.Update(tk, func(p *faultVal) {
			if p.A != want {
				t.Errorf("Update saw A=%d, want %d", p.A, want)
			}
			p.B++
		}); err != nil {
			t.Errorf("Update after fault: %v", err)
		}
		if err := a.View(tk, func(p *faultVal) {}); err != nil {
			t.Errorf("View after fault: %v", err)
		}
		if _, err := a.Load(tk); err != nil {
			t.Errorf("Load after fault: %v", err)
		}
	})
}

func TestFaultPanicInCallback(t *testing.T) {
	for _, write := range []bool{false, true} {
		name := map[bool]string{false: "View", true: "Update"}[write]
		t.Run(name, func(t *testing.T) {
			a := newFaultArena(t, 1, 1)
			tk, err := a.Store(faultVal{A: 5})
			if err != nil {
				t.Fatal(err)
			}
			access := a.View
			if write {
				access = a.Update
			}
			// A plain panic propagates with its value and releases the slot.
			for i := 0; i < 3; i++ {
				func() {
					defer func() {
						if r := recover(); r != "boom" {
							t.Fatalf("recovered %v, want boom", r)
						}
					}()
					access(tk, func(*faultVal) { panic("boom") })
					t.Fatal("access returned normally after a panic")
				}()
				faultUsable(t, a, tk, 5)
			}
			// A Free inside the callback is honoured when the panic unwinds.
			func() {
				defer func() { recover() }()
				access(tk, func(*faultVal) {
					within(t, 2*time.Second, "Free inside callback", func() {
						if err := a.Free(tk); err != nil {
							t.Errorf("Free inside callback: %v", err)
						}
					})
					panic("after free")
				})
			}()
			if _, err := a.Load(tk); !errors.Is(err, ErrStale) {
				t.Fatalf("Load after free+panic = %v, want ErrStale", err)
			}
			if a.Available() != a.Capacity() {
				t.Fatalf("Available %d != Capacity %d after free+panic", a.Available(), a.Capacity())
			}
			// The slot was recycled at release: the only slot is free again, zeroed.
			tk2, p, err := a.Alloc()
			if err != nil {
				t.Fatalf("Alloc after free+panic: %v (slot lost)", err)
			}
			if *p != (faultVal{}) {
				t.Fatalf("recycled slot not zeroed: %+v", *p)
			}
			if err := a.Free(tk2); err != nil {
				t.Fatal(err)
			}
			if st := a.Stats(); st.Allocs != st.Frees || st.Allocs != 2 {
				t.Fatalf("Stats = %+v", st)
			}
		})
	}
}

func TestFaultGoexitInCallback(t *testing.T) {
	for _, write := range []bool{false, true} {
		for _, free := range []bool{false, true} {
			name := fmt.Sprintf("%s/free=%v", map[bool]string{false: "View", true: "Update"}[write], free)
			t.Run(name, func(t *testing.T) {
				a := newFaultArena(t, 2, 1)
				tk, err := a.Store(faultVal{A: 9})
				if err != nil {
					t.Fatal(err)
				}
				access := a.View
				if write {
					access = a.Update
				}
				var after atomic.Bool
				done := make(chan struct{})
				go func() {
					defer close(done)
					access(tk, func(*faultVal) {
						if free {
							if err := a.Free(tk); err != nil {
								t.Errorf("Free inside callback: %v", err)
							}
						}
						runtime.Goexit()
					})
					after.Store(true)
				}()
				select {
				case <-done:
				case <-time.After(5 * time.Second):
					t.Fatal("goroutine did not exit")
				}
				if after.Load() {
					t.Fatal("code after Goexit ran")
				}
				if !free {
					faultUsable(t, a, tk, 9)
					if err := a.Free(tk); err != nil {
						t.Fatal(err)
					}
				} else if _, err := a.Load(tk); !errors.Is(err, ErrStale) {
					t.Fatalf("Load after Free+Goexit = %v, want ErrStale", err)
				}
				if a.Available() != a.Capacity() || a.Capacity() != 2 {
					t.Fatalf("Available %d, Capacity %d, want 2 and 2", a.Available(), a.Capacity())
				}
				// Both slots can be allocated: nothing was lost.
				var ts []token.Token
				for i := 0; i < 2; i++ {
					tk, p, err := a.Alloc()
					if err != nil {
						t.Fatalf("Alloc %d: %v", i, err)
					}
					if *p != (faultVal{}) {
						t.Fatalf("slot %v not zeroed", tk)
					}
					ts = append(ts, tk)
				}
				for _, tk := range ts {
					if err := a.Free(tk); err != nil {
						t.Fatal(err)
					}
				}
			})
		}
	}
}

// TestFaultCloseWaitsForCallback: Close blocks while a View or Update
// callback runs, the callback can still read and write the slot, and the
// memory is unmapped only after it returns.
func TestFaultCloseWaitsForCallback(t *testing.T) {
	for _, write := range []bool{false, true} {
		a, err := New[faultVal](Config{Slots: 4, Shards: 2})
		if err != nil {
			t.Fatal(err)
		}
		tk, err := a.Store(faultVal{A: 1})
		if err != nil {
			t.Fatal(err)
		}
		access := a.View
		if write {
			access = a.Update
		}
		base, size := uintptr(a.region.Base()), a.region.Len()
		inside, release := make(chan struct{}), make(chan struct{})
		var seen atomic.Uint64
		accessDone := make(chan error, 1)
		go func() {
			accessDone <- access(tk, func(p *faultVal) {
				close(inside)
				<-release
				// Close has been called and is waiting: the memory must
				// still be mapped.
				seen.Store(p.A)
				if write {
					p.B = 2
				}
			})
		}()
		<-inside
		closed := make(chan error, 1)
		go func() { closed <- a.Close() }()
		// Close marks the arena closed before waiting: new calls fail.
		deadline := time.Now().Add(5 * time.Second)
		for !a.gate.Closed() && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if _, err := a.Load(tk); !errors.Is(err, ErrClosed) {
			t.Fatalf("Load while Close waits = %v, want ErrClosed", err)
		}
		select {
		case err := <-closed:
			t.Fatalf("Close returned (%v) while a callback was running", err)
		case <-time.After(50 * time.Millisecond):
		}
		if !mapped(t, base, size) {
			t.Fatal("region unmapped while a callback was running")
		}
		close(release)
		if err := <-accessDone; err != nil {
			t.Fatalf("access: %v", err)
		}
		select {
		case err := <-closed:
			if err != nil {
				t.Fatalf("Close: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not return after the callback")
		}
		if seen.Load() != 1 {
			t.Fatalf("callback read A=%d, want 1", seen.Load())
		}
		if mapped(t, base, size) {
			t.Fatal("region still mapped after Close")
		}
	}
}

// TestFaultCloseRacesEverything runs every method from many goroutines while
// Close lands at a random moment. No crash; every result is one the method
// may give; after Close every method says ErrClosed; Stats count exactly
// the calls that succeeded.
func TestFaultCloseRacesEverything(t *testing.T) {
	rounds := 40
	if testing.Short() {
		rounds = 8
	}
	for round := 0; round < rounds; round++ {
		faultCloseRound(t, round)
	}
}

func faultCloseRound(t *testing.T, round int) {
	shards := []int{0, 1, 3, 8}[round%4]
	a, err := New[faultVal](Config{Slots: 32, Shards: shards})
	if err != nil {
		t.Fatal(err)
	}
	const workers = 12
	var (
		allocs, frees atomic.Uint64
		closedOK      atomic.Int32
		wg            sync.WaitGroup
		start         = make(chan struct{})
	)
	bad := func(format string, args ...any) {
		t.Errorf("round %d (Shards=%d): %s", round, shards, fmt.Sprintf(format, args...))
	}
	is := func(err error, allowed ...error) bool {
		if err == nil {
			for _, e := range allowed {
				if e == nil {
					return true
				}
			}
			return false
		}
		for _, e := range allowed {
			if e != nil && errors.Is(err, e) {
				return true
			}
		}
		return false
	}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(round), uint64(w)))
			var live, stale []token.Token
			sawClosed := false
			<-start
			for i := 0; i < 400 && !sawClosed; i++ {
				var err error
				switch op := rng.IntN(14); {
				case op == 0:
					var tk token.Token
					tk, _, err = a.Alloc() // the pointer is never used: Close may unmap it
					if !is(err, nil, ErrFull, ErrClosed) {
						bad("Alloc: %v", err)
					}
					if err == nil {
						allocs.Add(1)
						live = append(live, tk)
					}
				case op == 1:
					var tk token.Token
					tk, err = a.Store(faultVal{A: uint64(w), B: uint64(i)})
					if !is(err, nil, ErrFull, ErrClosed) {
						bad("Store: %v", err)
					}
					if err == nil {
						allocs.Add(1)
						live = append(live, tk)
					}
				case op <= 6 && len(live) > 0:
					k := rng.IntN(len(live))
					tk := live[k]
					switch op {
					case 2:
						_, err = a.Load(tk)
					case 3:
						err = a.View(tk, func(p *faultVal) {
							if rng.IntN(8) == 0 {
								time.Sleep(50 * time.Microsecond) // hold the slot while Close waits
							}
							_ = p.A
						})
					case 4:
						err = a.Update(tk, func(p *faultVal) { p.B++ })
					default:
						err = a.Free(tk)
						if err == nil {
							frees.Add(1)
							live = append(live[:k], live[k+1:]...)
							stale = append(stale, tk)
						}
					}
					if !is(err, nil, ErrClosed) {
						bad("op %d on live %v: %v", op, tk, err)
					}
				case op == 7 && len(stale) > 0:
					tk := stale[rng.IntN(len(stale))]
					switch rng.IntN(4) {
					case 0:
						_, err = a.Load(tk)
					case 1:
						err = a.View(tk, func(*faultVal) { bad("View callback ran for stale %v", tk) })
					case 2:
						err = a.Update(tk, func(*faultVal) { bad("Update callback ran for stale %v", tk) })
					default:
						err = a.Free(tk)
					}
					if !is(err, ErrStale, ErrClosed) {
						bad("stale %v: %v", tk, err)
					}
				case op == 8:
					tk := token.New(uint32(32+rng.IntN(1000)), rng.Uint32())
					_, err = a.Load(tk)
					if !is(err, ErrBadToken, ErrClosed) {
						bad("Load(%v) = %v", tk, err)
					}
					err = nil
				case op == 9:
					if c := a.Capacity(); c != 32 {
						bad("Capacity = %d", c)
					}
					if av := a.Available(); av < 0 || av > 32 {
						bad("Available = %d", av)
					}
					_ = a.Class().String()
					_ = a.Stats()
				case op == 10 && w < 3 && rng.IntN(30) == 0:
					err = a.Close()
					if err == nil {
						closedOK.Add(1)
					} else if !errors.Is(err, ErrClosed) {
						bad("Close: %v", err)
					}
					err = ErrClosed
				}
				if errors.Is(err, ErrClosed) {
					sawClosed = true
				}
			}
			if !sawClosed {
				return
			}
			// Once closed, closed for good, through every method.
			if _, _, err := a.Alloc(); !errors.Is(err, ErrClosed) {
				bad("Alloc after Close: %v", err)
			}
			if _, err := a.Store(faultVal{}); !errors.Is(err, ErrClosed) {
				bad("Store after Close: %v", err)
			}
			for _, tk := range append(live, stale...) {
				if _, err := a.Load(tk); !errors.Is(err, ErrClosed) {
					bad("Load after Close: %v", err)
				}
				if err := a.View(tk, func(*faultVal) { bad("View ran after Close") }); !errors.Is(err, ErrClosed) {
					bad("View after Close: %v", err)
				}
				if err := a.Update(tk, func(*faultVal) { bad("Update ran after Close") }); !errors.Is(err, ErrClosed) {
					bad("Update after Close: %v", err)
				}
				if err := a.Free(tk); !errors.Is(err, ErrClosed) {
					bad("Free after Close: %v", err)
				}
			}
			if av := a.Available(); av != 0 {
				bad("Available after Close = %d", av)
			}
		}(w)
	}
	close(start)
	// The main goroutine closes too, after a random delay, so Close always
	// happens even if no worker drew it.
	time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
	if err := a.Close(); err == nil {
		closedOK.Add(1)
	} else if !errors.Is(err, ErrClosed) {
		t.Errorf("Close: %v", err)
	}
	wg.Wait()
	if n := closedOK.Load(); n != 1 {
		t.Fatalf("round %d: %d Close calls succeeded, want exactly 1", round, n)
	}
	st := a.Stats()
	if st.Allocs != allocs.Load() || st.Frees != frees.Load() {
		t.Fatalf("round %d: Stats %+v, counted %d allocs, %d frees", round, st, allocs.Load(), frees.Load())
	}
	if err := a.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Close after Close = %v", err)
	}
}

// TestFaultGOMAXPROCSUnderLoad changes GOMAXPROCS up and down while
// goroutines churn two arenas (one made with one P, one with many): no slot
// is lost and Stats are exact.
func TestFaultGOMAXPROCSUnderLoad(t *testing.T) {
	orig := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(orig)
	small, err := New[faultVal](Config{Slots: 48}) // one shard: made at GOMAXPROCS=1
	if err != nil {
		t.Fatal(err)
	}
	defer small.Close()
	runtime.GOMAXPROCS(8)
	wide, err := New[faultVal](Config{Slots: 48}) // eight shards
	if err != nil {
		t.Fatal(err)
	}
	defer wide.Close()
	if small.Stats().Shards != 1 || wide.Stats().Shards != 8 {
		t.Fatalf("shards: %d and %d, want 1 and 8", small.Stats().Shards, wide.Stats().Shards)
	}

	dur := 1500 * time.Millisecond
	if testing.Short() {
		dur = 300 * time.Millisecond
	}
	var (
		stop   atomic.Bool
		wg     sync.WaitGroup
		counts [2]struct{ allocs, frees, full atomic.Uint64 }
	)
	arenas := [2]*Arena[faultVal]{small, wide}
	for w := 0; w < 10; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			var held [2][]token.Token
			for i := 0; !stop.Load() || len(held[0])+len(held[1]) > 0; i++ {
				k := rng.IntN(2)
				a, c := arenas[k], &counts[k]
				if !stop.Load() && (len(held[k]) < 6 && rng.IntN(3) != 0) {
					v := faultVal{A: uint64(w), B: uint64(i)}
					tk, err := a.Store(v)
					if errors.Is(err, ErrFull) {
						c.full.Add(1)
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					c.allocs.Add(1)
					got, err := a.Load(tk)
					if err != nil || got != v {
						t.Errorf("Load(%v) = %+v, %v; want %+v", tk, got, err, v)
					}
					held[k] = append(held[k], tk)
					continue
				}
				if len(held[k]) == 0 {
					continue
				}
				tk := held[k][0]
				held[k] = held[k][1:]
				if err := a.Update(tk, func(p *faultVal) {
					if p.A != uint64(w) {
						t.Errorf("slot %v owned by %d, payload says %d", tk, w, p.A)
					}
				}); err != nil {
					t.Error(err)
				}
				if err := a.Free(tk); err != nil {
					t.Error(err)
				}
				c.frees.Add(1)
			}
		}(w)
	}
	procs := []int{1, 2, 4, 8, 3, 16, 1, 5, 2}
	deadline := time.Now().Add(dur)
	for i := 0; time.Now().Before(deadline); i++ {
		runtime.GOMAXPROCS(procs[i%len(procs)])
		time.Sleep(3 * time.Millisecond)
	}
	stop.Store(true)
	runtime.GOMAXPROCS(orig)
	// Workers only free from here on; if they do not finish, an Alloc or
	// Store is spinning (seen once: every worker in Store's retry loop).
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(60 * time.Second):
		buf := make([]byte, 1<<20)
		t.Fatalf("workers stuck 60s after stop; small %+v, wide %+v\n%s",
			small.Stats(), wide.Stats(), buf[:runtime.Stack(buf, true)])
	}
	for k, a := range arenas {
		st := a.Stats()
		if a.Available() != a.Capacity() || a.Capacity() != 48 {
			t.Fatalf("arena %d: Available %d, Capacity %d (slot lost)", k, a.Available(), a.Capacity())
		}
		c := &counts[k]
		if st.Allocs != c.allocs.Load() || st.Frees != c.frees.Load() || st.Failed != c.full.Load() || st.Live != 0 {
			t.Fatalf("arena %d: Stats %+v, counted allocs %d frees %d full %d", k, st, c.allocs.Load(), c.frees.Load(), c.full.Load())
		}
		// Every slot can still be taken, by one goroutine.
		var ts []token.Token
		for {
			tk, err := a.Store(faultVal{})
			if err != nil {
				if !errors.Is(err, ErrFull) {
					t.Fatal(err)
				}
				break
			}
			ts = append(ts, tk)
		}
		if len(ts) != 48 {
			t.Fatalf("arena %d: allocated %d slots after the churn, want 48", k, len(ts))
		}
		for _, tk := range ts {
			if err := a.Free(tk); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestFaultAbsurdCapacity: a capacity no machine can map is refused with a
// clear error, never a crash.
func TestFaultAbsurdCapacity(t *testing.T) {
	_, err := New[[1 << 20]byte](Config{Slots: MaxSlots})
	if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "address space") {
		t.Fatalf("New(MaxSlots of 1 MiB) = %v, want ErrInvalidConfig about address space", err)
	}
	_, err = New[byte](Config{Slots: MaxSlots + 1})
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("New(MaxSlots+1) = %v, want ErrInvalidConfig", err)
	}
	// 2^46 bytes: within the arena's limit, so the kernel decides. Either
	// it maps (reserve only, nothing committed) or it refuses with ErrMap.
	a, err := New[[1<<15 - 16]byte](Config{Slots: 1 << 31})
	switch {
	case err == nil:
		if err := a.Close(); err != nil {
			t.Fatalf("Close of a 64 TiB reservation: %v", err)
		}
	case errors.Is(err, memclass.ErrMap):
		t.Logf("64 TiB reservation refused: %v", err)
	default:
		t.Fatalf("New(64 TiB) = %v, want nil or memclass.ErrMap", err)
	}
}

const rlimitChildEnv = "CELLA_FAULT_RLIMIT_CHILD"

// TestFaultMmapRlimit runs itself in a subprocess that sets a tiny
// address-space limit (RLIMIT_AS): New must fail with a clear error wrapping
// memclass.ErrMap, leave no mapping behind, and work again once the limit is
// restored.
func TestFaultMmapRlimit(t *testing.T) {
	if os.Getenv(rlimitChildEnv) == "1" {
		rlimitChild(t)
		return
	}
	if runtime.GOOS != "linux" {
		t.Skip("RLIMIT_AS test needs linux")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestFaultMmapRlimit$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), rlimitChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err == nil && strings.Contains(string(out), "--- SKIP") {
		t.Skipf("child skipped:\n%s", out)
	}
	if err != nil || !strings.Contains(string(out), "RLIMIT-CHILD-OK") {
		t.Fatalf("child failed: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "refused:") {
			t.Log(strings.TrimSpace(line))
		}
	}
}

func rlimitChild(t *testing.T) {
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_AS, &old); err != nil {
		t.Fatal(err)
	}
	vm := procStatusKiB(t, "VmSize") * 1024
	const headroom = 256 << 20
	lim := unix.Rlimit{Cur: uint64(vm) + headroom, Max: old.Max}
	if old.Cur != unix.RLIM_INFINITY && lim.Cur > old.Cur {
		t.Skipf("RLIMIT_AS already %d", old.Cur)
	}
	if err := unix.Setrlimit(unix.RLIMIT_AS, &lim); err != nil {
		t.Fatal(err)
	}
	// 1 GiB of slots cannot fit in 256 MiB of headroom. A first refused New
	// warms the runtime up (the race detector maps shadow memory for the
	// paths an error takes, the first time they run); the second is the one
	// whose mappings are counted.
	if w, err := New[[4096 - 16]byte](Config{Slots: 1 << 18}); err == nil {
		w.Close()
	}
	mapsBefore := countMaps(t)
	a, err := New[[4096 - 16]byte](Config{Slots: 1 << 18})
	restoreErr := unix.Setrlimit(unix.RLIMIT_AS, &old)
	if restoreErr != nil {
		t.Fatalf("restoring RLIMIT_AS: %v", restoreErr)
	}
	if err == nil {
		a.Close()
		t.Fatal("New of 1 GiB under a 256 MiB address-space limit succeeded")
	}
	if !errors.Is(err, memclass.ErrMap) || !strings.Contains(err.Error(), "arena:") {
		t.Fatalf("New under RLIMIT_AS = %v, want an arena error wrapping memclass.ErrMap", err)
	}
	t.Logf("refused: %v", err)
	// Counted with a little patience, as in the teardown tests: the runtime
	// (and the race detector) may map something of its own meanwhile.
	var after int
	if !settle(time.Second, func() bool { after = countMaps(t); return after <= mapsBefore+2 }) {
		t.Errorf("failed New left mappings: %d lines in /proc/self/maps before, %d after", mapsBefore, after)
	}
	// With the limit restored the same arena can be made and used.
	a, err = New[[4096 - 16]byte](Config{Slots: 1 << 18})
	if err != nil {
		t.Fatalf("New after restoring RLIMIT_AS: %v", err)
	}
	tk, p, err := a.Alloc()
	if err != nil {
		t.Fatal(err)
	}
	p[0] = 1
	if err := a.Free(tk); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	fmt.Println("RLIMIT-CHILD-OK")
}

// TestFaultHostileTokens feeds random, forged, foreign and closed-arena
// tokens to every token method: only ErrBadToken, ErrStale or ErrClosed come
// back, no callback runs, and no live value or count changes.
func TestFaultHostileTokens(t *testing.T) {
	const slots = 16
	a := newFaultArena(t, slots, 3)
	live := map[token.Token]faultVal{}
	for i := 0; i < slots/2; i++ {
		v := faultVal{A: uint64(i) * 0x1111, B: ^uint64(i)}
		tk, err := a.Store(v)
		if err != nil {
			t.Fatal(err)
		}
		live[tk] = v
	}
	// A few freed tokens too, so stale slots exist.
	for i := 0; i < 3; i++ {
		tk, err := a.Store(faultVal{})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Free(tk); err != nil {
			t.Fatal(err)
		}
	}
	before := a.Stats()

	// try runs every token method on tk and checks the error against allowed.
	try := func(a *Arena[faultVal], tk token.Token, what string, allowed ...error) {
		t.Helper()
		check := func(method string, err error) {
			t.Helper()
			for _, e := range allowed {
				if errors.Is(err, e) {
					return
				}
			}
			t.Fatalf("%s token %v: %s = %v, want one of %v", what, tk, method, err, allowed)
		}
		_, err := a.Load(tk)
		check("Load", err)
		check("View", a.View(tk, func(*faultVal) { t.Fatalf("View callback ran for %s token %v", what, tk) }))
		check("Update", a.Update(tk, func(p *faultVal) {
			*p = faultVal{A: 0xbad}
			t.Fatalf("Update callback ran for %s token %v", what, tk)
		}))
		check("Free", a.Free(tk))
	}

	n := 50000
	if testing.Short() {
		n = 5000
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < n; i++ {
		var tk token.Token
		switch i % 4 {
		case 0: // anything
			tk = token.Token(rng.Uint64())
		case 1: // an index inside the arena, any generation
			tk = token.New(rng.Uint32N(slots), rng.Uint32())
		case 2: // an index just past the end, or far past it
			tk = token.New(slots+rng.Uint32N(4), a.firstGen)
			if rng.IntN(2) == 0 {
				tk = token.New(^rng.Uint32N(4), a.firstGen)
			}
		case 3: // a live token's index with a nearby generation
			for k := range live {
				tk = token.New(k.Index(), k.Generation()+uint32(rng.IntN(7))-3)
				break
			}
		}
		if _, ok := live[tk]; ok {
			continue // forged by chance into a real token
		}
		try(a, tk, "forged", ErrBadToken, ErrStale)
	}
	try(a, token.Nil, "nil", ErrBadToken)

	// Tokens of another arena of the same size (its generations differ).
	other := newFaultArena(t, slots, 1)
	for other.firstGen == a.firstGen { // one chance in 2^30
		other = newFaultArena(t, slots, 1)
	}
	var theirs []token.Token
	for i := 0; i < slots; i++ {
		tk, err := other.Store(faultVal{A: 0xfeed})
		if err != nil {
			t.Fatal(err)
		}
		theirs = append(theirs, tk)
		if _, ok := live[tk]; ok {
			continue
		}
		try(a, tk, "foreign", ErrStale)
	}
	for tk := range live {
		try(other, tk, "foreign", ErrStale)
	}
	// Tokens of a bigger arena, pointing past this one's end.
	big := newFaultArena(t, 4*slots, 1)
	for i := 0; i < 4*slots; i++ {
		tk, err := big.Store(faultVal{})
		if err != nil {
			t.Fatal(err)
		}
		if tk.Index() >= slots {
			try(a, tk, "bigger arena's", ErrBadToken)
		}
	}
	// Tokens of a closed arena: on it, ErrClosed (or ErrBadToken for a
	// malformed one); on a live arena, as foreign.
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tk := range theirs {
		try(other, tk, "closed arena's", ErrClosed)
		if _, ok := live[tk]; !ok {
			try(a, tk, "closed arena's", ErrStale)
		}
	}
	try(other, token.Nil, "nil on closed", ErrClosed, ErrBadToken)
	for i := 0; i < 1000; i++ {
		try(other, token.Token(rng.Uint64()), "random on closed", ErrClosed, ErrBadToken)
	}

	// Nothing changed in a.
	for tk, v := range live {
		got, err := a.Load(tk)
		if err != nil || got != v {
			t.Fatalf("live %v: Load = %+v, %v; want %+v", tk, got, err, v)
		}
	}
	after := a.Stats()
	if after.Allocs != before.Allocs || after.Frees != before.Frees || a.Available() != slots-len(live) {
		t.Fatalf("hostile tokens changed the arena: before %+v, after %+v, Available %d", before, after, a.Available())
	}
}

// TestFaultRecycledSlotsZeroed: whatever the previous owner wrote, and
// however the slot came back (Free, Free during View, stealing between
// shards), Alloc hands it out zeroed.
func TestFaultRecycledSlotsZeroed(t *testing.T) {
	type big struct {
		Head uint64
		Body [8000]byte // spans pages
		Tail uint32
	}
	for _, shards := range []int{1, 4} {
		a, err := New[big](Config{Slots: 8, Shards: shards})
		if err != nil {
			t.Fatal(err)
		}
		dirty := func(p *big) {
			p.Head, p.Tail = ^uint64(0), ^uint32(0)
			for i := range p.Body {
				p.Body[i] = byte(i) | 1
			}
		}
		var full big
		dirty(&full)
		for round := 0; round < 6; round++ {
			var ts []token.Token
			for i := 0; i < 8; i++ {
				tk, p, err := a.Alloc()
				if err != nil {
					t.Fatalf("shards %d round %d: Alloc %d: %v", shards, round, i, err)
				}
				if *p != (big{}) {
					t.Fatalf("shards %d round %d: slot %v handed out with old data", shards, round, tk)
				}
				ts = append(ts, tk)
				switch i % 3 {
				case 0:
					dirty(p)
				case 1:
					a.Update(tk, dirty)
				case 2: // Store a dirty value into another slot later
				}
			}
			for i, tk := range ts {
				switch i % 3 {
				case 1: // free while a View holds it: recycled at release
					err = a.View(tk, func(*big) { a.Free(tk) })
				default:
					err = a.Free(tk)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			// Store fills slots with dirty data the next Alloc must not see.
			for i := 0; i < 4; i++ {
				tk, err := a.Store(full)
				if err != nil {
					t.Fatal(err)
				}
				if err := a.Free(tk); err != nil {
					t.Fatal(err)
				}
			}
		}
		if a.Available() != 8 {
			t.Fatalf("Available = %d, want 8", a.Available())
		}
		a.Close()
	}
}

// procStatusKiB returns a "Name:   N kB" field of /proc/self/status.
func procStatusKiB(t testing.TB, name string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, name+":"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				n, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil {
					return n
				}
			}
		}
	}
	t.Fatalf("no %s in /proc/self/status", name)
	return 0
}

// procMaps returns the address ranges of /proc/self/maps.
func procMaps(t testing.TB) [][2]uintptr {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Skipf("no /proc/self/maps: %v", err)
	}
	var out [][2]uintptr
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		r, _, _ := strings.Cut(line, " ")
		lo, hi, ok := strings.Cut(r, "-")
		if !ok {
			continue
		}
		l, err1 := strconv.ParseUint(lo, 16, 64)
		h, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 == nil && err2 == nil {
			out = append(out, [2]uintptr{uintptr(l), uintptr(h)})
		}
	}
	return out
}

func countMaps(t testing.TB) int { return len(procMaps(t)) }

// mapped reports whether any mapping overlaps [base, base+size).
func mapped(t testing.TB, base, size uintptr) bool {
	for _, m := range procMaps(t) {
		if m[0] < base+size && base < m[1] {
			return true
		}
	}
	return false
}
