package shm

// Close: its own semantics (second Close, every method after it, the last
// one removes the file, the watcher stops), and Close racing everything a
// handle does: running callbacks (waited for), callbacks that have not
// started, Loads waiting on another process's hold, recoveries, Stores
// that copy a large payload. A Close must never leave a goroutine reading
// the unmapped segment (a fault) nor wait for another process.

import (
	"errors"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
)

// TestCloseSemantics: a second Close is ErrClosed; every method of a
// closed handle returns ErrClosed (and touches no unmapped memory), while
// the other handle keeps working on the same tokens; the segment file
// stays until the last handle closes, and then Attach is ErrNotExist.
func TestCloseSemantics(t *testing.T) {
	hs := segment[pay](t, 2, Config{Slots: 8})
	a, b := hs[0], hs[1]
	dir := dirOf(b)
	tok, err := a.Store(patterned(1, 1))
	must(t, err, "Store")
	must(t, a.Close(), "Close")
	wantErr(t, a.Close(), ErrClosed, "second Close")
	if _, err := os.Stat(a.Path()); err != nil {
		t.Fatalf("the segment file went away while B is attached: %v", err)
	}
	var dst pay
	_, _, err = a.Alloc()
	wantErr(t, err, ErrClosed, "Alloc")
	_, err = a.Store(pay{})
	wantErr(t, err, ErrClosed, "Store")
	_, err = a.Load(tok)
	wantErr(t, err, ErrClosed, "Load")
	wantErr(t, a.LoadInto(tok, &dst), ErrClosed, "LoadInto")
	wantErr(t, a.View(tok, func(*pay) { t.Error("View ran after Close") }), ErrClosed, "View")
	wantErr(t, a.Update(tok, func(*pay) { t.Error("Update ran after Close") }), ErrClosed, "Update")
	wantErr(t, a.Free(tok), ErrClosed, "Free")
	wantErr(t, a.Adopt(tok), ErrClosed, "Adopt")
	_, err = a.Recover()
	wantErr(t, err, ErrClosed, "Recover")
	if n := a.Available(); n != 0 {
		t.Fatalf("Available after Close = %d", n)
	}
	if a.Capacity() != 8 {
		t.Fatal("Capacity after Close")
	}
	_ = a.Stats()

	// A's allocation survives A's Close, in B.
	v, err := b.Load(tok)
	if err != nil || v != patterned(1, 1) {
		t.Fatalf("B Load after A closed: %v %v", v, err)
	}
	if n := b.Available(); n != 7 {
		t.Fatalf("B Available = %d, want 7", n)
	}
	if st := b.Stats(); st.Processes != 1 {
		t.Fatalf("Stats.Processes = %d after A closed", st.Processes)
	}
	must(t, b.Close(), "last Close")
	if _, err := os.Stat(b.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the last Close left the segment file: %v", err)
	}
	_, err = Attach[pay](segName, Config{Dir: dir, Watch: -1})
	wantErr(t, err, ErrNotExist, "Attach after the last Close")
}

// TestCloseWaitsForCallback: Close while another goroutine is inside a
// View waits for the callback to return (the callback still reads the
// mapped slot), and then closes.
func TestCloseWaitsForCallback(t *testing.T) {
	hs := segment[pay](t, 1, Config{Slots: 2})
	a := hs[0]
	tok, err := a.Store(patterned(5, 5))
	must(t, err, "Store")
	entered, release := make(chan struct{}), make(chan struct{})
	viewDone := make(chan error, 1)
	go func() {
		viewDone <- a.View(tok, func(p *pay) {
			close(entered)
			<-release
			if !p.whole() || p.Owner != 5 {
				t.Error("payload unreadable after Close began")
			}
		})
	}()
	<-entered
	closed := make(chan error, 1)
	go func() { closed <- a.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a View callback was running", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	select {
	case err := <-closed:
		must(t, err, "Close")
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not finish after the callback returned")
	}
	must(t, <-viewDone, "View")
}

// bigPay is a payload large enough that copying it takes a while, so a
// Store racing Close is likely to be copying when Close unmaps.
type bigPay struct{ B [1 << 20]byte }

// TestCloseRacesOperations: Close while other goroutines run every method
// on the handle (Stats also inside a callback): each call returns nil or
// an expected error, never faults or hangs. With 1 MiB payloads, Alloc and Store used to write the slot
// after leaving the gate and faulted here within a few rounds.
func TestCloseRacesOperations(t *testing.T) {
	rounds := 20
	if testing.Short() {
		rounds = 5
	}
	for round := range rounds {
		hs := segment[bigPay](t, 1, Config{Slots: 4})
		a := hs[0]
		keep, err := a.Store(bigPay{})
		must(t, err, "Store")
		var wg sync.WaitGroup
		for g := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var v bigPay
				for i := 0; ; i++ {
					var err error
					switch (g + i) % 9 {
					case 0:
						var tok token.Token
						if tok, err = a.Store(v); err == nil {
							err = a.Free(tok)
						}
					case 1:
						var tok token.Token
						if tok, _, err = a.Alloc(); err == nil {
							err = a.Free(tok)
						}
					case 2:
						err = a.LoadInto(keep, &v)
					case 3:
						err = a.View(keep, func(p *bigPay) { v.B[0] = p.B[len(p.B)-1] })
					case 4:
						err = a.Update(keep, func(p *bigPay) { p.B[1]++ })
					case 5:
						err = a.Adopt(keep)
					case 6:
						_, err = a.Recover()
					case 7:
						_ = a.Stats()
						_ = a.Available()
					case 8:
						err = a.View(keep, func(p *bigPay) { _ = a.Stats() })
					}
					if errors.Is(err, ErrClosed) {
						return
					}
					if err != nil && !errors.Is(err, ErrFull) {
						t.Errorf("round %d: %v", round, err)
						return
					}
				}
			}()
		}
		time.Sleep(time.Duration(round%4) * time.Millisecond)
		must(t, a.Close(), "Close")
		wg.Wait()
	}
}

// TestStatsInCallbackDuringClose: a callback that calls Stats (or
// Available) while Close waits for it finishes, and so does Close. Stats
// used to wait for a lock Close held while waiting for the callback.
func TestStatsInCallbackDuringClose(t *testing.T) {
	hs := segment[pay](t, 1, Config{Slots: 2})
	a := hs[0]
	tok, err := a.Store(pay{})
	must(t, err, "Store")
	entered, closing := make(chan struct{}), make(chan struct{})
	viewed := make(chan error, 1)
	go func() {
		viewed <- a.View(tok, func(*pay) {
			close(entered)
			<-closing
			time.Sleep(20 * time.Millisecond) // Close is waiting for us by now
			if st := a.Stats(); st.Processes != 1 {
				t.Errorf("Stats inside the callback: %+v", st)
			}
			_ = a.Available()
		})
	}()
	<-entered
	closed := make(chan error, 1)
	go func() {
		close(closing)
		closed <- a.Close()
	}()
	within(t, 5*time.Second, "a callback calling Stats while Close waits", func() {
		must(t, <-viewed, "View")
		must(t, <-closed, "Close")
	})
	if st := a.Stats(); st.Processes != 0 || st.Allocs != 1 {
		t.Fatalf("Stats after Close: %+v (local counters only)", st)
	}
}

// TestCloseWhileLoadWaits: a Load waiting for a slot another process's
// Update holds, when its own handle closes, returns ErrClosed; it must not
// read the unmapped segment (its wait checks the records for the dead every
// 64 tries past 20ms, and faulted when Close unmapped in between). The
// timings spread over that window; 20 pairs run at once.
func TestCloseWhileLoadWaits(t *testing.T) {
	rounds := 8
	if testing.Short() {
		rounds = 1
	}
	var wg sync.WaitGroup
	for g := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range rounds {
				hs := segment[pay](t, 2, Config{Slots: 2})
				a, b := hs[0], hs[1]
				tok, err := b.Store(pay{})
				if err != nil {
					t.Error(err)
					return
				}
				held, release := make(chan struct{}), make(chan struct{})
				updated := make(chan error, 1)
				go func() { updated <- b.Update(tok, func(*pay) { close(held); <-release }) }()
				<-held
				loaded := make(chan error, 1)
				go func() { _, err := a.Load(tok); loaded <- err }()
				time.Sleep(time.Duration(25+(g*5+round*13)%60) * time.Millisecond)
				if err := a.Close(); err != nil {
					t.Error(err)
				}
				if err := <-loaded; !errors.Is(err, ErrClosed) {
					t.Errorf("Load waiting when its handle closed: %v, want ErrClosed", err)
				}
				close(release)
				if err := <-updated; err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
}

// TestCloseWhileRecoveryRuns: an operation that meets a recovery waits
// outside the gate for it to end, or for its handle to close; Close waits
// for the recovery (it gives its record back through the segment), and
// the operation returns ErrClosed without touching the unmapped segment.
// The recovery is simulated: B's record holds the recovering word (B is
// alive, so nobody takes the recovery over).
func TestCloseWhileRecoveryRuns(t *testing.T) {
	hs := segment[pay](t, 2, Config{Slots: 2})
	a, b := hs[0], hs[1]
	tok, err := b.Store(pay{})
	must(t, err, "Store")
	atomic.StoreUint32(&b.hdr.recovering, uint32(b.me+1))
	loaded := make(chan error, 1)
	go func() { _, err := a.Load(tok); loaded <- err }()
	time.Sleep(20 * time.Millisecond)
	closed := make(chan error, 1)
	go func() { closed <- a.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) during a recovery", err)
	case <-time.After(50 * time.Millisecond):
	}
	atomic.StoreUint32(&b.hdr.recovering, 0)
	futexWake(&b.hdr.recovering)
	within(t, 5*time.Second, "Close and Load after the recovery", func() {
		must(t, <-closed, "Close")
		wantErr(t, <-loaded, ErrClosed, "Load that waited for the recovery")
	})
	if v, err := b.Load(tok); err != nil || v != (pay{}) {
		t.Fatalf("B after the recovery: %v %v", v, err)
	}
}

// TestCloseWhileViewWaits: a View or Update waiting to start on a slot
// another process's Update holds returns ErrClosed when its handle closes,
// and Close returns without waiting for the other process (a Load in the
// same place always did). Close used to wait, as for a running callback,
// until the other process released the slot.
func TestCloseWhileViewWaits(t *testing.T) {
	for _, update := range []bool{false, true} {
		hs := segment[pay](t, 2, Config{Slots: 2})
		a, b := hs[0], hs[1]
		tok, err := b.Store(pay{})
		must(t, err, "Store")
		held, release := make(chan struct{}), make(chan struct{})
		defer close(release)
		go func() { _ = b.Update(tok, func(*pay) { close(held); <-release }) }()
		<-held
		access := a.View
		if update {
			access = a.Update
		}
		waiting := make(chan error, 1)
		go func() { waiting <- access(tok, func(*pay) {}) }()
		time.Sleep(10 * time.Millisecond)
		within(t, 5*time.Second, "Close while a callback waits for another process", func() {
			must(t, a.Close(), "Close")
			wantErr(t, <-waiting, ErrClosed, "the waiting View/Update")
		})
	}
}

// TestCloseStopsWatcher: a handle with a watcher (the default Watch)
// starts one goroutine and Close stops it: no goroutine outlives Close.
func TestCloseStopsWatcher(t *testing.T) {
	dir := t.TempDir()
	before := runtime.NumGoroutine()
	a, err := Create[pay](segName, Config{Slots: 2, Dir: dir})
	must(t, err, "Create")
	b, err := Attach[pay](segName, Config{Dir: dir, Watch: time.Millisecond})
	must(t, err, "Attach")
	if a.watchDone == nil || b.watchDone == nil {
		t.Fatal("a handle with Watch >= 0 started no watcher")
	}
	must(t, a.Close(), "Close")
	must(t, b.Close(), "Close")
	// Goroutines an earlier test left finishing may still exit: poll.
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after Close, %d before", runtime.NumGoroutine(), before)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestHoldEntriesExhausted: with every hold entry of the process taken by
// a running callback, one more View waits (it neither fails nor runs
// without an entry recovery could see) and runs once a callback returns;
// a Close that starts meanwhile waits for all of them, and the waiting
// View then gets ErrClosed or runs, never a fault.
func TestHoldEntriesExhausted(t *testing.T) {
	a := segment[pay](t, 1, Config{Slots: 4})[0]
	tok, err := a.Store(patterned(1, 1))
	must(t, err, "Store")
	var running sync.WaitGroup
	running.Add(holdsPerProc)
	release := make(chan struct{})
	var done sync.WaitGroup
	for range holdsPerProc {
		done.Add(1)
		go func() {
			defer done.Done()
			err := a.View(tok, func(*pay) {
				running.Done()
				<-release
			})
			if err != nil {
				t.Errorf("View: %v", err)
			}
		}()
	}
	running.Wait()
	var extra atomic.Bool
	extraDone := make(chan error, 1)
	go func() { extraDone <- a.View(tok, func(*pay) { extra.Store(true) }) }()
	time.Sleep(50 * time.Millisecond)
	if extra.Load() {
		t.Fatal("a View ran while every hold entry was taken")
	}
	close(release)
	within(t, 5*time.Second, "the extra View once entries came back", func() {
		must(t, <-extraDone, "extra View")
	})
	if !extra.Load() {
		t.Fatal("the extra View returned without running")
	}
	done.Wait()
	for i := range a.rec.holds {
		if v := atomic.LoadUint64(&a.rec.holds[i]); v != 0 {
			t.Fatalf("hold entry %d still %#x after every callback returned", i, v)
		}
	}
	if s := atomic.LoadUint64(a.state(tok.Index())); readersOf(s) != 0 {
		t.Fatalf("state %#x: readers left", s)
	}
}

// TestCloseWhileOpAwaitsRecovery: an operation that finds a recovery
// running closes its section and waits for it; a Close that unmaps the
// segment at that very moment must not make it fault (it looked at the
// recovery word before it looked at closed: a SIGSEGV once in a CI run of
// TestArenaAttackCloseRaces).
func TestCloseWhileOpAwaitsRecovery(t *testing.T) {
	hs := segment[cell](t, 2, Config{Slots: 8})
	a, other := hs[0], hs[1]
	// other "recovers": the word names its live record, so a's operations wait.
	if !atomic.CompareAndSwapUint32(&other.hdr.recovering, 0, uint32(other.me+1)) {
		t.Fatal("recovery word busy")
	}
	inWindow, closed := make(chan struct{}), make(chan struct{})
	testHookAwaitRecovery = func() {
		close(inWindow)
		<-closed
	}
	defer func() { testHookAwaitRecovery = nil }()
	got := make(chan error, 1)
	go func() {
		_, _, err := a.Alloc()
		got <- err
	}()
	<-inWindow
	testHookAwaitRecovery = nil
	// Close waits for the recovery too (it detaches in a section): end it.
	closeErr := make(chan error, 1)
	go func() { closeErr <- a.Close() }()
	time.Sleep(10 * time.Millisecond)
	atomic.StoreUint32(&other.hdr.recovering, 0)
	futexWake(&other.hdr.recovering)
	must(t, <-closeErr, "Close")
	close(closed) // the operation goes on, with the segment unmapped under it
	select {
	case err := <-got:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Alloc racing Close during a recovery = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Alloc racing Close during a recovery did not return")
	}
}
