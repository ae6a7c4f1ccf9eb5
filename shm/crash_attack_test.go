package shm

// Crash-recovery attacks: child processes (re-executed test binaries, see
// TestMain and spawn in proc_test.go) are SIGKILLed at precise points, and
// the parent checks what recovery leaves behind against the documented
// promises. The child roles are dispatched from init (runChild in
// proc_test.go knows only its own roles): a role named crashattack.* runs
// here and exits before TestMain.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

const caPrefix = "crashattack."

// The child roles of this file run in a re-executed test binary
// (runChildRole).
var _ = registerChildRoles(caPrefix, caRunChild)

func caRunChild(role, dir, name, arg string) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "crashattack %s: "+format+"\n", append([]any{role}, args...)...)
		return exitBadError
	}
	switch role {
	case "sendone":
		// Put one message without a deadline and TrySend it on edge 0
		// (which the parent filled: admission reaps the expired entries),
		// then wait to be killed.
		s, err := AttachStore[cell](name, StoreConfig{Dir: dir, Watch: -1})
		if err != nil {
			return fail("attach: %v", err)
		}
		var c cell
		c.fill(1)
		tok, err := s.Put(message.Header{QoS: message.BestEffort}, c)
		if err != nil {
			return fail("put: %v", err)
		}
		fmt.Println("go")
		if err := s.Edge(0).TrySend(tok); err != nil {
			return fail("send: %v", err)
		}
		fmt.Println("done")
		sleepForever()
	case "recvall":
		// Receive everything queued on edge 0 in one RecvBatch, then wait
		// to be killed.
		s, err := AttachStore[cell](name, StoreConfig{Dir: dir, Watch: -1})
		if err != nil {
			return fail("attach: %v", err)
		}
		n, _ := strconv.Atoi(arg)
		dst := make([]token.Token, n)
		fmt.Println("go")
		if _, err := s.Edge(0).RecvBatch(context.Background(), dst); err != nil {
			return fail("recv: %v", err)
		}
		fmt.Println("done")
		sleepForever()
	case "holdall":
		// Hold everything at once: a message queued on edge 0 (MaxItems 1,
		// so full) that it also holds and keeps an Update on, a PutFunc
		// whose fill never returns, a Send blocked on the full edge 0, a
		// Recv parked on the empty edge 1; then wait to be killed.
		s, err := AttachStore[cell](name, StoreConfig{Dir: dir, Watch: -1})
		if err != nil {
			return fail("attach: %v", err)
		}
		var c cell
		c.fill(7)
		x, err := s.Put(message.Header{Seq: 7}, c)
		if err == nil {
			err = s.Retain(x)
		}
		if err == nil {
			err = s.Edge(0).TrySend(x)
		}
		c.fill(8)
		y, err2 := s.Put(message.Header{Seq: 8}, c)
		if err != nil || err2 != nil {
			return fail("setup: %v %v", err, err2)
		}
		ready := make(chan struct{}, 2)
		go s.Update(x, func(*message.Message[cell]) { ready <- struct{}{}; sleepForever() })
		go s.PutFunc(message.Header{}, func(*message.Message[cell]) error { ready <- struct{}{}; sleepForever(); return nil })
		<-ready
		<-ready
		go s.Edge(0).Send(context.Background(), y)
		go s.Edge(1).Recv(context.Background())
		for s.Edge(0).Stats().Waited == 0 {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(5 * time.Millisecond)
		fmt.Println("go")
		sleepForever()
	case "drain":
		// Drain edge 0, then wait to be killed.
		s, err := AttachStore[cell](name, StoreConfig{Dir: dir, Watch: -1})
		if err != nil {
			return fail("attach: %v", err)
		}
		fmt.Println("go")
		s.Edge(0).Drain()
		fmt.Println("done")
		sleepForever()
	}
	return fail("unknown role")
}

// caStart starts a crashattack child and returns it with a line reader of
// its stdout.
func caStart(t *testing.T, role, dir, name, arg string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	cmd := spawn(t, caPrefix+role, dir, name, arg)
	out, err := cmd.StdoutPipe()
	must(t, err, "stdout pipe")
	must(t, cmd.Start(), "start child")
	return cmd, bufio.NewReader(out)
}

func caLine(t *testing.T, r *bufio.Reader, want string) {
	t.Helper()
	l, err := r.ReadString('\n')
	if err != nil || strings.TrimSpace(l) != want {
		t.Fatalf("child said %q, %v; want %q", l, err, want)
	}
}

func caKill(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
}

// caRecover runs Recover, failing the test if it hangs.
func caRecover[P any](t *testing.T, s *Store[P]) Recovery {
	t.Helper()
	var rep Recovery
	var err error
	within(t, 20*time.Second, "Recover", func() { rep, err = s.Recover() })
	must(t, err, "Recover")
	return rep
}

// caBalance checks Admitted = Delivered + Evicted + Expired + Drained + Len.
func caBalance(t *testing.T, e *Edge, what string) {
	t.Helper()
	st := e.Stats()
	if st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained+uint64(st.Len) {
		t.Errorf("%s: edge counters do not balance: Admitted %d != Delivered %d + Evicted %d + Expired %d + Drained %d + Len %d",
			what, st.Admitted, st.Delivered, st.Evicted, st.Expired, st.Drained, st.Len)
	}
}

// caReceiveAll takes everything queued on e with TryRecv and checks that
// no token comes out twice and that every token names a live message this
// process now holds. It frees what it received and returns how many.
func caReceiveAll(t *testing.T, s *Store[cell], e *Edge) (n, dups, stale int) {
	t.Helper()
	seen := map[token.Token]int{}
	var got []token.Token
	for {
		tok, ok := e.TryRecv()
		if !ok {
			break
		}
		seen[tok]++
		got = append(got, tok)
		if len(got) > 4*s.Capacity() {
			t.Fatal("TryRecv never runs dry")
		}
	}
	for tok, k := range seen {
		if k > 1 {
			dups++
			if dups <= 3 {
				t.Errorf("token %v delivered %d times", tok, k)
			}
		}
		if err := s.View(tok, func(*message.Message[cell]) {}); err != nil {
			stale++
			if stale <= 3 {
				t.Errorf("token %v delivered but View says %v", tok, err)
			}
		}
	}
	for _, tok := range got {
		_ = s.Free(tok)
	}
	return len(got), dups, stale
}

// TestCrashAttackDeadReaperDuplicatesTokens: a Block edge full of messages,
// every other one expired. A process's TrySend reaps the expired ones: it
// releases each (dropping the edge's reference, freeing the slot) and
// copies each kept entry towards the head, and moves the lane's tail only
// at the end. The process is killed in the middle of that loop. Recovery
// counts the edge's references from [head, tail): the ring then still
// holds the entries of the messages already released (freed) and a second
// copy of those already moved. The doc promises no token is delivered
// twice, no stale token is handed out, and that each edge's counts are
// recomputed consistently.
func TestCrashAttackDeadReaperDuplicatesTokens(t *testing.T) {
	n := 40000
	if raceEnabled {
		n = 16000
	}
	dir := t.TempDir()
	s, err := CreateStore[cell]("reap", StoreConfig{Slots: n + 8, Shards: 2, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: n, Admission: message.Block}}})
	must(t, err, "CreateStore")
	defer s.Close()
	e := s.Edge(0)
	var c cell
	deadline := message.Now() + int64(1500*time.Millisecond)
	if raceEnabled {
		deadline = message.Now() + int64(3*time.Second)
	}
	for i := 0; i < n; i++ {
		c.fill(uint64(i + 1))
		h := message.Header{Seq: uint64(i + 1), QoS: message.BestEffort}
		if i%2 == 0 {
			h.Deadline = deadline
		}
		tok, err := s.Put(h, c)
		must(t, err, "Put")
		must(t, e.TrySend(tok), "TrySend")
	}
	if message.Now() >= deadline {
		t.Fatal("filling the edge took longer than the deadline")
	}
	for message.Now() <= deadline {
		time.Sleep(5 * time.Millisecond)
	}
	lane := &e.ctl.lanes[laneBestEffort]
	head := atomic.LoadUint64(&lane.head)
	first := atomic.LoadUint64(&e.entry(laneBestEffort, head).tok)
	cmd, r := caStart(t, "sendone", dir, "reap", "")
	caLine(t, r, "go")
	// The first entry (expired) is overwritten by the second (kept) once
	// the reaping loop has started: kill the child then.
	end := time.Now().Add(10 * time.Second)
	for atomic.LoadUint64(&e.entry(laneBestEffort, head).tok) == first {
		if time.Now().After(end) {
			t.Fatal("the child never started reaping")
		}
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	rep := caRecover(t, s)
	tail := atomic.LoadUint64(&lane.tail)
	t.Logf("Recover %+v; lane head %d tail %d (started with %d entries); Len %d", rep, head, tail, n, e.Len())
	caBalance(t, e, "after recovery")
	got, dups, stale := caReceiveAll(t, s, e)
	t.Logf("received %d tokens: %d delivered more than once, %d stale", got, dups, stale)
	if got > n/2+1 {
		t.Errorf("received %d tokens from an edge that held %d live ones (+1 the child may have sent)", got, n/2)
	}
	e.Drain()
	if s.Available() != s.Capacity() {
		t.Errorf("Available = %d after every token was received and freed, want %d", s.Available(), s.Capacity())
	}
}

// caFill puts n messages (no deadline) and sends them on e.
func caFill(t *testing.T, s *Store[cell], e *Edge, n int) {
	t.Helper()
	var c cell
	for i := 0; i < n; i++ {
		c.fill(uint64(i + 1))
		tok, err := s.Put(message.Header{Seq: uint64(i + 1), QoS: message.BestEffort}, c)
		must(t, err, "Put")
		must(t, e.TrySend(tok), "TrySend")
	}
}

// TestCrashAttackDeadDrainerCounters: a process killed in the middle of a
// long Drain. Every entry it popped left the queue (its head moved) and its
// message was freed, but Drained is only added at the end of the loop, so
// after recovery the edge's counters no longer balance: Admitted exceeds
// Delivered + Evicted + Expired + Drained + Len by the entries the dead
// process drained (message.EdgeStats: "The counters are exact").
func TestCrashAttackDeadDrainerCounters(t *testing.T) {
	n := 40000
	if raceEnabled {
		n = 16000
	}
	dir := t.TempDir()
	s, err := CreateStore[cell]("drain", StoreConfig{Slots: n, Shards: 2, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: n}}})
	must(t, err, "CreateStore")
	defer s.Close()
	e := s.Edge(0)
	caFill(t, s, e, n)
	lane := &e.ctl.lanes[laneBestEffort]
	cmd, r := caStart(t, "drain", dir, "drain", "")
	caLine(t, r, "go")
	end := time.Now().Add(10 * time.Second)
	for atomic.LoadUint64(&lane.head) == 0 {
		if time.Now().After(end) {
			t.Fatal("the child never started draining")
		}
	}
	caKill(cmd)
	rep := caRecover(t, s)
	st := e.Stats()
	t.Logf("Recover %+v; stats %+v", rep, st)
	if st.Len == 0 {
		t.Skip("the child drained everything before it was killed")
	}
	caBalance(t, e, "after a drainer died")
	e.Drain()
	if s.Available() != s.Capacity() {
		t.Errorf("Available = %d after Drain, want %d", s.Available(), s.Capacity())
	}
}

// caPhantom returns the slots that record i's reference table counts
// beyond its tableHigh: references recovery neither counted nor cleared.
func caPhantom(s *Store[cell], i int) []uint32 {
	a := s.a
	tab := a.store.table(i)
	high := atomic.LoadUint32(&a.record(i).tableHigh)
	var out []uint32
	for idx := high; idx < a.capacity; idx++ {
		if atomic.LoadUint32((*uint32)(unsafe.Add(tab, uintptr(idx)*4))) != 0 {
			out = append(out, idx)
		}
	}
	return out
}

// TestCrashAttackDeadReceiverLeavesPhantomReference: a process is killed
// while a RecvBatch moves tokens of ever higher slots into its reference
// table. refTable.add bumps the slot's count, then raises the record's
// tableHigh; killed in between, the count sits beyond tableHigh, where
// recovery's countRefs and clearRecord do not look, and claimRecord, which
// clears the table only up to tableHigh (reset to 0 by clearRecord), does
// not either. The next process to claim the record starts out holding a
// reference it never took (the doc: a process cannot Free a reference it
// does not hold; a new process does not inherit the dead's references):
// it can Free a message another process holds, freeing it under that
// process's feet. The kill must land in a window of a few instructions per
// token: the test tries up to 100 times.
func TestCrashAttackDeadReceiverLeavesPhantomReference(t *testing.T) {
	n := 30000
	attempts := 100
	if raceEnabled {
		n, attempts = 8000, 50
	}
	for k := 0; k < attempts; k++ {
		dir := t.TempDir()
		s, err := CreateStore[cell]("phantom", StoreConfig{Slots: n, Shards: 1, Dir: dir, Watch: -1,
			Edges: []message.Policy{{MaxItems: n}}})
		must(t, err, "CreateStore")
		e := s.Edge(0)
		caFill(t, s, e, n)
		lane := &e.ctl.lanes[laneBestEffort]
		cmd, r := caStart(t, "recvall", dir, "phantom", strconv.Itoa(n))
		caLine(t, r, "go")
		end := time.Now().Add(10 * time.Second)
		for atomic.LoadUint64(&lane.head) < 64 {
			if time.Now().After(end) {
				t.Fatal("the child never started receiving")
			}
		}
		caKill(cmd)
		caRecover(t, s)
		if s.a.me != 0 {
			t.Fatalf("parent has record %d, want 0", s.a.me)
		}
		ph := caPhantom(s, 1)
		if len(ph) == 0 {
			e.Drain()
			if s.Available() != s.Capacity() {
				t.Fatalf("attempt %d: Available = %d after Drain, want %d", k, s.Available(), s.Capacity())
			}
			must(t, s.Close(), "Close")
			continue
		}
		t.Logf("attempt %d: the dead receiver's record counts references to slots %v beyond its tableHigh", k, ph)
		// A new process (a second handle: its own OFD lock and record)
		// claims the dead child's record.
		b, err := AttachStore[cell]("phantom", StoreConfig{Dir: dir, Watch: -1})
		must(t, err, "AttachStore")
		if b.a.me != 1 {
			t.Fatalf("new handle took record %d, want 1", b.a.me)
		}
		// Free everything and Put until this process holds the phantom
		// slot's next message.
		e.Drain()
		var mine token.Token
		var held []token.Token
		for {
			tok, err := s.Put(message.Header{}, cell{})
			if err != nil {
				t.Fatalf("no Put landed on slot %d: %v", ph[0], err)
			}
			held = append(held, tok)
			if tok.Index() == ph[0] {
				mine = tok
				break
			}
		}
		all, bMine, err := b.Refs(mine)
		must(t, err, "Refs")
		if bMine != 0 {
			t.Errorf("a process that attached after the death holds %d references to %v, which it never took (all %d)", bMine, mine, all)
		}
		if err := b.Free(mine); !errors.Is(err, ErrNotHeld) {
			t.Errorf("Free by a process that never held %v: %v, want ErrNotHeld", mine, err)
		}
		if err := s.View(mine, func(*message.Message[cell]) {}); err != nil {
			t.Errorf("the Putting process's own message %v after the other's Free: %v", mine, err)
		}
		_ = b.Close()
		for _, tok := range held {
			_ = s.Free(tok)
		}
		_ = s.Close()
		return
	}
	t.Logf("no kill of %d landed between the two steps of refTable.add", attempts)
}

// TestCrashAttackDeadHolderOfEverything: a process killed while it holds
// an Update on a message queued on an edge, a PutFunc in its fill, a Send
// blocked on a full Block edge and a Recv parked on an empty one. The
// parent's Update of the queued message, waiting on the dead writer, goes
// through by itself (no watcher, no Recover call); the queued message
// survives intact (the edge's reference), the dead's references, its fill
// slot and the message it was sending are freed, and the edges balance.
func TestCrashAttackDeadHolderOfEverything(t *testing.T) {
	dir := t.TempDir()
	s, err := CreateStore[cell]("all", StoreConfig{Slots: 8, Shards: 2, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: 1}, {MaxItems: 4}}})
	must(t, err, "CreateStore")
	defer s.Close()
	cmd, r := caStart(t, "holdall", dir, "all", "")
	caLine(t, r, "go")
	if got := s.Available(); got != s.Capacity()-3 {
		t.Fatalf("Available = %d with the child holding 3 slots, want %d", got, s.Capacity()-3)
	}
	// The queued message, seen through the edge's ring.
	x := token.Token(atomic.LoadUint64(&s.Edge(0).entry(laneBestEffort, 0).tok))
	updated := make(chan error, 1)
	go func() {
		updated <- s.Update(x, func(m *message.Message[cell]) { m.Header.Trace = 99 })
	}()
	select {
	case err := <-updated:
		t.Fatalf("Update returned %v while the child held the writer bit", err)
	case <-time.After(30 * time.Millisecond):
	}
	caKill(cmd)
	select {
	case err := <-updated:
		must(t, err, "Update after the writer died")
	case <-time.After(10 * time.Second):
		t.Fatal("Update still waiting 10s after the writer died")
	}
	rep := caRecover(t, s) // the Update's own recovery did the work
	if st := s.Stats(); st.Recoveries != 1 || st.Processes != 1 {
		t.Errorf("after the death: %+v (Recover %+v), want 1 recovery and 1 process", st, rep)
	}
	e0, e1 := s.Edge(0), s.Edge(1)
	if e0.Len() != 1 || e1.Len() != 0 {
		t.Fatalf("Len = %d, %d, want 1, 0", e0.Len(), e1.Len())
	}
	if got := s.Available(); got != s.Capacity()-1 {
		t.Errorf("Available = %d, want %d: only the queued message lives", got, s.Capacity()-1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := e0.Recv(ctx)
	must(t, err, "Recv")
	if got != x {
		t.Fatalf("received %v, want %v", got, x)
	}
	if all, mine, err := s.Refs(got); err != nil || all != 1 || mine != 1 {
		t.Fatalf("Refs = %d, %d, %v, want 1, 1", all, mine, err)
	}
	var bad bool
	must(t, s.View(got, func(m *message.Message[cell]) {
		bad = m.Payload.Stamp != 7 || !m.Payload.whole() || m.Header.Trace != 99
	}), "View")
	if bad {
		t.Error("the queued message's payload or the survivor's update was lost")
	}
	must(t, s.Free(got), "Free")
	// Both edges work: a Send fills edge 0, a Recv takes it.
	tok, err := s.Put(message.Header{}, cell{})
	must(t, err, "Put")
	must(t, e1.Send(ctx, tok), "Send on the edge the dead receiver parked on")
	if got, err := e1.Recv(ctx); err != nil || got != tok {
		t.Fatalf("Recv = %v, %v", got, err)
	}
	must(t, s.Free(tok), "Free")
	if s.Available() != s.Capacity() {
		t.Errorf("Available = %d, want %d", s.Available(), s.Capacity())
	}
	caBalance(t, e0, "edge 0")
	caBalance(t, e1, "edge 1")
}
