package arena_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

type atkCell struct {
	A, B uint64
	Pad  [48]byte
}

func atkNew[T any](t testing.TB, slots, shards int) *arena.Arena[T] {
	t.Helper()
	a, err := arena.New[T](arena.Config{Slots: slots, Shards: shards})
	if err != nil {
		t.Fatalf("New(Slots=%d, Shards=%d): %v", slots, shards, err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// atkOnOtherThreads runs fn on n goroutines, each locked to its own OS
// thread, so they are likely to run on other Ps than the caller.
func atkOnOtherThreads(n int, fn func(i int)) {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			fn(i)
		}()
	}
	wg.Wait()
}

func atkFillExact[T any](t *testing.T, a *arena.Arena[T], n int, what string) []token.Token {
	t.Helper()
	toks := make([]token.Token, 0, n)
	for i := 0; i < n; i++ {
		tok, _, err := a.Alloc()
		if err != nil {
			t.Fatalf("%s: Alloc %d of %d: %v", what, i+1, n, err)
		}
		toks = append(toks, tok)
	}
	if _, _, err := a.Alloc(); !errors.Is(err, arena.ErrFull) {
		t.Fatalf("%s: Alloc %d of capacity %d: err %v, want ErrFull", what, n+1, n, err)
	}
	if _, err := a.Store(*new(T)); !errors.Is(err, arena.ErrFull) {
		t.Fatalf("%s: Store at capacity %d: err %v, want ErrFull", what, n, err)
	}
	seen := map[uint32]bool{}
	for _, tok := range toks {
		if seen[tok.Index()] {
			t.Fatalf("%s: slot %d handed out twice", what, tok.Index())
		}
		seen[tok.Index()] = true
	}
	return toks
}

func TestAttackExactFullShards(t *testing.T) {
	for _, slots := range []int{1, 2, 7, 100, 257} {
		for _, shards := range []int{0, 1, 3, 64, slots + 5} {
			t.Run(fmt.Sprintf("slots=%d/shards=%d", slots, shards), func(t *testing.T) {
				a := atkNew[atkCell](t, slots, shards)
				toks := atkFillExact(t, a, slots, "first fill")
				// Free everything from other threads (other Ps' caches and shards).
				atkOnOtherThreads(4, func(i int) {
					for j := i; j < len(toks); j += 4 {
						if err := a.Free(toks[j]); err != nil {
							t.Errorf("Free: %v", err)
						}
					}
				})
				if got := a.Available(); got != a.Capacity() {
					t.Fatalf("Available %d after freeing all, want %d", got, a.Capacity())
				}
				toks = atkFillExact(t, a, slots, "refill after cross-P frees")
				// Free half here, half elsewhere, then fill again.
				for _, tok := range toks[:len(toks)/2] {
					a.Free(tok)
				}
				atkOnOtherThreads(2, func(i int) {
					for j := len(toks)/2 + i; j < len(toks); j += 2 {
						a.Free(toks[j])
					}
				})
				toks = atkFillExact(t, a, slots, "refill after mixed frees")
				for _, tok := range toks {
					if err := a.Free(tok); err != nil {
						t.Fatal(err)
					}
				}
				st := a.Stats()
				if st.Allocs != st.Frees || a.Available() != a.Capacity() {
					t.Fatalf("stats %+v, available %d/%d", st, a.Available(), a.Capacity())
				}
			})
		}
	}
}

func TestAttackExactFullGOMAXPROCS(t *testing.T) {
	orig := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(orig)
	for _, c := range []struct{ atNew, atUse int }{{2, 1}, {1, 8}, {8, 1}, {2, 16}, {16, 2}, {1, 1}} {
		for _, shards := range []int{0, 1, 3} {
			t.Run(fmt.Sprintf("new=%d/use=%d/shards=%d", c.atNew, c.atUse, shards), func(t *testing.T) {
				runtime.GOMAXPROCS(c.atNew)
				a := atkNew[uint64](t, 50, shards)
				// Put slots in caches of the Ps that exist at New.
				toks := atkFillExact(t, a, 50, "at New's GOMAXPROCS")
				atkOnOtherThreads(4, func(i int) {
					for j := i; j < len(toks); j += 4 {
						a.Free(toks[j])
					}
				})
				runtime.GOMAXPROCS(c.atUse)
				toks = atkFillExact(t, a, 50, "after GOMAXPROCS change")
				atkOnOtherThreads(8, func(i int) {
					for j := i; j < len(toks); j += 8 {
						a.Free(toks[j])
					}
				})
				runtime.GOMAXPROCS(c.atNew)
				toks = atkFillExact(t, a, 50, "after changing back")
				for _, tok := range toks {
					a.Free(tok)
				}
				if a.Available() != a.Capacity() {
					t.Fatalf("Available %d != Capacity %d", a.Available(), a.Capacity())
				}
				if st := a.Stats(); st.Allocs != st.Frees {
					t.Fatalf("stats %+v", st)
				}
			})
		}
	}
}

// Exact ErrFull while another goroutine keeps freeing and reallocating one
// slot: the filler must never see ErrFull while it holds fewer than N-1.
func TestAttackExactFullWhileChurning(t *testing.T) {
	const n = 64
	for _, shards := range []int{1, 2, 0} {
		a := atkNew[uint64](t, n, shards)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		tok, _, err := a.Alloc()
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			defer wg.Done()
			var err error
			for {
				select {
				case <-stop:
					a.Free(tok)
					return
				default:
				}
				a.Free(tok)
				for {
					tok, _, err = a.Alloc()
					if err == nil {
						break
					}
					runtime.Gosched()
				}
			}
		}()
		deadline := time.Now().Add(300 * time.Millisecond)
		for time.Now().Before(deadline) {
			var mine []token.Token
			for {
				tok, _, err := a.Alloc()
				if err != nil {
					if !errors.Is(err, arena.ErrFull) {
						t.Fatal(err)
					}
					break
				}
				mine = append(mine, tok)
			}
			// The churner holds at most one slot.
			if len(mine) < n-1 {
				close(stop)
				wg.Wait()
				t.Fatalf("shards=%d: ErrFull after %d allocations, with at most 1 slot elsewhere (cap %d)", shards, len(mine), n)
			}
			for _, tok := range mine {
				a.Free(tok)
			}
		}
		close(stop)
		wg.Wait()
		if a.Available() != a.Capacity() {
			t.Fatalf("Available %d Capacity %d", a.Available(), a.Capacity())
		}
	}
}

func atkTokenCases(a *arena.Arena[atkCell], other *arena.Arena[atkCell]) (stale, reused token.Token, bad map[string]token.Token, staleish map[string]token.Token) {
	tok, _ := a.Store(atkCell{A: 1})
	a.Free(tok)
	stale = tok
	// Reuse: allocate until the same slot comes back.
	var reuseOrig token.Token
	for i := 0; i < 1000; i++ {
		t1, _ := a.Store(atkCell{A: 2})
		t2 := t1
		a.Free(t1)
		t3, _ := a.Store(atkCell{A: 3})
		if t3.Index() == t2.Index() {
			reuseOrig = t2
			break
		}
		a.Free(t3)
	}
	reused = reuseOrig
	ot, _ := other.Store(atkCell{A: 9})
	bad = map[string]token.Token{
		"Nil":          token.Nil,
		"outOfRange":   token.New(uint32(a.Capacity()), 1),
		"hugeIndex":    token.New(math.MaxUint32, 5),
		"gen0":         token.New(0, 0),
		"genMax":       token.New(0, math.MaxUint32),
		"rangeAndGen0": token.New(uint32(a.Capacity())+7, 0),
	}
	staleish = map[string]token.Token{
		"stale":      stale,
		"reused":     reused,
		"forged":     token.New(1, 12345),
		"untouched":  token.New(uint32(a.Capacity()-1), 77),
		"otherArena": ot,
	}
	return
}

func TestAttackStaleAndBadTokens(t *testing.T) {
	a := atkNew[atkCell](t, 16, 2)
	other := atkNew[atkCell](t, 16, 2)
	_, reused, bad, staleish := atkTokenCases(a, other)
	if reused.IsNil() {
		t.Fatal("could not get a reused slot")
	}
	check := func(name string, tok token.Token, want error) {
		t.Helper()
		calls := map[string]func() error{
			"Load": func() error { _, err := a.Load(tok); return err },
			"LoadInto": func() error {
				dst := atkCell{A: 42, B: 43}
				err := a.LoadInto(tok, &dst)
				if err != nil && (dst.A != 42 || dst.B != 43) {
					return fmt.Errorf("dst changed on error %v", err)
				}
				return err
			},
			"View":   func() error { return a.View(tok, func(*atkCell) { panic("View fn ran") }) },
			"Update": func() error { return a.Update(tok, func(*atkCell) { panic("Update fn ran") }) },
			"Free":   func() error { return a.Free(tok) },
		}
		for op, call := range calls {
			var err error
			func() {
				defer func() {
					if r := recover(); r != nil {
						err = fmt.Errorf("panic: %v", r)
					}
				}()
				err = call()
			}()
			if !errors.Is(err, want) {
				t.Errorf("%s of %s token %v: %v, want %v", op, name, tok, err, want)
			}
		}
	}
	for name, tok := range bad {
		check(name, tok, arena.ErrBadToken)
	}
	for name, tok := range staleish {
		check(name, tok, arena.ErrStale)
	}
	if a.Available() != a.Capacity()-1 { // the reused slot is live
		t.Fatalf("Available %d, want %d", a.Available(), a.Capacity()-1)
	}
	// After Close: every method says ErrClosed, whatever the token.
	live, _ := a.Store(atkCell{})
	a.Close()
	for name, tok := range map[string]token.Token{"live": live, "nil": token.Nil, "range": bad["outOfRange"], "stale": staleish["stale"]} {
		dst := atkCell{A: 5}
		errs := []error{
			func() error { _, err := a.Load(tok); return err }(),
			a.LoadInto(tok, &dst),
			a.LoadInto(tok, nil),
			a.View(tok, func(*atkCell) {}),
			a.Update(tok, func(*atkCell) {}),
			a.View(tok, nil),
			a.Free(tok),
		}
		for i, err := range errs {
			if !errors.Is(err, arena.ErrClosed) {
				t.Errorf("after Close, call %d on %s token: %v, want ErrClosed", i, name, err)
			}
		}
		if dst.A != 5 {
			t.Errorf("LoadInto after Close changed dst")
		}
	}
	if _, _, err := a.Alloc(); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("Alloc after Close: %v", err)
	}
	if _, err := a.Store(atkCell{}); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("Store after Close: %v", err)
	}
	if _, _, err := a.AllocWait(context.Background()); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("AllocWait after Close: %v", err)
	}
	//lint:ignore SA1012 a nil context is what is tested
	if _, err := a.StoreWait(nil, atkCell{}); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("StoreWait after Close: %v", err)
	}
	if _, err := a.Trim(); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("Trim after Close: %v", err)
	}
	if err := a.Close(); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
	if a.Available() != 0 {
		t.Errorf("Available after Close %d", a.Available())
	}
	for range a.Tokens() {
		t.Errorf("Tokens yielded after Close")
	}
}

func TestAttackNilArgs(t *testing.T) {
	a := atkNew[atkCell](t, 4, 1)
	tok, _ := a.Store(atkCell{A: 1})
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("nil arg panicked: %v", r)
			}
		}()
		if err := a.LoadInto(tok, nil); !errors.Is(err, arena.ErrNilPointer) {
			t.Errorf("LoadInto nil: %v", err)
		}
		if err := a.LoadInto(token.Nil, nil); err == nil {
			t.Errorf("LoadInto(Nil, nil) = nil")
		}
		if err := a.View(tok, nil); err == nil {
			t.Errorf("View nil fn = nil")
		}
		if err := a.Update(tok, nil); err == nil {
			t.Errorf("Update nil fn = nil")
		}
	}()
	v, err := a.Load(tok)
	if err != nil || v.A != 1 {
		t.Fatalf("after nil-arg calls: %v %v", v, err)
	}
	if err := a.Free(tok); err != nil {
		t.Fatal(err)
	}
}

func TestAttackViewUpdateExclusion(t *testing.T) {
	a := atkNew[atkCell](t, 4, 1)
	tok, _ := a.Store(atkCell{})
	var inUpdate, inView atomic.Int32
	var bad atomic.Value
	var wg sync.WaitGroup
	deadline := time.Now().Add(200 * time.Millisecond)
	for w := 0; w < 3; w++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				a.Update(tok, func(c *atkCell) {
					if inUpdate.Add(1) != 1 || inView.Load() != 0 {
						bad.Store("Update overlapped another holder")
					}
					c.A++
					runtime.Gosched()
					c.B++
					inUpdate.Add(-1)
				})
			}
		}()
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				a.View(tok, func(c *atkCell) {
					inView.Add(1)
					if inUpdate.Load() != 0 {
						bad.Store("View overlapped Update")
					}
					if c.A != c.B {
						bad.Store("View saw a torn update")
					}
					inView.Add(-1)
				})
				v, err := a.Load(tok)
				if err != nil || v.A != v.B {
					bad.Store(fmt.Sprintf("Load torn or failed: %+v %v", v, err))
				}
			}
		}()
	}
	wg.Wait()
	if b := bad.Load(); b != nil {
		t.Fatal(b)
	}
}

func TestAttackFreeDuringCallbacks(t *testing.T) {
	for _, write := range []bool{false, true} {
		a := atkNew[atkCell](t, 1, 1)
		tok, _ := a.Store(atkCell{A: 7})
		entered, release := make(chan struct{}), make(chan struct{})
		done := make(chan error, 1)
		go func() {
			fn := func(c *atkCell) {
				close(entered)
				<-release
				if c.A != 7 {
					done <- fmt.Errorf("value changed under callback: %d", c.A)
				}
			}
			if write {
				done <- a.Update(tok, fn)
			} else {
				done <- a.View(tok, fn)
			}
		}()
		<-entered
		freed := make(chan error, 1)
		go func() { freed <- a.Free(tok) }()
		select {
		case err := <-freed:
			if err != nil {
				t.Fatalf("Free during callback: %v", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("write=%v: Free did not return at once while a callback held the slot", write)
		}
		if _, err := a.Load(tok); !errors.Is(err, arena.ErrStale) {
			t.Errorf("Load after Free during callback: %v", err)
		}
		if err := a.Free(tok); !errors.Is(err, arena.ErrStale) {
			t.Errorf("double Free: %v", err)
		}
		if _, _, err := a.Alloc(); !errors.Is(err, arena.ErrFull) {
			t.Fatalf("write=%v: the slot was recycled while its callback still runs: %v", write, err)
		}
		close(release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		t2, p, err := a.Alloc()
		if err != nil {
			t.Fatalf("slot not recycled after callback returned: %v", err)
		}
		if p.A != 0 {
			t.Fatalf("recycled slot not zeroed")
		}
		a.Free(t2)
		if st := a.Stats(); st.Allocs != st.Frees || a.Available() != 1 {
			t.Fatalf("stats %+v", st)
		}
	}
}

func TestAttackPanicAndGoexitInCallbacks(t *testing.T) {
	a := atkNew[atkCell](t, 2, 1)
	tok, _ := a.Store(atkCell{A: 1})
	for _, write := range []bool{false, true} {
		func() {
			defer func() {
				if r := recover(); r != "boom" {
					t.Fatalf("recovered %v, want boom", r)
				}
			}()
			fn := func(*atkCell) { panic("boom") }
			if write {
				a.Update(tok, fn)
			} else {
				a.View(tok, fn)
			}
			t.Fatal("panic did not propagate")
		}()
		// Goexit inside the callback.
		done := make(chan struct{})
		go func() {
			defer close(done)
			fn := func(*atkCell) { runtime.Goexit() }
			if write {
				a.Update(tok, fn)
			} else {
				a.View(tok, fn)
			}
		}()
		<-done
	}
	// The slot is usable: Update must not deadlock.
	ok := make(chan error, 1)
	go func() {
		ok <- a.Update(tok, func(c *atkCell) { c.A = 99 })
	}()
	select {
	case err := <-ok:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Update hangs after a panic/Goexit in a callback")
	}
	if v, _ := a.Load(tok); v.A != 99 {
		t.Fatalf("Load %v", v)
	}
	if err := a.Free(tok); err != nil {
		t.Fatal(err)
	}
	// Free during a panicking View recycles the slot afterwards.
	tok, _ = a.Store(atkCell{})
	func() {
		defer func() { recover() }()
		a.View(tok, func(*atkCell) {
			if err := a.Free(tok); err != nil {
				t.Errorf("Free inside View: %v", err)
			}
			panic("x")
		})
	}()
	if a.Available() != 2 {
		t.Fatalf("Available %d", a.Available())
	}
	atkFillExact(t, a, 2, "after Free inside panicking View")
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// atkParked reports whether some goroutine is parked (not running) inside
// AllocWait/StoreWait.
func atkParkedCount() int {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	count := 0
	for _, g := range strings.Split(string(buf[:n]), "\n\n") {
		if strings.Contains(g, "arena.(*core).await") &&
			(strings.Contains(g, "[select") || strings.Contains(g, "[chan receive")) {
			count++
		}
	}
	return count
}

func atkWaitParked(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for atkParkedCount() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d goroutines parked in AllocWait, want %d", atkParkedCount(), n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestAttackAllocWait(t *testing.T) {
	a := atkNew[atkCell](t, 2, 1)
	// At once when free, even with a done ctx.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	t1, p, err := a.AllocWait(ctx)
	if err != nil || p == nil {
		t.Fatalf("AllocWait with free slot and done ctx: %v", err)
	}
	//lint:ignore SA1012 a nil context is what is tested
	t2, err := a.StoreWait(nil, atkCell{A: 3})
	if err != nil {
		t.Fatalf("StoreWait nil ctx: %v", err)
	}
	// Full + done ctx: ctx error.
	if _, _, err := a.AllocWait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("AllocWait on full with cancelled ctx: %v", err)
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer dcancel()
	if _, err := a.StoreWait(dctx, atkCell{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("StoreWait timeout: %v", err)
	}
	// Parks with nil ctx until a Free.
	got := make(chan token.Token, 1)
	go func() {
		//lint:ignore SA1012 a nil context is what is tested
		tok, _, err := a.AllocWait(nil)
		if err != nil {
			t.Error(err)
		}
		got <- tok
	}()
	atkWaitParked(t, 1)
	select {
	case <-got:
		t.Fatal("AllocWait returned while full")
	default:
	}
	a.Free(t1)
	var t3 token.Token
	select {
	case t3 = <-got:
	case <-time.After(3 * time.Second):
		t.Fatal("AllocWait not woken by Free")
	}
	a.Free(t2)
	a.Free(t3)
	if a.Available() != 2 {
		t.Fatalf("Available %d", a.Available())
	}
}

func TestAttackAllocWaitFIFO(t *testing.T) {
	const waiters = 6
	a := atkNew[uint64](t, 1, 1)
	hold, err := a.Store(0)
	if err != nil {
		t.Fatal(err)
	}
	order := make(chan int, waiters)
	toks := make(chan token.Token, waiters)
	for i := 0; i < waiters; i++ {
		go func() {
			tok, err := a.StoreWait(context.Background(), uint64(i))
			if err != nil {
				t.Error(err)
				return
			}
			order <- i
			toks <- tok
		}()
		atkWaitParked(t, i+1)
	}
	a.Free(hold)
	for want := 0; want < waiters; want++ {
		select {
		case got := <-order:
			if got != want {
				t.Fatalf("waiter %d served before waiter %d (arrival order)", got, want)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("waiter %d never served", want)
		}
		a.Free(<-toks)
	}
	if a.Available() != 1 {
		t.Fatalf("Available %d", a.Available())
	}
}

func TestAttackAllocWaitCloseAndGiveUp(t *testing.T) {
	a := atkNew[uint64](t, 3, 0)
	var held []token.Token
	for i := 0; i < 3; i++ {
		tok, _ := a.Store(1)
		held = append(held, tok)
	}
	// Waiters that give up while Frees race them must lose no slot.
	var wg sync.WaitGroup
	var won sync.Map
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%5)*time.Millisecond)
			defer cancel()
			tok, err := a.StoreWait(ctx, 2)
			if err == nil {
				won.Store(tok, true)
			} else if !errors.Is(err, context.DeadlineExceeded) {
				t.Error(err)
			}
		}()
	}
	time.Sleep(2 * time.Millisecond)
	for _, tok := range held {
		a.Free(tok)
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	won.Range(func(k, _ any) bool { a.Free(k.(token.Token)); return true })
	if a.Available() != 3 {
		t.Fatalf("Available %d after waiters gave up, want 3", a.Available())
	}
	atkFillExact(t, a, 3, "after give-ups")
	// Now Close wakes every waiter with ErrClosed.
	errs := make(chan error, 5)
	for i := 0; i < 5; i++ {
		go func() {
			_, _, err := a.AllocWait(context.Background())
			errs <- err
		}()
	}
	atkWaitParked(t, 5)
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for i := 0; i < 5; i++ {
		select {
		case err := <-errs:
			if !errors.Is(err, arena.ErrClosed) {
				t.Errorf("waiter after Close: %v", err)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("Close did not wake a waiter")
		}
	}
}

// Free of a slot whose View is still running must wake a waiter when the
// View ends (the slot becomes free then).
func TestAttackAllocWaitWokenByLateRecycle(t *testing.T) {
	a := atkNew[uint64](t, 1, 1)
	tok, _ := a.Store(1)
	entered, release := make(chan struct{}), make(chan struct{})
	go a.View(tok, func(*uint64) { close(entered); <-release })
	<-entered
	a.Free(tok)
	got := make(chan error, 1)
	go func() {
		t2, _, err := a.AllocWait(context.Background())
		if err == nil {
			a.Free(t2)
		}
		got <- err
	}()
	atkWaitParked(t, 1)
	close(release)
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("AllocWait not woken when the View holding a freed slot ended")
	}
}

type atk64 [64]byte
type atk128K8 [128<<10 + 8]byte
type atk1M [1 << 20]byte
type atk16M [16 << 20]byte

func atkAllocsFor[T any](t *testing.T, name string) {
	t.Run(name, func(t *testing.T) {
		a := atkNew[T](t, 3, 1)
		src := new(T)
		keep, err := a.Store(*src)
		if err != nil {
			t.Fatal(err)
		}
		dst := new(T)
		var ferr error
		checks := []struct {
			op string
			fn func()
		}{
			{"LoadInto", func() {
				if err := a.LoadInto(keep, dst); err != nil {
					ferr = err
				}
			}},
			{"Alloc+Free", func() {
				tok, _, err := a.Alloc()
				if err != nil {
					ferr = err
					return
				}
				if err := a.Free(tok); err != nil {
					ferr = err
				}
			}},
			{"Store+Free", func() {
				tok, err := a.Store(*src)
				if err != nil {
					ferr = err
					return
				}
				a.Free(tok)
			}},
			{"StoreWait+Free", func() {
				tok, err := a.StoreWait(context.Background(), *src)
				if err != nil {
					ferr = err
					return
				}
				a.Free(tok)
			}},
			{"AllocWait+Free", func() {
				tok, _, err := a.AllocWait(context.Background())
				if err != nil {
					ferr = err
					return
				}
				a.Free(tok)
			}},
			{"View", func() {
				if err := a.View(keep, func(*T) {}); err != nil {
					ferr = err
				}
			}},
			{"Update", func() {
				if err := a.Update(keep, func(*T) {}); err != nil {
					ferr = err
				}
			}},
		}
		if unsafe.Sizeof(*src) <= 128<<10 {
			checks = append(checks, struct {
				op string
				fn func()
			}{"Load", func() {
				if _, err := a.Load(keep); err != nil {
					ferr = err
				}
			}})
		}
		runs := 50
		if unsafe.Sizeof(*src) >= 1<<20 {
			runs = 5
		}
		for _, c := range checks {
			ferr = nil
			if n := testing.AllocsPerRun(runs, c.fn); n != 0 {
				t.Errorf("%s of %d-byte T allocates %.1f times per call", c.op, unsafe.Sizeof(*src), n)
			}
			if ferr != nil {
				t.Errorf("%s: %v", c.op, ferr)
			}
		}
		// Full: ErrFull must not allocate either.
		t1, _ := a.Store(*src)
		t2, _ := a.Store(*src)
		if n := testing.AllocsPerRun(runs, func() { a.Alloc() }); n != 0 {
			t.Errorf("Alloc at ErrFull allocates %.1f", n)
		}
		a.Free(t1)
		a.Free(t2)
	})
}

func TestAttackNoAllocsBySize(t *testing.T) {
	if arena.DebugNested {
		t.Skip("debug build")
	}
	atkAllocsFor[atk64](t, "64B")
	atkAllocsFor[atk128K8](t, "128KiB+8")
	atkAllocsFor[atk1M](t, "1MiB")
	atkAllocsFor[atk16M](t, "16MiB")
}

func TestAttackLoadIntoBigUnchangedOnError(t *testing.T) {
	a := atkNew[atk128K8](t, 2, 1)
	tok, _ := a.Store(atk128K8{1, 2, 3})
	a.Free(tok)
	dst := new(atk128K8)
	dst[0], dst[len(dst)-1] = 9, 9
	if err := a.LoadInto(tok, dst); !errors.Is(err, arena.ErrStale) {
		t.Fatal(err)
	}
	if dst[0] != 9 || dst[len(dst)-1] != 9 {
		t.Fatal("dst changed on error")
	}
	live, _ := a.Store(atk128K8{4})
	if err := a.LoadInto(live, dst); err != nil || dst[0] != 4 || dst[len(dst)-1] != 0 {
		t.Fatalf("LoadInto: %v %d %d", err, dst[0], dst[len(dst)-1])
	}
}

func TestAttackTokensIterator(t *testing.T) {
	for _, shards := range []int{1, 3, 0, 300} {
		a := atkNew[uint64](t, 1000, shards)
		stable := map[token.Token]bool{}
		var freedBefore []token.Token
		for i := 0; i < 600; i++ {
			tok, err := a.Store(uint64(i))
			if err != nil {
				t.Fatal(err)
			}
			if i%3 == 0 {
				freedBefore = append(freedBefore, tok)
			} else {
				stable[tok] = true
			}
		}
		for _, tok := range freedBefore {
			a.Free(tok)
		}
		// Churn other slots during the iteration.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				tok, err := a.Store(1)
				if err == nil {
					a.Free(tok)
				}
			}
		}()
		seen := map[token.Token]int{}
		for tok := range a.Tokens() {
			seen[tok]++
			runtime.Gosched()
		}
		close(stop)
		wg.Wait()
		for tok := range stable {
			if seen[tok] != 1 {
				t.Fatalf("shards=%d: stable token %v yielded %d times", shards, tok, seen[tok])
			}
		}
		for _, tok := range freedBefore {
			if seen[tok] != 0 {
				t.Fatalf("freed token %v yielded", tok)
			}
		}
		for tok, n := range seen {
			if n != 1 {
				t.Fatalf("token %v yielded %d times", tok, n)
			}
		}
		// Break early.
		n := 0
		for range a.Tokens() {
			n++
			if n == 5 {
				break
			}
		}
		// Free inside the loop body: everything gone.
		for tok := range a.Tokens() {
			if err := a.Free(tok); err != nil {
				t.Fatalf("Free of yielded token: %v", err)
			}
		}
		if a.Available() != a.Capacity() {
			t.Fatalf("Available %d after freeing every yielded token", a.Available())
		}
		for range a.Tokens() {
			t.Fatal("yielded after freeing all")
		}
		// Close inside the loop ends it.
		a.Store(1)
		a.Store(2)
		k := 0
		for range a.Tokens() {
			k++
			a.Close()
		}
		if k != 1 {
			t.Fatalf("Close in loop body: %d yields", k)
		}
	}
}

func TestAttackTrim(t *testing.T) {
	const n = 8192
	a := atkNew[atkCell](t, n, 2)
	toks := make([]token.Token, 0, n)
	for i := 0; i < n; i++ {
		tok, err := a.Store(atkCell{A: uint64(i) + 1, B: 0xdeadbeef})
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	keep := toks[n/2]
	for i, tok := range toks {
		if i != n/2 {
			a.Free(tok)
		}
	}
	rel, err := a.Trim()
	if err != nil || rel <= 0 {
		t.Fatalf("Trim: %d %v", rel, err)
	}
	if v, err := a.Load(keep); err != nil || v.A != uint64(n/2)+1 || v.B != 0xdeadbeef {
		t.Fatalf("live value after Trim: %+v %v", v, err)
	}
	for i, tok := range toks {
		if i == n/2 {
			continue
		}
		if _, err := a.Load(tok); !errors.Is(err, arena.ErrStale) {
			t.Fatalf("stale token %v after Trim: %v", tok, err)
		}
		if err := a.Free(tok); !errors.Is(err, arena.ErrStale) {
			t.Fatalf("stale Free after Trim: %v", err)
		}
	}
	// Reallocate everything: zeroed, exact capacity.
	var again []token.Token
	for i := 0; i < n-1; i++ {
		tok, p, err := a.Alloc()
		if err != nil {
			t.Fatalf("Alloc %d after Trim: %v", i, err)
		}
		if *p != (atkCell{}) {
			t.Fatalf("recycled slot not zeroed after Trim: %+v", *p)
		}
		for _, old := range toks {
			if old == tok {
				t.Fatalf("token %v reissued after Trim", tok)
			}
		}
		again = append(again, tok)
		if i > 50 {
			// avoid O(n^2)
			toks = toks[:0]
		}
	}
	if _, _, err := a.Alloc(); !errors.Is(err, arena.ErrFull) {
		t.Fatalf("after refill: %v", err)
	}
	for _, tok := range again {
		a.Free(tok)
	}
	a.Free(keep)
	if st := a.Stats(); st.Allocs != st.Frees || a.Available() != n {
		t.Fatalf("stats %+v avail %d", st, a.Available())
	}
}

// Trim running concurrently with a single goroutine that fills the arena:
// exact ErrFull must hold, and no slot may be handed out twice.
func TestAttackTrimConcurrentExactFull(t *testing.T) {
	const n = 2048
	a := atkNew[atkCell](t, n, 3)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := atkTrimNoPanic(a); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	deadline := time.Now().Add(250 * time.Millisecond)
	for round := 0; time.Now().Before(deadline); round++ {
		var mine []token.Token
		for {
			tok, p, err := a.Alloc()
			if err != nil {
				if !errors.Is(err, arena.ErrFull) {
					t.Fatal(err)
				}
				break
			}
			if p.A != 0 {
				close(stop)
				wg.Wait()
				t.Fatalf("round %d: slot not zeroed: %+v", round, *p)
			}
			p.A = uint64(round) + 1
			mine = append(mine, tok)
		}
		if len(mine) != n {
			close(stop)
			wg.Wait()
			t.Fatalf("round %d: ErrFull after %d of %d allocations with Trim running", round, len(mine), n)
		}
		for i, tok := range mine {
			if i%2 == 0 {
				a.Free(tok)
			}
		}
		for i, tok := range mine {
			if i%2 == 1 {
				a.Free(tok)
			}
		}
	}
	close(stop)
	wg.Wait()
	if a.Available() != n {
		t.Fatalf("Available %d", a.Available())
	}
}

func TestAttackCloseUnderLoad(t *testing.T) {
	for round := 0; round < 6; round++ {
		a, err := arena.New[atkCell](arena.Config{Slots: 64, Shards: round % 3})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var crashed atomic.Value
		ok := func(err error, allowed ...error) {
			if err == nil {
				return
			}
			for _, e := range allowed {
				if errors.Is(err, e) {
					return
				}
			}
			crashed.Store(err)
		}
		stop := make(chan struct{})
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					if r := recover(); r != nil {
						crashed.Store(fmt.Sprint("panic: ", r))
					}
				}()
				var mine []token.Token
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					switch i % 9 {
					case 0:
						tok, _, err := a.Alloc()
						ok(err, arena.ErrFull, arena.ErrClosed)
						if err == nil {
							mine = append(mine, tok)
						}
					case 1:
						ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
						tok, err := a.StoreWait(ctx, atkCell{A: 1})
						cancel()
						ok(err, arena.ErrClosed, context.DeadlineExceeded)
						if err == nil {
							mine = append(mine, tok)
						}
					case 2:
						if len(mine) > 0 {
							_, err := a.Load(mine[0])
							ok(err, arena.ErrClosed)
							var d atkCell
							ok(a.LoadInto(mine[0], &d), arena.ErrClosed)
						}
					case 3:
						if len(mine) > 0 {
							ok(a.View(mine[0], func(c *atkCell) { _ = c.A }), arena.ErrClosed)
						}
					case 4:
						if len(mine) > 0 {
							ok(a.Update(mine[len(mine)-1], func(c *atkCell) { c.B++ }), arena.ErrClosed)
						}
					case 5:
						if len(mine) > 0 {
							ok(a.Free(mine[0]), arena.ErrClosed)
							mine = mine[1:]
						}
					case 6:
						for range a.Tokens() {
						}
					case 7:
						_, err := a.Trim()
						ok(err, arena.ErrClosed)
					case 8:
						_ = a.Stats()
						_ = a.Available()
					}
				}
			}()
		}
		time.Sleep(20 * time.Millisecond)
		if err := a.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
		close(stop)
		wg.Wait()
		if c := crashed.Load(); c != nil {
			t.Fatalf("round %d: %v", round, c)
		}
		if err := a.Close(); !errors.Is(err, arena.ErrClosed) {
			t.Fatalf("second Close: %v", err)
		}
	}
}

func TestAttackStatsAfterStress(t *testing.T) {
	for _, slots := range []int{1, 2, 5, 33} {
		for _, shards := range []int{0, 1, 4} {
			a := atkNew[uint64](t, slots, shards)
			ch := make(chan token.Token, slots)
			var wg sync.WaitGroup
			var allocs atomic.Int64
			deadline := time.Now().Add(60 * time.Millisecond)
			for w := 0; w < 4; w++ {
				wg.Add(2)
				go func() { // allocators
					defer wg.Done()
					for time.Now().Before(deadline) {
						tok, err := a.Store(1)
						if err == nil {
							allocs.Add(1)
							ch <- tok
						} else if !errors.Is(err, arena.ErrFull) {
							t.Error(err)
						}
					}
				}()
				go func() { // cross-goroutine freers
					defer wg.Done()
					for time.Now().Before(deadline) {
						select {
						case tok := <-ch:
							if err := a.Free(tok); err != nil {
								t.Error(err)
							}
						default:
							runtime.Gosched()
						}
					}
				}()
			}
			wg.Wait()
			close(ch)
			for tok := range ch {
				if err := a.Free(tok); err != nil {
					t.Fatal(err)
				}
			}
			st := a.Stats()
			if st.Allocs != st.Frees || st.Allocs != uint64(allocs.Load()) || a.Available() != a.Capacity() || st.Live != 0 {
				t.Fatalf("slots=%d shards=%d: stats %+v, counted %d allocs, available %d/%d", slots, shards, st, allocs.Load(), a.Available(), a.Capacity())
			}
			atkFillExact(t, a, slots, "after stress")
		}
	}
}

type atkPtrInArray struct {
	X [3]struct {
		A int
		P *int
	}
}
type atkBlankPtr struct {
	A int
	_ *int
}
type atkEmbedIface struct {
	A int
	error
}

func TestAttackConfigValidation(t *testing.T) {
	for _, cfg := range []arena.Config{
		{Slots: 0}, {Slots: -1}, {Slots: math.MinInt}, {Slots: math.MaxInt},
		{Slots: int(arena.MaxSlots) + 1}, {Slots: 4, Shards: -1}, {Slots: 4, Shards: math.MinInt},
		{Slots: 4, Shards: arena.MaxShards + 1},
	} {
		a, err := arena.New[uint64](cfg)
		if !errors.Is(err, arena.ErrInvalidConfig) {
			if a != nil {
				a.Close()
			}
			t.Errorf("New(%+v): %v, want ErrInvalidConfig", cfg, err)
		}
	}
	checkPtr := func(name string, f func() error) {
		t.Helper()
		if err := f(); !errors.Is(err, arena.ErrPointerType) {
			t.Errorf("%s: %v, want ErrPointerType", name, err)
		}
	}
	cfg := arena.Config{Slots: 4}
	checkPtr("*int", func() error { _, err := arena.New[*int](cfg); return err })
	checkPtr("[]int", func() error { _, err := arena.New[[]int](cfg); return err })
	checkPtr("string", func() error { _, err := arena.New[string](cfg); return err })
	checkPtr("map", func() error { _, err := arena.New[map[int]int](cfg); return err })
	checkPtr("chan", func() error { _, err := arena.New[chan int](cfg); return err })
	checkPtr("func", func() error { _, err := arena.New[func()](cfg); return err })
	checkPtr("any", func() error { _, err := arena.New[any](cfg); return err })
	checkPtr("unsafe.Pointer", func() error { _, err := arena.New[unsafe.Pointer](cfg); return err })
	checkPtr("nested array struct", func() error { _, err := arena.New[atkPtrInArray](cfg); return err })
	checkPtr("blank ptr field", func() error { _, err := arena.New[atkBlankPtr](cfg); return err })
	checkPtr("embedded iface", func() error { _, err := arena.New[atkEmbedIface](cfg); return err })
	checkPtr("[2][2]string", func() error { _, err := arena.New[[2][2]string](cfg); return err })
	// Pointer-free types are fine.
	if a, err := arena.New[struct {
		A [4]uintptr
		B complex128
		C [0]int64
	}](cfg); err != nil {
		t.Errorf("pointer-free struct: %v", err)
	} else {
		a.Close()
	}
	// Huge but valid Slots: error or success, never a panic.
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Errorf("New with MaxSlots panicked: %v", r)
			}
		}()
		a, err := arena.New[[1 << 16]byte](arena.Config{Slots: int(arena.MaxSlots)})
		if err == nil {
			a.Close()
		}
		b, err := arena.New[struct{}](arena.Config{Slots: int(arena.MaxSlots), Shards: 1})
		if err == nil {
			tok, _, err := b.Alloc()
			if err != nil {
				t.Errorf("Alloc on MaxSlots arena: %v", err)
			}
			if err := b.Free(tok); err != nil {
				t.Errorf("Free: %v", err)
			}
			b.Close()
		}
	}()
}

func TestAttackZeroSizeT(t *testing.T) {
	for _, shards := range []int{1, 3} {
		a := atkNew[struct{}](t, 10, shards)
		toks := atkFillExact(t, a, 10, "zero-size")
		if _, err := a.Load(toks[3]); err != nil {
			t.Fatal(err)
		}
		var d struct{}
		if err := a.LoadInto(toks[3], &d); err != nil {
			t.Fatal(err)
		}
		n := 0
		for range a.Tokens() {
			n++
		}
		if n != 10 {
			t.Fatalf("Tokens yielded %d", n)
		}
		for _, tok := range toks {
			if err := a.Free(tok); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := a.Trim(); err != nil {
			t.Fatal(err)
		}
		if a.Available() != 10 {
			t.Fatal(a.Available())
		}
		a2 := atkNew[[0]uint64](t, 3, shards)
		atkFillExact(t, a2, 3, "[0]uint64")
	}
}

// A wide arena (more than 2^29-1 slots keeps freelist links apart) must
// recycle and detect staleness like a small one.
func TestAttackWideArena(t *testing.T) {
	a, err := arena.New[uint32](arena.Config{Slots: 1<<29 + 10, Shards: 2})
	if err != nil {
		t.Skipf("cannot reserve a wide arena: %v", err)
	}
	defer a.Close()
	var toks []token.Token
	for i := 0; i < 200; i++ {
		tok, err := a.Store(uint32(i))
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	for _, tok := range toks {
		a.Free(tok)
	}
	for _, tok := range toks {
		if _, err := a.Load(tok); !errors.Is(err, arena.ErrStale) {
			t.Fatal(err)
		}
	}
	seen := map[uint32]bool{}
	var again []token.Token
	for i := 0; i < 200; i++ {
		tok, p, err := a.Alloc()
		if err != nil || *p != 0 || seen[tok.Index()] {
			t.Fatalf("Alloc: %v %v dup=%v", err, p, seen[tok.Index()])
		}
		seen[tok.Index()] = true
		again = append(again, tok)
	}
	if _, err := a.Trim(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for range a.Tokens() {
		n++
	}
	if n != 200 {
		t.Fatalf("Tokens %d", n)
	}
	for _, tok := range again {
		a.Free(tok)
	}
	if a.Available() != a.Capacity() {
		t.Fatal("lost slots")
	}
}

// atkTrimNoPanic calls Trim and turns a panic into an error, so that one bug
// does not take the whole test binary down.
func atkTrimNoPanic[T any](a *arena.Arena[T]) (rel int64, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("Trim panicked: %v", r)
		}
	}()
	return a.Trim()
}

// Trim reads how far the shards' frontiers reach once, before it detaches
// the freelists; slots handed out fresh (and freed) in between must not
// make it index past its bitmap. Trim is documented safe to call while
// other goroutines use the arena.
func TestAttackTrimRacesFrontier(t *testing.T) {
	end := time.Now().Add(1500 * time.Millisecond)
	for round := 0; time.Now().Before(end); round++ {
		shards := 2 + round%3
		a := atkNew[uint64](t, 1<<20, shards)
		// A long freelist to walk before Trim reaches the later shards.
		var pre []token.Token
		for i := 0; i < 1<<16; i++ {
			tok, _, _ := a.Alloc()
			pre = append(pre, tok)
		}
		for _, tok := range pre {
			a.Free(tok)
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			var live []token.Token
			for i := 0; ; i++ {
				select {
				case <-stop:
					for _, tok := range live {
						a.Free(tok)
					}
					return
				default:
				}
				// Two slots, one freed: the frontiers keep moving and the
				// freelists keep getting slots next to them.
				t1, _, e1 := a.Alloc()
				t2, _, e2 := a.Alloc()
				if e1 != nil || e2 != nil {
					if e1 == nil {
						a.Free(t1)
					}
					if e2 == nil {
						a.Free(t2)
					}
					for _, tok := range live {
						a.Free(tok)
					}
					live = live[:0]
					continue
				}
				a.Free(t1)
				live = append(live, t2)
			}
		}()
		var err error
		deadline := time.Now().Add(300 * time.Millisecond)
		for time.Now().Before(deadline) && err == nil {
			_, err = atkTrimNoPanic(a)
		}
		close(stop)
		wg.Wait()
		if err == nil && a.Available() != a.Capacity() {
			err = fmt.Errorf("Available %d, Capacity %d", a.Available(), a.Capacity())
		}
		a.Close()
		if err != nil {
			t.Fatalf("round %d, shards=%d: %v", round, shards, err)
		}
	}
}

func atkNoTornLoads[T any](t *testing.T, words func(*T) []uint64) {
	a := atkNew[T](t, 2, 1)
	tok, _ := a.Store(*new(T))
	deadline := time.Now().Add(150 * time.Millisecond)
	var wg sync.WaitGroup
	var bad atomic.Value
	wg.Add(3)
	go func() {
		defer wg.Done()
		for k := uint64(1); time.Now().Before(deadline); k++ {
			a.Update(tok, func(v *T) {
				for i, w := range words(v) {
					_ = w
					words(v)[i] = k
				}
			})
		}
	}()
	for r := 0; r < 2; r++ {
		go func() {
			defer wg.Done()
			dst := new(T)
			for time.Now().Before(deadline) {
				if err := a.LoadInto(tok, dst); err != nil {
					bad.Store(err.Error())
					return
				}
				ws := words(dst)
				for _, w := range ws {
					if w != ws[0] {
						bad.Store(fmt.Sprintf("torn LoadInto: %d vs %d", w, ws[0]))
						return
					}
				}
				if unsafe.Sizeof(*dst) <= 4096 {
					v, err := a.Load(tok)
					if err != nil {
						bad.Store(err.Error())
						return
					}
					ws = words(&v)
					for _, w := range ws {
						if w != ws[0] {
							bad.Store(fmt.Sprintf("torn Load: %d vs %d", w, ws[0]))
							return
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	if b := bad.Load(); b != nil {
		t.Fatal(b)
	}
}

func TestAttackNoTornLoads(t *testing.T) {
	atkNoTornLoads(t, func(v *[4]uint64) []uint64 { return v[:] })
	atkNoTornLoads(t, func(v *[40]uint64) []uint64 { return v[:] })
	atkNoTornLoads(t, func(v *[128]uint64) []uint64 { return v[:] })
	atkNoTornLoads(t, func(v *[1024]uint64) []uint64 { return v[:] })
}

// An Update waiting for a View to leave, whose token is freed meanwhile,
// returns ErrStale without running fn; the slot is recycled when the View
// ends.
func TestAttackFreeWhileUpdateWaits(t *testing.T) {
	a := atkNew[atkCell](t, 1, 1)
	tok, _ := a.Store(atkCell{A: 1})
	entered, release := make(chan struct{}), make(chan struct{})
	viewDone := make(chan error, 1)
	go func() {
		viewDone <- a.View(tok, func(*atkCell) { close(entered); <-release })
	}()
	<-entered
	upd := make(chan error, 1)
	ran := atomic.Bool{}
	go func() { upd <- a.Update(tok, func(*atkCell) { ran.Store(true) }) }()
	time.Sleep(10 * time.Millisecond) // let Update set its writer bit
	if err := a.Free(tok); err != nil {
		t.Fatalf("Free while Update waits: %v", err)
	}
	select {
	case err := <-upd:
		if !errors.Is(err, arena.ErrStale) || ran.Load() {
			t.Fatalf("waiting Update after Free: %v (fn ran %v)", err, ran.Load())
		}
	case <-time.After(3 * time.Second):
		t.Fatal("waiting Update did not return after Free")
	}
	if _, _, err := a.Alloc(); !errors.Is(err, arena.ErrFull) {
		t.Fatalf("slot recycled while View holds it: %v", err)
	}
	close(release)
	if err := <-viewDone; err != nil {
		t.Fatal(err)
	}
	atkFillExact(t, a, 1, "after View ended")
}
