package shm

// Adversarial tests of the documented behaviour of shm's Store and edges.

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

const atkName = "atk"

// atkStore creates a store (Watch never) in a fresh dir and returns it with
// the dir; it is closed at cleanup unless the test closed it.
func atkStore(t *testing.T, slots int, edges ...message.Policy) (*Store[tick], string) {
	t.Helper()
	dir := t.TempDir()
	s, err := CreateStore[tick](atkName, StoreConfig{Slots: slots, Shards: 2, Dir: dir, Watch: -1, Edges: edges})
	must(t, err, "CreateStore")
	t.Cleanup(func() { _ = s.Close() })
	return s, dir
}

func atkAttach(t *testing.T, dir string) *Store[tick] {
	t.Helper()
	s, err := AttachStore[tick](atkName, StoreConfig{Dir: dir, Watch: -1})
	must(t, err, "AttachStore")
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestAttackStoreCloseRacesPut: Close drops every reference this process
// still holds. A Put that returned a token before Close returned is a
// reference this process held: it must be dropped too, never leaked (left
// counted in the record the next process claims).
func TestAttackStoreCloseRacesPut(t *testing.T) {
	const slots = 64
	for round := range 50 {
		keep, dir := atkStore(t, slots)
		a := atkAttach(t, dir)
		var wg sync.WaitGroup
		var puts atomic.Int64
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					tok, err := a.Put(message.Header{}, tick{Seq: 1})
					if err != nil {
						if errors.Is(err, ErrClosed) {
							return
						}
						if errors.Is(err, ErrFull) {
							continue
						}
						t.Errorf("Put: %v", err)
						return
					}
					puts.Add(1)
					if puts.Load()%2 == 0 {
						_ = a.Free(tok) // may race Close: ErrClosed is fine
					}
				}
			}()
		}
		for puts.Load() < 4 {
			time.Sleep(10 * time.Microsecond)
		}
		err := a.Close()
		wg.Wait()
		if err != nil && !errors.Is(err, message.ErrReferenced) {
			t.Fatalf("round %d: Close: %v", round, err)
		}
		if got := keep.Available(); got != slots {
			b := atkAttach(t, dir)
			inherited := 0
			for i := range uint32(slots) {
				inherited += int(atomic.LoadUint32(b.a.store.tab.count(i)))
			}
			t.Fatalf("round %d: after the putter's Close, Available = %d of %d: a reference Put returned survived Close "+
				"(a new handle on the freed record starts out holding %d references it never took)",
				round, got, slots, inherited)
		}
		must(t, keep.Close(), "Close keeper")
	}
}

// TestAttackStoreAfterClose: every method of a closed Store handle, and of
// its edges, returns ErrClosed (or its documented zero), never panics or
// touches the unmapped segment.
func TestAttackStoreAfterClose(t *testing.T) {
	s, dir := atkStore(t, 4, message.Policy{MaxItems: 2})
	other := atkAttach(t, dir)
	tok, err := s.Put(message.Header{}, tick{Seq: 7})
	must(t, err, "Put")
	qtok, err := other.Put(message.Header{}, tick{Seq: 8})
	must(t, err, "Put other")
	must(t, other.Edge(0).Send(context.Background(), qtok), "Send other")
	e := s.Edge(0)
	err = s.Close()
	wantErr(t, err, message.ErrReferenced, "Close with a reference held")
	wantErr(t, s.Close(), ErrClosed, "second Close")
	ctx := context.Background()
	_, err = s.Put(message.Header{}, tick{})
	wantErr(t, err, ErrClosed, "Put")
	_, _, err = s.Loan(message.Header{})
	wantErr(t, err, ErrClosed, "Loan")
	// PutFunc: TestAttackPutFuncAfterClose (it faults).
	_, err = s.PutWait(ctx, message.Header{}, tick{})
	wantErr(t, err, ErrClosed, "PutWait")
	wantErr(t, s.AwaitFree(ctx), ErrClosed, "AwaitFree")
	wantErr(t, s.Retain(qtok), ErrClosed, "Retain")
	wantErr(t, s.Free(tok), ErrClosed, "Free")
	_, _, err = s.Refs(qtok)
	wantErr(t, err, ErrClosed, "Refs")
	_, err = s.Header(qtok)
	wantErr(t, err, ErrClosed, "Header")
	wantErr(t, s.View(qtok, func(*message.Message[tick]) {}), ErrClosed, "View")
	wantErr(t, s.Update(qtok, func(*message.Message[tick]) {}), ErrClosed, "Update")
	_, err = s.Recover()
	wantErr(t, err, ErrClosed, "Recover")
	if s.Available() != 0 {
		t.Errorf("Available after Close = %d", s.Available())
	}
	wantErr(t, e.Send(ctx, qtok), ErrClosed, "Edge.Send")
	wantErr(t, e.TrySend(qtok), ErrClosed, "Edge.TrySend")
	n, err := e.SendBatch(ctx, []token.Token{qtok})
	if n != 0 {
		t.Errorf("SendBatch after Close sent %d", n)
	}
	wantErr(t, err, ErrClosed, "Edge.SendBatch")
	_, err = e.Recv(ctx)
	wantErr(t, err, ErrClosed, "Edge.Recv")
	dst := make([]token.Token, 2)
	_, err = e.RecvBatch(ctx, dst)
	wantErr(t, err, ErrClosed, "Edge.RecvBatch")
	// TryRecv: TestAttackTryRecvAfterClose (it faults).
	if e.Len() != 0 || e.Bytes() != 0 || e.Drain() != 0 {
		t.Errorf("Len %d / Bytes %d / Drain after Close", e.Len(), e.Bytes())
	}
	if err := e.Close(); err == nil {
		t.Error("Edge.Close after the store's Close succeeded")
	}
	// The other handle is untouched: its queued message is still there,
	// the edge still open, and the closed handle's reference was dropped.
	oe := other.Edge(0)
	if oe.Closed() || oe.Len() != 1 {
		t.Fatalf("other handle: Closed %v, Len %d", oe.Closed(), oe.Len())
	}
	if _, err := other.Header(tok); !errors.Is(err, ErrStale) {
		t.Fatalf("the closed handle's message survives its Close: %v", err)
	}
	got, err := oe.Recv(ctx)
	must(t, err, "Recv other")
	must(t, other.Free(got), "Free other")
	if other.Available() != 4 {
		t.Fatalf("Available = %d, want 4", other.Available())
	}
}

// TestAttackOwnershipAcrossHandles: references are owned per process. A
// handle that does not hold a reference cannot Free or Send it
// (ErrNotHeld), and keeps nothing afterwards; the holder still can. Refs
// reports all and mine per handle.
func TestAttackOwnershipAcrossHandles(t *testing.T) {
	a, dir := atkStore(t, 4, message.Policy{MaxItems: 4})
	b := atkAttach(t, dir)
	ctx := context.Background()
	tok, err := a.Put(message.Header{}, tick{Seq: 1})
	must(t, err, "Put")
	wantErr(t, b.Free(tok), ErrNotHeld, "Free by a non-holder")
	wantErr(t, b.Retain(tok), ErrNotHeld, "Retain by a non-holder")
	wantErr(t, b.Edge(0).Send(ctx, tok), ErrNotHeld, "Send by a non-holder")
	wantErr(t, b.Edge(0).TrySend(tok), ErrNotHeld, "TrySend by a non-holder")
	if n, err := b.Edge(0).SendBatch(ctx, []token.Token{tok}); n != 0 || !errors.Is(err, ErrNotHeld) {
		t.Fatalf("SendBatch by a non-holder: %d, %v", n, err)
	}
	if st := b.Edge(0).Stats(); st.Invalid != 3 || st.Rejected != 0 || st.Admitted != 0 {
		t.Fatalf("stats after three refused sends: %+v", st)
	}
	if all, mine, err := a.Refs(tok); all != 1 || mine != 1 || err != nil {
		t.Fatalf("a.Refs = %d, %d, %v", all, mine, err)
	}
	if all, mine, err := b.Refs(tok); all != 1 || mine != 0 || err != nil {
		t.Fatalf("b.Refs = %d, %d, %v", all, mine, err)
	}
	// Retain twice, send one to the edge: a holds 2, the edge 1.
	must(t, a.Retain(tok), "Retain")
	must(t, a.Retain(tok), "Retain")
	must(t, a.Edge(0).Send(ctx, tok), "Send")
	if all, mine, _ := a.Refs(tok); all != 3 || mine != 2 {
		t.Fatalf("after Retain×2, Send: all %d mine %d", all, mine)
	}
	got, err := b.Edge(0).Recv(ctx)
	must(t, err, "Recv")
	if got != tok {
		t.Fatalf("Recv %v, want %v", got, tok)
	}
	if all, mine, _ := b.Refs(tok); all != 3 || mine != 1 {
		t.Fatalf("b after Recv: all %d mine %d", all, mine)
	}
	must(t, b.Free(tok), "b.Free")
	wantErr(t, b.Free(tok), ErrNotHeld, "b.Free twice")
	must(t, a.Free(tok), "a.Free")
	must(t, a.Free(tok), "a.Free")
	wantErr(t, a.Free(tok), ErrStale, "a.Free of a freed message")
	if a.Available() != 4 || b.Available() != 4 {
		t.Fatalf("Available %d / %d", a.Available(), b.Available())
	}
}

// TestAttackCallbackPanics: a panic in View, Update or PutFunc releases
// the hold (an Update then runs; Close does not hang) and PutFunc's slot is
// freed.
func TestAttackCallbackPanics(t *testing.T) {
	s, _ := atkStore(t, 2)
	tok, err := s.Put(message.Header{}, tick{Seq: 3})
	must(t, err, "Put")
	boom := func(fn func()) (r any) {
		defer func() { r = recover() }()
		fn()
		return nil
	}
	if boom(func() { _ = s.View(tok, func(*message.Message[tick]) { panic("view") }) }) == nil {
		t.Fatal("View's panic was swallowed")
	}
	if boom(func() { _ = s.Update(tok, func(*message.Message[tick]) { panic("update") }) }) == nil {
		t.Fatal("Update's panic was swallowed")
	}
	within(t, 2*time.Second, "Update after panics", func() {
		must(t, s.Update(tok, func(m *message.Message[tick]) { m.Payload.Seq = 4 }), "Update")
	})
	if boom(func() { _, _ = s.PutFunc(message.Header{}, func(*message.Message[tick]) error { panic("fill") }) }) == nil {
		t.Fatal("PutFunc's panic was swallowed")
	}
	if s.Available() != 1 {
		t.Fatalf("Available = %d after a panicking PutFunc, want 1", s.Available())
	}
	errFill := errors.New("fill failed")
	if _, err := s.PutFunc(message.Header{}, func(*message.Message[tick]) error { return errFill }); !errors.Is(err, errFill) {
		t.Fatalf("PutFunc: %v", err)
	}
	if s.Available() != 1 {
		t.Fatalf("Available = %d after a failing PutFunc, want 1", s.Available())
	}
	_, err = s.PutFunc(message.Header{}, nil)
	wantErr(t, err, ErrNilFunc, "PutFunc(nil)")
	wantErr(t, s.View(tok, nil), ErrNilFunc, "View(nil)")
	wantErr(t, s.Update(tok, nil), ErrNilFunc, "Update(nil)")
	must(t, s.Free(tok), "Free")
	within(t, 2*time.Second, "Close", func() { must(t, s.Close(), "Close") })
}

// atkChildEnv names the test a re-executed test binary runs for real: a
// test whose bug kills the process (a fault) runs in a child, so that the
// parent reports it and the other tests still run.
const atkChildEnv = "CELLA_SHM_ATTACK_CHILD"

// atkInChild reports whether this is the child that runs the test's body;
// in the parent it runs the child and fails the test if the child failed.
func atkInChild(t *testing.T) bool {
	t.Helper()
	if os.Getenv(atkChildEnv) == t.Name() {
		return true
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), atkChildEnv+"="+t.Name())
	out, err := cmd.CombinedOutput()
	if err != nil {
		if len(out) > 3000 {
			out = out[:3000]
		}
		t.Errorf("child running %s failed (%v):\n%s", t.Name(), err, out)
	}
	return false
}

// TestAttackPutFuncAfterClose: every method after Close returns ErrClosed.
// PutFunc claims its hold entry (in the segment's record) before it checks
// whether the handle is closed: after Close it reads the unmapped record
// and the process dies of SIGSEGV.
func TestAttackPutFuncAfterClose(t *testing.T) {
	if !atkInChild(t) {
		return
	}
	s, _ := atkStore(t, 2)
	must(t, s.Close(), "Close")
	_, err := s.PutFunc(message.Header{}, func(*message.Message[tick]) error { return nil })
	wantErr(t, err, ErrClosed, "PutFunc after Close")
}

// TestAttackTryRecvAfterClose: TryRecv on an edge of a closed Store peeks
// at the edge's lanes without the gate (nonEmpty) and faults on the
// unmapped segment, where every other method returns ErrClosed or a zero.
func TestAttackTryRecvAfterClose(t *testing.T) {
	if !atkInChild(t) {
		return
	}
	s, _ := atkStore(t, 2, message.Policy{MaxItems: 2})
	e := s.Edge(0)
	must(t, s.Close(), "Close")
	if _, ok := e.TryRecv(); ok {
		t.Fatal("TryRecv after Close delivered")
	}
}

// TestAttackConcurrentConservation: two handles (two records, as two
// processes), producers and consumers on each, on a tiny store with an
// edge of every admission mode, deadlines and every QoS. At the end every
// edge's counters balance (Admitted = Delivered + Evicted + Expired +
// Drained + Len), nothing is referenced, and Available == Capacity.
func TestAttackConcurrentConservation(t *testing.T) {
	pols := []message.Policy{
		{Admission: message.Block, MaxItems: 2},
		{Admission: message.DropNewest, MaxItems: 2, MaxBytes: 48},
		{Admission: message.DropOldest, MaxItems: 3, SoftItems: 1},
		{Admission: message.DeadlineQoS, MaxItems: 3, SoftItems: 1, MaxBytes: 64},
	}
	const slots = 6
	a, dir := atkStore(t, slots, pols...)
	b := atkAttach(t, dir)
	hs := []*Store[tick]{a, b}
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	var fails atomic.Int64
	bad := func(format string, args ...any) {
		if fails.Add(1) < 5 {
			t.Errorf(format, args...)
		}
	}
	for hi, h := range hs {
		for g := range 2 {
			wg.Add(2)
			seed := uint64(hi*10 + g)
			go func() { // producer
				defer wg.Done()
				x := seed*0x9e3779b97f4a7c15 + 1
				for ctx.Err() == nil {
					x ^= x << 13
					x ^= x >> 7
					x ^= x << 17
					hd := message.Header{QoS: message.QoS(x % 4), Size: uint32(8 + x%24)}
					if x%5 == 0 {
						hd.Deadline = message.Now() + int64(x%3)*int64(time.Millisecond)
					}
					if x%7 == 0 {
						hd.Flags = message.DegradeAllowed
					}
					wctx, wc := context.WithTimeout(ctx, 5*time.Millisecond)
					tok, err := h.PutWait(wctx, hd, tick{Seq: x})
					if err != nil {
						wc()
						if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
							bad("PutWait: %v", err)
						}
						continue
					}
					e := h.Edge(int(x>>8) % len(pols))
					if x%3 == 0 {
						// Two references, two edges.
						if err := h.Retain(tok); err != nil {
							bad("Retain: %v", err)
						}
						if err := h.Edge(int(x>>12) % len(pols)).TrySend(tok); err != nil {
							if err2 := h.Free(tok); err2 != nil {
								bad("Free after TrySend error %v: %v", err, err2)
							}
						}
					}
					err = e.Send(wctx, tok)
					wc()
					if err != nil {
						if err2 := h.Free(tok); err2 != nil {
							bad("Free after Send error %v: %v", err, err2)
						}
					}
				}
			}()
			go func() { // consumer
				defer wg.Done()
				x := seed*0xbf58476d1ce4e5b9 + 3
				dst := make([]token.Token, 3)
				for ctx.Err() == nil {
					x ^= x << 13
					x ^= x >> 7
					x ^= x << 17
					e := h.Edge(int(x>>8) % len(pols))
					var got []token.Token
					switch x % 3 {
					case 0:
						if tok, ok := e.TryRecv(); ok {
							got = append(got, tok)
						}
					case 1:
						rctx, rc := context.WithTimeout(ctx, time.Millisecond)
						tok, err := e.Recv(rctx)
						rc()
						if err == nil {
							got = append(got, tok)
						}
					default:
						rctx, rc := context.WithTimeout(ctx, time.Millisecond)
						n, err := e.RecvBatch(rctx, dst)
						rc()
						if err == nil {
							got = append(got, dst[:n]...)
						}
					}
					for _, tok := range got {
						var seq uint64
						if err := h.View(tok, func(m *message.Message[tick]) { seq = m.Payload.Seq }); err != nil || seq == 0 {
							bad("View of a received token: %v (seq %d)", err, seq)
						}
						if err := h.Free(tok); err != nil {
							bad("Free of a received token: %v", err)
						}
					}
				}
			}()
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i, e := range a.Edges() {
		drained := e.Drain()
		st := b.Edge(i).Stats()
		if st.Len != 0 || e.Len() != 0 {
			t.Errorf("edge %d: Len %d after Drain", i, st.Len)
		}
		if got := st.Delivered + st.Evicted + st.Expired + st.Drained + uint64(st.Len); got != st.Admitted {
			t.Errorf("edge %d (%v, drained %d): Admitted %d != Delivered %d + Evicted %d + Expired %d + Drained %d + Len %d",
				i, pols[i].Admission, drained, st.Admitted, st.Delivered, st.Evicted, st.Expired, st.Drained, st.Len)
		}
		if st.FreeErrors != 0 {
			t.Errorf("edge %d: %d FreeErrors", i, st.FreeErrors)
		}
		if st.Admitted == 0 {
			t.Errorf("edge %d admitted nothing", i)
		}
	}
	if a.Available() != slots || b.Available() != slots {
		t.Fatalf("Available %d / %d of %d at the end", a.Available(), b.Available(), slots)
	}
}

// TestAttackUncappedEdgeRefuses: an edge with MaxItems 0 has no item cap
// (message.Edge accepts any number of entries); StoreConfig.Edges says its
// queue is fixed at Slots entries per lane. Here no lane ever holds more
// than 2 entries of a 2-slot store, yet the shared edge treats 2 queued
// entries in total as full: the Block edge refuses (TrySend: ErrEdgeFull)
// and the DropOldest edge evicts a message, where message.Edge with the
// same policy admits everything.
func TestAttackUncappedEdgeRefuses(t *testing.T) {
	for _, adm := range []message.Admission{message.Block, message.DropOldest, message.DropNewest} {
		pol := message.Policy{Admission: adm}
		s, _ := atkStore(t, 2, pol)
		ref, err := message.NewStore[tick](arena.Config{Slots: 2, Shards: 1})
		must(t, err, "message.NewStore")
		refEdge, err := message.NewEdge(ref, pol)
		must(t, err, "message.NewEdge")
		// Two BestEffort entries of one message, one LatencyCritical entry.
		be, err := s.Put(message.Header{QoS: message.BestEffort}, tick{Seq: 1})
		must(t, err, "Put")
		must(t, s.Retain(be), "Retain")
		lc, err := s.Put(message.Header{QoS: message.LatencyCritical}, tick{Seq: 2})
		must(t, err, "Put")
		rbe, err := ref.Put(message.Header{QoS: message.BestEffort}, tick{Seq: 1})
		must(t, err, "ref Put")
		must(t, ref.Retain(rbe), "ref Retain")
		rlc, err := ref.Put(message.Header{QoS: message.LatencyCritical}, tick{Seq: 2})
		must(t, err, "ref Put")
		for i, pair := range [][2]token.Token{{be, rbe}, {be, rbe}, {lc, rlc}} {
			refErr := refEdge.TrySend(pair[1])
			err := s.Edge(0).TrySend(pair[0])
			if (err == nil) != (refErr == nil) {
				t.Errorf("%v, MaxItems 0: send %d: shm %v, message.Edge %v", adm, i, err, refErr)
			}
		}
		if st, rst := s.Edge(0).Stats(), refEdge.Stats(); st.Len != rst.Len || st.Evicted != rst.Evicted {
			t.Errorf("%v, MaxItems 0: shm edge Len %d Evicted %d, message.Edge Len %d Evicted %d",
				adm, st.Len, st.Evicted, rst.Len, rst.Evicted)
		}
		refEdge.Drain()
		_ = ref.Close()
	}
}

// TestAttackBlockedSenderGetsRoomOfExpired: message.Edge promises that a
// Block sender parked on a full edge "looks again when the earliest queued
// message expires, and takes its room"; the shared edge has message.Edge's
// admission modes. Here the queued message expires 20ms in, and the sender
// gives up after 150ms.
func TestAttackBlockedSenderGetsRoomOfExpired(t *testing.T) {
	pol := message.Policy{Admission: message.Block, MaxItems: 1}
	s, _ := atkStore(t, 4, pol)
	ref, err := message.NewStore[tick](arena.Config{Slots: 4, Shards: 1})
	must(t, err, "message.NewStore")
	defer ref.Close()
	refEdge, err := message.NewEdge(ref, pol)
	must(t, err, "message.NewEdge")
	defer refEdge.Drain()

	dl := message.Now() + int64(20*time.Millisecond)
	old, err := s.Put(message.Header{Deadline: dl}, tick{Seq: 1})
	must(t, err, "Put")
	must(t, s.Edge(0).Send(context.Background(), old), "Send")
	rold, err := ref.Put(message.Header{Deadline: dl}, tick{Seq: 1})
	must(t, err, "ref Put")
	must(t, refEdge.Send(context.Background(), rold), "ref Send")

	nw, err := s.Put(message.Header{}, tick{Seq: 2})
	must(t, err, "Put")
	rnw, err := ref.Put(message.Header{}, tick{Seq: 2})
	must(t, err, "ref Put")
	var wg sync.WaitGroup
	var refErr error
	var refTook time.Duration
	wg.Add(1)
	go func() {
		defer wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
		defer cancel()
		start := time.Now()
		refErr = refEdge.Send(ctx, rnw)
		refTook = time.Since(start)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = s.Edge(0).Send(ctx, nw)
	took := time.Since(start)
	wg.Wait()
	if refErr != nil {
		t.Fatalf("message.Edge: %v after %v", refErr, refTook)
	}
	if err != nil {
		t.Fatalf("shm edge: Block sender not admitted into the room of a message that expired 20ms in: %v after %v "+
			"(message.Edge admitted it after %v)", err, took, refTook)
	}
}

// TestAttackEdgeCloseWakesOtherHandle: Close of an edge in one process
// wakes a Block sender and a receiver parked in another: the sender gets
// ErrEdgeClosed and keeps its reference, the receiver drains what is
// queued, then gets ErrEdgeClosed; a second Close (from either) matches
// ErrEdgeClosed.
func TestAttackEdgeCloseWakesOtherHandle(t *testing.T) {
	a, dir := atkStore(t, 4, message.Policy{Admission: message.Block, MaxItems: 1}, message.Policy{MaxItems: 1})
	b := atkAttach(t, dir)
	ctx := context.Background()
	q, err := b.Put(message.Header{}, tick{Seq: 1})
	must(t, err, "Put")
	must(t, b.Edge(0).Send(ctx, q), "Send")
	blocked, err := b.Put(message.Header{}, tick{Seq: 2})
	must(t, err, "Put")
	sendErr := make(chan error, 1)
	go func() { sendErr <- b.Edge(0).Send(ctx, blocked) }()
	recvErr := make(chan error, 1)
	go func() { _, err := b.Edge(1).Recv(ctx); recvErr <- err }()
	time.Sleep(30 * time.Millisecond)
	must(t, a.Edge(0).Close(), "Close edge 0")
	must(t, a.Edge(1).Close(), "Close edge 1")
	for i, ch := range []chan error{sendErr, recvErr} {
		select {
		case err := <-ch:
			wantErr(t, err, message.ErrEdgeClosed, "woken by Close")
		case <-time.After(time.Second):
			t.Fatalf("waiter %d not woken by another handle's Close", i)
		}
	}
	if _, mine, err := b.Refs(blocked); mine != 1 || err != nil {
		t.Fatalf("the refused sender's reference: mine %d, %v", mine, err)
	}
	wantErr(t, b.Edge(0).Close(), message.ErrEdgeClosed, "second Close")
	got, err := a.Edge(0).Recv(ctx)
	must(t, err, "Recv of the queued message after Close")
	_, err = a.Edge(0).Recv(ctx)
	wantErr(t, err, message.ErrEdgeClosed, "Recv of a closed, empty edge")
	must(t, a.Free(got), "Free")
	must(t, b.Free(blocked), "Free")
	if a.Available() != 4 {
		t.Fatalf("Available = %d", a.Available())
	}
}

// TestDeadlineQoSSoftCapFreesExpiredFirst is message's test of the same
// name across processes: expired messages do not count towards the soft
// cap that sheds Background (DeadlineQoS "first frees expired messages").
func TestDeadlineQoSSoftCapFreesExpiredFirst(t *testing.T) {
	s, _ := atkStore(t, 8, message.Policy{MaxItems: 8, SoftItems: 2, Admission: message.DeadlineQoS})
	e := s.Edge(0)
	put := func(h message.Header) token.Token {
		tok, err := s.Put(h, tick{})
		must(t, err, "Put")
		return tok
	}
	must(t, e.TrySend(put(message.Header{QoS: message.BestEffort})), "TrySend live")
	// 20 ms: the send must come first even under -race on a loaded machine.
	must(t, e.TrySend(put(message.Header{QoS: message.BestEffort, Deadline: message.Now() + int64(20*time.Millisecond)})), "TrySend dying")
	time.Sleep(25 * time.Millisecond) // one live message, below the soft cap
	if err := e.TrySend(put(message.Header{QoS: message.Background})); err != nil {
		t.Errorf("Background send with 1 live and 1 expired message at soft cap 2 = %v; want it admitted", err)
	}
	shed := put(message.Header{QoS: message.Background})
	if err := e.TrySend(shed); !errors.Is(err, message.ErrRejected) {
		t.Errorf("Background send with 2 live messages at soft cap 2 = %v, want ErrRejected", err)
	}
	if st := e.Stats(); st.Expired != 1 || st.Admitted != 3 || st.Rejected != 1 || st.Len != 2 {
		t.Errorf("Stats = %+v, want Expired 1, Admitted 3, Rejected 1, Len 2", st)
	}
	must(t, s.Free(shed), "Free shed")
	e.Drain()
	if s.Available() != s.Capacity() {
		t.Errorf("Available = %d, want %d", s.Available(), s.Capacity())
	}
}
