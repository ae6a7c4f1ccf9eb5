package message_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

type maPay struct {
	A, B uint64
}

func maStore(t *testing.T, slots int) *message.Store[maPay] {
	t.Helper()
	s, err := message.NewStore[maPay](arena.Config{Slots: slots, Shards: 1})
	if err != nil {
		t.Fatalf("NewStore: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func maEdge(t *testing.T, hs message.HeaderStore, p message.Policy) *message.Edge {
	t.Helper()
	e, err := message.NewEdge(hs, p)
	if err != nil {
		t.Fatalf("NewEdge: %v", err)
	}
	return e
}

type availer interface {
	Available() int
	Capacity() int
}

// maConserve checks that every slot is back and no edge counted a FreeError.
func maConserve(t *testing.T, s availer, edges ...*message.Edge) {
	t.Helper()
	for i, e := range edges {
		if e == nil {
			continue
		}
		if fe := e.Stats().FreeErrors; fe != 0 {
			t.Errorf("edge %d: FreeErrors = %d", i, fe)
		}
	}
	deadline := time.Now().Add(time.Second)
	for s.Available() != s.Capacity() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if s.Available() != s.Capacity() {
		t.Errorf("Available = %d, Capacity = %d: slots leaked", s.Available(), s.Capacity())
	}
}

func maRefs(t *testing.T, s *message.Store[maPay], tok token.Token, want int) {
	t.Helper()
	n, err := s.Refs(tok)
	if want == 0 {
		if err == nil {
			t.Errorf("Refs(%v) = %d, want a stale error", tok, n)
		}
		return
	}
	if err != nil || n != want {
		t.Errorf("Refs(%v) = %d, %v; want %d", tok, n, err, want)
	}
}

// ---------------------------------------------------------------- Store

func TestMoreAttackStoreRefcounts(t *testing.T) {
	s := maStore(t, 4)
	tok, err := s.Put(message.Header{}, maPay{A: 1})
	if err != nil {
		t.Fatal(err)
	}
	maRefs(t, s, tok, 1)
	for i := 0; i < 3; i++ {
		if err := s.Retain(tok); err != nil {
			t.Fatal(err)
		}
	}
	maRefs(t, s, tok, 4)
	for i := 0; i < 3; i++ {
		if err := s.Free(tok); err != nil {
			t.Fatal(err)
		}
	}
	maRefs(t, s, tok, 1)
	if s.Available() != 3 {
		t.Errorf("Available = %d with one message live", s.Available())
	}
	if err := s.Free(tok); err != nil {
		t.Fatal(err)
	}
	if s.Available() != 4 {
		t.Errorf("Available = %d after last Free", s.Available())
	}
	for name, fn := range map[string]func() error{
		"Free":   func() error { return s.Free(tok) },
		"Retain": func() error { return s.Retain(tok) },
		"Header": func() error { _, err := s.Header(tok); return err },
		"View":   func() error { return s.View(tok, func(*message.Message[maPay]) { t.Error("View fn ran") }) },
		"Update": func() error { return s.Update(tok, func(*message.Message[maPay]) { t.Error("Update fn ran") }) },
	} {
		if err := fn(); !errors.Is(err, arena.ErrStale) {
			t.Errorf("%s of a freed token: %v, want ErrStale", name, err)
		}
	}
	// The slot is reused: the old token must stay stale, the new one live.
	tok2, err := s.Put(message.Header{}, maPay{A: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Free(tok); !errors.Is(err, arena.ErrStale) {
		t.Errorf("Free of the old token after reuse: %v", err)
	}
	maRefs(t, s, tok2, 1)
	if err := s.Free(tok2); err != nil {
		t.Fatal(err)
	}
	// Nil and forged tokens.
	for name, fn := range map[string]func() error{
		"Free":   func() error { return s.Free(token.Nil) },
		"Retain": func() error { return s.Retain(token.Nil) },
		"Header": func() error { _, err := s.Header(token.Nil); return err },
		"View":   func() error { return s.View(token.Nil, func(*message.Message[maPay]) {}) },
		"Update": func() error { return s.Update(token.Nil, func(*message.Message[maPay]) {}) },
		"FreeFar": func() error {
			return s.Free(token.New(1000, 5))
		},
		"HeaderFar": func() error { _, err := s.Header(token.New(1000, 5)); return err },
		"UpdateFar": func() error {
			return s.Update(token.New(1000, 5), func(*message.Message[maPay]) {})
		},
	} {
		err := fn()
		if err == nil || !(errors.Is(err, arena.ErrBadToken) || errors.Is(err, arena.ErrStale)) {
			t.Errorf("%s of a bad token: %v", name, err)
		}
	}
	maConserve(t, s)
}

func TestMoreAttackPutDefaults(t *testing.T) {
	s := maStore(t, 4)
	before := message.Now()
	tok, err := s.Put(message.Header{}, maPay{})
	after := message.Now()
	if err != nil {
		t.Fatal(err)
	}
	h, err := s.Header(tok)
	if err != nil {
		t.Fatal(err)
	}
	if h.Created < before || h.Created > after {
		t.Errorf("Created %d not in [%d, %d]", h.Created, before, after)
	}
	if h.Size != uint32(unsafe.Sizeof(maPay{})) {
		t.Errorf("Size = %d, want %d", h.Size, unsafe.Sizeof(maPay{}))
	}
	s.Free(tok)

	// PutWait and PutFunc take the same defaults.
	before = message.Now()
	tok, err = s.PutWait(context.Background(), message.Header{}, maPay{})
	after = message.Now()
	if err != nil {
		t.Fatal(err)
	}
	h, _ = s.Header(tok)
	if h.Created < before || h.Created > after || h.Size != 16 {
		t.Errorf("PutWait header %+v", h)
	}
	s.Free(tok)

	before = message.Now()
	tok, err = s.PutFunc(message.Header{}, func(m *message.Message[maPay]) error {
		if m.Header.Size != 16 || m.Header.Created == 0 {
			t.Errorf("PutFunc fill sees header %+v", m.Header)
		}
		if m.Payload != (maPay{}) {
			t.Errorf("PutFunc fill sees a payload that is not zeroed: %+v", m.Payload)
		}
		m.Payload.A = 7
		return nil
	})
	after = message.Now()
	if err != nil {
		t.Fatal(err)
	}
	h, _ = s.Header(tok)
	if h.Created < before || h.Created > after || h.Size != 16 {
		t.Errorf("PutFunc header %+v", h)
	}
	s.Free(tok)

	// Explicit values are kept.
	tok, _ = s.Put(message.Header{Created: 5, Size: 3}, maPay{})
	h, _ = s.Header(tok)
	if h.Created != 5 || h.Size != 3 {
		t.Errorf("explicit header changed: %+v", h)
	}
	s.Free(tok)
	maConserve(t, s)
}

// A recycled slot comes back zeroed for PutFunc, after a Put with a
// non-zero payload and after Trim.
func TestMoreAttackPutFuncZeroedAfterReuse(t *testing.T) {
	s := maStore(t, 1)
	for round := 0; round < 3; round++ {
		tok, err := s.Put(message.Header{Seq: 9, Trace: 9, Flags: message.LastInBatch}, maPay{A: 0xdead, B: 0xbeef})
		if err != nil {
			t.Fatal(err)
		}
		s.Free(tok)
		if round == 1 {
			s.Trim()
		}
		tok, err = s.PutFunc(message.Header{}, func(m *message.Message[maPay]) error {
			if m.Payload != (maPay{}) {
				t.Errorf("round %d: PutFunc slot not zeroed: %+v", round, m.Payload)
			}
			if m.Header.Seq != 0 || m.Header.Trace != 0 || m.Header.Flags != 0 {
				t.Errorf("round %d: PutFunc header not the given one: %+v", round, m.Header)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		s.Free(tok)
	}
	maConserve(t, s)
}

func TestMoreAttackPutFuncFailures(t *testing.T) {
	s := maStore(t, 2)
	boom := errors.New("boom")
	for i := 0; i < 5; i++ {
		_, err := s.PutFunc(message.Header{}, func(m *message.Message[maPay]) error { return boom })
		if !errors.Is(err, boom) {
			t.Fatalf("PutFunc fill error: %v", err)
		}
	}
	maConserve(t, s)
	for i := 0; i < 5; i++ {
		func() {
			defer func() {
				if r := recover(); r != "fill panic" {
					t.Errorf("recovered %v", r)
				}
			}()
			s.PutFunc(message.Header{}, func(m *message.Message[maPay]) error { panic("fill panic") })
		}()
	}
	maConserve(t, s)
	// Goexit in fill.
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.PutFunc(message.Header{}, func(m *message.Message[maPay]) error { runtime.Goexit(); return nil })
	}()
	<-done
	maConserve(t, s)
	if _, err := s.PutFunc(message.Header{}, nil); err == nil {
		t.Error("PutFunc(nil) succeeded")
	}
	maConserve(t, s)
}

// Update's changes of Deadline, QoS and Size are seen by later sends, not
// by edges that already queued the token.
func TestMoreAttackUpdateSeenByLaterSends(t *testing.T) {
	s := maStore(t, 8)
	early := maEdge(t, s, message.Policy{MaxItems: 8})
	late := maEdge(t, s, message.Policy{MaxItems: 8, MaxBytes: 100})
	tok, _ := s.Put(message.Header{}, maPay{})
	s.Retain(tok)
	if err := early.Send(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	if early.Bytes() != 16 {
		t.Errorf("early.Bytes = %d", early.Bytes())
	}
	// Grow the size past late's MaxBytes.
	if err := s.Update(tok, func(m *message.Message[maPay]) { m.Header.Size = 200 }); err != nil {
		t.Fatal(err)
	}
	if err := late.Send(context.Background(), tok); !errors.Is(err, message.ErrRejected) {
		t.Errorf("send after Update Size=200 to MaxBytes 100: %v", err)
	}
	if early.Bytes() != 16 {
		t.Errorf("early.Bytes changed to %d after Update", early.Bytes())
	}
	// Expire it: a later send is refused, the early edge still delivers.
	if err := s.Update(tok, func(m *message.Message[maPay]) { m.Header.Size = 10; m.Header.Deadline = 1 }); err != nil {
		t.Fatal(err)
	}
	if err := late.Send(context.Background(), tok); !errors.Is(err, message.ErrExpired) {
		t.Errorf("send after Update Deadline=1: %v", err)
	}
	got, ok := early.TryRecv()
	if !ok || got != tok {
		t.Errorf("early edge did not deliver its token after the Update: %v %v (stats %+v)", got, ok, early.Stats())
	} else {
		s.Free(got)
	}
	if early.Bytes() != 0 {
		t.Errorf("early.Bytes = %d after Recv", early.Bytes())
	}
	// QoS change: LatencyCritical goes first.
	if err := s.Update(tok, func(m *message.Message[maPay]) { m.Header.Deadline = 0 }); err != nil {
		t.Fatal(err)
	}
	other, _ := s.Put(message.Header{}, maPay{})
	if err := late.Send(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	s.Update(tok, func(m *message.Message[maPay]) { m.Header.QoS = message.LatencyCritical })
	if err := late.Send(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	if got, _ := late.TryRecv(); got != tok {
		t.Errorf("the LatencyCritical update was not seen by a later send")
	}
	s.Free(tok)
	// Invalid QoS by Update: later sends refuse it.
	s.Update(other, func(m *message.Message[maPay]) { m.Header.QoS = 9 })
	got, _ = late.TryRecv()
	if got != other {
		t.Fatalf("got %v", got)
	}
	if err := late.Send(context.Background(), other); !errors.Is(err, message.ErrRejected) {
		t.Errorf("send of QoS 9: %v", err)
	}
	s.Free(other)
	maConserve(t, s, early, late)
}

func TestMoreAttackPutWait(t *testing.T) {
	s := maStore(t, 1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// A done ctx with a free slot: returns at once with the slot.
	tok, err := s.PutWait(ctx, message.Header{}, maPay{})
	if err != nil {
		t.Fatalf("PutWait with a free slot and a done ctx: %v", err)
	}
	// Full: ctx done.
	if _, err := s.PutWait(ctx, message.Header{}, maPay{}); !errors.Is(err, context.Canceled) {
		t.Errorf("PutWait full, ctx done: %v", err)
	}
	tctx, tcancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer tcancel()
	if _, err := s.PutWait(tctx, message.Header{}, maPay{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("PutWait full, timeout: %v", err)
	}
	// FIFO among parked waiters.
	const n = 4
	order := make(chan int, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			t2, err := s.PutWait(nil, message.Header{Seq: uint64(i)}, maPay{}) //lint:ignore SA1012 a nil context is what is tested
			if err != nil {
				t.Errorf("PutWait %d: %v", i, err)
				return
			}
			order <- i
			time.Sleep(2 * time.Millisecond)
			s.Free(t2)
		}(i)
		time.Sleep(20 * time.Millisecond) // let it park
	}
	s.Free(tok)
	wg.Wait()
	close(order)
	want := 0
	for i := range order {
		if i != want {
			t.Errorf("PutWait served %d, want %d (FIFO)", i, want)
		}
		want++
	}
	maConserve(t, s)
}

func TestMoreAttackPutWaitClose(t *testing.T) {
	s, err := message.NewStore[maPay](arena.Config{Slots: 1, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := s.Put(message.Header{}, maPay{})
	errc := make(chan error, 1)
	go func() {
		_, err := s.PutWait(context.Background(), message.Header{}, maPay{})
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	cerr := s.Close()
	if !errors.Is(cerr, message.ErrReferenced) {
		t.Errorf("Close with one outstanding: %v", cerr)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, arena.ErrClosed) {
			t.Errorf("parked PutWait after Close: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("parked PutWait not woken by Close")
	}
	if err := s.Free(tok); err != nil {
		t.Errorf("Free of the outstanding ref after Close: %v", err)
	}
	if err := s.Free(tok); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("second Free after Close: %v", err)
	}
	if _, err := s.PutWait(context.Background(), message.Header{}, maPay{}); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("PutWait after Close: %v", err)
	}
}

func TestMoreAttackCloseWithReferences(t *testing.T) {
	s, err := message.NewStore[maPay](arena.Config{Slots: 8, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := s.Put(message.Header{}, maPay{})
	b, _ := s.Put(message.Header{}, maPay{})
	c, _ := s.Put(message.Header{}, maPay{})
	s.Retain(a)
	s.Retain(a) // a: 3 refs
	s.Free(c)   // c: gone
	e := maEdge(t, s, message.Policy{MaxItems: 4})
	s.Retain(b)
	if err := e.Send(context.Background(), b); err != nil { // b: 2 refs, one in e
		t.Fatal(err)
	}
	cerr := s.Close()
	if !errors.Is(cerr, message.ErrReferenced) {
		t.Fatalf("Close: %v", cerr)
	}
	if msg := cerr.Error(); !strings.Contains(msg, "2 message") || !strings.Contains(msg, "5 reference") {
		t.Errorf("Close error does not count 2 messages, 5 references: %q", msg)
	}
	for i := 0; i < 3; i++ {
		if err := s.Free(a); err != nil {
			t.Errorf("late Free %d of a: %v", i, err)
		}
	}
	if err := s.Free(a); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("4th late Free of a: %v", err)
	}
	if err := s.Free(c); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("late Free of c (freed before Close): %v", err)
	}
	for name, fn := range map[string]func() error{
		"Retain": func() error { return s.Retain(b) },
		"Header": func() error { _, err := s.Header(b); return err },
		"View":   func() error { return s.View(b, func(*message.Message[maPay]) {}) },
		"Update": func() error { return s.Update(b, func(*message.Message[maPay]) {}) },
		"Put":    func() error { _, err := s.Put(message.Header{}, maPay{}); return err },
		"PutFunc": func() error {
			_, err := s.PutFunc(message.Header{}, func(*message.Message[maPay]) error { return nil })
			return err
		},
		"Trim":  func() error { _, err := s.Trim(); return err },
		"Close": func() error { return s.Close() },
	} {
		if err := fn(); !errors.Is(err, arena.ErrClosed) {
			t.Errorf("%s after Close: %v", name, err)
		}
	}
	n := 0
	for range s.Tokens() {
		n++
	}
	if n != 0 {
		t.Errorf("Tokens after Close yielded %d", n)
	}
	e.Close()
	if d := e.Drain(); d != 1 {
		t.Errorf("Drain = %d", d)
	}
	if fe := e.Stats().FreeErrors; fe != 0 {
		t.Errorf("FreeErrors = %d after draining a closed store", fe)
	}
	if err := s.Free(b); err != nil {
		t.Errorf("last late Free of b: %v", err)
	}
	if err := s.Free(b); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("one more Free of b: %v", err)
	}
}

func TestMoreAttackTokens(t *testing.T) {
	s := maStore(t, 16)
	var toks []token.Token
	for i := 0; i < 10; i++ {
		tok, _ := s.Put(message.Header{Seq: uint64(i)}, maPay{})
		toks = append(toks, tok)
	}
	s.Free(toks[3])
	s.Free(toks[7])
	seen := map[token.Token]int{}
	for tok := range s.Tokens() {
		seen[tok]++
	}
	if len(seen) != 8 {
		t.Errorf("Tokens yielded %d distinct, want 8", len(seen))
	}
	for i, tok := range toks {
		want := 1
		if i == 3 || i == 7 {
			want = 0
		}
		if seen[tok] != want {
			t.Errorf("token %d yielded %d times, want %d", i, seen[tok], want)
		}
	}
	// Break early.
	n := 0
	for range s.Tokens() {
		n++
		if n == 2 {
			break
		}
	}
	// Free every yielded token in the body.
	for tok := range s.Tokens() {
		if err := s.Free(tok); err != nil {
			t.Errorf("Free in Tokens body: %v", err)
		}
	}
	maConserve(t, s)
	for range s.Tokens() {
		t.Error("Tokens yielded on an empty store")
	}
}

// ---------------------------------------------------------------- ByteStore

func TestMoreAttackByteStoreSizes(t *testing.T) {
	bs, err := message.NewByteStore[[64]byte](arena.Config{Slots: 4, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	if bs.SlotSize() != 64 {
		t.Fatalf("SlotSize = %d", bs.SlotSize())
	}
	src := make([]byte, 65)
	for i := range src {
		src[i] = byte(i + 1)
	}
	for n := 0; n <= 64; n++ {
		tok, err := bs.PutBytes(message.Header{Size: 999}, src[:n])
		if err != nil {
			t.Fatalf("PutBytes(%d): %v", n, err)
		}
		h, _ := bs.Header(tok)
		if h.Size != uint32(n) {
			t.Errorf("PutBytes(%d): Size %d", n, h.Size)
		}
		out, err := bs.AppendTo(nil, tok)
		if err != nil || len(out) != n || string(out) != string(src[:n]) {
			t.Errorf("AppendTo after PutBytes(%d): %v %v", n, out, err)
		}
		bs.Read(tok, func(h message.Header, data []byte) {
			if len(data) != n {
				t.Errorf("Read after PutBytes(%d): %d bytes", n, len(data))
			}
		})
		bs.Free(tok)

		tok, err = bs.Write(message.Header{}, func(slot []byte) (int, error) {
			if len(slot) != 64 {
				t.Errorf("Write slot len %d", len(slot))
			}
			return copy(slot, src[:n]), nil
		})
		if err != nil {
			t.Fatalf("Write(%d): %v", n, err)
		}
		h, _ = bs.Header(tok)
		if h.Size != uint32(n) {
			t.Errorf("Write(%d): Size %d", n, h.Size)
		}
		// Rewrite to each length.
		err = bs.Rewrite(tok, func(slot []byte, used int) int {
			if used != n {
				t.Errorf("Rewrite sees used %d, want %d", used, n)
			}
			return 64 - n
		})
		if err != nil {
			t.Errorf("Rewrite: %v", err)
		}
		h, _ = bs.Header(tok)
		if h.Size != uint32(64-n) {
			t.Errorf("Rewrite to %d: Size %d", 64-n, h.Size)
		}
		bs.Free(tok)
	}
	if _, err := bs.PutBytes(message.Header{}, src); !errors.Is(err, message.ErrTooLarge) {
		t.Errorf("PutBytes(65): %v", err)
	}
	for _, n := range []int{-1, 65} {
		_, err := bs.Write(message.Header{}, func(slot []byte) (int, error) { return n, nil })
		if !errors.Is(err, message.ErrTooLarge) {
			t.Errorf("Write reporting %d: %v", n, err)
		}
	}
	boom := errors.New("boom")
	if _, err := bs.Write(message.Header{}, func(slot []byte) (int, error) { return 3, boom }); !errors.Is(err, boom) {
		t.Errorf("Write fill error: %v", err)
	}
	tok, _ := bs.PutBytes(message.Header{}, src[:10])
	for _, n := range []int{-1, 65} {
		if err := bs.Rewrite(tok, func(slot []byte, used int) int { return n }); !errors.Is(err, message.ErrTooLarge) {
			t.Errorf("Rewrite to %d: %v", n, err)
		}
		h, _ := bs.Header(tok)
		if h.Size != 10 {
			t.Errorf("bad Rewrite changed Size to %d", h.Size)
		}
	}
	bs.Free(tok)
	// Promoted Put: Size 0 is the whole slot.
	tok, _ = bs.Put(message.Header{}, [64]byte{})
	h, _ := bs.Header(tok)
	if h.Size != 64 {
		t.Errorf("promoted Put Size %d", h.Size)
	}
	bs.Free(tok)
	maConserve(t, bs)
}

// Byte caps on an edge count the message length.
func TestMoreAttackByteStoreEdgeBytes(t *testing.T) {
	bs, err := message.NewByteStore[[128]byte](arena.Config{Slots: 8, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	e := maEdge(t, bs, message.Policy{MaxBytes: 100, Admission: message.DropNewest})
	a, _ := bs.PutBytes(message.Header{}, make([]byte, 60))
	b, _ := bs.PutBytes(message.Header{}, make([]byte, 40))
	c, _ := bs.PutBytes(message.Header{}, make([]byte, 1))
	z, _ := bs.PutBytes(message.Header{}, nil)
	big, _ := bs.PutBytes(message.Header{}, make([]byte, 101))
	if err := e.TrySend(a); err != nil {
		t.Fatal(err)
	}
	if err := e.TrySend(b); err != nil {
		t.Fatal(err)
	}
	if e.Bytes() != 100 {
		t.Errorf("Bytes = %d", e.Bytes())
	}
	if err := e.TrySend(c); !errors.Is(err, message.ErrEdgeFull) {
		t.Errorf("send past MaxBytes: %v", err)
	}
	if err := e.TrySend(z); err != nil {
		t.Errorf("send of an empty message at MaxBytes: %v", err)
	}
	if err := e.TrySend(big); !errors.Is(err, message.ErrRejected) {
		t.Errorf("send of 101 bytes to MaxBytes 100: %v", err)
	}
	bs.Free(c)
	bs.Free(big)
	e.Close()
	if d := e.Drain(); d != 3 {
		t.Errorf("Drain = %d", d)
	}
	maConserve(t, bs, e)
}

// ---------------------------------------------------------------- SendAll

func TestMoreAttackSendAllCases(t *testing.T) {
	s := maStore(t, 8)
	ctx := context.Background()
	open1 := maEdge(t, s, message.Policy{MaxItems: 4})
	open2 := maEdge(t, s, message.Policy{MaxItems: 4, Admission: message.DropNewest})
	full := maEdge(t, s, message.Policy{MaxItems: 1, Admission: message.DropNewest})
	closed := maEdge(t, s, message.Policy{MaxItems: 4})
	closed.Close()
	filler, _ := s.Put(message.Header{}, maPay{})
	if err := full.TrySend(filler); err != nil {
		t.Fatal(err)
	}
	free0 := s.Available()

	// No edges: frees.
	tok, _ := s.Put(message.Header{}, maPay{})
	if n, err := message.SendAll(ctx, s, tok); n != 0 || err != nil {
		t.Errorf("SendAll to no edges: %d %v", n, err)
	}
	maRefs(t, s, tok, 0)

	// Mixed: open, nil, closed, full, open, duplicate open.
	tok, _ = s.Put(message.Header{}, maPay{})
	n, err := message.SendAll(ctx, s, tok, open1, nil, closed, full, open2, open1)
	if n != 3 {
		t.Errorf("SendAll sent %d, want 3", n)
	}
	for _, want := range []error{message.ErrNilEdge, message.ErrEdgeClosed, message.ErrEdgeFull} {
		if !errors.Is(err, want) {
			t.Errorf("SendAll err %v does not match %v", err, want)
		}
	}
	maRefs(t, s, tok, 3)
	if open1.Len() != 2 || open2.Len() != 1 {
		t.Errorf("Len open1 %d open2 %d", open1.Len(), open2.Len())
	}
	open1.Drain()
	open2.Drain()
	maRefs(t, s, tok, 0)

	// Expired message: every edge refuses, all freed.
	tok, _ = s.Put(message.Header{Deadline: 1}, maPay{})
	n, err = message.SendAll(ctx, s, tok, open1, open2)
	if n != 0 || !errors.Is(err, message.ErrExpired) {
		t.Errorf("SendAll expired: %d %v", n, err)
	}
	maRefs(t, s, tok, 0)

	// Stale token: no edge is tried.
	n, err = message.SendAll(ctx, s, tok, open1, open2)
	if n != 0 || !errors.Is(err, arena.ErrStale) {
		t.Errorf("SendAll stale: %d %v", n, err)
	}
	n, err = message.SendAll(ctx, s, tok, open1)
	if n != 0 || err == nil {
		t.Errorf("SendAll stale to one edge: %d %v", n, err)
	}
	n, err = message.SendAll(ctx, s, tok)
	if n != 0 || err == nil {
		t.Errorf("SendAll stale to no edges: %d %v", n, err)
	}
	if open1.Len() != 0 || open2.Len() != 0 {
		t.Errorf("a stale token got queued")
	}
	// Nil store: caller keeps the reference.
	tok, _ = s.Put(message.Header{}, maPay{})
	var nilStore *message.Store[maPay]
	n, err = message.SendAll(ctx, nilStore, tok, open1)
	if n != 0 || !errors.Is(err, message.ErrNilStore) {
		t.Errorf("SendAll typed nil store: %d %v", n, err)
	}
	n, err = message.SendAll(ctx, nil, tok, open1)
	if n != 0 || !errors.Is(err, message.ErrNilStore) {
		t.Errorf("SendAll nil store: %d %v", n, err)
	}
	maRefs(t, s, tok, 1)
	// Only nil edges.
	n, err = message.SendAll(ctx, s, tok, nil, nil)
	if n != 0 || !errors.Is(err, message.ErrNilEdge) {
		t.Errorf("SendAll nil edges: %d %v", n, err)
	}
	maRefs(t, s, tok, 0)
	// Done ctx on a full Block edge.
	blk := maEdge(t, s, message.Policy{MaxItems: 1})
	f2, _ := s.Put(message.Header{}, maPay{})
	blk.TrySend(f2)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	tok, _ = s.Put(message.Header{}, maPay{})
	n, err = message.SendAll(cctx, s, tok, blk, open1)
	if n != 1 || !errors.Is(err, context.Canceled) {
		t.Errorf("SendAll done ctx: %d %v", n, err)
	}
	maRefs(t, s, tok, 1)
	open1.Drain()
	blk.Drain()
	if s.Available() != free0 {
		t.Errorf("Available %d, want %d", s.Available(), free0)
	}
	full.Drain()
	maConserve(t, s, open1, open2, full, closed, blk)
}

// ---------------------------------------------------------------- All / Drain

func TestMoreAttackEdgeAll(t *testing.T) {
	s := maStore(t, 16)
	e := maEdge(t, s, message.Policy{MaxItems: 16})
	var toks []token.Token
	for i := 0; i < 6; i++ {
		tok, _ := s.Put(message.Header{Seq: uint64(i)}, maPay{})
		toks = append(toks, tok)
		e.TrySend(tok)
	}
	// Break after two: the rest stays queued.
	n := 0
	for tok := range e.All(context.Background()) {
		if tok != toks[n] {
			t.Errorf("All yielded %v, want %v", tok, toks[n])
		}
		s.Free(tok)
		n++
		if n == 2 {
			break
		}
	}
	if e.Len() != 4 {
		t.Errorf("Len after breaking out = %d, want 4", e.Len())
	}
	// ctx done: ends, nothing lost.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for tok := range e.All(ctx) {
		s.Free(tok)
		n++
		if n == 4 {
			cancel()
		}
	}
	// Recv with a done ctx may still deliver what is queued; whatever it
	// did, the rest must still be queued.
	if n+e.Len() != 6 {
		t.Errorf("delivered %d + queued %d != 6", n, e.Len())
	}
	e.Close()
	for tok := range e.All(context.Background()) {
		s.Free(tok)
		n++
	}
	if n != 6 || e.Len() != 0 {
		t.Errorf("after Close All delivered %d in all, Len %d", n, e.Len())
	}
	// All on a closed empty edge returns at once.
	//lint:ignore SA1012 a nil context is what is tested
	for range e.All(nil) {
		t.Error("yielded on a closed empty edge")
	}
	if d := e.Drain(); d != 0 {
		t.Errorf("Drain = %d", d)
	}
	maConserve(t, s, e)
}

func TestMoreAttackDrainCounts(t *testing.T) {
	s := maStore(t, 16)
	e := maEdge(t, s, message.Policy{MaxItems: 16})
	for i := 0; i < 5; i++ {
		tok, _ := s.Put(message.Header{QoS: message.QoS(1 + i%3)}, maPay{})
		e.TrySend(tok)
	}
	if d := e.Drain(); d != 5 {
		t.Errorf("Drain on an open edge = %d", d)
	}
	tok, _ := s.Put(message.Header{}, maPay{})
	if err := e.TrySend(tok); err != nil {
		t.Errorf("send after Drain on an open edge: %v", err)
	}
	e.Close()
	if d := e.Drain(); d != 1 {
		t.Errorf("Drain after Close = %d", d)
	}
	st := e.Stats()
	if st.Drained != 6 || st.Len != 0 || st.Bytes != 0 {
		t.Errorf("stats %+v", st)
	}
	maConserve(t, s, e)
}

// ---------------------------------------------------------------- deadlines

func TestMoreAttackDeadlineHelpers(t *testing.T) {
	var h message.Header
	h.SetDeadline(time.Now().Add(time.Hour))
	if h.Deadline == 0 {
		t.Fatal("SetDeadline set 0")
	}
	h.SetDeadline(time.Time{})
	if h.Deadline != 0 {
		t.Errorf("SetDeadline(zero) left %d", h.Deadline)
	}
	if _, ok := h.DeadlineTime(); ok {
		t.Error("DeadlineTime ok with no deadline")
	}
	// Round trip.
	want := time.Now().Add(3 * time.Second)
	h.SetDeadline(want)
	got, ok := h.DeadlineTime()
	if !ok || got.Sub(want) > time.Microsecond || want.Sub(got) > time.Microsecond {
		t.Errorf("round trip %v -> %v", want, got)
	}
	// Wall-clock-only time.
	wall := time.Now().Add(time.Minute).Round(0)
	d := message.DeadlineAt(wall)
	if diff := d - message.Now(); diff < int64(59*time.Second) || diff > int64(61*time.Second) {
		t.Errorf("wall-clock time a minute ahead converts %v ahead", time.Duration(diff))
	}
	if message.DeadlineAt(time.Unix(1, 0)) != 1 {
		t.Errorf("time before boot: %d", message.DeadlineAt(time.Unix(1, 0)))
	}
	// Expired at the exact deadline: not past it.
	h = message.Header{Deadline: 100}
	if h.Expired(100) {
		t.Error("Expired at the exact deadline")
	}
	if !h.Expired(101) || h.Expired(99) {
		t.Error("Expired around the deadline")
	}
	if (&message.Header{}).Expired(1 << 62) {
		t.Error("no deadline expired")
	}
	// DeadlineFromContext.
	if d, ok := message.DeadlineFromContext(context.Background()); ok || d != 0 {
		t.Errorf("no deadline: %d %v", d, ok)
	}
	//lint:ignore SA1012 a nil context is what is tested
	if d, ok := message.DeadlineFromContext(nil); ok || d != 0 {
		t.Errorf("nil ctx: %d %v", d, ok)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	dl, _ := ctx.Deadline()
	if d, ok := message.DeadlineFromContext(ctx); !ok || d != message.DeadlineAt(dl) {
		t.Errorf("with deadline: %d %v, want %d", d, ok, message.DeadlineAt(dl))
	}
	now1 := message.Now()
	now2 := message.Now()
	if now1 <= 0 || now2 < now1 {
		t.Errorf("Now not positive and monotonic: %d %d", now1, now2)
	}
	// QoS and flags.
	for q := 0; q < 256; q++ {
		if message.QoS(q).Valid() != (q <= 3) {
			t.Errorf("QoS(%d).Valid = %v", q, message.QoS(q).Valid())
		}
	}
	f := message.FirstInBatch | message.DegradeAllowed
	if !f.Has(message.FirstInBatch) || f.Has(message.LastInBatch) || !f.Has(0) || f.Has(message.FirstInBatch|message.LastInBatch) {
		t.Error("Flags.Has")
	}
	if message.QoS(7).String() != "QoS(7)" || message.LatencyCritical.String() != "LatencyCritical" {
		t.Error("QoS.String")
	}
	// Age.
	h = message.Header{Created: 100}
	if h.Age(150) != 50 {
		t.Errorf("Age = %v", h.Age(150))
	}
}

// ---------------------------------------------------------------- Graph

func maRun(t *testing.T, g *message.Graph, ctx context.Context, stopAfter time.Duration) error {
	t.Helper()
	res := make(chan error, 1)
	go func() { res <- g.Run(ctx) }()
	if stopAfter >= 0 {
		go func() { time.Sleep(stopAfter); g.Stop() }()
	}
	select {
	case err := <-res:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

func maSource(s *message.Store[maPay], count *atomic.Int64) message.SourceFunc {
	return func(ctx context.Context, out *message.Emitter) error {
		for i := 0; ; i++ {
			tok, err := s.PutWait(ctx, message.Header{Seq: uint64(i)}, maPay{A: uint64(i)})
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
			count.Add(1)
		}
	}
}

func TestMoreAttackGraphWiring(t *testing.T) {
	s := maStore(t, 8)
	other := maStore(t, 8)
	src := func(ctx context.Context, out *message.Emitter) error { return nil }
	pass := func(ctx context.Context, tok token.Token, out *message.Emitter) error { return out.Emit(tok) }
	sink := func(ctx context.Context, tok token.Token) error { return nil }
	mk := func() *message.Edge { return maEdge(t, s, message.Policy{MaxItems: 2}) }
	cases := map[string]func() *message.Graph{
		"two consumers": func() *message.Graph {
			e := mk()
			g := message.NewGraph(s)
			g.Source("src", 1, src, e)
			g.Sink("k1", 1, e, sink)
			g.Sink("k2", 1, e, sink)
			return g
		},
		"no consumer": func() *message.Graph {
			e, o := mk(), mk()
			g := message.NewGraph(s)
			g.Source("src", 1, src, e, o)
			g.Sink("k", 1, e, sink)
			return g
		},
		"no producer": func() *message.Graph {
			e := mk()
			g := message.NewGraph(s)
			g.Sink("k", 1, e, sink)
			return g
		},
		"zero workers": func() *message.Graph {
			e := mk()
			g := message.NewGraph(s)
			g.Source("src", 0, src, e)
			g.Sink("k", 1, e, sink)
			return g
		},
		"negative workers": func() *message.Graph {
			e := mk()
			g := message.NewGraph(s)
			g.Source("src", 1, src, e)
			g.Sink("k", -1, e, sink)
			return g
		},
		"nil source": func() *message.Graph {
			e := mk()
			g := message.NewGraph(s)
			g.Source("src", 1, nil, e)
			g.Sink("k", 1, e, sink)
			return g
		},
		"nil stage": func() *message.Graph {
			e, f := mk(), mk()
			g := message.NewGraph(s)
			g.Source("src", 1, src, e)
			g.Stage("st", 1, e, nil, f)
			g.Sink("k", 1, f, sink)
			return g
		},
		"nil sink": func() *message.Graph {
			e := mk()
			g := message.NewGraph(s)
			g.Source("src", 1, src, e)
			g.Sink("k", 1, e, nil)
			return g
		},
		"nil input": func() *message.Graph {
			g := message.NewGraph(s)
			g.Sink("k", 1, nil, sink)
			return g
		},
		"nil output": func() *message.Graph {
			e := mk()
			g := message.NewGraph(s)
			g.Source("src", 1, src, e, nil)
			g.Sink("k", 1, e, sink)
			return g
		},
		"foreign input": func() *message.Graph {
			e := maEdge(t, other, message.Policy{})
			g := message.NewGraph(s)
			g.Source("src", 1, src, e)
			g.Sink("k", 1, e, sink)
			return g
		},
		"foreign stage output": func() *message.Graph {
			e, f := mk(), maEdge(t, other, message.Policy{})
			g := message.NewGraph(s)
			g.Source("src", 1, src, e)
			g.Stage("st", 1, e, pass, f)
			g.Sink("k", 1, f, sink)
			return g
		},
	}
	for name, build := range cases {
		err := maRun(t, build(), context.Background(), 5*time.Millisecond)
		if !errors.Is(err, message.ErrBadGraph) {
			t.Errorf("%s: Run = %v, want ErrBadGraph", name, err)
		}
	}
	//lint:ignore SA1012 a nil context is what is tested
	if err := message.NewGraph(nil).Run(nil); !errors.Is(err, message.ErrNilStore) {
		t.Errorf("NewGraph(nil).Run = %v", err)
	}
	// Cycle names its nodes.
	e, a, b := mk(), mk(), mk()
	g := message.NewGraph(s)
	g.Source("src", 1, src, e)
	g.Stage("alpha", 1, e, pass, a)
	g.Stage("beta", 1, a, pass, b)
	g.Stage("gamma", 1, b, pass, a)
	err := maRun(t, g, context.Background(), 5*time.Millisecond)
	if !errors.Is(err, message.ErrGraphCycle) || !errors.Is(err, message.ErrBadGraph) ||
		!strings.Contains(err.Error(), "beta") || !strings.Contains(err.Error(), "gamma") {
		t.Errorf("cycle: %v", err)
	}
	// A ByteStore graph with edges built on the embedded Store is fine.
	bs, _ := message.NewByteStore[[64]byte](arena.Config{Slots: 4, Shards: 1})
	defer bs.Close()
	be := maEdge(t, bs.Store, message.Policy{MaxItems: 2})
	bg := message.NewGraph(bs)
	bg.Source("src", 1, func(ctx context.Context, out *message.Emitter) error {
		tok, err := bs.PutBytes(message.Header{}, []byte("hi"))
		if err != nil {
			return err
		}
		return out.Emit(tok)
	}, be)
	bg.Sink("k", 1, be, sink)
	if err := maRun(t, bg, context.Background(), -1); err != nil {
		t.Errorf("ByteStore graph with Store edges: %v", err)
	}
	maConserve(t, bs, be)
	maConserve(t, s)
}

// A graceful Stop delivers everything emitted to every sink, across
// stages with several workers and a fan-out to edges with different
// policies; refusals are counted in Stats.
func TestMoreAttackGraphGracefulFanOut(t *testing.T) {
	s := maStore(t, 64)
	in := maEdge(t, s, message.Policy{MaxItems: 8})
	blk := maEdge(t, s, message.Policy{MaxItems: 4})
	drop := maEdge(t, s, message.Policy{MaxItems: 1, Admission: message.DropNewest})
	old := maEdge(t, s, message.Policy{MaxItems: 2, Admission: message.DropOldest})
	dq := maEdge(t, s, message.Policy{MaxItems: 2, SoftItems: 1, Admission: message.DeadlineQoS})
	var emitted, staged atomic.Int64
	var got [4]atomic.Int64
	g := message.NewGraph(s)
	g.Source("src", 2, maSource(s, &emitted), in)
	g.Stage("fan", 3, in, func(ctx context.Context, tok token.Token, out *message.Emitter) error {
		staged.Add(1)
		return out.Emit(tok)
	}, blk, drop, old, dq)
	for i, e := range []*message.Edge{blk, drop, old, dq} {
		i := i
		g.Sink("k"+string(rune('0'+i)), 2, e, func(ctx context.Context, tok token.Token) error {
			got[i].Add(1)
			if i == 0 {
				time.Sleep(10 * time.Microsecond)
			}
			return nil
		})
	}
	if err := maRun(t, g, context.Background(), 30*time.Millisecond); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if staged.Load() != emitted.Load() {
		t.Errorf("emitted %d, staged %d", emitted.Load(), staged.Load())
	}
	if got[0].Load() != staged.Load() {
		t.Errorf("Block sink got %d of %d", got[0].Load(), staged.Load())
	}
	for i, e := range []*message.Edge{blk, drop, old, dq} {
		st := e.Stats()
		if st.Delivered+st.Evicted+st.Rejected+st.Expired != uint64(staged.Load()) || st.Delivered != uint64(got[i].Load()) {
			t.Errorf("edge %d: stats %+v, sink got %d, staged %d", i, st, got[i].Load(), staged.Load())
		}
	}
	maConserve(t, s, in, blk, drop, old, dq)
}

func TestMoreAttackGraphAbortFrees(t *testing.T) {
	s := maStore(t, 32)
	in := maEdge(t, s, message.Policy{MaxItems: 8})
	mid := maEdge(t, s, message.Policy{MaxItems: 8})
	out2 := maEdge(t, s, message.Policy{MaxItems: 8, Admission: message.DropOldest})
	var emitted atomic.Int64
	var sunk atomic.Int64
	boom := errors.New("sink failed")
	var kept []token.Token
	var mu sync.Mutex
	g := message.NewGraph(s)
	g.Source("src", 2, maSource(s, &emitted), in)
	g.Stage("st", 2, in, func(ctx context.Context, tok token.Token, out *message.Emitter) error {
		n, err := s.Put(message.Header{}, maPay{})
		if err == nil {
			if err := out.Emit(n); err != nil {
				out.Free(tok)
				return err
			}
		}
		return out.Emit(tok)
	}, mid, out2)
	g.Sink("slow", 1, out2, func(ctx context.Context, tok token.Token) error {
		<-ctx.Done()
		return nil
	})
	g.Sink("fail", 1, mid, func(ctx context.Context, tok token.Token) error {
		if sunk.Add(1) == 50 {
			return boom
		}
		if sunk.Load()%10 == 0 {
			// Keep one longer: Retain, free later.
			if err := s.Retain(tok); err == nil {
				mu.Lock()
				kept = append(kept, tok)
				mu.Unlock()
			}
		}
		return nil
	})
	err := maRun(t, g, context.Background(), -1)
	if !errors.Is(err, boom) {
		t.Errorf("Run = %v, want boom", err)
	}
	for _, tok := range kept {
		if err := s.Free(tok); err != nil {
			t.Errorf("Free of a retained token: %v", err)
		}
	}
	maConserve(t, s, in, mid, out2)
}

func TestMoreAttackGraphLifecycle(t *testing.T) {
	s := maStore(t, 16)
	build := func() (*message.Graph, *message.Edge, *atomic.Int64, *atomic.Int64) {
		e := maEdge(t, s, message.Policy{MaxItems: 4})
		var em, got atomic.Int64
		g := message.NewGraph(s)
		g.Source("src", 1, maSource(s, &em), e)
		g.Sink("k", 1, e, func(ctx context.Context, tok token.Token) error { got.Add(1); return nil })
		return g, e, &em, &got
	}
	// Stop before Run.
	g, e, em, got := build()
	g.Stop()
	g.Stop()
	if err := maRun(t, g, context.Background(), -1); err != nil {
		t.Errorf("Stop before Run: Run = %v", err)
	}
	if em.Load() != got.Load() {
		t.Errorf("Stop before Run: emitted %d, got %d", em.Load(), got.Load())
	}
	maConserve(t, s, e)
	if err := g.Run(context.Background()); !errors.Is(err, message.ErrBadGraph) {
		t.Errorf("second Run = %v", err)
	}
	maConserve(t, s, e)
	// ctx cancelled before Run.
	g, e, _, _ = build()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := maRun(t, g, ctx, -1); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled ctx: Run = %v", err)
	}
	maConserve(t, s, e)
	// Tokens queued before Run are delivered (graceful) or freed.
	g, e, _, _ = build()
	for i := 0; i < 3; i++ {
		tok, _ := s.Put(message.Header{}, maPay{})
		e.TrySend(tok)
	}
	g.Stop()
	if err := maRun(t, g, context.Background(), -1); err != nil {
		t.Errorf("Run = %v", err)
	}
	maConserve(t, s, e)
	// A graph whose sources all return nil ends by itself.
	e = maEdge(t, s, message.Policy{MaxItems: 4})
	var n atomic.Int64
	g = message.NewGraph(s)
	g.Source("three", 3, func(ctx context.Context, out *message.Emitter) error {
		for i := 0; i < 5; i++ {
			tok, err := s.PutWait(ctx, message.Header{}, maPay{})
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
		}
		return nil
	}, e)
	g.Sink("k", 2, e, func(ctx context.Context, tok token.Token) error { n.Add(1); return nil })
	if err := maRun(t, g, context.Background(), -1); err != nil || n.Load() != 15 {
		t.Errorf("self-ending graph: %v, sink got %d", err, n.Load())
	}
	maConserve(t, s, e)
}

// A stage that drops tokens with Emitter.Free, a stage with no output
// edges (Emit frees), a sink that retains.
func TestMoreAttackGraphEmitterFree(t *testing.T) {
	s := maStore(t, 16)
	in := maEdge(t, s, message.Policy{MaxItems: 4})
	in2 := maEdge(t, s, message.Policy{MaxItems: 4})
	mid := maEdge(t, s, message.Policy{MaxItems: 4})
	var em, em2, sunk atomic.Int64
	g := message.NewGraph(s)
	g.Source("src", 1, maSource(s, &em), in)
	g.Source("src2", 1, maSource(s, &em2), in2)
	g.Stage("drop-odd", 2, in, func(ctx context.Context, tok token.Token, out *message.Emitter) error {
		h, err := s.Header(tok)
		if err != nil {
			return err
		}
		if h.Seq%2 == 1 {
			return out.Free(tok)
		}
		return out.Emit(tok)
	}, mid)
	g.Stage("nowhere", 1, in2, func(ctx context.Context, tok token.Token, out *message.Emitter) error {
		return out.Emit(tok)
	})
	g.Sink("k", 1, mid, func(ctx context.Context, tok token.Token) error {
		sunk.Add(1)
		return nil
	})
	if err := maRun(t, g, context.Background(), 20*time.Millisecond); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if sunk.Load() == 0 {
		t.Error("nothing reached the sink")
	}
	maConserve(t, s, in, in2, mid)
}

// Emit after the graph has stopped: the Emitter still takes the caller's
// reference and, the edges being closed, returns an error having freed t.
func TestMoreAttackGraphEmitAfterStop(t *testing.T) {
	s := maStore(t, 16)
	in := maEdge(t, s, message.Policy{MaxItems: 4})
	mid := maEdge(t, s, message.Policy{MaxItems: 4})
	var srcOut, stageOut *message.Emitter
	var em atomic.Int64
	g := message.NewGraph(s)
	g.Source("src", 1, func(ctx context.Context, out *message.Emitter) error {
		srcOut = out
		return maSource(s, &em)(ctx, out)
	}, in)
	g.Stage("st", 1, in, func(ctx context.Context, tok token.Token, out *message.Emitter) error {
		stageOut = out
		return out.Emit(tok)
	}, mid)
	g.Sink("k", 1, mid, func(ctx context.Context, tok token.Token) error { return nil })
	if err := maRun(t, g, context.Background(), 10*time.Millisecond); err != nil {
		t.Fatalf("Run = %v", err)
	}
	maConserve(t, s, in, mid)
	if srcOut == nil || stageOut == nil {
		t.Fatal("no emitters")
	}
	tok, _ := s.Put(message.Header{}, maPay{})
	if err := srcOut.Emit(tok); err == nil {
		t.Error("source Emit after Run returned: nil error")
	}
	maRefs(t, s, tok, 0)
	tok, _ = s.Put(message.Header{}, maPay{})
	err := stageOut.Emit(tok)
	if err == nil {
		t.Error("stage Emit after Run returned: nil error")
	}
	if n, rerr := s.Refs(tok); rerr == nil {
		t.Errorf("stage Emit after Run returned (err %v) kept the token with %d refs: it is never sent nor freed", err, n)
	}
	if mid.Len() != 0 {
		t.Errorf("a closed edge took a token: Len %d", mid.Len())
	}
	maConserve(t, s, in, mid)
}

// A send racing an Update must see the header before or after the Update,
// never a mix of the two: here both headers are deliverable (no deadline;
// a passed deadline with DegradeAllowed), so no send may be refused as
// expired.
func TestMoreAttackSendSeesTornUpdate(t *testing.T) {
	s := maStore(t, 4)
	e := maEdge(t, s, message.Policy{MaxItems: 1 << 20})
	tok, _ := s.Put(message.Header{}, maPay{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			s.Update(tok, func(m *message.Message[maPay]) {
				if i%2 == 0 {
					m.Header.Deadline, m.Header.Flags = 1, message.DegradeAllowed
				} else {
					m.Header.Deadline, m.Header.Flags = 0, 0
				}
			})
		}
	}()
	torn := 0
	deadline := time.Now().Add(1500 * time.Millisecond)
	sends := 0
	for time.Now().Before(deadline) && torn == 0 {
		for i := 0; i < 1000; i++ {
			sends++
			if err := s.Retain(tok); err != nil {
				t.Fatal(err)
			}
			if err := e.TrySend(tok); err != nil {
				s.Free(tok)
				if errors.Is(err, message.ErrExpired) {
					torn++
				} else {
					t.Errorf("send: %v", err)
				}
			}
		}
		e.Drain()
	}
	close(stop)
	wg.Wait()
	if torn > 0 {
		t.Errorf("%d of %d sends racing Update saw Deadline passed without DegradeAllowed: a header that never existed", torn, sends)
	}
	s.Free(tok)
	e.Drain()
	maConserve(t, s, e)
}

// Tokens under churn: every message live for the whole iteration is
// yielded exactly once, and no token yielded is stale when yielded.
func TestMoreAttackTokensUnderChurn(t *testing.T) {
	s, err := message.NewStore[maPay](arena.Config{Slots: 256, Shards: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stable := map[token.Token]bool{}
	for i := 0; i < 64; i++ {
		tok, _ := s.Put(message.Header{Seq: uint64(i)}, maPay{})
		stable[tok] = true
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var held []token.Token
			for i := 0; ; i++ {
				select {
				case <-stop:
					for _, tok := range held {
						s.Free(tok)
					}
					return
				default:
				}
				if tok, err := s.Put(message.Header{}, maPay{}); err == nil {
					held = append(held, tok)
				}
				if len(held) > 40 || (i%3 == 0 && len(held) > 0) {
					s.Free(held[0])
					held = held[1:]
				}
			}
		}()
	}
	for round := 0; round < 50; round++ {
		seen := map[token.Token]int{}
		for tok := range s.Tokens() {
			seen[tok]++
		}
		for tok := range stable {
			if seen[tok] != 1 {
				t.Fatalf("round %d: stable token %v yielded %d times", round, tok, seen[tok])
			}
		}
		for tok, n := range seen {
			if n != 1 {
				t.Fatalf("round %d: token %v yielded %d times", round, tok, n)
			}
		}
	}
	close(stop)
	wg.Wait()
	for tok := range stable {
		s.Free(tok)
	}
	maConserve(t, s)
}

// A stage's Emit of a bad token: Emit reports it (or at least the graph
// does not abort for a token the stage was told about). Emit's doc: it
// "returns an error only when the graph is stopping ..., or when t is bad;
// then t has been freed too", and a held-back send's error is reported by
// the worker only for "the graph stopping". A source that ignores Emit's
// error for a bad token keeps running; a stage must be able to as well.
func TestMoreAttackGraphStageEmitBadToken(t *testing.T) {
	for _, outs := range []int{1, 2} {
		s := maStore(t, 16)
		in := maEdge(t, s, message.Policy{MaxItems: 4})
		var edges []*message.Edge
		g := message.NewGraph(s)
		var em atomic.Int64
		g.Source("src", 1, maSource(s, &em), in)
		var emitErrs atomic.Int64
		for i := 0; i < outs; i++ {
			e := maEdge(t, s, message.Policy{MaxItems: 4})
			edges = append(edges, e)
			g.Sink("k"+string(rune('0'+i)), 1, e, func(ctx context.Context, tok token.Token) error { return nil })
		}
		g.Stage("st", 1, in, func(ctx context.Context, tok token.Token, out *message.Emitter) error {
			if err := out.Emit(token.Nil); err != nil {
				emitErrs.Add(1)
			}
			return out.Emit(tok)
		}, edges...)
		err := maRun(t, g, context.Background(), 20*time.Millisecond)
		if err != nil {
			t.Errorf("%d output edge(s): a stage that emitted the Nil token (Emit errors seen: %d) aborted the graph: %v", outs, emitErrs.Load(), err)
		}
		maConserve(t, s, append(edges, in)...)
	}
}

// A context whose deadline is the zero time (context.WithDeadline(parent,
// time.Time{})) is already expired. DeadlineFromContext promises ctx's
// deadline on the Now clock and true, "0 when there is none, which means no
// deadline": a deadline long passed converts to 1 (DeadlineAt: "a time
// before the machine booted returns 1, a deadline that has passed"), not to
// 0, which would make the request's message live forever.
func TestMoreAttackDeadlineFromExpiredZeroContext(t *testing.T) {
	ctx, cancel := context.WithDeadline(context.Background(), time.Time{})
	defer cancel()
	if ctx.Err() == nil {
		t.Fatal("context with a zero-time deadline is not done")
	}
	d, ok := message.DeadlineFromContext(ctx)
	if !ok {
		t.Fatalf("DeadlineFromContext: ok = false for a context with a deadline")
	}
	h := message.Header{Deadline: d}
	if d == 0 || !h.Expired(message.Now()) {
		t.Errorf("DeadlineFromContext(ctx already past its zero-time deadline) = %d, true: the message gets no deadline (Expired = %v)", d, h.Expired(message.Now()))
	}
}

func TestMoreAttackByteWriteHeader(t *testing.T) {
	bs, err := message.NewByteStore[[256]byte](arena.Config{Slots: 2, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	before := message.Now()
	tok, err := bs.Write(message.Header{Trace: 7, Seq: 8, QoS: message.LatencyCritical, Flags: message.LastInBatch, Size: 77}, func(slot []byte) (int, error) {
		return copy(slot, "hello"), nil
	})
	after := message.Now()
	if err != nil {
		t.Fatal(err)
	}
	h, _ := bs.Header(tok)
	if h.Trace != 7 || h.Seq != 8 || h.QoS != message.LatencyCritical || h.Flags != message.LastInBatch || h.Size != 5 ||
		h.Created < before || h.Created > after {
		t.Errorf("Write header %+v", h)
	}
	tok2, _ := bs.PutBytes(message.Header{Created: 3, Trace: 1}, []byte("x"))
	h, _ = bs.Header(tok2)
	if h.Created != 3 || h.Trace != 1 || h.Size != 1 {
		t.Errorf("PutBytes header %+v", h)
	}
	if _, err := bs.PutBytes(message.Header{}, nil); !errors.Is(err, arena.ErrFull) {
		t.Errorf("PutBytes on a full store: %v", err)
	}
	if _, err := bs.Write(message.Header{}, func([]byte) (int, error) { t.Error("fill ran on a full store"); return 0, nil }); !errors.Is(err, arena.ErrFull) {
		t.Errorf("Write on a full store: %v", err)
	}
	bs.Free(tok)
	bs.Free(tok2)
	maConserve(t, bs)
}

func TestMoreAttackGraphDuplicateOutputs(t *testing.T) {
	s := maStore(t, 32)
	in := maEdge(t, s, message.Policy{MaxItems: 4})
	out := maEdge(t, s, message.Policy{MaxItems: 4})
	var em, got atomic.Int64
	g := message.NewGraph(s)
	g.Source("src", 2, maSource(s, &em), in, in)
	g.Stage("dup", 2, in, func(ctx context.Context, tok token.Token, o *message.Emitter) error { return o.Emit(tok) }, out, out)
	g.Sink("k", 2, out, func(ctx context.Context, tok token.Token) error { got.Add(1); return nil })
	if err := maRun(t, g, context.Background(), 20*time.Millisecond); err != nil {
		t.Fatalf("Run = %v", err)
	}
	// A source's last Emit may be cut short by Stop after one of its two
	// shares went in (Emit then returns ctx's error and is not counted):
	// up to 2 more per source worker.
	if g, e := got.Load(), em.Load(); g < 4*e || g > 4*e+4 || g%2 != 0 {
		t.Errorf("sink got %d, want 4 x %d (+ up to 4)", g, e)
	}
	maConserve(t, s, in, out)
}

// A PutWait that gives up while a Free wakes it loses no slot: the next
// waiter gets it.
func TestMoreAttackPutWaitGiveUpRacesFree(t *testing.T) {
	s := maStore(t, 1)
	for round := 0; round < 50; round++ {
		held, err := s.Put(message.Header{}, maPay{})
		if err != nil {
			t.Fatal(err)
		}
		actx, acancel := context.WithCancel(context.Background())
		aerr := make(chan error, 1)
		go func() {
			tok, err := s.PutWait(actx, message.Header{}, maPay{})
			if err == nil {
				s.Free(tok)
			}
			aerr <- err
		}()
		time.Sleep(200 * time.Microsecond)
		bres := make(chan token.Token, 1)
		go func() {
			tok, err := s.PutWait(context.Background(), message.Header{}, maPay{})
			if err != nil {
				t.Errorf("B: %v", err)
			}
			bres <- tok
		}()
		time.Sleep(200 * time.Microsecond)
		go acancel()
		s.Free(held)
		<-aerr
		select {
		case tok := <-bres:
			s.Free(tok)
		case <-time.After(2 * time.Second):
			t.Fatalf("round %d: B never got the slot freed while A gave up (Available %d)", round, s.Available())
		}
	}
	maConserve(t, s)
}
