package arena_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/memclass"
	"github.com/cella-go/cella/token"
)

// comboClasses are the classes every combo test runs with: the plain host
// class (per-P caches) and the per-node class (no caches, node shards).
var comboClasses = []struct {
	name  string
	class memclass.Class
}{
	{"host", memclass.Host()},
	{"pernode", memclass.PerNode()},
}

func comboNew[T any](t testing.TB, slots, shards int, class memclass.Class) *arena.Arena[T] {
	t.Helper()
	a, err := arena.New[T](arena.Config{Slots: slots, Shards: shards, Class: class})
	if err != nil {
		if class != memclass.Host() {
			t.Skipf("New(%s): %v", class, err)
		}
		t.Fatalf("New(Slots=%d, Shards=%d, %s): %v", slots, shards, class, err)
	}
	t.Cleanup(func() { _ = a.Close() })
	return a
}

// comboWithin runs fn and fails the test if it has not returned after d.
func comboWithin(t *testing.T, d time.Duration, what string, fn func()) bool {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		t.Errorf("%s: still blocked after %v", what, d)
		return false
	}
}

// comboTrimLoop runs Trim in a loop until stop is closed; it reports
// unexpected errors.
func comboTrimLoop[T any](t *testing.T, a *arena.Arena[T], stop <-chan struct{}, wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := a.Trim(); err != nil && !errors.Is(err, arena.ErrClosed) {
				t.Errorf("Trim: %v", err)
				return
			}
			runtime.Gosched()
		}
	}()
}

// TestComboAttackTrimLoopWaitersWoken: the arena is full, waiters are parked
// in AllocWait/StoreWait, Trim runs in a loop (detaching every freelist over
// and over), and the holder frees its slots one by one. Every Free must end
// up waking a waiter: no wake-up may be lost while Trim holds the lists.
func TestComboAttackTrimLoopWaitersWoken(t *testing.T) {
	for _, cl := range comboClasses {
		for _, shards := range []int{0, 1, 3} {
			t.Run(fmt.Sprintf("%s/shards=%d", cl.name, shards), func(t *testing.T) {
				const n = 48
				a := comboNew[[64]byte](t, n, shards, cl.class)
				toks := make([]token.Token, 0, n)
				for i := 0; i < n; i++ {
					tok, _, err := a.Alloc()
					if err != nil {
						t.Fatalf("fill %d: %v", i, err)
					}
					toks = append(toks, tok)
				}
				stop := make(chan struct{})
				var bg sync.WaitGroup
				comboTrimLoop(t, a, stop, &bg)

				const waiters = 16
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				got := make(chan token.Token, waiters)
				errs := make(chan error, waiters)
				var wg sync.WaitGroup
				for w := 0; w < waiters; w++ {
					wg.Add(1)
					go func(w int) {
						defer wg.Done()
						var tok token.Token
						var err error
						if w%2 == 0 {
							tok, _, err = a.AllocWait(ctx)
						} else {
							var v [64]byte
							v[0] = byte(w)
							tok, err = a.StoreWait(ctx, v)
						}
						if err != nil {
							errs <- err
							return
						}
						got <- tok
					}(w)
				}
				time.Sleep(20 * time.Millisecond) // let them park
				for i := 0; i < waiters; i++ {
					if err := a.Free(toks[i]); err != nil {
						t.Fatalf("Free: %v", err)
					}
					if i%3 == 0 {
						runtime.Gosched()
					}
				}
				wg.Wait()
				close(stop)
				bg.Wait()
				close(errs)
				for err := range errs {
					t.Errorf("waiter: %v (a Free's wake-up was lost while Trim ran)", err)
				}
				close(got)
				live := map[uint32]bool{}
				for _, tok := range toks[waiters:] {
					live[tok.Index()] = true
				}
				for tok := range got {
					if live[tok.Index()] {
						t.Fatalf("slot %d handed out twice", tok.Index())
					}
					live[tok.Index()] = true
				}
				if len(live) != n {
					t.Fatalf("%d live slots, want %d", len(live), n)
				}
				if av := a.Available(); av != 0 {
					t.Fatalf("Available %d, want 0", av)
				}
				for tok := range a.Tokens() {
					if err := a.Free(tok); err != nil {
						t.Fatalf("Free from Tokens: %v", err)
					}
				}
				if av := a.Available(); av != a.Capacity() {
					t.Fatalf("Available %d != Capacity %d after freeing every token from Tokens", av, a.Capacity())
				}
				if st := a.Stats(); st.Allocs != st.Frees || st.Live != 0 {
					t.Fatalf("stats %+v", st)
				}
			})
		}
	}
}

// TestComboAttackTrimLoopExactFullAndTokens: with Trim in a loop and churn
// on a second set of slots finished, one goroutine allocates exactly the
// free count and the next Alloc gets ErrFull; Tokens, iterated while Trim
// runs, yields every live slot exactly once.
func TestComboAttackTrimLoopExactFullAndTokens(t *testing.T) {
	for _, cl := range comboClasses {
		for _, shards := range []int{0, 2, 5} {
			t.Run(fmt.Sprintf("%s/shards=%d", cl.name, shards), func(t *testing.T) {
				const n = 300
				a := comboNew[[48]byte](t, n, shards, cl.class)
				stop := make(chan struct{})
				var bg sync.WaitGroup
				comboTrimLoop(t, a, stop, &bg)
				defer func() { close(stop); bg.Wait() }()

				for round := 0; round < 6; round++ {
					// Churn on several goroutines so that free slots end up
					// spread over shards and caches.
					var wg sync.WaitGroup
					for g := 0; g < 4; g++ {
						wg.Add(1)
						go func() {
							defer wg.Done()
							var mine []token.Token
							for i := 0; i < 200; i++ {
								if tok, err := a.Store([48]byte{byte(i)}); err == nil {
									mine = append(mine, tok)
								}
								if len(mine) > 20 || i%7 == 0 {
									for _, tk := range mine {
										if err := a.Free(tk); err != nil {
											t.Errorf("Free: %v", err)
										}
									}
									mine = mine[:0]
								}
							}
							for _, tk := range mine {
								_ = a.Free(tk)
							}
						}()
					}
					wg.Wait()
					if av := a.Available(); av != a.Capacity() {
						t.Fatalf("round %d: Available %d != Capacity %d", round, av, a.Capacity())
					}
					// One goroutine: exactly n, then ErrFull.
					live := make(map[uint32]token.Token, n)
					for i := 0; i < n; i++ {
						tok, _, err := a.Alloc()
						if err != nil {
							t.Fatalf("round %d: Alloc %d of %d with Trim running: %v", round, i+1, n, err)
						}
						if _, dup := live[tok.Index()]; dup {
							t.Fatalf("round %d: slot %d handed out twice", round, tok.Index())
						}
						live[tok.Index()] = tok
					}
					if _, _, err := a.Alloc(); !errors.Is(err, arena.ErrFull) {
						t.Fatalf("round %d: Alloc %d: %v, want ErrFull", round, n+1, err)
					}
					// Free half, then Tokens must yield exactly the other half.
					k := 0
					for idx, tok := range live {
						if k%2 == 0 {
							if err := a.Free(tok); err != nil {
								t.Fatal(err)
							}
							delete(live, idx)
						}
						k++
					}
					seen := map[uint32]int{}
					for tok := range a.Tokens() {
						seen[tok.Index()]++
						if want, ok := live[tok.Index()]; !ok || want != tok {
							t.Fatalf("round %d: Tokens yielded %v, not live (want %v)", round, tok, want)
						}
					}
					for idx := range live {
						if seen[idx] != 1 {
							t.Fatalf("round %d: slot %d yielded %d times", round, idx, seen[idx])
						}
					}
					for _, tok := range live {
						if err := a.Free(tok); err != nil {
							t.Fatal(err)
						}
					}
				}
				if st := a.Stats(); st.Allocs != st.Frees || st.Live != 0 {
					t.Fatalf("stats %+v", st)
				}
			})
		}
	}
}

// TestComboAttackGOMAXPROCSChurnLiveMap: goroutines allocate and free across
// Ps while GOMAXPROCS jumps between 64, 1 and 2 (caches of dead Ps, thieves,
// cooling), Trim runs and Tokens iterates. No slot may be handed out twice
// (a shared map of live indices), none lost, and Stats exact at the end.
// Then one goroutine at GOMAXPROCS=1 must get exactly Capacity slots.
func TestComboAttackGOMAXPROCSChurnLiveMap(t *testing.T) {
	orig := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(orig)
	for _, cl := range comboClasses {
		for _, shards := range []int{0, 3} {
			t.Run(fmt.Sprintf("%s/shards=%d", cl.name, shards), func(t *testing.T) {
				runtime.GOMAXPROCS(orig)
				const n = 96
				a := comboNew[uint64](t, n, shards, cl.class)
				var owners [n]atomic.Int32 // 1 while the slot is live in our hands
				stop := make(chan struct{})
				var bg sync.WaitGroup
				comboTrimLoop(t, a, stop, &bg)
				bg.Add(1)
				go func() { // Tokens must never yield a slot twice in one pass
					defer bg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						seen := map[uint32]bool{}
						for tok := range a.Tokens() {
							if seen[tok.Index()] {
								t.Errorf("Tokens yielded slot %d twice", tok.Index())
								return
							}
							seen[tok.Index()] = true
						}
					}
				}()

				deadline := time.Now().Add(450 * time.Millisecond)
				var wg sync.WaitGroup
				var fulls atomic.Int64
				for g := 0; g < 8; g++ {
					wg.Add(1)
					go func(g int) {
						defer wg.Done()
						var mine []token.Token
						for i := 0; time.Now().Before(deadline); i++ {
							var tok token.Token
							var err error
							if i%2 == 0 {
								var p *uint64
								tok, p, err = a.Alloc()
								if err == nil && *p != 0 {
									t.Errorf("Alloc: recycled slot %d not zeroed: %#x", tok.Index(), *p)
								}
								if err == nil {
									*p = uint64(g)<<32 | uint64(tok.Index())
								}
							} else {
								tok, err = a.Store(uint64(g)<<32 | 0xffffffff)
							}
							if errors.Is(err, arena.ErrFull) {
								fulls.Add(1)
							} else if err != nil {
								t.Errorf("alloc: %v", err)
								return
							} else {
								if !owners[tok.Index()].CompareAndSwap(0, 1) {
									t.Errorf("slot %d handed out twice", tok.Index())
									return
								}
								mine = append(mine, tok)
							}
							if len(mine) > 0 && (len(mine) > 16 || i%3 == 0) {
								j := i % len(mine)
								tk := mine[j]
								mine[j] = mine[len(mine)-1]
								mine = mine[:len(mine)-1]
								owners[tk.Index()].Store(0)
								if err := a.Free(tk); err != nil {
									t.Errorf("Free(%v): %v", tk, err)
									return
								}
							}
							if i%64 == 0 {
								runtime.Gosched()
							}
						}
						for _, tk := range mine {
							owners[tk.Index()].Store(0)
							if err := a.Free(tk); err != nil {
								t.Errorf("Free(%v): %v", tk, err)
							}
						}
					}(g)
				}
				procs := []int{64, 1, 2, 64, 1, 3}
				for i := 0; time.Now().Before(deadline); i++ {
					runtime.GOMAXPROCS(procs[i%len(procs)])
					time.Sleep(5 * time.Millisecond)
				}
				wg.Wait()
				close(stop)
				bg.Wait()
				runtime.GOMAXPROCS(orig)
				if t.Failed() {
					return
				}
				if av := a.Available(); av != a.Capacity() {
					t.Fatalf("Available %d != Capacity %d", av, a.Capacity())
				}
				st := a.Stats()
				if st.Allocs != st.Frees || st.Live != 0 {
					t.Fatalf("stats not exact: %+v", st)
				}
				if uint64(fulls.Load()) != st.Failed {
					t.Fatalf("Stats.Failed %d, saw %d ErrFull", st.Failed, fulls.Load())
				}
				for tok := range a.Tokens() {
					t.Fatalf("Tokens yielded %v with nothing live", tok)
				}
				for _, procs := range []int{1, 64} {
					runtime.GOMAXPROCS(procs)
					var toks []token.Token
					for i := 0; i < a.Capacity(); i++ {
						tok, _, err := a.Alloc()
						if err != nil {
							t.Fatalf("GOMAXPROCS=%d: Alloc %d of %d: %v", procs, i+1, a.Capacity(), err)
						}
						toks = append(toks, tok)
					}
					if _, _, err := a.Alloc(); !errors.Is(err, arena.ErrFull) {
						t.Fatalf("GOMAXPROCS=%d: Alloc past capacity: %v", procs, err)
					}
					for _, tok := range toks {
						if err := a.Free(tok); err != nil {
							t.Fatal(err)
						}
					}
				}
				runtime.GOMAXPROCS(orig)
				if st := a.Stats(); st.Allocs != st.Frees || st.Live != 0 {
					t.Fatalf("stats not exact: %+v", st)
				}
			})
		}
	}
}

// comboPage is a payload whose words must always be equal (Update writes
// them all); 512 bytes, so 8 slots share a page and runs of freed
// neighbours release whole pages around live slots.
type comboPage struct {
	W [64]uint64
}

// TestComboAttackLoadUnderUpdateAndTrim: Load, LoadInto and View never see
// a torn value while Update rewrites a live slot and Trim releases the pages
// of the freed neighbours over and over; the live values survive every Trim.
func TestComboAttackLoadUnderUpdateAndTrim(t *testing.T) {
	for _, cl := range comboClasses {
		t.Run(cl.name, func(t *testing.T) {
			const n = 256
			a := comboNew[comboPage](t, n, 1, cl.class)
			// Live: every 32nd slot; the rest churn and are trimmed.
			var live []token.Token
			var spare []token.Token
			for i := 0; i < n; i++ {
				var v comboPage
				for j := range v.W {
					v.W[j] = uint64(i) << 32
				}
				tok, err := a.Store(v)
				if err != nil {
					t.Fatal(err)
				}
				if i%32 == 5 {
					live = append(live, tok)
				} else {
					spare = append(spare, tok)
				}
			}
			for _, tok := range spare {
				if err := a.Free(tok); err != nil {
					t.Fatal(err)
				}
			}
			check := func(where string, tok token.Token, v *comboPage) bool {
				w0 := v.W[0]
				if w0>>32 != uint64(tok.Index()) {
					t.Errorf("%s %v: value of slot %d (%#x)", where, tok, w0>>32, w0)
					return false
				}
				for j, w := range v.W {
					if w != w0 {
						t.Errorf("%s %v: torn: word %d %#x, word 0 %#x", where, tok, j, w, w0)
						return false
					}
				}
				return true
			}
			deadline := time.Now().Add(600 * time.Millisecond)
			var wg sync.WaitGroup
			var trims atomic.Int64
			wg.Add(1)
			go func() { // Trim
				defer wg.Done()
				for time.Now().Before(deadline) {
					if rel, err := a.Trim(); err != nil {
						t.Errorf("Trim: %v", err)
						return
					} else if rel > 0 {
						trims.Add(1)
					}
					runtime.Gosched()
				}
			}()
			wg.Add(1)
			go func() { // churn of the free neighbours: they come back zeroed
				defer wg.Done()
				for time.Now().Before(deadline) {
					var got []token.Token
					for i := 0; i < 40; i++ {
						tok, p, err := a.Alloc()
						if errors.Is(err, arena.ErrFull) {
							break
						}
						if err != nil {
							t.Errorf("Alloc: %v", err)
							return
						}
						for j, w := range p.W {
							if w != 0 {
								t.Errorf("Alloc %v: word %d = %#x, not zeroed", tok, j, w)
								return
							}
						}
						p.W[0] = 0xdead
						got = append(got, tok)
					}
					for _, tok := range got {
						if err := a.Free(tok); err != nil {
							t.Errorf("Free: %v", err)
							return
						}
					}
					runtime.Gosched()
				}
			}()
			for k, tok := range live {
				wg.Add(1)
				go func(k int, tok token.Token) { // writer
					defer wg.Done()
					for c := uint64(1); time.Now().Before(deadline); c++ {
						err := a.Update(tok, func(v *comboPage) {
							for j := range v.W {
								v.W[j] = uint64(tok.Index())<<32 | c
							}
						})
						if err != nil {
							t.Errorf("Update: %v", err)
							return
						}
						if c%16 == 0 {
							runtime.Gosched()
						}
					}
				}(k, tok)
			}
			for r := 0; r < 2; r++ {
				wg.Add(1)
				go func() { // readers
					defer wg.Done()
					var dst comboPage
					for time.Now().Before(deadline) {
						for _, tok := range live {
							v, err := a.Load(tok)
							if err != nil {
								t.Errorf("Load: %v", err)
								return
							}
							if !check("Load", tok, &v) {
								return
							}
							if err := a.LoadInto(tok, &dst); err != nil {
								t.Errorf("LoadInto: %v", err)
								return
							}
							if !check("LoadInto", tok, &dst) {
								return
							}
							ok := true
							if err := a.View(tok, func(p *comboPage) { ok = check("View", tok, p) }); err != nil {
								t.Errorf("View: %v", err)
								return
							}
							if !ok {
								return
							}
						}
					}
				}()
			}
			wg.Wait()
			if trims.Load() == 0 && cl.class == memclass.Host() {
				t.Logf("no Trim released anything")
			}
			for _, tok := range live {
				v, err := a.Load(tok)
				if err != nil {
					t.Fatal(err)
				}
				check("final Load", tok, &v)
			}
		})
	}
}

// TestComboAttackCloseRacesWaitersTrimTokens: Close while AllocWait and
// StoreWait waiters are parked, Trim runs in a loop, Tokens iterates (and
// frees what it sees), Updates and Loads run. Every call must return (nil or
// ErrClosed, or ErrStale for a token another goroutine freed), Close must
// return, and no goroutine may be left blocked.
func TestComboAttackCloseRacesWaitersTrimTokens(t *testing.T) {
	for _, cl := range comboClasses {
		for iter := 0; iter < 4; iter++ {
			t.Run(fmt.Sprintf("%s/%d", cl.name, iter), func(t *testing.T) {
				const n = 40
				a := comboNew[[32]uint64](t, n, 0, cl.class)
				var toks []token.Token
				for i := 0; i < n; i++ {
					tok, err := a.Store([32]uint64{})
					if err != nil {
						t.Fatal(err)
					}
					toks = append(toks, tok)
				}
				ok := func(what string, err error) bool {
					if err == nil || errors.Is(err, arena.ErrClosed) || errors.Is(err, arena.ErrStale) || errors.Is(err, arena.ErrFull) {
						return true
					}
					t.Errorf("%s: %v", what, err)
					return false
				}
				var wg sync.WaitGroup
				closed := make(chan struct{})
				for w := 0; w < 6; w++ {
					wg.Add(1)
					go func(w int) {
						defer wg.Done()
						for {
							var err error
							if w%2 == 0 {
								_, _, err = a.AllocWait(context.Background())
							} else {
								//lint:ignore SA1012 a nil context is what is tested
								_, err = a.StoreWait(nil, [32]uint64{1}) //nolint:staticcheck // nil ctx is documented
							}
							if errors.Is(err, arena.ErrClosed) {
								return
							}
							if !ok("wait", err) {
								return
							}
						}
					}(w)
				}
				wg.Add(1)
				go func() { // Trim
					defer wg.Done()
					for {
						_, err := a.Trim()
						if errors.Is(err, arena.ErrClosed) {
							return
						}
						if !ok("Trim", err) {
							return
						}
						runtime.Gosched()
					}
				}()
				wg.Add(1)
				go func() { // Tokens, freeing some of what it sees
					defer wg.Done()
					for k := 0; ; k++ {
						for tok := range a.Tokens() {
							if k%3 == 0 {
								ok("Free from Tokens", a.Free(tok))
							}
						}
						select {
						case <-closed:
							for range a.Tokens() {
								t.Errorf("Tokens yielded after Close")
								return
							}
							return
						default:
						}
						runtime.Gosched()
					}
				}()
				for r := 0; r < 2; r++ {
					wg.Add(1)
					go func(r int) { // Update / Load / Free on the first tokens
						defer wg.Done()
						for k := 0; ; k++ {
							tok := toks[(k+r)%8]
							err := a.Update(tok, func(v *[32]uint64) { v[0]++ })
							if errors.Is(err, arena.ErrClosed) {
								return
							}
							ok("Update", err)
							var dst [32]uint64
							ok("LoadInto", a.LoadInto(tok, &dst))
							_, err = a.Load(tok)
							ok("Load", err)
							_ = a.Stats()
							_ = a.Available()
							if k%50 == 49 {
								ok("Free", a.Free(tok))
							}
							runtime.Gosched()
						}
					}(r)
				}
				time.Sleep(time.Duration(10+iter*15) * time.Millisecond)
				comboWithin(t, 10*time.Second, "Close", func() {
					if err := a.Close(); err != nil {
						t.Errorf("Close: %v", err)
					}
				})
				close(closed)
				comboWithin(t, 10*time.Second, "goroutines after Close", wg.Wait)
				if err := a.Close(); !errors.Is(err, arena.ErrClosed) {
					t.Errorf("second Close: %v", err)
				}
				if _, err := a.Trim(); !errors.Is(err, arena.ErrClosed) {
					t.Errorf("Trim after Close: %v", err)
				}
				if av := a.Available(); av != 0 {
					t.Errorf("Available after Close: %d", av)
				}
			})
		}
	}
}

// TestComboAttackTrimInCallbackDuringClose: Trim is documented as safe while
// other goroutines use the arena, and after Close it returns ErrClosed. A
// View callback (on its own slot: no nested access) that calls Trim once
// Close has begun must get ErrClosed, and Close (which waits for the
// callback) must then return. Close must not hold a lock that Trim needs
// while it waits for callbacks.
func TestComboAttackTrimInCallbackDuringClose(t *testing.T) {
	for _, cl := range comboClasses {
		t.Run(cl.name, func(t *testing.T) {
			a, err := arena.New[uint64](arena.Config{Slots: 64, Class: cl.class})
			if err != nil {
				t.Skipf("New: %v", err)
			}
			tok, err := a.Store(7)
			if err != nil {
				t.Fatal(err)
			}
			inCallback := make(chan struct{})
			trimErr := make(chan error, 1)
			viewDone := make(chan error, 1)
			go func() {
				viewDone <- a.View(tok, func(*uint64) {
					close(inCallback)
					// Wait until Close has begun (Available is 0 only after
					// Close here: the arena is nearly empty).
					for a.Available() != 0 {
						time.Sleep(time.Millisecond)
					}
					time.Sleep(20 * time.Millisecond) // let Close reach its wait for callbacks
					_, err := a.Trim()
					trimErr <- err
				})
			}()
			<-inCallback
			closeDone := make(chan error, 1)
			go func() { closeDone <- a.Close() }()
			select {
			case err := <-trimErr:
				if !errors.Is(err, arena.ErrClosed) {
					t.Errorf("Trim inside a callback after Close began: %v, want ErrClosed", err)
				}
			case <-time.After(2 * time.Second):
				t.Fatalf("Trim called from a View callback while Close waits for that callback: deadlock " +
					"(Close holds the Trim lock while it waits for callbacks; Trim blocks on it)")
			}
			select {
			case err := <-closeDone:
				if err != nil {
					t.Errorf("Close: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("Close did not return after the callback ended")
			}
			if err := <-viewDone; err != nil {
				t.Errorf("View: %v", err)
			}
		})
	}
}

// comboDebugBuild reports whether nested access is reported (cella_debug):
// a View inside a View of the same token cannot deadlock while no Update
// waits, so probing it is safe in every build.
func comboDebugBuild(t *testing.T) bool {
	a, err := arena.New[uint64](arena.Config{Slots: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	tok, err := a.Store(1)
	if err != nil {
		t.Fatal(err)
	}
	var inner error
	if err := a.View(tok, func(*uint64) { inner = a.View(tok, func(*uint64) {}) }); err != nil {
		t.Fatal(err)
	}
	if inner != nil && !errors.Is(inner, arena.ErrNestedAccess) {
		t.Fatalf("nested View: %v", inner)
	}
	return inner != nil
}

// TestComboAttackNestedAccessConcurrent: with -tags cella_debug, every
// nested access to the same slot from its own callback is ErrNestedAccess
// (never a hang), nested access to another slot of the same arena (and to
// the same index of another arena) works, and accesses from other goroutines
// to a slot a callback holds are not mistaken for nested ones — while many
// goroutines do this at once, with Trim, Tokens and churn running. In other
// builds only the non-nested parts run.
func TestComboAttackNestedAccessConcurrent(t *testing.T) {
	debug := comboDebugBuild(t)
	t.Logf("nested access reported: %v", debug)
	for _, cl := range comboClasses {
		t.Run(cl.name, func(t *testing.T) {
			const n = 64
			a := comboNew[[8]uint64](t, n, 0, cl.class)
			b := comboNew[[8]uint64](t, n, 0, cl.class)
			var at, bt, own []token.Token
			for i := 0; i < 8; i++ {
				x, err := a.Store([8]uint64{uint64(i)})
				if err != nil {
					t.Fatal(err)
				}
				own = append(own, x)
			}
			for i := 0; i < 16; i++ {
				x, err := a.Store([8]uint64{uint64(i)})
				if err != nil {
					t.Fatal(err)
				}
				y, err := b.Store([8]uint64{uint64(i)})
				if err != nil {
					t.Fatal(err)
				}
				at, bt = append(at, x), append(bt, y)
			}
			stop := make(chan struct{})
			var bg sync.WaitGroup
			comboTrimLoop(t, a, stop, &bg)
			bg.Add(1)
			go func() {
				defer bg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					for range a.Tokens() {
					}
					if tok, err := a.Store([8]uint64{}); err == nil {
						_ = a.Free(tok)
					}
				}
			}()
			var wg sync.WaitGroup
			for g := 0; g < 8; g++ {
				wg.Add(1)
				go func(g int) {
					defer wg.Done()
					for k := 0; k < 40; k++ {
						i := (g*2 + k) % 8 // goroutines share tokens on purpose
						me, other, same := at[i], at[i+8], bt[i]
						outer := a.Update
						if k%2 == 1 {
							outer = a.View
						}
						err := outer(me, func(*[8]uint64) {
							if debug {
								errs := map[string]error{
									"View":   a.View(me, func(*[8]uint64) {}),
									"Update": a.Update(me, func(*[8]uint64) {}),
								}
								_, errs["Load"] = a.Load(me)
								var d [8]uint64
								errs["LoadInto"] = a.LoadInto(me, &d)
								for op, err := range errs {
									if !errors.Is(err, arena.ErrNestedAccess) {
										t.Errorf("nested %s in callback on %v: %v, want ErrNestedAccess", op, me, err)
									}
								}
							}
							// Another slot of the same arena and the same
							// slot index of another arena are fine.
							if err := a.Update(other, func(v *[8]uint64) { v[1]++ }); err != nil {
								t.Errorf("Update of another slot inside a callback: %v", err)
							}
							if _, err := a.Load(other); err != nil {
								t.Errorf("Load of another slot inside a callback: %v", err)
							}
							if err := b.Update(same, func(v *[8]uint64) { v[1]++ }); err != nil {
								t.Errorf("Update of the same index in another arena: %v", err)
							}
							if err := b.View(same, func(*[8]uint64) {}); err != nil {
								t.Errorf("View of the same index in another arena: %v", err)
							}
						})
						if err != nil {
							t.Errorf("outer: %v", err)
							return
						}
						// From another goroutine while this one holds a View:
						// a reader is not nested. (own[g] is this goroutine's
						// alone: no Update can wait on it meanwhile.)
						me = own[g]
						_ = a.View(me, func(*[8]uint64) {
							done := make(chan error, 1)
							go func() {
								_, err := a.Load(me)
								done <- err
							}()
							select {
							case err := <-done:
								if err != nil {
									t.Errorf("Load of a viewed slot from another goroutine: %v", err)
								}
							case <-time.After(5 * time.Second):
								t.Errorf("Load from another goroutine hung")
							}
						})
					}
				}(g)
			}
			comboWithin(t, 60*time.Second, "nested-access goroutines", wg.Wait)
			close(stop)
			bg.Wait()
			// After all that, the holds are gone: a plain nested-looking
			// sequence (not nested) works, and the slots are reusable.
			for _, tok := range append(at, own...) {
				if err := a.Update(tok, func(*[8]uint64) {}); err != nil {
					t.Fatalf("Update after the nested storm: %v", err)
				}
				if err := a.Free(tok); err != nil {
					t.Fatal(err)
				}
			}
			if av := a.Available(); av != a.Capacity() {
				t.Fatalf("Available %d != Capacity %d", av, a.Capacity())
			}
		})
	}
}
