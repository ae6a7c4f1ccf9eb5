package shm

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

// Cross-process tests re-execute the test binary: TestMain runs the role
// named in childEnv instead of the tests. Arguments travel in environment
// variables, so that the child needs no flags of its own.
const (
	childEnv = "CELLA_SHM_CHILD"
	dirEnv   = "CELLA_SHM_DIR"
	nameEnv  = "CELLA_SHM_NAME"
	argEnv   = "CELLA_SHM_ARG"
)

// Child exit codes: anything but 0 (or death by our SIGKILL) fails the test.
const (
	exitBadError = 3 // an error no protocol allows
	exitCorrupt  = 4 // a torn payload or a slot handed out twice
)

func TestMain(m *testing.M) {
	if role := os.Getenv(childEnv); role != "" {
		os.Exit(runChild(role))
	}
	os.Exit(m.Run())
}

func runChild(role string) int {
	dir, name, arg := os.Getenv(dirEnv), os.Getenv(nameEnv), os.Getenv(argEnv)
	switch role {
	case "churn":
		return churn(dir, name, arg)
	case "produce":
		n, _ := strconv.Atoi(arg)
		return produce(dir, name, n)
	case "hold":
		return holdForever(dir, name)
	case "storeproduce":
		n, _ := strconv.Atoi(arg)
		return storeProduce(dir, name, n)
	case "storechurn":
		return storeChurn(dir, name, arg)
	case "memfdhold":
		return memfdHold()
	case "now":
		fmt.Println(message.Now())
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown role", role)
	return 2
}

func spawn(t testing.TB, role, dir, name, arg string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+role, dirEnv+"="+dir, nameEnv+"="+name, argEnv+"="+arg)
	cmd.Stderr = os.Stderr
	// A child never outlives a test binary that failed or was killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	t.Cleanup(func() {
		if cmd.Process != nil {
			_ = cmd.Process.Kill() // an error once it has exited: harmless
		}
	})
	return cmd
}

// cell is the payload of the cross-process tests. Every word is derived
// from Stamp, so a reader that sees words from two stamps caught a torn
// write, and a process that finds someone else's stamp in a slot it
// allocated caught a double hand-out.
type cell struct {
	Stamp uint64
	Words [6]uint64
}

func (c *cell) fill(stamp uint64) {
	c.Stamp = stamp
	for i := range c.Words {
		c.Words[i] = stamp*0x9e3779b97f4a7c15 + uint64(i)
	}
}

func (c *cell) whole() bool {
	for i := range c.Words {
		if c.Words[i] != c.Stamp*0x9e3779b97f4a7c15+uint64(i) {
			return false
		}
	}
	return true
}

// board is the one-slot segment the kill loop's processes share tokens and
// progress through.
type board struct {
	Tokens   [16]uint64 // published for others to View and Update
	Progress [8]uint64  // per child slot, bumped every 64 operations
}

// churn allocates, stamps, views, updates and frees, publishes tokens on
// the board and views other processes' tokens, until SIGTERM; then it
// frees what it holds and closes.
func churn(dir, name, arg string) int {
	slot, _ := strconv.Atoi(arg)
	a, err := Attach[cell](name, Config{Dir: dir, Watch: 5 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, "churn attach:", err)
		return exitBadError
	}
	bd, err := Attach[board](name+".board", Config{Dir: dir, Watch: -1})
	if err != nil {
		fmt.Fprintln(os.Stderr, "churn attach board:", err)
		return exitBadError
	}
	var stop atomic.Bool
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() { <-sig; stop.Store(true) }()
	bp := boardPtr(bd)
	pid := uint64(os.Getpid())
	rng := rand.New(rand.NewPCG(pid, uint64(time.Now().UnixNano())))
	type own struct {
		t     token.Token
		stamp uint64
	}
	var mine []own
	seq := uint64(0)
	fail := func(code int, format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "churn %d: "+format+"\n", append([]any{pid}, args...)...)
		return code
	}
	allowed := func(err error) bool { return err == nil || errors.Is(err, ErrStale) }
	for ops := uint64(1); !stop.Load(); ops++ {
		if ops%64 == 0 {
			atomic.AddUint64(&bp.Progress[slot%8], 1)
		}
		switch op := rng.IntN(10); {
		case op < 3 && len(mine) < 8:
			t, p, err := a.Alloc()
			if errors.Is(err, ErrFull) {
				continue
			}
			if err != nil {
				return fail(exitBadError, "Alloc: %v", err)
			}
			if p.Stamp != 0 || !p.whole() && p.Words != [6]uint64{} {
				return fail(exitCorrupt, "Alloc %v: slot not zeroed: %+v", t, *p)
			}
			seq++
			stamp := pid<<32 | seq
			if err := a.Update(t, func(c *cell) { c.fill(stamp) }); err != nil {
				return fail(exitBadError, "Update own %v: %v", t, err)
			}
			mine = append(mine, own{t, stamp})
			atomic.StoreUint64(&bp.Tokens[rng.IntN(len(bp.Tokens))], uint64(t))
		case op < 5 && len(mine) > 0:
			o := mine[rng.IntN(len(mine))]
			var bad string
			if err := a.View(o.t, func(c *cell) {
				if c.Stamp != o.stamp || !c.whole() {
					bad = fmt.Sprintf("View own %v: stamp %#x want %#x, whole %v", o.t, c.Stamp, o.stamp, c.whole())
				}
			}); err != nil {
				return fail(exitBadError, "View own %v: %v", o.t, err)
			}
			if bad != "" {
				return fail(exitCorrupt, "%s", bad)
			}
		case op < 6 && len(mine) > 0:
			i := rng.IntN(len(mine))
			seq++
			stamp := pid<<32 | seq
			if err := a.Update(mine[i].t, func(c *cell) { c.fill(stamp) }); err != nil {
				return fail(exitBadError, "Update own: %v", err)
			}
			mine[i].stamp = stamp
		case op < 8:
			t := token.Token(atomic.LoadUint64(&bp.Tokens[rng.IntN(len(bp.Tokens))]))
			if t.IsNil() {
				continue
			}
			var torn bool
			var err error
			if op == 6 {
				err = a.View(t, func(c *cell) { torn = !c.whole() })
			} else {
				var c cell
				err = a.LoadInto(t, &c)
				torn = err == nil && !c.whole()
			}
			if !allowed(err) {
				return fail(exitBadError, "View other %v: %v", t, err)
			}
			if torn {
				return fail(exitCorrupt, "View other %v: torn", t)
			}
		default:
			if len(mine) == 0 {
				continue
			}
			i := rng.IntN(len(mine))
			if err := a.Free(mine[i].t); err != nil {
				return fail(exitBadError, "Free own %v: %v", mine[i].t, err)
			}
			mine = append(mine[:i], mine[i+1:]...)
		}
	}
	for _, o := range mine {
		if err := a.Free(o.t); err != nil {
			return fail(exitBadError, "final Free %v: %v", o.t, err)
		}
	}
	if err := bd.Close(); err != nil {
		return fail(exitBadError, "close board: %v", err)
	}
	if err := a.Close(); err != nil {
		return fail(exitBadError, "close: %v", err)
	}
	return 0
}

func boardPtr(bd *Arena[board]) *board {
	// The board segment has one slot, allocated by the test before any
	// child starts: slot 0, at the segment's first generation.
	var p *board
	_ = bd.View(token.New(0, bd.hdr.genBase), func(b *board) { p = b })
	return p
}

// holdForever attaches, allocates one slot, holds a View on it (and an
// Update on another), reports the tokens on stdout and waits to be killed.
func holdForever(dir, name string) int {
	a, err := Attach[cell](name, Config{Dir: dir, Watch: -1})
	if err != nil {
		fmt.Fprintln(os.Stderr, "hold attach:", err)
		return exitBadError
	}
	t1, _, err1 := a.Alloc()
	t2, _, err2 := a.Alloc()
	if err1 != nil || err2 != nil {
		fmt.Fprintln(os.Stderr, "hold alloc:", err1, err2)
		return exitBadError
	}
	ready := make(chan struct{}, 2)
	go a.View(t1, func(*cell) { ready <- struct{}{}; sleepForever() })
	go a.Update(t2, func(*cell) { ready <- struct{}{}; sleepForever() })
	<-ready
	<-ready
	fmt.Printf("%d %d\n", uint64(t1), uint64(t2))
	sleepForever()
	return 0
}

// sleepForever blocks until the process is killed (a bare select{} would
// be reported as a deadlock once every goroutine does it).
func sleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}

// produce allocates n cells, fills them with their sequence number and
// writes their tokens to stdout.
func produce(dir, name string, n int) int {
	a, err := Attach[cell](name, Config{Dir: dir})
	if err != nil {
		fmt.Fprintln(os.Stderr, "produce attach:", err)
		return exitBadError
	}
	w := bufio.NewWriterSize(os.Stdout, 64<<10)
	var buf [8]byte
	for i := 1; i <= n; i++ {
		for {
			t, p, err := a.Alloc()
			if errors.Is(err, ErrFull) {
				if err := w.Flush(); err != nil {
					return exitBadError
				}
				time.Sleep(10 * time.Microsecond)
				continue
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "produce alloc:", err)
				return exitBadError
			}
			p.fill(uint64(i))
			binary.LittleEndian.PutUint64(buf[:], uint64(t))
			if _, err := w.Write(buf[:]); err != nil {
				return exitBadError
			}
			break
		}
	}
	if err := w.Flush(); err != nil {
		return exitBadError
	}
	if err := a.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "produce close:", err)
		return exitBadError
	}
	return 0
}

// TestProcProducerConsumer moves messages from a producer process to this
// one: tokens through a pipe, payloads through the segment, every payload
// checked, every slot freed by the consumer.
func TestProcProducerConsumer(t *testing.T) {
	n := 10_000_000
	if testing.Short() || raceEnabled {
		n = 1_000_000
	}
	dir := t.TempDir()
	a, err := Create[cell]("pc", Config{Slots: 4096, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	cmd := spawn(t, "produce", dir, "pc", strconv.Itoa(n))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReaderSize(out, 64<<10)
	var buf [8]byte
	var c cell
	for i := 1; i <= n; i++ {
		if _, err := io.ReadFull(r, buf[:]); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		tok := token.Token(binary.LittleEndian.Uint64(buf[:]))
		if err := a.LoadInto(tok, &c); err != nil {
			t.Fatalf("message %d %v: %v", i, tok, err)
		}
		if c.Stamp != uint64(i) || !c.whole() {
			t.Fatalf("message %d %v: payload %+v", i, tok, c)
		}
		if err := a.Free(tok); err != nil {
			t.Fatalf("message %d %v: %v", i, tok, err)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("producer: %v", err)
	}
	if got := a.Available(); got != a.Capacity() {
		t.Fatalf("Available = %d after every message was freed, want %d", got, a.Capacity())
	}
}

// startHolder starts a "hold" child on segment name and returns it with
// the tokens it holds a View and an Update on.
func startHolder(t *testing.T, dir, name string) (*exec.Cmd, token.Token, token.Token) {
	t.Helper()
	cmd := spawn(t, "hold", dir, name, "")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var t1, t2 uint64
	if _, err := fmt.Fscan(out, &t1, &t2); err != nil {
		t.Fatal(err)
	}
	return cmd, token.Token(t1), token.Token(t2)
}

// TestProcDeadHolder: a process killed while it holds a View and an
// Update, and owns two allocations, leaves nothing behind once a survivor
// recovers: its slots are free, its tokens stale, and an Update that was
// waiting on its hold goes through.
func TestProcDeadHolder(t *testing.T) {
	dir := t.TempDir()
	a, err := Create[cell]("dead", Config{Slots: 2, Dir: dir, Watch: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	cmd, t1, t2 := startHolder(t, dir, "dead")
	if _, _, err := a.Alloc(); !errors.Is(err, ErrFull) {
		t.Fatalf("Alloc with both slots held by the child: %v, want ErrFull", err)
	}
	if st := a.Stats(); st.Processes != 2 {
		t.Fatalf("Processes = %d, want 2", st.Processes)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	rep, err := a.Recover()
	if err != nil {
		t.Fatal(err)
	}
	if rep.Dead != 1 || rep.Reclaimed != 2 || rep.Holds != 2 {
		t.Fatalf("Recover = %+v, want 1 dead, 2 reclaimed, 2 holds", rep)
	}
	for _, tok := range []token.Token{t1, t2} {
		if _, err := a.Load(tok); !errors.Is(err, ErrStale) {
			t.Fatalf("Load of the dead child's %v: %v, want ErrStale", tok, err)
		}
	}
	if a.Available() != 2 {
		t.Fatalf("Available = %d, want 2", a.Available())
	}
	for range 2 {
		tok, _, err := a.Alloc()
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Update(tok, func(*cell) {}); err != nil {
			t.Fatalf("Update of a slot the dead child held: %v", err)
		}
	}
	if st := a.Stats(); st.Processes != 1 || st.Recoveries != 1 {
		t.Fatalf("Stats = %+v, want 1 process, 1 recovery", st)
	}
}

// TestProcWaiterRecovers: an Update that waits on a dead process's hold
// recovers by itself (no watcher, no explicit Recover) and goes through.
func TestProcWaiterRecovers(t *testing.T) {
	dir := t.TempDir()
	a, err := Create[cell]("waiter", Config{Slots: 4, Dir: dir, Watch: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	cmd, t1, t2 := startHolder(t, dir, "waiter")
	// Adopt the viewed slot so that it survives the child.
	if err := a.Adopt(t1); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Update(t1, func(c *cell) { c.fill(7) }) }()
	select {
	case err := <-done:
		t.Fatalf("Update returned %v while the child held a View", err)
	case <-time.After(50 * time.Millisecond):
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Update still waiting 10s after the holder died")
	}
	if v, err := a.Load(t1); err != nil || v.Stamp != 7 {
		t.Fatalf("adopted slot after recovery: %+v, %v", v, err)
	}
	if _, err := a.Load(t2); !errors.Is(err, ErrStale) {
		t.Fatalf("the child's own slot after recovery: %v, want ErrStale", err)
	}
}

// TestProcStaleSegment: a segment whose only process was killed is found
// and replaced by the next Create, and Attach before that finds it usable
// (recovering after the dead process).
func TestProcStaleSegment(t *testing.T) {
	dir := t.TempDir()
	a, err := Create[cell]("stale", Config{Slots: 4, Dir: dir, Watch: -1})
	if err != nil {
		t.Fatal(err)
	}
	cmd, _, _ := startHolder(t, dir, "stale")
	if _, err := Create[cell]("stale", Config{Slots: 4, Dir: dir}); !errors.Is(err, ErrExists) {
		t.Fatalf("Create of a segment in use: %v, want ErrExists", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	// Only the dead child had it attached: the file is still there.
	if _, err := os.Stat(a.Path()); err != nil {
		t.Fatalf("segment file after its last process died: %v", err)
	}
	b, err := Attach[cell]("stale", Config{Dir: dir, Watch: -1})
	if err != nil {
		t.Fatalf("Attach to a segment whose processes died: %v", err)
	}
	if b.Available() != 4 {
		t.Fatalf("Available after Attach recovered = %d, want 4", b.Available())
	}
	_ = b.Close() // the last process: it removed the file
	c, err := Create[cell]("stale", Config{Slots: 4, Dir: dir, Watch: -1})
	if err != nil {
		t.Fatal(err)
	}
	cmd, _, _ = startHolder(t, dir, "stale")
	_ = c.Close()
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	d, err := Create[cell]("stale", Config{Slots: 8, Dir: dir, Watch: -1})
	if err != nil {
		t.Fatalf("Create over a stale segment: %v", err)
	}
	defer d.Close()
	if d.Capacity() != 8 || d.Available() != 8 {
		t.Fatalf("new segment: capacity %d available %d, want 8 8", d.Capacity(), d.Available())
	}
}

// TestProcKillLoop is the crash test: churning processes are SIGKILLed at
// random moments, over and over, while the others keep allocating, viewing,
// updating and freeing. After every kill a survivor recovers; nothing may
// hang, no payload may tear, no slot may be handed out twice, and once the
// last processes stop and free what they hold, every slot is free.
func TestProcKillLoop(t *testing.T) {
	kills := 1000 // CI runs this without -race
	if testing.Short() {
		kills = 100
	} else if raceEnabled {
		kills = 200
	}
	if s := os.Getenv("CELLA_SHM_KILLS"); s != "" {
		kills, _ = strconv.Atoi(s)
	}
	const children = 3
	dir := t.TempDir()
	a, err := Create[cell]("kill", Config{Slots: 32, Shards: 4, Dir: dir, Watch: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	bd, err := Create[board]("kill.board", Config{Slots: 1, Dir: dir, Watch: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer bd.Close()
	if tok, _, err := bd.Alloc(); err != nil || tok != token.New(0, bd.hdr.genBase) {
		t.Fatalf("board slot %v, %v", tok, err)
	}
	bp := boardPtr(bd)
	procs := make([]*exec.Cmd, children)
	start := func(i int) {
		procs[i] = spawn(t, "churn", dir, "kill", strconv.Itoa(i))
		if err := procs[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range procs {
		start(i)
	}
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	deadline := time.Now().Add(10 * time.Minute)
	for k := 0; k < kills; k++ {
		time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
		i := rng.IntN(children)
		_ = procs[i].Process.Signal(syscall.SIGKILL)
		if err := procs[i].Wait(); err != nil {
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != -1 {
				t.Fatalf("kill %d: child %d failed on its own: %v", k, i, err)
			}
		}
		recovered := make(chan error, 1)
		go func() { _, err := a.Recover(); recovered <- err }()
		select {
		case err := <-recovered:
			if err != nil {
				t.Fatalf("kill %d: Recover: %v", k, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("kill %d: Recover hung", k)
		}
		start(i)
		if rng.IntN(5) != 0 {
			// Mostly kill running processes; now and then one that is
			// still attaching.
			waitProgress(t, bp, i, k)
		}
		if k%100 == 99 {
			checkProgress(t, bp, children, k)
		}
		if time.Now().After(deadline) {
			t.Fatalf("kill loop too slow: %d kills in 10 minutes", k)
		}
	}
	for i := range procs {
		waitProgress(t, bp, i, kills) // a child still starting has no SIGTERM handler yet
		_ = procs[i].Process.Signal(syscall.SIGTERM)
	}
	for i := range procs {
		if err := procs[i].Wait(); err != nil {
			t.Fatalf("child %d at the end: %v", i, err)
		}
	}
	if _, err := a.Recover(); err != nil {
		t.Fatal(err)
	}
	if got := a.Available(); got != a.Capacity() {
		t.Fatalf("Available = %d once every process freed what it held, want %d", got, a.Capacity())
	}
	// Every slot can be allocated again, and updated: no hold survived.
	for i := 0; i < a.Capacity(); i++ {
		tok, _, err := a.Alloc()
		if err != nil {
			t.Fatalf("Alloc %d of %d: %v", i+1, a.Capacity(), err)
		}
		if err := a.Update(tok, func(*cell) {}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := a.Alloc(); !errors.Is(err, ErrFull) {
		t.Fatalf("Alloc past capacity: %v, want ErrFull", err)
	}
	t.Logf("%d kills, %d recoveries", kills, a.Stats().Recoveries)
}

// waitProgress waits until child i reports progress.
func waitProgress(t *testing.T, bp *board, i, k int) {
	t.Helper()
	before := atomic.LoadUint64(&bp.Progress[i])
	end := time.Now().Add(10 * time.Second)
	for atomic.LoadUint64(&bp.Progress[i]) == before {
		if time.Now().After(end) {
			t.Fatalf("after kill %d: restarted child %d made no progress for 10s", k, i)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// checkProgress fails if some child made no progress for two seconds.
func checkProgress(t *testing.T, bp *board, children, k int) {
	t.Helper()
	var before [8]uint64
	for i := range children {
		before[i] = atomic.LoadUint64(&bp.Progress[i])
	}
	end := time.Now().Add(5 * time.Second)
	for i := 0; i < children; i++ {
		for atomic.LoadUint64(&bp.Progress[i]) == before[i] {
			if time.Now().After(end) {
				t.Fatalf("after kill %d: child %d made no progress for 5s", k, i)
			}
			time.Sleep(time.Millisecond)
		}
	}
}
