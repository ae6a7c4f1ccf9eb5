package message

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
)

// rv2StackHas reports whether the calling goroutine's stack mentions fn.
func rv2StackHas(fn string) bool {
	buf := make([]byte, 64<<10)
	return strings.Contains(string(buf[:runtime.Stack(buf, false)]), fn)
}

// TestReview2SendAllFreePanicAfterAdmitDoubleFree: SendAll to two edges;
// on the first (DropOldest, full) the Send evicts a message whose Free
// panics, and then admits t. Send raises the panic after t is in (the
// HeaderStore doc: the panic is re-raised once the operation is done;
// sendCatching: "err == nil exactly when it did, whatever fp"). SendAll's
// storePanic.send treats any panic as "the caller still holds its share"
// and frees it: the edge's share is freed behind its back.
func TestReview2SendAllFreePanicAfterAdmitDoubleFree(t *testing.T) {
	w := gsNew(t, 16)
	e1 := gsEdge(t, w, Policy{MaxItems: 1, Admission: DropOldest})
	e2 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
	victim := w.put(t, 1)
	if err := e1.TrySend(victim); err != nil {
		t.Fatal(err)
	}
	w.setFree(func(tok token.Token) error {
		if tok == victim {
			panic("rv2: Free panicked")
		}
		return nil
	})
	tok := w.put(t, 2)
	var sent int
	p, _ := gsWithin(t, 2*time.Second, "SendAll", func() {
		sent, _ = SendAll(context.Background(), w, tok, e1, e2)
	})
	w.setFree(nil)
	t.Logf("SendAll: sent %d, panic %v; e1.Len %d e2.Len %d; refs of t %d", sent, p, e1.Len(), e2.Len(), w.alive(tok))
	if p == nil {
		t.Fatalf("SendAll did not re-raise the store's panic")
	}
	held := e1.Len() + e2.Len()
	if got := w.alive(tok); got != held {
		t.Errorf("t has %d live references but the edges hold %d shares of it: SendAll freed the share e1 admitted (its Send raised after admitting t)", got, held)
	}
	e1.Drain()
	e2.Drain()
	w.conserve(t, 0, victim)
}

// TestReview2EmitHeldFreePanicLosesToken: an edge holds back a panic of
// the store's Free (a RecvBatch that took a token met an expired message
// whose Free panicked). A source-style Emit (no held-back sends) then goes
// through sendCatching, which breaks out on the held panic without
// admitting t but with err == nil: Emit takes that as "sent" and neither
// the edge nor anybody else owns t any more. The Emitter doc: the panic
// "reaches Emit's caller only after every share of t has been sent or
// freed"; Emit "always takes the caller's reference".
func TestReview2EmitHeldFreePanicLosesToken(t *testing.T) {
	w := gsNew(t, 16)
	e := gsEdge(t, w, Policy{MaxItems: 8, Admission: Block})
	live := w.put(t, 1)
	exp, err := w.putWait(context.Background(), Header{Deadline: Now() + int64(usShortLife)}, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []token.Token{live, exp} {
		if err := e.TrySend(x); err != nil {
			t.Fatal(err)
		}
	}
	usOutlive()
	w.setFree(func(tok token.Token) error {
		if tok == exp {
			panic("rv2: Free panicked")
		}
		return nil
	})
	var dst [4]token.Token
	var n int
	p, _ := gsWithin(t, 2*time.Second, "RecvBatch", func() { n, _ = e.RecvBatch(context.Background(), dst[:]) })
	if p != nil || n != 1 || dst[0] != live {
		t.Fatalf("RecvBatch = %d %v, panic %v; want the live token and the panic held back", n, dst[:n], p)
	}
	w.setFree(nil)
	_ = w.Free(live)

	out := &Emitter{rs: w, edges: []*Edge{e}, ctx: context.Background()}
	tok := w.put(t, 3)
	var eerr error
	p, _ = gsWithin(t, 2*time.Second, "Emit", func() { eerr = out.Emit(tok) })
	t.Logf("Emit = %v, panic %v; edge Len %d; refs of t %d", eerr, p, e.Len(), w.alive(tok))
	if p == nil {
		t.Errorf("Emit did not raise the held-back panic")
	}
	if got, held := w.alive(tok), e.Len(); got != held {
		t.Errorf("t has %d live references, the edge holds %d: Emit neither sent nor freed t (sendCatching returned err == nil for a send that broke out on the held panic)", got, held)
	}
	e.Drain()
	w.conserve(t, 0, exp)
}

// TestReview2LaneOrderAfterReapGoexit: a reap removes two expired
// Background messages from the middle of their lane; the first Free calls
// runtime.Goexit and exitLocked pushes the other back at the FRONT of the
// lane, ahead of an older live message. The lane shared by Background and
// BestEffort is merged by its fronts' admission numbers, so a younger
// BestEffort message is now received before the older Background one
// ("Within ... the lane shared by BestEffort and Background, order is FIFO
// by admission").
func TestReview2LaneOrderAfterReapGoexit(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 4, Admission: Block})
	a := s.put(Header{QoS: Background})
	b := s.put(Header{QoS: BestEffort})
	x := s.put(Header{QoS: Background, Deadline: Now() + int64(usShortLife)})
	y := s.put(Header{QoS: Background, Deadline: Now() + int64(usShortLife)})
	for _, tk := range []token.Token{a, b, x, y} {
		if err := e.TrySend(tk); err != nil {
			t.Fatal(err)
		}
	}
	usOutlive()
	usGoexitFree(s)
	nt := s.put(Header{QoS: BestEffort})
	usGoexits(t, "TrySend reaping", func() { e.TrySend(nt) })
	s.Free(nt) // the sender's token stays its caller's
	var got []token.Token
	if !usWithin(time.Second, func() {
		for {
			tk, ok := e.TryRecv()
			if !ok {
				return
			}
			got = append(got, tk)
		}
	}) {
		t.Fatalf("TryRecv hung")
	}
	if len(got) != 2 || got[0] != a || got[1] != b {
		t.Errorf("received %v, want [%v %v] (a admitted before b)", got, a, b)
	}
	for _, tk := range got {
		s.Free(tk)
	}
	usConserve(t, "after", e)
	usLiveIs(t, "after", s, 0)
}

// TestReview2StageFlushGoexitDoubleFree: a stage's held-back emits are
// sent by flush with SendBatch; an eviction in that SendBatch calls a
// store Free that runs runtime.Goexit after the batch's first tokens are
// in the edge. The worker's goroutine ends; work's deferred cleanup calls
// discard, which frees every pending token, including those the edge
// already admitted: they are freed twice (once by discard, once when
// received or drained).
func TestReview2StageFlushGoexitDoubleFree(t *testing.T) {
	w := gsNew(t, 64)
	a := gsEdge(t, w, Policy{MaxItems: 8, Admission: Block})
	b := gsEdge(t, w, Policy{MaxItems: 2, Admission: DropOldest})
	var fired atomic.Uint64
	w.setFree(func(tok token.Token) error {
		if rv2StackHas("evictLocked") && rv2StackHas("flush") && fired.CompareAndSwap(0, uint64(tok)) {
			runtime.Goexit()
		}
		return nil
	})
	g := NewGraph(w)
	g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
		for i := range 2 {
			tok, err := w.putWait(ctx, Header{}, uint64(i+1))
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
		}
		<-ctx.Done()
		return nil
	}, a)
	g.Stage("mid", 1, a, func(ctx context.Context, tok token.Token, out *Emitter) error {
		if err := out.Emit(tok); err != nil {
			return err
		}
		for i := range 3 {
			n, err := w.putWait(ctx, Header{}, uint64(100+i))
			if err != nil {
				return err
			}
			if err := out.Emit(n); err != nil {
				return err
			}
		}
		return nil
	}, b)
	var first sync.Once
	g.Sink("end", 1, b, func(ctx context.Context, tok token.Token) error {
		first.Do(func() { <-ctx.Done() }) // hold the first: b fills up
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var err error
	p, returned := gsWithin(t, 6*time.Second, "Graph.Run", func() { err = g.Run(ctx) })
	t.Logf("Run = %v, panic %v, returned %v", err, p, returned)
	if fired.Load() == 0 {
		t.Skip("no eviction under a flush happened")
	}
	if !errors.Is(err, ErrNodeExited) {
		t.Errorf("Run = %v, want ErrNodeExited", err)
	}
	w.setFree(nil)
	// The victim's edge Free never reached the store (the hook ran
	// Goexit before it): its reference may legitimately stay.
	w.conserve(t, 0, token.Token(fired.Load()))
}

// TestReview2EmitHeaderPanicStrandsShares: Emit (direct path) to two edges
// over a store whose Header panics for t: the first edge's Send raises the
// Header panic; Emit lets it through with both shares still held (one
// Retained by Emit), neither sent nor freed. The Emitter doc: Emit "always
// takes the caller's reference", and a panic "one an edge raises for its
// store (see HeaderStore)" reaches the caller "only after every share of t
// has been sent or freed". SendAll catches the same panic (storePanic.send).
func TestReview2EmitHeaderPanicStrandsShares(t *testing.T) {
	w := gsNew(t, 16)
	e1 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
	e2 := gsEdge(t, w, Policy{MaxItems: 4, Admission: Block})
	tok := w.put(t, 1)
	w.setHeader(func(x token.Token) error {
		if x == tok {
			panic("rv2: Header panicked")
		}
		return nil
	})
	out := &Emitter{rs: w, edges: []*Edge{e1, e2}, ctx: context.Background()}
	p, _ := gsWithin(t, 2*time.Second, "Emit", func() { _ = out.Emit(tok) })
	w.setHeader(nil)
	t.Logf("Emit panic %v; refs of t %d; e1 %d e2 %d", p, w.alive(tok), e1.Len(), e2.Len())
	if p == nil {
		t.Fatalf("Emit did not raise the Header panic")
	}
	if got, held := w.alive(tok), e1.Len()+e2.Len(); got != held {
		t.Errorf("t has %d live references, the edges hold %d: Emit raised the Header panic with shares neither sent nor freed", got, held)
	}
	e1.Drain()
	e2.Drain()
	w.conserve(t, 0)
	for w.alive(tok) > 0 { // release what Emit stranded, for the check below
		_ = w.Free(tok)
	}

	// SendAll, for comparison, frees them.
	tok2 := w.put(t, 2)
	w.setHeader(func(x token.Token) error {
		if x == tok2 {
			panic("rv2: Header panicked")
		}
		return nil
	})
	p, _ = gsWithin(t, 2*time.Second, "SendAll", func() { _, _ = SendAll(context.Background(), w, tok2, e1, e2) })
	w.setHeader(nil)
	if p == nil {
		t.Errorf("SendAll did not raise the Header panic")
	}
	if got := w.alive(tok2); got != 0 {
		t.Errorf("SendAll: t has %d live references after a Header panic, want 0", got)
	}
	w.conserve(t, 0)
}

// TestReview2GoexitParkedSendersTimerReap: two Block senders parked on a
// full edge whose queued messages expire; the head one is woken by its
// timer, reaps, and the first Free calls runtime.Goexit. The second sender
// must be admitted (woken by exitLocked), the other expired message freed
// by the next operation, and the counters add up.
func TestReview2GoexitParkedSendersTimerReap(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 2, Admission: Block})
	x := usExpiring(s, 30*time.Millisecond)
	y := usExpiring(s, 30*time.Millisecond)
	for _, tk := range []token.Token{x, y} {
		if err := e.TrySend(tk); err != nil {
			t.Fatal(err)
		}
	}
	var gone atomic.Bool
	s.setFree(func(token.Token) error {
		if gone.CompareAndSwap(false, true) {
			runtime.Goexit()
		}
		return nil
	})
	s1, s2 := s.put(Header{}), s.put(Header{})
	d1, d2 := make(chan struct{}), make(chan error, 1)
	go func() {
		defer close(d1)
		_ = e.Send(context.Background(), s1)
	}()
	deadline := time.Now().Add(time.Second)
	for e.Stats().Waited < 1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	go func() { d2 <- e.Send(ctx, s2) }()
	for e.Stats().Waited < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	select {
	case <-d1:
	case <-time.After(3 * time.Second):
		t.Fatalf("first sender never ended:\n%s", gsDump())
	}
	select {
	case err := <-d2:
		if err != nil {
			t.Errorf("second sender: %v, want admitted", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatalf("second sender hung after the first one's Goexit:\n%s", gsDump())
	}
	s.setFree(nil)
	if !gone.Load() {
		t.Fatalf("the Goexit never fired")
	}
	var got []token.Token
	if !usWithin(time.Second, func() {
		for {
			tk, ok := e.TryRecv()
			if !ok {
				return
			}
			got = append(got, tk)
		}
	}) {
		t.Fatalf("TryRecv hung:\n%s", gsDump())
	}
	for _, tk := range got {
		s.Free(tk)
	}
	st := e.Stats()
	t.Logf("got %v; stats %+v", got, st)
	usConserve(t, "after", e)
	if st.Expired != 2 || st.FreeErrors != 1 {
		t.Errorf("Expired %d FreeErrors %d, want 2 and 1", st.Expired, st.FreeErrors)
	}
	// x's Free ran the real free before Goexit; s1 stays with its (dead) caller.
	s.Free(s1)
	usLiveIs(t, "after", s, 0)
}

// TestReview2GoexitDeadlineQoSShed: a Background send at the soft cap of
// a DeadlineQoS edge reaps expired messages first; the Free calls
// runtime.Goexit. The edge stays usable and whole; the remaining expired
// message is freed by the next operation.
func TestReview2GoexitDeadlineQoSShed(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 8, SoftItems: 2, Admission: DeadlineQoS})
	x := usExpiring(s, usShortLife)
	y := usExpiring(s, usShortLife)
	for _, tk := range []token.Token{x, y} {
		if err := e.TrySend(tk); err != nil {
			t.Fatal(err)
		}
	}
	usOutlive()
	usGoexitFree(s)
	bg := s.put(Header{QoS: Background})
	usGoexits(t, "Background TrySend at the soft cap", func() { e.TrySend(bg) })
	if !usUsable(t, "after", e, s) {
		return
	}
	if n := e.Len(); n != 0 {
		t.Errorf("Len %d after the next operation, want 0 (the expired message freed)", n)
	}
	usConserve(t, "after", e)
	if st := e.Stats(); st.Expired != 2 || st.FreeErrors != 1 {
		t.Errorf("Expired %d FreeErrors %d, want 2 and 1", st.Expired, st.FreeErrors)
	}
	s.Free(bg)
	usLiveIs(t, "after", s, 0)
}

// TestReview2GoexitFastRingEvict: a DropOldest edge in fast mode, full in
// its lock-free ring; a TrySend leaves fast mode, evicts, and the Free
// calls runtime.Goexit. The edge must come back usable (fast mode again)
// with counters that add up and the rest of the queue in order.
func TestReview2GoexitFastRingEvict(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 4, Admission: DropOldest})
	if e.fast == nil {
		t.Skip("no fast ring")
	}
	var in []token.Token
	for range 4 {
		tk := s.put(Header{})
		in = append(in, tk)
		if err := e.TrySend(tk); err != nil {
			t.Fatal(err)
		}
	}
	usGoexitFree(s)
	nt := s.put(Header{})
	usGoexits(t, "TrySend evicting", func() { e.TrySend(nt) })
	s.Free(nt)
	var got []token.Token
	if !usWithin(time.Second, func() {
		for {
			tk, ok := e.TryRecv()
			if !ok {
				return
			}
			got = append(got, tk)
		}
	}) {
		t.Fatalf("TryRecv hung:\n%s", gsDump())
	}
	if len(got) != 3 || got[0] != in[1] || got[2] != in[3] {
		t.Errorf("received %v, want %v", got, in[1:])
	}
	for _, tk := range got {
		s.Free(tk)
	}
	usConserve(t, "after", e)
	if st := e.Stats(); st.Evicted != 1 || st.FreeErrors != 1 {
		t.Errorf("Evicted %d FreeErrors %d, want 1 and 1", st.Evicted, st.FreeErrors)
	}
	usLiveIs(t, "after", s, 0)
}

// TestReview2RecvPanicThenGoexit: one RecvBatch takes a live token, then
// meets two expired messages: the first's Free panics (caught, held), the
// second's calls runtime.Goexit. The taken token is freed (nobody gets
// it), the held panic is raised by the next operation, the counters add
// up.
func TestReview2RecvPanicThenGoexit(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 8, Admission: Block})
	live := s.put(Header{})
	x := usExpiring(s, usShortLife)
	y := usExpiring(s, usShortLife)
	for _, tk := range []token.Token{live, x, y} {
		if err := e.TrySend(tk); err != nil {
			t.Fatal(err)
		}
	}
	usOutlive()
	var calls atomic.Int32
	s.setFree(func(tk token.Token) error {
		switch calls.Add(1) {
		case 1:
			panic(usBoom{"rv2"})
		case 2:
			runtime.Goexit()
		}
		return nil
	})
	var dst [4]token.Token
	usGoexits(t, "RecvBatch", func() { _, _ = e.RecvBatch(context.Background(), dst[:]) })
	s.setFree(nil)
	if s.isLive(live) {
		t.Errorf("the token RecvBatch had taken was not freed")
	}
	var p any
	if !usWithin(time.Second, func() { p = usCatch(func() { e.TryRecv() }) }) {
		t.Fatalf("TryRecv hung:\n%s", gsDump())
	}
	if p == nil {
		t.Errorf("the held-back panic was not raised by the next operation")
	}
	usConserve(t, "after", e)
	if st := e.Stats(); st.FreeErrors != 2 || st.Expired != 2 || e.Len() != 0 {
		t.Errorf("FreeErrors %d Expired %d Len %d, want 2, 2, 0", st.FreeErrors, st.Expired, e.Len())
	}
	usLiveIs(t, "after", s, 0)
}

// TestReview2SendBatchCatchingN: sendBatchCatching on a full DropOldest
// edge whose Free panics for every eviction: n must be exactly the number
// of the batch's tokens now in the edge.
func TestReview2SendBatchCatchingN(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 2, Admission: DropOldest})
	old := []token.Token{s.put(Header{}), s.put(Header{})}
	for _, tk := range old {
		if err := e.TrySend(tk); err != nil {
			t.Fatal(err)
		}
	}
	usPanicFree(s, usBoom{"rv2"})
	ts := []token.Token{s.put(Header{}), s.put(Header{}), s.put(Header{}), s.put(Header{})}
	var n, progress int
	var fp any
	var err error
	if !usWithin(time.Second, func() { n, fp, err = e.sendBatchCatching(context.Background(), ts, &progress) }) {
		t.Fatalf("sendBatchCatching hung")
	}
	s.setFree(nil)
	if fp == nil || err != nil {
		t.Errorf("fp %v err %v, want a panic and no error", fp, err)
	}
	var got []token.Token
	for {
		tk, ok := e.TryRecv()
		if !ok {
			break
		}
		got = append(got, tk)
	}
	in := 0
	for _, tk := range got {
		for _, x := range ts[:n] {
			if tk == x {
				in++
			}
		}
	}
	if in != n || len(got) > 2 {
		t.Errorf("n = %d but %d of ts[:n] were received (got %v)", n, in, got)
	}
	if progress != n {
		t.Errorf("progress counted %d tokens in, n = %d", progress, n)
	}
	for _, tk := range got {
		s.Free(tk)
	}
	for _, tk := range ts[n:] {
		s.Free(tk)
	}
	usConserve(t, "after", e)
	usLiveIs(t, "after", s, 0)
}

// TestReview2GraphTeardownFreePanicsEvery: a store whose Free panics on
// every call once the graph is being torn down: Run must return or panic
// within its deadline, every edge must be empty, and the panic must reach
// Run's caller.
func TestReview2GraphTeardownFreePanicsEvery(t *testing.T) {
	w := gsNew(t, 64)
	a := gsEdge(t, w, Policy{MaxItems: 16, Admission: Block})
	b := gsEdge(t, w, Policy{MaxItems: 16, Admission: Block})
	var on atomic.Bool
	w.setFree(func(token.Token) error {
		if on.Load() {
			panic("rv2: Free panics always")
		}
		return nil
	})
	filled := make(chan struct{})
	g := NewGraph(w)
	g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
		for i := range 20 {
			tok, err := w.putWait(ctx, Header{}, uint64(i+1))
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
		}
		close(filled)
		<-ctx.Done()
		return nil
	}, a)
	g.Stage("mid", 1, a, func(ctx context.Context, tok token.Token, out *Emitter) error {
		return out.Emit(tok)
	}, b)
	g.Sink("end", 1, b, func(ctx context.Context, tok token.Token) error {
		<-ctx.Done()
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-filled:
		case <-time.After(2 * time.Second):
		}
		time.Sleep(20 * time.Millisecond)
		on.Store(true)
		cancel()
	}()
	var err error
	p, returned := gsWithin(t, 6*time.Second, "Graph.Run", func() { err = g.Run(ctx) })
	t.Logf("Run = %v, panic %v, returned %v", err, p, returned)
	if returned || p == nil {
		t.Errorf("Run returned %v without raising the store's panic", err)
	}
	if a.Len() != 0 || b.Len() != 0 {
		t.Errorf("edges hold %d and %d tokens after Run", a.Len(), b.Len())
	}
	fe := a.Stats().FreeErrors + b.Stats().FreeErrors
	usConserve(t, "a", a)
	usConserve(t, "b", b)
	on.Store(false)
	t.Logf("FreeErrors %d, store freeErr %d", fe, w.freeErr)
}
