package arena

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
)

// Issue 11 item 1: AllocWait and StoreWait.

type waitCell struct {
	ID  uint64
	Pad [24]byte
}

func newWaitArena(t *testing.T, slots, shards int) *Arena[waitCell] {
	t.Helper()
	a, err := New[waitCell](Config{Slots: slots, Shards: shards})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	return a
}

// parkedWaiters counts the goroutines parked in await's select (read from
// the goroutine dump, so the tests need no hook in the arena).
func parkedWaiters() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("[select")) && bytes.Contains(g, []byte("arena.(*core).await(")) {
			count++
		}
	}
	return count
}

// waitUntil polls cond until it holds or the test's patience runs out.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// waitParked waits until n goroutines are registered and parked, none with a
// wake-up it has not taken yet.
func waitParked(t *testing.T, a *Arena[waitCell], n int) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%d waiters are parked", n), func() bool {
		q := &a.waitq
		q.mu.Lock()
		for w := q.head; w != nil; w = w.next {
			if w.signalled {
				q.mu.Unlock()
				return false
			}
		}
		q.mu.Unlock()
		return q.n.Load() == int32(n) && parkedWaiters() == n
	})
}

// result is what a waiting goroutine got.
type result struct {
	tok token.Token
	err error
}

func TestAllocWaitFreeSlotReturnsAtOnce(t *testing.T) {
	a := newWaitArena(t, 2, 1)
	tok, v, err := a.AllocWait(nilCtx)
	if err != nil || v == nil || *v != (waitCell{}) {
		t.Fatalf("AllocWait(nil) = %v, %v, %v", tok, v, err)
	}
	// A done ctx does not stop a call that finds a free slot.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	tok2, err := a.StoreWait(ctx, waitCell{ID: 9})
	if err != nil {
		t.Fatalf("StoreWait with a free slot and a done ctx: %v", err)
	}
	if got, _ := a.Load(tok2); got.ID != 9 {
		t.Fatalf("StoreWait stored %+v", got)
	}
	// Full, and the ctx is done: the ctx's error, at once.
	_, _, err = a.AllocWait(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("AllocWait on a full arena with a done ctx: %v", err)
	}
	if a.waitq.n.Load() != 0 {
		t.Fatal("a waiter was left registered")
	}
	if err := a.Free(tok); err != nil {
		t.Fatal(err)
	}
	if err := a.Free(tok2); err != nil {
		t.Fatal(err)
	}
}

// A Free wakes one parked waiter, which gets the freed slot (zeroed).
func TestAllocWaitWokenByFree(t *testing.T) {
	a := newWaitArena(t, 1, 1)
	held, err := a.Store(waitCell{ID: 1})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan result, 1)
	go func() {
		tok, v, err := a.AllocWait(context.Background())
		if err == nil && *v != (waitCell{}) {
			err = fmt.Errorf("recycled slot not zeroed: %+v", *v)
		}
		got <- result{tok, err}
	}()
	waitParked(t, a, 1)
	if err := a.Free(held); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-got:
	case <-time.After(20 * time.Second):
		t.Fatal("Free did not wake the waiter")
	}
	if r.err != nil || r.tok.Index() != held.Index() {
		t.Fatalf("waiter got %v, %v", r.tok, r.err)
	}
	if a.Available() != 0 || a.waitq.n.Load() != 0 {
		t.Fatalf("Available %d, waiters %d", a.Available(), a.waitq.n.Load())
	}
	if err := a.Free(r.tok); err != nil {
		t.Fatal(err)
	}
}

// Waiters get the slot in the order they came: each frees it again when it
// has recorded its turn, which wakes the next.
func TestAllocWaitFIFO(t *testing.T) {
	for _, store := range []bool{false, true} {
		t.Run(fmt.Sprintf("store=%v", store), func(t *testing.T) {
			const n = 12
			a := newWaitArena(t, 1, 1)
			held, _, err := a.Alloc()
			if err != nil {
				t.Fatal(err)
			}
			var (
				mu    sync.Mutex
				order []int
				wg    sync.WaitGroup
			)
			for i := 0; i < n; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var tok token.Token
					var err error
					if store {
						tok, err = a.StoreWait(context.Background(), waitCell{ID: uint64(i)})
					} else {
						tok, _, err = a.AllocWait(context.Background())
					}
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					order = append(order, i)
					mu.Unlock()
					if err := a.Free(tok); err != nil {
						t.Error(err)
					}
				}()
				waitParked(t, a, i+1) // arrival order is i's order
			}
			if err := a.Free(held); err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			for i, got := range order {
				if got != i {
					t.Fatalf("waiters served in order %v, want 0..%d", order, n-1)
				}
			}
			if len(order) != n || a.Available() != a.Capacity() {
				t.Fatalf("served %d of %d; Available %d of %d", len(order), n, a.Available(), a.Capacity())
			}
		})
	}
}

// A woken waiter that loses the slot to a plain Alloc keeps its place: the
// next Free wakes it again, ahead of later waiters.
func TestAllocWaitKeepsPlaceWhenBarged(t *testing.T) {
	a := newWaitArena(t, 1, 1)
	held, _, _ := a.Alloc()
	first := make(chan result, 1)
	go func() {
		tok, _, err := a.AllocWait(context.Background())
		first <- result{tok, err}
	}()
	waitParked(t, a, 1)
	second := make(chan result, 1)
	go func() {
		tok, _, err := a.AllocWait(context.Background())
		second <- result{tok, err}
	}()
	waitParked(t, a, 2)

	// Free, and take the slot with a plain Alloc before the wake-up is
	// sent: the queue's mutex holds Free's wake-up back meanwhile.
	q := &a.waitq
	q.mu.Lock()
	freed := make(chan error, 1)
	go func(tok token.Token) { freed <- a.Free(tok) }(held)
	waitUntil(t, "the slot is free", func() bool { return a.Available() == 1 })
	held, _, err := a.Alloc()
	q.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-freed; err != nil {
		t.Fatal(err)
	}
	// The first waiter was woken, lost, and parked again.
	waitParked(t, a, 2)
	if err := a.Free(held); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-first:
		if r.err != nil {
			t.Fatal(r.err)
		}
	case r2 := <-second:
		t.Fatalf("the later waiter was served first: %v", r2)
	case <-time.After(20 * time.Second):
		t.Fatal("Free woke nobody")
	}
	if err := a.Free(r.tok); err != nil {
		t.Fatal(err)
	}
	var r2 result
	select {
	case r2 = <-second:
		if r2.err != nil {
			t.Fatal(r2.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the second waiter was not served")
	}
	_ = a.Free(r2.tok)
	if a.Available() != a.Capacity() {
		t.Fatal("slot lost")
	}
}

func TestAllocWaitContext(t *testing.T) {
	a := newWaitArena(t, 1, 1)
	held, _, _ := a.Alloc()

	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		got := make(chan error, 1)
		go func() {
			_, _, err := a.AllocWait(ctx)
			got <- err
		}()
		waitParked(t, a, 1)
		cancel()
		err := <-got
		if !errors.Is(err, context.Canceled) || !errors.Is(err, ctx.Err()) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := a.StoreWait(ctx, waitCell{ID: 1})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want context.DeadlineExceeded", err)
		}
		if d := time.Since(start); d < 15*time.Millisecond {
			t.Fatalf("returned after %v, before the deadline", d)
		}
	})
	t.Run("cause", func(t *testing.T) {
		cause := errors.New("shutting down")
		ctx, cancel := context.WithCancelCause(context.Background())
		got := make(chan error, 1)
		go func() {
			_, _, err := a.AllocWait(ctx)
			got <- err
		}()
		waitParked(t, a, 1)
		cancel(cause)
		err := <-got
		if !errors.Is(err, context.Canceled) || !errors.Is(err, cause) {
			t.Fatalf("got %v, want context.Canceled and the cause", err)
		}
	})
	if a.waitq.n.Load() != 0 {
		t.Fatal("a waiter was left registered")
	}
	_ = a.Free(held)
	if a.Available() != a.Capacity() {
		t.Fatal("slot lost")
	}
}

// Close wakes every waiter with ErrClosed, and later waits fail at once.
func TestAllocWaitClose(t *testing.T) {
	const n = 8
	a, err := New[waitCell](Config{Slots: 2, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, _, err := a.Alloc(); err != nil {
			t.Fatal(err)
		}
	}
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			if i%2 == 0 {
				_, _, err := a.AllocWait(nilCtx)
				errs <- err
			} else {
				_, err := a.StoreWait(context.Background(), waitCell{})
				errs <- err
			}
		}()
	}
	waitParked(t, a, n)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("waiter got %v, want ErrClosed", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Close did not wake every waiter")
		}
	}
	if _, _, err := a.AllocWait(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("AllocWait after Close: %v", err)
	}
	if _, err := a.StoreWait(context.Background(), waitCell{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("StoreWait after Close: %v", err)
	}
}

// Close racing waiters that are registering: none may park for ever.
func TestAllocWaitCloseRace(t *testing.T) {
	for round := 0; round < 50; round++ {
		a, err := New[waitCell](Config{Slots: 1, Shards: 1})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := a.Alloc(); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := 0; i < 4; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, _, err := a.AllocWait(context.Background()); !errors.Is(err, ErrClosed) {
					t.Errorf("got %v, want ErrClosed", err)
				}
			}()
		}
		runtime.Gosched()
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
	}
}

// A slot freed while a View holds it becomes free when the View returns:
// that must wake the waiter too (the Free itself freed nothing yet).
func TestAllocWaitWokenByLastHolder(t *testing.T) {
	for _, update := range []bool{false, true} {
		t.Run(fmt.Sprintf("update=%v", update), func(t *testing.T) {
			a := newWaitArena(t, 1, 1)
			held, _, _ := a.Alloc()
			inside, release := make(chan struct{}), make(chan struct{})
			done := make(chan error, 1)
			go func() {
				fn := func(*waitCell) { close(inside); <-release }
				if update {
					done <- a.Update(held, fn)
				} else {
					done <- a.View(held, fn)
				}
			}()
			<-inside
			got := make(chan result, 1)
			go func() {
				tok, _, err := a.AllocWait(context.Background())
				got <- result{tok, err}
			}()
			waitParked(t, a, 1)
			if err := a.Free(held); err != nil { // held: not recycled yet
				t.Fatal(err)
			}
			select {
			case r := <-got:
				t.Fatalf("waiter served while the slot was still held: %v", r)
			case <-time.After(20 * time.Millisecond):
			}
			close(release)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			select {
			case r := <-got:
				if r.err != nil {
					t.Fatal(r.err)
				}
				_ = a.Free(r.tok)
			case <-time.After(20 * time.Second):
				t.Fatal("the waiter was not woken when the last holder left")
			}
			if a.Available() != a.Capacity() {
				t.Fatal("slot lost")
			}
		})
	}
}

// Many waiters on a tiny arena, some of them giving up (deadlines and
// cancels) while frees run: every waiter that does not give up is served,
// and no slot is lost. A wake-up handed to a waiter that has just given up
// must reach the next waiter, or the patient ones hang.
func TestAllocWaitStress(t *testing.T) {
	for _, slots := range []int{1, 2} {
		t.Run(fmt.Sprintf("slots=%d", slots), func(t *testing.T) {
			a := newWaitArena(t, slots, 0)
			const (
				patient   = 8
				impatient = 24
			)
			rounds := 300
			if testing.Short() {
				rounds = 50
			}
			var (
				wg       sync.WaitGroup
				served   atomic.Int64
				gaveUp   atomic.Int64
				inFlight atomic.Int32
			)
			use := func(tok token.Token, id uint64) {
				if n := inFlight.Add(1); n > int32(slots) {
					t.Errorf("%d slots in use at once, capacity %d", n, slots)
				}
				_ = a.Update(tok, func(c *waitCell) { c.ID = id })
				if rand.IntN(4) == 0 {
					runtime.Gosched()
				}
				inFlight.Add(-1)
				if err := a.Free(tok); err != nil {
					t.Error(err)
				}
			}
			for g := 0; g < patient+impatient; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for r := 0; r < rounds; r++ {
						ctx, cancel := context.Background(), context.CancelFunc(func() {})
						if g >= patient {
							switch rand.IntN(3) {
							case 0:
								ctx, cancel = context.WithTimeout(ctx, time.Duration(rand.IntN(50))*time.Microsecond)
							case 1:
								ctx, cancel = context.WithCancel(ctx)
								go func() { runtime.Gosched(); cancel() }()
							}
						}
						var tok token.Token
						var err error
						if r%2 == 0 {
							tok, _, err = a.AllocWait(ctx)
						} else {
							tok, err = a.StoreWait(ctx, waitCell{ID: uint64(g)})
						}
						cancel()
						switch {
						case err == nil:
							served.Add(1)
							use(tok, uint64(g))
						case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
							if g < patient {
								t.Errorf("patient waiter got %v", err)
								return
							}
							gaveUp.Add(1)
						default:
							t.Error(err)
							return
						}
					}
				}()
			}
			finished := make(chan struct{})
			go func() { wg.Wait(); close(finished) }()
			select {
			case <-finished:
			case <-time.After(60 * time.Second):
				t.Fatalf("waiters hang: %d registered, %d parked, Available %d (a wake-up was lost)",
					a.waitq.n.Load(), parkedWaiters(), a.Available())
			}
			if a.Available() != a.Capacity() || a.waitq.n.Load() != 0 {
				t.Fatalf("Available %d of %d, %d waiters left", a.Available(), a.Capacity(), a.waitq.n.Load())
			}
			st := a.Stats()
			if st.Allocs != st.Frees || st.Allocs != uint64(served.Load()) {
				t.Fatalf("stats %+v, served %d", st, served.Load())
			}
			t.Logf("served %d, gave up %d", served.Load(), gaveUp.Load())
		})
	}
}

// The wake-up handed to a waiter that gives up goes to the next waiter.
// Deterministic: the first waiter is signalled but has not taken its
// wake-up when it leaves.
func TestAllocWaitPassOn(t *testing.T) {
	a := newWaitArena(t, 1, 1)
	held, _, _ := a.Alloc()
	q := &a.waitq
	gone := q.register() // a waiter that will give up
	got := make(chan result, 1)
	go func() {
		tok, _, err := a.AllocWait(context.Background())
		got <- result{tok, err}
	}()
	// The goroutine is parked; gone is registered ahead of it, not parked.
	waitUntil(t, "the second waiter is parked", func() bool {
		return q.n.Load() == 2 && parkedWaiters() == 1
	})
	if err := a.Free(held); err != nil {
		t.Fatal(err)
	}
	q.mu.Lock()
	signalled := gone.signalled
	q.mu.Unlock()
	if !signalled {
		t.Fatal("the first waiter in line was not the one woken")
	}
	select {
	case r := <-got:
		t.Fatalf("the second waiter was served while the first held the wake-up: %v", r)
	case <-time.After(20 * time.Millisecond):
	}
	q.leave(gone) // gives up without retrying
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatal(r.err)
		}
		_ = a.Free(r.tok)
	case <-time.After(20 * time.Second):
		t.Fatal("the wake-up of the waiter that gave up was lost")
	}
	if a.Available() != a.Capacity() || q.n.Load() != 0 {
		t.Fatal("slot or waiter lost")
	}
}

// Free costs nothing more while nobody waits, also after waiters came and
// went; AllocWait and StoreWait on a free slot allocate nothing either.
func TestAllocWaitNoAllocs(t *testing.T) {
	a := newWaitArena(t, 4, 1)
	held := make([]token.Token, 0, 4)
	for i := 0; i < 4; i++ {
		tok, _, _ := a.Alloc()
		held = append(held, tok)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	_, _, err := a.AllocWait(ctx) // registers, waits, gives up
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
	for _, tok := range held {
		_ = a.Free(tok)
	}
	ctx = context.Background()
	var tok token.Token
	if n := testing.AllocsPerRun(1000, func() {
		tok, _, _ = a.Alloc()
		if err := a.Free(tok); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Alloc+Free allocate %.2f times, want 0", n)
	}
	if n := testing.AllocsPerRun(1000, func() {
		tok, _, _ = a.AllocWait(ctx)
		_ = a.Free(tok)
	}); n != 0 {
		t.Errorf("AllocWait+Free on a free slot allocate %.2f times, want 0", n)
	}
	if n := testing.AllocsPerRun(1000, func() {
		tok, _ = a.StoreWait(ctx, waitCell{ID: 1})
		_ = a.Free(tok)
	}); n != 0 {
		t.Errorf("StoreWait+Free on a free slot allocate %.2f times, want 0", n)
	}
}

// BenchmarkFreeNoWaiters is the Alloc+Free pair with the waiter check in
// Free (compare with BenchmarkAllocFree elsewhere; run it by hand).
func BenchmarkFreeNoWaiters(b *testing.B) {
	a, err := New[waitCell](Config{Slots: 1024})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	for b.Loop() {
		tok, _, _ := a.Alloc()
		_ = a.Free(tok)
	}
}

// nilCtx is a nil context.Context, for the tests of "a nil ctx waits like
// Background" (a variable, so that linters do not flag a literal nil).
var nilCtx context.Context
