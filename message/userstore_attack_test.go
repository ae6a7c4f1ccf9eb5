package message

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// usStore is a user HeaderStore (and RefStore) built on fakeStore, with
// hooks that can make Header and Free misbehave. Hooks are read atomically
// so a test can switch them off after a panic.
type usStore struct {
	*fakeStore
	freeHook   atomic.Pointer[func(t token.Token) error] // runs after the real free
	headerHook atomic.Pointer[func(t token.Token, h Header) (Header, error)]
	freeCalls  atomic.Int64
}

func usNewStore() *usStore { return &usStore{fakeStore: newFakeStore()} }

func (s *usStore) Header(t token.Token) (Header, error) {
	h, err := s.fakeStore.Header(t)
	if f := s.headerHook.Load(); f != nil {
		return (*f)(t, h)
	}
	return h, err
}

func (s *usStore) Free(t token.Token) error {
	s.freeCalls.Add(1)
	err := s.fakeStore.Free(t)
	if f := s.freeHook.Load(); f != nil {
		return (*f)(t)
	}
	return err
}

func (s *usStore) setFree(f func(token.Token) error) {
	if f == nil {
		s.freeHook.Store(nil)
		return
	}
	s.freeHook.Store(&f)
}

func (s *usStore) setHeader(f func(token.Token, Header) (Header, error)) {
	if f == nil {
		s.headerHook.Store(nil)
		return
	}
	s.headerHook.Store(&f)
}

// usPanicFree makes every Free (after really freeing) panic with v.
func usPanicFree(s *usStore, v any) {
	s.setFree(func(token.Token) error { panic(v) })
}

type usBoom struct{ where string }

// usCatch runs fn and returns what it panicked with (nil if it did not).
func usCatch(fn func()) (r any) {
	defer func() { r = recover() }()
	fn()
	return nil
}

// usWithin runs fn in a goroutine and reports whether it returned within d.
// A goroutine that does not return is leaked (a deadlock is the finding).
func usWithin(d time.Duration, fn func()) bool {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() { recover() }()
		fn()
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

func usEdge(t *testing.T, hs HeaderStore, p Policy) *Edge {
	t.Helper()
	e, err := NewEdge(hs, p)
	if err != nil {
		t.Fatalf("NewEdge(%+v): %v", p, err)
	}
	return e
}

// usConserve checks the edge's counters add up.
func usConserve(t *testing.T, what string, e *Edge) {
	t.Helper()
	st := e.Stats()
	if sum := st.Delivered + st.Evicted + st.Expired + st.Drained + uint64(st.Len); st.Admitted != sum {
		t.Errorf("%s: Admitted %d != Delivered %d + Evicted %d + Expired %d + Drained %d + Len %d = %d",
			what, st.Admitted, st.Delivered, st.Evicted, st.Expired, st.Drained, st.Len, sum)
	}
}

// usUsable checks, with a timeout, that the edge still answers after a
// panic: Len, Stats, TrySend, TryRecv, Drain. It reports false (and an
// error) on a deadlock.
func usUsable(t *testing.T, what string, e *Edge, s *usStore) bool {
	t.Helper()
	ok := usWithin(300*time.Millisecond, func() {
		_ = e.Len()
		_ = e.Stats()
		tok := s.put(Header{})
		if err := e.TrySend(tok); err != nil {
			s.Free(tok)
		}
		if got, ok := e.TryRecv(); ok {
			s.Free(got)
		}
	})
	if !ok {
		t.Errorf("%s: edge deadlocked after the HeaderStore panic (Len/Stats/TrySend/TryRecv did not return in 300ms): its lock is still held", what)
	}
	return ok
}

// usExpiring puts a message that expires in d.
func usExpiring(s *usStore, d time.Duration) token.Token {
	return s.put(Header{Deadline: Now() + int64(d)})
}

// --- 1. HeaderStore.Free panics while the edge holds its lock -------------

// Receives that meet an expired message free it through the HeaderStore.
// If that Free panics the panic must reach the caller and the edge stay
// usable.
func TestUserStoreFreePanicOnRecvExpiry(t *testing.T) {
	ops := map[string]func(e *Edge){
		"Recv": func(e *Edge) {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			e.Recv(ctx)
		},
		"TryRecv": func(e *Edge) { e.TryRecv() },
		"RecvBatch": func(e *Edge) {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			var dst [4]token.Token
			e.RecvBatch(ctx, dst[:])
		},
		"All": func(e *Edge) {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			for tok := range e.All(ctx) {
				_ = tok
				return
			}
		},
	}
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			s := usNewStore()
			e := usEdge(t, s, Policy{MaxItems: 8})
			a := usExpiring(s, time.Millisecond)
			if err := e.TrySend(a); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * time.Millisecond)
			usPanicFree(s, usBoom{"recv"})
			var r any
			if !usWithin(2*time.Second, func() { r = usCatch(func() { op(e) }) }) {
				t.Fatalf("%s hung with a panicking Free", name)
			}
			if _, ok := r.(usBoom); !ok {
				t.Errorf("%s: recovered %v, want the HeaderStore's panic", name, r)
			}
			s.setFree(nil)
			if usUsable(t, name, e, s) {
				usConserve(t, name, e)
			}
		})
	}
}

// RecvBatch that has already taken a deliverable token and then meets an
// expired one whose Free panics: the token it took is delivered (the panic
// would lose it, since the caller never learns n), and the panic is raised
// by the next operation on the edge that could free.
func TestUserStoreFreePanicRecvBatchLosesTaken(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 8})
	b := s.put(Header{Deadline: Now() + int64(time.Hour)}) // live, locked lane
	a := usExpiring(s, time.Millisecond)
	if err := e.TrySend(b); err != nil {
		t.Fatal(err)
	}
	if err := e.TrySend(a); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Millisecond)
	usPanicFree(s, usBoom{"recvbatch"})
	var dst [4]token.Token
	var n int
	var r any
	if !usWithin(2*time.Second, func() {
		r = usCatch(func() { n, _ = e.RecvBatch(context.Background(), dst[:]) })
	}) {
		t.Fatal("RecvBatch hung")
	}
	if r != nil || n != 1 || dst[0] != b {
		t.Fatalf("RecvBatch = %d %v, panic %v; want token %v delivered and the panic held back", n, dst[:n], r, b)
	}
	s.setFree(nil)
	if r = usCatch(func() { e.TryRecv() }); r != (usBoom{"recvbatch"}) {
		t.Fatalf("the next receive panicked with %v, want the store's panic", r)
	}
	if !usUsable(t, "after the held-back panic", e, s) {
		return
	}
	usConserve(t, "after the held-back panic", e)
}

// Evictions (DropOldest, DeadlineQoS) free through the HeaderStore under the
// edge's lock.
func TestUserStoreFreePanicOnEvict(t *testing.T) {
	type op struct {
		name string
		pol  Policy
		send func(e *Edge, tok token.Token) error
		hdr  Header
	}
	sendOps := map[string]func(e *Edge, tok token.Token) error{
		"TrySend": func(e *Edge, tok token.Token) error { return e.TrySend(tok) },
		"Send":    func(e *Edge, tok token.Token) error { return e.Send(context.Background(), tok) },
		"SendBatch": func(e *Edge, tok token.Token) error {
			_, err := e.SendBatch(context.Background(), []token.Token{tok})
			return err
		},
	}
	var ops []op
	for sn, f := range sendOps {
		ops = append(ops,
			op{"DropOldest/" + sn, Policy{MaxItems: 2, Admission: DropOldest}, f, Header{}},
			op{"DeadlineQoS/" + sn, Policy{MaxItems: 2, Admission: DeadlineQoS}, f, Header{QoS: LatencyCritical}},
		)
	}
	for _, o := range ops {
		t.Run(o.name, func(t *testing.T) {
			s := usNewStore()
			e := usEdge(t, s, o.pol)
			for range 2 {
				if err := e.TrySend(s.put(Header{})); err != nil {
					t.Fatal(err)
				}
			}
			usPanicFree(s, usBoom{"evict"})
			tok := s.put(o.hdr)
			var r any
			if !usWithin(2*time.Second, func() { r = usCatch(func() { o.send(e, tok) }) }) {
				t.Fatal("send hung")
			}
			if _, ok := r.(usBoom); !ok {
				t.Errorf("recovered %v, want the HeaderStore's panic", r)
			}
			s.setFree(nil)
			if usUsable(t, o.name, e, s) {
				usConserve(t, o.name, e)
			}
		})
	}
}

// Expired messages are reaped by a sender that needs room (every mode).
func TestUserStoreFreePanicOnReap(t *testing.T) {
	for _, adm := range []Admission{Block, DropNewest, DropOldest, DeadlineQoS} {
		t.Run(adm.String(), func(t *testing.T) {
			s := usNewStore()
			e := usEdge(t, s, Policy{MaxItems: 1, Admission: adm})
			if err := e.TrySend(usExpiring(s, time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * time.Millisecond)
			usPanicFree(s, usBoom{"reap"})
			tok := s.put(Header{})
			var r any
			if !usWithin(2*time.Second, func() { r = usCatch(func() { e.TrySend(tok) }) }) {
				t.Fatal("TrySend hung")
			}
			if _, ok := r.(usBoom); !ok {
				t.Errorf("recovered %v, want the HeaderStore's panic", r)
			}
			s.setFree(nil)
			if usUsable(t, adm.String(), e, s) {
				usConserve(t, adm.String(), e)
			}
		})
	}
}

// A Block sender parked on a full edge wakes when the queued message
// expires and reaps it itself: if that Free panics, the panic reaches the
// Send caller, and the edge must stay usable.
func TestUserStoreFreePanicParkedSenderReap(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 1})
	if err := e.TrySend(usExpiring(s, 20*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	usPanicFree(s, usBoom{"parked"})
	tok := s.put(Header{})
	var r any
	if !usWithin(2*time.Second, func() {
		r = usCatch(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			e.Send(ctx, tok)
		})
	}) {
		t.Fatal("Send hung")
	}
	if _, ok := r.(usBoom); !ok {
		t.Errorf("recovered %v, want the HeaderStore's panic", r)
	}
	s.setFree(nil)
	usUsable(t, "parked Block sender", e, s)
}

// Drain frees under the lock with a deferred unlock: a panicking Free must
// leave the counters consistent and wake a sender that the removed tokens
// made room for.
func TestUserStoreFreePanicDrainAccounting(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 4})
	for range 4 {
		if err := e.TrySend(s.put(Header{})); err != nil {
			t.Fatal(err)
		}
	}
	var calls atomic.Int32
	s.setFree(func(token.Token) error {
		if calls.Add(1) == 3 {
			panic(usBoom{"drain"})
		}
		return nil
	})
	var r any
	if !usWithin(2*time.Second, func() { r = usCatch(func() { e.Drain() }) }) {
		t.Fatal("Drain hung")
	}
	if _, ok := r.(usBoom); !ok {
		t.Fatalf("recovered %v, want the HeaderStore's panic", r)
	}
	s.setFree(nil)
	if !usWithin(time.Second, func() { usConserve(t, "after Drain panicked on its 3rd Free", e) }) {
		t.Fatal("edge deadlocked after Drain panicked")
	}
	if live := s.liveCount(); live != e.Len() {
		t.Errorf("store holds %d live messages, edge holds %d", live, e.Len())
	}
}

func TestUserStoreFreePanicDrainWakesSender(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 2})
	for range 2 {
		if err := e.TrySend(s.put(Header{})); err != nil {
			t.Fatal(err)
		}
	}
	tok := s.put(Header{})
	sent := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		sent <- e.Send(ctx, tok)
	}()
	for e.Stats().Waited == 0 {
		time.Sleep(time.Millisecond)
	}
	// Panic on the second Free: both queued tokens are off the edge.
	var calls atomic.Int32
	s.setFree(func(token.Token) error {
		if calls.Add(1) == 2 {
			panic(usBoom{"drain"})
		}
		return nil
	})
	if r := usCatch(func() { e.Drain() }); r == nil {
		t.Fatal("Drain did not panic")
	}
	s.setFree(nil)
	select {
	case err := <-sent:
		if err != nil {
			t.Errorf("parked Send: %v", err)
		}
	case <-time.After(time.Second):
		t.Errorf("Block sender still parked 1s after Drain emptied the edge (Drain panicked before wakeSendersLocked): a lost wake-up")
		<-sent
	}
	// Drain removed both; the parked sender's message then got the room.
	if n := e.Len(); n != 1 {
		t.Fatalf("Len %d after Drain removed both and the parked sender got in, want 1", n)
	}
}

// --- Header misbehaving ----------------------------------------------------

// Header is called outside the lock: a panic propagates and the edge stays
// usable, and nothing is admitted.
func TestUserStoreHeaderPanic(t *testing.T) {
	ops := map[string]func(e *Edge, ts []token.Token){
		"Send":    func(e *Edge, ts []token.Token) { e.Send(context.Background(), ts[0]) },
		"TrySend": func(e *Edge, ts []token.Token) { e.TrySend(ts[0]) },
		"SendBatch": func(e *Edge, ts []token.Token) {
			e.SendBatch(context.Background(), ts)
		},
	}
	for name, op := range ops {
		for _, adm := range []Admission{Block, DropNewest, DropOldest, DeadlineQoS} {
			t.Run(name+"/"+adm.String(), func(t *testing.T) {
				s := usNewStore()
				e := usEdge(t, s, Policy{MaxItems: 4, Admission: adm})
				good, bad := s.put(Header{}), s.put(Header{})
				s.setHeader(func(tok token.Token, h Header) (Header, error) {
					if tok == bad {
						panic(usBoom{"header"})
					}
					return h, nil
				})
				ts := []token.Token{bad}
				if name == "SendBatch" {
					ts = []token.Token{good, bad}
				}
				r := usCatch(func() { op(e, ts) })
				if _, ok := r.(usBoom); !ok {
					t.Errorf("recovered %v, want the HeaderStore's panic", r)
				}
				s.setHeader(nil)
				if usUsable(t, name, e, s) {
					if n := e.Len(); n != 0 {
						t.Errorf("Len %d after a panicking check: something was admitted", n)
					}
					usConserve(t, name, e)
				}
			})
		}
	}
}

// Header errors, invalid QoS and sizes: clear errors, counted in Invalid.
func TestUserStoreHeaderErrorsAndBadHeaders(t *testing.T) {
	errMine := errors.New("my store is sad")
	cases := []struct {
		name string
		pol  Policy
		hook func(Header) (Header, error)
		want error
	}{
		{"error", Policy{MaxItems: 4}, func(h Header) (Header, error) { return h, errMine }, errMine},
		{"QoS 0xff", Policy{MaxItems: 4}, func(h Header) (Header, error) { h.QoS = 0xff; return h, nil }, ErrRejected},
		{"QoS 4", Policy{MaxItems: 4, Admission: DeadlineQoS}, func(h Header) (Header, error) { h.QoS = 4; return h, nil }, ErrRejected},
		{"Size over MaxBytes", Policy{MaxBytes: 100}, func(h Header) (Header, error) { h.Size = math.MaxUint32; return h, nil }, ErrRejected},
		{"expired", Policy{MaxItems: 4}, func(h Header) (Header, error) { h.Deadline = 1; return h, nil }, ErrExpired},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := usNewStore()
			e := usEdge(t, s, c.pol)
			s.setHeader(func(_ token.Token, h Header) (Header, error) { return c.hook(h) })
			tok := s.put(Header{})
			for opName, send := range map[string]func() error{
				"Send":    func() error { return e.Send(context.Background(), tok) },
				"TrySend": func() error { return e.TrySend(tok) },
				"SendBatch": func() error {
					n, err := e.SendBatch(context.Background(), []token.Token{tok})
					if n != 0 {
						t.Errorf("SendBatch n = %d", n)
					}
					return err
				},
			} {
				if err := send(); !errors.Is(err, c.want) {
					t.Errorf("%s: err %v, want %v", opName, err, c.want)
				}
			}
			if e.Len() != 0 || !s.isLive(tok) {
				t.Errorf("Len %d, token live %v: refused token must stay with the caller", e.Len(), s.isLive(tok))
			}
			usConserve(t, c.name, e)
		})
	}
}

// A huge Size on an edge without byte caps is counted exactly and returns
// to 0.
func TestUserStoreHugeSizeNoByteCap(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 8, SoftBytes: 1})
	for range 4 {
		if err := e.TrySend(s.put(Header{Size: math.MaxUint32})); err != nil {
			t.Fatal(err)
		}
	}
	if b := e.Bytes(); b != 4*int64(math.MaxUint32) {
		t.Errorf("Bytes %d, want %d", b, 4*int64(math.MaxUint32))
	}
	if w := e.Watermark(); w != SoftReached {
		t.Errorf("Watermark %v", w)
	}
	for range 4 {
		tok, ok := e.TryRecv()
		if !ok {
			t.Fatal("TryRecv empty")
		}
		s.Free(tok)
	}
	if b := e.Bytes(); b != 0 {
		t.Errorf("Bytes %d after emptying", b)
	}
}

// A header that changes between calls: the edge reads it once per send and
// keeps its accounting on the cached values.
func TestUserStoreInconsistentHeader(t *testing.T) {
	for _, adm := range []Admission{Block, DropNewest, DropOldest, DeadlineQoS} {
		t.Run(adm.String(), func(t *testing.T) {
			s := usNewStore()
			e := usEdge(t, s, Policy{MaxItems: 6, MaxBytes: 600, SoftBytes: 300, Admission: adm})
			var k atomic.Uint32
			s.setHeader(func(_ token.Token, h Header) (Header, error) {
				n := k.Add(1)
				h.Size = n*37%100 + 1
				h.QoS = QoS(n%3 + 1)
				if n%4 == 0 {
					h.Deadline = Now() + int64(time.Duration(n%5)*time.Millisecond)
				}
				return h, nil
			})
			var held []token.Token
			for range 200 {
				tok := s.put(Header{})
				if err := e.TrySend(tok); err != nil {
					held = append(held, tok)
				}
				if k.Load()%3 == 0 {
					if got, ok := e.TryRecv(); ok {
						s.Free(got)
					}
				}
			}
			if b := e.Bytes(); b < 0 || b > 600 {
				t.Errorf("Bytes %d outside [0,600]", b)
			}
			e.Close()
			e.Drain()
			if b := e.Bytes(); b != 0 {
				t.Errorf("Bytes %d after Drain", b)
			}
			usConserve(t, adm.String(), e)
			for _, tok := range held {
				s.Free(tok)
			}
			if live := s.liveCount(); live != 0 {
				t.Errorf("%d messages still live: lost or duplicated", live)
			}
		})
	}
}

// Free returning errors: counted in FreeErrors for evictions, expiries and
// drains; the operations still succeed.
func TestUserStoreFreeErrorsCounted(t *testing.T) {
	errMine := errors.New("free failed")
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 2, Admission: DropOldest})
	s.setFree(func(token.Token) error { return errMine })
	e.TrySend(s.put(Header{}))
	e.TrySend(s.put(Header{}))
	if err := e.TrySend(s.put(Header{})); err != nil { // evicts 1
		t.Fatal(err)
	}
	e.TrySend(usExpiring(s, time.Millisecond)) // evicts 1
	time.Sleep(3 * time.Millisecond)
	if tok, ok := e.TryRecv(); !ok {
		t.Fatal("TryRecv")
	} else {
		s.fakeStore.Free(tok)
	}
	if _, ok := e.TryRecv(); ok { // expires 1
		t.Fatal("expired token delivered")
	}
	e.TrySend(s.put(Header{}))
	e.Drain() // drains 1
	st := e.Stats()
	if st.FreeErrors != 4 {
		t.Errorf("FreeErrors %d, want 4 (2 evictions, 1 expiry, 1 drain): %+v", st.FreeErrors, st)
	}
	usConserve(t, "free errors", e)
}

// A slow Free (under the lock) delays but never deadlocks other callers.
func TestUserStoreSlowFree(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 2, Admission: DropOldest})
	s.setFree(func(token.Token) error { time.Sleep(5 * time.Millisecond); return nil })
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for g := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if g == 0 {
					rctx, rcancel := context.WithTimeout(ctx, 50*time.Millisecond)
					if tok, err := e.Recv(rctx); err == nil {
						s.fakeStore.Free(tok)
					}
					rcancel()
					continue
				}
				tok := s.put(Header{})
				if err := e.TrySend(tok); err != nil {
					s.fakeStore.Free(tok)
				}
			}
		}()
	}
	if !usWithin(2500*time.Millisecond, wg.Wait) {
		t.Fatal("slow Free deadlocked the edge")
	}
	e.Close()
	s.setFree(nil)
	e.Drain()
	usConserve(t, "slow free", e)
	if live := s.liveCount(); live != 0 {
		t.Errorf("%d live messages after draining", live)
	}
}

// --- 2. NewEdge inputs -----------------------------------------------------

func TestUserStoreNewEdgeInputs(t *testing.T) {
	var nilStore *Store[zaPayload]
	var nilBytes *ByteStore[[64]byte]
	for i, hs := range []HeaderStore{nil, nilStore, nilBytes} {
		if e, err := NewEdge(hs, Policy{}); e != nil || !errors.Is(err, ErrBadPolicy) || !errors.Is(err, ErrNilStore) {
			t.Errorf("hs #%d: NewEdge = %v, %v; want ErrBadPolicy and ErrNilStore", i, e, err)
		}
	}
	bad := []Policy{
		{MaxItems: -1}, {SoftItems: -1}, {MaxBytes: -1}, {SoftBytes: -1},
		{MaxItems: 2, SoftItems: 3}, {MaxBytes: 2, SoftBytes: 3},
		{MaxItems: math.MinInt}, {MaxBytes: math.MinInt64},
		{Admission: DeadlineQoS + 1}, {Admission: 255},
	}
	s := usNewStore()
	for _, p := range bad {
		if e, err := NewEdge(s, p); e != nil || !errors.Is(err, ErrBadPolicy) {
			t.Errorf("NewEdge(%+v) = %v, %v; want ErrBadPolicy", p, e, err)
		}
	}
	good := []Policy{
		{MaxItems: math.MaxInt}, {MaxItems: math.MaxInt, SoftItems: math.MaxInt},
		{MaxBytes: math.MaxInt64, SoftBytes: math.MaxInt64, Admission: DeadlineQoS},
		{SoftItems: 5}, {SoftBytes: 5}, {MaxItems: 1, Admission: DropOldest},
		{MaxItems: 1 << 40, Admission: DropOldest}, {MaxBytes: math.MaxInt64, Admission: DropOldest},
	}
	for _, p := range good {
		var e *Edge
		var err error
		if !usWithin(time.Second, func() { e, err = NewEdge(s, p) }) {
			t.Errorf("NewEdge(%+v) hung", p)
			continue
		}
		if err != nil {
			t.Errorf("NewEdge(%+v): %v", p, err)
			continue
		}
		ok := usWithin(time.Second, func() {
			for range 100 {
				if err := e.TrySend(s.put(Header{Size: math.MaxUint32, QoS: LatencyCritical})); err != nil {
					t.Errorf("%+v: TrySend: %v", p, err)
					return
				}
				tok, ok := e.TryRecv()
				if !ok {
					t.Errorf("%+v: TryRecv empty", p)
					return
				}
				s.Free(tok)
			}
		})
		if !ok {
			t.Errorf("%+v: send/recv hung", p)
		}
	}
	if live := s.liveCount(); live != 0 {
		t.Errorf("%d live", live)
	}
}

// A typed-nil user HeaderStore: the library cannot call its methods safely.
// The docs only promise ErrNilStore for nil, nil *Store and nil *ByteStore;
// this records what happens for a user type (ambiguous, not asserted).
type usPtrStore struct{ s *fakeStore }

func (p *usPtrStore) Header(t token.Token) (Header, error) { return p.s.Header(t) }
func (p *usPtrStore) Free(t token.Token) error             { return p.s.Free(t) }

func TestUserStoreTypedNilUserStore(t *testing.T) {
	var p *usPtrStore
	e, err := NewEdge(p, Policy{})
	if err != nil {
		t.Logf("NewEdge(typed nil user store): %v", err)
		return
	}
	r := usCatch(func() { e.TrySend(token.New(1, 1)) })
	t.Logf("NewEdge(typed nil user store) accepted; TrySend panicked: %v", r != nil)
}

// --- 3. SendAll ------------------------------------------------------------

func usArenaStore(t *testing.T, slots int) *Store[zaPayload] {
	t.Helper()
	s, err := NewStore[zaPayload](arena.Config{Slots: slots, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func usPut(t *testing.T, s *Store[zaPayload], h Header) token.Token {
	t.Helper()
	tok, err := s.Put(h, zaPayload{})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// usSettle drains the edges and checks every slot is back.
func usSettle(t *testing.T, what string, s *Store[zaPayload], edges ...*Edge) {
	t.Helper()
	for _, e := range edges {
		if e != nil {
			e.Drain()
			if st := e.Stats(); st.FreeErrors != 0 {
				t.Errorf("%s: FreeErrors %d", what, st.FreeErrors)
			}
		}
	}
	if a := s.Available(); a != s.Capacity() {
		t.Errorf("%s: Available %d of %d after draining: a reference was lost or over-freed", what, a, s.Capacity())
	}
}

func TestUserStoreSendAllOwnership(t *testing.T) {
	ctxDone, cancel := context.WithCancel(context.Background())
	cancel()
	type tc struct {
		name     string
		setup    func(s *Store[zaPayload], other *Store[zaPayload]) ([]*Edge, token.Token)
		ctx      context.Context
		wantSent int
		wantErr  []error
		wantRefs int // refs of t right after SendAll (0 = freed)
	}
	mk := func(s HeaderStore, p Policy) *Edge {
		e, err := NewEdge(s, p)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	full := func(s *Store[zaPayload], p Policy, h Header) *Edge {
		e := mk(s, p)
		for range p.MaxItems {
			if err := e.TrySend(usPut(t, s, h)); err != nil {
				t.Fatal(err)
			}
		}
		return e
	}
	cases := []tc{
		{name: "no edges", setup: func(s, _ *Store[zaPayload]) ([]*Edge, token.Token) {
			return nil, usPut(t, s, Header{})
		}},
		{name: "nil edges", setup: func(s, _ *Store[zaPayload]) ([]*Edge, token.Token) {
			return []*Edge{nil, mk(s, Policy{}), nil}, usPut(t, s, Header{})
		}, wantSent: 1, wantErr: []error{ErrNilEdge}, wantRefs: 1},
		{name: "all nil", setup: func(s, _ *Store[zaPayload]) ([]*Edge, token.Token) {
			return []*Edge{nil, nil}, usPut(t, s, Header{})
		}, wantErr: []error{ErrNilEdge}},
		{name: "same edge twice", setup: func(s, _ *Store[zaPayload]) ([]*Edge, token.Token) {
			e := mk(s, Policy{})
			return []*Edge{e, e}, usPut(t, s, Header{})
		}, wantSent: 2, wantRefs: 2},
		{name: "other store", setup: func(s, o *Store[zaPayload]) ([]*Edge, token.Token) {
			return []*Edge{mk(s, Policy{}), mk(o, Policy{})}, usPut(t, s, Header{})
		}, wantSent: 1, wantErr: []error{arena.ErrStale}, wantRefs: 1},
		{name: "closed", setup: func(s, _ *Store[zaPayload]) ([]*Edge, token.Token) {
			e := mk(s, Policy{})
			e.Close()
			return []*Edge{e, mk(s, Policy{})}, usPut(t, s, Header{})
		}, wantSent: 1, wantErr: []error{ErrEdgeClosed}, wantRefs: 1},
		{name: "full DropNewest", setup: func(s, _ *Store[zaPayload]) ([]*Edge, token.Token) {
			return []*Edge{full(s, Policy{MaxItems: 1, Admission: DropNewest}, Header{}), mk(s, Policy{})}, usPut(t, s, Header{})
		}, wantSent: 1, wantErr: []error{ErrEdgeFull}, wantRefs: 1},
		{name: "full DropOldest", setup: func(s, _ *Store[zaPayload]) ([]*Edge, token.Token) {
			return []*Edge{full(s, Policy{MaxItems: 1, Admission: DropOldest}, Header{}), mk(s, Policy{})}, usPut(t, s, Header{})
		}, wantSent: 2, wantRefs: 2},
		{name: "full DeadlineQoS no victim", setup: func(s, _ *Store[zaPayload]) ([]*Edge, token.Token) {
			return []*Edge{full(s, Policy{MaxItems: 1, Admission: DeadlineQoS}, Header{QoS: LatencyCritical}), mk(s, Policy{})}, usPut(t, s, Header{QoS: Background})
		}, wantSent: 1, wantErr: []error{ErrEdgeFull}, wantRefs: 1},
		{name: "full Block ctx done", ctx: ctxDone, setup: func(s, _ *Store[zaPayload]) ([]*Edge, token.Token) {
			return []*Edge{mk(s, Policy{}), full(s, Policy{MaxItems: 1}, Header{})}, usPut(t, s, Header{})
		}, wantSent: 1, wantErr: []error{context.Canceled}, wantRefs: 1},
		{name: "expired", setup: func(s, _ *Store[zaPayload]) ([]*Edge, token.Token) {
			return []*Edge{mk(s, Policy{}), mk(s, Policy{})}, usPut(t, s, Header{Deadline: 1})
		}, wantErr: []error{ErrExpired, ErrRejected}},
		{name: "stale one edge", setup: func(s, _ *Store[zaPayload]) ([]*Edge, token.Token) {
			tok := usPut(t, s, Header{})
			s.Free(tok)
			return []*Edge{mk(s, Policy{})}, tok
		}, wantErr: []error{arena.ErrStale}},
		{name: "stale two edges", setup: func(s, _ *Store[zaPayload]) ([]*Edge, token.Token) {
			tok := usPut(t, s, Header{})
			s.Free(tok)
			return []*Edge{mk(s, Policy{}), mk(s, Policy{})}, tok
		}, wantErr: []error{arena.ErrStale}},
		{name: "nil token", setup: func(s, _ *Store[zaPayload]) ([]*Edge, token.Token) {
			return []*Edge{mk(s, Policy{})}, token.Nil
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, o := usArenaStore(t, 16), usArenaStore(t, 16)
			edges, tok := c.setup(s, o)
			ctx := c.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			var sent int
			var err error
			if !usWithin(2*time.Second, func() { sent, err = SendAll(ctx, s, tok, edges...) }) {
				t.Fatal("SendAll hung")
			}
			if sent != c.wantSent {
				t.Errorf("sent %d, want %d (err %v)", sent, c.wantSent, err)
			}
			for _, w := range c.wantErr {
				if !errors.Is(err, w) {
					t.Errorf("err %v does not match %v", err, w)
				}
			}
			if c.name == "nil token" && err == nil {
				t.Errorf("SendAll of the nil token returned no error")
			}
			if (err == nil) != (sent == len(edges)) && len(edges) > 0 {
				t.Errorf("sent %d of %d with err %v: sent == len(edges) must hold exactly when err is nil", sent, len(edges), err)
			}
			if !tok.IsNil() {
				refs, rerr := s.Refs(tok)
				if c.wantRefs == 0 {
					if rerr == nil && refs != 0 {
						t.Errorf("t still holds %d references after SendAll: the caller's was not consumed", refs)
					}
				} else if rerr != nil || refs != c.wantRefs {
					t.Errorf("Refs(t) = %d, %v; want %d", refs, rerr, c.wantRefs)
				}
			}
			usSettle(t, c.name, s, edges...)
			for _, e := range edges {
				if e != nil {
					usConserve(t, c.name, e)
				}
			}
		})
	}
}

func TestUserStoreSendAllNilRefStore(t *testing.T) {
	s := usArenaStore(t, 4)
	e := usEdge(t, s, Policy{})
	tok := usPut(t, s, Header{})
	var nilStore *Store[zaPayload]
	for i, rs := range []RefStore{nil, nilStore, (*ByteStore[[64]byte])(nil)} {
		n, err := SendAll(context.Background(), rs, tok, e)
		if n != 0 || !errors.Is(err, ErrNilStore) {
			t.Errorf("rs #%d: SendAll = %d, %v; want ErrNilStore", i, n, err)
		}
	}
	if refs, err := s.Refs(tok); err != nil || refs != 1 {
		t.Errorf("Refs %d, %v: the caller keeps its reference on ErrNilStore", refs, err)
	}
	if e.Len() != 0 {
		t.Errorf("Len %d", e.Len())
	}
	s.Free(tok)
	usSettle(t, "nil rs", s, e)
}

// SendAll to a Block edge that is full and a ctx that ends while waiting:
// the share is freed, the earlier edge keeps its, the later edge gets its.
func TestUserStoreSendAllBlockTimeout(t *testing.T) {
	s := usArenaStore(t, 8)
	a, b, c := usEdge(t, s, Policy{}), usEdge(t, s, Policy{MaxItems: 1}), usEdge(t, s, Policy{})
	if err := b.TrySend(usPut(t, s, Header{})); err != nil {
		t.Fatal(err)
	}
	tok := usPut(t, s, Header{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	n, err := SendAll(ctx, s, tok, a, b, c)
	if n != 2 || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("SendAll = %d, %v", n, err)
	}
	if refs, _ := s.Refs(tok); refs != 2 {
		t.Errorf("Refs %d, want 2", refs)
	}
	usSettle(t, "block timeout", s, a, b, c)
}

// SendAll with a user RefStore whose Retain fails on the k-th call: every
// reference taken and the caller's are freed.
type usRefStore struct {
	*usStore
	retainFail int // fail the retainFail-th Retain (1-based)
	retains    int
}

func (r *usRefStore) Retain(t token.Token) error {
	r.retains++
	if r.retains == r.retainFail {
		return ErrTooManyRefs
	}
	return r.fakeStore.Retain(t)
}

func TestUserStoreSendAllRetainFails(t *testing.T) {
	for k := 1; k <= 3; k++ {
		s := &usRefStore{usStore: usNewStore(), retainFail: k}
		edges := []*Edge{usEdge(t, s, Policy{}), usEdge(t, s, Policy{}), usEdge(t, s, Policy{}), usEdge(t, s, Policy{})}
		tok := s.put(Header{})
		n, err := SendAll(context.Background(), s, tok, edges...)
		if n != 0 || !errors.Is(err, ErrTooManyRefs) {
			t.Errorf("k=%d: SendAll = %d, %v", k, n, err)
		}
		if s.isLive(tok) {
			t.Errorf("k=%d: token still live after a failed Retain: references leaked", k)
		}
		for i, e := range edges {
			if e.Len() != 0 {
				t.Errorf("k=%d: edge %d got the token", k, i)
			}
		}
	}
}

// --- 4. Edge.All -----------------------------------------------------------

func usFill(t *testing.T, s *usStore, e *Edge, n int) []token.Token {
	t.Helper()
	var ts []token.Token
	for i := range n {
		tok := s.put(Header{Seq: uint64(i)})
		if err := e.TrySend(tok); err != nil {
			t.Fatal(err)
		}
		ts = append(ts, tok)
	}
	return ts
}

func TestUserStoreAllBreakEarly(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 16})
	ts := usFill(t, s, e, 10)
	got := 0
	for tok := range e.All(context.Background()) {
		if tok != ts[got] {
			t.Errorf("got %v, want %v", tok, ts[got])
		}
		s.Free(tok)
		got++
		if got == 3 {
			break
		}
	}
	if e.Len() != 7 {
		t.Errorf("Len %d after breaking at 3 of 10, want 7", e.Len())
	}
	if tok, _ := e.TryRecv(); tok != ts[3] {
		t.Errorf("next token %v, want %v", tok, ts[3])
	}
}

func TestUserStoreAllPanicInBody(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 16})
	ts := usFill(t, s, e, 5)
	var owned []token.Token
	r := usCatch(func() {
		for tok := range e.All(context.Background()) {
			owned = append(owned, tok)
			if len(owned) == 2 {
				panic(usBoom{"body"})
			}
		}
	})
	if _, ok := r.(usBoom); !ok {
		t.Fatalf("recovered %v", r)
	}
	if e.Len() != 3 {
		t.Errorf("Len %d after a panic in the 2nd iteration, want 3", e.Len())
	}
	n := 0
	for tok := range e.All(context.Background()) {
		if tok != ts[2+n] {
			t.Errorf("resumed at %v, want %v", tok, ts[2+n])
		}
		s.Free(tok)
		if n++; n == 3 {
			break
		}
	}
	for _, tok := range owned {
		s.Free(tok)
	}
	if live := s.liveCount(); live != 0 {
		t.Errorf("%d live", live)
	}
	usUsable(t, "All body panic", e, s)
}

func TestUserStoreAllCtxCancelMid(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 16})
	usFill(t, s, e, 6)
	ctx, cancel := context.WithCancel(context.Background())
	got := 0
	done := usWithin(2*time.Second, func() {
		for tok := range e.All(ctx) {
			s.Free(tok)
			if got++; got == 2 {
				cancel()
			}
		}
	})
	if !done {
		t.Fatal("All did not end after cancel")
	}
	// Doc: "The loop ends ... when ctx is done". Recv with a done ctx and
	// tokens queued returns a token (ctx only looked at when waiting), so
	// the loop may run on until empty: both are allowed as long as nothing
	// is lost.
	if got+e.Len() != 6 {
		t.Errorf("yielded %d + queued %d != 6", got, e.Len())
	}
	t.Logf("All yielded %d tokens after cancel at 2 (Len %d left)", got, e.Len())
	e.Drain()
	if live := s.liveCount(); live != 0 {
		t.Errorf("%d live", live)
	}
}

func TestUserStoreAllClosedWhileRanging(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 64})
	const total = 40
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var got atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		for tok := range e.All(ctx) {
			s.Free(tok)
			got.Add(1)
		}
	}()
	sent := 0
	for i := range total {
		tok := s.put(Header{Seq: uint64(i)})
		if err := e.Send(ctx, tok); err != nil {
			t.Fatal(err)
		}
		sent++
		if i == total/2 {
			e.Close()
			break
		}
	}
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("All did not end after Close")
	}
	if ctx.Err() != nil {
		t.Errorf("All ended by ctx, not by Close")
	}
	if int(got.Load()) != sent || e.Len() != 0 {
		t.Errorf("yielded %d of %d sent, Len %d", got.Load(), sent, e.Len())
	}
	if live := s.liveCount(); live != 0 {
		t.Errorf("%d live", live)
	}
}

var _ = fmt.Sprint

// SendBatch of more than one chunk (32) whose Header panics on a token of
// the second chunk: the first chunk is already in the edge, but the panic
// carries no n, so the caller cannot tell which references it still owns.
// The docs are silent on this (recorded, not asserted); the edge must stay
// usable and hold exactly the first chunk.
func TestUserStoreHeaderPanicSecondChunk(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 128, Admission: DropOldest})
	ts := make([]token.Token, 40)
	for i := range ts {
		ts[i] = s.put(Header{QoS: LatencyCritical})
	}
	bad := ts[35]
	s.setHeader(func(tok token.Token, h Header) (Header, error) {
		if tok == bad {
			panic(usBoom{"chunk2"})
		}
		return h, nil
	})
	r := usCatch(func() { e.SendBatch(context.Background(), ts) })
	if _, ok := r.(usBoom); !ok {
		t.Fatalf("recovered %v", r)
	}
	s.setHeader(nil)
	if !usUsable(t, "SendBatch chunk 2", e, s) {
		return
	}
	t.Logf("after a Header panic at index 35, Len = %d: ts[:%d] are owned by the edge but the caller got no n", e.Len(), e.Len())
	if n := e.Len(); n != 32 {
		t.Errorf("Len %d, want the first chunk (32)", n)
	}
	usConserve(t, "chunk2", e)
}

// All's doc: "The loop ends when the edge is closed and empty, or when ctx
// is done". With a producer that keeps the edge non-empty, a cancelled All
// keeps yielding (Recv looks at ctx only when it has to wait), so a
// consumer that ranges over All(ctx) never stops on cancel under load.
func TestUserStoreAllCancelUnderLoad(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 64})
	stop := make(chan struct{})
	var pwg sync.WaitGroup
	pwg.Add(1)
	go func() {
		defer pwg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			tok := s.put(Header{})
			if err := e.TrySend(tok); err != nil {
				s.Free(tok)
				time.Sleep(10 * time.Microsecond)
			}
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	var afterCancel atomic.Int64
	var cancelled atomic.Bool
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		n := 0
		for tok := range e.All(ctx) {
			s.Free(tok)
			time.Sleep(200 * time.Microsecond) // a consumer slower than its producer
			if cancelled.Load() {
				afterCancel.Add(1)
			}
			if n++; n == 10 {
				cancel()
				cancelled.Store(true)
			}
		}
	}()
	var ok bool
	select {
	case <-ended:
		ok = true
	case <-time.After(500 * time.Millisecond):
	}
	close(stop)
	pwg.Wait()
	e.Close()
	select {
	case <-ended:
	case <-time.After(2 * time.Second):
		t.Fatal("All did not end even after Close")
	}
	e.Drain()
	if !ok {
		t.Errorf("All(ctx) still yielding 500ms after ctx was cancelled (%d tokens yielded after cancel) while a producer kept the edge non-empty; doc: the loop ends when ctx is done", afterCancel.Load())
	}
	if live := s.liveCount(); live != 0 {
		t.Errorf("%d live", live)
	}
}
