package shm

// Review of dc5d566: each record keeps its part of every edge's
// recvWaiters/sendWaiters, and recovery subtracts a dead process's part.
// These tests park goroutines in children (role waitersrev.park, dispatched
// by runChildRole), SIGKILL them, recover, and check that every edge's
// totals equal the goroutines still parked in live processes, that the
// dead record's parts are zero, that live waiters are still woken, that a
// process taking over the record starts from zero, and that the counts
// stay exact under churn in one process. Two failed on dc5d566:
// TestWaitersReviewTakeoverAfterLeaderDied (a recovery leader killed
// between subtracting a dead part and zeroing it made the takeover subtract
// it twice) and TestWaitersReviewScribbledEdgeCount (recovery indexed the
// record's parts with the header's edge count, which another process can
// scribble: a panic).

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

const wrPrefix = "waitersrev."

var _ = registerChildRoles(wrPrefix, wrRunChild)

// wrOp runs one parking operation named like "r:0" (Recv on edge 0),
// "rb:1" (RecvBatch), "s:2" (Put then Send), "sb:3" (Put 2 then
// SendBatch). What it received is freed; what it could not send too.
func wrOp(s *Store[cell], op string, ctx context.Context) error {
	kind, es, ok := strings.Cut(op, ":")
	if !ok {
		return fmt.Errorf("bad op %q", op)
	}
	ei, err := strconv.Atoi(es)
	if err != nil {
		return fmt.Errorf("bad op %q: %v", op, err)
	}
	e := s.Edge(ei)
	if e == nil {
		return fmt.Errorf("op %q: no edge %d", op, ei)
	}
	put := func(n int) ([]token.Token, error) {
		var ts []token.Token
		for i := range n {
			var c cell
			c.fill(uint64(1000 + i))
			tok, err := s.Put(message.Header{Seq: uint64(1000 + i)}, c)
			if err != nil {
				for _, t := range ts {
					_ = s.Free(t)
				}
				return nil, err
			}
			ts = append(ts, tok)
		}
		return ts, nil
	}
	switch kind {
	case "r":
		tok, err := e.Recv(ctx)
		if err == nil {
			_ = s.Free(tok)
		}
		return err
	case "rb":
		dst := make([]token.Token, 4)
		n, err := e.RecvBatch(ctx, dst)
		for _, t := range dst[:n] {
			_ = s.Free(t)
		}
		return err
	case "s":
		ts, err := put(1)
		if err != nil {
			return err
		}
		if err := e.Send(ctx, ts[0]); err != nil {
			_ = s.Free(ts[0])
			return err
		}
		return nil
	case "sb":
		ts, err := put(2)
		if err != nil {
			return err
		}
		n, err := e.SendBatch(ctx, ts)
		for _, t := range ts[n:] {
			_ = s.Free(t)
		}
		return err
	}
	return fmt.Errorf("bad op %q", op)
}

// wrRunChild: role "park" says "attached <record>", then for each line read
// from stdin starts one goroutine per op in it (each with a 60 s context),
// says "launched", and "done <op> <err>" as each one ends.
func wrRunChild(role, dir, name, arg string) int {
	s, err := AttachStore[cell](name, StoreConfig{Dir: dir, Watch: -1})
	if err != nil {
		fmt.Fprintf(os.Stderr, "waitersrev %s: attach: %v\n", role, err)
		return exitBadError
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, format+"\n", args...)
		_ = out.Flush()
	}
	switch role {
	case "park":
		say("attached %d", s.a.me)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			for _, op := range strings.Fields(sc.Text()) {
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
					defer cancel()
					err := wrOp(s, op, ctx)
					say("done %s %v", op, err)
				}()
			}
			say("launched")
		}
		sleepForever()
	}
	fmt.Fprintf(os.Stderr, "waitersrev %s: unknown role\n", role)
	return exitBadError
}

// wrChild is a c3Child with a stdin to send it ops.
type wrChild struct {
	*c3Child
	in  *os.File
	rec int
}

func wrStart(t *testing.T, dir, name string) *wrChild {
	t.Helper()
	c := &c3Child{cmd: spawn(t, wrPrefix+"park", dir, name, ""), eof: make(chan struct{})}
	r, w, err := os.Pipe()
	must(t, err, "pipe")
	c.cmd.Stdin = r
	out, err := c.cmd.StdoutPipe()
	must(t, err, "stdout pipe")
	must(t, c.cmd.Start(), "start child")
	_ = r.Close()
	t.Cleanup(func() { _ = w.Close() })
	go func() {
		defer close(c.eof)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.mu.Lock()
			c.lines = append(c.lines, sc.Text())
			c.mu.Unlock()
		}
	}()
	l := c.await(t, "attached", 20*time.Second)
	rec, err := strconv.Atoi(strings.Fields(l)[1])
	must(t, err, "parse "+l)
	return &wrChild{c3Child: c, in: w, rec: rec}
}

func (c *wrChild) park(t *testing.T, ops ...string) {
	t.Helper()
	_, err := fmt.Fprintln(c.in, strings.Join(ops, " "))
	must(t, err, "write ops to child")
}

// count is how many lines start with prefix.
func (c *wrChild) count(prefix string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, l := range c.lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// wrCounts is an edge-indexed view of waiter counts.
type wrCounts map[int][2]uint32 // edge -> {recv, send}; missing edges are 0

func wrTotals(s *Store[cell]) []([2]uint32) {
	var v [][2]uint32
	for _, e := range s.a.store.edges {
		v = append(v, [2]uint32{atomic.LoadUint32(&e.ctl.recvWaiters), atomic.LoadUint32(&e.ctl.sendWaiters)})
	}
	return v
}

func wrOwn(s *Store[cell], rec int) []([2]uint32) {
	r := s.a.record(rec)
	var v [][2]uint32
	for i := range s.a.store.edges {
		v = append(v, [2]uint32{atomic.LoadUint32(&r.edgeWaiters[i].recv), atomic.LoadUint32(&r.edgeWaiters[i].send)})
	}
	return v
}

// wrDiff describes where got differs from want ("" if nowhere).
func wrDiff(got [][2]uint32, want wrCounts) string {
	var b strings.Builder
	for i, g := range got {
		if w := want[i]; g != w {
			fmt.Fprintf(&b, " edge %d: recv %d send %d, want %d %d;", i, g[0], g[1], w[0], w[1])
		}
	}
	return b.String()
}

// wrAwait polls until get() matches want, failing after d.
func wrAwait(t *testing.T, d time.Duration, what string, get func() [][2]uint32, want wrCounts) {
	t.Helper()
	end := time.Now().Add(d)
	for {
		diff := wrDiff(get(), want)
		if diff == "" {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%s after %v:%s", what, d, diff)
		}
		time.Sleep(time.Millisecond)
	}
}

// wrCheck is wrAwait that reports with Errorf (the test goes on).
func wrCheck(t *testing.T, d time.Duration, what string, get func() [][2]uint32, want wrCounts) bool {
	t.Helper()
	end := time.Now().Add(d)
	for {
		diff := wrDiff(get(), want)
		if diff == "" {
			return true
		}
		if time.Now().After(end) {
			t.Errorf("%s (still after %v):%s", what, d, diff)
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

// wrLive parks op in this process in a goroutine; the channel gets its
// result.
func wrLive(s *Store[cell], op string, d time.Duration) <-chan error {
	ch := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		ch <- wrOp(s, op, ctx)
	}()
	return ch
}

// wrFill sends n messages to edge ei from s.
func wrFill(t *testing.T, s *Store[cell], ei, n int) {
	t.Helper()
	for i := range n {
		tok, err := s.Put(message.Header{Seq: uint64(i + 1)}, cell{})
		must(t, err, "Put")
		must(t, s.Edge(ei).TrySend(tok), fmt.Sprintf("fill edge %d", ei))
	}
}

func wrWake(t *testing.T, ch <-chan error, d time.Duration, what string) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case err := <-ch:
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	case <-time.After(d):
		t.Fatalf("%s: not woken within %v (a lost wake-up)", what, d)
	}
	return time.Since(start)
}

func wrSum(a wrCounts, b wrCounts) wrCounts {
	m := wrCounts{}
	for _, x := range []wrCounts{a, b} {
		for k, v := range x {
			w := m[k]
			m[k] = [2]uint32{w[0] + v[0], w[1] + v[1]}
		}
	}
	return m
}

// TestWaitersReviewDeadParkedAllKinds: a child dies parked in Recv,
// RecvBatch, Send and SendBatch on six edges, several goroutines on some;
// this process has a Recv and a Send parked on two of the same edges. After
// the recovery every total equals this process's parked goroutines, the
// dead record's parts are zero, and this process's waiters are woken by
// the next send / receive.
func TestWaitersReviewDeadParkedAllKinds(t *testing.T) {
	dir := t.TempDir()
	s, err := CreateStore[cell]("wrall", StoreConfig{Slots: 64, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: 4}, {MaxItems: 4}, {MaxItems: 1}, {MaxItems: 1}, {MaxItems: 4}, {MaxItems: 1}}})
	must(t, err, "CreateStore")
	defer s.Close()
	wrFill(t, s, 2, 1)
	wrFill(t, s, 3, 1)
	wrFill(t, s, 5, 1)
	liveR := wrLive(s, "r:0", 20*time.Second)
	liveS := wrLive(s, "s:2", 20*time.Second)
	live := wrCounts{0: {1, 0}, 2: {0, 1}}
	wrAwait(t, 5*time.Second, "this process's parked parts", func() [][2]uint32 { return wrOwn(s, s.a.me) }, live)

	c := wrStart(t, dir, "wrall")
	c.park(t, "r:0", "r:0", "r:0", "rb:1", "rb:1", "s:2", "s:2", "sb:3", "sb:3", "r:4", "s:5", "sb:5")
	c.await(t, "launched", 10*time.Second)
	childParts := wrCounts{0: {3, 0}, 1: {2, 0}, 2: {0, 2}, 3: {0, 2}, 4: {1, 0}, 5: {0, 2}}
	wrAwait(t, 5*time.Second, "child's parked parts", func() [][2]uint32 { return wrOwn(s, c.rec) }, childParts)
	wrAwait(t, 5*time.Second, "totals with the child parked", func() [][2]uint32 { return wrTotals(s) }, wrSum(live, childParts))
	c.kill(t)

	rep := c3Recover(t, s)
	if rep.Dead != 1 {
		t.Errorf("Recover = %+v, want 1 dead", rep)
	}
	if st := atomic.LoadUint32(&s.a.record(c.rec).state); st != recordFree {
		t.Errorf("dead record %d state %d after recovery, want free", c.rec, st)
	}
	wrCheck(t, 10*time.Millisecond, "dead record's parts after the recovery", func() [][2]uint32 { return wrOwn(s, c.rec) }, nil)
	wrCheck(t, 3*time.Second, "totals after the recovery (want this process's parked goroutines only)",
		func() [][2]uint32 { return wrTotals(s) }, live)

	// The live waiters are still woken.
	tok, err := s.Put(message.Header{Seq: 77}, cell{})
	must(t, err, "Put")
	must(t, s.Edge(0).TrySend(tok), "TrySend edge 0")
	d := wrWake(t, liveR, 4*time.Second, "this process's Recv on edge 0")
	t.Logf("parked Recv woke %v after the send", d)
	got, ok := s.Edge(2).TryRecv()
	if !ok {
		t.Fatal("TryRecv edge 2: nothing queued")
	}
	must(t, s.Free(got), "Free")
	d = wrWake(t, liveS, 4*time.Second, "this process's Send on edge 2")
	t.Logf("parked Send woke %v after the receive", d)
	wrCheck(t, 3*time.Second, "totals at the end", func() [][2]uint32 { return wrTotals(s) }, nil)
	wrCheck(t, 10*time.Millisecond, "this process's parts at the end", func() [][2]uint32 { return wrOwn(s, s.a.me) }, nil)
}

// TestWaitersReviewRecordReuse: a new process takes the record of one that
// died parked; it starts with zero parts, its own parking counts and is
// woken, and its waiters are uncounted when it dies too.
func TestWaitersReviewRecordReuse(t *testing.T) {
	dir := t.TempDir()
	s, err := CreateStore[cell]("wrreuse", StoreConfig{Slots: 32, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: 4}, {MaxItems: 1}}})
	must(t, err, "CreateStore")
	defer s.Close()
	wrFill(t, s, 1, 1)
	a := wrStart(t, dir, "wrreuse")
	a.park(t, "r:0", "rb:0", "s:1", "sb:1")
	a.await(t, "launched", 10*time.Second)
	parts := wrCounts{0: {2, 0}, 1: {0, 2}}
	wrAwait(t, 5*time.Second, "child A's parts", func() [][2]uint32 { return wrOwn(s, a.rec) }, parts)
	a.kill(t)
	if rep := c3Recover(t, s); rep.Dead != 1 {
		t.Errorf("Recover = %+v, want 1 dead", rep)
	}
	wrCheck(t, 3*time.Second, "totals after A's recovery", func() [][2]uint32 { return wrTotals(s) }, nil)

	b := wrStart(t, dir, "wrreuse")
	if b.rec != a.rec {
		t.Fatalf("child B took record %d, not the dead A's %d", b.rec, a.rec)
	}
	wrCheck(t, 10*time.Millisecond, "child B's parts at attach", func() [][2]uint32 { return wrOwn(s, b.rec) }, nil)
	b.park(t, "r:0", "r:0", "s:1")
	b.await(t, "launched", 10*time.Second)
	partsB := wrCounts{0: {2, 0}, 1: {0, 1}}
	wrAwait(t, 5*time.Second, "child B's parts", func() [][2]uint32 { return wrOwn(s, b.rec) }, partsB)
	wrAwait(t, 5*time.Second, "totals with B parked", func() [][2]uint32 { return wrTotals(s) }, partsB)

	// Wake B's receivers one at a time, then its sender.
	for i := range 2 {
		tok, err := s.Put(message.Header{Seq: uint64(50 + i)}, cell{})
		must(t, err, "Put")
		must(t, s.Edge(0).TrySend(tok), "TrySend edge 0")
		end := time.Now().Add(4 * time.Second)
		for b.count("done r:0 <nil>") < i+1 {
			if time.Now().After(end) {
				t.Fatalf("child B's Recv %d not woken within 4s (a lost wake-up); lines %q", i, b.lines)
			}
			time.Sleep(time.Millisecond)
		}
	}
	got, ok := s.Edge(1).TryRecv()
	if !ok {
		t.Fatal("TryRecv edge 1: empty")
	}
	must(t, s.Free(got), "Free")
	end := time.Now().Add(4 * time.Second)
	for b.count("done s:1 <nil>") < 1 {
		if time.Now().After(end) {
			t.Fatalf("child B's Send not woken within 4s; lines %q", b.lines)
		}
		time.Sleep(time.Millisecond)
	}
	wrCheck(t, 3*time.Second, "totals with B done", func() [][2]uint32 { return wrTotals(s) }, nil)
	wrCheck(t, 3*time.Second, "B's parts with B done", func() [][2]uint32 { return wrOwn(s, b.rec) }, nil)

	// B parks again, then dies: uncounted too.
	b.park(t, "r:0", "rb:0")
	wrAwait(t, 5*time.Second, "child B's parts, second time", func() [][2]uint32 { return wrOwn(s, b.rec) }, wrCounts{0: {2, 0}})
	b.kill(t)
	if rep := c3Recover(t, s); rep.Dead != 1 {
		t.Errorf("Recover = %+v, want 1 dead", rep)
	}
	wrCheck(t, 3*time.Second, "totals after B's recovery", func() [][2]uint32 { return wrTotals(s) }, nil)
	wrCheck(t, 10*time.Millisecond, "B's record after its recovery", func() [][2]uint32 { return wrOwn(s, b.rec) }, nil)
}

// TestWaitersReviewMaxEdges: waiters on the last edges of a store with
// MaxEdges edges are counted and uncounted like any other.
func TestWaitersReviewMaxEdges(t *testing.T) {
	dir := t.TempDir()
	pols := make([]message.Policy, MaxEdges)
	for i := range pols {
		pols[i] = message.Policy{MaxItems: 1}
	}
	s, err := CreateStore[cell]("wrmax", StoreConfig{Slots: 32, Dir: dir, Watch: -1, Edges: pols})
	must(t, err, "CreateStore")
	defer s.Close()
	last := MaxEdges - 1
	wrFill(t, s, last-2, 1)
	liveA := wrLive(s, fmt.Sprintf("r:%d", last), 20*time.Second)
	liveB := wrLive(s, fmt.Sprintf("r:%d", last-1), 20*time.Second)
	live := wrCounts{last: {1, 0}, last - 1: {1, 0}}
	wrAwait(t, 5*time.Second, "this process's parts", func() [][2]uint32 { return wrOwn(s, s.a.me) }, live)

	c := wrStart(t, dir, "wrmax")
	c.park(t, fmt.Sprintf("r:%d", last), fmt.Sprintf("rb:%d", last), fmt.Sprintf("sb:%d", last-2), "r:0", fmt.Sprintf("s:%d", last-2))
	c.await(t, "launched", 10*time.Second)
	parts := wrCounts{last: {2, 0}, last - 2: {0, 2}, 0: {1, 0}}
	wrAwait(t, 5*time.Second, "child's parts", func() [][2]uint32 { return wrOwn(s, c.rec) }, parts)
	wrAwait(t, 5*time.Second, "totals with the child parked", func() [][2]uint32 { return wrTotals(s) }, wrSum(live, parts))
	c.kill(t)
	if rep := c3Recover(t, s); rep.Dead != 1 {
		t.Errorf("Recover = %+v, want 1 dead", rep)
	}
	wrCheck(t, 10*time.Millisecond, "dead record's parts", func() [][2]uint32 { return wrOwn(s, c.rec) }, nil)
	wrCheck(t, 3*time.Second, "totals after the recovery", func() [][2]uint32 { return wrTotals(s) }, live)
	for _, x := range []struct {
		e  int
		ch <-chan error
	}{{last, liveA}, {last - 1, liveB}} {
		tok, err := s.Put(message.Header{Seq: 9}, cell{})
		must(t, err, "Put")
		must(t, s.Edge(x.e).TrySend(tok), "TrySend")
		d := wrWake(t, x.ch, 4*time.Second, fmt.Sprintf("Recv on edge %d", x.e))
		t.Logf("edge %d: woken %v after the send", x.e, d)
	}
	wrCheck(t, 3*time.Second, "totals at the end", func() [][2]uint32 { return wrTotals(s) }, nil)
}

// TestWaitersReviewChurn: many goroutines of one process (a second handle)
// park and unpark on four edges with short deadlines while another handle
// sends and receives, two edges are closed half-way, and at the end the
// handle is closed with goroutines parked. Quiet: every total and part 0.
func TestWaitersReviewChurn(t *testing.T) {
	dir := t.TempDir()
	s1, err := CreateStore[cell]("wrchurn", StoreConfig{Slots: 256, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: 2}, {MaxItems: 2}, {MaxItems: 1}, {MaxItems: 1}}})
	must(t, err, "CreateStore")
	defer s1.Close()
	s2, err := AttachStore[cell]("wrchurn", StoreConfig{Dir: dir, Watch: -1})
	must(t, err, "AttachStore")
	rec2 := s2.a.me
	wrFill(t, s1, 2, 1)
	wrFill(t, s1, 3, 1)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var bad atomic.Value
	ops := []string{"r:0", "r:1", "rb:0", "rb:1", "s:2", "s:3", "sb:2", "sb:3"}
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for {
				select {
				case <-stop:
					return
				default:
				}
				op := ops[rng.IntN(len(ops))]
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(3000))*time.Microsecond)
				err := wrOp(s2, op, ctx)
				cancel()
				switch {
				case err == nil, errors.Is(err, context.DeadlineExceeded), errors.Is(err, message.ErrEdgeClosed):
				default:
					bad.Store(fmt.Sprintf("%s: %v", op, err))
				}
			}
		}()
	}
	// A pump in the other handle: wakes receivers and senders.
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(99, 7))
		for {
			select {
			case <-stop:
				return
			default:
			}
			ei := rng.IntN(4)
			if ei < 2 {
				if tok, err := s1.Put(message.Header{Seq: 1}, cell{}); err == nil {
					if s1.Edge(ei).TrySend(tok) != nil {
						_ = s1.Free(tok)
					}
				}
			} else if tok, ok := s1.Edge(ei).TryRecv(); ok {
				_ = s1.Free(tok)
			}
			time.Sleep(time.Duration(rng.IntN(500)) * time.Microsecond)
		}
	}()
	time.Sleep(700 * time.Millisecond)
	must(t, s1.Edge(1).Close(), "Close edge 1")
	must(t, s1.Edge(3).Close(), "Close edge 3")
	time.Sleep(500 * time.Millisecond)
	close(stop)
	c3Within(t, 10*time.Second, "churn goroutines", wg.Wait)
	if v := bad.Load(); v != nil {
		t.Errorf("unexpected error in churn: %v", v)
	}
	wrCheck(t, 3*time.Second, "totals after the churn", func() [][2]uint32 { return wrTotals(s1) }, nil)
	wrCheck(t, 10*time.Millisecond, "handle 2's parts after the churn", func() [][2]uint32 { return wrOwn(s1, rec2) }, nil)
	wrCheck(t, 10*time.Millisecond, "handle 1's parts after the churn", func() [][2]uint32 { return wrOwn(s1, s1.a.me) }, nil)

	// Drain edge 0 and fill edge 2 so that the next ops park; park some on
	// handle 2, then Close it under them.
	for {
		tok, ok := s1.Edge(0).TryRecv()
		if !ok {
			break
		}
		_ = s1.Free(tok)
	}
	for s1.Edge(2).Len() < 1 {
		wrFill(t, s1, 2, 1)
	}
	var chans []<-chan error
	for _, op := range []string{"r:0", "r:0", "rb:0", "s:2", "sb:2"} {
		chans = append(chans, wrLive(s2, op, 20*time.Second))
	}
	wrAwait(t, 5*time.Second, "handle 2's parts, parked before Close", func() [][2]uint32 { return wrOwn(s1, rec2) },
		wrCounts{0: {3, 0}, 2: {0, 2}})
	c3Within(t, 5*time.Second, "Close handle 2", func() {
		// The parked senders hold what they Put: Close says so.
		if err := s2.Close(); err != nil && !errors.Is(err, message.ErrReferenced) {
			t.Errorf("Close handle 2: %v", err)
		}
	})
	for i, ch := range chans {
		select {
		case err := <-ch:
			if !errors.Is(err, ErrClosed) {
				t.Errorf("parked op %d after Close: %v, want ErrClosed", i, err)
			}
		case <-time.After(4 * time.Second):
			t.Fatalf("parked op %d not ended by Close", i)
		}
	}
	wrCheck(t, 3*time.Second, "totals after Close of handle 2", func() [][2]uint32 { return wrTotals(s1) }, nil)
	wrCheck(t, 10*time.Millisecond, "handle 2's record after its Close", func() [][2]uint32 { return wrOwn(s1, rec2) }, nil)
}

// TestWaitersReviewTakeoverAfterLeaderDied: recovery must stay idempotent
// ("a recovery whose leader dies half-way is simply run again"). Leader B
// is killed inside clearRecord of A (parked in Recv on edge 0).
//
// On dc5d566 clearRecord subtracted A's part from the edge's total, then
// zeroed the part: a leader killed in between left the part in place, the
// takeover subtracted it again, and the total fell one below the live
// waiters (senders then skipped a lone receiver's wake: it woke only after
// its 200 ms park slice, 47-128 ms measured). clearRecord now takes the
// part first (Swap to 0), then subtracts it, so the state a leader killed
// in between leaves is "part zeroed, total not yet lowered": the total one
// too high, which costs a wake syscall per send and never a lost wake-up.
// That state is built by hand here (both children SIGKILLed, the
// recovering word naming B, A's part zeroed); the takeover must leave the
// total at least the live waiters, and every receiver must be woken at once.
func TestWaitersReviewTakeoverAfterLeaderDied(t *testing.T) {
	dir := t.TempDir()
	s, err := CreateStore[cell]("wrtake", StoreConfig{Slots: 32, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: 4}}})
	must(t, err, "CreateStore")
	defer s.Close()
	liveR := wrLive(s, "r:0", 20*time.Second)
	wrAwait(t, 5*time.Second, "this process's part", func() [][2]uint32 { return wrOwn(s, s.a.me) }, wrCounts{0: {1, 0}})
	a := wrStart(t, dir, "wrtake")
	b := wrStart(t, dir, "wrtake")
	a.park(t, "r:0")
	wrAwait(t, 5*time.Second, "A's part", func() [][2]uint32 { return wrOwn(s, a.rec) }, wrCounts{0: {1, 0}})
	wrAwait(t, 5*time.Second, "totals", func() [][2]uint32 { return wrTotals(s) }, wrCounts{0: {2, 0}})
	a.kill(t)
	b.kill(t)
	// B led a recovery and died in clearRecord(A) between taking A's part
	// (SwapUint32(&own.recv, 0)) and subtracting it from the total.
	atomic.StoreUint32(&s.a.hdr.recovering, uint32(b.rec+1))
	atomic.StoreUint32(&s.a.record(a.rec).edgeWaiters[0].recv, 0)

	rep := c3Recover(t, s)
	if rep.Dead != 2 {
		t.Errorf("Recover = %+v, want 2 dead", rep)
	}
	wrCheck(t, 10*time.Millisecond, "A's record after the recovery", func() [][2]uint32 { return wrOwn(s, a.rec) }, nil)
	// This process's Recv plus A's part that B took and never subtracted.
	wrCheck(t, time.Second, "edge 0 totals after the taken-over recovery (this process's Recv is parked)",
		func() [][2]uint32 { return wrTotals(s) }, wrCounts{0: {2, 0}})
	tok, err := s.Put(message.Header{Seq: 7}, cell{})
	must(t, err, "Put")
	must(t, s.Edge(0).TrySend(tok), "TrySend")
	d := wrWake(t, liveR, 4*time.Second, "this process's Recv on edge 0")
	t.Logf("parked Recv woke %v after the send (a skipped wake costs up to parkSlice %v)", d, parkSlice)
	// Nothing parked: the total stays one high (the harmless direction).
	wrCheck(t, time.Second, "edge 0 totals with nothing parked", func() [][2]uint32 { return wrTotals(s) }, wrCounts{0: {1, 0}})
	var lat []time.Duration
	for i := range 3 {
		ch := wrLive(s, "r:0", 10*time.Second)
		wrAwait(t, 5*time.Second, "fresh receiver's part", func() [][2]uint32 { return wrOwn(s, s.a.me) }, wrCounts{0: {1, 0}})
		time.Sleep(time.Duration(20+40*i) * time.Millisecond) // land inside a park slice
		tok, err := s.Put(message.Header{Seq: uint64(8 + i)}, cell{})
		must(t, err, "Put")
		must(t, s.Edge(0).TrySend(tok), "TrySend")
		lat = append(lat, wrWake(t, ch, 4*time.Second, "fresh receiver"))
	}
	for i, d := range lat {
		if d > 30*time.Millisecond {
			t.Errorf("fresh receiver %d woke %v after the send: its wake was skipped (woken by the park slice)", i, d)
		}
	}
	t.Logf("fresh receivers woke after %v (a delivered wake takes microseconds)", lat)
}

// TestWaitersReviewScribbledEdgeCount: clearRecord walks the header's edge
// count, a word in the segment any attached process can scribble on, and
// indexes the record's [MaxEdges] parts with it. A recovery must not panic
// (bindStore keeps the edges it checked in this process for exactly this
// reason).
func TestWaitersReviewScribbledEdgeCount(t *testing.T) {
	dir := t.TempDir()
	s, err := CreateStore[cell]("wrscrib", StoreConfig{Slots: 32, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: 4}, {MaxItems: 4}}})
	must(t, err, "CreateStore")
	defer s.Close()
	c := wrStart(t, dir, "wrscrib")
	c.park(t, "r:1")
	wrAwait(t, 5*time.Second, "child's part", func() [][2]uint32 { return wrOwn(s, c.rec) }, wrCounts{1: {1, 0}})
	c.kill(t)
	old := atomic.LoadUint32((*uint32)(&s.a.hdr.edges))
	atomic.StoreUint32((*uint32)(&s.a.hdr.edges), MaxEdges+8)
	var panicked any
	func() {
		defer func() { panicked = recover() }()
		_, err = s.Recover()
	}()
	atomic.StoreUint32((*uint32)(&s.a.hdr.edges), old)
	if panicked != nil {
		t.Fatalf("Recover with the header's edge count scribbled to %d panicked: %v", MaxEdges+8, panicked)
	}
	must(t, err, "Recover")
	wrCheck(t, 3*time.Second, "totals after the recovery", func() [][2]uint32 { return wrTotals(s) }, nil)
}
