package shm

// Crash attacks, second round: several processes dying at once, a process
// killed while it leads a recovery, killed during Attach, Create, Close,
// Edge.Close, SendBatch and Retain, stale files and Create races. Child
// roles (re-executed test binaries) are named crash2.* and dispatched by
// runChildRole.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

const c2Prefix = "crash2."

var _ = registerChildRoles(c2Prefix, c2RunChild)

func c2RunChild(role, dir, name, arg string) int {
	fail := func(code int, format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "crash2 %s: "+format+"\n", append([]any{role}, args...)...)
		return code
	}
	attach := func() *Store[cell] {
		s, err := AttachStore[cell](name, StoreConfig{Dir: dir, Watch: -1})
		if err != nil {
			os.Exit(fail(exitBadError, "attach: %v", err))
		}
		return s
	}
	switch role {
	case "attach":
		// Attach (which recovers after the dead first), report, wait.
		fmt.Println("attaching")
		attach()
		fmt.Println("attached")
		sleepForever()
	case "create":
		// Create a store (arg slots), report, wait.
		slots, _ := strconv.Atoi(arg)
		fmt.Println("creating")
		_, err := CreateStore[cell](name, StoreConfig{Slots: slots, Dir: dir, Watch: -1,
			Edges: []message.Policy{{MaxItems: 4}}})
		switch {
		case err == nil:
			fmt.Println("ok")
		case errors.Is(err, ErrExists):
			fmt.Println("exists")
		default:
			fmt.Println("error", err)
		}
		sleepForever()
	case "churn":
		// Put, SendBatch to edge 0, RecvBatch from edge 0, Retain and send
		// to edge 1, receive from edge 1 and check, Free; until killed.
		// Each token goes to each edge at most once.
		s := attach()
		id, _ := strconv.ParseUint(arg, 10, 64)
		e0, e1 := s.Edge(0), s.Edge(1)
		var fresh, held []token.Token
		dst := make([]token.Token, 4)
		seq := uint64(0)
		for it := 0; ; it++ {
			if it == 50 {
				fmt.Println("go")
			}
			for len(fresh) < 6 {
				seq++
				var c cell
				c.fill(id<<40 | seq)
				tok, err := s.Put(message.Header{Seq: seq}, c)
				if errors.Is(err, ErrFull) {
					break
				}
				if err != nil {
					return fail(exitBadError, "Put: %v", err)
				}
				fresh = append(fresh, tok)
			}
			n, err := e0.SendBatch(context.Background(), fresh)
			if err != nil {
				return fail(exitBadError, "SendBatch: %v", err)
			}
			fresh = fresh[n:]
			ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
			k, err := e0.RecvBatch(ctx, dst)
			cancel()
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				return fail(exitBadError, "RecvBatch: %v", err)
			}
			held = append(held, dst[:k]...)
			for len(held) > 0 {
				tok := held[0]
				held = held[1:]
				if err := s.Retain(tok); err != nil {
					return fail(exitBadError, "Retain: %v", err)
				}
				if err := e1.TrySend(tok); err != nil {
					if err := s.Free(tok); err != nil {
						return fail(exitBadError, "Free refused copy: %v", err)
					}
				}
				if err := s.Free(tok); err != nil {
					return fail(exitBadError, "Free: %v", err)
				}
			}
			if tok, ok := e1.TryRecv(); ok {
				var bad bool
				if err := s.View(tok, func(m *message.Message[cell]) { bad = !m.Payload.whole() }); err != nil {
					return fail(exitBadError, "View: %v", err)
				}
				if bad {
					return fail(exitCorrupt, "torn payload %v", tok)
				}
				if err := s.Free(tok); err != nil {
					return fail(exitBadError, "Free received: %v", err)
				}
			}
		}
	case "close":
		// Hold references (some also queued), then Close, then wait.
		s := attach()
		for i := range 8 {
			var c cell
			c.fill(uint64(100 + i))
			tok, err := s.Put(message.Header{Seq: uint64(i)}, c)
			if err != nil {
				return fail(exitBadError, "Put: %v", err)
			}
			if i%2 == 0 {
				if err := s.Retain(tok); err != nil {
					return fail(exitBadError, "Retain: %v", err)
				}
				if err := s.Edge(0).TrySend(tok); err != nil {
					return fail(exitBadError, "TrySend: %v", err)
				}
			}
		}
		fmt.Println("closing")
		if err := s.Close(); err != nil && !errors.Is(err, message.ErrReferenced) {
			return fail(exitBadError, "Close: %v", err)
		}
		fmt.Println("closed")
		sleepForever()
	case "edgeclose":
		s := attach()
		fmt.Println("go")
		if err := s.Edge(0).Close(); err != nil {
			return fail(exitBadError, "Edge.Close: %v", err)
		}
		fmt.Println("done")
		sleepForever()
	case "retain":
		// Receive one token from edge 0, then Retain it until killed.
		s := attach()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tok, err := s.Edge(0).Recv(ctx)
		if err != nil {
			return fail(exitBadError, "Recv: %v", err)
		}
		fmt.Println("go")
		for {
			if err := s.Retain(tok); err != nil {
				return fail(exitBadError, "Retain: %v", err)
			}
		}
	case "sendbatch":
		// Put arg messages, then SendBatch them all on edge 0.
		s := attach()
		n, _ := strconv.Atoi(arg)
		ts := make([]token.Token, n)
		for i := range ts {
			var c cell
			c.fill(uint64(i + 1))
			tok, err := s.Put(message.Header{Seq: uint64(i + 1)}, c)
			if err != nil {
				return fail(exitBadError, "Put: %v", err)
			}
			ts[i] = tok
		}
		fmt.Println("go")
		if _, err := s.Edge(0).SendBatch(context.Background(), ts); err != nil {
			return fail(exitBadError, "SendBatch: %v", err)
		}
		fmt.Println("done")
		sleepForever()
	}
	return fail(exitBadError, "unknown role")
}

func c2Start(t *testing.T, role, dir, name, arg string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	cmd := spawn(t, c2Prefix+role, dir, name, arg)
	out, err := cmd.StdoutPipe()
	must(t, err, "stdout pipe")
	must(t, cmd.Start(), "start child")
	return cmd, bufio.NewReader(out)
}

func c2Line(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	l, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("child output: %q, %v", l, err)
	}
	return strings.TrimSpace(l)
}

func c2Expect(t *testing.T, r *bufio.Reader, want string) {
	t.Helper()
	if l := c2Line(t, r); l != want {
		t.Fatalf("child said %q, want %q", l, want)
	}
}

// c2Recover runs Recover on s and fails the test on an error.
func c2Recover[P any](t *testing.T, s *Store[P]) Recovery {
	t.Helper()
	var rep Recovery
	var err error
	within(t, 5*time.Second, "Recover", func() { rep, err = s.Recover() })
	must(t, err, "Recover")
	return rep
}

// c2Collect takes everything queued on e with TryRecv; it reports tokens
// delivered twice, stale tokens and torn payloads, frees what it took
// and returns how many it took.
func c2Collect(t *testing.T, s *Store[cell], e *Edge, what string) int {
	t.Helper()
	seen := map[token.Token]bool{}
	var got []token.Token
	dups, stales, torn := 0, 0, 0
	for {
		tok, ok := e.TryRecv()
		if !ok {
			break
		}
		if len(got) > 4*s.Capacity() {
			t.Fatalf("%s: TryRecv never runs dry", what)
		}
		got = append(got, tok)
		if seen[tok] {
			dups++
			if dups <= 3 {
				t.Errorf("%s: token %v delivered twice", what, tok)
			}
			continue
		}
		seen[tok] = true
		var bad bool
		if err := s.View(tok, func(m *message.Message[cell]) { bad = !m.Payload.whole() }); err != nil {
			stales++
			if stales <= 3 {
				t.Errorf("%s: token %v delivered, but View: %v", what, tok, err)
			}
		} else if bad {
			torn++
			t.Errorf("%s: token %v has a torn payload", what, tok)
		}
	}
	for _, tok := range got {
		_ = s.Free(tok)
	}
	if dups+stales+torn > 0 {
		t.Errorf("%s: %d tokens received: %d twice, %d stale, %d torn", what, len(got), dups, stales, torn)
	}
	return len(got)
}

// TestCrash2RecoveryLeaderKilledInFinishCompaction: a process dies in the
// middle of reaping expired entries from an edge (its compaction journal
// says the first k entries of the lane are gone). The next process to
// attach leads the recovery, which finishes the compaction; it is SIGKILLed
// while doing so, and this process takes the recovery over. The doc: "The
// rebuild is idempotent: if the recovering process dies too, the next
// waiter that notices ... runs it again", and the journal "always says
// which entries are queued: none twice, none freed". finishCompaction
// clears the journal (compactLane = 0) before it moves the entries and
// sets the tail, so the second recovery finds no journal and takes the
// lane's old [head, tail) as queued: the k released (freed) entries and
// the moved ones twice.
func TestCrash2RecoveryLeaderKilledInFinishCompaction(t *testing.T) {
	n := 1 << 16
	if raceEnabled {
		n = 1 << 15
	}
	const k = 64
	for attempt := range 6 {
		dir := t.TempDir()
		s, err := CreateStore[cell]("lead", StoreConfig{Slots: n, Shards: 2, Dir: dir, Watch: -1,
			Edges: []message.Policy{{MaxItems: n}}})
		must(t, err, "CreateStore")
		r, err := AttachStore[cell]("lead", StoreConfig{Dir: dir, Watch: -1})
		must(t, err, "AttachStore")
		re := r.Edge(0)
		deadline := message.Now() + int64(20*time.Millisecond)
		for i := range n {
			var c cell
			c.fill(uint64(i + 1))
			h := message.Header{Seq: uint64(i + 1), QoS: message.BestEffort}
			if i < k {
				h.Deadline = deadline
			}
			tok, err := r.Put(h, c)
			must(t, err, "Put")
			must(t, re.TrySend(tok), "TrySend")
		}
		for message.Now() <= deadline {
			time.Sleep(time.Millisecond)
		}
		// r runs reapExpired's loop over the k expired entries at the head
		// of the lane, exactly as reapExpired does, and dies before
		// compacting the kept ones: the lock held, its section open.
		p, w, err := r.a.enter()
		must(t, err, "enter")
		if !re.lock() {
			t.Fatal("edge lock taken")
		}
		c := re.ctl
		l := laneBestEffort
		head := c.lanes[l].head
		atomicx.StoreRelease64(&c.compactAt, 0)
		atomicx.StoreRelease64(&c.compactLane, uint64(l)+1)
		for pos := head; pos < head+k; pos++ {
			q := *re.entry(l, pos)
			atomicx.StoreRelease64(&c.compactAt, 0<<32|(pos+1-head))
			c.n--
			c.bytes -= int64(q.size)
			re.counted(stExpired)
			re.release(p, w, q.tok)
		}
		die(&Arena[cell]{r.a})
		c = s.Edge(0).ctl // r's mapping is gone
		tail := atomic.LoadUint64(&c.lanes[l].tail)

		// A new process attaches: its Attach leads the recovery. Kill it
		// in the middle of finishCompaction's move: as soon as it has moved
		// a kept entry down (the journal's keep offset leaves 0) or cleared
		// the journal, whichever it does first, and before it sets the tail.
		cmd, out := c2Start(t, "attach", dir, "lead", "")
		c2Expect(t, out, "attaching")
		end := time.Now().Add(10 * time.Second)
		for atomic.LoadUint64(&c.compactAt)>>32 == 0 && atomic.LoadUint64(&c.compactLane) != 0 {
			if time.Now().After(end) {
				t.Fatal("the attaching child never finished the compaction")
			}
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if atomic.LoadUint64(&c.lanes[l].tail) != tail {
			t.Logf("attempt %d: the leader finished the compaction before the kill landed", attempt)
			e := s.Edge(0)
			c2Recover(t, s)
			e.Drain()
			_ = s.Close()
			continue
		}
		t.Logf("attempt %d: the recovering child was killed inside finishCompaction (journal at %#x, tail still %d)", attempt, atomic.LoadUint64(&c.compactAt), tail)
		rep := c2Recover(t, s)
		t.Logf("Recover that took over: %+v", rep)
		e := s.Edge(0)
		caBalance(t, e, "after the takeover")
		if got := e.Len(); got != n-k {
			t.Errorf("Len = %d after recovery, want %d (%d queued, %d expired)", got, n-k, n, k)
		}
		got := c2Collect(t, s, e, "edge 0")
		t.Logf("received %d tokens; Len now %d, stats %+v", got, e.Len(), e.Stats())
		if got != n-k {
			t.Errorf("received %d tokens, want %d", got, n-k)
		}
		e.Drain()
		if s.Available() != s.Capacity() {
			t.Errorf("Available = %d after everything was received and freed, want %d", s.Available(), s.Capacity())
		}
		_ = s.Close()
		return
	}
	t.Log("no kill landed inside finishCompaction")
}

// TestCrash2TwoChurnersKilledAtOnce: two processes that Put, SendBatch,
// RecvBatch, Retain, TrySend, TryRecv, View and Free on the same two edges
// are SIGKILLed at the same moment, round after round. After each
// recovery: the edges' counters balance, every queued token comes out
// once per edge, live and whole, and once they are freed Available ==
// Capacity (nobody else holds anything).
func TestCrash2TwoChurnersKilledAtOnce(t *testing.T) {
	dir := t.TempDir()
	s, err := CreateStore[cell]("churn2", StoreConfig{Slots: 64, Shards: 4, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: 8, Admission: message.DropOldest}, {MaxItems: 6}}})
	must(t, err, "CreateStore")
	defer s.Close()
	rounds := 8
	if raceEnabled {
		rounds = 4
	}
	rng := rand.New(rand.NewPCG(7, uint64(time.Now().UnixNano())))
	for round := range rounds {
		a, ao := c2Start(t, "churn", dir, "churn2", "1")
		b, bo := c2Start(t, "churn", dir, "churn2", "2")
		c2Expect(t, ao, "go")
		c2Expect(t, bo, "go")
		time.Sleep(time.Duration(rng.IntN(20000)) * time.Microsecond)
		_ = a.Process.Signal(syscall.SIGKILL)
		_ = b.Process.Signal(syscall.SIGKILL)
		for _, cmd := range []*exec.Cmd{a, b} {
			if err := cmd.Wait(); err != nil {
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != -1 {
					t.Fatalf("round %d: child failed on its own: %v", round, err)
				}
			}
		}
		rep := c2Recover(t, s)
		if rep.Dead != 2 {
			t.Errorf("round %d: Recover %+v, want 2 dead", round, rep)
		}
		if st := s.Stats(); st.Processes != 1 {
			t.Errorf("round %d: Processes = %d", round, st.Processes)
		}
		for i, e := range s.Edges() {
			caBalance(t, e, fmt.Sprintf("round %d edge %d", round, i))
		}
		c2Collect(t, s, s.Edge(0), fmt.Sprintf("round %d edge 0", round))
		c2Collect(t, s, s.Edge(1), fmt.Sprintf("round %d edge 1", round))
		if got := s.Available(); got != s.Capacity() {
			t.Fatalf("round %d: Available = %d after both died and the edges were emptied, want %d", round, got, s.Capacity())
		}
	}
}

// TestCrash2TwoHandlesDieOnOneSlot: two processes die at once, both
// holding the same slot (a View each, arena; a View and an Update in
// turn's worth, store), one of them having freed it while the other's
// View ran (pending). The recovery drops both holds and recycles the slot
// exactly once.
func TestCrash2TwoHandlesDieOnOneSlot(t *testing.T) {
	hs := segment[pay](t, 3, Config{Slots: 4, Shards: 1})
	a, x, y := hs[0], hs[1], hs[2]
	tok, err := x.Store(patterned(1, 1))
	must(t, err, "Store")
	kept, err := a.Store(patterned(2, 2))
	must(t, err, "Store")
	holdAsDead(t, x, tok, false)
	holdAsDead(t, y, tok, false)
	must(t, y.Free(tok), "Free while held") // y frees x's allocation: pending
	holdAsDead(t, y, kept, false)
	die(x)
	die(y)
	var rep Recovery
	within(t, 5*time.Second, "Recover", func() { rep, err = a.Recover() })
	must(t, err, "Recover")
	if rep.Dead != 2 || rep.Holds != 3 {
		t.Errorf("Recover = %+v, want 2 dead, 3 holds", rep)
	}
	if a.Available() != 3 {
		t.Errorf("Available = %d, want 3", a.Available())
	}
	within(t, 5*time.Second, "Update of the slot the dead viewed", func() {
		must(t, a.Update(kept, func(p *pay) { p.Seq = 2 }), "Update")
	})
	seen := map[uint32]bool{kept.Index(): true}
	var got []token.Token
	for range 3 {
		tk, _, err := a.Alloc()
		must(t, err, "Alloc")
		if seen[tk.Index()] {
			t.Fatalf("slot %d handed out twice", tk.Index())
		}
		seen[tk.Index()] = true
		got = append(got, tk)
	}
	if _, _, err := a.Alloc(); !errors.Is(err, ErrFull) {
		t.Fatalf("Alloc past capacity: %v", err)
	}
	for _, tk := range append(got, kept) {
		must(t, a.Free(tk), "Free")
	}
	if a.Available() != a.Capacity() {
		t.Errorf("Available = %d, want %d", a.Available(), a.Capacity())
	}
}

// TestCrash2ConcurrentRecoverers: two processes die (one with slots in
// its cache, 10 allocations and an Update hold, one with an allocation
// under a View); two survivors run Recover at the same
// time, while a third keeps working. Exactly one recovery does the work:
// its reports sum to 2 dead, the segment counts one recovery, and every
// slot comes back.
func TestCrash2ConcurrentRecoverers(t *testing.T) {
	for round := range 20 {
		hs := segment[pay](t, 5, Config{Slots: 64, Shards: 2})
		a, b, c, x, y := hs[0], hs[1], hs[2], hs[3], hs[4]
		var xs []token.Token
		for i := range 20 {
			tk, err := x.Store(patterned(3, uint64(i)))
			must(t, err, "Store")
			xs = append(xs, tk)
		}
		for _, tk := range xs[:10] {
			must(t, x.Free(tk), "Free") // into x's cache
		}
		holdAsDead(t, x, xs[10], true)
		ys, err := y.Store(patterned(4, 4))
		must(t, err, "Store")
		holdAsDead(t, y, ys, false)
		mine, err := c.Store(patterned(5, 5))
		must(t, err, "Store")
		die(x)
		die(y)
		var reps [2]Recovery
		var errs [2]error
		var wg sync.WaitGroup
		stop := make(chan struct{})
		var cerr atomic.Value
		cdone := make(chan struct{})
		go func() {
			defer close(cdone)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if v, err := c.Load(mine); err != nil || v != patterned(5, 5) {
					cerr.Store(fmt.Sprintf("Load %v: %v %v", mine, v, err))
					return
				}
				if tk, _, err := c.Alloc(); err == nil {
					_ = c.Free(tk)
				}
			}
		}()
		for i, h := range []*Arena[pay]{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				reps[i], errs[i] = h.Recover()
			}()
		}
		within(t, 5*time.Second, "two concurrent Recovers", wg.Wait)
		close(stop)
		<-cdone
		must(t, errs[0], "Recover a")
		must(t, errs[1], "Recover b")
		if v := cerr.Load(); v != nil {
			t.Fatalf("round %d: %v", round, v)
		}
		if d := reps[0].Dead + reps[1].Dead; d != 2 || reps[0].Reclaimed+reps[1].Reclaimed != 11 {
			t.Fatalf("round %d: reports %+v %+v, want 2 dead and 11 reclaimed in all", round, reps[0], reps[1])
		}
		if st := a.Stats(); st.Recoveries != 1 || st.Processes != 3 {
			t.Fatalf("round %d: Stats %+v, want 1 recovery, 3 processes", round, st)
		}
		if n := a.Available(); n != 63 {
			t.Fatalf("round %d: Available = %d, want 63", round, n)
		}
		toks := allocAll(t, []*Arena[pay]{a, b}, 63)
		if len(toks) != 63 {
			t.Fatalf("round %d: %d allocations, want 63", round, len(toks))
		}
		for _, tk := range toks {
			must(t, a.Update(tk, func(*pay) {}), "Update")
			must(t, a.Free(tk), "Free")
		}
		must(t, c.Free(mine), "Free")
		for _, h := range hs[:3] {
			must(t, h.Close(), "Close")
		}
	}
}

// TestCrash2KilledDuringAttach: a process died holding references and
// messages queued on an edge; processes that attach (and so lead the
// recovery) are SIGKILLed at varying moments of their Attach. This
// process, which keeps working on its own message meanwhile, ends with
// one recovery that leaves exactly its message and the queued ones, and
// a later Attach works.
func TestCrash2KilledDuringAttach(t *testing.T) {
	dir := t.TempDir()
	s, err := CreateStore[cell]("att", StoreConfig{Slots: 256, Shards: 4, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: 64}}})
	must(t, err, "CreateStore")
	defer s.Close()
	var c cell
	c.fill(77)
	mine, err := s.Put(message.Header{}, c)
	must(t, err, "Put")
	rounds := 10
	if raceEnabled {
		rounds = 6
	}
	for round := range rounds {
		x, err := AttachStore[cell]("att", StoreConfig{Dir: dir, Watch: -1})
		must(t, err, "AttachStore")
		for i := range 40 {
			var c cell
			c.fill(uint64(round<<16 | i))
			tok, err := x.Put(message.Header{}, c)
			must(t, err, "Put")
			if i%4 == 0 {
				must(t, x.Edge(0).TrySend(tok), "TrySend")
			}
		}
		die(&Arena[cell]{x.a})
		cmd, out := c2Start(t, "attach", dir, "att", "")
		c2Expect(t, out, "attaching")
		time.Sleep(time.Duration(round%5) * 700 * time.Microsecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		within(t, 5*time.Second, "View while the attacher was recovering", func() {
			must(t, s.View(mine, func(m *message.Message[cell]) {
				if !m.Payload.whole() || m.Payload.Stamp != 77 {
					t.Errorf("own payload changed: %+v", m.Payload)
				}
			}), "View")
		})
		c2Recover(t, s)
		if st := s.Stats(); st.Processes != 1 {
			t.Fatalf("round %d: Processes = %d, want 1", round, st.Processes)
		}
		e := s.Edge(0)
		caBalance(t, e, "edge 0")
		if want := s.Capacity() - 1 - e.Len(); s.Available() != want {
			t.Fatalf("round %d: Available = %d, want %d (own message + %d queued)", round, s.Available(), want, e.Len())
		}
		if got := c2Collect(t, s, e, fmt.Sprintf("round %d", round)); got != 10 {
			t.Fatalf("round %d: %d queued after the deaths, want 10", round, got)
		}
	}
	b, err := AttachStore[cell]("att", StoreConfig{Dir: dir, Watch: -1})
	must(t, err, "a later Attach")
	must(t, b.Close(), "Close")
	must(t, s.Free(mine), "Free")
	if s.Available() != s.Capacity() {
		t.Fatalf("Available = %d, want %d", s.Available(), s.Capacity())
	}
}

// TestCrash2KilledDuringCreate: a process creating a store is SIGKILLed
// at varying moments. Afterwards Attach either finds a usable segment (the
// creator finished) or ErrNotExist, never anything else and never a hang,
// and the next Create of the name replaces what was left.
func TestCrash2KilledDuringCreate(t *testing.T) {
	dir := t.TempDir()
	rounds := 10
	if raceEnabled {
		rounds = 6
	}
	var finished int
	for round := range rounds {
		cmd, out := c2Start(t, "create", dir, "cr", "4096")
		c2Expect(t, out, "creating")
		time.Sleep(time.Duration(round%5) * time.Duration(round%5) * 500 * time.Microsecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		var a *Store[cell]
		var err error
		within(t, 5*time.Second, "Attach after the creator died", func() {
			a, err = AttachStore[cell]("cr", StoreConfig{Dir: dir, Watch: -1})
		})
		switch {
		case err == nil:
			finished++
			if a.Available() != a.Capacity() || a.Capacity() != 4096 || a.Stats().Processes != 1 {
				t.Fatalf("round %d: segment of a dead creator: Available %d of %d, %d processes", round, a.Available(), a.Capacity(), a.Stats().Processes)
			}
			tok, err := a.Put(message.Header{}, cell{})
			must(t, err, "Put")
			must(t, a.Edge(0).TrySend(tok), "TrySend")
			if got, ok := a.Edge(0).TryRecv(); !ok || got != tok {
				t.Fatalf("round %d: TryRecv = %v %v", round, got, ok)
			}
			must(t, a.Free(tok), "Free")
			must(t, a.Close(), "Close") // the last process: the file goes
			if _, err := os.Stat(a.Path()); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("round %d: file after the last Close: %v", round, err)
			}
		case errors.Is(err, ErrNotExist):
		default:
			t.Fatalf("round %d: Attach after the creator died: %v", round, err)
		}
		var s *Store[cell]
		within(t, 5*time.Second, "Create over what the dead creator left", func() {
			s, err = CreateStore[cell]("cr", StoreConfig{Slots: 8, Dir: dir, Watch: -1, Edges: []message.Policy{{}}})
		})
		must(t, err, fmt.Sprintf("round %d: Create over what a dead creator left", round))
		if s.Capacity() != 8 || s.Available() != 8 {
			t.Fatalf("round %d: new store %d of %d", round, s.Available(), s.Capacity())
		}
		must(t, s.Close(), "Close")
	}
	t.Logf("%d of %d creators finished before the kill", finished, rounds)
}

// TestCrash2CreateRace: several processes Create the same name at once:
// exactly one gets the segment, the others ErrExists; this process can
// attach to it. When they are all killed at once, the next Create
// replaces the file.
func TestCrash2CreateRace(t *testing.T) {
	dir := t.TempDir()
	for round := range 3 {
		var cmds []*exec.Cmd
		var outs []*bufio.Reader
		for range 4 {
			cmd, out := c2Start(t, "create", dir, "race", "64")
			cmds = append(cmds, cmd)
			outs = append(outs, out)
		}
		ok := 0
		for _, out := range outs {
			c2Expect(t, out, "creating")
			switch l := c2Line(t, out); l {
			case "ok":
				ok++
			case "exists":
			default:
				t.Errorf("round %d: a racing Create said %q", round, l)
			}
		}
		if ok != 1 {
			t.Fatalf("round %d: %d racing Creates succeeded, want 1", round, ok)
		}
		a, err := AttachStore[cell]("race", StoreConfig{Dir: dir, Watch: -1})
		must(t, err, "AttachStore")
		if st := a.Stats(); st.Processes != 2 || a.Capacity() != 64 {
			t.Fatalf("round %d: %+v, capacity %d", round, st, a.Capacity())
		}
		must(t, a.Close(), "Close")
		for _, cmd := range cmds {
			_ = cmd.Process.Signal(syscall.SIGKILL)
		}
		for _, cmd := range cmds {
			_ = cmd.Wait()
		}
		s, err := CreateStore[cell]("race", StoreConfig{Slots: 16, Dir: dir, Watch: -1})
		must(t, err, "Create over the segment of the killed creators")
		must(t, s.Close(), "Close")
	}
}

// TestCrash2KilledDuringStoreClose: a process that holds references (some
// to messages it also queued) is SIGKILLed at varying moments around its
// Close. The file stays (this process is attached); after the recovery
// only the queued messages live, each delivered once, whole.
func TestCrash2KilledDuringStoreClose(t *testing.T) {
	dir := t.TempDir()
	s, err := CreateStore[cell]("cl", StoreConfig{Slots: 64, Shards: 2, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: 16}}})
	must(t, err, "CreateStore")
	defer s.Close()
	rounds := 10
	if raceEnabled {
		rounds = 6
	}
	for round := range rounds {
		cmd, out := c2Start(t, "close", dir, "cl", "")
		c2Expect(t, out, "closing")
		time.Sleep(time.Duration(round%5) * 100 * time.Microsecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if _, err := os.Stat(s.Path()); err != nil {
			t.Fatalf("round %d: segment file after a peer's Close while this process is attached: %v", round, err)
		}
		c2Recover(t, s)
		e := s.Edge(0)
		caBalance(t, e, "edge 0")
		if e.Len() != 4 || s.Available() != s.Capacity()-4 {
			t.Fatalf("round %d: Len %d, Available %d; want 4 queued, %d available", round, e.Len(), s.Available(), s.Capacity()-4)
		}
		if got := c2Collect(t, s, e, fmt.Sprintf("round %d", round)); got != 4 {
			t.Fatalf("round %d: received %d, want 4", round, got)
		}
		if s.Available() != s.Capacity() || s.Stats().Processes != 1 {
			t.Fatalf("round %d: Available %d, Processes %d", round, s.Available(), s.Stats().Processes)
		}
	}
}

// TestCrash2KilledDuringEdgeClose: a process is killed while it closes an
// edge on which this process has a receiver parked. The receiver never
// hangs: it gets ErrEdgeClosed (the close landed) or, once this process
// closes the edge itself, then; the edge still delivers what was queued.
func TestCrash2KilledDuringEdgeClose(t *testing.T) {
	dir := t.TempDir()
	rounds := 6
	for round := range rounds {
		name := fmt.Sprintf("ec%d", round)
		s, err := CreateStore[cell](name, StoreConfig{Slots: 8, Dir: dir, Watch: -1,
			Edges: []message.Policy{{MaxItems: 4}, {MaxItems: 4}}})
		must(t, err, "CreateStore")
		recvd := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := s.Edge(0).Recv(ctx)
			recvd <- err
		}()
		cmd, out := c2Start(t, "edgeclose", dir, name, "")
		c2Expect(t, out, "go")
		time.Sleep(time.Duration(round) * 50 * time.Microsecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		c2Recover(t, s)
		if !s.Edge(0).Closed() {
			must(t, s.Edge(0).Close(), "Close after the closer died")
		}
		select {
		case err := <-recvd:
			wantErr(t, err, message.ErrEdgeClosed, "parked Recv")
		case <-time.After(3 * time.Second):
			t.Fatalf("round %d: a Recv parked on the edge still waits after it was closed", round)
		}
		err = s.Edge(0).Close()
		wantErr(t, err, message.ErrEdgeClosed, "second Close")
		tok, err := s.Put(message.Header{}, cell{})
		must(t, err, "Put")
		must(t, s.Edge(1).TrySend(tok), "TrySend on the other edge")
		if got, ok := s.Edge(1).TryRecv(); !ok || got != tok {
			t.Fatalf("TryRecv on the other edge: %v %v", got, ok)
		}
		must(t, s.Free(tok), "Free")
		caBalance(t, s.Edge(0), "edge 0")
		if s.Available() != s.Capacity() {
			t.Fatalf("Available = %d", s.Available())
		}
		must(t, s.Close(), "Close")
	}
}

// TestCrash2KilledDuringRetain: a process received a message and Retains
// it in a loop when it is killed: all its references go, the message
// lives on with exactly this process's reference.
func TestCrash2KilledDuringRetain(t *testing.T) {
	dir := t.TempDir()
	s, err := CreateStore[cell]("ret", StoreConfig{Slots: 4, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: 4}}})
	must(t, err, "CreateStore")
	defer s.Close()
	for round := range 4 {
		var c cell
		c.fill(uint64(round + 9))
		tok, err := s.Put(message.Header{}, c)
		must(t, err, "Put")
		must(t, s.Retain(tok), "Retain")
		must(t, s.Edge(0).TrySend(tok), "TrySend")
		cmd, out := c2Start(t, "retain", dir, "ret", "")
		c2Expect(t, out, "go")
		time.Sleep(time.Duration(round+1) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		c2Recover(t, s)
		all, mine, err := s.Refs(tok)
		must(t, err, "Refs")
		if all != 1 || mine != 1 {
			t.Fatalf("round %d: Refs = %d, %d after the retainer died, want 1, 1", round, all, mine)
		}
		var bad bool
		must(t, s.View(tok, func(m *message.Message[cell]) { bad = !m.Payload.whole() || m.Payload.Stamp != uint64(round+9) }), "View")
		if bad {
			t.Fatal("payload changed")
		}
		must(t, s.Free(tok), "Free")
		if s.Available() != s.Capacity() {
			t.Fatalf("round %d: Available = %d", round, s.Available())
		}
		caBalance(t, s.Edge(0), "edge 0")
	}
}

// TestCrash2KilledDuringSendBatch: a process is killed in the middle of
// one SendBatch of many tokens into a DropOldest edge that evicts as it
// goes. Afterwards: counters balance, the queued tokens come out once
// each, whole and in order, and everything else is freed.
func TestCrash2KilledDuringSendBatch(t *testing.T) {
	n := 20000
	if raceEnabled {
		n = 8000
	}
	dir := t.TempDir()
	s, err := CreateStore[cell]("sb", StoreConfig{Slots: n + 8, Shards: 2, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: 256, Admission: message.DropOldest}}})
	must(t, err, "CreateStore")
	defer s.Close()
	e := s.Edge(0)
	lane := &e.ctl.lanes[laneBestEffort]
	landed := 0
	for round := range 4 {
		start := atomic.LoadUint64(&lane.tail)
		cmd, out := c2Start(t, "sendbatch", dir, "sb", strconv.Itoa(n))
		c2Expect(t, out, "go")
		target := start + uint64(n/4*(round+1))
		end := time.Now().Add(10 * time.Second)
		for atomic.LoadUint64(&lane.tail) < target {
			if time.Now().After(end) {
				t.Fatal("the child never sent")
			}
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if atomic.LoadUint64(&lane.tail)-start < uint64(n) {
			landed++
		}
		c2Recover(t, s)
		caBalance(t, e, fmt.Sprintf("round %d", round))
		if want := s.Capacity() - e.Len(); s.Available() != want {
			t.Fatalf("round %d: Available = %d, want %d (only the %d queued live)", round, s.Available(), want, e.Len())
		}
		var last uint64
		for {
			tok, ok := e.TryRecv()
			if !ok {
				break
			}
			var seq uint64
			var bad bool
			must(t, s.View(tok, func(m *message.Message[cell]) {
				seq, bad = m.Header.Seq, !m.Payload.whole() || m.Payload.Stamp != m.Header.Seq
			}), "View")
			if bad || seq <= last {
				t.Fatalf("round %d: token %v seq %d after %d, torn %v", round, tok, seq, last, bad)
			}
			last = seq
			must(t, s.Free(tok), "Free")
		}
		if s.Available() != s.Capacity() {
			t.Fatalf("round %d: Available = %d after receiving everything", round, s.Available())
		}
	}
	t.Logf("%d of 4 kills landed inside the SendBatch", landed)
}
