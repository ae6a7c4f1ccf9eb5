package message_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

type doc2Pay struct{ A, B uint64 }

func doc2Store(t *testing.T, slots int) *message.Store[doc2Pay] {
	t.Helper()
	s, err := message.NewStore[doc2Pay](arena.Config{Slots: slots, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func doc2Edge(t *testing.T, s message.HeaderStore, p message.Policy) *message.Edge {
	t.Helper()
	e, err := message.NewEdge(s, p)
	if err != nil {
		t.Fatalf("NewEdge(%+v): %v", p, err)
	}
	t.Cleanup(func() { e.Close(); e.Drain() })
	return e
}

func doc2Put(t *testing.T, s *message.Store[doc2Pay], h message.Header) token.Token {
	t.Helper()
	tk, err := s.Put(h, doc2Pay{A: h.Seq})
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// Policy.Validate: "reports the first out-of-range field, wrapped in
// ErrBadPolicy"; "A zero cap means no cap"; NewEdge wraps ErrBadPolicy.
func TestDoc2PolicyValidateBoundaries(t *testing.T) {
	bad := []struct {
		p     message.Policy
		field string
	}{
		{message.Policy{MaxItems: -1}, "MaxItems"},
		{message.Policy{MaxItems: math.MinInt}, "MaxItems"},
		{message.Policy{SoftItems: -1}, "SoftItems"},
		{message.Policy{MaxBytes: -1}, "MaxBytes"},
		{message.Policy{SoftBytes: -1}, "SoftBytes"},
		{message.Policy{MaxItems: 3, SoftItems: 4}, "SoftItems"},
		{message.Policy{MaxBytes: 3, SoftBytes: 4}, "SoftBytes"},
		{message.Policy{Admission: message.DeadlineQoS + 1}, "Admission"},
		{message.Policy{Admission: 255}, "Admission"},
	}
	s := doc2Store(t, 4)
	for _, b := range bad {
		err := b.p.Validate()
		if !errors.Is(err, message.ErrBadPolicy) || !strings.Contains(err.Error(), b.field) {
			t.Errorf("Validate(%+v) = %v, want ErrBadPolicy naming %s", b.p, err, b.field)
		}
		if e, err := message.NewEdge(s, b.p); !errors.Is(err, message.ErrBadPolicy) || e != nil {
			t.Errorf("NewEdge(%+v) = %v, %v", b.p, e, err)
		}
	}
	good := []message.Policy{
		{},
		{MaxItems: 3, SoftItems: 3},
		{MaxBytes: 3, SoftBytes: 3},
		{SoftItems: 5},             // soft with no hard cap
		{SoftBytes: math.MaxInt64}, // ditto
		{MaxItems: math.MaxInt, MaxBytes: math.MaxInt64, Admission: message.DeadlineQoS},
		{MaxItems: 1, Admission: message.DropOldest},
	}
	for _, p := range good {
		if err := p.Validate(); err != nil {
			t.Errorf("Validate(%+v) = %v, want nil", p, err)
		}
		e, err := message.NewEdge(s, p)
		if err != nil {
			t.Errorf("NewEdge(%+v) = %v", p, err)
			continue
		}
		if e.Policy() != p {
			t.Errorf("Policy() = %+v, want %+v", e.Policy(), p)
		}
	}
	if _, err := message.NewEdge(nil, message.Policy{}); err == nil {
		t.Errorf("NewEdge(nil store) = nil error")
	}
}

func TestDoc2Strings(t *testing.T) {
	for w, s := range map[message.Watermark]string{message.BelowSoft: "BelowSoft", message.SoftReached: "SoftReached", message.HardReached: "HardReached", 3: "Watermark(3)", 255: "Watermark(255)"} {
		if w.String() != s {
			t.Errorf("Watermark(%d).String() = %q, want %q", uint8(w), w.String(), s)
		}
	}
	for a, s := range map[message.Admission]string{message.Block: "Block", message.DropNewest: "DropNewest", message.DropOldest: "DropOldest", message.DeadlineQoS: "DeadlineQoS", 4: "Admission(4)"} {
		if a.String() != s {
			t.Errorf("Admission(%d).String() = %q, want %q", uint8(a), a.String(), s)
		}
	}
	for q, s := range map[message.QoS]string{1: "Background", 2: "BestEffort", 3: "LatencyCritical", 4: "QoS(4)", 255: "QoS(255)"} {
		if q.String() != s {
			t.Errorf("QoS(%d).String() = %q, want %q", uint8(q), q.String(), s)
		}
	}
	t.Logf("QoS(0).String() = %q (doc: class name, or QoS(n) outside the known set)", message.QoS(0).String())
	for q, v := range map[message.QoS]bool{0: true, 1: true, 2: true, 3: true, 4: false, 255: false} {
		if q.Valid() != v {
			t.Errorf("QoS(%d).Valid() = %v", q, q.Valid())
		}
	}
	if message.FirstInBatch != 1 || message.LastInBatch != 2 || message.DegradeAllowed != 4 {
		t.Errorf("flag values")
	}
	f := message.FirstInBatch | message.DegradeAllowed
	if !f.Has(0) || !f.Has(message.FirstInBatch) || !f.Has(f) || f.Has(message.LastInBatch) || f.Has(f|message.LastInBatch) {
		t.Errorf("Flags.Has wrong")
	}
}

// Watermark: BelowSoft below every soft cap; SoftReached at or above some soft
// cap, below every hard cap; HardReached at or above some hard cap.
func TestDoc2WatermarkItemBoundaries(t *testing.T) {
	s := doc2Store(t, 16)
	cases := []struct {
		p    message.Policy
		want []message.Watermark // index = Len
	}{
		{message.Policy{SoftItems: 2, MaxItems: 4}, []message.Watermark{0, 0, 1, 1, 2}},
		{message.Policy{SoftItems: 3, MaxItems: 3}, []message.Watermark{0, 0, 0, 2}},
		{message.Policy{MaxItems: 2}, []message.Watermark{0, 0, 2}},
		{message.Policy{SoftItems: 1}, []message.Watermark{0, 1, 1, 1}},
		{message.Policy{}, []message.Watermark{0, 0, 0}},
		{message.Policy{SoftItems: 1, MaxItems: 1}, []message.Watermark{0, 2}},
	}
	for _, c := range cases {
		e := doc2Edge(t, s, c.p)
		for n, want := range c.want {
			if n > 0 {
				if err := e.TrySend(doc2Put(t, s, message.Header{})); err != nil {
					t.Fatalf("%+v: send %d: %v", c.p, n, err)
				}
			}
			if got := e.Watermark(); got != want {
				t.Errorf("%+v Len %d: Watermark = %v, want %v", c.p, n, got, want)
			}
			if st := e.Stats(); st.Watermark != e.Watermark() || st.Len != n || st.HighWater != n {
				t.Errorf("%+v: Stats %+v", c.p, st)
			}
		}
		e.Close()
		if d := e.Drain(); d != len(c.want)-1 {
			t.Errorf("Drain = %d", d)
		}
		if e.Watermark() != message.BelowSoft {
			t.Errorf("after Drain: %v", e.Watermark())
		}
	}
}

func TestDoc2WatermarkByteBoundaries(t *testing.T) {
	s := doc2Store(t, 16)
	e := doc2Edge(t, s, message.Policy{SoftBytes: 10, MaxBytes: 20})
	steps := []struct {
		size uint32
		want message.Watermark
	}{{9, 0}, {1, 1}, {9, 1}, {1, 2}}
	total := int64(0)
	for _, st := range steps {
		if err := e.TrySend(doc2Put(t, s, message.Header{Size: st.size})); err != nil {
			t.Fatal(err)
		}
		total += int64(st.size)
		if e.Bytes() != total || e.Watermark() != st.want {
			t.Errorf("Bytes %d (want %d): Watermark %v, want %v", e.Bytes(), total, e.Watermark(), st.want)
		}
	}
	// At MaxBytes exactly: one more byte does not fit.
	if err := e.TrySend(doc2Put(t, s, message.Header{Size: 1})); !errors.Is(err, message.ErrEdgeFull) || !errors.Is(err, message.ErrRejected) {
		t.Errorf("TrySend past MaxBytes = %v", err)
	}
}

// A message of exactly MaxBytes fits an empty edge; MaxBytes+1 is refused
// with ErrRejected (not ErrEdgeFull: "for a reason other than a full edge"),
// and a Block Send does not wait for it.
func TestDoc2OverMaxBytes(t *testing.T) {
	s := doc2Store(t, 8)
	for _, adm := range []message.Admission{message.Block, message.DropNewest, message.DropOldest, message.DeadlineQoS} {
		e := doc2Edge(t, s, message.Policy{MaxBytes: 100, Admission: adm})
		ok := doc2Put(t, s, message.Header{Size: 100})
		if err := e.Send(context.Background(), ok); err != nil {
			t.Errorf("%v: Size == MaxBytes: %v", adm, err)
		}
		big := doc2Put(t, s, message.Header{Size: 101})
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		start := time.Now()
		err := e.Send(ctx, big)
		cancel()
		if !errors.Is(err, message.ErrRejected) || errors.Is(err, message.ErrEdgeFull) || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%v: Size MaxBytes+1: %v", adm, err)
		}
		if time.Since(start) > 500*time.Millisecond {
			t.Errorf("%v: oversize Send waited", adm)
		}
		if r, _ := s.Refs(big); r != 1 {
			t.Errorf("%v: caller lost its reference", adm)
		}
		if e.Len() != 1 {
			t.Errorf("%v: oversize send evicted: Len %d", adm, e.Len())
		}
		st := e.Stats()
		if st.Rejected+st.Invalid != 1 || st.Evicted != 0 || st.Admitted != 1 {
			t.Errorf("%v: stats %+v", adm, st)
		}
		s.Free(big)
		e.Close()
		e.Drain()
	}
}

// HighWater: "the most tokens ever queued at once", also over the lock-free
// ring path (no byte caps, BestEffort, no deadline).
func TestDoc2HighWaterFastPath(t *testing.T) {
	s := doc2Store(t, 64)
	for _, p := range []message.Policy{{}, {MaxItems: 50}, {MaxItems: 50, Admission: message.DropOldest}} {
		e := doc2Edge(t, s, p)
		for round := 0; round < 3; round++ {
			n := 5 + round*7
			for i := 0; i < n; i++ {
				if err := e.TrySend(doc2Put(t, s, message.Header{})); err != nil {
					t.Fatal(err)
				}
			}
			for i := 0; i < n; i++ {
				tk, ok := e.TryRecv()
				if !ok {
					t.Fatal("TryRecv empty")
				}
				s.Free(tk)
			}
		}
		st := e.Stats()
		if st.HighWater != 19 || st.Admitted != 5+12+19 || st.Delivered != st.Admitted || st.Len != 0 {
			t.Errorf("%+v: stats %+v, want HighWater 19", p, st)
		}
	}
}

// Sends of an expired message: ErrExpired and ErrRejected, caller keeps it,
// counted in Rejected. DegradeAllowed: admitted, delivered, counted Late.
func TestDoc2ExpiredOnSend(t *testing.T) {
	s := doc2Store(t, 8)
	e := doc2Edge(t, s, message.Policy{})
	tk := doc2Put(t, s, message.Header{Deadline: 1})
	err := e.TrySend(tk)
	if !errors.Is(err, message.ErrExpired) || !errors.Is(err, message.ErrRejected) {
		t.Errorf("expired TrySend = %v", err)
	}
	if n, err := e.SendBatch(context.Background(), []token.Token{tk}); n != 0 || !errors.Is(err, message.ErrExpired) {
		t.Errorf("expired SendBatch = %d %v", n, err)
	}
	if r, _ := s.Refs(tk); r != 1 {
		t.Errorf("caller lost reference: %d", r)
	}
	if st := e.Stats(); st.Rejected != 2 || st.Invalid != 0 || st.Admitted != 0 {
		t.Errorf("stats %+v", st)
	}
	s.Free(tk)
	late := doc2Put(t, s, message.Header{Deadline: 1, Flags: message.DegradeAllowed})
	if err := e.TrySend(late); err != nil {
		t.Fatalf("DegradeAllowed expired send: %v", err)
	}
	got, err := e.Recv(context.Background())
	if err != nil || got != late {
		t.Fatalf("Recv = %v %v", got, err)
	}
	if st := e.Stats(); st.Late != 1 || st.Delivered != 1 || st.Expired != 0 {
		t.Errorf("stats %+v", st)
	}
	s.Free(got)
	// Expires while queued: freed, counted Expired, never delivered.
	soon := doc2Put(t, s, message.Header{Deadline: message.DeadlineIn(5 * time.Millisecond)})
	if err := e.TrySend(soon); err != nil {
		t.Fatal(err)
	}
	time.Sleep(15 * time.Millisecond)
	if tk, ok := e.TryRecv(); ok {
		t.Errorf("expired message delivered: %v", tk)
	}
	if st := e.Stats(); st.Expired != 1 || st.Len != 0 {
		t.Errorf("stats %+v", st)
	}
	if s.Available() != s.Capacity() {
		t.Errorf("slot lost: %d/%d", s.Available(), s.Capacity())
	}
}

// Bad tokens on sends: Nil, stale, out of range -> error matching the arena
// sentinels, counted in Invalid, nothing admitted.
func TestDoc2SendBadTokens(t *testing.T) {
	s := doc2Store(t, 4)
	e := doc2Edge(t, s, message.Policy{MaxItems: 2})
	stale := doc2Put(t, s, message.Header{})
	s.Free(stale)
	for _, c := range []struct {
		tk   token.Token
		want error
	}{{token.Nil, arena.ErrBadToken}, {stale, arena.ErrStale}, {token.New(4, 1), arena.ErrBadToken}, {token.New(0, 0), arena.ErrBadToken}} {
		if err := e.TrySend(c.tk); !errors.Is(err, c.want) {
			t.Errorf("TrySend(%v) = %v, want %v", c.tk, err, c.want)
		}
		//lint:ignore SA1012 a nil context is what is tested
		if err := e.Send(nil, c.tk); !errors.Is(err, c.want) { //nolint:staticcheck
			t.Errorf("Send(%v) = %v, want %v", c.tk, err, c.want)
		}
	}
	if st := e.Stats(); st.Invalid != 8 || st.Admitted != 0 || st.Rejected != 0 {
		t.Errorf("stats %+v, want Invalid 8", st)
	}
	// Invalid QoS.
	q := doc2Put(t, s, message.Header{QoS: 4})
	if err := e.TrySend(q); !errors.Is(err, message.ErrRejected) || errors.Is(err, message.ErrEdgeFull) {
		t.Errorf("QoS 4 = %v", err)
	}
	s.Free(q)
}

// Close: second Close -> ErrEdgeClosed; sends -> ErrEdgeClosed (counted
// Rejected); receivers drain then get ErrEdgeClosed; TryRecv false on a
// closed empty edge; empty batches return 0, nil at once.
func TestDoc2EdgeClose(t *testing.T) {
	s := doc2Store(t, 8)
	e := doc2Edge(t, s, message.Policy{MaxItems: 4})
	a := doc2Put(t, s, message.Header{Seq: 1})
	b := doc2Put(t, s, message.Header{Seq: 2, QoS: message.LatencyCritical})
	e.TrySend(a)
	e.TrySend(b)
	if e.Closed() {
		t.Error("Closed before Close")
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); !errors.Is(err, message.ErrEdgeClosed) {
		t.Errorf("second Close = %v", err)
	}
	if !e.Closed() {
		t.Error("Closed false")
	}
	c := doc2Put(t, s, message.Header{})
	if err := e.TrySend(c); !errors.Is(err, message.ErrEdgeClosed) {
		t.Errorf("TrySend closed = %v", err)
	}
	if err := e.Send(context.Background(), c); !errors.Is(err, message.ErrEdgeClosed) {
		t.Errorf("Send closed = %v", err)
	}
	if n, err := e.SendBatch(context.Background(), []token.Token{c}); n != 0 || !errors.Is(err, message.ErrEdgeClosed) {
		t.Errorf("SendBatch closed = %d %v", n, err)
	}
	if st := e.Stats(); st.Rejected != 3 {
		t.Errorf("Rejected = %d, want 3", st.Rejected)
	}
	if n, err := e.SendBatch(context.Background(), nil); n != 0 || err != nil {
		t.Errorf("empty SendBatch on closed edge = %d %v", n, err)
	}
	if n, err := e.RecvBatch(context.Background(), nil); n != 0 || err != nil {
		t.Errorf("empty RecvBatch = %d %v", n, err)
	}
	// LatencyCritical first.
	got, ok := e.TryRecv()
	if !ok || got != b {
		t.Errorf("TryRecv on closed = %v %v, want LC %v", got, ok, b)
	}
	//lint:ignore SA1012 a nil context is what is tested
	got, err := e.Recv(nil) //nolint:staticcheck
	if err != nil || got != a {
		t.Errorf("Recv on closed = %v %v", got, err)
	}
	if _, ok := e.TryRecv(); ok {
		t.Error("TryRecv on closed empty")
	}
	if _, err := e.Recv(context.Background()); !errors.Is(err, message.ErrEdgeClosed) {
		t.Errorf("Recv on closed empty = %v", err)
	}
	dst := make([]token.Token, 3)
	if n, err := e.RecvBatch(context.Background(), dst); n != 0 || !errors.Is(err, message.ErrEdgeClosed) {
		t.Errorf("RecvBatch closed empty = %d %v", n, err)
	}
	if n, err := e.RecvBatch(context.Background(), dst[:0]); n != 0 || err != nil {
		t.Errorf("RecvBatch empty dst on closed empty edge = %d %v, want 0 nil", n, err)
	}
	for range e.All(context.Background()) {
		t.Error("All yielded on closed empty")
	}
	s.Free(a)
	s.Free(b)
	s.Free(c)
	st := e.Stats()
	if st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained+uint64(st.Len) {
		t.Errorf("conservation %+v", st)
	}
}

// Recv with a done ctx returns ctx.Err(); RecvBatch too (n 0).
func TestDoc2RecvCtx(t *testing.T) {
	s := doc2Store(t, 4)
	e := doc2Edge(t, s, message.Policy{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.Recv(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Recv = %v", err)
	}
	if n, err := e.RecvBatch(ctx, make([]token.Token, 2)); n != 0 || !errors.Is(err, context.Canceled) {
		t.Errorf("RecvBatch = %d %v", n, err)
	}
	n := 0
	for range e.All(ctx) {
		n++
	}
	if n != 0 {
		t.Errorf("All yielded")
	}
	// Block + full + done ctx: Send returns ctx.Err(), caller keeps t, Rejected.
	f := doc2Edge(t, s, message.Policy{MaxItems: 1})
	f.TrySend(doc2Put(t, s, message.Header{}))
	tk := doc2Put(t, s, message.Header{})
	if err := f.Send(ctx, tk); !errors.Is(err, context.Canceled) {
		t.Errorf("Block Send done ctx = %v", err)
	}
	if err := f.TrySend(tk); !errors.Is(err, message.ErrEdgeFull) {
		t.Errorf("TrySend full Block = %v", err)
	}
	if st := f.Stats(); st.Rejected != 2 {
		t.Errorf("Rejected %d, want 2; stats %+v", st.Rejected, st)
	}
	t.Logf("Waited after a done-ctx Send on a full edge: %d", f.Stats().Waited)
	if r, _ := s.Refs(tk); r != 1 {
		t.Errorf("refs %d", r)
	}
	s.Free(tk)
}

// RecvBatch: up to len(dst), LC lane first, FIFO within a lane.
func TestDoc2RecvBatchOrder(t *testing.T) {
	s := doc2Store(t, 16)
	e := doc2Edge(t, s, message.Policy{})
	var want []token.Token
	var be, lc []token.Token
	for i := 0; i < 6; i++ {
		q := message.QoS(i%3 + 1)
		tk := doc2Put(t, s, message.Header{Seq: uint64(i), QoS: q})
		if err := e.TrySend(tk); err != nil {
			t.Fatal(err)
		}
		if q == message.LatencyCritical {
			lc = append(lc, tk)
		} else {
			be = append(be, tk)
		}
	}
	want = append(lc, be...)
	dst := make([]token.Token, 1)
	var got []token.Token
	for len(got) < 6 {
		n, err := e.RecvBatch(context.Background(), dst)
		if err != nil || n != 1 {
			t.Fatalf("RecvBatch len 1 = %d %v", n, err)
		}
		got = append(got, dst[0])
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("order %v, want %v", got, want)
			break
		}
		s.Free(got[i])
	}
}

// SendBatch stops at the first refusal: n is its index, one refusal counted,
// the rest not tried.
func TestDoc2SendBatchStops(t *testing.T) {
	s := doc2Store(t, 16)
	e := doc2Edge(t, s, message.Policy{MaxItems: 2, Admission: message.DropNewest})
	ts := []token.Token{doc2Put(t, s, message.Header{}), doc2Put(t, s, message.Header{}), doc2Put(t, s, message.Header{}), token.Nil}
	n, err := e.SendBatch(context.Background(), ts)
	if n != 2 || !errors.Is(err, message.ErrEdgeFull) {
		t.Errorf("SendBatch = %d %v", n, err)
	}
	if st := e.Stats(); st.Admitted != 2 || st.Rejected != 1 || st.Invalid != 0 {
		t.Errorf("stats %+v", st)
	}
	// A bad token first: n = 0, counted in Invalid once.
	f := doc2Edge(t, s, message.Policy{})
	n, err = f.SendBatch(context.Background(), []token.Token{token.Nil, ts[2]})
	if n != 0 || !errors.Is(err, arena.ErrBadToken) {
		t.Errorf("SendBatch nil first = %d %v", n, err)
	}
	if st := f.Stats(); st.Invalid != 1 || st.Admitted != 0 {
		t.Errorf("stats %+v", st)
	}
	n, err = f.SendBatch(context.Background(), []token.Token{ts[2], token.Nil})
	if n != 1 || !errors.Is(err, arena.ErrBadToken) {
		t.Errorf("SendBatch nil second = %d %v", n, err)
	}
}

// Admission modes at MaxItems 1.
func TestDoc2AdmissionAtOne(t *testing.T) {
	s := doc2Store(t, 16)
	// DropOldest evicts and frees the oldest.
	e := doc2Edge(t, s, message.Policy{MaxItems: 1, Admission: message.DropOldest})
	a := doc2Put(t, s, message.Header{QoS: message.LatencyCritical})
	b := doc2Put(t, s, message.Header{QoS: message.Background})
	e.TrySend(a)
	if err := e.TrySend(b); err != nil {
		t.Errorf("DropOldest send = %v", err)
	}
	if _, err := s.Header(a); !errors.Is(err, arena.ErrStale) {
		t.Errorf("evicted message not freed: %v", err)
	}
	if st := e.Stats(); st.Evicted != 1 || st.Len != 1 {
		t.Errorf("stats %+v", st)
	}
	// DeadlineQoS never evicts higher QoS.
	d := doc2Edge(t, s, message.Policy{MaxItems: 1, Admission: message.DeadlineQoS})
	hi := doc2Put(t, s, message.Header{QoS: message.LatencyCritical})
	lo := doc2Put(t, s, message.Header{QoS: message.BestEffort})
	d.TrySend(hi)
	if err := d.TrySend(lo); !errors.Is(err, message.ErrEdgeFull) {
		t.Errorf("DeadlineQoS lower over higher = %v", err)
	}
	// Equal QoS may be evicted.
	hi2 := doc2Put(t, s, message.Header{QoS: message.LatencyCritical})
	if err := d.TrySend(hi2); err != nil {
		t.Errorf("DeadlineQoS equal QoS = %v", err)
	}
	s.Free(lo)
	// DeadlineQoS with no soft cap: Background competes at the hard cap.
	g := doc2Edge(t, s, message.Policy{MaxItems: 2, Admission: message.DeadlineQoS})
	for i := 0; i < 2; i++ {
		if err := g.TrySend(doc2Put(t, s, message.Header{QoS: message.Background})); err != nil {
			t.Errorf("Background with no soft cap #%d = %v", i, err)
		}
	}
	// With a soft cap: at or above it, Background refused outright (not full).
	h := doc2Edge(t, s, message.Policy{SoftItems: 1, MaxItems: 3, Admission: message.DeadlineQoS})
	if err := h.TrySend(doc2Put(t, s, message.Header{QoS: message.Background})); err != nil {
		t.Errorf("Background below soft = %v", err)
	}
	bg := doc2Put(t, s, message.Header{QoS: message.Background})
	if err := h.TrySend(bg); !errors.Is(err, message.ErrRejected) || errors.Is(err, message.ErrEdgeFull) {
		t.Errorf("Background at soft = %v", err)
	}
	s.Free(bg)
	if err := h.TrySend(doc2Put(t, s, message.Header{})); err != nil {
		t.Errorf("BestEffort at soft = %v", err)
	}
}

// Store.Put: zero Created stamped, zero Size = sizeof(P); set values kept.
func TestDoc2PutDefaults(t *testing.T) {
	s := doc2Store(t, 4)
	before := message.Now()
	tk := doc2Put(t, s, message.Header{})
	h, err := s.Header(tk)
	if err != nil || h.Created < before || h.Created > message.Now() || h.Size != uint32(unsafe.Sizeof(doc2Pay{})) {
		t.Errorf("defaults: %+v %v", h, err)
	}
	tk2 := doc2Put(t, s, message.Header{Created: 5, Size: 1, QoS: 3, Trace: 9, Seq: 8, Flags: 7, Deadline: math.MaxInt64})
	h2, _ := s.Header(tk2)
	if h2 != (message.Header{Created: 5, Size: 1, QoS: 3, Trace: 9, Seq: 8, Flags: 7, Deadline: math.MaxInt64}) {
		t.Errorf("kept: %+v", h2)
	}
	tk3, err := s.PutFunc(message.Header{}, func(m *message.Message[doc2Pay]) error {
		if m.Header.Size != 16 || m.Header.Created == 0 || m.Payload != (doc2Pay{}) {
			t.Errorf("PutFunc slot header %+v", m.Header)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Free(tk)
	s.Free(tk2)
	s.Free(tk3)
	// zero-size payload
	z, err := message.NewStore[struct{}](arena.Config{Slots: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	zt, err := z.Put(message.Header{}, struct{}{})
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := z.Header(zt); h.Size != 0 {
		t.Errorf("zero-size P Size = %d", h.Size)
	}
	if _, err := z.Put(message.Header{}, struct{}{}); err != arena.ErrFull {
		t.Errorf("full store Put = %v, want bare arena.ErrFull", err)
	}
	z.Free(zt)
}

// Free "more often than t was retained (plus one for Put) returns an error
// matching arena.ErrStale and changes nothing"; Retain refuses a token whose
// last reference is gone.
func TestDoc2RefCounting(t *testing.T) {
	s := doc2Store(t, 2)
	tk := doc2Put(t, s, message.Header{})
	if r, err := s.Refs(tk); r != 1 || err != nil {
		t.Errorf("Refs = %d %v", r, err)
	}
	for i := 0; i < 3; i++ {
		if err := s.Retain(tk); err != nil {
			t.Fatal(err)
		}
	}
	for i := 4; i > 0; i-- {
		if r, _ := s.Refs(tk); r != i {
			t.Errorf("Refs = %d, want %d", r, i)
		}
		if err := s.Free(tk); err != nil {
			t.Errorf("Free %d: %v", i, err)
		}
	}
	if err := s.Free(tk); !errors.Is(err, arena.ErrStale) {
		t.Errorf("extra Free = %v", err)
	}
	if err := s.Retain(tk); !errors.Is(err, arena.ErrStale) {
		t.Errorf("Retain freed = %v", err)
	}
	if _, err := s.Refs(tk); !errors.Is(err, arena.ErrStale) {
		t.Errorf("Refs freed = %v", err)
	}
	for _, bad := range []token.Token{token.Nil, token.New(2, 1), token.New(0, 0)} {
		if err := s.Free(bad); !errors.Is(err, arena.ErrBadToken) {
			t.Errorf("Free(%v) = %v", bad, err)
		}
		if err := s.Retain(bad); !errors.Is(err, arena.ErrBadToken) {
			t.Errorf("Retain(%v) = %v", bad, err)
		}
		if _, err := s.Header(bad); !errors.Is(err, arena.ErrBadToken) {
			t.Errorf("Header(%v) = %v", bad, err)
		}
	}
	if s.Available() != 2 {
		t.Errorf("Available %d", s.Available())
	}
	if st := s.Stats(); st.Allocs != 1 || st.Frees != 1 {
		t.Errorf("arena stats %+v", st)
	}
}

// Store.Close: ErrReferenced with outstanding references; each may be freed
// once (nil) and then ErrClosed; every other call ErrClosed; second Close
// ErrClosed; Tokens yields nothing; Trim ErrClosed.
func TestDoc2StoreClose(t *testing.T) {
	s, err := message.NewStore[doc2Pay](arena.Config{Slots: 4, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := s.Put(message.Header{}, doc2Pay{})
	s.Retain(a)
	b, _ := s.Put(message.Header{}, doc2Pay{})
	c, _ := s.Put(message.Header{}, doc2Pay{})
	s.Free(c)
	err = s.Close()
	if !errors.Is(err, message.ErrReferenced) {
		t.Fatalf("Close = %v, want ErrReferenced", err)
	}
	if !strings.Contains(err.Error(), "3") || !strings.Contains(err.Error(), "2") {
		t.Logf("Close error does not obviously count 2 messages / 3 refs: %v", err)
	}
	if err := s.Close(); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("second Close = %v", err)
	}
	if err := s.Free(c); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("Free stale after Close = %v", err)
	}
	for i, want := range []error{nil, nil, arena.ErrClosed} {
		if err := s.Free(a); !errors.Is(err, want) && !(want == nil && err == nil) {
			t.Errorf("Free(a) #%d after Close = %v, want %v", i, err, want)
		}
	}
	if err := s.Free(b); err != nil {
		t.Errorf("Free(b) = %v", err)
	}
	if err := s.Free(b); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("Free(b) again = %v", err)
	}
	chk := func(name string, err error) {
		t.Helper()
		if !errors.Is(err, arena.ErrClosed) {
			t.Errorf("%s after Close = %v", name, err)
		}
	}
	_, err = s.Put(message.Header{}, doc2Pay{})
	chk("Put", err)
	//lint:ignore SA1012 a nil context is what is tested
	_, err = s.PutWait(nil, message.Header{}, doc2Pay{}) //nolint:staticcheck
	chk("PutWait", err)
	_, err = s.PutFunc(message.Header{}, func(*message.Message[doc2Pay]) error { return nil })
	chk("PutFunc", err)
	_, err = s.Header(a)
	chk("Header", err)
	chk("View", s.View(a, func(*message.Message[doc2Pay]) {}))
	chk("Update", s.Update(a, func(*message.Message[doc2Pay]) {}))
	chk("Retain", s.Retain(a))
	chk("Retain nil", s.Retain(token.Nil))
	chk("Free nil", s.Free(token.Nil))
	_, err = s.Refs(a)
	chk("Refs", err)
	_, err = s.Trim()
	chk("Trim", err)
	for tk := range s.Tokens() {
		t.Errorf("Tokens after Close: %v", tk)
	}
	t.Logf("Store.Available after Close = %d, Capacity %d", s.Available(), s.Capacity())
}

// ByteStore size boundaries.
func TestDoc2ByteStoreBoundaries(t *testing.T) {
	bs, err := message.NewByteStore[[64]byte](arena.Config{Slots: 4, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	if bs.SlotSize() != 64 {
		t.Errorf("SlotSize %d", bs.SlotSize())
	}
	full := make([]byte, 64)
	for i := range full {
		full[i] = byte(i + 1)
	}
	tk, err := bs.PutBytes(message.Header{Size: 3}, full)
	if err != nil {
		t.Fatalf("PutBytes 64: %v", err)
	}
	if h, _ := bs.Header(tk); h.Size != 64 {
		t.Errorf("Size %d", h.Size)
	}
	if _, err := bs.PutBytes(message.Header{}, make([]byte, 65)); !errors.Is(err, message.ErrTooLarge) {
		t.Errorf("PutBytes 65 = %v", err)
	}
	e0, err := bs.PutBytes(message.Header{Size: 9}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := bs.Header(e0); h.Size != 0 {
		t.Errorf("PutBytes(nil) Size = %d, want 0", h.Size)
	}
	out, err := bs.AppendTo(nil, e0)
	if err != nil || len(out) != 0 {
		t.Errorf("AppendTo empty = %v %v", out, err)
	}
	out, err = bs.AppendTo([]byte{9}, tk)
	if err != nil || len(out) != 65 || out[0] != 9 || out[64] != 64 {
		t.Errorf("AppendTo = %d %v", len(out), err)
	}
	bs.Free(e0)
	// Write: n == SlotSize ok; n outside the slot fails and frees the slot.
	w, err := bs.Write(message.Header{}, func(slot []byte) (int, error) {
		if len(slot) != 64 {
			t.Errorf("Write slot len %d", len(slot))
		}
		return 64, nil
	})
	if err != nil {
		t.Errorf("Write 64 = %v", err)
	} else {
		bs.Free(w)
	}
	avail := bs.Available()
	for _, n := range []int{65, -1, math.MaxInt, math.MinInt} {
		if tk, err := bs.Write(message.Header{}, func([]byte) (int, error) { return n, nil }); err == nil {
			t.Errorf("Write n=%d succeeded: %v", n, tk)
		}
		if bs.Available() != avail {
			t.Errorf("Write n=%d lost a slot", n)
		}
	}
	boom := errors.New("boom")
	if _, err := bs.Write(message.Header{}, func([]byte) (int, error) { return 3, boom }); !errors.Is(err, boom) {
		t.Errorf("Write fill error = %v", err)
	}
	if bs.Available() != avail {
		t.Errorf("Write error lost a slot")
	}
	// Rewrite with a bad length: error, and the message keeps a sane length.
	for _, n := range []int{65, -1} {
		err := bs.Rewrite(tk, func(slot []byte, used int) int { return n })
		if err == nil {
			t.Errorf("Rewrite n=%d accepted", n)
		}
		h, _ := bs.Header(tk)
		if h.Size > 64 {
			t.Errorf("Rewrite n=%d left Size %d", n, h.Size)
		}
	}
	if err := bs.Rewrite(tk, func(slot []byte, used int) int { return 0 }); err != nil {
		t.Errorf("Rewrite 0 = %v", err)
	}
	bs.Read(tk, func(h message.Header, data []byte) {
		if len(data) != 0 || h.Size != 0 {
			t.Errorf("Read after Rewrite 0: %d %d", len(data), h.Size)
		}
	})
	// Put (promoted): Size 0 is the whole slot.
	p, err := bs.Put(message.Header{}, [64]byte{})
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := bs.Header(p); h.Size != 64 {
		t.Errorf("promoted Put Size %d", h.Size)
	}
	bs.Free(p)
	bs.Free(tk)
}

// SendAll claims.
func TestDoc2SendAll(t *testing.T) {
	s := doc2Store(t, 8)
	ctx := context.Background()
	// No edges: frees t, 0, nil.
	tk := doc2Put(t, s, message.Header{})
	if n, err := message.SendAll(ctx, s, tk); n != 0 || err != nil {
		t.Errorf("SendAll no edges = %d %v", n, err)
	}
	if _, err := s.Header(tk); !errors.Is(err, arena.ErrStale) {
		t.Errorf("t not freed: %v", err)
	}
	// No edges, stale t: 0 and the Free error.
	if n, err := message.SendAll(ctx, s, tk); n != 0 || !errors.Is(err, arena.ErrStale) {
		t.Errorf("SendAll no edges stale = %d %v", n, err)
	}
	// nil rs: ErrNilStore, caller keeps t.
	tk = doc2Put(t, s, message.Header{})
	e1 := doc2Edge(t, s, message.Policy{MaxItems: 1, Admission: message.DropNewest})
	if n, err := message.SendAll(ctx, nil, tk, e1); n != 0 || !errors.Is(err, message.ErrNilStore) {
		t.Errorf("SendAll nil rs = %d %v", n, err)
	}
	if r, _ := s.Refs(tk); r != 1 || e1.Len() != 0 {
		t.Errorf("nil rs: refs %d Len %d", r, e1.Len())
	}
	// nil edge and a full edge: refused shares freed, sent counts the rest.
	e2 := doc2Edge(t, s, message.Policy{})
	n, err := message.SendAll(ctx, s, tk, nil, e2, nil)
	if n != 1 || !errors.Is(err, message.ErrNilEdge) {
		t.Errorf("SendAll with nil edges = %d %v", n, err)
	}
	if r, _ := s.Refs(tk); r != 1 {
		t.Errorf("refs after SendAll = %d, want 1 (the edge's)", r)
	}
	e1.TrySend(doc2Put(t, s, message.Header{}))
	tk2 := doc2Put(t, s, message.Header{})
	n, err = message.SendAll(ctx, s, tk2, e1, e2)
	if n != 1 || !errors.Is(err, message.ErrEdgeFull) {
		t.Errorf("SendAll one full = %d %v", n, err)
	}
	// Every edge refuses: t freed, sent 0.
	tk3 := doc2Put(t, s, message.Header{})
	n, err = message.SendAll(ctx, s, tk3, e1, nil)
	if n != 0 || err == nil {
		t.Errorf("SendAll all refuse = %d %v", n, err)
	}
	if _, err := s.Header(tk3); !errors.Is(err, arena.ErrStale) {
		t.Errorf("all refused: t not freed: %v", err)
	}
	// Stale t with several edges: Retain fails, no edge tried, 0.
	l1, l2 := e2.Len(), e1.Len()
	n, err = message.SendAll(ctx, s, tk3, e2, e1)
	if n != 0 || !errors.Is(err, arena.ErrStale) || e2.Len() != l1 || e1.Len() != l2 {
		t.Errorf("SendAll stale = %d %v", n, err)
	}
	// Stale t with one edge.
	n, err = message.SendAll(ctx, s, tk3, e2)
	if n != 0 || !errors.Is(err, arena.ErrStale) {
		t.Errorf("SendAll stale one edge = %d %v", n, err)
	}
	e1.Close()
	e2.Close()
	e1.Drain()
	e2.Drain()
	if s.Available() != s.Capacity() {
		t.Errorf("slots lost: %d/%d", s.Available(), s.Capacity())
	}
}

// Deadline helpers at their boundaries.
func TestDoc2DeadlineHelpers(t *testing.T) {
	if d := message.DeadlineAt(time.Time{}); d != 0 {
		t.Errorf("DeadlineAt(zero) = %d", d)
	}
	if d := message.DeadlineAt(time.Unix(0, 0)); d != 1 {
		t.Errorf("DeadlineAt(1970) = %d, want 1 (before boot)", d)
	}
	if d := message.DeadlineAt(time.Unix(0, 1)); d != 1 {
		t.Errorf("DeadlineAt(1970+1ns) = %d", d)
	}
	far := time.Unix(1<<40, 0)
	if d := message.DeadlineAt(far); d <= message.Now() {
		t.Errorf("DeadlineAt(far future) = %d", d)
	}
	if d := message.DeadlineAt(time.Unix(1<<62, 0)); d != math.MaxInt64 {
		t.Errorf("DeadlineAt(max time) = %d", d)
	}
	// Wall-clock-only near-future time converts near Now()+d.
	wall := time.Now().Add(time.Second).Round(0)
	if d := message.DeadlineAt(wall) - message.Now(); d < int64(900*time.Millisecond) || d > int64(1100*time.Millisecond) {
		t.Errorf("wall-clock DeadlineAt offset = %v", time.Duration(d))
	}
	mono := time.Now().Add(time.Second)
	if d := message.DeadlineAt(mono) - message.Now(); d < int64(900*time.Millisecond) || d > int64(1100*time.Millisecond) {
		t.Errorf("monotonic DeadlineAt offset = %v", time.Duration(d))
	}
	//lint:ignore SA1012 a nil context is what is tested
	if d, ok := message.DeadlineFromContext(nil); d != 0 || ok { //nolint:staticcheck
		t.Errorf("FromContext(nil) = %d %v", d, ok)
	}
	if d, ok := message.DeadlineFromContext(context.Background()); d != 0 || ok {
		t.Errorf("FromContext(bg) = %d %v", d, ok)
	}
	past, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Hour))
	defer cancel()
	d, ok := message.DeadlineFromContext(past)
	h := message.Header{Deadline: d}
	if !ok || d == 0 || !h.Expired(message.Now()) {
		t.Errorf("FromContext(past) = %d %v", d, ok)
	}
	// Expired: strictly past.
	h = message.Header{Deadline: 100}
	if h.Expired(100) || !h.Expired(101) || h.Expired(99) {
		t.Errorf("Expired boundary")
	}
	h = message.Header{}
	if h.Expired(math.MaxInt64) {
		t.Errorf("no deadline expired")
	}
	if _, ok := h.DeadlineTime(); ok {
		t.Errorf("DeadlineTime with no deadline = true")
	}
	// Round trip.
	target := time.Now().Add(3 * time.Second)
	h.SetDeadline(target)
	back, ok := h.DeadlineTime()
	if !ok || back.Sub(target).Abs() > time.Microsecond {
		t.Errorf("round trip %v vs %v", back, target)
	}
	if time.Until(back) < 2*time.Second {
		t.Errorf("time.Until(DeadlineTime) = %v", time.Until(back))
	}
	h.SetDeadline(time.Time{})
	if h.Deadline != 0 {
		t.Errorf("SetDeadline(zero) = %d", h.Deadline)
	}
	if d := message.DeadlineIn(0) - message.Now(); d > 0 {
		t.Errorf("DeadlineIn(0) in the future by %d", d)
	}
	n1 := message.Now()
	n2 := message.Now()
	if n1 <= 0 || n2 < n1 {
		t.Errorf("Now %d %d", n1, n2)
	}
	h = message.Header{Created: message.Now() - int64(time.Second)}
	if a := h.Age(message.Now()); a < time.Second || a > 2*time.Second {
		t.Errorf("Age %v", a)
	}
}

// Graph wiring errors.
func TestDoc2GraphBadWiring(t *testing.T) {
	s := doc2Store(t, 4)
	src := func(ctx context.Context, out *message.Emitter) error { return nil }
	sink := func(ctx context.Context, t token.Token) error { return nil }
	mk := func(build func(g *message.Graph, e *message.Edge)) error {
		e, _ := message.NewEdge(s, message.Policy{})
		g := message.NewGraph(s)
		build(g, e)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return g.Run(ctx)
	}
	cases := map[string]func(g *message.Graph, e *message.Edge){
		"zero workers":     func(g *message.Graph, e *message.Edge) { g.Source("s", 0, src, e); g.Sink("k", 1, e, sink) },
		"negative workers": func(g *message.Graph, e *message.Edge) { g.Source("s", 1, src, e); g.Sink("k", -1, e, sink) },
		"nil fn":           func(g *message.Graph, e *message.Edge) { g.Source("s", 1, nil, e); g.Sink("k", 1, e, sink) },
		"nil in":           func(g *message.Graph, e *message.Edge) { g.Source("s", 1, src, e); g.Sink("k", 1, nil, sink) },
		"two consumers": func(g *message.Graph, e *message.Edge) {
			g.Source("s", 1, src, e)
			g.Sink("k", 1, e, sink)
			g.Sink("k2", 1, e, sink)
		},
		"no feeder":   func(g *message.Graph, e *message.Edge) { g.Sink("k", 1, e, sink) },
		"no consumer": func(g *message.Graph, e *message.Edge) { g.Source("s", 1, src, e) },
		"nil out":     func(g *message.Graph, e *message.Edge) { g.Source("s", 1, src, e, nil); g.Sink("k", 1, e, sink) },
	}
	for name, b := range cases {
		if err := mk(b); !errors.Is(err, message.ErrBadGraph) {
			t.Errorf("%s: Run = %v, want ErrBadGraph", name, err)
		}
	}
	if err := message.NewGraph(nil).Run(context.Background()); !errors.Is(err, message.ErrNilStore) && !errors.Is(err, message.ErrBadGraph) {
		t.Errorf("NewGraph(nil).Run = %v", err)
	}
	// Run twice.
	e, _ := message.NewEdge(s, message.Policy{})
	g := message.NewGraph(s)
	g.Source("s", 1, src, e)
	g.Sink("k", 1, e, sink)
	//lint:ignore SA1012 a nil context is what is tested
	if err := g.Run(nil); err != nil { //nolint:staticcheck
		t.Fatalf("Run = %v", err)
	}
	if err := g.Run(context.Background()); !errors.Is(err, message.ErrBadGraph) {
		t.Errorf("second Run = %v", err)
	}
	// Self-loop: cycle.
	e3, _ := message.NewEdge(s, message.Policy{})
	g3 := message.NewGraph(s)
	g3.Stage("st", 1, e3, func(ctx context.Context, t token.Token, out *message.Emitter) error { return out.Emit(t) }, e3)
	if err := g3.Run(context.Background()); !errors.Is(err, message.ErrGraphCycle) || !errors.Is(err, message.ErrBadGraph) || !strings.Contains(err.Error(), "st") {
		t.Errorf("self loop = %v", err)
	}
	// NodePanic.Unwrap.
	p := &message.NodePanic{Node: "n", Value: "str"}
	if p.Unwrap() != nil {
		t.Errorf("Unwrap non-error")
	}
	boom := errors.New("boom")
	p = &message.NodePanic{Node: "n", Value: boom}
	if !errors.Is(p, boom) || !strings.Contains(p.Error(), "n") {
		t.Errorf("NodePanic error %v", p)
	}
	if s.Available() != s.Capacity() {
		t.Errorf("slots lost")
	}
}

// Edge doc, Deadlines: a message that expires while queued is freed and
// counted in Stats.Expired "when a receiver reaches it, or earlier when a
// sender needs its room". So every admission mode finds room in an edge
// whose only queued messages have expired, and counts them Expired.
func TestDoc2ExpiredMakesRoomEveryMode(t *testing.T) {
	s := doc2Store(t, 16)
	for _, adm := range []message.Admission{message.Block, message.DropNewest, message.DropOldest, message.DeadlineQoS} {
		for _, pol := range []message.Policy{{MaxItems: 1, Admission: adm}, {MaxBytes: 16, Admission: adm}} {
			for _, q := range []message.QoS{message.Background, message.LatencyCritical} {
				e := doc2Edge(t, s, pol)
				old := doc2Put(t, s, message.Header{QoS: q, Deadline: message.DeadlineIn(30 * time.Millisecond)})
				if err := e.TrySend(old); err != nil {
					t.Fatal(err)
				}
				time.Sleep(45 * time.Millisecond)
				nw := doc2Put(t, s, message.Header{QoS: message.Background})
				if err := e.TrySend(nw); err != nil {
					t.Errorf("%+v old QoS %v: TrySend after expiry = %v", pol, q, err)
					s.Free(nw)
				}
				st := e.Stats()
				if st.Expired != 1 || st.Evicted != 0 {
					t.Errorf("%+v old QoS %v: Expired %d Evicted %d, want 1/0", pol, q, st.Expired, st.Evicted)
				}
				e.Close()
				e.Drain()
			}
		}
	}
	if s.Available() != s.Capacity() {
		t.Errorf("slots lost %d/%d", s.Available(), s.Capacity())
	}
}

// Store.Tokens yields each message holding references once, whatever its
// count; Store.Trim after Close is ErrClosed (tested above), before: ok.
func TestDoc2StoreTokensAndTrim(t *testing.T) {
	s := doc2Store(t, 8)
	a := doc2Put(t, s, message.Header{})
	s.Retain(a)
	s.Retain(a)
	b := doc2Put(t, s, message.Header{})
	c := doc2Put(t, s, message.Header{})
	s.Free(c)
	got := map[token.Token]int{}
	for tk := range s.Tokens() {
		got[tk]++
	}
	if len(got) != 2 || got[a] != 1 || got[b] != 1 {
		t.Errorf("Tokens = %v", got)
	}
	if _, err := s.Trim(); err != nil {
		t.Errorf("Trim = %v", err)
	}
	if r, _ := s.Refs(a); r != 3 {
		t.Errorf("Trim harmed refs: %d", r)
	}
	if _, err := s.Header(c); !errors.Is(err, arena.ErrStale) {
		t.Errorf("stale after Trim: %v", err)
	}
	for tk := range s.Tokens() {
		for {
			if err := s.Free(tk); err != nil {
				break
			}
		}
	}
	if s.Available() != s.Capacity() {
		t.Errorf("Available %d", s.Available())
	}
}
