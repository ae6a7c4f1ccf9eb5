package shm

// Attacks on the plain shared Arena across processes. Child processes are
// re-executed test binaries (see TestMain and spawn in proc_test.go); a role
// named arenaattack.* is dispatched from init here and exits before
// TestMain, like crash_attack_test.go's roles.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
	"golang.org/x/sys/unix"
)

const aaPrefix = "arenaattack."

// The child roles of this file run in a re-executed test binary
// (runChildRole).
var _ = registerChildRoles(aaPrefix, aaRunChild)

func aaRunChild(role, dir, name, arg string) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "arenaattack %s: "+format+"\n", append([]any{role}, args...)...)
		return exitBadError
	}
	if role == "attached" {
		fmt.Println("attaching")
	}
	a, err := Attach[cell](name, Config{Dir: dir, Watch: -1})
	if err != nil {
		return fail("attach: %v", err)
	}
	switch role {
	case "allocall":
		// Allocate until ErrFull, print the count, wait to be killed.
		n := 0
		for {
			_, p, err := a.Alloc()
			if errors.Is(err, ErrFull) {
				break
			}
			if err != nil {
				return fail("alloc: %v", err)
			}
			p.fill(uint64(n + 1))
			n++
		}
		fmt.Println(n)
		sleepForever()
	case "allochalf":
		// Allocate arg slots (filled), print "ok", wait to be killed.
		n, _ := strconv.Atoi(arg)
		for i := range n {
			_, p, err := a.Alloc()
			if err != nil {
				return fail("alloc %d: %v", i, err)
			}
			p.fill(uint64(i + 1))
		}
		fmt.Println("ok")
		sleepForever()
	case "attached":
		// Attach (which recovers after the dead) and report it.
		fmt.Println("attached")
		sleepForever()
	case "cachehold":
		// Allocate 40, free 20 (they stay in this P's way cache), hold a
		// View and an Update, print the record index; wait to be killed.
		var toks []token.Token
		for range 40 {
			t, _, err := a.Alloc()
			if err != nil {
				return fail("alloc: %v", err)
			}
			toks = append(toks, t)
		}
		for _, t := range toks[:20] {
			if err := a.Free(t); err != nil {
				return fail("free: %v", err)
			}
		}
		ready := make(chan struct{}, 2)
		go a.View(toks[20], func(*cell) { ready <- struct{}{}; sleepForever() })
		go a.Update(toks[21], func(*cell) { ready <- struct{}{}; sleepForever() })
		<-ready
		<-ready
		fmt.Println(a.me)
		sleepForever()
	case "updateloop":
		// Rewrite the slot in arg in Update callbacks, word by word with
		// yields in between, until killed; report torn values seen.
		v, _ := strconv.ParseUint(arg, 10, 64)
		tok := token.Token(v)
		fmt.Println("updating")
		for stamp := uint64(1) << 40; ; stamp++ {
			var torn bool
			if err := a.Update(tok, func(c *cell) {
				torn = !c.whole()
				c.Stamp = stamp
				for i := range c.Words {
					c.Words[i] = stamp*0x9e3779b97f4a7c15 + uint64(i)
					if i == 2 {
						runtime.Gosched()
					}
				}
			}); err != nil {
				return fail("update: %v", err)
			}
			if torn {
				return exitCorrupt
			}
		}
	case "allocprint":
		// Allocate one slot, fill it, print its token, wait to be killed.
		tok, p, err := a.Alloc()
		if err != nil {
			return fail("alloc: %v", err)
		}
		p.fill(42)
		fmt.Println(uint64(tok))
		sleepForever()
	case "adopt":
		// Adopt the token in arg, then wait to be killed.
		v, _ := strconv.ParseUint(arg, 10, 64)
		if err := a.Adopt(token.Token(v)); err != nil {
			return fail("adopt: %v", err)
		}
		fmt.Println("adopted")
		sleepForever()
	case "viewloop":
		// Keep the slot in arg under overlapping View callbacks (three
		// goroutines, each callback 3ms long, staggered) until killed.
		v, _ := strconv.ParseUint(arg, 10, 64)
		tok := token.Token(v)
		var started atomic.Int32
		for g := range 3 {
			go func() {
				time.Sleep(time.Duration(g) * time.Millisecond)
				for {
					if err := a.View(tok, func(*cell) {
						started.Add(1)
						time.Sleep(3 * time.Millisecond)
					}); err != nil {
						fmt.Fprintln(os.Stderr, "viewloop:", err)
						os.Exit(exitBadError)
					}
				}
			}()
		}
		for started.Load() < 6 {
			time.Sleep(time.Millisecond)
		}
		fmt.Println("viewing")
		sleepForever()
	case "allocwait":
		// Park in AllocWait on a full arena, then wait to be killed.
		fmt.Println("waiting")
		_, _, err := a.AllocWait(context.Background())
		if err != nil {
			return fail("allocwait: %v", err)
		}
		fmt.Println("got")
		sleepForever()
	case "burstclose":
		// Allocate every slot, then free and allocate bursts (so that
		// the way caches hold chains), free everything, print "closing" and Close; killed at any moment.
		var toks []token.Token
		for round := range 4 {
			for k := 0; round == 0 || k < 200; k++ {
				t, _, err := a.Alloc()
				if errors.Is(err, ErrFull) {
					break
				}
				if err != nil {
					return fail("alloc: %v", err)
				}
				toks = append(toks, t)
			}
			for i, t := range toks {
				if (i+round)%3 != 0 {
					continue
				}
				if err := a.Free(t); err != nil {
					return fail("free: %v", err)
				}
				toks[i] = token.Nil
			}
			kept := toks[:0]
			for _, t := range toks {
				if !t.IsNil() {
					kept = append(kept, t)
				}
			}
			toks = kept
		}
		for _, t := range toks {
			if err := a.Free(t); err != nil {
				return fail("free: %v", err)
			}
		}
		fmt.Println("closing")
		if err := a.Close(); err != nil {
			return fail("close: %v", err)
		}
		fmt.Println("closed")
		sleepForever()
	}
	return fail("unknown role")
}

// aaStart starts an arenaattack child and returns it with a reader of its
// stdout.
func aaStart(t *testing.T, role, dir, name, arg string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	cmd := spawn(t, aaPrefix+role, dir, name, arg)
	out, err := cmd.StdoutPipe()
	must(t, err, "stdout pipe")
	must(t, cmd.Start(), "start child")
	return cmd, bufio.NewReader(out)
}

func aaLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	type res struct {
		l   string
		err error
	}
	ch := make(chan res, 1)
	go func() { l, err := r.ReadString('\n'); ch <- res{l, err} }()
	select {
	case x := <-ch:
		if x.err != nil {
			t.Fatalf("child stdout: %q, %v", x.l, x.err)
		}
		return strings.TrimSpace(x.l)
	case <-time.After(20 * time.Second):
		t.Fatal("child said nothing for 20s")
	}
	return ""
}

func aaKill(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
}

func aaCreate(t *testing.T, slots, shards int, watch time.Duration) (*Arena[cell], string) {
	t.Helper()
	dir := t.TempDir()
	a, err := Create[cell](segName, Config{Slots: slots, Shards: shards, Dir: dir, Watch: watch})
	must(t, err, "Create")
	t.Cleanup(func() { closeAtEnd(t, a) })
	return a, dir
}

func aaRecover(t *testing.T, a *Arena[cell]) Recovery {
	t.Helper()
	var rep Recovery
	var err error
	within(t, 20*time.Second, "Recover", func() { rep, err = a.Recover() })
	must(t, err, "Recover")
	return rep
}

// cpuTime is this process's user+system CPU time.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru unix.Rusage
	must(t, unix.Getrusage(unix.RUSAGE_SELF, &ru), "getrusage")
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestArenaAttackAllocWaitSpinsWhileFreedSlotHeld: AllocWait "waits
// (parked, not spinning) while the arena is full". With the only slot
// freed by one process while another process's View still holds it, the
// arena is full (Alloc is ErrFull until the View returns, as documented),
// but Available already counts the slot as free, and awaitFree returns at
// once whenever Available() > 0: AllocWait busy-loops (Alloc, ErrFull,
// awaitFree returns nil, Alloc ...) for as long as the View runs, burning a
// CPU, and never looks at ctx on the way (only park does), so its deadline
// is ignored too. (With a retired slot it would spin forever.)
func TestArenaAttackAllocWaitSpinsWhileFreedSlotHeld(t *testing.T) {
	a, dir := aaCreate(t, 1, 1, -1)
	b := attachTo[cell](t, dir, -1)
	tok, _, err := a.Alloc()
	must(t, err, "Alloc")
	inView, release := make(chan struct{}), make(chan struct{})
	viewDone := make(chan error, 1)
	go func() {
		viewDone <- b.View(tok, func(*cell) { close(inView); <-release })
	}()
	<-inView
	must(t, a.Free(tok), "Free during the other process's View")
	if _, _, err := a.Alloc(); !errors.Is(err, ErrFull) {
		t.Fatalf("Alloc while the freed slot is held: %v, want ErrFull", err)
	}
	const wait = 500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	cpu0, wall0 := cpuTime(t), time.Now()
	type res struct {
		tok token.Token
		err error
	}
	got := make(chan res, 1)
	go func() {
		tok, _, err := a.AllocWait(ctx)
		got <- res{tok, err}
	}()
	var r res
	select {
	case r = <-got:
	case <-time.After(wait + 2*time.Second):
		cpu := cpuTime(t) - cpu0
		close(release) // the slot comes back: AllocWait returns it
		must(t, <-viewDone, "View")
		r = <-got
		t.Fatalf("AllocWait(ctx with a %v deadline) was still running %v later (%v of CPU used meanwhile); "+
			"once the View ended it returned %v, %v: it ignores ctx and spins while a freed slot is held",
			wait, time.Since(wall0), cpu, r.tok, r.err)
	}
	cpu, wall := cpuTime(t)-cpu0, time.Since(wall0)
	close(release)
	must(t, <-viewDone, "View")
	wantErr(t, r.err, context.DeadlineExceeded, "AllocWait while the only slot is held by a View")
	t.Logf("AllocWait for %v used %v of CPU", wall, cpu)
	if cpu > wall/3 {
		t.Fatalf("AllocWait on a full arena (freed slot still under a View) used %v of CPU in %v: it spins instead of parking", cpu, wall)
	}
}

// TestArenaAttackUpdateStarvedByViews: arena.Arena's View doc: "once an
// Update waits for the slot, new readers wait for it"; shm's Arena claims
// arena's guarantees across processes. Here another process keeps the slot
// under overlapping 3ms View callbacks; an Update from this process should
// get in between two of them, but shm's Update only takes the writer bit
// when it finds no reader at all, and new Views keep entering: the Update
// is starved.
func TestArenaAttackUpdateStarvedByViews(t *testing.T) {
	a, dir := aaCreate(t, 4, 1, -1)
	tok, err := a.Store(cell{})
	must(t, err, "Store")
	cmd, out := aaStart(t, "viewloop", dir, segName, strconv.FormatUint(uint64(tok), 10))
	defer aaKill(cmd)
	if l := aaLine(t, out); l != "viewing" {
		t.Fatalf("child said %q", l)
	}
	done := make(chan error, 1)
	go func() { done <- a.Update(tok, func(c *cell) { c.fill(9) }) }()
	select {
	case err := <-done:
		must(t, err, "Update")
	case <-time.After(3 * time.Second):
		aaKill(cmd) // let the Update finish before cleanup closes the handle
		<-done
		t.Fatal("Update starved for 3s by another process's stream of 3ms Views (no writer preference)")
	}
}

// TestArenaAttackAllocWaitDeadOwner: every slot is owned by a process that
// was SIGKILLed; nobody calls Recover and there is no watcher (Watch < 0).
// The doc says recovery runs when "an operation has waited on a slot ...
// for 20ms" and the README that "Nothing ever blocks forever on a dead
// process"; Alloc's own retry loop checks for dead processes, but
// AllocWait's parking does not: it waits until its ctx expires, though a
// recovery would free every slot.
func TestArenaAttackAllocWaitDeadOwner(t *testing.T) {
	a, dir := aaCreate(t, 8, 2, -1)
	cmd, out := aaStart(t, "allocall", dir, segName, "")
	if l := aaLine(t, out); l != "8" {
		t.Fatalf("child allocated %s, want 8", l)
	}
	aaKill(cmd)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	tok, _, err := a.AllocWait(ctx)
	if err != nil {
		t.Fatalf("AllocWait with every slot owned by a dead process: %v after %v (no recovery ran)", err, time.Since(start))
	}
	must(t, a.Free(tok), "Free")
}

// TestArenaAttackAllocWaitDeadOwnerWatched: the same with a watcher: the
// watcher recovers and AllocWait is woken.
func TestArenaAttackAllocWaitDeadOwnerWatched(t *testing.T) {
	a, dir := aaCreate(t, 8, 2, 20*time.Millisecond)
	cmd, out := aaStart(t, "allocall", dir, segName, "")
	if l := aaLine(t, out); l != "8" {
		t.Fatalf("child allocated %s, want 8", l)
	}
	got := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		tok, _, err := a.AllocWait(ctx)
		if err == nil {
			err = a.Free(tok)
		}
		got <- err
	}()
	time.Sleep(50 * time.Millisecond)
	aaKill(cmd)
	must(t, <-got, "AllocWait after the owner died (watcher on)")
	if n := a.Available(); n != 8 {
		t.Fatalf("Available = %d, want 8", n)
	}
}

// TestArenaAttackAllocWaitWokenAcrossProcesses: a child parks in AllocWait
// on a full arena; a Free here wakes it (it prints "got" at once). Then
// it is killed while parked again, and after recovery everything is free.
func TestArenaAttackAllocWaitWokenAcrossProcesses(t *testing.T) {
	a, dir := aaCreate(t, 2, 1, -1)
	t1, _, err := a.Alloc()
	must(t, err, "Alloc")
	t2, _, err := a.Alloc()
	must(t, err, "Alloc")
	cmd, out := aaStart(t, "allocwait", dir, segName, "")
	if l := aaLine(t, out); l != "waiting" {
		t.Fatalf("child said %q", l)
	}
	time.Sleep(300 * time.Millisecond) // let it park
	start := time.Now()
	must(t, a.Free(t1), "Free")
	if l := aaLine(t, out); l != "got" {
		t.Fatalf("child said %q", l)
	}
	if d := time.Since(start); d > 150*time.Millisecond {
		t.Errorf("the parked AllocWait took %v to notice a Free in another process", d)
	}
	aaKill(cmd)
	rep := aaRecover(t, a)
	if rep.Dead != 1 || rep.Reclaimed != 1 || rep.Holds != 0 {
		t.Fatalf("Recovery = %+v, want 1 dead, 1 reclaimed, 0 holds", rep)
	}
	must(t, a.Free(t2), "Free")
	if n := a.Available(); n != 2 {
		t.Fatalf("Available = %d, want 2", n)
	}
}

// TestArenaAttackWaiterCountAfterDeath: a process killed while parked in
// AllocWait leaves the segment's free-waiter count raised for good (the
// recovery does not recount it): from then on every Free in every process
// pays a futex wake syscall for a waiter that does not exist. The doc says
// recovery rebuilds what a half-done operation left inconsistent.
func TestArenaAttackWaiterCountAfterDeath(t *testing.T) {
	a, dir := aaCreate(t, 1, 1, -1)
	tok, _, err := a.Alloc()
	must(t, err, "Alloc")
	cmd, out := aaStart(t, "allocwait", dir, segName, "")
	if l := aaLine(t, out); l != "waiting" {
		t.Fatalf("child said %q", l)
	}
	time.Sleep(300 * time.Millisecond)
	aaKill(cmd)
	aaRecover(t, a)
	must(t, a.Free(tok), "Free")
	if n := atomic.LoadUint32(&a.hdr.freeWaiters); n != 0 {
		t.Fatalf("freeWaiters = %d after the only waiter died and was recovered after: every Free now wakes nobody with a syscall", n)
	}
}

// TestArenaAttackAdoptAcrossProcesses: an allocation adopted by this
// process survives its allocating child's death; one this process made and
// a child adopted dies with the child. Recovery reports are exact.
func TestArenaAttackAdoptAcrossProcesses(t *testing.T) {
	a, dir := aaCreate(t, 4, 2, -1)
	cmd, out := aaStart(t, "allocprint", dir, segName, "")
	v, err := strconv.ParseUint(aaLine(t, out), 10, 64)
	must(t, err, "token")
	theirs := token.Token(v)
	must(t, a.Adopt(theirs), "Adopt")
	aaKill(cmd)
	if rep := aaRecover(t, a); rep != (Recovery{Dead: 1}) {
		t.Fatalf("Recovery after the allocator died = %+v, want 1 dead, nothing reclaimed", rep)
	}
	c, err := a.Load(theirs)
	if err != nil || c.Stamp != 42 || !c.whole() {
		t.Fatalf("adopted slot after its allocator died: %+v %v", c, err)
	}
	mine, err := a.Store(cell{})
	must(t, err, "Store")
	cmd, out = aaStart(t, "adopt", dir, segName, strconv.FormatUint(uint64(mine), 10))
	if l := aaLine(t, out); l != "adopted" {
		t.Fatalf("child said %q", l)
	}
	aaKill(cmd)
	if rep := aaRecover(t, a); rep != (Recovery{Dead: 1, Reclaimed: 1}) {
		t.Fatalf("Recovery after the adopter died = %+v, want 1 dead, 1 reclaimed", rep)
	}
	_, err = a.Load(mine)
	wantErr(t, err, ErrStale, "Load of a slot whose adopter died")
	wantErr(t, a.Free(mine), ErrStale, "Free of a slot whose adopter died")
	must(t, a.Free(theirs), "Free")
	if n := a.Available(); n != 4 {
		t.Fatalf("Available = %d, want 4", n)
	}
	if st := a.Stats(); st.Processes != 1 || st.Recoveries != 2 {
		t.Fatalf("Stats = %+v, want 1 process, 2 recoveries", st)
	}
}

// TestArenaAttackKillDuringClose: a child that freed everything it
// allocated (its caches full of chains) is SIGKILLed at random moments
// around its Close; after every kill a recovery leaves every slot free
// and allocatable exactly once.
func TestArenaAttackKillDuringClose(t *testing.T) {
	const slots = 1 << 16
	a, dir := aaCreate(t, slots, 4, -1)
	kills := 40
	if raceEnabled {
		kills = 10
	}
	var inside int
	for k := range kills {
		cmd, out := aaStart(t, "burstclose", dir, segName, "")
		if l := aaLine(t, out); l != "closing" {
			t.Fatalf("child said %q", l)
		}
		time.Sleep(time.Duration(k%10) * 150 * time.Microsecond)
		aaKill(cmd)
		if rep := aaRecover(t, a); rep.Dead == 1 {
			inside++ // killed before its Close detached
		} else if rep != (Recovery{}) {
			t.Fatalf("kill %d: Recovery = %+v after a child that held nothing died", k, rep)
		}
		if n := a.Available(); n != slots {
			t.Fatalf("kill %d: Available = %d after recovery, want %d", k, n, slots)
		}
		if st := a.Stats(); st.Processes != 1 {
			t.Fatalf("kill %d: Processes = %d", k, st.Processes)
		}
	}
	t.Logf("%d of %d kills landed before the child's Close detached", inside, kills)
	seen := make(map[uint32]bool, slots)
	var toks []token.Token
	for range slots {
		tok, _, err := a.Alloc()
		must(t, err, "Alloc")
		if seen[tok.Index()] {
			t.Fatalf("slot %d handed out twice", tok.Index())
		}
		seen[tok.Index()] = true
		toks = append(toks, tok)
	}
	if _, _, err := a.Alloc(); !errors.Is(err, ErrFull) {
		t.Fatalf("Alloc past capacity: %v", err)
	}
	for _, tok := range toks {
		must(t, a.Free(tok), "Free")
	}
}

// TestArenaAttackExactFullOtherCaches: slots another process freed sit in
// its way caches (fewer than a flush); this process must get every one of
// them before ErrFull, while that process keeps freeing concurrently.
func TestArenaAttackExactFullOtherCaches(t *testing.T) {
	const slots = 64
	a, dir := aaCreate(t, slots, 4, -1)
	b := attachTo[cell](t, dir, -1)
	var toks []token.Token
	for range slots {
		tok, _, err := b.Alloc()
		must(t, err, "Alloc")
		toks = append(toks, tok)
	}
	for round := range 20 {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, tok := range toks {
				if err := b.Free(tok); err != nil {
					t.Errorf("Free: %v", err)
				}
			}
		}()
		var got []token.Token
		for len(got) < slots {
			tok, _, err := a.Alloc()
			if errors.Is(err, ErrFull) {
				continue // b is still freeing
			}
			must(t, err, "Alloc")
			got = append(got, tok)
		}
		wg.Wait()
		if _, _, err := a.Alloc(); !errors.Is(err, ErrFull) {
			t.Fatalf("round %d: Alloc past capacity: %v", round, err)
		}
		if n := a.Available(); n != 0 {
			t.Fatalf("round %d: Available = %d", round, n)
		}
		// Hand them back: b frees what a holds next round.
		for _, tok := range got {
			must(t, b.Adopt(tok), "Adopt")
		}
		toks = got
	}
}

// TestArenaAttackMisuse: nil, forged, out-of-range tokens and tokens of
// another segment, nil callbacks and destinations, nil ctx.
func TestArenaAttackMisuse(t *testing.T) {
	a, _ := aaCreate(t, 4, 1, -1)
	o, _ := aaCreate(t, 4, 1, -1)
	tok, err := a.Store(cell{})
	must(t, err, "Store")
	otok, err := o.Store(cell{})
	must(t, err, "Store")
	var c cell
	for _, bad := range []token.Token{token.Nil, token.New(4, tok.Generation()), token.New(1<<31, 1), token.New(tok.Index(), 0)} {
		_, err := a.Load(bad)
		wantErr(t, err, ErrBadToken, fmt.Sprintf("Load(%v)", bad))
		wantErr(t, a.LoadInto(bad, &c), ErrBadToken, "LoadInto")
		wantErr(t, a.Free(bad), ErrBadToken, "Free")
		wantErr(t, a.Adopt(bad), ErrBadToken, "Adopt")
		wantErr(t, a.View(bad, func(*cell) {}), ErrBadToken, "View")
		wantErr(t, a.Update(bad, func(*cell) {}), ErrBadToken, "Update")
	}
	if otok.Generation() != tok.Generation() {
		foreign := token.New(tok.Index(), otok.Generation())
		_, err := a.Load(foreign)
		wantErr(t, err, ErrStale, "Load of another segment's token")
		wantErr(t, a.Free(foreign), ErrStale, "Free of another segment's token")
	}
	forged := token.New(tok.Index(), tok.Generation()+1)
	wantErr(t, a.Free(forged), ErrStale, "Free of a forged generation")
	wantErr(t, a.View(tok, nil), ErrNilFunc, "View(nil)")
	wantErr(t, a.Update(tok, nil), ErrNilFunc, "Update(nil)")
	wantErr(t, a.LoadInto(tok, nil), ErrNilPointer, "LoadInto(nil)")
	// nil ctx waits like Background when there is a slot: it returns one.
	//lint:ignore SA1012 a nil context is what is tested
	t2, _, err := a.AllocWait(nil)
	must(t, err, "AllocWait(nil) with room")
	must(t, a.Free(t2), "Free")
	if _, err := a.Load(tok); err != nil {
		t.Fatalf("the real token after misuse: %v", err)
	}
	if n := a.Available(); n != 3 {
		t.Fatalf("Available = %d after misuse, want 3", n)
	}
}

// TestArenaAttackCloseRaces: goroutines hammer every method while Close
// runs; every call returns nil, ErrFull, ErrStale or ErrClosed, nothing
// faults, and afterwards every method is ErrClosed.
func TestArenaAttackCloseRaces(t *testing.T) {
	for round := range 5 {
		a, dir := aaCreate(t, 16, 2, time.Millisecond)
		other := attachTo[cell](t, dir, -1)
		shared, err := other.Store(cell{})
		must(t, err, "Store")
		var wg sync.WaitGroup
		bad := make(chan error, 64)
		ok := func(err error) bool {
			return err == nil || errors.Is(err, ErrClosed) || errors.Is(err, ErrFull) || errors.Is(err, ErrStale) ||
				errors.Is(err, context.DeadlineExceeded)
		}
		for g := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					var err error
					switch (g + i) % 7 {
					case 0:
						var tok token.Token
						tok, _, err = a.Alloc()
						if err == nil {
							err = a.Free(tok)
						}
					case 1:
						_, err = a.Load(shared)
					case 2:
						err = a.View(shared, func(c *cell) { _ = c.Stamp })
					case 3:
						err = a.Update(shared, func(c *cell) { c.Stamp++ })
					case 4:
						ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
						var tok token.Token
						tok, _, err = a.AllocWait(ctx)
						cancel()
						if err == nil {
							err = a.Free(tok)
						}
					case 5:
						_, err = a.Recover()
					case 6:
						_ = a.Stats()
						_ = a.Available()
						err = a.Adopt(shared)
					}
					if !ok(err) {
						bad <- err
						return
					}
					if errors.Is(err, ErrClosed) {
						return
					}
				}
			}()
		}
		time.Sleep(time.Duration(round+1) * time.Millisecond)
		must(t, a.Close(), "Close")
		within(t, 10*time.Second, "workers after Close", wg.Wait)
		close(bad)
		for err := range bad {
			t.Fatalf("round %d: call racing Close: %v", round, err)
		}
		_, _, err = a.Alloc()
		wantErr(t, err, ErrClosed, "Alloc after Close")
		_, err = a.Load(shared)
		wantErr(t, err, ErrClosed, "Load after Close")
		wantErr(t, a.View(shared, func(*cell) {}), ErrClosed, "View after Close")
		wantErr(t, a.Free(shared), ErrClosed, "Free after Close")
		_, err = a.Recover()
		wantErr(t, err, ErrClosed, "Recover after Close")
		wantErr(t, a.Close(), ErrClosed, "second Close")
		if n := a.Available(); n != 0 {
			t.Fatalf("Available after Close = %d", n)
		}
		// The slot the closed handle adopted stays (owned by nobody).
		if _, err := other.Load(shared); err != nil {
			t.Fatalf("round %d: the shared slot after the adopter closed: %v", round, err)
		}
	}
}

// TestArenaAttackKillRecoveringAttacher: a process dies owning half the
// slots; the next process to attach recovers after it (Attach finds a dead
// process) and is itself SIGKILLed at varying moments of that recovery,
// while this process keeps loading its own slots (its operations wait on
// the recovering word and take the recovery over when the leader dies).
// Every time, once a recovery finished, exactly this process's slots are
// allocated, its payloads are intact, and every other slot is allocatable
// exactly once.
func TestArenaAttackKillRecoveringAttacher(t *testing.T) {
	const slots = 1 << 15
	const mineN = 100
	a, dir := aaCreate(t, slots, 8, -1)
	var mine []token.Token
	for i := range mineN {
		var c cell
		c.fill(uint64(1000 + i))
		tok, err := a.Store(c)
		must(t, err, "Store")
		mine = append(mine, tok)
	}
	var stop atomic.Bool
	loadErr := make(chan error, 1)
	go func() {
		var c cell
		for i := 0; !stop.Load(); i++ {
			k := i % mineN
			if err := a.LoadInto(mine[k], &c); err != nil || c.Stamp != uint64(1000+k) || !c.whole() {
				loadErr <- fmt.Errorf("LoadInto %v: %v, %+v", mine[k], err, c)
				return
			}
		}
		loadErr <- nil
	}()
	rounds := 12
	if raceEnabled {
		rounds = 6
	}
	for k := range rounds {
		x, out := aaStart(t, "allochalf", dir, segName, strconv.Itoa(slots/2))
		if l := aaLine(t, out); l != "ok" {
			t.Fatalf("round %d: child said %q", k, l)
		}
		aaKill(x)
		l, out := aaStart(t, "attached", dir, segName, "")
		if s := aaLine(t, out); s != "attaching" {
			t.Fatalf("round %d: child said %q", k, s)
		}
		before := a.Stats().Recoveries
		time.Sleep(time.Duration(k%6) * 400 * time.Microsecond)
		aaKill(l)
		rep := aaRecover(t, a)
		t.Logf("round %d: recoveries %d, last report %+v", k, a.Stats().Recoveries-before, rep)
		if n := a.Available(); n != slots-mineN {
			t.Fatalf("round %d: Available = %d, want %d", k, n, slots-mineN)
		}
		if st := a.Stats(); st.Processes != 1 {
			t.Fatalf("round %d: Processes = %d, want 1", k, st.Processes)
		}
	}
	stop.Store(true)
	must(t, <-loadErr, "loads during the recoveries")
	seen := map[uint32]bool{}
	for _, tok := range mine {
		seen[tok.Index()] = true
	}
	var got []token.Token
	for range slots - mineN {
		tok, _, err := a.Alloc()
		must(t, err, "Alloc")
		if seen[tok.Index()] {
			t.Fatalf("slot %d handed out twice", tok.Index())
		}
		seen[tok.Index()] = true
		got = append(got, tok)
	}
	if _, _, err := a.Alloc(); !errors.Is(err, ErrFull) {
		t.Fatalf("Alloc past capacity: %v", err)
	}
	for _, tok := range append(got, mine...) {
		must(t, a.Free(tok), "Free")
	}
	if n := a.Available(); n != slots {
		t.Fatalf("Available = %d, want %d", n, slots)
	}
}

// TestArenaAttackAttacherInheritsNothing: a process dies with slots in its
// way cache, a View and an Update running and 20 allocations; after the
// recovery a new process that takes its record over starts clean: no open
// section, no net count, no cache, no hold, zero Stats; the slots are all
// free and allocatable, the held ones updatable.
func TestArenaAttackAttacherInheritsNothing(t *testing.T) {
	const slots = 64
	a, dir := aaCreate(t, slots, 2, -1)
	cmd, out := aaStart(t, "cachehold", dir, segName, "")
	rec, err := strconv.Atoi(aaLine(t, out))
	must(t, err, "record index")
	if n := a.Available(); n != slots-20 {
		t.Fatalf("Available with the child holding 20 = %d", n)
	}
	aaKill(cmd)
	if rep := aaRecover(t, a); rep != (Recovery{Dead: 1, Reclaimed: 20, Holds: 2}) {
		t.Fatalf("Recovery = %+v, want 1 dead, 20 reclaimed, 2 holds", rep)
	}
	b := attachTo[cell](t, dir, -1)
	if b.me != rec {
		t.Logf("the new process took record %d (the dead one had %d)", b.me, rec)
	}
	r := a.record(rec)
	for k := range r.ways {
		if w := &r.ways[k]; atomic.LoadUint64(&w.section) != 0 || uint32(atomic.LoadUint64(&w.cache)) != 0 || atomic.LoadUint64(&w.moving) != 0 {
			t.Fatalf("dead record %d way %d after recovery: section %#x cache %#x moving %#x", rec, k, w.section, w.cache, w.moving)
		}
	}
	for h := range r.holds {
		if atomic.LoadUint64(&r.holds[h]) != 0 {
			t.Fatalf("dead record %d keeps hold entry %d = %#x", rec, h, r.holds[h])
		}
	}
	if st := b.Stats(); st.Allocs != 0 || st.Frees != 0 || st.Processes != 2 || st.Recoveries != 1 {
		t.Fatalf("new process's Stats = %+v", st)
	}
	if n := b.Available(); n != slots {
		t.Fatalf("Available = %d, want %d", n, slots)
	}
	toks := allocAll(t, []*Arena[cell]{b, a}, slots)
	if len(toks) != slots {
		t.Fatalf("%d allocations, want %d", len(toks), slots)
	}
	for _, tok := range toks {
		must(t, b.Update(tok, func(c *cell) { c.fill(1) }), "Update")
		must(t, a.Free(tok), "Free")
	}
	if st := b.Stats(); st.Allocs != slots/2 || st.Frees != 0 {
		t.Fatalf("Stats of b = %+v, want %d allocs 0 frees", st, slots/2)
	}
	if st := a.Stats(); st.Allocs != slots/2 || st.Frees != slots {
		t.Fatalf("Stats of a = %+v, want %d allocs %d frees", st, slots/2, slots)
	}
}

// TestArenaAttackNoTornAcrossProcesses: another process rewrites a slot in
// Update callbacks (yielding half-way); Load, LoadInto and View here never
// see a torn value, and this process's own Updates exclude the other's
// (each callback finds the value whole).
func TestArenaAttackNoTornAcrossProcesses(t *testing.T) {
	a, dir := aaCreate(t, 4, 1, -1)
	var c0 cell
	c0.fill(1)
	tok, err := a.Store(c0)
	must(t, err, "Store")
	cmd, out := aaStart(t, "updateloop", dir, segName, strconv.FormatUint(uint64(tok), 10))
	if l := aaLine(t, out); l != "updating" {
		t.Fatalf("child said %q", l)
	}
	end := time.Now().Add(400 * time.Millisecond)
	var loads, views, updates int
	for i := 0; time.Now().Before(end); i++ {
		switch i % 4 {
		case 0:
			c, err := a.Load(tok)
			must(t, err, "Load")
			if !c.whole() {
				t.Fatalf("Load torn: %+v", c)
			}
			loads++
		case 1:
			var c cell
			must(t, a.LoadInto(tok, &c), "LoadInto")
			if !c.whole() {
				t.Fatalf("LoadInto torn: %+v", c)
			}
			loads++
		case 2:
			var torn bool
			must(t, a.View(tok, func(c *cell) { torn = !c.whole() }), "View")
			if torn {
				t.Fatal("View saw a torn value")
			}
			views++
		case 3:
			var torn bool
			must(t, a.Update(tok, func(c *cell) {
				torn = !c.whole()
				c.fill(uint64(i))
			}), "Update")
			if torn {
				t.Fatal("Update saw a torn value")
			}
			updates++
		}
	}
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the updating child exited: %v", cmd.Wait())
	}
	aaKill(cmd)
	aaRecover(t, a)
	t.Logf("%d loads, %d views, %d updates against the other process's updates", loads, views, updates)
}
