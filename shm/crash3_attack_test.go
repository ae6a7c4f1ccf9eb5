package shm

// Crash attacks, third round: the shared edge paths under SIGKILL. Batches
// (SendBatch, RecvBatch) across processes, DeadlineQoS admission (soft caps
// shedding Background, deadlines expiring, DegradeAllowed delivered late),
// the LatencyCritical lane against the merged BestEffort/Background lane,
// byte caps, DropOldest eviction, Block senders and receivers parked across
// processes when their peer dies, Close of an edge while a peer is blocked
// on it, and a receiver killed holding the edge lock in the middle of a
// batch. After every kill and recovery: conservation (every message put is
// received once, or counted out, or still queued; the store's live count
// matches), the counters' identity, no token twice, FIFO order within a
// lane in every survivor's view. Child roles are named crash3.* and
// dispatched by runChildRole.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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

	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

const c3Prefix = "crash3."

var _ = registerChildRoles(c3Prefix, c3RunChild)

// c3Kind is what a test message's sequence number says about its header:
// the low 3 bits of its counter pick one of these.
type c3Kind struct {
	qos     message.QoS
	dl      time.Duration // deadline from Put (0: none)
	degrade bool
	size    uint32
}

var c3Kinds = [8]c3Kind{
	{qos: message.LatencyCritical, size: 100},
	{qos: message.BestEffort, size: 150},
	{qos: message.Background, size: 120},
	{qos: message.BestEffort, dl: 2 * time.Millisecond, size: 90},
	{qos: message.Background, dl: time.Millisecond, degrade: true, size: 200},
	{qos: message.LatencyCritical, dl: 3 * time.Millisecond, size: 60},
	{qos: message.BestEffort, size: 900},
	{qos: message.Background, dl: 500 * time.Microsecond, size: 80},
}

// c3Header is the header of message seq (producer id<<40 | counter).
func c3Header(seq uint64) message.Header {
	k := c3Kinds[seq&7]
	h := message.Header{Seq: seq, QoS: k.qos, Size: k.size}
	if k.dl != 0 {
		h.Deadline = message.Now() + int64(k.dl)
	}
	if k.degrade {
		h.Flags = message.DegradeAllowed
	}
	return h
}

func c3Critical(seq uint64) bool { return c3Kinds[seq&7].qos == message.LatencyCritical }

// c3Order checks FIFO within a lane for one receiver: per producer, the
// LatencyCritical messages and the others (BestEffort and Background share
// one lane in admission order) each come in increasing sequence.
type c3Order struct {
	last map[uint64]*[2]uint64 // producer -> last seq seen [critical, other]
}

func (o *c3Order) see(seq uint64) error {
	if o.last == nil {
		o.last = map[uint64]*[2]uint64{}
	}
	p := seq >> 40
	l := o.last[p]
	if l == nil {
		l = new([2]uint64)
		o.last[p] = l
	}
	i := 1
	if c3Critical(seq) {
		i = 0
	}
	if seq <= l[i] {
		return fmt.Errorf("lane order broken: producer %d, seq %#x after %#x (critical %v)", p, seq, l[i], i == 0)
	}
	l[i] = seq
	return nil
}

// c3Check views a received token: whole, its stamp its Seq; returns Seq.
// t0 is message.Now() read before the receive began: a message without
// DegradeAllowed whose deadline was before it was delivered past its
// deadline ("never delivered", message/doc.go).
func c3Check(s *Store[cell], tok token.Token, t0 int64) (uint64, error) {
	var seq uint64
	var bad bool
	var h message.Header
	err := s.View(tok, func(m *message.Message[cell]) {
		seq, h = m.Header.Seq, m.Header
		bad = !m.Payload.whole() || m.Payload.Stamp != m.Header.Seq
	})
	if err != nil {
		return 0, fmt.Errorf("View %v: %w", tok, err)
	}
	if bad {
		return seq, fmt.Errorf("token %v (seq %#x): torn payload", tok, seq)
	}
	if h.Deadline != 0 && !h.Flags.Has(message.DegradeAllowed) && h.Deadline < t0 {
		return seq, fmt.Errorf("token %v (seq %#x): delivered %v past its deadline without DegradeAllowed", tok, seq, time.Duration(t0-h.Deadline))
	}
	return seq, nil
}

func c3RunChild(role, dir, name, arg string) int {
	fail := func(code int, format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "crash3 %s: "+format+"\n", append([]any{role}, args...)...)
		return code
	}
	s, err := AttachStore[cell](name, StoreConfig{Dir: dir, Watch: -1})
	if err != nil {
		return fail(exitBadError, "attach: %v", err)
	}
	out := bufio.NewWriter(os.Stdout)
	say := func(format string, args ...any) {
		fmt.Fprintf(out, format+"\n", args...)
		_ = out.Flush()
	}
	switch role {
	case "recv":
		// Receive from edge 0 in batches, check each token and the lane
		// order, report every Seq received ("r seq seq ..."), Free.
		e := s.Edge(0)
		rng := rand.New(rand.NewPCG(uint64(os.Getpid()), 3))
		dst := make([]token.Token, 16)
		var ord c3Order
		say("go")
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			t0 := message.Now()
			n, err := e.RecvBatch(ctx, dst[:1+rng.IntN(len(dst))])
			cancel()
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				return fail(exitBadError, "RecvBatch: %v", err)
			}
			var b strings.Builder
			b.WriteString("r")
			for _, tok := range dst[:n] {
				seq, err := c3Check(s, tok, t0)
				if err != nil {
					return fail(exitCorrupt, "%v", err)
				}
				if err := ord.see(seq); err != nil {
					return fail(exitCorrupt, "%v", err)
				}
				fmt.Fprintf(&b, " %d", seq)
				if err := s.Free(tok); err != nil {
					return fail(exitBadError, "Free: %v", err)
				}
			}
			if n > 0 {
				say("%s", b.String())
			}
		}
	case "produce":
		// Put batches of messages of every kind; SendBatch them to edge 0
		// (DropOldest: never refuses) and to edge 1 (Block: waits 20ms at
		// most, then frees what it could not send). Until killed.
		id, _ := strconv.ParseUint(arg, 10, 64)
		rng := rand.New(rand.NewPCG(id, uint64(os.Getpid())))
		ctr := uint64(0)
		say("go")
		for {
			for _, ei := range [3]int{0, 1, 2} {
				var ts []token.Token
				for range 1 + rng.IntN(8) {
					ctr++
					seq := id<<40 | ctr
					h := c3Header(seq)
					if ei == 1 {
						h.QoS, h.Deadline, h.Flags = message.BestEffort, 0, 0
					}
					var c cell
					c.fill(seq)
					tok, err := s.Put(h, c)
					if errors.Is(err, ErrFull) {
						break
					}
					if err != nil {
						return fail(exitBadError, "Put: %v", err)
					}
					ts = append(ts, tok)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
				n, err := s.Edge(ei).SendBatch(ctx, ts)
				cancel()
				switch {
				case err == nil:
				case ei == 1 && errors.Is(err, context.DeadlineExceeded):
				case ei == 0 && errors.Is(err, message.ErrExpired): // a deadline of 500us passed before the send
				case ei == 2 && errors.Is(err, message.ErrRejected): // shed, no victim, or expired
				default:
					return fail(exitBadError, "SendBatch edge %d: %d of %d, %v", ei, n, len(ts), err)
				}
				for _, tok := range ts[n:] {
					if err := s.Free(tok); err != nil {
						return fail(exitBadError, "Free unsent: %v", err)
					}
				}
			}
			if ctr > 1<<30 {
				return 0
			}
		}
	case "recvsome":
		// Receive arg tokens from edge 0, report, hold them until killed.
		k, _ := strconv.Atoi(arg)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for range k {
			if _, err := s.Edge(0).Recv(ctx); err != nil {
				return fail(exitBadError, "Recv: %v", err)
			}
		}
		say("got")
		sleepForever()
	case "blocked":
		// Put 5 and SendBatch them to edge 0 (Block, MaxItems 2): it parks;
		// a Recv parks on the empty edge 1 meanwhile. Report how each
		// ends (the parent closes both edges), then what it still holds.
		ts := make([]token.Token, 5)
		for i := range ts {
			var c cell
			c.fill(uint64(500 + i))
			tok, err := s.Put(message.Header{Seq: uint64(500 + i)}, c)
			if err != nil {
				return fail(exitBadError, "Put: %v", err)
			}
			ts[i] = tok
		}
		recvd := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
			defer cancel()
			_, err := s.Edge(1).Recv(ctx)
			recvd <- err
		}()
		sent := make(chan string, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
			defer cancel()
			n, err := s.Edge(0).SendBatch(ctx, ts)
			held := 0
			for _, tok := range ts[n:] {
				if _, mine, err := s.Refs(tok); err == nil && mine == 1 {
					held++
				}
			}
			sent <- fmt.Sprintf("send %d %v %d", n, errors.Is(err, message.ErrEdgeClosed), held)
		}()
		for s.Edge(0).Stats().Waited == 0 {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(30 * time.Millisecond) // past the spin: both park on their futex
		say("go")
		say("%s", <-sent)
		err := <-recvd
		say("recv %v", errors.Is(err, message.ErrEdgeClosed))
		sleepForever()
	case "recvhuge":
		// One RecvBatch of arg tokens from edge 0: it holds the lock for
		// all of them.
		n, _ := strconv.Atoi(arg)
		dst := make([]token.Token, n)
		say("go")
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if _, err := s.Edge(0).RecvBatch(ctx, dst); err != nil {
			return fail(exitBadError, "RecvBatch: %v", err)
		}
		say("done")
		sleepForever()
	}
	return fail(exitBadError, "unknown role")
}

// c3Child is a running child with its stdout collected line by line.
type c3Child struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	eof   chan struct{}
}

func c3Start(t *testing.T, role, dir, name, arg string) *c3Child {
	t.Helper()
	c := &c3Child{cmd: spawn(t, c3Prefix+role, dir, name, arg), eof: make(chan struct{})}
	out, err := c.cmd.StdoutPipe()
	must(t, err, "stdout pipe")
	must(t, c.cmd.Start(), "start child")
	go func() {
		defer close(c.eof)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<16), 1<<20)
		for sc.Scan() {
			c.mu.Lock()
			c.lines = append(c.lines, sc.Text())
			c.mu.Unlock()
		}
	}()
	return c
}

// await waits until the child said want (a line starting with it) and
// returns that line.
func (c *c3Child) await(t *testing.T, want string, d time.Duration) string {
	t.Helper()
	end := time.Now().Add(d)
	for {
		c.mu.Lock()
		for _, l := range c.lines {
			if strings.HasPrefix(l, want) {
				c.mu.Unlock()
				return l
			}
		}
		c.mu.Unlock()
		select {
		case <-c.eof:
			c.mu.Lock()
			for _, l := range c.lines {
				if strings.HasPrefix(l, want) {
					c.mu.Unlock()
					return l
				}
			}
			c.mu.Unlock()
			t.Fatalf("child %s exited (%v) without saying %q", c.cmd.Env[len(c.cmd.Env)-4], c.cmd.Wait(), want)
		default:
		}
		if time.Now().After(end) {
			t.Fatalf("child did not say %q within %v", want, d)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// kill SIGKILLs the child, waits for its output to end and for it, and
// fails the test if it had exited on its own with an error.
func (c *c3Child) kill(t *testing.T) {
	t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-c.eof:
	case <-time.After(10 * time.Second):
		t.Fatal("child's stdout never closed after SIGKILL")
	}
	if err := c.cmd.Wait(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != -1 {
			t.Errorf("child failed on its own: %v", err)
		}
	}
}

// received parses the child's "r ..." lines.
func (c *c3Child) received(t *testing.T) []uint64 {
	t.Helper()
	var seqs []uint64
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.lines {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != "r" {
			continue
		}
		for _, x := range f[1:] {
			v, err := strconv.ParseUint(x, 10, 64)
			if err != nil {
				t.Fatalf("child line %q: %v", l, err)
			}
			seqs = append(seqs, v)
		}
	}
	return seqs
}

// c3Within is within with a goroutine dump when fn hangs.
func c3Within(t testing.TB, d time.Duration, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(d):
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		t.Fatalf("%s did not finish within %v (a hang); goroutines:\n%s", what, d, buf[:n])
	}
}

func c3Recover(t *testing.T, s *Store[cell]) Recovery {
	t.Helper()
	var rep Recovery
	var err error
	c3Within(t, 10*time.Second, "Recover", func() { rep, err = s.Recover() })
	must(t, err, "Recover")
	return rep
}

// c3Identity checks Admitted = Delivered + Evicted + Expired + Drained + Len
// and the caps; it returns the stats.
func c3Identity(t *testing.T, e *Edge, what string) message.EdgeStats {
	t.Helper()
	st := e.Stats()
	if st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained+uint64(st.Len) {
		t.Errorf("%s: Admitted %d != Delivered %d + Evicted %d + Expired %d + Drained %d + Len %d",
			what, st.Admitted, st.Delivered, st.Evicted, st.Expired, st.Drained, st.Len)
	}
	p := e.Policy()
	if p.MaxItems > 0 && (st.Len > p.MaxItems || st.HighWater > p.MaxItems) {
		t.Errorf("%s: Len %d, HighWater %d over MaxItems %d", what, st.Len, st.HighWater, p.MaxItems)
	}
	if p.MaxBytes > 0 && st.Bytes > p.MaxBytes {
		t.Errorf("%s: Bytes %d over MaxBytes %d", what, st.Bytes, p.MaxBytes)
	}
	if st.Len < 0 || st.Bytes < 0 || (st.Len == 0) != (st.Bytes == 0) {
		t.Errorf("%s: Len %d, Bytes %d", what, st.Len, st.Bytes)
	}
	return st
}

// c3Ledger is this process's record of every message it put and what
// became of it, for the conservation checks.
type c3Ledger struct {
	mu       sync.Mutex
	sent     map[uint64]bool // admitted by a send of this process
	refused  map[uint64]bool // put, never admitted (refused, or after the refused one)
	received map[uint64]string
	dups     []string
	errs     []string
}

func newLedger() *c3Ledger {
	return &c3Ledger{sent: map[uint64]bool{}, refused: map[uint64]bool{}, received: map[uint64]string{}}
}

func (l *c3Ledger) got(seq uint64, who string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if prev, ok := l.received[seq]; ok {
		l.dups = append(l.dups, fmt.Sprintf("seq %#x received by %s and by %s", seq, prev, who))
		return
	}
	l.received[seq] = who
}

func (l *c3Ledger) fail(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < 20 {
		l.errs = append(l.errs, fmt.Sprintf(format, args...))
	}
}

// report fails the test on what the ledger collected.
func (l *c3Ledger) report(t *testing.T, what string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, d := range l.dups {
		if i < 5 {
			t.Errorf("%s: delivered twice: %s", what, d)
		}
	}
	for _, e := range l.errs {
		t.Errorf("%s: %s", what, e)
	}
	for seq, who := range l.received {
		if l.refused[seq] {
			t.Errorf("%s: seq %#x was refused (the sender kept it and freed it) but %s received it", what, seq, who)
		}
	}
	if len(l.dups) > 0 || len(l.errs) > 0 {
		t.FailNow()
	}
}

// c3Receiver receives from e in this process until stop is closed,
// checking each token and the lane order, and records what it got.
func c3Receiver(s *Store[cell], e *Edge, led *c3Ledger, ord *c3Order, who string, stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	dst := make([]token.Token, 8)
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		t0 := message.Now()
		n, err := e.RecvBatch(ctx, dst[:1+i%len(dst)])
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			led.fail("%s: RecvBatch: %v", who, err)
			return
		}
		for _, tok := range dst[:n] {
			seq, err := c3Check(s, tok, t0)
			if err != nil {
				led.fail("%s: %v", who, err)
			} else if err := ord.see(seq); err != nil {
				led.fail("%s: %v", who, err)
			}
			led.got(seq, who)
			if err := s.Free(tok); err != nil {
				led.fail("%s: Free: %v", who, err)
			}
		}
	}
}

// c3Collect takes everything queued on e (TryRecv), checking as
// c3Receiver does plus the lane rule of a quiet edge: every
// LatencyCritical message before any other.
func c3Collect(t *testing.T, s *Store[cell], e *Edge, led *c3Ledger, ord *c3Order, who string) int {
	t.Helper()
	n := 0
	other := false
	for {
		t0 := message.Now()
		tok, ok := e.TryRecv()
		if !ok {
			break
		}
		n++
		if n > 4*s.Capacity() {
			t.Fatal("TryRecv never runs dry")
		}
		seq, err := c3Check(s, tok, t0)
		if err != nil {
			t.Errorf("%s: %v", who, err)
		} else if err := ord.see(seq); err != nil {
			t.Errorf("%s: %v", who, err)
		}
		if crit := c3Kinds[seq&7].qos == message.LatencyCritical && e.Policy().Admission != message.Block; crit && other {
			t.Errorf("%s: LatencyCritical seq %#x received after a lower-QoS message on a quiet edge", who, seq)
		} else if !crit {
			other = true
		}
		led.got(seq, who)
		must(t, s.Free(tok), "Free collected")
	}
	return n
}

// TestCrash3QoSReceiversKilled: this process puts messages of every kind
// (LatencyCritical, BestEffort, Background; deadlines that expire within
// milliseconds, DegradeAllowed ones, sizes against the byte caps) and
// SendBatches them into a DeadlineQoS edge with item and byte soft and
// hard caps, while it and two child processes receive with RecvBatch. The
// children are SIGKILLed at random moments, in the middle of batches (so
// while they hold the edge lock, or hold messages). This process keeps
// sending and receiving through the kills (it must get past a lock a dead
// process held on its own). After each round: Admitted is exactly what
// this process's sends admitted; the counters balance; what is queued is
// all that lives; nobody received a message twice or a refused one; every
// receiver saw each lane in FIFO order; once drained, every slot is free.
func TestCrash3QoSReceiversKilled(t *testing.T) {
	dir := t.TempDir()
	s, err := CreateStore[cell]("qos", StoreConfig{Slots: 512, Shards: 4, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: 64, SoftItems: 40, MaxBytes: 64 * 256, SoftBytes: 40 * 256, Admission: message.DeadlineQoS}}})
	must(t, err, "CreateStore")
	defer s.Close()
	e := s.Edge(0)
	led := newLedger()
	var ord c3Order
	var degradeSent, expirableSent uint64
	rounds := 6
	if raceEnabled {
		rounds = 3
	}
	rng := rand.New(rand.NewPCG(11, uint64(time.Now().UnixNano())))
	ctr := uint64(0)
	kills := 0
	var reported int
	for round := range rounds {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(2)
		go c3Receiver(s, e, led, &ord, "parent", stop, &wg)
		go func() { // the producer
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var ts []token.Token
				var seqs []uint64
				for range 1 + int(ctr%7) {
					ctr++
					seq := 1<<40 | ctr
					var c cell
					c.fill(seq)
					tok, err := s.Put(c3Header(seq), c)
					if errors.Is(err, ErrFull) {
						time.Sleep(100 * time.Microsecond)
						break
					}
					if err != nil {
						led.fail("Put: %v", err)
						return
					}
					ts, seqs = append(ts, tok), append(seqs, seq)
				}
				n, err := e.SendBatch(context.Background(), ts)
				if err != nil && !errors.Is(err, message.ErrRejected) {
					led.fail("SendBatch: %d of %d: %v", n, len(ts), err)
				}
				led.mu.Lock()
				for i, seq := range seqs {
					if i < n {
						led.sent[seq] = true
						k := c3Kinds[seq&7]
						if k.degrade {
							degradeSent++
						} else if k.dl != 0 {
							expirableSent++
						}
					} else {
						led.refused[seq] = true
					}
				}
				led.mu.Unlock()
				for _, tok := range ts[n:] {
					if err := s.Free(tok); err != nil {
						led.fail("Free refused: %v", err)
					}
				}
				if ctr%64 == 0 {
					// A snapshot under the lock is a quiet moment: it balances.
					if st := e.Stats(); st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained+uint64(st.Len) {
						led.fail("snapshot does not balance: %+v", st)
					}
					time.Sleep(50 * time.Microsecond) // let the receivers keep up now and then
				}
			}
		}()
		a := c3Start(t, "recv", dir, "qos", "")
		b := c3Start(t, "recv", dir, "qos", "")
		a.await(t, "go", 20*time.Second)
		b.await(t, "go", 20*time.Second)
		time.Sleep(time.Duration(2000+rng.IntN(30000)) * time.Microsecond)
		a.kill(t)
		time.Sleep(time.Duration(rng.IntN(10000)) * time.Microsecond)
		b.kill(t)
		kills += 2
		// Keep going past the deaths: this process's own operations must
		// find their way past whatever the dead left locked.
		time.Sleep(30 * time.Millisecond)
		close(stop)
		c3Within(t, 10*time.Second, fmt.Sprintf("round %d: producer and receiver after the kills", round), wg.Wait)
		for _, c := range []*c3Child{a, b} {
			for _, seq := range c.received(t) {
				led.got(seq, fmt.Sprintf("child %d", c.cmd.Process.Pid))
				reported++
			}
		}
		c3Recover(t, s)
		st := c3Identity(t, e, fmt.Sprintf("round %d", round))
		led.mu.Lock()
		nsent := len(led.sent)
		led.mu.Unlock()
		if st.Admitted != uint64(nsent) {
			t.Errorf("round %d: Admitted %d, but this process (the only sender) had %d sends admitted", round, st.Admitted, nsent)
		}
		if live := s.Capacity() - s.Available(); live != st.Len {
			t.Errorf("round %d: %d messages live, %d queued (every process that received one is dead or freed it)", round, live, st.Len)
		}
		if st.Expired > expirableSent || st.Late > degradeSent {
			t.Errorf("round %d: Expired %d of %d that could expire, Late %d of %d DegradeAllowed", round, st.Expired, expirableSent, st.Late, degradeSent)
		}
		got := c3Collect(t, s, e, led, &ord, "parent drain")
		if exp := e.Stats().Expired - st.Expired; uint64(got)+exp != uint64(st.Len) {
			t.Errorf("round %d: collected %d and %d expired meanwhile, Len was %d", round, got, exp, st.Len)
		}
		led.report(t, fmt.Sprintf("round %d", round))
		led.mu.Lock()
		recv := len(led.received)
		for seq := range led.received {
			if !led.sent[seq] {
				t.Errorf("round %d: seq %#x received, never admitted", round, seq)
			}
		}
		led.mu.Unlock()
		st = c3Identity(t, e, fmt.Sprintf("round %d drained", round))
		// Conservation: every admitted message was received by someone,
		// or counted out. Receipts a killed child made but did not report
		// yet are at most one batch (16) per kill.
		counted := st.Delivered + st.Evicted + st.Expired + st.Drained
		if counted != st.Admitted || uint64(recv) > st.Delivered || st.Delivered-uint64(recv) > uint64(16*kills) {
			t.Errorf("round %d: admitted %d; delivered %d (%d seen by receivers), evicted %d, expired %d, drained %d",
				round, st.Admitted, st.Delivered, recv, st.Evicted, st.Expired, st.Drained)
		}
		if s.Available() != s.Capacity() {
			t.Fatalf("round %d: Available %d of %d after the edge was drained", round, s.Available(), s.Capacity())
		}
		t.Logf("round %d: %+v; children reported %d", round, st, reported)
	}
}

// TestCrash3ProducersKilled: two child processes put messages of every
// kind and SendBatch them into a DropOldest edge with item and byte caps
// (edge 0) and a Block edge (edge 1), while this process receives both with
// RecvBatch, checking each producer's lane order, the caps, and the
// payloads. The producers are SIGKILLed at random moments (one, then the
// other, or both at once) while this process keeps receiving. Afterwards:
// the counters balance, only the queued messages live, the queues come out
// once each and in order, and then every slot is free.
func TestCrash3ProducersKilled(t *testing.T) {
	dir := t.TempDir()
	s, err := CreateStore[cell]("prod", StoreConfig{Slots: 1024, Shards: 4, Dir: dir, Watch: -1,
		Edges: []message.Policy{
			{MaxItems: 48, MaxBytes: 48 * 200, SoftBytes: 24 * 200, Admission: message.DropOldest},
			{MaxItems: 16, SoftItems: 8},
			{MaxItems: 32, SoftItems: 16, MaxBytes: 32 * 300, SoftBytes: 16 * 300, Admission: message.DeadlineQoS},
		}})
	must(t, err, "CreateStore")
	defer s.Close()
	rounds := 6
	if raceEnabled {
		rounds = 3
	}
	rng := rand.New(rand.NewPCG(13, uint64(time.Now().UnixNano())))
	led := newLedger()
	var ords [3]c3Order
	for round := range rounds {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(4)
		go c3Receiver(s, s.Edge(0), led, &ords[0], "parent e0", stop, &wg)
		go c3Receiver(s, s.Edge(1), led, &ords[1], "parent e1", stop, &wg)
		go c3Receiver(s, s.Edge(2), led, &ords[2], "parent e2", stop, &wg)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
				}
				for i, e := range s.Edges() {
					p := e.Policy()
					st := e.Stats()
					if st.Len > p.MaxItems || p.MaxBytes > 0 && st.Bytes > p.MaxBytes {
						led.fail("edge %d over its caps: Len %d, Bytes %d", i, st.Len, st.Bytes)
					}
					// Every counter of the identity moves under the edge
					// lock, and Stats reads under it (recovering first if
					// a dead process holds it): a snapshot is a quiet moment.
					if st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained+uint64(st.Len) {
						led.fail("edge %d: snapshot does not balance: %+v", i, st)
					}
				}
			}
		}()
		id := uint64(2*round + 2)
		a := c3Start(t, "produce", dir, "prod", strconv.FormatUint(id, 10))
		b := c3Start(t, "produce", dir, "prod", strconv.FormatUint(id+1, 10))
		a.await(t, "go", 20*time.Second)
		b.await(t, "go", 20*time.Second)
		time.Sleep(time.Duration(3000+rng.IntN(30000)) * time.Microsecond)
		if round%2 == 0 {
			_ = a.cmd.Process.Signal(syscall.SIGKILL)
			_ = b.cmd.Process.Signal(syscall.SIGKILL)
		} else {
			_ = a.cmd.Process.Signal(syscall.SIGKILL)
			time.Sleep(time.Duration(rng.IntN(8000)) * time.Microsecond)
		}
		a.kill(t)
		b.kill(t)
		time.Sleep(30 * time.Millisecond) // receive past the deaths
		close(stop)
		c3Within(t, 10*time.Second, fmt.Sprintf("round %d: receivers after the kills", round), wg.Wait)
		c3Recover(t, s)
		var queued int
		for i, e := range s.Edges() {
			st := c3Identity(t, e, fmt.Sprintf("round %d edge %d", round, i))
			queued += st.Len
		}
		if live := s.Capacity() - s.Available(); live != queued {
			t.Errorf("round %d: %d messages live after both producers died, %d queued", round, live, queued)
		}
		for i, e := range s.Edges() {
			c3Collect(t, s, e, led, &ords[i], fmt.Sprintf("drain e%d", i))
			st := c3Identity(t, e, fmt.Sprintf("round %d edge %d drained", round, i))
			if st.Len != 0 {
				t.Errorf("round %d edge %d: Len %d after TryRecv ran dry", round, i, st.Len)
			}
		}
		led.report(t, fmt.Sprintf("round %d", round))
		if s.Available() != s.Capacity() {
			t.Fatalf("round %d: Available %d of %d after the edges were drained", round, s.Available(), s.Capacity())
		}
		t.Logf("round %d: e0 %+v", round, s.Edge(0).Stats())
	}
	led.mu.Lock()
	t.Logf("%d messages received in all", len(led.received))
	led.mu.Unlock()
}

// TestCrash3BlockedSenderReceiverDies: this process's SendBatch on a full
// Block edge is parked; a receiver in another process takes two messages
// (the sender gets room for two more, then parks again) and is killed. The
// sender's wait is bounded by its context, not by the dead: it returns
// what it sent and ctx's error, keeps the rest, and the edge's counters
// say so. The dead receiver's two messages are freed by the recovery.
func TestCrash3BlockedSenderReceiverDies(t *testing.T) {
	dir := t.TempDir()
	s, err := CreateStore[cell]("blk", StoreConfig{Slots: 32, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: 4}}})
	must(t, err, "CreateStore")
	defer s.Close()
	e := s.Edge(0)
	ts := make([]token.Token, 12)
	for i := range ts {
		var c cell
		c.fill(uint64(i + 1))
		tok, err := s.Put(message.Header{Seq: uint64(i + 1)}, c)
		must(t, err, "Put")
		ts[i] = tok
	}
	type res struct {
		n   int
		err error
	}
	done := make(chan res, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		n, err := e.SendBatch(ctx, ts)
		done <- res{n, err}
	}()
	c3Within(t, 5*time.Second, "the sender filling the edge", func() {
		for e.Stats().Waited == 0 || e.Len() != 4 {
			time.Sleep(time.Millisecond)
		}
	})
	r := c3Start(t, "recvsome", dir, "blk", "2")
	r.await(t, "got", 20*time.Second)
	c3Within(t, 5*time.Second, "the parked sender taking the room the receiver made", func() {
		for e.Stats().Admitted != 6 {
			time.Sleep(time.Millisecond)
		}
	})
	r.kill(t)
	var got res
	c3Within(t, 8*time.Second, "SendBatch parked on a full edge whose receiver died", func() { got = <-done })
	if got.n != 6 || !errors.Is(got.err, context.DeadlineExceeded) {
		t.Errorf("SendBatch = %d, %v; want 6, context.DeadlineExceeded", got.n, got.err)
	}
	for i, tok := range ts {
		all, mine, err := s.Refs(tok)
		switch {
		case i < 2: // received by the dead process: freed by recovery, or still counted until it runs
		case i < 6:
			if err != nil || all != 1 || mine != 0 {
				t.Errorf("token %d (queued): Refs %d %d %v, want 1 0", i, all, mine, err)
			}
		default:
			if err != nil || all != 1 || mine != 1 {
				t.Errorf("token %d (not sent): Refs %d %d %v, want 1 1 (the caller keeps ts[n:])", i, all, mine, err)
			}
		}
	}
	rep := c3Recover(t, s)
	if rep.Dead != 1 || rep.Reclaimed != 2 {
		t.Errorf("Recover = %+v, want 1 dead, 2 reclaimed (the dead receiver's messages)", rep)
	}
	st := c3Identity(t, e, "after the receiver died")
	if st.Admitted != 6 || st.Delivered != 2 || st.Len != 4 || st.Waited < 1 || st.Rejected < 1 {
		t.Errorf("stats %+v; want 6 admitted, 2 delivered, 4 queued, waited and rejected", st)
	}
	for i, tok := range ts[6:] {
		must(t, s.Free(tok), fmt.Sprintf("Free unsent %d", i+6))
	}
	if s.Available() != s.Capacity()-4 {
		t.Errorf("Available %d, want %d", s.Available(), s.Capacity()-4)
	}
	for i := 2; i < 6; i++ {
		tok, ok := e.TryRecv()
		if !ok || tok != ts[i] {
			t.Fatalf("TryRecv %d = %v %v, want %v", i, tok, ok, ts[i])
		}
		must(t, s.Free(tok), "Free")
	}
	if s.Available() != s.Capacity() {
		t.Errorf("Available %d, want %d", s.Available(), s.Capacity())
	}
}

// TestCrash3ParkedSenderKilled: a child's SendBatch is parked (futex) on
// a full Block edge when it is killed. Nothing more arrives; the recovery
// frees its unsent messages and uncounts its parked waiters; this process
// then sends, receives and blocks on the edge.
func TestCrash3ParkedSenderKilled(t *testing.T) {
	dir := t.TempDir()
	s, err := CreateStore[cell]("psk", StoreConfig{Slots: 16, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: 2}, {MaxItems: 2}}})
	must(t, err, "CreateStore")
	defer s.Close()
	c := c3Start(t, "blocked", dir, "psk", "")
	c.await(t, "go", 20*time.Second)
	c.kill(t)
	rep := c3Recover(t, s)
	// The dead child's parked calls are no longer counted as waiters (a
	// count left raised cost every later send a futex wake syscall).
	if sw, rw := atomic.LoadUint32(&s.Edge(0).ctl.sendWaiters), atomic.LoadUint32(&s.Edge(1).ctl.recvWaiters); sw != 0 || rw != 0 {
		t.Errorf("after the recovery: edge 0 sendWaiters %d, edge 1 recvWaiters %d; want 0 and 0", sw, rw)
	}
	if rep.Dead != 1 || rep.Reclaimed != 3 {
		t.Errorf("Recover = %+v, want 1 dead and its 3 unsent messages reclaimed", rep)
	}
	e := s.Edge(0)
	st := c3Identity(t, e, "edge 0")
	if st.Admitted != 2 || st.Len != 2 || s.Available() != s.Capacity()-2 {
		t.Errorf("stats %+v, Available %d; want 2 queued, the rest free", st, s.Available())
	}
	// This process now blocks on the same edge and is served.
	x, err := s.Put(message.Header{Seq: 9}, cell{})
	must(t, err, "Put")
	sent := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		sent <- e.Send(ctx, x)
	}()
	time.Sleep(20 * time.Millisecond)
	var seqs []uint64
	for range 3 {
		var tok token.Token
		c3Within(t, 5*time.Second, "Recv", func() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			tok, err = e.Recv(ctx)
		})
		must(t, err, "Recv")
		h, err := s.Header(tok)
		must(t, err, "Header")
		seqs = append(seqs, h.Seq)
		must(t, s.Free(tok), "Free")
	}
	c3Within(t, 5*time.Second, "parked Send", func() { must(t, <-sent, "Send") })
	if fmt.Sprint(seqs) != "[500 501 9]" {
		t.Errorf("received %v, want [500 501 9]", seqs)
	}
	c3Identity(t, e, "edge 0 at the end")
	if s.Available() != s.Capacity() {
		t.Errorf("Available %d, want %d", s.Available(), s.Capacity())
	}
}

// TestCrash3CloseWhileBlockedElsewhere: a child has a SendBatch parked on
// a full Block edge and a Recv parked on an empty edge; this process
// closes both edges. The child's calls end with ErrEdgeClosed (SendBatch
// having sent what fitted; the caller keeps the rest), the queued
// messages are still delivered here, then Recv says ErrEdgeClosed. The
// child is killed afterwards; the recovery frees what it kept.
func TestCrash3CloseWhileBlockedElsewhere(t *testing.T) {
	dir := t.TempDir()
	s, err := CreateStore[cell]("cwb", StoreConfig{Slots: 16, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: 2}, {MaxItems: 2}}})
	must(t, err, "CreateStore")
	defer s.Close()
	c := c3Start(t, "blocked", dir, "cwb", "")
	c.await(t, "go", 20*time.Second)
	must(t, s.Edge(0).Close(), "Close edge 0")
	must(t, s.Edge(1).Close(), "Close edge 1")
	if l := c.await(t, "send", 3*time.Second); l != "send 2 true 3" {
		t.Errorf("child's parked SendBatch on the closed edge: %q, want %q (2 sent, ErrEdgeClosed, 3 kept)", l, "send 2 true 3")
	}
	if l := c.await(t, "recv", 3*time.Second); l != "recv true" {
		t.Errorf("child's parked Recv on the closed edge: %q, want ErrEdgeClosed", l)
	}
	c.kill(t)
	c3Recover(t, s)
	e := s.Edge(0)
	st := c3Identity(t, e, "edge 0")
	if st.Len != 2 || st.Rejected < 1 {
		t.Errorf("edge 0 stats %+v, want 2 queued and the refused send counted", st)
	}
	for i := range 2 {
		tok, ok := e.TryRecv()
		if !ok {
			t.Fatalf("TryRecv %d on the closed edge: nothing", i)
		}
		must(t, s.Free(tok), "Free")
	}
	c3Within(t, 3*time.Second, "Recv on a closed, empty edge", func() {
		_, err := e.Recv(context.Background())
		wantErr(t, err, message.ErrEdgeClosed, "Recv on a closed empty edge")
	})
	if s.Available() != s.Capacity() {
		t.Errorf("Available %d, want %d", s.Available(), s.Capacity())
	}
}

// TestCrash3KilledMidRecvBatch: a child's single RecvBatch takes a long
// BestEffort lane under the edge lock, in which every third message has
// expired (it must be freed, never delivered) and every fifth has expired
// but is DegradeAllowed (delivered, counted Late). It is SIGKILLed half
// way, holding the lock, with this process's receivers parked on the same
// edge. Without any call of Recover here, the parked receivers must get
// past the dead lock holder and take the rest: in FIFO order, none of the
// expired ones, none twice. The counters then balance with the dead
// receiver's share as Delivered or Drained.
func TestCrash3KilledMidRecvBatch(t *testing.T) {
	n := 100000
	if raceEnabled {
		n = 20000
	}
	dir := t.TempDir()
	s, err := CreateStore[cell]("mid", StoreConfig{Slots: n + 8, Shards: 2, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: n, Admission: message.DeadlineQoS}}})
	must(t, err, "CreateStore")
	defer s.Close()
	e := s.Edge(0)
	lane := &e.ctl.lanes[laneBestEffort]
	landed := 0
	for round := range 3 {
		// Put and TrySend of all n before the deadlines pass. Under -race,
		// beside other packages' tests (CI's purego step), one second was
		// once not enough ("deadline passed" at TrySend).
		margin := time.Second
		if raceEnabled {
			margin = 3 * time.Second
		}
		dl := message.Now() + int64(margin)
		expired := map[uint64]bool{}
		for i := range n {
			seq := uint64(round)<<32 | uint64(i+1)
			h := message.Header{Seq: seq, QoS: message.BestEffort}
			switch {
			case i%3 == 1:
				h.Deadline = dl
				expired[seq] = true
			case i%5 == 2:
				h.Deadline, h.Flags = dl, message.DegradeAllowed
			}
			var c cell
			c.fill(seq)
			tok, err := s.Put(h, c)
			must(t, err, "Put")
			must(t, e.TrySend(tok), "TrySend")
		}
		for message.Now() <= dl {
			time.Sleep(time.Millisecond)
		}
		before := e.Stats()
		start := atomic.LoadUint64(&lane.head)
		ch := c3Start(t, "recvhuge", dir, "mid", strconv.Itoa(n))
		ch.await(t, "go", 20*time.Second)
		target := start + uint64(n/4*(round+1))
		c3Within(t, 10*time.Second, "the child's RecvBatch starting", func() {
			for atomic.LoadUint64(&lane.head) == start {
			}
		})
		// The child holds the lock now, for its whole batch: start this
		// process's receivers (they wait on the lock), then kill the
		// holder once it is past target.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		led := newLedger()
		var ords [2]c3Order
		var mu sync.Mutex
		var order []uint64
		for k := range 2 {
			ords[k].last = map[uint64]*[2]uint64{0: new([2]uint64)}
			wg.Add(1)
			go func() {
				defer wg.Done()
				dst := make([]token.Token, 64)
				for {
					select {
					case <-stop:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
					t0 := message.Now()
					got, err := e.RecvBatch(ctx, dst)
					cancel()
					if err != nil && !errors.Is(err, context.DeadlineExceeded) {
						led.fail("RecvBatch: %v", err)
						return
					}
					for _, tok := range dst[:got] {
						seq, err := c3Check(s, tok, t0)
						if err != nil {
							led.fail("%v", err)
						}
						if seq <= ords[k].last[0][1] {
							led.fail("receiver %d: seq %#x after %#x", k, seq, ords[k].last[0][1])
						}
						ords[k].last[0][1] = seq
						if expired[seq] {
							led.fail("expired seq %#x (no DegradeAllowed) delivered", seq)
						}
						led.got(seq, fmt.Sprint("receiver ", k))
						mu.Lock()
						order = append(order, seq)
						mu.Unlock()
						if err := s.Free(tok); err != nil {
							led.fail("Free: %v", err)
						}
					}
				}
			}()
		}
		c3Within(t, 10*time.Second, "the child's RecvBatch reaching the target", func() {
			for atomic.LoadUint64(&lane.head) < target {
			}
		})
		_ = ch.cmd.Process.Signal(syscall.SIGKILL)
		ch.kill(t)
		mid := atomic.LoadUint64(&lane.head) < start+uint64(n)
		if mid {
			landed++
		}
		// The parked receivers alone must empty the edge.
		c3Within(t, 15*time.Second, fmt.Sprintf("round %d: the survivors emptying the edge after the lock holder died", round), func() {
			for {
				p, w, err := e.a.enter()
				if err != nil {
					t.Errorf("enter: %v", err)
					return
				}
				empty := !e.nonEmpty() && atomic.LoadUint32(&e.ctl.lock) == 0
				e.a.exit(p, w, 0)
				if empty {
					return
				}
				time.Sleep(time.Millisecond)
			}
		})
		close(stop)
		c3Within(t, 5*time.Second, "receivers stopping", wg.Wait)
		led.report(t, fmt.Sprintf("round %d", round))
		c3Recover(t, s)
		st := c3Identity(t, e, fmt.Sprintf("round %d", round))
		d := message.EdgeStats{Admitted: st.Admitted - before.Admitted, Delivered: st.Delivered - before.Delivered,
			Expired: st.Expired - before.Expired, Drained: st.Drained - before.Drained, Late: st.Late - before.Late}
		mu.Lock()
		survivors := len(order)
		mu.Unlock()
		t.Logf("round %d (kill mid-batch %v): delivered %d (%d to the survivors), expired %d, drained %d, late %d",
			round, mid, d.Delivered, survivors, d.Expired, d.Drained, d.Late)
		if st.Len != 0 || d.Admitted != 0 || d.Delivered+d.Expired+d.Drained != uint64(n) {
			t.Errorf("round %d: %+v; want the %d queued all delivered, expired or drained", round, d, n)
		}
		if d.Expired > uint64(len(expired)) || d.Delivered < uint64(survivors) {
			t.Errorf("round %d: expired %d of %d expirable; delivered %d, %d to the survivors", round, d.Expired, len(expired), d.Delivered, survivors)
		}
		if s.Available() != s.Capacity() {
			t.Fatalf("round %d: Available %d of %d after the edge emptied and the dead receiver's messages were reclaimed", round, s.Available(), s.Capacity())
		}
	}
	t.Logf("%d of 3 kills landed inside the RecvBatch", landed)
}
