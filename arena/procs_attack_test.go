package arena

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/memclass"
	"github.com/cella-go/cella/token"
)

// Attacks on Arena behaviour while runtime.GOMAXPROCS changes under it
// (raised above and lowered below the value at New, repeatedly) and with
// more goroutines than Ps.

// procsVal is one page per slot, so that Trim can release single slots.
type procsVal [512]uint64

const procsTimeout = 20 * time.Second

// procsSet sets GOMAXPROCS and restores the original value at the end of
// the test.
func procsSet(t *testing.T, n int) {
	t.Helper()
	prev := runtime.GOMAXPROCS(n)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
}

func procsDump() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// procsParked counts goroutines parked in a select inside the arena's
// wait loop.
func procsParked() int {
	n := 0
	for _, g := range strings.Split(procsDump(), "\n\n") {
		if strings.Contains(g, "[select") && strings.Contains(g, "arena.(*core).await") {
			n++
		}
	}
	return n
}

// procsWait waits for wg or fails the test with a goroutine dump.
func procsWait(t *testing.T, wg *sync.WaitGroup, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(procsTimeout):
		t.Fatalf("timeout waiting for %s\n%s", what, procsDump())
	}
}

// procsLevels are the GOMAXPROCS values the churner cycles through: below,
// at and far above the value at New (and above NumCPU, so above the per-P
// table).
func procsLevels() []int {
	n := runtime.NumCPU()
	return []int{1, n*4 + 3, 2, 1, n + 1, 17, 1, n*8 + 5, 3}
}

// procsChurn changes GOMAXPROCS until stop is closed.
func procsChurn(stop <-chan struct{}, wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		lv := procsLevels()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			runtime.GOMAXPROCS(lv[i%len(lv)])
			time.Sleep(time.Duration(50+i%7*40) * time.Microsecond)
		}
	}()
}

type procsCfg struct {
	name string
	cfg  Config
}

// procsConfigs returns the arena shapes to attack with n slots; per-node
// only where it can be made.
func procsConfigs(n int) []procsCfg {
	cs := []procsCfg{
		{"perP", Config{Slots: n}},
		{"oneShard", Config{Slots: n, Shards: 1}},
		{"threeShards", Config{Slots: n, Shards: 3}},
		{"manyShards", Config{Slots: n, Shards: 16}},
	}
	if a, err := New[procsVal](Config{Slots: n, Class: memclass.PerNode()}); err == nil {
		a.Close()
		cs = append(cs, procsCfg{"perNode", Config{Slots: n, Class: memclass.PerNode()}})
	}
	return cs
}

func procsIsZero(v *procsVal) bool {
	for _, x := range v {
		if x != 0 {
			return false
		}
	}
	return true
}

func procsFill(v *procsVal, x uint64) {
	for i := range v {
		v[i] = x + uint64(i)
	}
}

// procsSpreadFree frees toks from one goroutine each, started together,
// so that the frees land on many Ps (and in many per-P caches).
func procsSpreadFree(t *testing.T, a *Arena[procsVal], toks []token.Token) {
	t.Helper()
	var wg sync.WaitGroup
	start := make(chan struct{})
	var bad, arrived atomic.Int64
	for _, tok := range toks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			// Spin together for a moment so that the frees run on as
			// many Ps at once as there are (one cached slot per P).
			arrived.Add(1)
			for t0 := time.Now(); arrived.Load() < int64(len(toks)) && time.Since(t0) < 2*time.Millisecond; {
			}
			if err := a.Free(tok); err != nil {
				bad.Add(1)
				t.Errorf("Free(%v) from another goroutine: %v", tok, err)
			}
		}()
	}
	close(start)
	procsWait(t, &wg, "spread frees")
	if bad.Load() != 0 {
		t.FailNow()
	}
}

// procsSpreadAlloc allocates n slots concurrently, one goroutine each.
// Exactly n slots are free and every goroutine takes at most one, so fewer
// than Capacity slots are allocated at every instant while any of them
// runs: ErrFull is never correct.
func procsSpreadAlloc(t *testing.T, a *Arena[procsVal], n int, why string) []token.Token {
	t.Helper()
	var wg sync.WaitGroup
	start := make(chan struct{})
	toks := make([]token.Token, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			runtime.Gosched()
			tok, v, err := a.Alloc()
			if err == nil && !procsIsZero(v) {
				err = fmt.Errorf("slot %v not zeroed", tok)
			}
			toks[i], errs[i] = tok, err
		}()
	}
	close(start)
	procsWait(t, &wg, "spread allocs")
	seen := map[uint32]bool{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%s: concurrent Alloc %d of %d free slots (Capacity %d, GOMAXPROCS %d): %v; Stats %+v",
				why, i, n, a.Capacity(), runtime.GOMAXPROCS(0), err, a.Stats())
		}
		if seen[toks[i].Index()] {
			t.Fatalf("%s: slot %d handed out twice", why, toks[i].Index())
		}
		seen[toks[i].Index()] = true
	}
	return toks
}

// Exact ErrFull with free slots parked in the caches of Ps that no longer
// exist (GOMAXPROCS lowered after the frees) and of Ps beyond the per-P
// table (GOMAXPROCS raised after New).
func TestProcsExactFullDeadAndExtraPs(t *testing.T) {
	orig := runtime.GOMAXPROCS(0)
	procsSet(t, orig)
	for _, n := range []int{1, 2, 7, 33, 64} {
		for _, c := range procsConfigs(n) {
			t.Run(fmt.Sprintf("%s/%d", c.name, n), func(t *testing.T) {
				runtime.GOMAXPROCS(8) // the per-P table has 8 entries (or NumCPU)
				a, err := New[procsVal](c.cfg)
				if err != nil {
					t.Fatal(err)
				}
				defer a.Close()
				toks := make([]token.Token, 0, n)
				for i := 0; i < n; i++ {
					tok, _, err := a.Alloc()
					if err != nil {
						t.Fatalf("Alloc %d of %d: %v", i+1, n, err)
					}
					toks = append(toks, tok)
				}
				if _, _, err := a.Alloc(); !errors.Is(err, ErrFull) {
					t.Fatalf("Alloc past capacity: %v", err)
				}
				rounds := 0
				for _, procs := range []int{1, 2 * 8, 1, 3, 8*4 + 1, 1} {
					// Free from many goroutines (many Ps' caches), then
					// change the P count and take every slot back.
					procsSpreadFree(t, a, toks)
					runtime.GOMAXPROCS(procs)
					if got := a.Available(); got != n {
						t.Fatalf("GOMAXPROCS %d: Available = %d after freeing all %d", procs, got, n)
					}
					if rounds%2 == 0 {
						// One goroutine takes exactly N.
						toks = toks[:0]
						for i := 0; i < n; i++ {
							tok, v, err := a.Alloc()
							if err != nil {
								t.Fatalf("GOMAXPROCS %d: Alloc %d of %d with %d held: %v; Stats %+v",
									procs, i+1, n, i, err, a.Stats())
							}
							if !procsIsZero(v) {
								t.Fatalf("recycled slot %v not zeroed", tok)
							}
							procsFill(v, uint64(i+1)<<20)
							toks = append(toks, tok)
						}
					} else {
						toks = procsSpreadAlloc(t, a, n, fmt.Sprintf("GOMAXPROCS %d", procs))
					}
					rounds++
					if _, _, err := a.Alloc(); !errors.Is(err, ErrFull) {
						t.Fatalf("GOMAXPROCS %d: Alloc with all %d held: %v", procs, n, err)
					}
				}
				st := a.Stats()
				t.Logf("Stats %+v", st)
				want := uint64(n) * uint64(rounds+1)
				if st.Allocs != want || st.Frees != want-uint64(n) || st.Failed != uint64(rounds+1) ||
					st.Live != uint64(n) || st.Untouched != 0 || st.Retired != 0 {
					t.Fatalf("Stats %+v; want Allocs %d, Frees %d, Failed %d, Live %d, Untouched 0",
						st, want, want-uint64(n), rounds+1, n)
				}
				if st.Steals > st.Allocs || st.Drains > st.Allocs+st.Failed {
					t.Fatalf("Stats %+v: Steals or Drains exceed the calls", st)
				}
				if a.Available() != 0 {
					t.Fatalf("Available = %d with all held", a.Available())
				}
				procsSpreadFree(t, a, toks)
				if a.Available() != a.Capacity() || a.Capacity() != n {
					t.Fatalf("Available %d, Capacity %d, want %d", a.Available(), a.Capacity(), n)
				}
			})
		}
	}
}

// procsTracker checks that no slot is handed out twice while allocated.
type procsTracker struct {
	held []atomic.Int32 // per slot: 1 while the test holds it
	used []atomic.Bool  // per slot: ever handed out
}

func newProcsTracker(n int) *procsTracker {
	return &procsTracker{held: make([]atomic.Int32, n), used: make([]atomic.Bool, n)}
}

func (tr *procsTracker) take(tok token.Token) error {
	i := tok.Index()
	if int(i) >= len(tr.held) {
		return fmt.Errorf("token %v: index out of range", tok)
	}
	if !tr.held[i].CompareAndSwap(0, 1) {
		return fmt.Errorf("slot %d handed out twice while allocated (%v)", i, tok)
	}
	tr.used[i].Store(true)
	return nil
}

func (tr *procsTracker) drop(tok token.Token) { tr.held[tok.Index()].Store(0) }

func (tr *procsTracker) usedCount() (n uint64) {
	for i := range tr.used {
		if tr.used[i].Load() {
			n++
		}
	}
	return n
}

// Conservation under churn: allocators hand tokens to freers through a
// channel while GOMAXPROCS churns and Trim runs. At most K < N slots are
// allocated at any instant (a semaphore taken before the allocation and
// released after the Free returns), so every ErrFull is a bug. Afterwards
// everything must add up exactly.
func TestProcsConservationChurn(t *testing.T) {
	orig := runtime.GOMAXPROCS(0)
	procsSet(t, orig)
	dur := 400 * time.Millisecond
	if testing.Short() {
		dur = 100 * time.Millisecond
	}
	for _, n := range []int{3, 16, 64} {
		for _, c := range procsConfigs(n) {
			t.Run(fmt.Sprintf("%s/%d", c.name, n), func(t *testing.T) {
				runtime.GOMAXPROCS(orig)
				procsConservation(t, c.cfg, n, dur)
			})
		}
	}
}

func procsConservation(t *testing.T, cfg Config, n int, dur time.Duration) {
	a, err := New[procsVal](cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	tr := newProcsTracker(n)
	k := n - 1
	sem := make(chan struct{}, k)
	type item struct {
		tok token.Token
		pat uint64 // 0: allocated (must have been zero); else stored pattern
	}
	ch := make(chan item, k)
	var (
		allocs, frees, fulls atomic.Uint64
		staleMu              sync.Mutex
		stale                []token.Token
		failed               atomic.Bool
	)
	fail := func(format string, args ...any) {
		if failed.CompareAndSwap(false, true) {
			t.Errorf(format, args...)
		}
	}
	stop := make(chan struct{})
	var churn, workers, freers sync.WaitGroup
	procsChurn(stop, &churn)
	// Trim, concurrently.
	churn.Add(1)
	go func() {
		defer churn.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := a.Trim(); err != nil {
				fail("Trim: %v", err)
				return
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	ctx := context.Background()
	nw := 3*runtime.NumCPU() + 4 // more goroutines than Ps
	for w := 0; w < nw; w++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for i := uint64(0); ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				sem <- struct{}{}
				var (
					tok token.Token
					v   *procsVal
					err error
					pat uint64
				)
				switch i % 4 {
				case 0:
					tok, v, err = a.Alloc()
				case 1:
					tok, v, err = a.AllocWait(ctx)
				case 2:
					var x procsVal
					pat = uint64(w+1)<<40 | i<<8 | 1
					procsFill(&x, pat)
					tok, err = a.Store(x)
				case 3:
					var x procsVal
					pat = uint64(w+1)<<40 | i<<8 | 3
					procsFill(&x, pat)
					tok, err = a.StoreWait(ctx, x)
				}
				if err != nil {
					<-sem
					if errors.Is(err, ErrFull) {
						fulls.Add(1)
						fail("ErrFull with at most %d of %d slots allocated (GOMAXPROCS %d): %v; Stats %+v",
							k, n, runtime.GOMAXPROCS(0), err, a.Stats())
					} else {
						fail("alloc: %v", err)
					}
					return
				}
				allocs.Add(1)
				if err := tr.take(tok); err != nil {
					fail("%v", err)
					<-sem
					return
				}
				if v != nil {
					if !procsIsZero(v) {
						fail("Alloc returned slot %v not zeroed: %#x", tok, v[0])
					}
					pat = uint64(w+1)<<40 | i<<8 | 5
					procsFill(v, pat)
				}
				ch <- item{tok, pat}
			}
		}()
	}
	for f := 0; f < 2; f++ {
		freers.Add(1)
		go func() {
			defer freers.Done()
			for it := range ch {
				got, err := a.Load(it.tok)
				if err != nil {
					fail("Load of live %v: %v", it.tok, err)
				} else {
					want := it.pat
					if got[0] != want || got[511] != want+511 {
						fail("slot %v: pattern %#x/%#x, want %#x (slot shared or clobbered)", it.tok, got[0], got[511], want)
					}
				}
				tr.drop(it.tok)
				if err := a.Free(it.tok); err != nil {
					fail("Free of live %v: %v", it.tok, err)
				}
				frees.Add(1)
				<-sem
				staleMu.Lock()
				if len(stale) < 4096 {
					stale = append(stale, it.tok)
				}
				staleMu.Unlock()
				if _, err := a.Load(it.tok); !errors.Is(err, ErrStale) {
					fail("Load of freed %v: %v, want ErrStale", it.tok, err)
				}
			}
		}()
	}
	time.Sleep(dur)
	close(stop)
	procsWait(t, &workers, "allocating workers")
	close(ch)
	procsWait(t, &freers, "freeing workers")
	procsWait(t, &churn, "churn and trim")
	if t.Failed() {
		return
	}

	t.Logf("%d allocs, Stats %+v", allocs.Load(), a.Stats())
	// Quiescence: exact figures.
	if got, want := a.Available(), a.Capacity(); got != want || want != n {
		t.Fatalf("Available %d, Capacity %d after every token was freed, want %d", got, want, n)
	}
	st := a.Stats()
	if st.Allocs != allocs.Load() || st.Frees != frees.Load() || st.Live != 0 || st.Failed != fulls.Load() {
		t.Fatalf("Stats %+v; test counted %d allocs, %d frees, %d ErrFull", st, allocs.Load(), frees.Load(), fulls.Load())
	}
	if want := uint64(n) - tr.usedCount(); st.Untouched != want {
		t.Fatalf("Stats.Untouched = %d, want %d (%d distinct slots used)", st.Untouched, want, tr.usedCount())
	}
	for tok := range a.Tokens() {
		t.Fatalf("Tokens yielded %v with nothing live", tok)
	}
	staleMu.Lock()
	for _, tok := range stale {
		if _, err := a.Load(tok); !errors.Is(err, ErrStale) {
			t.Fatalf("Load of freed %v after churn: %v", tok, err)
		}
		if err := a.Free(tok); !errors.Is(err, ErrStale) {
			t.Fatalf("Free of freed %v after churn: %v", tok, err)
		}
		if err := a.Update(tok, func(*procsVal) {}); !errors.Is(err, ErrStale) {
			t.Fatalf("Update of freed %v after churn: %v", tok, err)
		}
	}
	staleMu.Unlock()

	// Hold a live set taken at random Ps; Tokens yields exactly it.
	runtime.GOMAXPROCS(1)
	live := procsSpreadAlloc(t, a, n, "after churn")
	if _, _, err := a.Alloc(); !errors.Is(err, ErrFull) {
		t.Fatalf("Alloc with all %d held: %v", n, err)
	}
	keep := map[token.Token]bool{}
	var drop []token.Token
	for i, tok := range live {
		if i%3 == 1 {
			drop = append(drop, tok)
		} else {
			keep[tok] = true
		}
	}
	runtime.GOMAXPROCS(runtime.NumCPU()*4 + 3)
	procsSpreadFree(t, a, drop)
	got := map[token.Token]bool{}
	for tok := range a.Tokens() {
		if got[tok] {
			t.Fatalf("Tokens yielded %v twice", tok)
		}
		got[tok] = true
	}
	if len(got) != len(keep) {
		t.Fatalf("Tokens yielded %d tokens, want the %d live ones", len(got), len(keep))
	}
	for tok := range keep {
		if !got[tok] {
			t.Fatalf("Tokens missed live %v", tok)
		}
	}
	if a.Available() != len(drop) {
		t.Fatalf("Available %d, want %d", a.Available(), len(drop))
	}
	st2 := a.Stats()
	if st2.Allocs != st.Allocs+uint64(n) || st2.Frees != st.Frees+uint64(len(drop)) || st2.Failed != st.Failed+1 {
		t.Fatalf("Stats %+v after %d more allocs, %d frees and one ErrFull (before: %+v)", st2, n, len(drop), st)
	}
}

// AllocWait/StoreWait under churn: waiters registered one after the other
// are served in arrival order when slots are freed one at a time by another
// goroutine; cancelled waiters lose no slot; Failed does not count waits.
func TestProcsWaitOrderChurn(t *testing.T) {
	orig := runtime.GOMAXPROCS(0)
	procsSet(t, orig)
	for _, c := range procsConfigs(4) {
		t.Run(c.name, func(t *testing.T) {
			runtime.GOMAXPROCS(orig)
			a, err := New[procsVal](c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			const n = 4
			held := make([]token.Token, 0, n)
			for i := 0; i < n; i++ {
				tok, _, err := a.Alloc()
				if err != nil {
					t.Fatal(err)
				}
				held = append(held, tok)
			}
			stop := make(chan struct{})
			var churn sync.WaitGroup
			procsChurn(stop, &churn)
			defer func() { close(stop); procsWait(t, &churn, "churn") }()

			const nw = 8
			cancelled := map[int]bool{2: true, 5: true}
			type result struct {
				who int
				tok token.Token
				err error
			}
			results := make(chan result, nw)
			cancels := make([]context.CancelFunc, nw)
			var wg sync.WaitGroup
			for w := 0; w < nw; w++ {
				ctx, cancel := context.WithCancel(context.Background())
				cancels[w] = cancel
				defer cancel()
				wg.Add(1)
				go func() {
					defer wg.Done()
					var tok token.Token
					var v *procsVal
					var err error
					if w%2 == 0 {
						tok, v, err = a.AllocWait(ctx)
						if err == nil && !procsIsZero(v) {
							err = fmt.Errorf("AllocWait: slot %v not zeroed", tok)
						}
					} else {
						var x procsVal
						procsFill(&x, uint64(w)<<32)
						tok, err = a.StoreWait(ctx, x)
					}
					results <- result{w, tok, err}
				}()
				// Arrival order: wait until this waiter is registered.
				deadline := time.Now().Add(procsTimeout)
				// Registered is not enough: its first try may still be
				// running (and may take a slot ahead of earlier waiters,
				// like a call that does not wait). Wait until it is parked.
				for a.waitq.n.Load() != int32(w+1) || procsParked() != w+1 {
					if time.Now().After(deadline) {
						t.Fatalf("waiter %d never parked (n = %d, parked %d)\n%s", w, a.waitq.n.Load(), procsParked(), procsDump())
					}
					time.Sleep(50 * time.Microsecond)
				}
			}
			recv := func(what string) result {
				t.Helper()
				select {
				case r := <-results:
					return r
				case <-time.After(procsTimeout):
					t.Fatalf("timeout waiting for %s\n%s", what, procsDump())
				}
				panic("unreachable")
			}
			for w := range cancelled {
				cancels[w]()
				r := recv(fmt.Sprintf("cancelled waiter %d", w))
				if !cancelled[r.who] || !errors.Is(r.err, context.Canceled) {
					t.Fatalf("after cancelling waiter %d: waiter %d returned %v, %v", w, r.who, r.tok, r.err)
				}
			}
			var got []token.Token
			freeFrom := make(chan token.Token)
			freeErr := make(chan error, 1)
			go func() {
				for tok := range freeFrom {
					if err := a.Free(tok); err != nil {
						freeErr <- err
						return
					}
				}
				freeErr <- nil
			}()
			next := 0
			for served := 0; served < nw-len(cancelled); served++ {
				for cancelled[next] {
					next++
				}
				freeFrom <- held[0]
				held = held[1:]
				if len(held) == 0 {
					// Recycle what the waiters got: free the earliest served.
					held = append(held, got[0])
					got = got[1:]
				}
				r := recv(fmt.Sprintf("waiter %d", next))
				if r.err != nil {
					t.Fatalf("waiter %d: %v", r.who, r.err)
				}
				if r.who != next {
					t.Fatalf("slot freed with waiters %d.. queued in order: waiter %d got it first (arrival order)", next, r.who)
				}
				got = append(got, r.tok)
				next++
			}
			close(freeFrom)
			if err := <-freeErr; err != nil {
				t.Fatal(err)
			}
			procsWait(t, &wg, "waiters")
			if a.waitq.n.Load() != 0 {
				t.Fatalf("%d waiters still registered", a.waitq.n.Load())
			}
			live := append(append([]token.Token(nil), held...), got...)
			if len(live) != n {
				t.Fatalf("test bookkeeping: %d live, want %d", len(live), n)
			}
			if a.Available() != 0 {
				t.Fatalf("Available = %d with %d live in a %d-slot arena", a.Available(), len(live), n)
			}
			procsSpreadFree(t, a, live)
			if a.Available() != n {
				t.Fatalf("Available %d after freeing all, want %d (a slot lost to a cancelled waiter?)", a.Available(), n)
			}
			st := a.Stats()
			served := uint64(nw - len(cancelled))
			if st.Failed != 0 || st.Allocs != n+served || st.Frees != n+served {
				t.Fatalf("Stats %+v, want Failed 0, Allocs = Frees = %d", st, n+served)
			}
		})
	}
}

// Close while waiters wait under churn: every waiter returns ErrClosed.
func TestProcsWaitCloseChurn(t *testing.T) {
	orig := runtime.GOMAXPROCS(0)
	procsSet(t, orig)
	for _, c := range procsConfigs(3) {
		t.Run(c.name, func(t *testing.T) {
			runtime.GOMAXPROCS(orig)
			a, err := New[procsVal](c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 3; i++ {
				if _, _, err := a.Alloc(); err != nil {
					t.Fatal(err)
				}
			}
			stop := make(chan struct{})
			var churn sync.WaitGroup
			procsChurn(stop, &churn)
			defer func() { close(stop); procsWait(t, &churn, "churn") }()
			const nw = 12
			errs := make(chan error, nw)
			var wg sync.WaitGroup
			for w := 0; w < nw; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var err error
					if w%2 == 0 {
						//lint:ignore SA1012 a nil context is what is tested
						_, _, err = a.AllocWait(nil)
					} else {
						_, err = a.StoreWait(context.Background(), procsVal{1})
					}
					errs <- err
				}()
			}
			deadline := time.Now().Add(procsTimeout)
			for a.waitq.n.Load() != nw {
				if time.Now().After(deadline) {
					t.Fatalf("waiters never registered (n = %d)\n%s", a.waitq.n.Load(), procsDump())
				}
				time.Sleep(50 * time.Microsecond)
			}
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			procsWait(t, &wg, "waiters after Close")
			close(errs)
			for err := range errs {
				if !errors.Is(err, ErrClosed) {
					t.Fatalf("waiter returned %v after Close, want ErrClosed", err)
				}
			}
			if _, _, err := a.AllocWait(context.Background()); !errors.Is(err, ErrClosed) {
				t.Fatalf("AllocWait after Close: %v", err)
			}
		})
	}
}

// Trim under churn: write a pattern, free from other goroutines, Trim,
// allocate again from other goroutines: every recycled slot is zero, and
// the freed tokens stay stale.
func TestProcsTrimZeroChurn(t *testing.T) {
	orig := runtime.GOMAXPROCS(0)
	procsSet(t, orig)
	for _, n := range []int{1, 5, 64} {
		for _, c := range procsConfigs(n) {
			t.Run(fmt.Sprintf("%s/%d", c.name, n), func(t *testing.T) {
				runtime.GOMAXPROCS(orig)
				a, err := New[procsVal](c.cfg)
				if err != nil {
					t.Fatal(err)
				}
				defer a.Close()
				stop := make(chan struct{})
				var churn sync.WaitGroup
				procsChurn(stop, &churn)
				defer func() { close(stop); procsWait(t, &churn, "churn") }()
				var old []token.Token
				for round := 0; round < 6; round++ {
					toks := procsSpreadAlloc(t, a, n, fmt.Sprintf("round %d", round))
					for i, tok := range toks {
						if err := a.Update(tok, func(v *procsVal) { procsFill(v, uint64(round+1)<<32|uint64(i)<<8|7) }); err != nil {
							t.Fatal(err)
						}
					}
					if _, _, err := a.Alloc(); !errors.Is(err, ErrFull) {
						t.Fatalf("round %d: Alloc with all held: %v", round, err)
					}
					procsSpreadFree(t, a, toks)
					if _, err := a.Trim(); err != nil {
						t.Fatal(err)
					}
					old = append(old, toks...)
					for _, tok := range old {
						if _, err := a.Load(tok); !errors.Is(err, ErrStale) {
							t.Fatalf("round %d: Load of freed %v after Trim: %v", round, tok, err)
						}
						if err := a.View(tok, func(*procsVal) {}); !errors.Is(err, ErrStale) {
							t.Fatalf("round %d: View of freed %v after Trim: %v", round, tok, err)
						}
					}
					if got := a.Available(); got != n {
						t.Fatalf("round %d: Available %d after Trim, want %d", round, got, n)
					}
				}
				// procsSpreadAlloc checked every recycled slot is zero; the
				// last round's slots are still free: take them once more.
				toks := procsSpreadAlloc(t, a, n, "after last Trim")
				st := a.Stats()
				if st.Allocs != uint64(7*n) || st.Frees != uint64(6*n) || st.Failed != 6 || st.Untouched != 0 {
					t.Fatalf("Stats %+v, want Allocs %d, Frees %d, Failed 6, Untouched 0", st, 7*n, 6*n)
				}
				procsSpreadFree(t, a, toks)
			})
		}
	}
}

// Stats while GOMAXPROCS is raised far above the per-P table: the Ps beyond
// it count in the spill counters; every figure is still exact.
func TestProcsStatsBeyondTable(t *testing.T) {
	orig := runtime.GOMAXPROCS(0)
	procsSet(t, orig)
	for _, c := range procsConfigs(16) {
		t.Run(c.name, func(t *testing.T) {
			runtime.GOMAXPROCS(1)
			a, err := New[procsVal](c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			runtime.GOMAXPROCS(runtime.NumCPU()*8 + 5)
			var wg sync.WaitGroup
			var allocs, frees, fulls atomic.Uint64
			tr := newProcsTracker(16)
			const per = 300
			for w := 0; w < 40; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < per; i++ {
						tok, _, err := a.Alloc()
						if err != nil {
							if !errors.Is(err, ErrFull) {
								t.Errorf("Alloc: %v", err)
								return
							}
							fulls.Add(1)
							runtime.Gosched()
							continue
						}
						allocs.Add(1)
						if err := tr.take(tok); err != nil {
							t.Errorf("%v", err)
							return
						}
						runtime.Gosched()
						tr.drop(tok)
						if err := a.Free(tok); err != nil {
							t.Errorf("Free: %v", err)
							return
						}
						frees.Add(1)
					}
				}()
			}
			procsWait(t, &wg, "workers")
			if t.Failed() {
				return
			}
			st := a.Stats()
			if st.Allocs != allocs.Load() || st.Frees != frees.Load() || st.Failed != fulls.Load() || st.Live != 0 {
				t.Fatalf("Stats %+v; counted allocs %d frees %d ErrFull %d", st, allocs.Load(), frees.Load(), fulls.Load())
			}
			if want := 16 - tr.usedCount(); st.Untouched != want {
				t.Fatalf("Untouched %d, want %d", st.Untouched, want)
			}
			if a.Available() != 16 {
				t.Fatalf("Available %d", a.Available())
			}
			runtime.GOMAXPROCS(1)
			toks := procsSpreadAlloc(t, a, 16, "back to 1 P")
			if _, _, err := a.Alloc(); !errors.Is(err, ErrFull) {
				t.Fatalf("Alloc with all held: %v", err)
			}
			procsSpreadFree(t, a, toks)
		})
	}
}
