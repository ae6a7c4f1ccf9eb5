package arena_test

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/memclass"
	"github.com/cella-go/cella/token"
)

// The behaviours of the reference memory manager (a tagged-Treiber-stack
// pool of messages with a per-slot reader/writer lock), checked on the arena.
// A refMsg is a message: a header-like part that can be peeked alone, and a
// data part.

type refHeader struct {
	Trace, Seq uint64
	Created    int64
	Size       uint32
	QoS        uint8
	_          [3]byte
}

type refMsg struct {
	Header refHeader
	Data   [16]uint32
}

const refDataBytes = 16 * 4

// refMake is a message whose every field derives from v, so a mix-up of two
// messages or a half-written one is visible.
func refMake(v uint32) refMsg {
	var m refMsg
	m.Header = refHeader{Trace: uint64(v) * 1000003, Seq: uint64(v), Created: int64(v) << 20, Size: refDataBytes, QoS: uint8(v%3 + 1)}
	for i := range m.Data {
		m.Data[i] = v*31 + uint32(i)
	}
	return m
}

// refFilled reports whether m is exactly refMake(v).
func refFilled(m *refMsg, v uint32) bool { return *m == refMake(v) }

// refShardSettings are the Config.Shards values most tests run under: one per P,
// a single shard, an odd count, and more shards than Ps.
var refShardSettings = []int{0, 1, 3, 8}

func refArena[T any](t testing.TB, slots, shards int) *arena.Arena[T] {
	t.Helper()
	a, err := arena.New[T](arena.Config{Slots: slots, Shards: shards})
	if err != nil {
		t.Fatalf("New(Slots=%d, Shards=%d): %v", slots, shards, err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil && !errors.Is(err, arena.ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return a
}

func refForShards(t *testing.T, fn func(t *testing.T, shards int)) {
	for _, sh := range refShardSettings {
		t.Run(fmt.Sprintf("shards=%d", sh), func(t *testing.T) { fn(t, sh) })
	}
}

func refWantErr(t testing.TB, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: err = %v, want %v", what, err, want)
	}
}

func refWantAvailable(t testing.TB, a interface{ Available() int }, want int) {
	t.Helper()
	if got := a.Available(); got != want {
		t.Fatalf("Available() = %d, want %d", got, want)
	}
}

// refPeek reads only the header part of a message, under shared access.
func refPeek(a *arena.Arena[refMsg], tok token.Token) (refHeader, error) {
	var h refHeader
	err := a.View(tok, func(m *refMsg) { h = m.Header })
	return h, err
}

func TestRefStoreReadFreeCycle(t *testing.T) {
	refForShards(t, func(t *testing.T, shards int) {
		a := refArena[refMsg](t, 4, shards)
		if a.Capacity() != 4 {
			t.Fatalf("Capacity() = %d, want 4", a.Capacity())
		}
		refWantAvailable(t, a, 4)
		tok, err := a.Store(refMake(42))
		if err != nil {
			t.Fatal(err)
		}
		if tok.IsNil() || int(tok.Index()) >= 4 || tok.Generation() == 0 {
			t.Fatalf("Store returned a malformed token %v", tok)
		}
		refWantAvailable(t, a, 3)
		got, err := a.Load(tok)
		if err != nil || !refFilled(&got, 42) {
			t.Fatalf("Load = %+v, %v; want refMake(42)", got, err)
		}
		calls := 0
		if err := a.View(tok, func(m *refMsg) {
			calls++
			if !refFilled(m, 42) {
				t.Errorf("View sees %+v, want refMake(42)", *m)
			}
		}); err != nil || calls != 1 {
			t.Fatalf("View: err %v, callback ran %d times", err, calls)
		}
		if err := a.Free(tok); err != nil {
			t.Fatal(err)
		}
		refWantAvailable(t, a, 4)
		st := a.Stats()
		if st.Allocs != 1 || st.Frees != 1 || st.Failed != 0 {
			t.Fatalf("Stats = %+v, want 1 alloc, 1 free, 0 failed", st)
		}
	})
}

// read_mut: exclusive access changes the value in place.
func TestRefReadMut(t *testing.T) {
	refForShards(t, func(t *testing.T, shards int) {
		a := refArena[refMsg](t, 4, shards)
		tok, err := a.Store(refMake(10))
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Update(tok, func(m *refMsg) {
			if !refFilled(m, 10) {
				t.Errorf("Update sees %+v, want refMake(10)", *m)
			}
			*m = refMake(99)
		}); err != nil {
			t.Fatal(err)
		}
		got, err := a.Load(tok)
		if err != nil || !refFilled(&got, 99) {
			t.Fatalf("after Update, Load = %+v, %v; want refMake(99)", got, err)
		}
		// Through the pointer Alloc returns, too.
		tok2, p, err := a.Alloc()
		if err != nil {
			t.Fatal(err)
		}
		p.Data[3] = 7
		if err := a.Update(tok2, func(m *refMsg) { m.Data[3] *= 6 }); err != nil {
			t.Fatal(err)
		}
		if p.Data[3] != 42 {
			t.Fatalf("Update did not change the slot the Alloc pointer sees: %d", p.Data[3])
		}
		if err := a.Free(tok); err != nil {
			t.Fatal(err)
		}
		if err := a.Free(tok2); err != nil {
			t.Fatal(err)
		}
		refWantAvailable(t, a, 4)
	})
}

func TestRefPeekHeader(t *testing.T) {
	refForShards(t, func(t *testing.T, shards int) {
		a := refArena[refMsg](t, 4, shards)
		tok, err := a.Store(refMake(7))
		if err != nil {
			t.Fatal(err)
		}
		h, err := refPeek(a, tok)
		if err != nil {
			t.Fatal(err)
		}
		if h.Size != refDataBytes || h != refMake(7).Header {
			t.Fatalf("peeked header %+v, want %+v", h, refMake(7).Header)
		}
		if err := a.Free(tok); err != nil {
			t.Fatal(err)
		}
		h, err = refPeek(a, tok)
		refWantErr(t, "peek after free", err, arena.ErrStale)
		if h != (refHeader{}) {
			t.Fatalf("peek of a freed slot leaked a header: %+v", h)
		}
	})
}

func TestRefCapacityExhaustion(t *testing.T) {
	refForShards(t, func(t *testing.T, shards int) {
		a := refArena[refMsg](t, 2, shards)
		t0, err0 := a.Store(refMake(1))
		t1, err1 := a.Store(refMake(2))
		if err0 != nil || err1 != nil {
			t.Fatal(err0, err1)
		}
		if t0.Index() == t1.Index() {
			t.Fatalf("two live tokens share slot %d", t0.Index())
		}
		refWantAvailable(t, a, 0)
		tok, err := a.Store(refMake(3))
		refWantErr(t, "Store on a full arena", err, arena.ErrFull)
		if !tok.IsNil() {
			t.Fatalf("failed Store returned token %v, want Nil", tok)
		}
		tok, p, err := a.Alloc()
		refWantErr(t, "Alloc on a full arena", err, arena.ErrFull)
		if !tok.IsNil() || p != nil {
			t.Fatalf("failed Alloc returned (%v, %p), want (Nil, nil)", tok, p)
		}
		if st := a.Stats(); st.Failed != 2 || st.Allocs != 2 {
			t.Fatalf("Stats = %+v, want Allocs 2, Failed 2", st)
		}
		// The full arena did not disturb the live values.
		for i, tk := range []token.Token{t0, t1} {
			if m, err := a.Load(tk); err != nil || !refFilled(&m, uint32(i+1)) {
				t.Fatalf("Load(%v) = %+v, %v after ErrFull", tk, m, err)
			}
		}
	})
}

func TestRefExhaustionAndReuse(t *testing.T) {
	refForShards(t, func(t *testing.T, shards int) {
		a := refArena[refMsg](t, 2, shards)
		t0, _ := a.Store(refMake(1))
		t1, _ := a.Store(refMake(2))
		refWantAvailable(t, a, 0)
		_, err := a.Store(refMake(3))
		refWantErr(t, "Store on a full arena", err, arena.ErrFull)

		if err := a.Free(t0); err != nil {
			t.Fatal(err)
		}
		refWantAvailable(t, a, 1)
		t2, err := a.Store(refMake(4))
		if err != nil {
			t.Fatal(err)
		}
		if t2.Index() != t0.Index() {
			t.Fatalf("the only free slot was %d, Store used %d", t0.Index(), t2.Index())
		}
		if t2 == t0 || t2.Generation() == t0.Generation() {
			t.Fatalf("reused slot kept the old token's generation: %v and %v", t0, t2)
		}
		_, err = a.Load(t0)
		refWantErr(t, "Load of the old token of a reused slot", err, arena.ErrStale)
		if m, err := a.Load(t2); err != nil || !refFilled(&m, 4) {
			t.Fatalf("Load(new token) = %+v, %v; want refMake(4)", m, err)
		}
		if m, err := a.Load(t1); err != nil || !refFilled(&m, 2) {
			t.Fatalf("Load(t1) = %+v, %v; want refMake(2)", m, err)
		}
		if err := a.Free(t1); err != nil {
			t.Fatal(err)
		}
		if err := a.Free(t2); err != nil {
			t.Fatal(err)
		}
		refWantAvailable(t, a, 2)
	})
}

func TestRefDoubleFree(t *testing.T) {
	refForShards(t, func(t *testing.T, shards int) {
		a := refArena[refMsg](t, 4, shards)
		tok, _ := a.Store(refMake(1))
		other, _ := a.Store(refMake(2))
		if err := a.Free(tok); err != nil {
			t.Fatal(err)
		}
		refWantErr(t, "second Free", a.Free(tok), arena.ErrStale)
		refWantErr(t, "third Free", a.Free(tok), arena.ErrStale)
		// The double free neither freed another slot nor put the slot on a
		// freelist twice: exactly 3 slots can be taken now, all distinct.
		refWantAvailable(t, a, 3)
		if st := a.Stats(); st.Frees != 1 {
			t.Fatalf("Stats.Frees = %d after one good and two bad frees", st.Frees)
		}
		if m, err := a.Load(other); err != nil || !refFilled(&m, 2) {
			t.Fatalf("Load(other) = %+v, %v after a double free", m, err)
		}
		seen := map[uint32]bool{other.Index(): true}
		for i := 0; i < 3; i++ {
			tk, err := a.Store(refMake(10 + uint32(i)))
			if err != nil {
				t.Fatalf("Store %d: %v", i, err)
			}
			if seen[tk.Index()] {
				t.Fatalf("slot %d handed out twice after a double free", tk.Index())
			}
			seen[tk.Index()] = true
		}
		_, err := a.Store(refMake(99))
		refWantErr(t, "Store beyond capacity", err, arena.ErrFull)
	})
}

func TestRefBadToken(t *testing.T) {
	refForShards(t, func(t *testing.T, shards int) {
		a := refArena[refMsg](t, 4, shards)
		live, _ := a.Store(refMake(5))
		bad := []token.Token{
			token.Nil,
			token.New(99, live.Generation()),                   // index out of range
			token.New(4, live.Generation()),                    // one past the end
			token.New(^uint32(0), live.Generation()),           // far out of range
			token.New(live.Index(), 0),                         // generation 0 is never issued
			token.New(live.Index(), ^uint32(0)),                // the retired generation is never issued
			token.Token(uint64(live.Generation())<<32 | 1<<31), // huge index, live generation
		}
		for _, tk := range bad {
			called := false
			fn := func(*refMsg) { called = true }
			_, err := a.Load(tk)
			refWantErr(t, fmt.Sprintf("Load(%v)", tk), err, arena.ErrBadToken)
			_, err = refPeek(a, tk)
			refWantErr(t, fmt.Sprintf("peek(%v)", tk), err, arena.ErrBadToken)
			refWantErr(t, fmt.Sprintf("View(%v)", tk), a.View(tk, fn), arena.ErrBadToken)
			refWantErr(t, fmt.Sprintf("Update(%v)", tk), a.Update(tk, fn), arena.ErrBadToken)
			refWantErr(t, fmt.Sprintf("Free(%v)", tk), a.Free(tk), arena.ErrBadToken)
			if called {
				t.Fatalf("a callback ran for bad token %v", tk)
			}
		}
		// Forged tokens inside the arena that were never issued fail one
		// way or the other and never touch a slot.
		for idx := uint32(0); idx < 4; idx++ {
			for _, gen := range []uint32{1, 2, live.Generation() + 1, live.Generation() - 1, 1 << 31} {
				tk := token.New(idx, gen)
				if tk == live {
					continue
				}
				called := false
				err := a.View(tk, func(*refMsg) { called = true })
				if !errors.Is(err, arena.ErrStale) && !errors.Is(err, arena.ErrBadToken) {
					t.Fatalf("View(forged %v) = %v, want ErrStale or ErrBadToken", tk, err)
				}
				if err := a.Free(tk); !errors.Is(err, arena.ErrStale) && !errors.Is(err, arena.ErrBadToken) {
					t.Fatalf("Free(forged %v) = %v", tk, err)
				}
				if called {
					t.Fatalf("callback ran for forged token %v", tk)
				}
			}
		}
		if m, err := a.Load(live); err != nil || !refFilled(&m, 5) {
			t.Fatalf("live value changed by bad-token calls: %+v, %v", m, err)
		}
		refWantAvailable(t, a, 3)
	})
}

// Every use of a freed token fails with ErrStale; no callback runs.
func TestRefReadFreedSlot(t *testing.T) {
	refForShards(t, func(t *testing.T, shards int) {
		a := refArena[refMsg](t, 4, shards)
		tok, _ := a.Store(refMake(1))
		if err := a.Free(tok); err != nil {
			t.Fatal(err)
		}
		check := func(when string) {
			t.Helper()
			called := false
			fn := func(*refMsg) { called = true }
			m, err := a.Load(tok)
			refWantErr(t, "Load "+when, err, arena.ErrStale)
			if m != (refMsg{}) {
				t.Fatalf("Load %s returned data %+v", when, m)
			}
			_, err = refPeek(a, tok)
			refWantErr(t, "peek "+when, err, arena.ErrStale)
			refWantErr(t, "View "+when, a.View(tok, fn), arena.ErrStale)
			refWantErr(t, "Update "+when, a.Update(tok, fn), arena.ErrStale)
			refWantErr(t, "Free "+when, a.Free(tok), arena.ErrStale)
			if called {
				t.Fatalf("callback ran on a freed token (%s)", when)
			}
		}
		check("after free")
		// Reuse every slot: the old token stays stale.
		var live []token.Token
		for i := 0; i < 4; i++ {
			tk, err := a.Store(refMake(100 + uint32(i)))
			if err != nil {
				t.Fatal(err)
			}
			live = append(live, tk)
		}
		check("after its slot was reused")
		for i, tk := range live {
			if m, err := a.Load(tk); err != nil || !refFilled(&m, 100+uint32(i)) {
				t.Fatalf("Load(%v) = %+v, %v", tk, m, err)
			}
		}
	})
}

// A one-slot arena reuses its slot over and over; every old token stays
// stale and every new one sees only its own value (recycled slots come back
// zeroed from Alloc).
func TestRefSingleSlotReuse(t *testing.T) {
	refForShards(t, func(t *testing.T, shards int) {
		a := refArena[refMsg](t, 1, shards)
		t0, err := a.Store(refMake(10))
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Free(t0); err != nil {
			t.Fatal(err)
		}
		t1, err := a.Store(refMake(20))
		if err != nil {
			t.Fatal(err)
		}
		if t1.Index() != 0 {
			t.Fatalf("reused index %d, want 0", t1.Index())
		}
		if m, err := a.Load(t1); err != nil || !refFilled(&m, 20) {
			t.Fatalf("Load = %+v, %v; want refMake(20)", m, err)
		}
		if err := a.Free(t1); err != nil {
			t.Fatal(err)
		}

		rounds := 5000
		old := []token.Token{t0, t1}
		gens := map[uint32]bool{t0.Generation(): true, t1.Generation(): true}
		for i := 0; i < rounds; i++ {
			var tk token.Token
			if i%2 == 0 {
				var p *refMsg
				tk, p, err = a.Alloc()
				if err == nil && *p != (refMsg{}) {
					t.Fatalf("round %d: recycled slot not zeroed: %+v", i, *p)
				}
				if err == nil {
					*p = refMake(uint32(i))
				}
			} else {
				tk, err = a.Store(refMake(uint32(i)))
			}
			if err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
			if tk.Index() != 0 || gens[tk.Generation()] {
				t.Fatalf("round %d: token %v (index must be 0, generation new)", i, tk)
			}
			gens[tk.Generation()] = true
			if _, p, err := a.Alloc(); !errors.Is(err, arena.ErrFull) || p != nil {
				t.Fatalf("round %d: second Alloc on a 1-slot arena = %v", i, err)
			}
			for _, o := range old[max(0, len(old)-3):] {
				if _, err := a.Load(o); !errors.Is(err, arena.ErrStale) {
					t.Fatalf("round %d: old token %v: %v, want ErrStale", i, o, err)
				}
			}
			if m, err := a.Load(tk); err != nil || !refFilled(&m, uint32(i)) {
				t.Fatalf("round %d: Load = %+v, %v", i, m, err)
			}
			if err := a.Free(tk); err != nil {
				t.Fatalf("round %d: Free: %v", i, err)
			}
			old = append(old, tk)
		}
		for _, o := range old {
			if err := a.Free(o); !errors.Is(err, arena.ErrStale) {
				t.Fatalf("old token %v: Free = %v, want ErrStale", o, err)
			}
		}
		refWantAvailable(t, a, 1)
		if st := a.Stats(); st.Allocs != st.Frees || st.Allocs != uint64(rounds+2) {
			t.Fatalf("Stats = %+v, want %d allocs and as many frees", st, rounds+2)
		}
	})
}

// Two goroutines View the same slot at the same time: each callback waits,
// inside, until the other one is inside too. With a reader lock that excluded
// readers this would time out.
func TestRefConcurrentReads(t *testing.T) {
	refForShards(t, func(t *testing.T, shards int) {
		a := refArena[refMsg](t, 4, shards)
		tok, _ := a.Store(refMake(5))
		const readers = 2
		var inside sync.WaitGroup
		inside.Add(readers)
		allIn := make(chan struct{})
		go func() { inside.Wait(); close(allIn) }()
		errs := make(chan error, readers)
		for r := 0; r < readers; r++ {
			go func() {
				errs <- a.View(tok, func(m *refMsg) {
					inside.Done()
					select {
					case <-allIn:
					case <-time.After(10 * time.Second):
						t.Error("View callbacks on one slot did not run at the same time")
					}
					if !refFilled(m, 5) {
						t.Errorf("View sees %+v", *m)
					}
				})
			}()
		}
		for r := 0; r < readers; r++ {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if err := a.Free(tok); err != nil {
			t.Fatal(err)
		}
		refWantAvailable(t, a, 4)
	})
}

// While an Update callback runs, a View, a Load and another Update on the
// slot wait for it, and then see what it wrote.
func TestRefWriteExcludesRead(t *testing.T) {
	refForShards(t, func(t *testing.T, shards int) {
		a := refArena[refMsg](t, 4, shards)
		tok, _ := a.Store(refMake(7))
		var writerDone atomic.Bool
		holding := make(chan struct{})
		writerErr := make(chan error, 1)
		go func() {
			writerErr <- a.Update(tok, func(m *refMsg) {
				*m = refMake(42)
				close(holding)
				time.Sleep(50 * time.Millisecond)
				m.Header.Seq = 4242 // the last write before release
				writerDone.Store(true)
			})
		}()
		<-holding
		want := refMake(42)
		want.Header.Seq = 4242
		var wg sync.WaitGroup
		check := func(what string, m refMsg) {
			if !writerDone.Load() {
				t.Errorf("%s ran while the Update callback held the slot", what)
			}
			if m != want {
				t.Errorf("%s saw %+v, want the writer's final value", what, m)
			}
		}
		wg.Add(3)
		go func() {
			defer wg.Done()
			if err := a.View(tok, func(m *refMsg) { check("View", *m) }); err != nil {
				t.Error(err)
			}
		}()
		go func() {
			defer wg.Done()
			m, err := a.Load(tok)
			if err != nil {
				t.Error(err)
			}
			check("Load", m)
		}()
		go func() {
			defer wg.Done()
			if err := a.Update(tok, func(m *refMsg) { check("Update", *m) }); err != nil {
				t.Error(err)
			}
		}()
		wg.Wait()
		if err := <-writerErr; err != nil {
			t.Fatal(err)
		}
	})
}

// An Update waits for the Views already inside the slot.
func TestRefWriteWaitsForReaders(t *testing.T) {
	a := refArena[refMsg](t, 4, 0)
	tok, _ := a.Store(refMake(1))
	var readerDone atomic.Bool
	inside := make(chan struct{})
	viewErr := make(chan error, 1)
	go func() {
		viewErr <- a.View(tok, func(m *refMsg) {
			close(inside)
			time.Sleep(50 * time.Millisecond)
			readerDone.Store(true)
		})
	}()
	<-inside
	if err := a.Update(tok, func(m *refMsg) {
		if !readerDone.Load() {
			t.Error("Update ran while a View callback was inside the slot")
		}
		m.Header.Seq = 2
	}); err != nil {
		t.Fatal(err)
	}
	if err := <-viewErr; err != nil {
		t.Fatal(err)
	}
	if h, err := refPeek(a, tok); err != nil || h.Seq != 2 {
		t.Fatalf("peek = %+v, %v", h, err)
	}
}

func TestRefMemoryClassDefaultsToHost(t *testing.T) {
	a := refArena[refMsg](t, 4, 0)
	if a.Class().String() != memclass.Host().String() {
		t.Fatalf("Class() = %v, want Host", a.Class())
	}
}
