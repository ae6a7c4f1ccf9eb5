package message

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// Attacks on Store and ByteStore under churn, with GOMAXPROCS moving under
// the store's feet and more goroutines than Ps.

// scPay is a payload whose every word carries the same pattern, so that a
// torn or foreign write is visible.
type scPay [16]uint64

func scFill(v uint64) (p scPay) {
	for i := range p {
		p[i] = v
	}
	return p
}

// scHdr is a header all of whose fields carry v.
func scHdr(v uint64) Header {
	return Header{
		Trace: v, Seq: v, Created: int64(v), Deadline: int64(v),
		QoS: QoS(uint8(v)), Flags: Flags(uint32(v)), Size: uint32(v),
	}
}

// scHdrOK reports whether h is scHdr(h.Trace).
func scHdrOK(h Header) bool { return h == scHdr(h.Trace) }

func scPayOK(p *scPay, v uint64) bool {
	for _, w := range p {
		if w != v {
			return false
		}
	}
	return true
}

// scProcs changes GOMAXPROCS all the time until the test ends, and restores
// it.
func scProcs(t *testing.T) {
	t.Helper()
	orig := runtime.GOMAXPROCS(0)
	vals := []int{1, 2, 3, 17, 4*runtime.NumCPU() + 3}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			runtime.GOMAXPROCS(vals[i%len(vals)])
			time.Sleep(time.Duration(100+rand.IntN(400)) * time.Microsecond)
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
		runtime.GOMAXPROCS(orig)
	})
}

func scDump() string {
	buf := make([]byte, 8<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// scWait waits for wg, failing with a goroutine dump after d.
func scWait(t *testing.T, wg *sync.WaitGroup, d time.Duration, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s: still running after %v\n%s", what, d, scDump())
	}
}

// scParked counts goroutines parked in the arena's wait for a free slot.
func scParked() int {
	n := 0
	for _, g := range strings.Split(scDump(), "\n\n") {
		if strings.Contains(g, "arena.(*core).await") &&
			(strings.Contains(g, "[select") || strings.Contains(g, "[chan receive")) {
			n++
		}
	}
	return n
}

func scWaitParked(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for scParked() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d PutWait callers parked, want %d\n%s", scParked(), n, scDump())
		}
		time.Sleep(time.Millisecond)
	}
}

func scNewStore(t *testing.T, slots int) *Store[scPay] {
	t.Helper()
	s, err := NewStore[scPay](arena.Config{Slots: slots})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// scQuiet checks a store with no holder left: every slot back, no token
// yielded, Allocs == Frees.
func scQuiet[P any](t *testing.T, s *Store[P]) {
	t.Helper()
	if a, c := s.Available(), s.Capacity(); a != c {
		t.Errorf("at quiescence Available = %d, Capacity = %d", a, c)
	}
	for tok := range s.Tokens() {
		r, err := s.Refs(tok)
		t.Errorf("Tokens yields %v (refs %d, %v) with no holder left", tok, r, err)
	}
	if st := s.Stats(); st.Allocs != st.Frees {
		t.Errorf("Stats: Allocs %d != Frees %d at quiescence", st.Allocs, st.Frees)
	}
}

func scDuration() time.Duration {
	if raceEnabled {
		return 700 * time.Millisecond
	}
	return 400 * time.Millisecond
}

// stalePool keeps recently freed tokens for the stale attackers.
type scStalePool struct {
	mu   sync.Mutex
	toks []token.Token
	next int
}

func (p *scStalePool) add(t token.Token) {
	p.mu.Lock()
	if len(p.toks) < 64 {
		p.toks = append(p.toks, t)
	} else {
		p.toks[p.next%64] = t
		p.next++
	}
	p.mu.Unlock()
}

func (p *scStalePool) pick() (token.Token, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.toks) == 0 {
		return token.Nil, false
	}
	return p.toks[rand.IntN(len(p.toks))], true
}

// scStaleAttack hammers stale tokens with every method: each must fail with
// an error matching arena.ErrStale, never succeed (a stale Free or Retain
// that succeeded would move a live message's count).
func scStaleAttack(t *testing.T, s *Store[scPay], pool *scStalePool, stop *atomic.Bool, wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			tok, ok := pool.pick()
			if !ok {
				runtime.Gosched()
				continue
			}
			var err error
			op := rand.IntN(6)
			switch op {
			case 0:
				err = s.Free(tok)
			case 1:
				err = s.Retain(tok)
			case 2:
				_, err = s.Refs(tok)
			case 3:
				err = s.View(tok, func(*Message[scPay]) { t.Errorf("View ran fn for stale %v", tok) })
			case 4:
				_, err = s.Header(tok)
			case 5:
				err = s.Update(tok, func(*Message[scPay]) { t.Errorf("Update ran fn for stale %v", tok) })
			}
			if !errors.Is(err, arena.ErrStale) {
				t.Errorf("op %d on stale token %v: %v, want arena.ErrStale", op, tok, err)
				stop.Store(true)
				return
			}
		}
	}()
}

// TestStoreChurnRefcountFanout: Put, Retain k times from k goroutines, Free
// from k+1+extra goroutines: exactly k+1 Frees succeed, the others match
// arena.ErrStale; Refs is exact; no slot is handed out twice while live;
// stale tokens stay stale while their slots are reused; everything comes
// back at the end. Store doc: "Free drops one reference; dropping the last
// one recycles the slot. Freeing more often than t was retained (plus one
// for Put) returns an error matching arena.ErrStale and changes nothing."
func TestStoreChurnRefcountFanout(t *testing.T) {
	scProcs(t)
	for _, slots := range []int{1, 3, 16} {
		t.Run(fmt.Sprint("slots", slots), func(t *testing.T) {
			s := scNewStore(t, slots)
			live := make([]atomic.Uint32, slots)
			var pool scStalePool
			var stop atomic.Bool
			var wg sync.WaitGroup
			scStaleAttack(t, s, &pool, &stop, &wg)
			scStaleAttack(t, s, &pool, &stop, &wg)
			// Trim churns the metadata pages of free slots too.
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() {
					if _, err := s.Trim(); err != nil {
						t.Errorf("Trim: %v", err)
						return
					}
					time.Sleep(50 * time.Microsecond)
				}
			}()
			owners := max(1, slots-1)
			end := time.Now().Add(scDuration())
			var ops atomic.Int64
			var owg sync.WaitGroup
			for o := range owners {
				owg.Add(1)
				go func() {
					defer owg.Done()
					for n := uint64(1); time.Now().Before(end) && !stop.Load(); n++ {
						v := uint64(o)<<40 | n | 1<<63
						tok, err := s.Put(scHdr(v), scFill(v))
						if err != nil {
							// owners < slots: a free slot always exists.
							t.Errorf("Put with %d owners on %d slots: %v", owners, slots, err)
							stop.Store(true)
							return
						}
						idx := tok.Index()
						if !live[idx].CompareAndSwap(0, 1) {
							t.Errorf("slot %d handed out twice while live (%v)", idx, tok)
							stop.Store(true)
							return
						}
						if r, err := s.Refs(tok); err != nil || r != 1 {
							t.Errorf("Refs after Put = %d, %v; want 1", r, err)
						}
						k := rand.IntN(6)
						var rwg sync.WaitGroup
						for range k {
							rwg.Add(1)
							go func() {
								defer rwg.Done()
								if err := s.Retain(tok); err != nil {
									t.Errorf("Retain of live %v: %v", tok, err)
								}
							}()
						}
						rwg.Wait()
						if r, err := s.Refs(tok); err != nil || r != k+1 {
							t.Errorf("Refs after %d Retains = %d, %v; want %d", k, r, err, k+1)
						}
						if err := s.View(tok, func(m *Message[scPay]) {
							if m.Header != scHdr(v) || !scPayOK(&m.Payload, v) {
								t.Errorf("View of %v: message not what Put wrote (trace %x want %x)", tok, m.Header.Trace, v)
							}
						}); err != nil {
							t.Errorf("View of live %v: %v", tok, err)
						}
						extra := rand.IntN(3)
						live[idx].Store(0)
						var nils, stales atomic.Int32
						var fwg sync.WaitGroup
						for range k + 1 + extra {
							fwg.Add(1)
							go func() {
								defer fwg.Done()
								err := s.Free(tok)
								switch {
								case err == nil:
									nils.Add(1)
								case errors.Is(err, arena.ErrStale):
									stales.Add(1)
								default:
									t.Errorf("Free of %v: %v", tok, err)
								}
							}()
						}
						fwg.Wait()
						if int(nils.Load()) != k+1 || int(stales.Load()) != extra {
							t.Errorf("%v with %d refs freed %d times: %d nil, %d ErrStale; want %d nil, %d ErrStale",
								tok, k+1, k+1+extra, nils.Load(), stales.Load(), k+1, extra)
							stop.Store(true)
						}
						if _, err := s.Refs(tok); !errors.Is(err, arena.ErrStale) {
							t.Errorf("Refs of freed %v: %v, want ErrStale", tok, err)
						}
						if err := s.Retain(tok); !errors.Is(err, arena.ErrStale) {
							t.Errorf("Retain of freed %v: %v, want ErrStale", tok, err)
						}
						pool.add(tok)
						ops.Add(1)
					}
				}()
			}
			scWait(t, &owg, 30*time.Second, "owners")
			stop.Store(true)
			scWait(t, &wg, 10*time.Second, "attackers")
			if ops.Load() == 0 {
				t.Fatal("no round ran")
			}
			scQuiet(t, s)
			t.Logf("%d rounds", ops.Load())
		})
	}
}

// TestStoreChurnRetainFreeStorm: one token, many goroutines each doing
// Retain-then-Free pairs concurrently while the owner's reference keeps it
// alive: the count never reaches zero, so no Free may fail and no Retain
// may fail; at the end Refs is exactly 1.
func TestStoreChurnRetainFreeStorm(t *testing.T) {
	scProcs(t)
	s := scNewStore(t, 2)
	tok, err := s.Put(scHdr(7), scFill(7))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	end := time.Now().Add(scDuration() / 2)
	for range 4*runtime.NumCPU() + 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				n := 1 + rand.IntN(3)
				for range n {
					if err := s.Retain(tok); err != nil {
						t.Errorf("Retain: %v", err)
						return
					}
				}
				for range n {
					if err := s.Free(tok); err != nil {
						t.Errorf("Free: %v", err)
						return
					}
				}
			}
		}()
	}
	scWait(t, &wg, 30*time.Second, "storm")
	if r, err := s.Refs(tok); err != nil || r != 1 {
		t.Fatalf("Refs after the storm = %d, %v; want 1", r, err)
	}
	if err := s.Free(tok); err != nil {
		t.Fatal(err)
	}
	if err := s.Free(tok); !errors.Is(err, arena.ErrStale) {
		t.Fatalf("Free once too many: %v", err)
	}
	scQuiet(t, s)
}

// TestStoreChurnPutWaitOrder: waiters on a full store are served in
// arrival order as slots free one at a time; a cancelled waiter returns
// ctx.Err() and loses no slot; a nil ctx waits like Background; Close wakes
// the rest with arena.ErrClosed.
func TestStoreChurnPutWaitOrder(t *testing.T) {
	scProcs(t)
	for _, slots := range []int{1, 2, 5} {
		t.Run(fmt.Sprint("slots", slots), func(t *testing.T) {
			s, err := NewStore[scPay](arena.Config{Slots: slots})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var held []token.Token
			for i := range slots {
				tok, err := s.Put(scHdr(uint64(i)), scFill(uint64(i)))
				if err != nil {
					t.Fatal(err)
				}
				held = append(held, tok)
			}
			// A PutWait with a done ctx on a full store returns at once.
			cctx, cancel0 := context.WithCancel(context.Background())
			cancel0()
			if _, err := s.PutWait(cctx, Header{}, scPay{}); !errors.Is(err, context.Canceled) {
				t.Fatalf("PutWait, full, done ctx: %v", err)
			}
			type res struct {
				id  int
				tok token.Token
				err error
			}
			const W = 8
			results := make(chan res, W)
			cancels := make([]context.CancelFunc, W)
			var wg sync.WaitGroup
			for i := range W {
				var ctx context.Context
				switch i % 3 {
				case 0:
					ctx = nil
				case 1:
					ctx, cancels[i] = context.WithCancel(context.Background())
				case 2:
					ctx = context.Background()
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					v := uint64(100 + i)
					tok, err := s.PutWait(ctx, scHdr(v), scFill(v))
					results <- res{i, tok, err}
				}()
				scWaitParked(t, i+1)
			}
			// Cancel waiters 1 and 4: they return context.Canceled.
			parked := W
			for _, i := range []int{1, 4} {
				cancels[i]()
				select {
				case r := <-results:
					if r.id != i || !errors.Is(r.err, context.Canceled) {
						t.Fatalf("after cancelling waiter %d: waiter %d returned %v, %v", i, r.id, r.tok, r.err)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("cancelled waiter %d did not return\n%s", i, scDump())
				}
				parked--
				scWaitParked(t, parked)
			}
			if a := s.Available(); a != 0 {
				t.Fatalf("Available = %d after cancelled waiters, want 0", a)
			}
			// Serve the rest one slot at a time, except the last, which
			// Close wakes.
			want := []int{0, 2, 3, 5, 6}
			for _, id := range want {
				if err := s.Free(held[0]); err != nil {
					t.Fatal(err)
				}
				held = held[1:]
				select {
				case r := <-results:
					if r.err != nil || r.id != id {
						t.Fatalf("a slot freed: waiter %d got %v, %v; want waiter %d served (arrival order)", r.id, r.tok, r.err, id)
					}
					v := uint64(100 + id)
					if err := s.View(r.tok, func(m *Message[scPay]) {
						if m.Header != scHdr(v) || !scPayOK(&m.Payload, v) {
							t.Errorf("waiter %d's message is not what it put", id)
						}
					}); err != nil {
						t.Fatal(err)
					}
					held = append(held, r.tok)
				case <-time.After(5 * time.Second):
					t.Fatalf("slot freed, waiter %d not served\n%s", id, scDump())
				}
				parked--
				scWaitParked(t, parked)
			}
			// Waiter 7 (ctx 1 % 3 = cancelable) still waits; cancel it
			// racing a Free: either it gets the slot or ctx.Err(); no slot is
			// lost either way.
			if err := s.Free(held[0]); err != nil {
				t.Fatal(err)
			}
			held = held[1:]
			cancels[7]()
			select {
			case r := <-results:
				if r.id != 7 {
					t.Fatalf("waiter %d returned, want 7", r.id)
				}
				if r.err == nil {
					held = append(held, r.tok)
				} else if !errors.Is(r.err, context.Canceled) {
					t.Fatalf("waiter 7: %v", r.err)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("waiter 7 did not return\n%s", scDump())
			}
			if a := s.Available(); a != slots-len(held) {
				t.Fatalf("Available = %d with %d of %d held", a, len(held), slots)
			}
			for _, tok := range held {
				if err := s.Free(tok); err != nil {
					t.Fatal(err)
				}
			}
			scQuiet(t, s)
			// Fill again and park nil-ctx waiters; each is served as a
			// slot frees (its token freed in turn).
			held = held[:0]
			for range slots {
				tok, err := s.Put(Header{}, scPay{})
				if err != nil {
					t.Fatal(err)
				}
				held = append(held, tok)
			}
			type nres struct {
				tok token.Token
				err error
			}
			nilRes := make(chan nres, 3)
			for range 3 {
				go func() {
					//lint:ignore SA1012 a nil context is what is tested
					tok, err := s.PutWait(nil, Header{}, scPay{})
					nilRes <- nres{tok, err}
				}()
			}
			scWaitParked(t, 3)
			for _, tok := range held {
				if err := s.Free(tok); err != nil {
					t.Fatal(err)
				}
			}
			for range 3 {
				select {
				case r := <-nilRes:
					if r.err != nil {
						t.Fatalf("PutWait(nil) with a slot freed: %v", r.err)
					}
					if err := s.Free(r.tok); err != nil {
						t.Fatal(err)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("nil-ctx waiters not served\n%s", scDump())
				}
			}
			scWaitParked(t, 0)
			scQuiet(t, s)
			closedErrs := make(chan error, 3)
			// Now a full store with parked waiters, then Close.
			for range slots {
				if _, err := s.Put(Header{}, scPay{}); err != nil {
					t.Fatal(err)
				}
			}
			for range 3 {
				go func() {
					//lint:ignore SA1012 a nil context is what is tested
					_, err := s.PutWait(nil, Header{}, scPay{})
					closedErrs <- err
				}()
			}
			scWaitParked(t, 3)
			cerr := s.Close()
			if !errors.Is(cerr, ErrReferenced) {
				t.Errorf("Close with %d held: %v, want ErrReferenced", slots, cerr)
			}
			for range 3 {
				select {
				case err := <-closedErrs:
					if !errors.Is(err, arena.ErrClosed) {
						t.Errorf("PutWait woken by Close: %v, want arena.ErrClosed", err)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("Close did not wake PutWait\n%s", scDump())
				}
			}
			scWait(t, &wg, 5*time.Second, "waiters")
		})
	}
}

// TestStoreChurnPutWaitCancelRace: on a one-slot store, a waiter's cancel
// races a Free that wakes it, while a second waiter waits behind it. The
// second must be served whenever the first gave up (the doc: "a waiter that
// gives up loses no slot"), and nothing leaks.
func TestStoreChurnPutWaitCancelRace(t *testing.T) {
	scProcs(t)
	s := scNewStore(t, 1)
	end := time.Now().Add(scDuration())
	rounds := 0
	for time.Now().Before(end) {
		rounds++
		hold, err := s.Put(Header{}, scPay{})
		if err != nil {
			t.Fatal(err)
		}
		ctxA, cancelA := context.WithCancel(context.Background())
		ctxB, cancelB := context.WithTimeout(context.Background(), 10*time.Second)
		type res struct {
			tok token.Token
			err error
		}
		ra, rb := make(chan res, 1), make(chan res, 1)
		go func() { tok, err := s.PutWait(ctxA, Header{}, scPay{}); ra <- res{tok, err} }()
		scWaitParked(t, 1)
		go func() { tok, err := s.PutWait(ctxB, Header{}, scPay{}); rb <- res{tok, err} }()
		scWaitParked(t, 2)
		go cancelA()
		if err := s.Free(hold); err != nil {
			t.Fatal(err)
		}
		var a, b res
		select {
		case a = <-ra:
		case <-time.After(5 * time.Second):
			t.Fatalf("waiter A did not return\n%s", scDump())
		}
		if a.err == nil {
			if err := s.Free(a.tok); err != nil {
				t.Fatal(err)
			}
		} else if !errors.Is(a.err, context.Canceled) {
			t.Fatalf("waiter A: %v", a.err)
		}
		select {
		case b = <-rb:
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: A returned %v; B not served though the slot is free (Available %d)\n%s",
				rounds, a.err, s.Available(), scDump())
		}
		if b.err != nil {
			t.Fatalf("round %d: waiter B: %v (A: %v)", rounds, b.err, a.err)
		}
		if err := s.Free(b.tok); err != nil {
			t.Fatal(err)
		}
		cancelB()
		if s.Available() != 1 {
			t.Fatalf("round %d: Available = %d", rounds, s.Available())
		}
	}
	scQuiet(t, s)
	t.Logf("%d rounds", rounds)
}

// scBig is a payload of several pages, so that Trim has whole pages to
// release.
type scBig [1536]uint64

func scBigOK(m *Message[scBig]) bool {
	v := m.Header.Trace
	if !scHdrOK(m.Header) {
		return false
	}
	for _, w := range m.Payload {
		if w != v {
			return false
		}
	}
	return true
}

// TestStoreChurnTrim: Trim in a loop while Put, PutFunc, PutWait, Update,
// View, Header, Free and stale probes run: messages read back exactly as
// written, PutFunc's slot starts zeroed, stale tokens stay stale, a live
// header never changes under Trim, and nothing leaks.
func TestStoreChurnTrim(t *testing.T) {
	scProcs(t)
	const slots = 24
	s, err := NewStore[scBig](arena.Config{Slots: slots})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Long-lived messages whose headers must not change.
	var fixed []token.Token
	for i := range 4 {
		v := uint64(0xF1000 + i)
		var p scBig
		for j := range p {
			p[j] = v
		}
		tok, err := s.Put(scHdr(v), p)
		if err != nil {
			t.Fatal(err)
		}
		fixed = append(fixed, tok)
	}
	var stop atomic.Bool
	var trims, released atomic.Int64
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				n, err := s.Trim()
				if err != nil {
					t.Errorf("Trim: %v", err)
					return
				}
				trims.Add(1)
				released.Add(n)
			}
		}()
	}
	var staleMu sync.Mutex
	var stale []token.Token
	end := time.Now().Add(scDuration())
	var owg sync.WaitGroup
	const workers = 12 // plus 4 fixed: 16 of 24 slots at most
	for w := range workers {
		owg.Add(1)
		go func() {
			defer owg.Done()
			for n := uint64(1); time.Now().Before(end) && !stop.Load(); n++ {
				v := uint64(w+1)<<32 | n
				var tok token.Token
				var err error
				switch n % 3 {
				case 0:
					var p scBig
					for j := range p {
						p[j] = v
					}
					tok, err = s.Put(scHdr(v), p)
				case 1:
					tok, err = s.PutFunc(scHdr(v), func(m *Message[scBig]) error {
						if m.Header.Trace != v || m.Header.Size != uint32(v) {
							t.Errorf("PutFunc: slot's header is %+v, want h", m.Header)
						}
						for j, x := range m.Payload {
							if x != 0 {
								t.Errorf("PutFunc: recycled slot not zeroed: word %d = %x", j, x)
								break
							}
						}
						for j := range m.Payload {
							m.Payload[j] = v
						}
						return nil
					})
				case 2:
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					var p scBig
					for j := range p {
						p[j] = v
					}
					tok, err = s.PutWait(ctx, scHdr(v), p)
					cancel()
				}
				if err != nil {
					t.Errorf("put (kind %d) with free slots: %v", n%3, err)
					stop.Store(true)
					return
				}
				check := func(m *Message[scBig]) {
					if m.Header.Trace != v || !scBigOK(m) {
						t.Errorf("message of %v is not what was written (trace %x want %x)", tok, m.Header.Trace, v)
					}
				}
				if err := s.View(tok, check); err != nil {
					t.Errorf("View: %v", err)
				}
				if err := s.Update(tok, func(m *Message[scBig]) {
					check(m)
					m.Header = scHdr(v)
				}); err != nil {
					t.Errorf("Update: %v", err)
				}
				if h, err := s.Header(tok); err != nil || h != scHdr(v) {
					t.Errorf("Header = %+v, %v", h, err)
				}
				if err := s.Free(tok); err != nil {
					t.Errorf("Free: %v", err)
				}
				staleMu.Lock()
				if len(stale) < 256 {
					stale = append(stale, tok)
				} else {
					stale[rand.IntN(256)] = tok
				}
				old := stale[rand.IntN(len(stale))]
				staleMu.Unlock()
				if err := s.Free(old); !errors.Is(err, arena.ErrStale) {
					t.Errorf("Free of stale %v during Trim: %v", old, err)
				}
				if _, err := s.Header(old); !errors.Is(err, arena.ErrStale) {
					t.Errorf("Header of stale %v during Trim: %v", old, err)
				}
				if err := s.Retain(old); !errors.Is(err, arena.ErrStale) {
					t.Errorf("Retain of stale %v during Trim: %v", old, err)
				}
				for i, f := range fixed {
					if h, err := s.Header(f); err != nil || h != scHdr(uint64(0xF1000+i)) {
						t.Errorf("Header of long-lived %v = %+v, %v", f, h, err)
					}
				}
			}
		}()
	}
	scWait(t, &owg, 30*time.Second, "workers")
	stop.Store(true)
	scWait(t, &wg, 10*time.Second, "trimmers")
	for i, f := range fixed {
		if err := s.View(f, func(m *Message[scBig]) {
			if m.Header.Trace != uint64(0xF1000+i) || !scBigOK(m) {
				t.Errorf("long-lived message %d changed", i)
			}
		}); err != nil {
			t.Fatal(err)
		}
		if err := s.Free(f); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Trim(); err != nil {
		t.Fatal(err)
	}
	// After the final Trim, every slot comes back zeroed (PutFunc) and
	// whole (Put).
	var toks []token.Token
	for i := range slots {
		v := uint64(0xAB00 + i)
		tok, err := s.PutFunc(scHdr(v), func(m *Message[scBig]) error {
			for _, x := range m.Payload {
				if x != 0 {
					t.Errorf("PutFunc after Trim: slot not zeroed")
					break
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("PutFunc %d of %d after Trim: %v", i, slots, err)
		}
		toks = append(toks, tok)
	}
	if _, err := s.Put(Header{}, scBig{}); !errors.Is(err, arena.ErrFull) {
		t.Fatalf("Put on a full store: %v", err)
	}
	for _, tok := range toks {
		s.Free(tok)
	}
	scQuiet(t, s)
	t.Logf("%d trims, %d bytes released", trims.Load(), released.Load())
}

// TestStoreChurnTrimExact: one goroutine allocates while Trim loops and
// others free: with Trim holding the free lists, Put must still only fail
// with ErrFull when every slot is held (arena doc: "an Alloc that would
// otherwise have found the arena full waits for it").
func TestStoreChurnTrimExact(t *testing.T) {
	scProcs(t)
	for _, slots := range []int{1, 7, 64} {
		t.Run(fmt.Sprint("slots", slots), func(t *testing.T) {
			s, err := NewStore[scBig](arena.Config{Slots: slots})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var stop atomic.Bool
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() {
					if _, err := s.Trim(); err != nil {
						t.Errorf("Trim: %v", err)
						return
					}
				}
			}()
			end := time.Now().Add(scDuration() / 2)
			for r := 0; time.Now().Before(end); r++ {
				var toks []token.Token
				for i := range slots {
					tok, err := s.Put(Header{}, scBig{})
					if err != nil {
						t.Fatalf("round %d: Put %d of %d while Trim runs: %v", r, i+1, slots, err)
					}
					toks = append(toks, tok)
				}
				if _, err := s.Put(Header{}, scBig{}); !errors.Is(err, arena.ErrFull) {
					t.Fatalf("Put %d of %d: %v, want ErrFull", slots+1, slots, err)
				}
				// Free from other goroutines (other Ps' caches and shards).
				var fwg sync.WaitGroup
				for _, tok := range toks {
					fwg.Add(1)
					go func() {
						defer fwg.Done()
						if err := s.Free(tok); err != nil {
							t.Errorf("Free: %v", err)
						}
					}()
				}
				fwg.Wait()
			}
			stop.Store(true)
			scWait(t, &wg, 10*time.Second, "trimmer")
			scQuiet(t, s)
		})
	}
}

// TestStoreChurnTokens: Tokens during churn yields every message live for
// the whole iteration exactly once, no token twice, and no token that was
// freed before the iteration started; after Close, nothing.
func TestStoreChurnTokens(t *testing.T) {
	scProcs(t)
	const slots = 64
	s, err := NewStore[scPay](arena.Config{Slots: slots})
	if err != nil {
		t.Fatal(err)
	}
	stable := map[token.Token]bool{}
	for i := range 20 {
		tok, err := s.Put(scHdr(uint64(i)), scPay{})
		if err != nil {
			t.Fatal(err)
		}
		stable[tok] = true
	}
	// clock orders events: putStart[tok] is read before Put starts;
	// freeEnd[tok] after Free returns.
	var clock atomic.Int64
	type life struct{ putStart, freeEnd int64 }
	var lives sync.Map // token.Token -> *life
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []token.Token
			for !stop.Load() {
				if len(mine) < 4 && rand.IntN(2) == 0 {
					ps := clock.Add(1)
					tok, err := s.Put(Header{}, scPay{})
					if err != nil {
						t.Errorf("Put: %v", err)
						return
					}
					l := &life{putStart: ps, freeEnd: -1}
					if _, dup := lives.Swap(tok, l); dup {
						t.Errorf("token %v issued twice", tok)
					}
					mine = append(mine, tok)
					if rand.IntN(2) == 0 {
						if err := s.Retain(tok); err != nil {
							t.Errorf("Retain: %v", err)
						}
						if err := s.Free(tok); err != nil {
							t.Errorf("Free: %v", err)
						}
					}
				} else if len(mine) > 0 {
					i := rand.IntN(len(mine))
					tok := mine[i]
					mine = append(mine[:i], mine[i+1:]...)
					v, _ := lives.Load(tok)
					if err := s.Free(tok); err != nil {
						t.Errorf("Free: %v", err)
					}
					atomic.StoreInt64(&v.(*life).freeEnd, clock.Add(1))
				}
			}
			for _, tok := range mine {
				s.Free(tok)
			}
		}()
	}
	end := time.Now().Add(scDuration())
	var iwg sync.WaitGroup
	for range 3 {
		iwg.Add(1)
		go func() {
			defer iwg.Done()
			for time.Now().Before(end) {
				start := clock.Add(1)
				seen := map[token.Token]int{}
				for tok := range s.Tokens() {
					seen[tok]++
					if tok.Index() >= slots {
						t.Errorf("Tokens yields %v, index out of range", tok)
					}
				}
				finish := clock.Add(1)
				for tok, n := range seen {
					if n != 1 {
						t.Errorf("Tokens yielded %v %d times in one iteration", tok, n)
					}
					if stable[tok] {
						continue
					}
					// Put returns before its caller records the token:
					// give the record a moment.
					v, ok := lives.Load(tok)
					for wait := time.Now().Add(2 * time.Second); !ok && time.Now().Before(wait); {
						time.Sleep(time.Millisecond)
						v, ok = lives.Load(tok)
					}
					if !ok {
						t.Errorf("Tokens yielded %v, which no Put returned", tok)
						continue
					}
					l := v.(*life)
					if fe := atomic.LoadInt64(&l.freeEnd); fe != -1 && fe < start {
						t.Errorf("Tokens yielded %v, freed (at %d) before the iteration began (at %d)", tok, fe, start)
					}
					if l.putStart > finish {
						t.Errorf("Tokens yielded %v, put after the iteration", tok)
					}
				}
				for tok := range stable {
					if seen[tok] != 1 {
						t.Errorf("message %v live for the whole iteration yielded %d times", tok, seen[tok])
					}
				}
			}
		}()
	}
	scWait(t, &iwg, 30*time.Second, "iterators")
	stop.Store(true)
	scWait(t, &wg, 10*time.Second, "churners")
	// Breaking out early and freeing from the loop body.
	n := 0
	for tok := range s.Tokens() {
		if !stable[tok] {
			t.Errorf("leftover %v", tok)
		}
		if err := s.Free(tok); err != nil {
			t.Errorf("Free from the Tokens loop body: %v", err)
		}
		n++
	}
	if n != len(stable) {
		t.Errorf("final Tokens yielded %d, want %d", n, len(stable))
	}
	scQuiet(t, s)
	tok, _ := s.Put(Header{}, scPay{})
	if err := s.Close(); !errors.Is(err, ErrReferenced) {
		t.Errorf("Close with one held: %v", err)
	}
	for tok := range s.Tokens() {
		t.Errorf("Tokens after Close yields %v", tok)
	}
	if err := s.Free(tok); err != nil {
		t.Errorf("Free of the reference outstanding at Close: %v", err)
	}
}

// TestStoreChurnTorn: Update rewrites header and payload with one pattern;
// concurrent Header and View never see a mix.
func TestStoreChurnTorn(t *testing.T) {
	scProcs(t)
	s := scNewStore(t, 4)
	var toks []token.Token
	for i := range 3 {
		v := uint64(i + 1)
		tok, err := s.Put(scHdr(v), scFill(v))
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	end := time.Now().Add(scDuration())
	var headers, views, updates atomic.Int64
	for w := range 4*runtime.NumCPU() + 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := uint64(1); time.Now().Before(end) && !stop.Load(); n++ {
				tok := toks[rand.IntN(len(toks))]
				switch w % 4 {
				case 0:
					v := uint64(w)<<40 | n
					if err := s.Update(tok, func(m *Message[scPay]) {
						// Write word by word, yielding in the middle.
						m.Header.Trace = v
						m.Header.Seq = v
						m.Payload[0] = v
						runtime.Gosched()
						m.Header.Created, m.Header.Deadline = int64(v), int64(v)
						m.Header.QoS, m.Header.Flags, m.Header.Size = QoS(uint8(v)), Flags(uint32(v)), uint32(v)
						for i := range m.Payload {
							m.Payload[i] = v
						}
					}); err != nil {
						t.Errorf("Update: %v", err)
					}
					updates.Add(1)
				case 1:
					h, err := s.Header(tok)
					if err != nil {
						t.Errorf("Header: %v", err)
					} else if !scHdrOK(h) {
						t.Errorf("torn header: %+v", h)
						stop.Store(true)
					}
					headers.Add(1)
				case 2:
					if err := s.View(tok, func(m *Message[scPay]) {
						if !scHdrOK(m.Header) || !scPayOK(&m.Payload, m.Header.Trace) {
							t.Errorf("torn message in View: trace %x payload %x", m.Header.Trace, m.Payload)
							stop.Store(true)
						}
					}); err != nil {
						t.Errorf("View: %v", err)
					}
					views.Add(1)
				case 3:
					if err := s.Retain(tok); err != nil {
						t.Errorf("Retain: %v", err)
					}
					if err := s.Free(tok); err != nil {
						t.Errorf("Free: %v", err)
					}
				}
			}
		}()
	}
	scWait(t, &wg, 30*time.Second, "workers")
	for _, tok := range toks {
		if r, err := s.Refs(tok); err != nil || r != 1 {
			t.Errorf("Refs = %d, %v", r, err)
		}
		s.Free(tok)
	}
	scQuiet(t, s)
	t.Logf("%d updates, %d headers, %d views", updates.Load(), headers.Load(), views.Load())
}

var errSCBoom = errors.New("boom")

// scHeld counts the references a worker holds.
type scHeld map[token.Token]int

// TestStoreChurnCloseRace: Close races Put, PutFunc with slow fill,
// PutWait, Retain, Free, View, Update, Header, Tokens, Trim and ByteStore
// writes. Calls return results or documented errors; Free of a reference
// held is always nil (before Close, or once after it); Close counts the
// references outstanding; after it, each is freed once with nil, and
// anything more is arena.ErrClosed.
func TestStoreChurnCloseRace(t *testing.T) {
	scProcs(t)
	rounds := 40
	if raceEnabled {
		rounds = 20
	}
	okErr := func(err error, also ...error) bool {
		if err == nil || errors.Is(err, arena.ErrClosed) {
			return true
		}
		for _, a := range also {
			if errors.Is(err, a) {
				return true
			}
		}
		return false
	}
	for round := range rounds {
		slots := 1 + rand.IntN(64)
		s, err := NewStore[scPay](arena.Config{Slots: slots})
		if err != nil {
			t.Fatal(err)
		}
		bs, err := NewByteStore[[128]byte](arena.Config{Slots: 1 + rand.IntN(8)})
		if err != nil {
			t.Fatal(err)
		}
		var closeStarted, closeDone atomic.Bool
		var lateCand atomic.Int64 // nil Frees that completed after Close began
		helds := make([]scHeld, 10)
		var wg sync.WaitGroup
		for w := range helds {
			helds[w] = scHeld{}
			held := helds[w]
			wg.Add(1)
			go func() {
				defer wg.Done()
				after := 0
				pick := func() (token.Token, bool) {
					for tok := range held {
						return tok, true
					}
					return token.Nil, false
				}
				for n := uint64(1); ; n++ {
					if closeDone.Load() {
						if after++; after > 30 {
							return
						}
					}
					v := uint64(w+1)<<40 | uint64(round)<<32 | n
					switch rand.IntN(14) {
					case 0, 1:
						// Read before Put: a Put that finished before Close
						// returned may well see closeDone set afterwards.
						closedBefore := closeDone.Load()
						tok, err := s.Put(scHdr(v), scFill(v))
						if err == nil {
							held[tok]++
						} else if !errors.Is(err, arena.ErrFull) && !errors.Is(err, arena.ErrClosed) {
							t.Errorf("Put: %v", err)
						}
						if err == nil && closedBefore {
							t.Errorf("Put after Close returned a token")
						}
					case 2:
						tok, err := s.PutFunc(scHdr(v), func(m *Message[scPay]) error {
							if m.Payload != (scPay{}) {
								t.Errorf("PutFunc: slot not zeroed")
							}
							time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
							m.Payload = scFill(v)
							return nil
						})
						if err == nil {
							held[tok]++
						} else if !errors.Is(err, arena.ErrFull) && !errors.Is(err, arena.ErrClosed) {
							t.Errorf("PutFunc: %v", err)
						}
					case 3:
						ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(3000))*time.Microsecond)
						tok, err := s.PutWait(ctx, scHdr(v), scFill(v))
						cancel()
						if err == nil {
							held[tok]++
						} else if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, arena.ErrClosed) {
							t.Errorf("PutWait: %v", err)
						}
					case 4:
						if tok, ok := pick(); ok {
							if err := s.Retain(tok); err == nil {
								held[tok]++
							} else if !errors.Is(err, arena.ErrClosed) {
								t.Errorf("Retain of held %v: %v", tok, err)
							}
						}
					case 5, 6:
						if tok, ok := pick(); ok {
							err := s.Free(tok)
							if err != nil {
								t.Errorf("Free of a held reference of %v (close started %v, done %v): %v",
									tok, closeStarted.Load(), closeDone.Load(), err)
								// Do not count it again.
							}
							if err == nil && closeStarted.Load() {
								lateCand.Add(1)
							}
							if held[tok]--; held[tok] == 0 {
								delete(held, tok)
							}
						}
					case 7:
						if tok, ok := pick(); ok {
							err := s.View(tok, func(m *Message[scPay]) {
								if !scHdrOK(m.Header) || !scPayOK(&m.Payload, m.Header.Trace) {
									t.Errorf("View: torn message")
								}
							})
							if !okErr(err) {
								t.Errorf("View of held %v: %v", tok, err)
							}
						}
					case 8:
						if tok, ok := pick(); ok {
							err := s.Update(tok, func(m *Message[scPay]) {
								m.Header = scHdr(v)
								m.Payload = scFill(v)
							})
							if !okErr(err) {
								t.Errorf("Update of held %v: %v", tok, err)
							}
						}
					case 9:
						if tok, ok := pick(); ok {
							h, err := s.Header(tok)
							if !okErr(err) {
								t.Errorf("Header of held %v: %v", tok, err)
							} else if err == nil && !scHdrOK(h) {
								t.Errorf("Header: torn %+v", h)
							}
						}
					case 10:
						k := 0
						for tok := range s.Tokens() {
							if tok.Index() >= uint32(slots) {
								t.Errorf("Tokens: %v out of range", tok)
							}
							if k++; k > 5 {
								break
							}
						}
					case 11:
						if _, err := s.Trim(); !okErr(err) {
							t.Errorf("Trim: %v", err)
						}
					case 12:
						data := bytes.Repeat([]byte{byte(v)}, rand.IntN(129))
						tok, err := bs.PutBytes(Header{}, data)
						if err == nil {
							if err := bs.Read(tok, func(h Header, d []byte) {
								if !bytes.Equal(d, data) || h.Size != uint32(len(data)) {
									t.Errorf("ByteStore Read: %d bytes, Size %d, want %d", len(d), h.Size, len(data))
								}
							}); !okErr(err) {
								t.Errorf("ByteStore Read: %v", err)
							}
							if err := bs.Free(tok); err != nil {
								t.Errorf("ByteStore Free of held: %v", err)
							}
						} else if !okErr(err, arena.ErrFull) {
							t.Errorf("PutBytes: %v", err)
						}
					case 13:
						tok, err := bs.Write(Header{}, func(slot []byte) (int, error) {
							time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
							return copy(slot, "hello"), nil
						})
						if err == nil {
							if err := bs.Free(tok); err != nil {
								t.Errorf("ByteStore Free of held: %v", err)
							}
						} else if !okErr(err, arena.ErrFull) {
							t.Errorf("Write: %v", err)
						}
					}
				}
			}()
		}
		time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
		closeStarted.Store(true)
		cerrc := make(chan [2]error, 1)
		go func() {
			e1 := s.Close()
			e2 := bs.Close()
			closeDone.Store(true)
			cerrc <- [2]error{e1, e2}
		}()
		var cerr [2]error
		select {
		case cerr = <-cerrc:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: Close hangs\n%s", round, scDump())
		}
		scWait(t, &wg, 20*time.Second, "workers racing Close")
		if t.Failed() {
			t.Fatalf("round %d failed", round)
		}
		heldRefs, heldMsgs := 0, map[token.Token]bool{}
		for _, h := range helds {
			for tok, n := range h {
				heldRefs += n
				heldMsgs[tok] = true
			}
		}
		var re *referencedError
		switch {
		case cerr[0] == nil:
			if heldRefs != 0 {
				t.Fatalf("round %d: Close returned nil, yet %d references are still held", round, heldRefs)
			}
		case errors.As(cerr[0], &re):
			if !errors.Is(cerr[0], ErrReferenced) {
				t.Fatalf("Close error does not match ErrReferenced: %v", cerr[0])
			}
			if re.refs < int64(heldRefs) || re.refs > int64(heldRefs)+lateCand.Load() {
				t.Fatalf("round %d: Close counted %d references; %d still held, at most %d freed late: %v",
					round, re.refs, heldRefs, lateCand.Load(), cerr[0])
			}
			if re.msgs < int64(len(heldMsgs)) || re.msgs > re.refs {
				t.Fatalf("round %d: Close counted %d messages, %d refs; %d messages still held",
					round, re.msgs, re.refs, len(heldMsgs))
			}
		default:
			t.Fatalf("round %d: Close: %v", round, cerr[0])
		}
		if cerr[1] != nil && !errors.Is(cerr[1], ErrReferenced) {
			t.Fatalf("ByteStore Close: %v", cerr[1])
		}
		// Everything else is ErrClosed now.
		if _, err := s.Put(Header{}, scPay{}); !errors.Is(err, arena.ErrClosed) {
			t.Fatalf("Put after Close: %v", err)
		}
		//lint:ignore SA1012 a nil context is what is tested
		if _, err := s.PutWait(nil, Header{}, scPay{}); !errors.Is(err, arena.ErrClosed) {
			t.Fatalf("PutWait(nil) after Close: %v", err)
		}
		if _, err := s.Trim(); !errors.Is(err, arena.ErrClosed) {
			t.Fatalf("Trim after Close: %v", err)
		}
		if err := s.Close(); !errors.Is(err, arena.ErrClosed) {
			t.Fatalf("second Close: %v", err)
		}
		for tok := range s.Tokens() {
			t.Fatalf("Tokens after Close yields %v", tok)
		}
		// Free every held reference once, each token from several
		// goroutines; then one more Free per token gets ErrClosed.
		var fwg sync.WaitGroup
		for _, h := range helds {
			for tok, n := range h {
				if err := s.Retain(tok); !errors.Is(err, arena.ErrClosed) {
					t.Errorf("Retain after Close: %v", err)
				}
				if err := s.View(tok, func(*Message[scPay]) {}); !errors.Is(err, arena.ErrClosed) {
					t.Errorf("View after Close: %v", err)
				}
				for range n {
					fwg.Add(1)
					go func() {
						defer fwg.Done()
						if err := s.Free(tok); err != nil {
							t.Errorf("round %d: Free of %v's reference outstanding at Close: %v", round, tok, err)
						}
					}()
				}
			}
		}
		scWait(t, &fwg, 10*time.Second, "late frees")
		for _, h := range helds {
			for tok := range h {
				if err := s.Free(tok); !errors.Is(err, arena.ErrClosed) {
					t.Errorf("round %d: Free once more than held after Close: %v, want arena.ErrClosed", round, err)
				}
			}
		}
		if t.Failed() {
			t.Fatalf("round %d failed", round)
		}
	}
}

// TestStoreChurnCloseExactCount: with k references held on m messages and
// nothing in flight, Close reports exactly m messages and k references;
// concurrent late Frees return nil exactly k times.
func TestStoreChurnCloseExactCount(t *testing.T) {
	scProcs(t)
	for _, slots := range []int{1, 5, 64} {
		s, err := NewStore[scPay](arena.Config{Slots: slots})
		if err != nil {
			t.Fatal(err)
		}
		refs := map[token.Token]int{}
		total := 0
		for i := range slots {
			tok, err := s.Put(Header{}, scPay{})
			if err != nil {
				t.Fatal(err)
			}
			if i%2 == 1 {
				s.Free(tok)
				continue
			}
			k := rand.IntN(4)
			for range k {
				if err := s.Retain(tok); err != nil {
					t.Fatal(err)
				}
			}
			refs[tok] = k + 1
			total += k + 1
		}
		err = s.Close()
		var re *referencedError
		if !errors.Is(err, ErrReferenced) || !errors.As(err, &re) {
			t.Fatalf("Close: %v", err)
		}
		if re.msgs != int64(len(refs)) || re.refs != int64(total) {
			t.Fatalf("Close counted %d messages, %d refs; want %d, %d: %v", re.msgs, re.refs, len(refs), total, err)
		}
		want := fmt.Sprintf("%d message(s) still held %d reference(s)", len(refs), total)
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Close error %q does not say %q", err, want)
		}
		var nils, closed atomic.Int64
		var wg sync.WaitGroup
		for tok, k := range refs {
			for range k + 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					switch err := s.Free(tok); {
					case err == nil:
						nils.Add(1)
					case errors.Is(err, arena.ErrClosed):
						closed.Add(1)
					default:
						t.Errorf("late Free: %v", err)
					}
				}()
			}
		}
		scWait(t, &wg, 10*time.Second, "late frees")
		if nils.Load() != int64(total) || closed.Load() != int64(2*len(refs)) {
			t.Fatalf("slots %d: late Frees: %d nil, %d ErrClosed; want %d nil, %d ErrClosed",
				slots, nils.Load(), closed.Load(), total, 2*len(refs))
		}
	}
}

// TestStoreChurnByteStore: varied lengths up to the slot size, 0 included,
// over-size refused with ErrTooLarge and no slot lost, Size equals the
// length, concurrent put/read/free with Trim; Write's slot starts zeroed.
func TestStoreChurnByteStore(t *testing.T) {
	scProcs(t)
	const slots = 16
	bs, err := NewByteStore[[256]byte](arena.Config{Slots: slots})
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	if bs.SlotSize() != 256 {
		t.Fatalf("SlotSize = %d", bs.SlotSize())
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if _, err := bs.Trim(); err != nil {
				t.Errorf("Trim: %v", err)
				return
			}
			time.Sleep(20 * time.Microsecond)
		}
	}()
	end := time.Now().Add(scDuration())
	var owg sync.WaitGroup
	for w := range slots - 2 {
		owg.Add(1)
		go func() {
			defer owg.Done()
			for n := 0; time.Now().Before(end); n++ {
				ln := rand.IntN(258) // 0..257: 257 is over the slot
				data := make([]byte, ln)
				for i := range data {
					data[i] = byte(w*31 + n + i)
				}
				var tok token.Token
				var err error
				switch n % 4 {
				case 0, 1:
					tok, err = bs.PutBytes(Header{Trace: uint64(n)}, data)
				case 2:
					tok, err = bs.Write(Header{Trace: uint64(n)}, func(slot []byte) (int, error) {
						if len(slot) != 256 {
							t.Errorf("Write: slot of %d bytes", len(slot))
						}
						for i, b := range slot {
							if b != 0 {
								t.Errorf("Write: slot not zeroed at %d", i)
								break
							}
						}
						return copy(slot, data), nil
					})
					if ln > 256 {
						// copy clamps to 256: the message is the first 256.
						data = data[:256]
						ln = 256
					}
				case 3:
					tok, err = bs.Write(Header{Trace: uint64(n)}, func(slot []byte) (int, error) {
						copy(slot, data)
						return ln, nil // ln 257 is outside the slot
					})
				}
				if ln > 256 {
					if !errors.Is(err, ErrTooLarge) {
						t.Errorf("kind %d: %d bytes into 256-byte slots: %v, want ErrTooLarge", n%4, ln, err)
					}
					continue
				}
				if err != nil {
					t.Errorf("kind %d: %d bytes: %v", n%4, ln, err)
					continue
				}
				if h, err := bs.Header(tok); err != nil || h.Size != uint32(ln) || h.Trace != uint64(n) {
					t.Errorf("Header = %+v, %v; want Size %d", h, err, ln)
				}
				if err := bs.Read(tok, func(h Header, d []byte) {
					if !bytes.Equal(d, data) || int(h.Size) != len(d) {
						t.Errorf("Read: %d bytes (Size %d), want %d", len(d), h.Size, ln)
					}
				}); err != nil {
					t.Errorf("Read: %v", err)
				}
				got, err := bs.AppendTo([]byte("x"), tok)
				if err != nil || !bytes.Equal(got[1:], data) || got[0] != 'x' {
					t.Errorf("AppendTo: %d bytes, %v", len(got), err)
				}
				if err := bs.Retain(tok); err != nil {
					t.Errorf("Retain: %v", err)
				}
				var fwg sync.WaitGroup
				for range 2 {
					fwg.Add(1)
					go func() {
						defer fwg.Done()
						if err := bs.Read(tok, func(_ Header, d []byte) {
							if !bytes.Equal(d, data) {
								t.Errorf("concurrent Read: wrong bytes")
							}
						}); err != nil {
							t.Errorf("Read: %v", err)
						}
						if err := bs.Free(tok); err != nil {
							t.Errorf("Free: %v", err)
						}
					}()
				}
				fwg.Wait()
				if err := bs.Read(tok, func(Header, []byte) {}); !errors.Is(err, arena.ErrStale) {
					t.Errorf("Read of freed: %v", err)
				}
			}
		}()
	}
	scWait(t, &owg, 30*time.Second, "byte workers")
	stop.Store(true)
	scWait(t, &wg, 10*time.Second, "trimmer")
	scQuiet(t, bs.Store)
	// Size 0 on promoted Put and PutFunc: the whole slot.
	tok, err := bs.Put(Header{}, [256]byte{1})
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := bs.Header(tok); h.Size != 256 {
		t.Errorf("Put with Size 0: Size %d, want 256", h.Size)
	}
	bs.Free(tok)
	tok, err = bs.PutBytes(Header{Size: 99}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := bs.Header(tok); h.Size != 0 {
		t.Errorf("PutBytes(nil) with h.Size 99: Size %d, want 0", h.Size)
	}
	if err := bs.Read(tok, func(_ Header, d []byte) {
		if len(d) != 0 {
			t.Errorf("Read of empty message: %d bytes", len(d))
		}
	}); err != nil {
		t.Fatal(err)
	}
	bs.Free(tok)
	// Fill the store, then over-size and fill errors lose nothing.
	var toks []token.Token
	for range slots {
		tok, err := bs.PutBytes(Header{}, []byte("a"))
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	if _, err := bs.PutBytes(Header{}, make([]byte, 257)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("over-size PutBytes on a full store: %v, want ErrTooLarge", err)
	}
	for _, tok := range toks {
		bs.Free(tok)
	}
	for range 3 * slots {
		if _, err := bs.Write(Header{}, func([]byte) (int, error) { return -1, nil }); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("Write reporting -1: %v", err)
		}
		if _, err := bs.Write(Header{}, func([]byte) (int, error) { return 3, errSCBoom }); !errors.Is(err, errSCBoom) {
			t.Fatalf("Write with fill error: %v", err)
		}
	}
	scQuiet(t, bs.Store)
}

// scServe waits for one PutWait result and frees its token.
func scServe(t *testing.T, s *Store[scPay], ch <-chan token.Token, what string) {
	t.Helper()
	select {
	case tok := <-ch:
		if err := s.Free(tok); err != nil {
			t.Fatalf("%s: Free of the waiter's token: %v", what, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: parked PutWait not served (Available %d)\n%s", what, s.Available(), scDump())
	}
}

// TestStoreChurnFreeInsideCallbackWakes: the last reference freed inside a
// View or Update callback (the doc allows Free of t inside View), a PutFunc
// fill that fails or panics, and a ByteStore Write that reports a bad
// length all give a slot back: a parked PutWait must be served once the
// callback returns. Trim runs meanwhile.
func TestStoreChurnFreeInsideCallbackWakes(t *testing.T) {
	scProcs(t)
	s := scNewStore(t, 1)
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if _, err := s.Trim(); err != nil {
				t.Errorf("Trim: %v", err)
				return
			}
			time.Sleep(20 * time.Microsecond)
		}
	}()
	defer func() { stop.Store(true); scWait(t, &wg, 5*time.Second, "trimmer") }()
	ch := make(chan token.Token, 1)
	park := func() {
		t.Helper()
		go func() {
			//lint:ignore SA1012 a nil context is what is tested
			tok, err := s.PutWait(nil, Header{}, scPay{})
			if err != nil {
				t.Errorf("PutWait: %v", err)
			}
			ch <- tok
		}()
		scWaitParked(t, 1)
	}
	end := time.Now().Add(scDuration() / 2)
	for round := 0; time.Now().Before(end); round++ {
		tok, err := s.Put(Header{}, scPay{})
		if err != nil {
			t.Fatal(err)
		}
		park()
		switch round % 5 {
		case 0:
			if err := s.View(tok, func(*Message[scPay]) {
				if err := s.Free(tok); err != nil {
					t.Errorf("Free inside View: %v", err)
				}
			}); err != nil {
				t.Fatalf("View freeing its token: %v", err)
			}
		case 1:
			if err := s.Retain(tok); err != nil {
				t.Fatal(err)
			}
			var vwg sync.WaitGroup
			for range 2 {
				vwg.Add(1)
				go func() {
					defer vwg.Done()
					if err := s.View(tok, func(*Message[scPay]) {
						time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
						if err := s.Free(tok); err != nil {
							t.Errorf("Free inside View: %v", err)
						}
					}); err != nil && !errors.Is(err, arena.ErrStale) {
						t.Errorf("View: %v", err)
					}
				}()
			}
			vwg.Wait()
		case 2:
			// Free inside Update: the arena contract lets Free run while an
			// Update holds the slot.
			if err := s.Update(tok, func(m *Message[scPay]) {
				m.Payload[0] = 1
				if err := s.Free(tok); err != nil {
					t.Errorf("Free inside Update: %v", err)
				}
			}); err != nil {
				t.Fatalf("Update freeing its token: %v", err)
			}
		case 3:
			// Free from another goroutine while an Update holds the slot.
			started := make(chan struct{})
			release := make(chan struct{})
			go func() {
				<-started
				if err := s.Free(tok); err != nil {
					t.Errorf("Free during Update: %v", err)
				}
				close(release)
			}()
			if err := s.Update(tok, func(*Message[scPay]) {
				close(started)
				select {
				case <-release:
				case <-time.After(5 * time.Second):
					t.Errorf("Free did not return at once while Update held the slot")
				}
			}); err != nil {
				t.Fatalf("Update: %v", err)
			}
		case 4:
			// Update's fn panics; the slot stays usable, then is freed.
			func() {
				defer func() {
					if recover() == nil {
						t.Errorf("Update's panic did not propagate")
					}
				}()
				s.Update(tok, func(*Message[scPay]) { panic("boom") })
			}()
			if h, err := s.Header(tok); err != nil || h.Size != uint32(unsafe.Sizeof(scPay{})) {
				t.Fatalf("Header after panicking Update: %+v, %v", h, err)
			}
			if err := s.Free(tok); err != nil {
				t.Fatal(err)
			}
		}
		scServe(t, s, ch, fmt.Sprintf("round %d (case %d)", round, round%5))
		if s.Available() != 1 {
			t.Fatalf("round %d: Available = %d", round, s.Available())
		}
	}
	scQuiet(t, s)
}

// TestStoreChurnFillFailureWakes: a PutFunc whose fill fails or panics
// frees its slot; a PutWait parked meanwhile is served.
func TestStoreChurnFillFailureWakes(t *testing.T) {
	scProcs(t)
	s := scNewStore(t, 2)
	for round := range 40 {
		hold, err := s.Put(Header{}, scPay{})
		if err != nil {
			t.Fatal(err)
		}
		inFill := make(chan struct{})
		proceed := make(chan struct{})
		res := make(chan error, 1)
		go func() {
			defer func() {
				if r := recover(); r != nil {
					res <- fmt.Errorf("panic %v", r)
				}
			}()
			_, err := s.PutFunc(Header{}, func(*Message[scPay]) error {
				close(inFill)
				<-proceed
				if round%2 == 0 {
					return errSCBoom
				}
				panic("fill")
			})
			res <- err
		}()
		<-inFill
		ch := make(chan token.Token, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			tok, err := s.PutWait(ctx, Header{}, scPay{})
			if err != nil {
				t.Errorf("PutWait: %v", err)
			}
			ch <- tok
		}()
		scWaitParked(t, 1)
		close(proceed)
		select {
		case err := <-res:
			if round%2 == 0 && !errors.Is(err, errSCBoom) {
				t.Fatalf("PutFunc with failing fill: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("PutFunc did not return")
		}
		scServe(t, s, ch, fmt.Sprintf("round %d", round))
		if err := s.Free(hold); err != nil {
			t.Fatal(err)
		}
	}
	scQuiet(t, s)
}

// TestStoreChurnPutWaitServedSet: with W waiters parked in arrival order
// and m slots freed at once, the waiters served are exactly the first m
// ("Waiters are served in arrival order"); the others stay parked.
func TestStoreChurnPutWaitServedSet(t *testing.T) {
	scProcs(t)
	const slots, W = 6, 12
	s, err := NewStore[scPay](arena.Config{Slots: slots})
	if err != nil {
		t.Fatal(err)
	}
	var held []token.Token
	for range slots {
		tok, err := s.Put(Header{}, scPay{})
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, tok)
	}
	type res struct {
		id  int
		tok token.Token
		err error
	}
	results := make(chan res, W)
	for i := range W {
		go func() {
			tok, err := s.PutWait(context.Background(), Header{Trace: uint64(i)}, scPay{})
			results <- res{i, tok, err}
		}()
		scWaitParked(t, i+1)
	}
	next := 0
	for _, m := range []int{2, 3, 1, 4} {
		// Free m slots at once, from m goroutines.
		var fwg sync.WaitGroup
		for _, tok := range held[:m] {
			fwg.Add(1)
			go func() {
				defer fwg.Done()
				if err := s.Free(tok); err != nil {
					t.Errorf("Free: %v", err)
				}
			}()
		}
		fwg.Wait()
		held = held[m:]
		got := map[int]bool{}
		for range m {
			select {
			case r := <-results:
				if r.err != nil {
					t.Fatalf("waiter %d: %v", r.id, r.err)
				}
				got[r.id] = true
				held = append(held, r.tok)
			case <-time.After(5 * time.Second):
				t.Fatalf("%d slots freed, only %d waiters served\n%s", m, len(got), scDump())
			}
		}
		for id := next; id < next+m; id++ {
			if !got[id] {
				t.Errorf("%d slots freed at once: served %v, want waiters %d..%d (arrival order)", m, got, next, next+m-1)
				break
			}
		}
		next += m
		scWaitParked(t, W-next)
	}
	if err := s.Close(); !errors.Is(err, ErrReferenced) {
		t.Errorf("Close: %v", err)
	}
	for range W - next {
		select {
		case r := <-results:
			if !errors.Is(r.err, arena.ErrClosed) {
				t.Errorf("waiter %d after Close: %v", r.id, r.err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("Close did not wake the waiters\n%s", scDump())
		}
	}
	for _, tok := range held {
		if err := s.Free(tok); err != nil {
			t.Errorf("late Free: %v", err)
		}
	}
}

// TestStoreChurnTokensBodyCalls: the Tokens loop body "may call any store
// method": Free of the yielded token, Put (its message may or may not be
// yielded, but no token twice), and Close, which ends the iteration.
func TestStoreChurnTokensBodyCalls(t *testing.T) {
	scProcs(t)
	for round := range 30 {
		slots := 2 + rand.IntN(40)
		s, err := NewStore[scPay](arena.Config{Slots: slots})
		if err != nil {
			t.Fatal(err)
		}
		orig := map[token.Token]bool{}
		for range slots / 2 {
			tok, err := s.Put(Header{}, scPay{})
			if err != nil {
				t.Fatal(err)
			}
			orig[tok] = true
		}
		seen := map[token.Token]bool{}
		var added []token.Token
		done := make(chan struct{})
		closeAt := rand.IntN(slots)
		var cerr error
		closed := false
		go func() {
			defer close(done)
			i := 0
			for tok := range s.Tokens() {
				if closed {
					t.Errorf("Tokens yielded %v after the body closed the store", tok)
				}
				if seen[tok] {
					t.Errorf("Tokens yielded %v twice", tok)
				}
				seen[tok] = true
				if orig[tok] {
					if err := s.Free(tok); err != nil {
						t.Errorf("Free in the body: %v", err)
					}
					delete(orig, tok)
				}
				if nt, err := s.Put(Header{}, scPay{}); err == nil {
					added = append(added, nt)
				}
				if i == closeAt {
					cerr = s.Close()
					closed = true
				}
				i++
			}
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("Tokens loop with store calls in its body hangs\n%s", scDump())
		}
		if len(orig) != 0 && !closed {
			t.Errorf("round %d: %d messages live for the whole iteration not yielded", round, len(orig))
		}
		if !closed {
			cerr = s.Close()
		}
		if len(added)+len(orig) > 0 && !errors.Is(cerr, ErrReferenced) {
			t.Errorf("Close with %d held: %v", len(added)+len(orig), cerr)
		}
		for _, tok := range added {
			if err := s.Free(tok); err != nil {
				t.Errorf("late Free of a message put in the body: %v", err)
			}
		}
		for tok := range orig {
			if err := s.Free(tok); err != nil {
				t.Errorf("late Free: %v", err)
			}
		}
	}
}
