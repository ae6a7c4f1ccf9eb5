package shm

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

// Cross-process tests of the shared Store and its edges. The roles run in
// re-executed test binaries (see TestMain in proc_test.go).

// storeProduce puts n messages and sends them on edge 0, then closes.
func storeProduce(dir, name string, n int) int {
	s, err := AttachStore[cell](name, StoreConfig{Dir: dir})
	if err != nil {
		fmt.Fprintln(os.Stderr, "produce attach:", err)
		return exitBadError
	}
	ctx := context.Background()
	e := s.Edge(0)
	var c cell
	for i := 1; i <= n; i++ {
		c.fill(uint64(i))
		t, err := s.PutWait(ctx, message.Header{Seq: uint64(i)}, c)
		if err != nil {
			fmt.Fprintln(os.Stderr, "produce put:", err)
			return exitBadError
		}
		if err := e.Send(ctx, t); err != nil {
			fmt.Fprintln(os.Stderr, "produce send:", err)
			return exitBadError
		}
	}
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "produce close:", err)
		return exitBadError
	}
	return 0
}

// TestProcStoreProducerConsumer: a producer process Puts and Sends, this
// process Receives, Views (checking every payload) and Frees.
func TestProcStoreProducerConsumer(t *testing.T) {
	n := 10_000_000
	if testing.Short() || raceEnabled {
		n = 300_000
	}
	dir := t.TempDir()
	s, err := CreateStore[cell]("spc", StoreConfig{Slots: 1024, Dir: dir,
		Edges: []message.Policy{{MaxItems: 512}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cmd := spawn(t, "storeproduce", dir, "spc", strconv.Itoa(n))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	buf := make([]token.Token, 64)
	for got := 0; got < n; {
		k, err := s.Edge(0).RecvBatch(ctx, buf)
		if err != nil {
			t.Fatalf("after %d messages: %v", got, err)
		}
		for _, tok := range buf[:k] {
			got++
			var bad bool
			var seq uint64
			if err := s.View(tok, func(m *message.Message[cell]) {
				seq = m.Payload.Stamp
				bad = m.Header.Seq != seq || !m.Payload.whole()
			}); err != nil {
				t.Fatalf("message %d: %v", got, err)
			}
			if bad || seq != uint64(got) {
				t.Fatalf("message %d: seq %d, payload whole %v", got, seq, !bad)
			}
			if err := s.Free(tok); err != nil {
				t.Fatalf("message %d: %v", got, err)
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("producer: %v", err)
	}
	if got := s.Available(); got != s.Capacity() {
		t.Fatalf("Available = %d, want %d", got, s.Capacity())
	}
	if st := s.Edge(0).Stats(); st.Admitted != uint64(n) || st.Delivered != uint64(n) {
		t.Fatalf("edge stats %+v, want %d admitted and delivered", st, n)
	}
}

// storeChurn puts messages and sends them on random edges (sometimes to
// both, with a Retain), receives from random edges, checks every payload,
// forwards some, updates some, frees the rest; until SIGTERM, when it
// closes (dropping what it still holds).
func storeChurn(dir, name, arg string) int {
	slot, _ := strconv.Atoi(arg)
	s, err := AttachStore[cell](name, StoreConfig{Dir: dir, Watch: 5 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, "churn attach:", err)
		return exitBadError
	}
	var stop atomic.Bool
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() { <-sig; stop.Store(true) }()
	pid := uint64(os.Getpid())
	rng := rand.New(rand.NewPCG(pid, uint64(time.Now().UnixNano())))
	fail := func(code int, format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "store churn %d: "+format+"\n", append([]any{pid}, args...)...)
		return code
	}
	edges := s.Edges()
	var mine []token.Token
	seq := pid << 32
	progress := 0
	for !stop.Load() {
		if progress++; progress%64 == 0 {
			if err := reportProgress(dir, slot); err != nil {
				return fail(exitBadError, "progress: %v", err)
			}
		}
		e := edges[rng.IntN(len(edges))]
		switch op := rng.IntN(8); {
		case op < 2 && len(mine) < 6:
			seq++
			var c cell
			c.fill(seq)
			t, err := s.Put(message.Header{Seq: seq, QoS: message.QoS(rng.IntN(4))}, c)
			if errors.Is(err, ErrFull) {
				continue
			}
			if err != nil {
				return fail(exitBadError, "Put: %v", err)
			}
			mine = append(mine, t)
		case op < 4 && len(mine) > 0:
			i := rng.IntN(len(mine))
			t := mine[i]
			if rng.IntN(4) == 0 {
				if err := s.Retain(t); err != nil {
					return fail(exitBadError, "Retain: %v", err)
				}
				mine = append(mine, t)
			}
			err := e.TrySend(t)
			if err == nil {
				mine = append(mine[:i], mine[i+1:]...)
			} else if !errors.Is(err, message.ErrRejected) && !errors.Is(err, message.ErrEdgeClosed) {
				return fail(exitBadError, "TrySend: %v", err)
			}
		case op < 6:
			ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
			t, err := e.Recv(ctx)
			cancel()
			if errors.Is(err, context.DeadlineExceeded) {
				continue
			}
			if err != nil {
				return fail(exitBadError, "Recv: %v", err)
			}
			var bad bool
			if err := s.View(t, func(m *message.Message[cell]) {
				bad = !m.Payload.whole() || m.Payload.Stamp != m.Header.Seq
			}); err != nil {
				return fail(exitBadError, "View received %v: %v", t, err)
			}
			if bad {
				return fail(exitCorrupt, "received %v: torn payload", t)
			}
			mine = append(mine, t)
		case op < 7 && len(mine) > 0:
			t := mine[rng.IntN(len(mine))]
			if err := s.Update(t, func(m *message.Message[cell]) {
				m.Payload.fill(m.Payload.Stamp) // rewrite in place: a torn view would show
			}); err != nil {
				return fail(exitBadError, "Update: %v", err)
			}
		default:
			if len(mine) == 0 {
				continue
			}
			i := rng.IntN(len(mine))
			if err := s.Free(mine[i]); err != nil {
				return fail(exitBadError, "Free %v: %v", mine[i], err)
			}
			mine = append(mine[:i], mine[i+1:]...)
		}
	}
	if err := s.Close(); err != nil && !errors.Is(err, message.ErrReferenced) {
		return fail(exitBadError, "Close: %v", err)
	}
	return 0
}

// reportProgress bumps the child's progress counter, a file per child
// slot (the store's own segment has no room for test bookkeeping).
func reportProgress(dir string, slot int) error {
	f, err := os.OpenFile(fmt.Sprintf("%s/progress.%d", dir, slot), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write([]byte{'.'})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func progressOf(dir string, slot int) int64 {
	st, err := os.Stat(fmt.Sprintf("%s/progress.%d", dir, slot))
	if err != nil {
		return 0
	}
	return st.Size()
}

// TestProcStoreKillLoop is the crash test for stores and edges: processes
// that put, send (fan-out included), receive, view, update and free are
// SIGKILLed at random moments; after each kill a survivor recovers. No
// payload may tear, nothing may hang, and once the survivors close and the
// edges are drained, every slot is free: no reference of a dead process,
// no token it was moving through an edge, is lost.
func TestProcStoreKillLoop(t *testing.T) {
	kills := 1000
	if testing.Short() {
		kills = 100
	} else if raceEnabled {
		kills = 150
	}
	if s := os.Getenv("CELLA_SHM_KILLS"); s != "" {
		kills, _ = strconv.Atoi(s)
	}
	const children = 3
	dir := t.TempDir()
	s, err := CreateStore[cell]("skill", StoreConfig{Slots: 48, Shards: 4, Dir: dir, Watch: -1,
		Edges: []message.Policy{
			{MaxItems: 8},
			{MaxItems: 6, SoftItems: 3, Admission: message.DeadlineQoS},
			{MaxItems: 4, Admission: message.DropOldest},
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	procs := make([]*os.Process, children)
	done := make([]chan error, children)
	start := func(i int) {
		cmd := spawn(t, "storechurn", dir, "skill", strconv.Itoa(i))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs[i] = cmd.Process
		done[i] = make(chan error, 1)
		go func(ch chan error) { ch <- cmd.Wait() }(done[i])
	}
	for i := range procs {
		start(i)
	}
	rng := rand.New(rand.NewPCG(3, uint64(time.Now().UnixNano())))
	for k := 0; k < kills; k++ {
		time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
		i := rng.IntN(children)
		select {
		case err := <-done[i]:
			t.Fatalf("kill %d: child %d exited on its own: %v", k, i, err)
		default:
		}
		_ = procs[i].Signal(syscall.SIGKILL)
		<-done[i]
		recovered := make(chan error, 1)
		go func() { _, err := s.Recover(); recovered <- err }()
		select {
		case err := <-recovered:
			if err != nil {
				t.Fatalf("kill %d: Recover: %v", k, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("kill %d: Recover hung", k)
		}
		before := progressOf(dir, i)
		start(i)
		if rng.IntN(5) != 0 {
			end := time.Now().Add(10 * time.Second)
			for progressOf(dir, i) == before {
				if time.Now().After(end) {
					t.Fatalf("kill %d: restarted child %d made no progress", k, i)
				}
				time.Sleep(200 * time.Microsecond)
			}
		}
	}
	for i := range procs {
		// A child that has not reached its loop has no SIGTERM handler
		// yet: wait until each one runs.
		before := progressOf(dir, i)
		for end := time.Now().Add(10 * time.Second); progressOf(dir, i) == before && time.Now().Before(end); {
			time.Sleep(200 * time.Microsecond)
		}
		_ = procs[i].Signal(syscall.SIGTERM)
	}
	for i := range procs {
		select {
		case err := <-done[i]:
			if err != nil {
				t.Fatalf("child %d at the end: %v", i, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("child %d did not stop on SIGTERM", i)
		}
	}
	if _, err := s.Recover(); err != nil {
		t.Fatal(err)
	}
	for _, e := range s.Edges() {
		e.Drain()
	}
	if got := s.Available(); got != s.Capacity() {
		t.Fatalf("Available = %d after the survivors closed and the edges were drained, want %d", got, s.Capacity())
	}
	var stats []message.EdgeStats
	for _, e := range s.Edges() {
		stats = append(stats, e.Stats())
	}
	t.Logf("%d kills, %d recoveries; edges %+v", kills, s.Stats().Recoveries, stats)
}

// TestProcClockShared: message.Now, which stamps Created and Deadline,
// reads the same clock in every process, so a deadline set by one process
// means the same instant to another.
func TestProcClockShared(t *testing.T) {
	before := message.Now()
	cmd := spawn(t, "now", "", "", "")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	after := message.Now()
	var child int64
	if _, err := fmt.Sscan(string(out), &child); err != nil {
		t.Fatalf("child said %q: %v", out, err)
	}
	const skew = 10_000 // ns: the anchors of the two processes may differ by this much
	if child < before-skew || child > after+skew {
		t.Fatalf("child's Now %d outside this process's [%d, %d]: the clocks differ", child, before, after)
	}
}
