// These tests check the behaviour that ../shared/CONTRACT.md (and the
// message runtime issue) promise, through the exported API only,
// as an outside acceptance suite would. Each test names the contract
// sentence it pins.
package contract_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/memclass"
	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/shard"
	"github.com/cella-go/cella/token"
)

// ---------------------------------------------------------------- helpers

type pay struct{ A, B uint64 } // 16 bytes, pointer free

type big struct{ B [256 << 10]byte } // 256 KiB, larger than any stack temporary

const wait = 3 * time.Second // bound of every blocking call

func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// within runs f in a goroutine and reports whether it returned within d.
func within(d time.Duration, f func()) bool {
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// noPanic runs f and returns the panic value, if any.
func noPanic(f func()) (p any) {
	defer func() { p = recover() }()
	f()
	return nil
}

func newArena[T any](t *testing.T, cfg arena.Config) *arena.Arena[T] {
	t.Helper()
	a, err := arena.New[T](cfg)
	if err != nil {
		t.Fatalf("arena.New(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { _ = a.Close() })
	return a
}

func newStore[P any](t *testing.T, slots int) *message.Store[P] {
	t.Helper()
	s, err := message.NewStore[P](arena.Config{Slots: slots})
	if err != nil {
		t.Fatalf("NewStore: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func newEdge(t *testing.T, hs message.HeaderStore, p message.Policy) *message.Edge {
	t.Helper()
	e, err := message.NewEdge(hs, p)
	if err != nil {
		t.Fatalf("NewEdge(%+v): %v", p, err)
	}
	return e
}

func put(t *testing.T, s *message.Store[pay], h message.Header, a uint64) token.Token {
	t.Helper()
	tk, err := s.Put(h, pay{A: a})
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	return tk
}

func refs(t *testing.T, s *message.Store[pay], tk token.Token) int {
	t.Helper()
	n, err := s.Refs(tk)
	if err != nil {
		return -1
	}
	return n
}

func payloadA(t *testing.T, s *message.Store[pay], tk token.Token) uint64 {
	t.Helper()
	var v uint64
	if err := s.View(tk, func(m *message.Message[pay]) { v = m.Payload.A }); err != nil {
		t.Fatalf("View(%v): %v", tk, err)
	}
	return v
}

// recvAll empties e with TryRecv and returns the payload A of each token
// (freeing them).
func recvAll(t *testing.T, s *message.Store[pay], e *message.Edge) []uint64 {
	t.Helper()
	var out []uint64
	for {
		tk, ok := e.TryRecv()
		if !ok {
			return out
		}
		out = append(out, payloadA(t, s, tk))
		if err := s.Free(tk); err != nil {
			t.Fatalf("Free received: %v", err)
		}
	}
}

func eqU(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func checkQuietEdge(t *testing.T, e *message.Edge) {
	t.Helper()
	st := e.Stats()
	if st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained+uint64(st.Len) {
		t.Errorf("Admitted %d != Delivered %d + Evicted %d + Expired %d + Drained %d + Len %d",
			st.Admitted, st.Delivered, st.Evicted, st.Expired, st.Drained, st.Len)
	}
}

// ---------------------------------------------------------------- token

func TestToken(t *testing.T) {
	if !token.Nil.IsNil() || token.Nil != 0 {
		t.Fatal("Nil must be the zero token and IsNil")
	}
	cases := []struct {
		idx, gen uint32
		str      string
	}{{7, 3, "7@3"}, {0, 1, "0@1"}, {1<<32 - 1, 1<<32 - 1, "4294967295@4294967295"}}
	for _, c := range cases {
		t.Run(c.str, func(t *testing.T) {
			tk := token.New(c.idx, c.gen)
			if tk.Index() != c.idx || tk.Generation() != c.gen {
				t.Errorf("Index/Generation = %d/%d, want %d/%d", tk.Index(), tk.Generation(), c.idx, c.gen)
			}
			if tk.IsNil() {
				t.Error("non-zero token IsNil")
			}
			if tk.String() != c.str {
				t.Errorf("String = %q, want %q", tk.String(), c.str)
			}
		})
	}
	// Never issued by an arena: exhaust a small arena, twice.
	a := newArena[pay](t, arena.Config{Slots: 64, Shards: 3})
	for round := 0; round < 3; round++ {
		var ts []token.Token
		for {
			tk, _, err := a.Alloc()
			if err != nil {
				break
			}
			if tk.IsNil() || tk.Generation() == 0 {
				t.Fatalf("arena issued %v", tk)
			}
			ts = append(ts, tk)
		}
		for _, tk := range ts {
			_ = a.Free(tk)
		}
	}
}

// ---------------------------------------------------------------- memclass

func TestMemclassZeroIsHost(t *testing.T) {
	var zero memclass.Class
	if zero != memclass.Host() {
		t.Error("zero Class != Host()")
	}
	if memclass.Host().String() == "" {
		t.Error("Host().String() empty")
	}
	a := newArena[pay](t, arena.Config{Slots: 8})
	if a.Class() != memclass.Host() {
		t.Errorf("zero Config.Class read back as %v, want Host", a.Class())
	}
}

func TestMemclassAppliedAndReadBack(t *testing.T) {
	classes := []memclass.Class{memclass.Host(), memclass.Host().Prefault(), memclass.Host().WithTHP().BestEffort()}
	if nodes, err := memclass.OnlineNodes(); err == nil && len(nodes) > 0 {
		classes = append(classes, memclass.Bind(nodes[0]), memclass.Prefer(nodes[0]), memclass.Interleave(nodes...))
	}
	for _, c := range classes {
		t.Run(c.String(), func(t *testing.T) {
			a, err := arena.New[pay](arena.Config{Slots: 1024, Class: c})
			if errors.Is(err, memclass.ErrUnsupported) || errors.Is(err, memclass.ErrPolicy) {
				t.Skipf("class not available here: %v", err)
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			defer a.Close()
			if a.Class() != c {
				t.Errorf("Class() = %v, want %v", a.Class(), c)
			}
			tk, err := a.Store(pay{A: 1})
			if err != nil {
				t.Fatal(err)
			}
			if v, _ := a.Load(tk); v.A != 1 {
				t.Error("value lost")
			}
			s, err := message.NewStore[pay](arena.Config{Slots: 16, Class: c})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if s.Class() != c {
				t.Errorf("Store.Class() = %v, want %v", s.Class(), c)
			}
		})
	}
}

// ---------------------------------------------------------------- arena: New

func TestArenaInvalidConfig(t *testing.T) {
	cases := []struct {
		name string
		cfg  arena.Config
	}{
		{"slots0", arena.Config{Slots: 0}},
		{"slotsNeg", arena.Config{Slots: -1}},
		{"shardsNeg", arena.Config{Slots: 8, Shards: -1}},
		{"slotsTooMany", arena.Config{Slots: int(arena.MaxSlots) + 1}},
		{"shardsTooMany", arena.Config{Slots: 8, Shards: arena.MaxShards + 1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, err := arena.New[pay](c.cfg)
			if !errors.Is(err, arena.ErrInvalidConfig) {
				t.Errorf("New(%+v) err = %v, want ErrInvalidConfig", c.cfg, err)
			}
			if a != nil {
				_ = a.Close()
			}
			s, err := message.NewStore[pay](c.cfg)
			if !errors.Is(err, arena.ErrInvalidConfig) {
				t.Errorf("NewStore(%+v) err = %v, want ErrInvalidConfig", c.cfg, err)
			}
			if s != nil {
				_ = s.Close()
			}
		})
	}
}

type withPtr struct {
	A int
	P *int
}
type withStr struct{ S string }
type nested struct{ In [2]withSlice }
type withSlice struct{ S []byte }
type okNested struct {
	A [4]pay
	B struct{ X, Y int32 }
	C token.Token
}

func checkPtrType[T any](t *testing.T, want bool) {
	t.Helper()
	a, err := arena.New[T](arena.Config{Slots: 4})
	if a != nil {
		defer a.Close()
	}
	if got := errors.Is(err, arena.ErrPointerType); got != want {
		t.Errorf("arena.New[%T] err = %v, want ErrPointerType %v", *new(T), err, want)
	}
	if !want && err != nil {
		t.Errorf("arena.New[%T]: %v", *new(T), err)
	}
	s, err := message.NewStore[T](arena.Config{Slots: 4})
	if s != nil {
		defer s.Close()
	}
	if got := errors.Is(err, arena.ErrPointerType); got != want {
		t.Errorf("NewStore[%T] err = %v, want ErrPointerType %v", *new(T), err, want)
	}
}

func TestArenaPointerTypesRefused(t *testing.T) {
	cases := []struct {
		name string
		f    func(*testing.T)
	}{
		{"ptr", func(t *testing.T) { checkPtrType[*int](t, true) }},
		{"slice", func(t *testing.T) { checkPtrType[[]int](t, true) }},
		{"string", func(t *testing.T) { checkPtrType[string](t, true) }},
		{"map", func(t *testing.T) { checkPtrType[map[int]int](t, true) }},
		{"chan", func(t *testing.T) { checkPtrType[chan int](t, true) }},
		{"func", func(t *testing.T) { checkPtrType[func()](t, true) }},
		{"interface", func(t *testing.T) { checkPtrType[any](t, true) }},
		{"error", func(t *testing.T) { checkPtrType[error](t, true) }},
		{"unsafe.Pointer", func(t *testing.T) { checkPtrType[unsafe.Pointer](t, true) }},
		{"structPtr", func(t *testing.T) { checkPtrType[withPtr](t, true) }},
		{"structString", func(t *testing.T) { checkPtrType[withStr](t, true) }},
		{"nestedSlice", func(t *testing.T) { checkPtrType[nested](t, true) }},
		{"arrayOfPtr", func(t *testing.T) { checkPtrType[[3]*byte](t, true) }},
		{"okInt", func(t *testing.T) { checkPtrType[int64](t, false) }},
		{"okStruct", func(t *testing.T) { checkPtrType[okNested](t, false) }},
		{"okArray", func(t *testing.T) { checkPtrType[[100]byte](t, false) }},
		{"okUintptr", func(t *testing.T) { checkPtrType[uintptr](t, false) }},
		{"okEmpty", func(t *testing.T) { checkPtrType[struct{}](t, false) }},
	}
	for _, c := range cases {
		t.Run(c.name, c.f)
	}
}

// ---------------------------------------------------------------- arena: alloc/full/steal

func TestArenaExactCapacityAnyShards(t *testing.T) {
	P := runtime.GOMAXPROCS(0)
	for _, c := range []struct{ slots, shards int }{
		{1, 1}, {1, 0}, {7, 1}, {64, 0}, {64, 4}, {100, P + 2}, {3, 8}, {1000, 7}, {257, 64}, {4096, 16},
	} {
		t.Run(fmt.Sprintf("slots%d_shards%d", c.slots, c.shards), func(t *testing.T) {
			a := newArena[pay](t, arena.Config{Slots: c.slots, Shards: c.shards})
			if a.Capacity() != c.slots || a.Available() != c.slots {
				t.Fatalf("Capacity/Available = %d/%d, want %d", a.Capacity(), a.Available(), c.slots)
			}
			seen := map[uint32]bool{}
			var ts []token.Token
			for i := 0; i < c.slots; i++ {
				tk, p, err := a.Alloc()
				if err != nil {
					t.Fatalf("Alloc #%d of %d: %v", i+1, c.slots, err)
				}
				if seen[tk.Index()] {
					t.Fatalf("slot %d handed out twice", tk.Index())
				}
				seen[tk.Index()] = true
				if *p != (pay{}) {
					t.Fatalf("Alloc slot not zeroed: %+v", *p)
				}
				p.A = uint64(i) + 1
				ts = append(ts, tk)
				if a.Available() != c.slots-i-1 {
					t.Fatalf("Available = %d after %d allocs, want %d", a.Available(), i+1, c.slots-i-1)
				}
			}
			if _, _, err := a.Alloc(); !errors.Is(err, arena.ErrFull) {
				t.Fatalf("Alloc N+1 err = %v, want ErrFull", err)
			}
			if _, err := a.Store(pay{}); !errors.Is(err, arena.ErrFull) {
				t.Fatalf("Store N+1 err = %v, want ErrFull", err)
			}
			st := a.Stats()
			if st.Allocs != uint64(c.slots) || st.Failed != 2 || st.Live != uint64(c.slots) {
				t.Errorf("Stats = %+v, want Allocs %d Failed 2 Live %d", st, c.slots, c.slots)
			}
			if c.shards > P && c.slots >= c.shards && st.Steals == 0 {
				t.Errorf("Stats.Steals = 0 though %d shards > %d Ps were all emptied", c.shards, P)
			}
			for i, tk := range ts {
				v, err := a.Load(tk)
				if err != nil || v.A != uint64(i)+1 {
					t.Fatalf("Load(%v) = %+v, %v", tk, v, err)
				}
			}
			for _, tk := range ts {
				if err := a.Free(tk); err != nil {
					t.Fatalf("Free: %v", err)
				}
			}
			if a.Available() != a.Capacity() {
				t.Errorf("Available %d != Capacity %d after freeing all", a.Available(), a.Capacity())
			}
			st = a.Stats()
			if st.Allocs != st.Frees || st.Live != 0 {
				t.Errorf("Stats after free all: %+v", st)
			}
			// and again: exactly N once more
			for i := 0; i < c.slots; i++ {
				tk, p, err := a.Alloc()
				if err != nil {
					t.Fatalf("second round Alloc #%d: %v", i+1, err)
				}
				if *p != (pay{}) {
					t.Fatalf("recycled slot not zeroed: %+v", *p)
				}
				ts[i] = tk
			}
			if _, _, err := a.Alloc(); !errors.Is(err, arena.ErrFull) {
				t.Fatalf("second round N+1 err = %v, want ErrFull", err)
			}
			for _, tk := range ts {
				_ = a.Free(tk)
			}
		})
	}
}

func TestArenaConcurrentNoDoubleHandout(t *testing.T) {
	const slots, G, iters = 512, 8, 3000
	a := newArena[pay](t, arena.Config{Slots: slots, Shards: 4})
	var owner [slots]atomic.Int32
	var wg sync.WaitGroup
	var bad atomic.Value
	for g := 0; g < G; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			var mine []token.Token
			for i := 0; i < iters; i++ {
				if len(mine) < 40 {
					tk, p, err := a.Alloc()
					if err == nil {
						if !owner[tk.Index()].CompareAndSwap(0, int32(g+1)) {
							bad.Store(fmt.Sprintf("slot %d handed out while owned by %d", tk.Index(), owner[tk.Index()].Load()))
						}
						p.A = uint64(g)
						mine = append(mine, tk)
						continue
					} else if !errors.Is(err, arena.ErrFull) {
						bad.Store("Alloc: " + err.Error())
					}
				}
				if len(mine) > 0 {
					tk := mine[len(mine)-1]
					mine = mine[:len(mine)-1]
					if v, err := a.Load(tk); err != nil || v.A != uint64(g) {
						bad.Store(fmt.Sprintf("Load own slot: %+v %v", v, err))
					}
					owner[tk.Index()].Store(0)
					if err := a.Free(tk); err != nil {
						bad.Store("Free: " + err.Error())
					}
				}
			}
			for _, tk := range mine {
				owner[tk.Index()].Store(0)
				_ = a.Free(tk)
			}
		}(g)
	}
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatal(v)
	}
	if a.Available() != a.Capacity() {
		t.Errorf("slot lost: Available %d Capacity %d", a.Available(), a.Capacity())
	}
	if st := a.Stats(); st.Allocs != st.Frees || st.Live != 0 {
		t.Errorf("Stats not exact at quiet: %+v", st)
	}
}

// ---------------------------------------------------------------- arena: tokens and stale

func TestArenaBadAndStaleTokens(t *testing.T) {
	a := newArena[pay](t, arena.Config{Slots: 1, Shards: 1})
	t1, err := a.Store(pay{A: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Free(t1); err != nil {
		t.Fatal(err)
	}
	var t2 token.Token
	ops := func(tk token.Token) map[string]error {
		var dst pay
		_, lerr := a.Load(tk)
		return map[string]error{
			"Load":     lerr,
			"LoadInto": a.LoadInto(tk, &dst),
			"View":     a.View(tk, func(*pay) {}),
			"Update":   a.Update(tk, func(*pay) {}),
			"Free":     a.Free(tk),
		}
	}
	check := func(t *testing.T, tk token.Token, want error) {
		for op, err := range ops(tk) {
			if !errors.Is(err, want) {
				t.Errorf("%s(%v) = %v, want %v", op, tk, err, want)
			}
		}
	}
	t.Run("freed", func(t *testing.T) { check(t, t1, arena.ErrStale) })
	t2, err = a.Store(pay{A: 2})
	if err != nil {
		t.Fatal(err)
	}
	if t2.Index() != t1.Index() {
		t.Fatalf("one-slot arena reused another index?")
	}
	t.Run("freedThenReused", func(t *testing.T) {
		check(t, t1, arena.ErrStale)
		if v, err := a.Load(t2); err != nil || v.A != 2 {
			t.Errorf("reused slot's own token broken: %+v %v", v, err)
		}
	})
	t.Run("nil", func(t *testing.T) { check(t, token.Nil, arena.ErrBadToken) })
	t.Run("indexOutOfRange", func(t *testing.T) { check(t, token.New(5, t2.Generation()), arena.ErrBadToken) })
	t.Run("indexHuge", func(t *testing.T) { check(t, token.New(1<<31, 7), arena.ErrBadToken) })
	t.Run("manyReuses", func(t *testing.T) {
		old := []token.Token{t1}
		cur := t2
		seen := map[token.Token]bool{t1: true, t2: true}
		for i := 0; i < 20000; i++ {
			if err := a.Free(cur); err != nil {
				t.Fatal(err)
			}
			if i%1000 == 0 {
				old = append(old, cur)
			}
			nt, err := a.Store(pay{A: uint64(i)})
			if err != nil {
				t.Fatal(err)
			}
			if seen[nt] {
				t.Fatalf("token %v issued twice", nt)
			}
			seen[nt] = true
			cur = nt
		}
		for _, o := range old {
			if _, err := a.Load(o); !errors.Is(err, arena.ErrStale) {
				t.Errorf("old token %v: %v, want ErrStale", o, err)
			}
		}
		_ = a.Free(cur)
	})
	if a.Available() != a.Capacity() {
		t.Errorf("Available %d Capacity %d", a.Available(), a.Capacity())
	}
	if st := a.Stats(); st.Allocs != st.Frees {
		t.Errorf("Allocs %d != Frees %d", st.Allocs, st.Frees)
	}
}

func TestArenaDoubleFreeChangesNothing(t *testing.T) {
	a := newArena[pay](t, arena.Config{Slots: 4})
	tk, _ := a.Store(pay{A: 1})
	_ = a.Free(tk)
	before := a.Stats()
	avail := a.Available()
	if err := a.Free(tk); !errors.Is(err, arena.ErrStale) {
		t.Errorf("double Free = %v, want ErrStale", err)
	}
	if a.Stats().Frees != before.Frees || a.Available() != avail {
		t.Errorf("double Free changed counters: %+v -> %+v", before, a.Stats())
	}
}

// ---------------------------------------------------------------- arena: View / Update

func TestArenaViewsRunConcurrently(t *testing.T) {
	a := newArena[pay](t, arena.Config{Slots: 4})
	tk, _ := a.Store(pay{A: 1})
	in1, in2 := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	var overlap atomic.Bool
	wg.Add(2)
	go func() {
		defer wg.Done()
		_ = a.View(tk, func(*pay) {
			close(in1)
			select {
			case <-in2:
				overlap.Store(true)
			case <-time.After(wait):
			}
		})
	}()
	go func() {
		defer wg.Done()
		<-in1
		_ = a.View(tk, func(*pay) { close(in2) })
	}()
	if !within(2*wait, wg.Wait) {
		t.Fatal("Views hung")
	}
	if !overlap.Load() {
		t.Error("two View callbacks on one slot did not run concurrently")
	}
}

func TestArenaUpdateExcludes(t *testing.T) {
	a := newArena[pay](t, arena.Config{Slots: 4})
	tk, _ := a.Store(pay{})
	for _, other := range []string{"View", "Update", "Load", "LoadInto"} {
		t.Run(other, func(t *testing.T) {
			var inUpdate atomic.Bool
			var sawOverlap atomic.Bool
			entered := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				_ = a.Update(tk, func(p *pay) {
					inUpdate.Store(true)
					close(entered)
					p.A = 1
					time.Sleep(30 * time.Millisecond)
					p.B = 1
					inUpdate.Store(false)
				})
			}()
			<-entered
			ok := within(wait, func() {
				switch other {
				case "View":
					_ = a.View(tk, func(p *pay) {
						if inUpdate.Load() || p.A != p.B {
							sawOverlap.Store(true)
						}
					})
				case "Update":
					_ = a.Update(tk, func(p *pay) {
						if inUpdate.Load() || p.A != p.B {
							sawOverlap.Store(true)
						}
						p.A, p.B = 0, 0
					})
				case "Load":
					v, _ := a.Load(tk)
					if v.A != v.B {
						sawOverlap.Store(true)
					}
				case "LoadInto":
					var v pay
					_ = a.LoadInto(tk, &v)
					if v.A != v.B {
						sawOverlap.Store(true)
					}
				}
			})
			<-done
			if !ok {
				t.Fatal("blocked")
			}
			if sawOverlap.Load() {
				t.Errorf("%s overlapped a running Update (saw torn value)", other)
			}
			_ = a.Update(tk, func(p *pay) { *p = pay{} })
		})
	}
}

func TestArenaCallbackPanic(t *testing.T) {
	a := newArena[pay](t, arena.Config{Slots: 2})
	tk, _ := a.Store(pay{A: 5})
	for _, op := range []string{"View", "Update"} {
		t.Run(op, func(t *testing.T) {
			var p any
			ok := within(wait, func() {
				p = noPanic(func() {
					if op == "View" {
						_ = a.View(tk, func(*pay) { panic("boom") })
					} else {
						_ = a.Update(tk, func(v *pay) { v.B = 9; panic("boom") })
					}
				})
			})
			if !ok {
				t.Fatal("panicking callback hung")
			}
			if p != "boom" {
				t.Errorf("panic value = %v, want boom", p)
			}
			// slot still usable: Update (exclusive) and View must work
			if !within(wait, func() {
				if err := a.Update(tk, func(v *pay) { v.A++ }); err != nil {
					t.Errorf("Update after panic: %v", err)
				}
				if err := a.View(tk, func(*pay) {}); err != nil {
					t.Errorf("View after panic: %v", err)
				}
			}) {
				t.Fatal("slot left locked after a panic")
			}
		})
	}
	if err := a.Free(tk); err != nil {
		t.Fatal(err)
	}
	if a.Available() != a.Capacity() {
		t.Error("slot lost")
	}
}

func TestArenaNilCallbacksAndDst(t *testing.T) {
	a := newArena[pay](t, arena.Config{Slots: 2})
	tk, _ := a.Store(pay{A: 1})
	cases := []struct {
		name string
		f    func() error
		want error
	}{
		{"View", func() error { return a.View(tk, nil) }, arena.ErrNilFunc},
		{"Update", func() error { return a.Update(tk, nil) }, arena.ErrNilFunc},
		{"LoadInto", func() error { return a.LoadInto(tk, nil) }, arena.ErrNilPointer},
		{"LoadIntoStale", func() error { return a.LoadInto(token.New(1<<20, 1), nil) }, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var err error
			if p := noPanic(func() { err = c.f() }); p != nil {
				t.Fatalf("panicked: %v", p)
			}
			if err == nil {
				t.Fatal("nil func/dst accepted")
			}
			if c.want != nil && !errors.Is(err, c.want) {
				t.Errorf("err = %v, want %v", err, c.want)
			}
		})
	}
	if v, err := a.Load(tk); err != nil || v.A != 1 {
		t.Error("slot damaged")
	}
}

func TestArenaFreeDuringCallback(t *testing.T) {
	for _, op := range []string{"View", "Update"} {
		t.Run(op, func(t *testing.T) {
			a := newArena[pay](t, arena.Config{Slots: 1, Shards: 1})
			tk, _ := a.Store(pay{A: 7})
			entered, release, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
			go func() {
				defer close(done)
				fn := func(p *pay) {
					close(entered)
					<-release
					p.B = 3 // the slot must still be ours: not recycled
				}
				if op == "View" {
					_ = a.View(tk, fn)
				} else {
					_ = a.Update(tk, fn)
				}
			}()
			<-entered
			var ferr error
			if !within(time.Second, func() { ferr = a.Free(tk) }) {
				close(release)
				t.Fatal("Free waited for the running callback")
			}
			if ferr != nil {
				t.Fatalf("Free during callback: %v", ferr)
			}
			if _, err := a.Load(tk); !errors.Is(err, arena.ErrStale) {
				t.Errorf("Load right after Free = %v, want ErrStale", err)
			}
			var aerr error
			if !within(time.Second, func() { _, _, aerr = a.Alloc() }) {
				close(release)
				t.Fatal("Alloc blocked while a callback held the freed slot")
			}
			if !errors.Is(aerr, arena.ErrFull) {
				t.Errorf("Alloc while the freed slot is still held: %v, want ErrFull (slot recycled too early)", aerr)
			}
			close(release)
			<-done
			tk2, p, err := a.Alloc()
			if err != nil {
				t.Fatalf("Alloc after callback returned: %v", err)
			}
			if *p != (pay{}) {
				t.Errorf("recycled slot not zeroed: %+v", *p)
			}
			_ = a.Free(tk2)
			if a.Available() != a.Capacity() {
				t.Error("slot lost")
			}
		})
	}
}

func TestArenaFreeInsideCallback(t *testing.T) {
	a := newArena[pay](t, arena.Config{Slots: 1, Shards: 1})
	tk, _ := a.Store(pay{A: 1})
	if !within(wait, func() {
		if err := a.View(tk, func(*pay) {
			if err := a.Free(tk); err != nil {
				t.Errorf("Free inside View: %v", err)
			}
		}); err != nil {
			t.Errorf("View: %v", err)
		}
	}) {
		t.Fatal("Free inside View hung")
	}
	if _, _, err := a.Alloc(); err != nil {
		t.Errorf("slot not recycled after the callback: %v", err)
	}
}

// ---------------------------------------------------------------- arena: LoadInto

func TestArenaLoadInto(t *testing.T) {
	a := newArena[pay](t, arena.Config{Slots: 4})
	tk, _ := a.Store(pay{A: 3, B: 4})
	var dst pay
	if err := a.LoadInto(tk, &dst); err != nil || dst != (pay{3, 4}) {
		t.Fatalf("LoadInto = %+v %v", dst, err)
	}
	_ = a.Free(tk)
	for name, bad := range map[string]token.Token{"stale": tk, "nil": token.Nil, "range": token.New(99, 1)} {
		t.Run("unchangedOnError/"+name, func(t *testing.T) {
			dst := pay{A: 0xdead, B: 0xbeef}
			if err := a.LoadInto(bad, &dst); err == nil {
				t.Fatal("no error")
			}
			if dst != (pay{0xdead, 0xbeef}) {
				t.Errorf("dst changed on error: %+v", dst)
			}
		})
	}
	t.Run("afterClose", func(t *testing.T) {
		b, _ := arena.New[pay](arena.Config{Slots: 2})
		tk, _ := b.Store(pay{A: 1})
		_ = b.Close()
		dst := pay{A: 9}
		if err := b.LoadInto(tk, &dst); !errors.Is(err, arena.ErrClosed) || dst.A != 9 {
			t.Errorf("LoadInto after Close = %v, dst %+v", err, dst)
		}
	})
}

func TestArenaLoadIntoNeverAllocatesBigT(t *testing.T) {
	a := newArena[big](t, arena.Config{Slots: 2})
	tk, p, err := a.Alloc()
	if err != nil {
		t.Fatal(err)
	}
	p.B[0], p.B[len(p.B)-1] = 1, 2
	dst := new(big)
	if n := testing.AllocsPerRun(20, func() { _ = a.LoadInto(tk, dst) }); n != 0 {
		t.Errorf("LoadInto of %d-byte T: %v allocs/op, want 0", unsafe.Sizeof(big{}), n)
	}
	if dst.B[0] != 1 || dst.B[len(dst.B)-1] != 2 {
		t.Error("LoadInto copied wrong data")
	}
	// Its refusals allocate only their error value (which names the token),
	// one small allocation whatever the size of T (the godoc says so).
	t.Run("errorPaths", func(t *testing.T) {
		stale, _, _ := a.Alloc()
		_ = a.Free(stale)
		for name, f := range map[string]func(){
			"nilDst": func() { _ = a.LoadInto(tk, nil) },
			"stale":  func() { _ = a.LoadInto(stale, dst) },
			"nilTok": func() { _ = a.LoadInto(token.Nil, dst) },
		} {
			if n := testing.AllocsPerRun(20, f); n > 1 {
				t.Errorf("LoadInto %s: %v allocs/op, want at most 1 (the error)", name, n)
			}
		}
	})
}

// ---------------------------------------------------------------- arena: zero allocs

func TestArenaHotPathsDoNotAllocate(t *testing.T) {
	a := newArena[pay](t, arena.Config{Slots: 64})
	keep, _ := a.Store(pay{A: 1})
	view := func(*pay) {}
	upd := func(p *pay) { p.A++ }
	var dst pay
	cases := []struct {
		name string
		f    func()
	}{
		{"Alloc+Free", func() { tk, _, _ := a.Alloc(); _ = a.Free(tk) }},
		{"Store+Free", func() { tk, _ := a.Store(pay{A: 1}); _ = a.Free(tk) }},
		{"Load", func() { _, _ = a.Load(keep) }},
		{"LoadInto", func() { _ = a.LoadInto(keep, &dst) }},
		{"View", func() { _ = a.View(keep, view) }},
		{"Update", func() { _ = a.Update(keep, upd) }},
		{"Available", func() { _ = a.Available() }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(1000, c.f); n != 0 {
				t.Errorf("%v allocs/op, want 0", n)
			}
		})
	}
	t.Run("ErrFull", func(t *testing.T) {
		b := newArena[pay](t, arena.Config{Slots: 1, Shards: 1})
		_, _ = b.Store(pay{})
		if n := testing.AllocsPerRun(100, func() { _, _, _ = b.Alloc() }); n != 0 {
			t.Errorf("Alloc on a full arena: %v allocs/op", n)
		}
	})
}

// ---------------------------------------------------------------- arena: Close

func TestArenaAfterClose(t *testing.T) {
	a, err := arena.New[pay](arena.Config{Slots: 8, Shards: 2})
	if err != nil {
		t.Fatal(err)
	}
	live, _ := a.Store(pay{A: 1})
	freed, _ := a.Store(pay{A: 2})
	_ = a.Free(freed)
	stBefore := a.Stats()
	capBefore := a.Capacity()
	if err := a.Close(); err != nil {
		t.Fatalf("first Close: %v", err)
	}
	ctx := ctxT(t, wait)
	var dst pay
	cases := []struct {
		name string
		f    func() error
	}{
		{"Alloc", func() error { _, _, err := a.Alloc(); return err }},
		{"Store", func() error { _, err := a.Store(pay{}); return err }},
		{"LoadLive", func() error { _, err := a.Load(live); return err }},
		{"LoadFreed", func() error { _, err := a.Load(freed); return err }},
		{"LoadNil", func() error { _, err := a.Load(token.Nil); return err }},
		{"LoadInto", func() error { return a.LoadInto(live, &dst) }},
		{"View", func() error { return a.View(live, func(*pay) { t.Error("callback ran after Close") }) }},
		{"Update", func() error { return a.Update(live, func(*pay) { t.Error("callback ran after Close") }) }},
		{"FreeLive", func() error { return a.Free(live) }},
		{"FreeFreed", func() error { return a.Free(freed) }},
		{"AllocWait", func() error { _, _, err := a.AllocWait(ctx); return err }},
		{"StoreWait", func() error { _, err := a.StoreWait(ctx, pay{}); return err }},
		//lint:ignore SA1012 a nil context is what is tested
		{"AllocWaitNilCtx", func() error { _, _, err := a.AllocWait(nil); return err }},
		{"Trim", func() error { _, err := a.Trim(); return err }},
		{"Close", func() error { return a.Close() }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var err error
			if !within(wait, func() {
				if p := noPanic(func() { err = c.f() }); p != nil {
					err = fmt.Errorf("panic: %v", p)
				}
			}) {
				t.Fatal("blocked after Close")
			}
			if !errors.Is(err, arena.ErrClosed) {
				t.Errorf("%s after Close = %v, want ErrClosed", c.name, err)
			}
		})
	}
	t.Run("Tokens", func(t *testing.T) {
		for tk := range a.Tokens() {
			t.Errorf("Tokens yielded %v after Close", tk)
		}
	})
	t.Run("StillAnswer", func(t *testing.T) {
		if a.Capacity() != capBefore {
			t.Errorf("Capacity after Close = %d, want %d", a.Capacity(), capBefore)
		}
		if a.Class() != memclass.Host() {
			t.Errorf("Class after Close = %v", a.Class())
		}
		st := a.Stats()
		if st.Allocs != stBefore.Allocs || st.Frees != stBefore.Frees {
			t.Errorf("Stats after Close = %+v, want final %+v", st, stBefore)
		}
		if a.Available() != 0 {
			t.Errorf("Available after Close = %d, godoc says 0", a.Available())
		}
	})
}

func TestArenaCloseRacingCalls(t *testing.T) {
	for iter := 0; iter < 20; iter++ {
		a, err := arena.New[pay](arena.Config{Slots: 256, Shards: 4})
		if err != nil {
			t.Fatal(err)
		}
		var stop atomic.Bool
		var wg sync.WaitGroup
		errc := make(chan string, 64)
		ok := func(op string, err error) {
			if err != nil && !errors.Is(err, arena.ErrClosed) && !errors.Is(err, arena.ErrFull) && !errors.Is(err, arena.ErrStale) {
				select {
				case errc <- op + ": " + err.Error():
				default:
				}
			}
		}
		for g := 0; g < 6; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				defer func() {
					if p := recover(); p != nil {
						errc <- fmt.Sprint("panic: ", p)
					}
				}()
				ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
				defer cancel()
				var dst pay
				for i := 0; !stop.Load() || i < 50; i++ {
					tk, err := a.Store(pay{A: uint64(i)})
					ok("Store", err)
					_, err = a.Load(tk)
					ok("Load", err)
					ok("LoadInto", a.LoadInto(tk, &dst))
					ok("View", a.View(tk, func(p *pay) { _ = p.A }))
					ok("Update", a.Update(tk, func(p *pay) { p.B++ }))
					if g == 0 && i%16 == 0 {
						_, err = a.Trim()
						ok("Trim", err)
						for range a.Tokens() {
							break
						}
					}
					if g == 1 && i%8 == 0 {
						t2, _, err := a.AllocWait(ctx)
						if err != nil && !errors.Is(err, ctx.Err()) {
							ok("AllocWait", err)
						}
						ok("Free", a.Free(t2))
					}
					ok("Free", a.Free(tk))
					if errors.Is(err, arena.ErrClosed) && stop.Load() {
						return
					}
				}
			}(g)
		}
		time.Sleep(time.Duration(iter%5) * time.Millisecond)
		var cerr error
		if !within(wait, func() { cerr = a.Close() }) {
			t.Fatal("Close hung with calls in flight")
		}
		if cerr != nil {
			t.Errorf("Close: %v", cerr)
		}
		stop.Store(true)
		if !within(wait, wg.Wait) {
			t.Fatal("callers hung after Close")
		}
		close(errc)
		for e := range errc {
			t.Errorf("iteration %d: %s", iter, e)
		}
	}
}

func TestArenaCloseWaitsForCallbacks(t *testing.T) {
	a, _ := arena.New[pay](arena.Config{Slots: 2})
	tk, _ := a.Store(pay{})
	entered, release, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		_ = a.View(tk, func(p *pay) {
			close(entered)
			<-release
			p.A = 1 // memory must still be mapped
		})
	}()
	<-entered
	closed := make(chan error, 1)
	go func() { closed <- a.Close() }()
	select {
	case <-closed:
		t.Error("Close returned while a View callback was running (godoc: it waits)")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-done
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Close hung")
	}
}

// ---------------------------------------------------------------- arena: AllocWait / StoreWait

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func TestArenaWait(t *testing.T) {
	t.Run("atOnceWhenFree", func(t *testing.T) {
		a := newArena[pay](t, arena.Config{Slots: 2})
		done, cancel := context.WithCancel(context.Background())
		cancel()
		if tk, _, err := a.AllocWait(done); err != nil {
			t.Errorf("AllocWait with a free slot and a done ctx: %v (godoc: returns at once)", err)
		} else {
			_ = a.Free(tk)
		}
		if tk, err := a.StoreWait(ctxT(t, wait), pay{A: 4}); err != nil {
			t.Errorf("StoreWait: %v", err)
		} else if v, _ := a.Load(tk); v.A != 4 {
			t.Error("StoreWait did not store v")
		}
	})
	for _, c := range []struct {
		name string
		mk   func() (context.Context, context.CancelFunc)
		want error
	}{
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 50*time.Millisecond)
		}, context.DeadlineExceeded},
		{"cancel", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(50*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
		{"cause", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancelCause(context.Background())
			time.AfterFunc(50*time.Millisecond, func() { cancel(errors.New("my cause")) })
			return ctx, func() { cancel(nil) }
		}, context.Canceled},
	} {
		for _, op := range []string{"AllocWait", "StoreWait"} {
			t.Run(c.name+"/"+op, func(t *testing.T) {
				a := newArena[pay](t, arena.Config{Slots: 1})
				hold, _ := a.Store(pay{})
				ctx, cancel := c.mk()
				defer cancel()
				var err error
				if !within(wait, func() {
					if op == "AllocWait" {
						_, _, err = a.AllocWait(ctx)
					} else {
						_, err = a.StoreWait(ctx, pay{})
					}
				}) {
					t.Fatal("did not return when ctx was done")
				}
				if !errors.Is(err, c.want) || !errors.Is(err, ctx.Err()) {
					t.Errorf("err = %v, want errors.Is(err, ctx.Err()=%v)", err, ctx.Err())
				}
				_ = a.Free(hold)
				if a.Available() != 1 {
					t.Error("slot lost when a waiter gave up")
				}
				if tk, _, err := a.Alloc(); err != nil {
					t.Errorf("slot lost: %v", err)
				} else {
					_ = a.Free(tk)
				}
			})
		}
	}
	t.Run("wokenByFree", func(t *testing.T) {
		a := newArena[pay](t, arena.Config{Slots: 1})
		hold, _ := a.Store(pay{A: 9})
		time.AfterFunc(50*time.Millisecond, func() { _ = a.Free(hold) })
		tk, p, err := a.AllocWait(ctxT(t, wait))
		if err != nil {
			t.Fatalf("AllocWait: %v", err)
		}
		if *p != (pay{}) {
			t.Error("slot not zeroed")
		}
		_ = a.Free(tk)
	})
	t.Run("nilCtxWaitsLikeBackground", func(t *testing.T) {
		a := newArena[pay](t, arena.Config{Slots: 1})
		hold, _ := a.Store(pay{})
		time.AfterFunc(80*time.Millisecond, func() { _ = a.Free(hold) })
		var err error
		var tk token.Token
		start := time.Now()
		if !within(wait, func() {
			//lint:ignore SA1012 a nil context is what is tested
			tk, _, err = a.AllocWait(nil)
		}) {
			t.Fatal("AllocWait(nil) hung")
		}
		if err != nil {
			t.Fatalf("AllocWait(nil): %v", err)
		}
		if time.Since(start) < 50*time.Millisecond {
			t.Error("AllocWait(nil) did not wait")
		}
		_ = a.Free(tk)
		hold, _ = a.Store(pay{})
		time.AfterFunc(50*time.Millisecond, func() { _ = a.Free(hold) })
		if !within(wait, func() {
			//lint:ignore SA1012 a nil context is what is tested
			tk, err = a.StoreWait(nil, pay{A: 1})
		}) || err != nil {
			t.Fatalf("StoreWait(nil): %v", err)
		}
	})
	t.Run("closeWakesWaiter", func(t *testing.T) {
		a, _ := arena.New[pay](arena.Config{Slots: 1})
		_, _ = a.Store(pay{})
		time.AfterFunc(50*time.Millisecond, func() { _ = a.Close() })
		var err error
		if !within(wait, func() { _, _, err = a.AllocWait(context.Background()) }) {
			t.Fatal("Close did not wake the waiter")
		}
		if !errors.Is(err, arena.ErrClosed) {
			t.Errorf("err = %v, want ErrClosed", err)
		}
	})
	t.Run("fifo", func(t *testing.T) {
		a := newArena[pay](t, arena.Config{Slots: 1})
		hold, _ := a.Store(pay{})
		const W = 5
		order := make(chan int, W)
		ctx := ctxT(t, 2*wait)
		var wg sync.WaitGroup
		for i := 0; i < W; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				var tk token.Token
				var err error
				if i%2 == 0 {
					tk, _, err = a.AllocWait(ctx)
				} else {
					tk, err = a.StoreWait(ctx, pay{})
				}
				if err != nil {
					t.Errorf("waiter %d: %v", i, err)
					return
				}
				order <- i
				time.Sleep(2 * time.Millisecond)
				_ = a.Free(tk)
			}(i)
			time.Sleep(30 * time.Millisecond) // let waiter i park before i+1 arrives
		}
		_ = a.Free(hold)
		if !within(2*wait, wg.Wait) {
			t.Fatal("waiters hung")
		}
		close(order)
		var got []int
		for i := range order {
			got = append(got, i)
		}
		for i := range got {
			if got[i] != i {
				t.Errorf("wake order %v, want arrival order 0..%d", got, W-1)
				break
			}
		}
	})
	t.Run("noSlotLostUnderCancelChurn", func(t *testing.T) {
		a := newArena[pay](t, arena.Config{Slots: 4, Shards: 2})
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				for i := 0; i < 200; i++ {
					ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%3)*50*time.Microsecond)
					tk, _, err := a.AllocWait(ctx)
					cancel()
					if err == nil {
						_ = a.Free(tk)
					} else if !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("AllocWait: %v", err)
					}
				}
			}(g)
		}
		if !within(10*wait, wg.Wait) {
			t.Fatal("hung")
		}
		if a.Available() != a.Capacity() {
			t.Errorf("slot lost: Available %d Capacity %d", a.Available(), a.Capacity())
		}
		for i := 0; i < a.Capacity(); i++ {
			if _, _, err := a.Alloc(); err != nil {
				t.Fatalf("slot lost: Alloc %d: %v", i, err)
			}
		}
	})
	t.Run("parksNoBusySpin", func(t *testing.T) {
		a := newArena[pay](t, arena.Config{Slots: 1})
		_, _ = a.Store(pay{})
		ctx := ctxT(t, 300*time.Millisecond)
		runtime.GC()
		c0, w0 := cpuTime(), time.Now()
		var wg sync.WaitGroup
		for i := 0; i < 2; i++ {
			wg.Add(1)
			go func() { defer wg.Done(); _, _, _ = a.AllocWait(ctx) }()
		}
		wg.Wait()
		cpu, wall := cpuTime()-c0, time.Since(w0)
		if cpu > wall/3 {
			t.Errorf("two waiters used %v CPU in %v wall: busy spinning", cpu, wall)
		}
	})
}

// ---------------------------------------------------------------- arena: Tokens

func TestArenaTokens(t *testing.T) {
	t.Run("exactlyLive", func(t *testing.T) {
		a := newArena[pay](t, arena.Config{Slots: 300, Shards: 5})
		var live []token.Token
		var freed []token.Token
		for i := 0; i < 250; i++ {
			tk, _ := a.Store(pay{A: uint64(i)})
			if i%3 == 0 {
				freed = append(freed, tk)
			} else {
				live = append(live, tk)
			}
		}
		for _, tk := range freed {
			_ = a.Free(tk)
		}
		got := map[token.Token]int{}
		for tk := range a.Tokens() {
			got[tk]++
		}
		for _, tk := range live {
			if got[tk] != 1 {
				t.Errorf("live %v yielded %d times", tk, got[tk])
			}
		}
		for _, tk := range freed {
			if got[tk] != 0 {
				t.Errorf("freed %v yielded", tk)
			}
		}
		if len(got) != len(live) {
			t.Errorf("yielded %d tokens, want %d", len(got), len(live))
		}
	})
	t.Run("break", func(t *testing.T) {
		a := newArena[pay](t, arena.Config{Slots: 10})
		for i := 0; i < 10; i++ {
			_, _ = a.Store(pay{})
		}
		n := 0
		for range a.Tokens() {
			n++
			if n == 3 {
				break
			}
		}
		if n != 3 {
			t.Error("break")
		}
	})
	t.Run("bodyFreesOthers", func(t *testing.T) {
		a := newArena[pay](t, arena.Config{Slots: 200, Shards: 3})
		all := map[token.Token]bool{}
		for i := 0; i < 200; i++ {
			tk, _ := a.Store(pay{})
			all[tk] = true
		}
		first := true
		freedNow := map[token.Token]bool{}
		seen := map[token.Token]bool{}
		for tk := range a.Tokens() {
			if freedNow[tk] {
				t.Errorf("Tokens yielded %v, freed before it was reached", tk)
			}
			seen[tk] = true
			if first {
				first = false
				for o := range all {
					if !seen[o] {
						_ = a.Free(o)
						freedNow[o] = true
					}
				}
			}
			if !freedNow[tk] {
				_ = a.Free(tk) // free the yielded token in the body
			}
		}
		if a.Available() != a.Capacity() {
			t.Errorf("Available %d Capacity %d", a.Available(), a.Capacity())
		}
	})
	t.Run("concurrentChurn", func(t *testing.T) {
		a := newArena[pay](t, arena.Config{Slots: 2048, Shards: 4})
		stable := map[token.Token]bool{}
		for i := 0; i < 1000; i++ {
			tk, _ := a.Store(pay{A: 1})
			stable[tk] = true
		}
		var stop atomic.Bool
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				tk, err := a.Store(pay{A: 2})
				if err == nil {
					_ = a.Free(tk)
				}
			}
		}()
		for r := 0; r < 5; r++ {
			got := map[token.Token]int{}
			for tk := range a.Tokens() {
				got[tk]++
				if got[tk] > 1 {
					t.Errorf("%v yielded twice", tk)
				}
			}
			for tk := range stable {
				if got[tk] != 1 {
					t.Errorf("stable %v yielded %d times", tk, got[tk])
				}
			}
		}
		stop.Store(true)
		wg.Wait()
	})
}

// ---------------------------------------------------------------- arena: Trim

func TestArenaTrim(t *testing.T) {
	type page [4096]byte
	a := newArena[page](t, arena.Config{Slots: 512, Shards: 2})
	var ts []token.Token
	for i := 0; i < 512; i++ {
		tk, p, err := a.Alloc()
		if err != nil {
			t.Fatal(err)
		}
		for j := range p {
			p[j] = byte(i) | 1
		}
		ts = append(ts, tk)
	}
	keep := ts[:8]
	for _, tk := range ts[8:] {
		_ = a.Free(tk)
	}
	rel, err := a.Trim()
	if err != nil {
		t.Fatalf("Trim: %v", err)
	}
	if rel <= 0 {
		t.Errorf("Trim released %d bytes of 504 free 4 KiB slots", rel)
	}
	if rel > int64(504*4096) {
		t.Errorf("Trim reports %d bytes, more than the free slots hold", rel)
	}
	for _, tk := range ts[8:] {
		if _, err := a.Load(tk); !errors.Is(err, arena.ErrStale) {
			t.Fatalf("stale token %v after Trim: %v", tk, err)
		}
	}
	for i, tk := range keep {
		v, err := a.Load(tk)
		if err != nil || v[0] != byte(i)|1 || v[4095] != byte(i)|1 {
			t.Fatalf("live slot damaged by Trim: %v", err)
		}
	}
	for i := 8; i < 512; i++ {
		tk, p, err := a.Alloc()
		if err != nil {
			t.Fatalf("Alloc after Trim: %v", err)
		}
		if *p != (page{}) {
			t.Fatalf("recycled slot after Trim not zeroed")
		}
		if tk == ts[i] {
			t.Fatal("token reissued")
		}
	}
	if _, _, err := a.Alloc(); !errors.Is(err, arena.ErrFull) {
		t.Errorf("capacity changed by Trim: %v", err)
	}
	if rel2, err := a.Trim(); err != nil || rel2 != 0 {
		t.Errorf("Trim of a full arena = %d, %v", rel2, err)
	}
}

// ---------------------------------------------------------------- message: Store

func TestStorePutDefaults(t *testing.T) {
	s := newStore[pay](t, 16)
	sz := uint32(unsafe.Sizeof(pay{}))
	cases := []struct {
		name     string
		h        message.Header
		wantSize uint32
		stamp    bool
	}{
		{"zero", message.Header{}, sz, true},
		{"size", message.Header{Size: 5}, 5, true},
		{"created", message.Header{Created: 42}, sz, false},
		{"all", message.Header{Trace: 1, Seq: 2, Created: 3, Deadline: message.Now() + int64(time.Hour), QoS: message.LatencyCritical, Flags: message.FirstInBatch | message.DegradeAllowed, Size: 1000}, 1000, false},
	}
	ways := []struct {
		name string
		put  func(h message.Header) (token.Token, error)
	}{
		{"Put", func(h message.Header) (token.Token, error) { return s.Put(h, pay{A: 1}) }},
		{"PutWait", func(h message.Header) (token.Token, error) { return s.PutWait(context.Background(), h, pay{A: 1}) }},
		{"PutFunc", func(h message.Header) (token.Token, error) {
			return s.PutFunc(h, func(m *message.Message[pay]) error {
				if h.Size == 0 && m.Header.Size != sz {
					return fmt.Errorf("fill saw Size %d, want %d", m.Header.Size, sz)
				}
				if h.Created == 0 && m.Header.Created == 0 {
					return errors.New("fill saw Created 0")
				}
				if m.Payload != (pay{}) {
					return errors.New("slot not zeroed")
				}
				m.Payload.A = 1
				return nil
			})
		}},
	}
	for _, w := range ways {
		for _, c := range cases {
			t.Run(w.name+"/"+c.name, func(t *testing.T) {
				before := message.Now()
				tk, err := w.put(c.h)
				after := message.Now()
				if err != nil {
					t.Fatal(err)
				}
				defer s.Free(tk)
				h, err := s.Header(tk)
				if err != nil {
					t.Fatal(err)
				}
				if h.Size != c.wantSize {
					t.Errorf("Size = %d, want %d", h.Size, c.wantSize)
				}
				if c.stamp {
					if h.Created < before || h.Created > after {
						t.Errorf("Created %d not stamped within [%d,%d]", h.Created, before, after)
					}
				} else if h.Created != c.h.Created {
					t.Errorf("Created = %d, want %d", h.Created, c.h.Created)
				}
				want := c.h
				want.Size, want.Created = h.Size, h.Created
				if h != want {
					t.Errorf("Header = %+v, want %+v", h, want)
				}
				if payloadA(t, s, tk) != 1 {
					t.Error("payload lost")
				}
			})
		}
	}
	if s.Available() != s.Capacity() {
		t.Errorf("Available %d Capacity %d", s.Available(), s.Capacity())
	}
}

func TestByteStoreSizes(t *testing.T) {
	bs, err := message.NewByteStore[[256]byte](arena.Config{Slots: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	e := newEdge(t, bs, message.Policy{})
	cases := []struct {
		name string
		do   func() (token.Token, error)
		want uint32
	}{
		{"PutBytes10", func() (token.Token, error) { return bs.PutBytes(message.Header{Size: 99}, make([]byte, 10)) }, 10},
		{"PutBytes0", func() (token.Token, error) { return bs.PutBytes(message.Header{Size: 99}, nil) }, 0},
		{"Write7", func() (token.Token, error) {
			return bs.Write(message.Header{}, func(b []byte) (int, error) { return copy(b, "abcdefg"), nil })
		}, 7},
		{"PutWholeSlot", func() (token.Token, error) { return bs.Put(message.Header{}, [256]byte{}) }, 256},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tk, err := c.do()
			if err != nil {
				t.Fatal(err)
			}
			h, _ := bs.Header(tk)
			if h.Size != c.want {
				t.Errorf("Size = %d, want %d", h.Size, c.want)
			}
			if err := e.TrySend(tk); err != nil {
				t.Fatal(err)
			}
			if e.Bytes() != int64(c.want) {
				t.Errorf("edge Bytes = %d, want %d", e.Bytes(), c.want)
			}
			r, _ := e.TryRecv()
			_ = bs.Free(r)
		})
	}
	t.Run("TooLarge", func(t *testing.T) {
		av := bs.Available()
		if _, err := bs.PutBytes(message.Header{}, make([]byte, 257)); !errors.Is(err, message.ErrTooLarge) {
			t.Errorf("err = %v, want ErrTooLarge", err)
		}
		if bs.Available() != av {
			t.Error("slot lost")
		}
	})
	t.Run("ReadAppend", func(t *testing.T) {
		tk, _ := bs.PutBytes(message.Header{}, []byte("hello"))
		var got string
		_ = bs.Read(tk, func(h message.Header, d []byte) { got = string(d) })
		b, err := bs.AppendTo([]byte("x"), tk)
		if got != "hello" || string(b) != "xhello" || err != nil {
			t.Errorf("Read %q AppendTo %q %v", got, b, err)
		}
		_ = bs.Free(tk)
	})
}

func TestStoreRefcounts(t *testing.T) {
	s := newStore[pay](t, 4)
	tk := put(t, s, message.Header{}, 1)
	for i := 0; i < 3; i++ {
		if err := s.Retain(tk); err != nil {
			t.Fatal(err)
		}
	}
	if refs(t, s, tk) != 4 {
		t.Fatalf("Refs = %d, want 4", refs(t, s, tk))
	}
	for i := 0; i < 3; i++ {
		if err := s.Free(tk); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Header(tk); err != nil {
			t.Fatalf("message gone with %d refs left: %v", 3-i, err)
		}
	}
	if s.Available() != 3 {
		t.Errorf("Available = %d with one live message", s.Available())
	}
	if err := s.Free(tk); err != nil {
		t.Fatal(err)
	}
	if s.Available() != 4 {
		t.Error("slot not recycled at last Free")
	}
	st := s.Stats()
	for op, err := range map[string]error{
		"Free":   s.Free(tk),
		"Retain": s.Retain(tk),
		"Header": func() error { _, err := s.Header(tk); return err }(),
		"View":   s.View(tk, func(*message.Message[pay]) {}),
		"Update": s.Update(tk, func(*message.Message[pay]) {}),
	} {
		if !errors.Is(err, arena.ErrStale) {
			t.Errorf("%s of a freed token = %v, want ErrStale", op, err)
		}
	}
	if s.Stats() != st || s.Available() != 4 {
		t.Error("one Free too many changed something")
	}
	for op, err := range map[string]error{
		"FreeNil":   s.Free(token.Nil),
		"RetainNil": s.Retain(token.Nil),
		"FreeRange": s.Free(token.New(1000, 1)),
	} {
		if !errors.Is(err, arena.ErrBadToken) {
			t.Errorf("%s = %v, want ErrBadToken", op, err)
		}
	}
	t.Run("nilCallbacks", func(t *testing.T) {
		tk := put(t, s, message.Header{}, 1)
		defer s.Free(tk)
		for name, f := range map[string]func() error{
			"View":   func() error { return s.View(tk, nil) },
			"Update": func() error { return s.Update(tk, nil) },
		} {
			var err error
			if p := noPanic(func() { err = f() }); p != nil {
				t.Errorf("%s(nil) panicked: %v", name, p)
			} else if err == nil {
				t.Errorf("%s(nil) = nil error", name)
			}
		}
	})
	t.Run("full", func(t *testing.T) {
		var ts []token.Token
		for i := 0; i < 4; i++ {
			ts = append(ts, put(t, s, message.Header{}, 1))
		}
		if _, err := s.Put(message.Header{}, pay{}); !errors.Is(err, arena.ErrFull) {
			t.Errorf("Put on full = %v", err)
		}
		for _, tk := range ts {
			_ = s.Free(tk)
		}
	})
}

func TestStoreClose(t *testing.T) {
	t.Run("clean", func(t *testing.T) {
		s, _ := message.NewStore[pay](arena.Config{Slots: 4})
		tk, _ := s.Put(message.Header{}, pay{})
		_ = s.Free(tk)
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		ctx := ctxT(t, wait)
		cases := map[string]func() error{
			"Put":     func() error { _, err := s.Put(message.Header{}, pay{}); return err },
			"PutWait": func() error { _, err := s.PutWait(ctx, message.Header{}, pay{}); return err },
			"PutFunc": func() error {
				_, err := s.PutFunc(message.Header{}, func(*message.Message[pay]) error { return nil })
				return err
			},
			"Header": func() error { _, err := s.Header(tk); return err },
			"View":   func() error { return s.View(tk, func(*message.Message[pay]) {}) },
			"Update": func() error { return s.Update(tk, func(*message.Message[pay]) {}) },
			"Retain": func() error { return s.Retain(tk) },
			"Free":   func() error { return s.Free(tk) },
			"Trim":   func() error { _, err := s.Trim(); return err },
			"Close":  func() error { return s.Close() },
		}
		for name, f := range cases {
			t.Run(name, func(t *testing.T) {
				var err error
				if !within(wait, func() { err = f() }) {
					t.Fatal("blocked")
				}
				if !errors.Is(err, arena.ErrClosed) {
					t.Errorf("%s after Close = %v, want ErrClosed", name, err)
				}
			})
		}
		for tk := range s.Tokens() {
			t.Errorf("Tokens yielded %v after Close", tk)
		}
	})
	t.Run("referenced", func(t *testing.T) {
		s, _ := message.NewStore[pay](arena.Config{Slots: 4})
		e := newEdge(t, s, message.Policy{})
		a, _ := s.Put(message.Header{}, pay{})
		_ = s.Retain(a)
		b, _ := s.Put(message.Header{}, pay{})
		if err := e.TrySend(b); err != nil {
			t.Fatal(err)
		}
		err := s.Close()
		if !errors.Is(err, message.ErrReferenced) {
			t.Fatalf("Close with refs = %v, want ErrReferenced", err)
		}
		if _, err := s.Put(message.Header{}, pay{}); !errors.Is(err, arena.ErrClosed) {
			t.Errorf("store not closed after ErrReferenced: %v", err)
		}
		if err := s.Free(a); err != nil {
			t.Errorf("first outstanding Free after Close = %v, want nil", err)
		}
		if err := s.Free(a); err != nil {
			t.Errorf("second outstanding Free after Close = %v, want nil", err)
		}
		if err := s.Free(a); !errors.Is(err, arena.ErrClosed) {
			t.Errorf("third Free after Close = %v, want ErrClosed", err)
		}
		_ = e.Close()
		if n := e.Drain(); n != 1 {
			t.Errorf("Drain = %d", n)
		}
		if fe := e.Stats().FreeErrors; fe != 0 {
			t.Errorf("edge drained after store Close counted %d FreeErrors", fe)
		}
		if err := s.Close(); !errors.Is(err, arena.ErrClosed) {
			t.Errorf("second Close = %v", err)
		}
	})
}

// Issue: "Every Store and ByteStore method must be safe against a concurrent
// Close: an error, never a fault."
func TestStoreCloseRacingEveryMethod(t *testing.T) {
	iters := 20
	if testing.Short() {
		iters = 5
	}
	for it := 0; it < iters; it++ {
		bs, err := message.NewByteStore[[1024]byte](arena.Config{Slots: 64, Shards: 2})
		if err != nil {
			t.Fatal(err)
		}
		var s *message.Store[[1024]byte] = bs.Store
		var wg sync.WaitGroup
		var stop atomic.Bool
		faults := make(chan string, 128)
		report := func(op string, err error) {
			if err == nil || errors.Is(err, arena.ErrClosed) || errors.Is(err, arena.ErrFull) ||
				errors.Is(err, arena.ErrStale) || errors.Is(err, message.ErrReferenced) || errors.Is(err, context.DeadlineExceeded) {
				return
			}
			select {
			case faults <- op + ": " + err.Error():
			default:
			}
		}
		data := make([]byte, 700)
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				defer func() {
					if p := recover(); p != nil {
						faults <- fmt.Sprintf("goroutine %d panicked: %v", g, p)
					}
				}()
				buf := make([]byte, 0, 2048)
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				defer cancel()
				for i := 0; i < 100000; i++ {
					var tk token.Token
					var err error
					switch (g + i) % 5 {
					case 0:
						tk, err = s.Put(message.Header{}, [1024]byte{1})
						report("Put", err)
					case 1:
						tk, err = s.PutFunc(message.Header{}, func(m *message.Message[[1024]byte]) error {
							for j := range m.Payload {
								m.Payload[j] = byte(j)
							}
							return nil
						})
						report("PutFunc", err)
					case 2:
						tk, err = bs.PutBytes(message.Header{}, data)
						report("PutBytes", err)
					case 3:
						tk, err = bs.Write(message.Header{}, func(b []byte) (int, error) { return copy(b, data), nil })
						report("Write", err)
					case 4:
						tk, err = s.PutWait(ctx, message.Header{}, [1024]byte{})
						report("PutWait", err)
					}
					if err != nil {
						if stop.Load() {
							return
						}
						continue
					}
					report("Retain", s.Retain(tk))
					_, err = s.Header(tk)
					report("Header", err)
					report("View", s.View(tk, func(m *message.Message[[1024]byte]) { _ = m.Payload[1023] }))
					report("Update", s.Update(tk, func(m *message.Message[[1024]byte]) { m.Payload[1023]++ }))
					report("Read", bs.Read(tk, func(_ message.Header, d []byte) { _ = len(d) }))
					report("Rewrite", bs.Rewrite(tk, func(b []byte, n int) int { b[0] = 9; return n }))
					buf, err = bs.AppendTo(buf[:0], tk)
					report("AppendTo", err)
					_, err = s.Refs(tk)
					report("Refs", err)
					if i%64 == 0 {
						_, err = s.Trim()
						report("Trim", err)
						for x := range s.Tokens() {
							_ = x
							break
						}
					}
					_ = s.Available()
					_ = s.Capacity()
					_ = s.Stats()
					report("Free", s.Free(tk))
					report("Free", s.Free(tk))
				}
			}(g)
		}
		time.Sleep(time.Duration(it%4) * time.Millisecond)
		var cerr error
		if !within(wait, func() { cerr = s.Close() }) {
			t.Fatal("Close hung")
		}
		report("Close", cerr)
		stop.Store(true)
		if !within(2*wait, wg.Wait) {
			t.Fatal("methods hung after Close")
		}
		close(faults)
		for f := range faults {
			t.Errorf("iteration %d: %s", it, f)
		}
	}
}

// Issue: "NewStore's Go heap growth is O(1), under 4 MiB for 2^27 slots, and
// its metadata lives off the Go heap, committed as slots are used."
func TestNewStoreHugeIsCheap(t *testing.T) {
	const slots = 1 << 27
	var m0, m1, m2 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	rss0 := rssBytes()
	s, err := message.NewStore[pay](arena.Config{Slots: slots})
	if err != nil {
		t.Fatalf("NewStore(2^27): %v", err)
	}
	runtime.ReadMemStats(&m1)
	rss1 := rssBytes()
	runtime.GC()
	runtime.ReadMemStats(&m2)
	const limit = 4 << 20
	t.Logf("NewStore(2^27): HeapAlloc +%d (live +%d), TotalAlloc +%d, RSS +%d KiB",
		int64(m1.HeapAlloc)-int64(m0.HeapAlloc), int64(m2.HeapAlloc)-int64(m0.HeapAlloc), m1.TotalAlloc-m0.TotalAlloc, (rss1-rss0)>>10)
	if d := int64(m1.HeapAlloc) - int64(m0.HeapAlloc); d >= limit {
		t.Errorf("HeapAlloc grew by %d bytes during NewStore(2^27), want < 4 MiB", d)
	}
	if d := int64(m2.HeapAlloc) - int64(m0.HeapAlloc); d >= limit {
		t.Errorf("live HeapAlloc grew by %d bytes after NewStore(2^27), want < 4 MiB", d)
	}
	if d := m1.TotalAlloc - m0.TotalAlloc; d >= limit {
		t.Errorf("NewStore(2^27) allocated %d bytes on the Go heap in total, want < 4 MiB", d)
	}
	if rss0 > 0 && rss1-rss0 > 64<<20 {
		t.Errorf("RSS grew by %d MiB at NewStore(2^27): metadata committed up front", (rss1-rss0)>>20)
	}
	// used slots commit memory, and work, at both ends of the index space
	var ts []token.Token
	for i := 0; i < 1000; i++ {
		tk, err := s.Put(message.Header{}, pay{A: uint64(i)})
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, tk)
	}
	if s.Capacity() != slots || s.Available() != slots-1000 {
		t.Errorf("Capacity/Available = %d/%d", s.Capacity(), s.Available())
	}
	for _, tk := range ts {
		_ = s.Free(tk)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	runtime.KeepAlive(s)
}

func rssBytes() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func TestStorePutWait(t *testing.T) {
	t.Run("ctx", func(t *testing.T) {
		s := newStore[pay](t, 1)
		hold := put(t, s, message.Header{}, 1)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		var err error
		if !within(wait, func() { _, err = s.PutWait(ctx, message.Header{}, pay{}) }) {
			t.Fatal("hung")
		}
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ctx.Err()) {
			t.Errorf("err = %v", err)
		}
		_ = s.Free(hold)
		if s.Available() != 1 {
			t.Error("slot lost when waiter gave up")
		}
	})
	t.Run("nilCtxAndWake", func(t *testing.T) {
		s := newStore[pay](t, 1)
		hold := put(t, s, message.Header{}, 1)
		time.AfterFunc(50*time.Millisecond, func() { _ = s.Free(hold) })
		var tk token.Token
		var err error
		if !within(wait, func() {
			//lint:ignore SA1012 a nil context is what is tested
			tk, err = s.PutWait(nil, message.Header{}, pay{A: 5})
		}) {
			t.Fatal("PutWait(nil) hung")
		}
		if err != nil || payloadA(t, s, tk) != 5 {
			t.Fatalf("PutWait(nil): %v", err)
		}
		h, _ := s.Header(tk)
		if h.Size != uint32(unsafe.Sizeof(pay{})) || h.Created == 0 {
			t.Errorf("PutWait defaults: %+v", h)
		}
	})
	t.Run("closeWakes", func(t *testing.T) {
		s, _ := message.NewStore[pay](arena.Config{Slots: 1})
		hold, _ := s.Put(message.Header{}, pay{})
		time.AfterFunc(50*time.Millisecond, func() { _ = s.Close() })
		var err error
		if !within(wait, func() { _, err = s.PutWait(context.Background(), message.Header{}, pay{}) }) {
			t.Fatal("Close did not wake PutWait")
		}
		if !errors.Is(err, arena.ErrClosed) {
			t.Errorf("err = %v, want ErrClosed", err)
		}
		_ = s.Free(hold)
	})
	t.Run("fifo", func(t *testing.T) {
		s := newStore[pay](t, 1)
		hold := put(t, s, message.Header{}, 0)
		order := make(chan int, 4)
		var wg sync.WaitGroup
		for i := 0; i < 4; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				tk, err := s.PutWait(ctxT(t, 2*wait), message.Header{}, pay{A: uint64(i)})
				if err != nil {
					t.Error(err)
					return
				}
				order <- i
				time.Sleep(2 * time.Millisecond)
				_ = s.Free(tk)
			}(i)
			time.Sleep(30 * time.Millisecond)
		}
		_ = s.Free(hold)
		if !within(2*wait, wg.Wait) {
			t.Fatal("hung")
		}
		close(order)
		i := 0
		for got := range order {
			if got != i {
				t.Errorf("PutWait served %d as #%d", got, i)
			}
			i++
		}
	})
}

func TestStoreTokensAndTrim(t *testing.T) {
	s := newStore[[4096]byte](t, 256)
	var ts []token.Token
	for i := 0; i < 256; i++ {
		tk, err := s.Put(message.Header{Seq: uint64(i)}, [4096]byte{byte(i) | 1})
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, tk)
	}
	_ = s.Retain(ts[0]) // two refs: yielded once
	for _, tk := range ts[10:] {
		_ = s.Free(tk)
	}
	got := map[token.Token]int{}
	for tk := range s.Tokens() {
		got[tk]++
	}
	if len(got) != 10 {
		t.Errorf("Tokens yielded %d, want 10", len(got))
	}
	for _, tk := range ts[:10] {
		if got[tk] != 1 {
			t.Errorf("%v yielded %d times", tk, got[tk])
		}
	}
	// the body may Free the yielded token
	n := 0
	for tk := range s.Tokens() {
		if tk == ts[0] {
			_ = s.Free(tk)
		}
		n++
	}
	if n != 10 {
		t.Errorf("second pass yielded %d", n)
	}
	rel, err := s.Trim()
	if err != nil || rel <= 0 {
		t.Errorf("Trim = %d, %v; want bytes > 0 for 246 free 4 KiB slots", rel, err)
	}
	for _, tk := range ts[10:] {
		if _, err := s.Header(tk); !errors.Is(err, arena.ErrStale) {
			t.Fatalf("stale after Trim: %v", err)
		}
		if err := s.Free(tk); !errors.Is(err, arena.ErrStale) {
			t.Fatalf("Free of stale after Trim: %v", err)
		}
		if err := s.Retain(tk); !errors.Is(err, arena.ErrStale) {
			t.Fatalf("Retain of stale after Trim: %v", err)
		}
	}
	for i := 10; i < 256; i++ {
		tk, err := s.PutFunc(message.Header{}, func(m *message.Message[[4096]byte]) error {
			if m.Payload != ([4096]byte{}) {
				return errors.New("slot not zeroed after Trim")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if refs, _ := s.Refs(tk); refs != 1 {
			t.Fatalf("recycled message refs = %d", refs)
		}
	}
	for i, tk := range ts[:10] {
		h, err := s.Header(tk)
		if err != nil || h.Seq != uint64(i) {
			t.Fatalf("live message damaged by Trim: %+v %v", h, err)
		}
	}
}

// ---------------------------------------------------------------- message: Edge

func TestEdgeBadPolicy(t *testing.T) {
	s := newStore[pay](t, 4)
	for _, p := range []message.Policy{
		{MaxItems: -1}, {SoftItems: -1}, {MaxBytes: -1}, {SoftBytes: -1},
		{MaxItems: 2, SoftItems: 3}, {MaxBytes: 2, SoftBytes: 3}, {Admission: message.DeadlineQoS + 1},
	} {
		t.Run(fmt.Sprintf("%+v", p), func(t *testing.T) {
			if _, err := message.NewEdge(s, p); !errors.Is(err, message.ErrBadPolicy) {
				t.Errorf("NewEdge = %v, want ErrBadPolicy", err)
			}
		})
	}
	for _, p := range []message.Policy{{}, {SoftItems: 5}, {MaxItems: 3, SoftItems: 3}, {MaxBytes: 10, SoftBytes: 10, Admission: message.DeadlineQoS}} {
		if _, err := message.NewEdge(s, p); err != nil {
			t.Errorf("NewEdge(%+v): %v", p, err)
		}
	}
}

func TestEdgeLanesAndOrder(t *testing.T) {
	for _, adm := range []message.Admission{message.Block, message.DropNewest, message.DropOldest, message.DeadlineQoS} {
		for _, recv := range []string{"TryRecv", "Recv", "RecvBatch", "All"} {
			t.Run(adm.String()+"/"+recv, func(t *testing.T) {
				s := newStore[pay](t, 32)
				e := newEdge(t, s, message.Policy{Admission: adm})
				qos := []message.QoS{message.BestEffort, message.LatencyCritical, message.Background, 0, message.LatencyCritical, message.BestEffort, message.LatencyCritical}
				for i, q := range qos {
					if err := e.Send(ctxT(t, wait), put(t, s, message.Header{QoS: q}, uint64(i))); err != nil {
						t.Fatal(err)
					}
				}
				want := []uint64{1, 4, 6, 0, 2, 3, 5}
				var got []uint64
				ctx := ctxT(t, wait)
				switch recv {
				case "TryRecv":
					got = recvAll(t, s, e)
				case "Recv":
					for range qos {
						tk, err := e.Recv(ctx)
						if err != nil {
							t.Fatal(err)
						}
						got = append(got, payloadA(t, s, tk))
						_ = s.Free(tk)
					}
				case "RecvBatch":
					dst := make([]token.Token, 3)
					for len(got) < len(qos) {
						n, err := e.RecvBatch(ctx, dst)
						if err != nil {
							t.Fatal(err)
						}
						for _, tk := range dst[:n] {
							got = append(got, payloadA(t, s, tk))
							_ = s.Free(tk)
						}
					}
				case "All":
					_ = e.Close()
					for tk := range e.All(ctx) {
						got = append(got, payloadA(t, s, tk))
						_ = s.Free(tk)
					}
				}
				if !eqU(got, want) {
					t.Errorf("received %v, want %v (LatencyCritical first, FIFO per lane)", got, want)
				}
				checkQuietEdge(t, e)
				if s.Available() != s.Capacity() {
					t.Error("slot lost")
				}
			})
		}
	}
}

func TestEdgeCapsPerAdmission(t *testing.T) {
	sz := int64(unsafe.Sizeof(pay{}))
	type step struct {
		qos    message.QoS
		size   uint32
		wantOK bool
		want   error
	}
	cases := []struct {
		name     string
		pol      message.Policy
		steps    []step
		wantRecv []uint64 // payload A (= step index) in receive order
		evicted  uint64
	}{
		{"Block/items", message.Policy{MaxItems: 2, Admission: message.Block},
			[]step{{0, 0, true, nil}, {0, 0, true, nil}, {0, 0, false, message.ErrEdgeFull}}, []uint64{0, 1}, 0},
		{"DropNewest/items", message.Policy{MaxItems: 2, Admission: message.DropNewest},
			[]step{{0, 0, true, nil}, {0, 0, true, nil}, {message.LatencyCritical, 0, false, message.ErrEdgeFull}}, []uint64{0, 1}, 0},
		{"DropOldest/items/anyLane", message.Policy{MaxItems: 2, Admission: message.DropOldest},
			[]step{{message.LatencyCritical, 0, true, nil}, {0, 0, true, nil}, {message.Background, 0, true, nil}}, []uint64{1, 2}, 1},
		{"DropNewest/bytes/default size", message.Policy{MaxBytes: 2*sz + sz/2, Admission: message.DropNewest},
			[]step{{0, 0, true, nil}, {0, 0, true, nil}, {0, 0, false, message.ErrEdgeFull}}, []uint64{0, 1}, 0},
		{"DropOldest/bytes/evictsUntilFits", message.Policy{MaxBytes: 100, Admission: message.DropOldest},
			// 90 queued; a 90-byte send evicts the two oldest (10+90 == 100 fits at the cap)
			[]step{{0, 40, true, nil}, {0, 40, true, nil}, {0, 10, true, nil}, {0, 90, true, nil}}, []uint64{2, 3}, 2},
		{"DropOldest/bytes/evictsAll", message.Policy{MaxBytes: 100, Admission: message.DropOldest},
			[]step{{0, 40, true, nil}, {0, 40, true, nil}, {0, 10, true, nil}, {0, 95, true, nil}}, []uint64{3}, 3},
		{"DropOldest/bytes/tooBigForCap", message.Policy{MaxBytes: 100, Admission: message.DropOldest},
			[]step{{0, 40, true, nil}, {0, 101, false, message.ErrRejected}}, []uint64{0}, 0},
		{"Block/bytes/tooBigForCap", message.Policy{MaxBytes: 100},
			[]step{{0, 101, false, message.ErrRejected}}, nil, 0},
		{"DeadlineQoS/evictLowestOldest", message.Policy{MaxItems: 3, Admission: message.DeadlineQoS},
			[]step{{message.BestEffort, 0, true, nil}, {message.Background, 0, true, nil}, {message.BestEffort, 0, true, nil},
				{message.LatencyCritical, 0, true, nil},             // evicts #1 (Background)
				{message.Background, 0, false, message.ErrEdgeFull}, // nothing lower or equal
				{message.BestEffort, 0, true, nil},                  // evicts #0 (oldest BestEffort)
			}, []uint64{3, 2, 5}, 2},
		{"DeadlineQoS/neverHigherQoS", message.Policy{MaxItems: 2, Admission: message.DeadlineQoS},
			[]step{{message.LatencyCritical, 0, true, nil}, {message.LatencyCritical, 0, true, nil},
				{message.BestEffort, 0, false, message.ErrEdgeFull}, {message.Background, 0, false, message.ErrEdgeFull},
				{message.LatencyCritical, 0, true, nil}}, []uint64{1, 4}, 1},
		{"DeadlineQoS/softShedsBackground", message.Policy{MaxItems: 4, SoftItems: 2, Admission: message.DeadlineQoS},
			[]step{{message.Background, 0, true, nil}, {message.BestEffort, 0, true, nil},
				{message.Background, 0, false, message.ErrRejected},
				{message.BestEffort, 0, true, nil}, {message.LatencyCritical, 0, true, nil},
				{message.LatencyCritical, 0, true, nil}, // evicts #0 Background
			}, []uint64{4, 5, 1, 3}, 1},
		{"DeadlineQoS/noSoftBackgroundCompetes", message.Policy{MaxItems: 2, Admission: message.DeadlineQoS},
			[]step{{message.Background, 0, true, nil}, {message.Background, 0, true, nil}, {message.Background, 0, true, nil}}, []uint64{1, 2}, 1},
		{"DeadlineQoS/softBytes", message.Policy{MaxBytes: 100, SoftBytes: 50, Admission: message.DeadlineQoS},
			[]step{{message.BestEffort, 50, true, nil}, {message.Background, 1, false, message.ErrRejected}, {message.BestEffort, 50, true, nil},
				{message.BestEffort, 1, true, nil}}, []uint64{2, 3}, 1},
		{"invalidQoS", message.Policy{},
			[]step{{message.QoS(9), 0, false, message.ErrRejected}, {0, 0, true, nil}}, []uint64{1}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newStore[pay](t, 16)
			e := newEdge(t, s, c.pol)
			var evictedToks []token.Token
			var admitted []token.Token
			for i, st := range c.steps {
				tk := put(t, s, message.Header{QoS: st.qos, Size: st.size}, uint64(i))
				var err error
				if c.pol.Admission == message.Block && !st.wantOK {
					err = e.TrySend(tk)
				} else {
					err = e.Send(ctxT(t, wait), tk)
				}
				if st.wantOK != (err == nil) || (st.want != nil && !errors.Is(err, st.want)) {
					t.Fatalf("step %d (QoS %v size %d): err = %v, want ok=%v %v", i, st.qos, st.size, err, st.wantOK, st.want)
				}
				if errors.Is(err, message.ErrEdgeFull) && !errors.Is(err, message.ErrRejected) {
					t.Errorf("ErrEdgeFull does not match ErrRejected")
				}
				if err != nil {
					if refs(t, s, tk) != 1 {
						t.Errorf("refused send took the caller's reference")
					}
					_ = s.Free(tk)
				} else {
					admitted = append(admitted, tk)
				}
				if c.pol.MaxItems > 0 && e.Len() > c.pol.MaxItems {
					t.Errorf("Len %d > MaxItems %d", e.Len(), c.pol.MaxItems)
				}
				if c.pol.MaxBytes > 0 && e.Bytes() > c.pol.MaxBytes {
					t.Errorf("Bytes %d > MaxBytes %d", e.Bytes(), c.pol.MaxBytes)
				}
			}
			st := e.Stats()
			if st.Evicted != c.evicted {
				t.Errorf("Stats.Evicted = %d, want %d", st.Evicted, c.evicted)
			}
			// evicted messages were freed
			for _, tk := range admitted {
				if _, err := s.Header(tk); err != nil {
					evictedToks = append(evictedToks, tk)
				}
			}
			if uint64(len(evictedToks)) != c.evicted {
				t.Errorf("%d admitted messages freed, want %d evicted", len(evictedToks), c.evicted)
			}
			if got := recvAll(t, s, e); !eqU(got, c.wantRecv) {
				t.Errorf("received %v, want %v", got, c.wantRecv)
			}
			checkQuietEdge(t, e)
			if s.Available() != s.Capacity() {
				t.Errorf("slot lost: Available %d Capacity %d", s.Available(), s.Capacity())
			}
		})
	}
}

func TestEdgeWatermark(t *testing.T) {
	s := newStore[pay](t, 16)
	cases := []struct {
		name string
		pol  message.Policy
		size uint32
		want []message.Watermark // after 0,1,2,... sends
	}{
		{"items", message.Policy{MaxItems: 4, SoftItems: 2}, 1,
			[]message.Watermark{message.BelowSoft, message.BelowSoft, message.SoftReached, message.SoftReached, message.HardReached}},
		{"bytes", message.Policy{MaxBytes: 30, SoftBytes: 20}, 10,
			[]message.Watermark{message.BelowSoft, message.BelowSoft, message.SoftReached, message.HardReached}},
		{"hardOnly", message.Policy{MaxItems: 2}, 1,
			[]message.Watermark{message.BelowSoft, message.BelowSoft, message.HardReached}},
		{"softOnly", message.Policy{SoftItems: 1}, 1,
			[]message.Watermark{message.BelowSoft, message.SoftReached, message.SoftReached}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEdge(t, s, c.pol)
			for i, w := range c.want {
				if i > 0 {
					if err := e.TrySend(put(t, s, message.Header{Size: c.size}, 0)); err != nil {
						t.Fatal(err)
					}
				}
				if e.Watermark() != w || e.Stats().Watermark != w {
					t.Errorf("after %d sends: Watermark %v / Stats %v, want %v", i, e.Watermark(), e.Stats().Watermark, w)
				}
			}
			st := e.Stats()
			if st.HighWater != len(c.want)-1 || st.Len != e.Len() || st.Bytes != e.Bytes() || st.Bytes != int64(c.size)*int64(e.Len()) {
				t.Errorf("Stats %+v, Len %d Bytes %d", st, e.Len(), e.Bytes())
			}
			_ = e.Close()
			if n := e.Drain(); n != len(c.want)-1 {
				t.Errorf("Drain = %d", n)
			}
			if e.Stats().Drained != uint64(len(c.want)-1) || e.Len() != 0 || e.Bytes() != 0 {
				t.Errorf("after Drain: %+v", e.Stats())
			}
			checkQuietEdge(t, e)
		})
	}
	if s.Available() != s.Capacity() {
		t.Error("Drain did not free")
	}
}

func TestEdgeBlock(t *testing.T) {
	t.Run("sendWaitsForRoom", func(t *testing.T) {
		s := newStore[pay](t, 8)
		e := newEdge(t, s, message.Policy{MaxItems: 1})
		_ = e.TrySend(put(t, s, message.Header{}, 0))
		time.AfterFunc(50*time.Millisecond, func() { tk, _ := e.TryRecv(); _ = s.Free(tk) })
		start := time.Now()
		if err := e.Send(ctxT(t, wait), put(t, s, message.Header{}, 1)); err != nil {
			t.Fatal(err)
		}
		if time.Since(start) < 30*time.Millisecond {
			t.Error("Send did not wait")
		}
		if st := e.Stats(); st.Waited != 1 {
			t.Errorf("Waited = %d", st.Waited)
		}
		if got := recvAll(t, s, e); !eqU(got, []uint64{1}) {
			t.Errorf("got %v", got)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		s := newStore[pay](t, 8)
		e := newEdge(t, s, message.Policy{MaxBytes: 100})
		_ = e.TrySend(put(t, s, message.Header{Size: 60}, 0))
		tk := put(t, s, message.Header{Size: 60}, 1)
		if err := e.TrySend(tk); !errors.Is(err, message.ErrEdgeFull) {
			t.Errorf("TrySend = %v, want ErrEdgeFull", err)
		}
		time.AfterFunc(30*time.Millisecond, func() { r, _ := e.TryRecv(); _ = s.Free(r) })
		if err := e.Send(ctxT(t, wait), tk); err != nil {
			t.Fatal(err)
		}
		recvAll(t, s, e)
	})
	for _, c := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 40*time.Millisecond)
		}, context.DeadlineExceeded},
		{"alreadyDone", func() (context.Context, context.CancelFunc) {
			ctx, c := context.WithCancel(context.Background())
			c()
			return ctx, c
		}, context.Canceled},
	} {
		t.Run("ctx/"+c.name, func(t *testing.T) {
			s := newStore[pay](t, 8)
			e := newEdge(t, s, message.Policy{MaxItems: 1})
			_ = e.TrySend(put(t, s, message.Header{}, 0))
			tk := put(t, s, message.Header{}, 1)
			ctx, cancel := c.ctx()
			defer cancel()
			var err error
			if !within(wait, func() { err = e.Send(ctx, tk) }) {
				t.Fatal("hung")
			}
			if !errors.Is(err, c.want) {
				t.Errorf("Send = %v, want %v", err, c.want)
			}
			if refs(t, s, tk) != 1 || e.Len() != 1 {
				t.Error("caller lost its reference")
			}
			st := e.Stats()
			if st.Rejected != 1 || st.Waited != 1 {
				t.Errorf("Stats Rejected %d Waited %d, want 1 and 1 (godoc: also one whose ctx was already done)", st.Rejected, st.Waited)
			}
			_ = s.Free(tk)
		})
	}
	t.Run("nilCtx", func(t *testing.T) {
		s := newStore[pay](t, 8)
		e := newEdge(t, s, message.Policy{MaxItems: 1})
		_ = e.TrySend(put(t, s, message.Header{}, 0))
		time.AfterFunc(50*time.Millisecond, func() { r, _ := e.TryRecv(); _ = s.Free(r) })
		var err error
		if !within(wait, func() {
			//lint:ignore SA1012 a nil context is what is tested
			err = e.Send(nil, put(t, s, message.Header{}, 1))
		}) {
			t.Fatal("Send(nil) hung")
		}
		if err != nil {
			t.Fatal(err)
		}
		var tk token.Token
		time.AfterFunc(30*time.Millisecond, func() { _ = e.TrySend(put(t, s, message.Header{}, 2)) })
		recvAll(t, s, e)
		if !within(wait, func() {
			//lint:ignore SA1012 a nil context is what is tested
			tk, err = e.Recv(nil)
		}) {
			t.Fatal("Recv(nil) hung")
		}
		if err != nil || payloadA(t, s, tk) != 2 {
			t.Fatalf("Recv(nil) = %v", err)
		}
		_ = s.Free(tk)
	})
	t.Run("fifoSenders", func(t *testing.T) {
		s := newStore[pay](t, 16)
		e := newEdge(t, s, message.Policy{MaxItems: 1})
		_ = e.TrySend(put(t, s, message.Header{}, 100))
		var wg sync.WaitGroup
		for i := 0; i < 4; i++ {
			wg.Add(1)
			tk := put(t, s, message.Header{}, uint64(i))
			go func() { defer wg.Done(); _ = e.Send(ctxT(t, wait), tk) }()
			time.Sleep(20 * time.Millisecond)
		}
		var got []uint64
		ctx := ctxT(t, wait)
		for i := 0; i < 5; i++ {
			tk, err := e.Recv(ctx)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, payloadA(t, s, tk))
			_ = s.Free(tk)
			time.Sleep(5 * time.Millisecond)
		}
		wg.Wait()
		if !eqU(got, []uint64{100, 0, 1, 2, 3}) {
			t.Errorf("blocked senders admitted in order %v, want FIFO", got)
		}
	})
}

func TestEdgeRecvAndClose(t *testing.T) {
	t.Run("recvCtx", func(t *testing.T) {
		s := newStore[pay](t, 4)
		e := newEdge(t, s, message.Policy{})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		if _, err := e.Recv(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Recv = %v", err)
		}
		if n, err := e.RecvBatch(ctx, make([]token.Token, 4)); n != 0 || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("RecvBatch = %d %v", n, err)
		}
		if _, ok := e.TryRecv(); ok {
			t.Error("TryRecv on empty")
		}
	})
	t.Run("closeSemantics", func(t *testing.T) {
		s := newStore[pay](t, 8)
		e := newEdge(t, s, message.Policy{MaxItems: 2})
		_ = e.TrySend(put(t, s, message.Header{}, 0))
		_ = e.TrySend(put(t, s, message.Header{}, 1))
		// a parked sender and a parked receiver on another edge are woken
		blocked := put(t, s, message.Header{}, 2)
		sendErr := make(chan error, 1)
		go func() { sendErr <- e.Send(context.Background(), blocked) }()
		e2 := newEdge(t, s, message.Policy{})
		recvErr := make(chan error, 1)
		go func() { _, err := e2.Recv(context.Background()); recvErr <- err }()
		time.Sleep(30 * time.Millisecond)
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		if err := e2.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-sendErr:
			if !errors.Is(err, message.ErrEdgeClosed) {
				t.Errorf("parked Send = %v", err)
			}
		case <-time.After(wait):
			t.Fatal("Close did not wake sender")
		}
		select {
		case err := <-recvErr:
			if !errors.Is(err, message.ErrEdgeClosed) {
				t.Errorf("parked Recv = %v", err)
			}
		case <-time.After(wait):
			t.Fatal("Close did not wake receiver")
		}
		if refs(t, s, blocked) != 1 {
			t.Error("refused sender lost its reference")
		}
		if err := e.TrySend(blocked); !errors.Is(err, message.ErrEdgeClosed) {
			t.Errorf("TrySend on closed = %v", err)
		}
		if n, err := e.SendBatch(context.Background(), []token.Token{blocked}); n != 0 || !errors.Is(err, message.ErrEdgeClosed) {
			t.Errorf("SendBatch on closed = %d %v", n, err)
		}
		_ = s.Free(blocked)
		if err := e.Close(); !errors.Is(err, message.ErrEdgeClosed) {
			t.Errorf("second Close = %v, want ErrEdgeClosed", err)
		}
		if !e.Closed() {
			t.Error("Closed() false")
		}
		// receivers drain, then ErrEdgeClosed
		ctx := ctxT(t, wait)
		for i := 0; i < 2; i++ {
			tk, err := e.Recv(ctx)
			if err != nil {
				t.Fatalf("drain Recv %d: %v", i, err)
			}
			if payloadA(t, s, tk) != uint64(i) {
				t.Error("order")
			}
			_ = s.Free(tk)
		}
		if _, err := e.Recv(ctx); !errors.Is(err, message.ErrEdgeClosed) {
			t.Errorf("Recv on closed empty = %v", err)
		}
		if n, err := e.RecvBatch(ctx, make([]token.Token, 2)); n != 0 || !errors.Is(err, message.ErrEdgeClosed) {
			t.Errorf("RecvBatch on closed empty = %d %v", n, err)
		}
		if _, ok := e.TryRecv(); ok {
			t.Error("TryRecv on closed empty")
		}
		checkQuietEdge(t, e)
		if s.Available() != s.Capacity() {
			t.Error("slot lost")
		}
	})
	t.Run("invalidTokens", func(t *testing.T) {
		s := newStore[pay](t, 4)
		e := newEdge(t, s, message.Policy{})
		stale := put(t, s, message.Header{}, 0)
		_ = s.Free(stale)
		cases := []struct {
			tk   token.Token
			want error
		}{{token.Nil, arena.ErrBadToken}, {stale, arena.ErrStale}, {token.New(999, 1), arena.ErrBadToken}}
		for i, c := range cases {
			if err := e.TrySend(c.tk); !errors.Is(err, c.want) {
				t.Errorf("TrySend(%v) = %v, want %v", c.tk, err, c.want)
			}
			if err := e.Send(ctxT(t, wait), c.tk); !errors.Is(err, c.want) {
				t.Errorf("Send(%v) = %v, want %v", c.tk, err, c.want)
			}
			if got := e.Stats().Invalid; got != uint64(2*(i+1)) {
				t.Errorf("Stats.Invalid = %d, want %d", got, 2*(i+1))
			}
		}
		if e.Len() != 0 || e.Stats().Admitted != 0 {
			t.Error("invalid token admitted")
		}
	})
}

func TestEdgeDeadlines(t *testing.T) {
	t.Run("alreadyExpired", func(t *testing.T) {
		for _, adm := range []message.Admission{message.Block, message.DropNewest, message.DropOldest, message.DeadlineQoS} {
			s := newStore[pay](t, 4)
			e := newEdge(t, s, message.Policy{Admission: adm})
			tk := put(t, s, message.Header{Deadline: message.Now() - 1}, 0)
			for name, f := range map[string]func() error{
				"Send":    func() error { return e.Send(ctxT(t, wait), tk) },
				"TrySend": func() error { return e.TrySend(tk) },
				"SendBatch": func() error {
					n, err := e.SendBatch(ctxT(t, wait), []token.Token{tk})
					if n != 0 {
						return errors.New("n != 0")
					}
					return err
				},
			} {
				err := f()
				if !errors.Is(err, message.ErrExpired) || !errors.Is(err, message.ErrRejected) {
					t.Errorf("%v %s of expired = %v, want ErrExpired and ErrRejected", adm, name, err)
				}
				if refs(t, s, tk) != 1 {
					t.Errorf("%v %s: caller lost its reference", adm, name)
				}
			}
			_ = s.Free(tk)
		}
	})
	t.Run("expiresWhileQueued", func(t *testing.T) {
		for _, recv := range []string{"TryRecv", "Recv", "RecvBatch"} {
			s := newStore[pay](t, 8)
			e := newEdge(t, s, message.Policy{})
			exp := put(t, s, message.Header{Deadline: message.DeadlineIn(20 * time.Millisecond)}, 0)
			late := put(t, s, message.Header{Deadline: message.DeadlineIn(20 * time.Millisecond), Flags: message.DegradeAllowed}, 1)
			ok := put(t, s, message.Header{Deadline: message.DeadlineIn(time.Hour)}, 2)
			for _, tk := range []token.Token{exp, late, ok} {
				if err := e.TrySend(tk); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(40 * time.Millisecond)
			var got []uint64
			for len(got) < 2 {
				var ts []token.Token
				switch recv {
				case "TryRecv":
					if tk, k := e.TryRecv(); k {
						ts = append(ts, tk)
					} else {
						t.Fatalf("%s: TryRecv empty", recv)
					}
				case "Recv":
					tk, err := e.Recv(ctxT(t, wait))
					if err != nil {
						t.Fatal(err)
					}
					ts = append(ts, tk)
				case "RecvBatch":
					d := make([]token.Token, 4)
					n, err := e.RecvBatch(ctxT(t, wait), d)
					if err != nil {
						t.Fatal(err)
					}
					ts = d[:n]
				}
				for _, tk := range ts {
					got = append(got, payloadA(t, s, tk))
					_ = s.Free(tk)
				}
			}
			if !eqU(got, []uint64{1, 2}) {
				t.Errorf("%s: received %v, want [1 2] (expired one never delivered, DegradeAllowed delivered)", recv, got)
			}
			st := e.Stats()
			if st.Expired != 1 || st.Late != 1 || st.Delivered != 2 {
				t.Errorf("%s: Stats Expired %d Late %d Delivered %d, want 1 1 2", recv, st.Expired, st.Late, st.Delivered)
			}
			if _, err := s.Header(exp); !errors.Is(err, arena.ErrStale) {
				t.Errorf("%s: expired message not freed: %v", recv, err)
			}
			checkQuietEdge(t, e)
			if s.Available() != s.Capacity() {
				t.Errorf("%s: slot lost", recv)
			}
		}
	})
	t.Run("blockedSenderTakesExpiredRoom", func(t *testing.T) {
		s := newStore[pay](t, 4)
		e := newEdge(t, s, message.Policy{MaxItems: 1})
		_ = e.TrySend(put(t, s, message.Header{Deadline: message.DeadlineIn(40 * time.Millisecond)}, 0))
		var err error
		if !within(wait, func() { err = e.Send(ctxT(t, 2*time.Second), put(t, s, message.Header{}, 1)) }) {
			t.Fatal("hung")
		}
		if err != nil {
			t.Fatalf("Send = %v, want room from the expired message", err)
		}
		if e.Stats().Expired != 1 {
			t.Error("Expired not counted")
		}
		if got := recvAll(t, s, e); !eqU(got, []uint64{1}) {
			t.Errorf("got %v", got)
		}
	})
	t.Run("deadlineQoSFreesExpiredFirst", func(t *testing.T) {
		s := newStore[pay](t, 8)
		e := newEdge(t, s, message.Policy{MaxItems: 2, SoftItems: 1, Admission: message.DeadlineQoS})
		_ = e.TrySend(put(t, s, message.Header{QoS: message.LatencyCritical, Deadline: message.DeadlineIn(20 * time.Millisecond)}, 0))
		_ = e.TrySend(put(t, s, message.Header{QoS: message.LatencyCritical, Deadline: message.DeadlineIn(20 * time.Millisecond)}, 1))
		time.Sleep(40 * time.Millisecond)
		// full of expired LatencyCritical; a Background send: expired freed first, and the soft cap
		// counts only unexpired messages, so Background is admitted.
		if err := e.TrySend(put(t, s, message.Header{QoS: message.Background}, 2)); err != nil {
			t.Fatalf("Background into an edge full of expired messages: %v", err)
		}
		st := e.Stats()
		if st.Expired != 2 || st.Evicted != 0 {
			t.Errorf("Expired %d Evicted %d, want 2 0", st.Expired, st.Evicted)
		}
		if got := recvAll(t, s, e); !eqU(got, []uint64{2}) {
			t.Errorf("got %v", got)
		}
		checkQuietEdge(t, e)
	})
	t.Run("headerHelpers", func(t *testing.T) {
		var h message.Header
		if h.Expired(message.Now()) {
			t.Error("no deadline is never expired")
		}
		h.Deadline = message.Now() - 1
		if !h.Expired(message.Now()) {
			t.Error("past deadline not expired")
		}
		d, ok := message.DeadlineFromContext(ctxT(t, time.Hour))
		if !ok || d <= message.Now() {
			t.Error("DeadlineFromContext")
		}
		//lint:ignore SA1012 a nil context is what is tested
		if d, ok := message.DeadlineFromContext(nil); ok || d != 0 {
			t.Error("DeadlineFromContext(nil)")
		}
	})
}

func TestEdgeSendBatch(t *testing.T) {
	mk := func(t *testing.T, s *message.Store[pay], n int) []token.Token {
		ts := make([]token.Token, n)
		for i := range ts {
			ts[i] = put(t, s, message.Header{}, uint64(i))
		}
		return ts
	}
	t.Run("inOrderAll", func(t *testing.T) {
		s := newStore[pay](t, 128)
		e := newEdge(t, s, message.Policy{})
		ts := mk(t, s, 100) // more than one chunk of 32
		n, err := e.SendBatch(ctxT(t, wait), ts)
		if n != 100 || err != nil {
			t.Fatalf("SendBatch = %d %v", n, err)
		}
		got := recvAll(t, s, e)
		for i := range got {
			if got[i] != uint64(i) {
				t.Fatalf("order %v", got)
			}
		}
		if st := e.Stats(); st.Admitted != 100 || st.Rejected != 0 || st.Waited != 0 {
			t.Errorf("Stats %+v", st)
		}
	})
	t.Run("empty", func(t *testing.T) {
		s := newStore[pay](t, 4)
		e := newEdge(t, s, message.Policy{MaxItems: 1})
		_ = e.TrySend(put(t, s, message.Header{}, 0))
		done, c := context.WithCancel(context.Background())
		c()
		if n, err := e.SendBatch(done, nil); n != 0 || err != nil {
			t.Errorf("SendBatch(empty) = %d %v", n, err)
		}
		if n, err := e.RecvBatch(done, nil); n != 0 || err != nil {
			t.Errorf("RecvBatch(empty) = %d %v", n, err)
		}
		_ = e.Close()
		if n, err := e.RecvBatch(done, []token.Token{}); n != 0 || err != nil {
			t.Errorf("RecvBatch(empty) on closed = %d %v", n, err)
		}
	})
	stale := func(s *message.Store[pay]) token.Token {
		tk, _ := s.Put(message.Header{}, pay{})
		_ = s.Free(tk)
		return tk
	}
	cases := []struct {
		name     string
		pol      message.Policy
		bad      func(s *message.Store[pay]) token.Token // replaces ts[2] when not nil
		wantN    int
		want     error
		rejected int // -1: either Rejected or Invalid (one of them, once)
		invalid  int
	}{
		{"DropNewestFull", message.Policy{MaxItems: 3, Admission: message.DropNewest}, nil, 3, message.ErrEdgeFull, 1, 0},
		{"staleInMiddle", message.Policy{}, stale, 2, arena.ErrStale, 0, 1},
		{"nilInMiddle", message.Policy{}, func(*message.Store[pay]) token.Token { return token.Nil }, 2, arena.ErrBadToken, 0, 1},
		{"expiredInMiddle", message.Policy{}, func(s *message.Store[pay]) token.Token {
			tk, _ := s.Put(message.Header{Deadline: message.Now() - 1}, pay{A: 2})
			return tk
		}, 2, message.ErrExpired, 1, 0},
		{"badQoSInMiddle", message.Policy{}, func(s *message.Store[pay]) token.Token {
			tk, _ := s.Put(message.Header{QoS: 77}, pay{A: 2})
			return tk
		}, 2, message.ErrRejected, -1, -1},
		{"tooBigInMiddle", message.Policy{MaxBytes: 1000, Admission: message.DropOldest}, func(s *message.Store[pay]) token.Token {
			tk, _ := s.Put(message.Header{Size: 1001}, pay{A: 2})
			return tk
		}, 2, message.ErrRejected, 1, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newStore[pay](t, 16)
			e := newEdge(t, s, c.pol)
			ts := mk(t, s, 6)
			if c.bad != nil {
				_ = s.Free(ts[2])
				ts[2] = c.bad(s)
			}
			n, err := e.SendBatch(ctxT(t, wait), ts)
			if n != c.wantN || !errors.Is(err, c.want) {
				t.Fatalf("SendBatch = %d, %v; want %d, %v", n, err, c.wantN, c.want)
			}
			for _, tk := range ts[n:] {
				if r := refs(t, s, tk); r != 1 && !(tk == ts[n] && c.bad != nil && (c.want == arena.ErrStale || c.want == arena.ErrBadToken)) {
					t.Errorf("caller does not keep ts[n:]: %v refs %d", tk, r)
				}
			}
			st := e.Stats()
			if c.rejected < 0 {
				if st.Admitted != uint64(n) || st.Rejected+st.Invalid != 1 {
					t.Errorf("Stats Admitted %d Rejected %d Invalid %d, want %d and one refusal", st.Admitted, st.Rejected, st.Invalid, n)
				}
			} else if st.Admitted != uint64(n) || st.Rejected != uint64(c.rejected) || st.Invalid != uint64(c.invalid) {
				t.Errorf("Stats Admitted %d Rejected %d Invalid %d, want %d %d %d (one refusal, the rest not tried)",
					st.Admitted, st.Rejected, st.Invalid, n, c.rejected, c.invalid)
			}
			got := recvAll(t, s, e)
			for i := range got {
				if got[i] != uint64(i) {
					t.Errorf("order %v", got)
				}
			}
			for _, tk := range ts[n:] {
				_ = s.Free(tk)
			}
			if s.Available() != s.Capacity() {
				t.Error("slot lost")
			}
		})
	}
	t.Run("blockWaitsForAll", func(t *testing.T) {
		s := newStore[pay](t, 128)
		e := newEdge(t, s, message.Policy{MaxItems: 3})
		ts := mk(t, s, 70)
		var got []uint64
		done := make(chan struct{})
		go func() {
			defer close(done)
			ctx := ctxT(t, wait)
			for len(got) < 70 {
				tk, err := e.Recv(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				got = append(got, payloadA(t, s, tk))
				_ = s.Free(tk)
			}
		}()
		n, err := e.SendBatch(ctxT(t, wait), ts)
		<-done
		if n != 70 || err != nil {
			t.Fatalf("SendBatch = %d %v", n, err)
		}
		for i := range got {
			if got[i] != uint64(i) {
				t.Fatalf("order %v", got)
			}
		}
		if st := e.Stats(); st.Waited != 1 {
			t.Errorf("Waited = %d, want 1 per SendBatch call that waited", st.Waited)
		}
		if e.Len() > 3 || e.Stats().HighWater > 3 {
			t.Error("MaxItems exceeded")
		}
	})
	t.Run("blockCtx", func(t *testing.T) {
		s := newStore[pay](t, 16)
		e := newEdge(t, s, message.Policy{MaxItems: 2})
		ts := mk(t, s, 5)
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Millisecond)
		defer cancel()
		var n int
		var err error
		if !within(wait, func() { n, err = e.SendBatch(ctx, ts) }) {
			t.Fatal("hung")
		}
		if n != 2 || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("SendBatch = %d %v, want 2 DeadlineExceeded", n, err)
		}
		for _, tk := range ts[2:] {
			if refs(t, s, tk) != 1 {
				t.Error("caller lost ts[n:]")
			}
		}
	})
	t.Run("blockClosedWhileWaiting", func(t *testing.T) {
		s := newStore[pay](t, 16)
		e := newEdge(t, s, message.Policy{MaxItems: 2})
		ts := mk(t, s, 5)
		time.AfterFunc(40*time.Millisecond, func() { _ = e.Close() })
		var n int
		var err error
		if !within(wait, func() { n, err = e.SendBatch(context.Background(), ts) }) {
			t.Fatal("Close did not wake SendBatch")
		}
		if n != 2 || !errors.Is(err, message.ErrEdgeClosed) {
			t.Errorf("SendBatch = %d %v", n, err)
		}
	})
	t.Run("nilCtx", func(t *testing.T) {
		s := newStore[pay](t, 16)
		e := newEdge(t, s, message.Policy{MaxItems: 1})
		ts := mk(t, s, 3)
		go func() {
			for i := 0; i < 3; i++ {
				tk, err := e.Recv(ctxT(t, wait))
				if err == nil {
					_ = s.Free(tk)
				}
			}
		}()
		var n int
		var err error
		if !within(wait, func() {
			//lint:ignore SA1012 a nil context is what is tested
			n, err = e.SendBatch(nil, ts)
		}) {
			t.Fatal("SendBatch(nil) hung")
		}
		if n != 3 || err != nil {
			t.Errorf("SendBatch(nil) = %d %v", n, err)
		}
	})
	t.Run("lanesAndDropOldest", func(t *testing.T) {
		s := newStore[pay](t, 16)
		e := newEdge(t, s, message.Policy{MaxItems: 3, Admission: message.DropOldest})
		ts := []token.Token{
			put(t, s, message.Header{}, 0), put(t, s, message.Header{QoS: message.LatencyCritical}, 1),
			put(t, s, message.Header{}, 2), put(t, s, message.Header{}, 3), put(t, s, message.Header{QoS: message.LatencyCritical}, 4),
		}
		if n, err := e.SendBatch(ctxT(t, wait), ts); n != 5 || err != nil {
			t.Fatal(n, err)
		}
		if st := e.Stats(); st.Evicted != 2 {
			t.Errorf("Evicted = %d", st.Evicted)
		}
		if got := recvAll(t, s, e); !eqU(got, []uint64{4, 2, 3}) {
			t.Errorf("got %v, want [4 2 3]", got)
		}
		if s.Available() != s.Capacity() {
			t.Error("evicted not freed")
		}
	})
}

func TestEdgeRecvBatch(t *testing.T) {
	t.Run("upToLenNoWaitForMore", func(t *testing.T) {
		s := newStore[pay](t, 16)
		e := newEdge(t, s, message.Policy{})
		for i := 0; i < 5; i++ {
			_ = e.TrySend(put(t, s, message.Header{}, uint64(i)))
		}
		dst := make([]token.Token, 3)
		n, err := e.RecvBatch(ctxT(t, wait), dst)
		if n != 3 || err != nil {
			t.Fatal(n, err)
		}
		dst2 := make([]token.Token, 10)
		var n2 int
		if !within(time.Second, func() { n2, err = e.RecvBatch(ctxT(t, wait), dst2) }) {
			t.Fatal("RecvBatch waited for more than available")
		}
		if n2 != 2 || err != nil {
			t.Fatal(n2, err)
		}
		var got []uint64
		for _, tk := range append(dst[:n], dst2[:n2]...) {
			got = append(got, payloadA(t, s, tk))
			if refs(t, s, tk) != 1 {
				t.Error("receiver does not own")
			}
			_ = s.Free(tk)
		}
		if !eqU(got, []uint64{0, 1, 2, 3, 4}) {
			t.Errorf("got %v", got)
		}
		if st := e.Stats(); st.Delivered != 5 {
			t.Errorf("Delivered %d", st.Delivered)
		}
	})
	t.Run("waitsForFirst", func(t *testing.T) {
		s := newStore[pay](t, 16)
		e := newEdge(t, s, message.Policy{})
		time.AfterFunc(40*time.Millisecond, func() { _ = e.TrySend(put(t, s, message.Header{}, 7)) })
		dst := make([]token.Token, 4)
		n, err := e.RecvBatch(ctxT(t, wait), dst)
		if n != 1 || err != nil {
			t.Fatal(n, err)
		}
		_ = s.Free(dst[0])
		time.AfterFunc(40*time.Millisecond, func() { _ = e.TrySend(put(t, s, message.Header{}, 8)) })
		if !within(wait, func() {
			//lint:ignore SA1012 a nil context is what is tested
			n, err = e.RecvBatch(nil, dst)
		}) || n != 1 || err != nil {
			t.Fatalf("RecvBatch(nil) = %d %v", n, err)
		}
		_ = s.Free(dst[0])
		time.AfterFunc(40*time.Millisecond, func() { _ = e.Close() })
		if !within(wait, func() { n, err = e.RecvBatch(context.Background(), dst) }) {
			t.Fatal("Close did not wake RecvBatch")
		}
		if n != 0 || !errors.Is(err, message.ErrEdgeClosed) {
			t.Errorf("RecvBatch on closing = %d %v", n, err)
		}
	})
}

func TestEdgeAll(t *testing.T) {
	t.Run("untilClosedAndEmpty", func(t *testing.T) {
		s := newStore[pay](t, 16)
		e := newEdge(t, s, message.Policy{})
		go func() {
			for i := 0; i < 5; i++ {
				_ = e.Send(context.Background(), put(t, s, message.Header{}, uint64(i)))
				time.Sleep(time.Millisecond)
			}
			_ = e.Close()
		}()
		var got []uint64
		if !within(wait, func() {
			for tk := range e.All(ctxT(t, wait)) {
				got = append(got, payloadA(t, s, tk))
				_ = s.Free(tk)
			}
		}) {
			t.Fatal("All did not end on Close")
		}
		if !eqU(got, []uint64{0, 1, 2, 3, 4}) {
			t.Errorf("got %v", got)
		}
	})
	t.Run("ctxDone", func(t *testing.T) {
		s := newStore[pay](t, 16)
		e := newEdge(t, s, message.Policy{})
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Millisecond)
		defer cancel()
		if !within(wait, func() {
			for range e.All(ctx) {
				t.Error("yielded from empty edge")
			}
		}) {
			t.Fatal("All did not end on ctx")
		}
	})
	t.Run("breakLosesNothing", func(t *testing.T) {
		s := newStore[pay](t, 16)
		e := newEdge(t, s, message.Policy{})
		for i := 0; i < 4; i++ {
			_ = e.TrySend(put(t, s, message.Header{}, uint64(i)))
		}
		for tk := range e.All(ctxT(t, wait)) {
			_ = s.Free(tk)
			break
		}
		if e.Len() != 3 {
			t.Errorf("Len after break = %d, want 3 (received ahead?)", e.Len())
		}
		_ = e.Close()
		var got []uint64
		//lint:ignore SA1012 a nil context is what is tested
		for tk := range e.All(nil) {
			got = append(got, payloadA(t, s, tk))
			_ = s.Free(tk)
		}
		if !eqU(got, []uint64{1, 2, 3}) {
			t.Errorf("got %v", got)
		}
		if s.Available() != s.Capacity() {
			t.Error("slot lost")
		}
	})
}

func TestSendAll(t *testing.T) {
	type edgeKind int
	const (
		open edgeKind = iota
		full          // DropNewest, full
		closed
		nilEdge
		blockFull
	)
	cases := []struct {
		name    string
		h       message.Header
		edges   []edgeKind
		stale   bool
		nilRS   bool
		want    int
		wantErr []error
	}{
		{"allOpen", message.Header{}, []edgeKind{open, open, open}, false, false, 3, nil},
		{"one", message.Header{}, []edgeKind{open}, false, false, 1, nil},
		{"noEdges", message.Header{}, nil, false, false, 0, nil},
		{"oneFull", message.Header{}, []edgeKind{open, full, open}, false, false, 2, []error{message.ErrEdgeFull}},
		{"allRefuse", message.Header{}, []edgeKind{closed, full}, false, false, 0, []error{message.ErrEdgeClosed, message.ErrEdgeFull}},
		{"nilEdge", message.Header{}, []edgeKind{open, nilEdge}, false, false, 1, []error{message.ErrNilEdge}},
		{"expired", message.Header{Deadline: 1}, []edgeKind{open, open}, false, false, 0, []error{message.ErrExpired}},
		{"blockCtx", message.Header{}, []edgeKind{blockFull, open}, false, false, 1, []error{context.DeadlineExceeded}},
		{"staleToken", message.Header{}, []edgeKind{open, open}, true, false, 0, []error{arena.ErrStale}},
		{"nilStore", message.Header{}, []edgeKind{open}, false, true, 0, []error{message.ErrNilStore}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newStore[pay](t, 16)
			var edges []*message.Edge
			var filler []token.Token
			for _, k := range c.edges {
				switch k {
				case open:
					edges = append(edges, newEdge(t, s, message.Policy{}))
				case full, blockFull:
					adm := message.DropNewest
					if k == blockFull {
						adm = message.Block
					}
					e := newEdge(t, s, message.Policy{MaxItems: 1, Admission: adm})
					f := put(t, s, message.Header{}, 99)
					_ = e.TrySend(f)
					filler = append(filler, f)
					edges = append(edges, e)
				case closed:
					e := newEdge(t, s, message.Policy{})
					_ = e.Close()
					edges = append(edges, e)
				case nilEdge:
					edges = append(edges, nil)
				}
			}
			tk := put(t, s, c.h, 1)
			if c.stale {
				_ = s.Free(tk)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 40*time.Millisecond)
			defer cancel()
			var rs message.RefStore = s
			if c.nilRS {
				rs = nil
			}
			var sent int
			var err error
			if !within(wait, func() { sent, err = message.SendAll(ctx, rs, tk, edges...) }) {
				t.Fatal("SendAll hung")
			}
			if sent != c.want {
				t.Errorf("sent = %d, want %d", sent, c.want)
			}
			if (err == nil) != (len(c.wantErr) == 0) {
				t.Errorf("err = %v, want %v", err, c.wantErr)
			}
			if err == nil && sent != len(c.edges) {
				t.Errorf("nil err but sent %d of %d", sent, len(c.edges))
			}
			for _, w := range c.wantErr {
				if !errors.Is(err, w) {
					t.Errorf("err = %v does not match %v", err, w)
				}
			}
			if c.nilRS {
				if refs(t, s, tk) != 1 {
					t.Error("nil rs: caller must keep its reference")
				}
				_ = s.Free(tk)
			} else if !c.stale {
				if r := refs(t, s, tk); sent == 0 && r != -1 || sent > 0 && r != sent {
					t.Errorf("refs after SendAll = %d, want %d (one per edge that took it; caller's consumed)", r, sent)
				}
			}
			queued := 0
			for _, e := range edges {
				if e == nil {
					continue
				}
				_ = e.Close()
				queued += e.Drain()
			}
			if queued != sent+len(filler) {
				t.Errorf("edges hold %d tokens, want %d", queued, sent+len(filler))
			}
			if s.Available() != s.Capacity() {
				t.Errorf("SendAll stranded a reference: Available %d Capacity %d", s.Available(), s.Capacity())
			}
		})
	}
	t.Run("noAllocWhenAllAccept", func(t *testing.T) {
		s := newStore[pay](t, 16)
		e1, e2 := newEdge(t, s, message.Policy{}), newEdge(t, s, message.Policy{})
		ctx := context.Background()
		n := testing.AllocsPerRun(500, func() {
			tk, _ := s.Put(message.Header{}, pay{})
			_, _ = message.SendAll(ctx, s, tk, e1, e2)
			a, _ := e1.TryRecv()
			b, _ := e2.TryRecv()
			_ = s.Free(a)
			_ = s.Free(b)
		})
		if n != 0 {
			t.Errorf("SendAll: %v allocs/op, want 0", n)
		}
	})
}

// ---------------------------------------------------------------- hop paths: 0 allocs/op

func TestHopPathsZeroAllocs(t *testing.T) {
	ctx := context.Background()
	policies := []struct {
		name string
		pol  message.Policy
		h    message.Header
	}{
		{"fast", message.Policy{}, message.Header{}},
		{"itemsCap", message.Policy{MaxItems: 64, SoftItems: 8}, message.Header{}},
		{"bytesCap", message.Policy{MaxBytes: 1 << 20, SoftBytes: 1 << 10}, message.Header{}},
		{"latencyCritical", message.Policy{}, message.Header{QoS: message.LatencyCritical}},
		{"background", message.Policy{}, message.Header{QoS: message.Background}},
		{"deadline", message.Policy{}, message.Header{Deadline: message.Now() + int64(time.Hour)}},
		{"deadlineQoS", message.Policy{MaxItems: 64, SoftItems: 32, Admission: message.DeadlineQoS}, message.Header{}},
		{"dropOldest", message.Policy{MaxItems: 64, Admission: message.DropOldest}, message.Header{}},
		{"dropNewest", message.Policy{MaxItems: 64, Admission: message.DropNewest}, message.Header{}},
	}
	for _, p := range policies {
		t.Run(p.name, func(t *testing.T) {
			s := newStore[pay](t, 256)
			e := newEdge(t, s, p.pol)
			tk, _ := s.Put(p.h, pay{})
			batch := make([]token.Token, 16)
			for i := range batch {
				batch[i], _ = s.Put(p.h, pay{})
			}
			dst := make([]token.Token, 16)
			view := func(*message.Message[pay]) {}
			upd := func(m *message.Message[pay]) { m.Payload.A++ }
			ops := []struct {
				name string
				f    func()
			}{
				{"Send+Recv", func() { _ = e.Send(ctx, tk); tk, _ = e.Recv(ctx) }},
				{"TrySend+TryRecv", func() { _ = e.TrySend(tk); tk, _ = e.TryRecv() }},
				{"SendBatch+RecvBatch", func() {
					n, _ := e.SendBatch(ctx, batch)
					m, _ := e.RecvBatch(ctx, dst[:n])
					copy(batch, dst[:m])
				}},
				{"Put+Free", func() { x, _ := s.Put(p.h, pay{A: 1}); _ = s.Free(x) }},
				{"View", func() { _ = s.View(tk, view) }},
				{"Update", func() { _ = s.Update(tk, upd) }},
				{"Header", func() { _, _ = s.Header(tk) }},
				{"Retain+Free", func() { _ = s.Retain(tk); _ = s.Free(tk) }},
				{"TryRecvEmpty", func() { _, _ = e.TryRecv() }},
				{"Stats", func() { _ = e.Stats() }},
			}
			for _, op := range ops {
				t.Run(op.name, func(t *testing.T) {
					if n := testing.AllocsPerRun(500, op.f); n != 0 {
						t.Errorf("%v allocs/op, want 0", n)
					}
				})
			}
			if e.Len() != 0 {
				t.Fatalf("edge not empty: %d", e.Len())
			}
		})
	}
	t.Run("refusals", func(t *testing.T) {
		s := newStore[pay](t, 8)
		e := newEdge(t, s, message.Policy{MaxItems: 1, Admission: message.DropNewest})
		_ = e.TrySend(put(t, s, message.Header{}, 0))
		tk := put(t, s, message.Header{}, 1)
		if n := testing.AllocsPerRun(200, func() { _ = e.TrySend(tk) }); n != 0 {
			t.Errorf("refused TrySend: %v allocs/op", n)
		}
		full := newStore[pay](t, 1)
		_, _ = full.Put(message.Header{}, pay{})
		if n := testing.AllocsPerRun(200, func() { _, _ = full.Put(message.Header{}, pay{}) }); n != 0 {
			t.Errorf("Put on full store: %v allocs/op (godoc: ErrFull unwrapped so back-pressure allocates nothing)", n)
		}
	})
}

// ---------------------------------------------------------------- conservation under concurrency

func TestEdgeConservationConcurrent(t *testing.T) {
	for _, adm := range []message.Admission{message.Block, message.DropNewest, message.DropOldest, message.DeadlineQoS} {
		t.Run(adm.String(), func(t *testing.T) {
			s := newStore[pay](t, 256)
			e := newEdge(t, s, message.Policy{MaxItems: 16, SoftItems: 8, MaxBytes: 16 * 16, Admission: adm})
			ctx := ctxT(t, 5*time.Second)
			var wg sync.WaitGroup
			var maxLen atomic.Int64
			for g := 0; g < 4; g++ {
				wg.Add(1)
				go func(g int) {
					defer wg.Done()
					batch := make([]token.Token, 0, 8)
					for i := 0; i < 400; i++ {
						h := message.Header{QoS: message.QoS(1 + (i+g)%3)}
						if i%7 == 0 {
							h.Deadline = message.DeadlineIn(time.Duration(i%3) * 100 * time.Microsecond)
						}
						tk, err := s.PutWait(ctx, h, pay{A: uint64(i)})
						if err != nil {
							t.Error(err)
							return
						}
						if i%3 == 0 {
							batch = append(batch, tk)
							if len(batch) == cap(batch) {
								n, _ := e.SendBatch(ctx, batch)
								for _, r := range batch[n:] {
									_ = s.Free(r)
								}
								batch = batch[:0]
							}
							continue
						}
						if err := e.Send(ctx, tk); err != nil {
							_ = s.Free(tk)
						}
						if l := int64(e.Len()); l > maxLen.Load() {
							maxLen.Store(l)
						}
					}
					for _, r := range batch {
						_ = s.Free(r)
					}
				}(g)
			}
			var rg sync.WaitGroup
			for r := 0; r < 2; r++ {
				rg.Add(1)
				go func(r int) {
					defer rg.Done()
					dst := make([]token.Token, 5)
					for {
						if r == 0 {
							tk, err := e.Recv(ctx)
							if err != nil {
								return
							}
							_ = s.Free(tk)
						} else {
							n, err := e.RecvBatch(ctx, dst)
							if err != nil {
								return
							}
							for _, tk := range dst[:n] {
								_ = s.Free(tk)
							}
						}
					}
				}(r)
			}
			wg.Wait()
			_ = e.Close()
			if !within(wait, rg.Wait) {
				t.Fatal("receivers hung")
			}
			if maxLen.Load() > 16 || e.Stats().HighWater > 16 {
				t.Errorf("MaxItems exceeded: %d / %d", maxLen.Load(), e.Stats().HighWater)
			}
			checkQuietEdge(t, e)
			if st := e.Stats(); st.FreeErrors != 0 {
				t.Errorf("FreeErrors %d", st.FreeErrors)
			}
			if s.Available() != s.Capacity() {
				t.Errorf("slot lost: Available %d Capacity %d", s.Available(), s.Capacity())
			}
			if st := s.Stats(); st.Allocs != st.Frees {
				t.Errorf("store Stats Allocs %d Frees %d", st.Allocs, st.Frees)
			}
		})
	}
}

// ---------------------------------------------------------------- shard (exported API)

func TestShardGate(t *testing.T) {
	var g shard.Gate
	g.Init()
	if g.Closed() {
		t.Fatal("new gate closed")
	}
	p, ok := g.Enter()
	if !ok {
		t.Fatal("Enter on open gate")
	}
	g.Exit(p)
	if !g.Close() {
		t.Error("first Close false")
	}
	if g.Close() {
		t.Error("second Close true")
	}
	if _, ok := g.Enter(); ok {
		t.Error("Enter after Close ok")
	}
}

// EdgeStats godoc: Rejected counts "sends refused by policy, a closed edge or
// a done context"; Invalid "sends refused for a bad token (nil, stale,
// foreign) or header". ErrRejected's godoc names "larger than MaxBytes" as a
// policy refusal.
func TestEdgeStatsRefusalCounters(t *testing.T) {
	cases := []struct {
		name     string
		pol      message.Policy
		h        message.Header
		prep     func(e *message.Edge, s *message.Store[pay])
		stale    bool
		want     error
		rejected int // -1: either counter, once
		invalid  int
	}{
		{"dropNewestFull", message.Policy{MaxItems: 1, Admission: message.DropNewest}, message.Header{},
			func(e *message.Edge, s *message.Store[pay]) {
				tk, _ := s.Put(message.Header{}, pay{})
				_ = e.TrySend(tk)
			}, false, message.ErrEdgeFull, 1, 0},
		{"overMaxBytes", message.Policy{MaxBytes: 10}, message.Header{Size: 11}, nil, false, message.ErrRejected, 1, 0},
		{"expired", message.Policy{}, message.Header{Deadline: 1}, nil, false, message.ErrExpired, 1, 0},
		{"closed", message.Policy{}, message.Header{}, func(e *message.Edge, _ *message.Store[pay]) { _ = e.Close() }, false, message.ErrEdgeClosed, 1, 0},
		{"shedBackground", message.Policy{MaxItems: 4, SoftItems: 1, Admission: message.DeadlineQoS}, message.Header{QoS: message.Background},
			func(e *message.Edge, s *message.Store[pay]) {
				tk, _ := s.Put(message.Header{}, pay{})
				_ = e.TrySend(tk)
			}, false, message.ErrRejected, 1, 0},
		{"badQoS", message.Policy{}, message.Header{QoS: 9}, nil, false, message.ErrRejected, -1, -1},
		{"stale", message.Policy{}, message.Header{}, nil, true, arena.ErrStale, 0, 1},
	}
	for _, c := range cases {
		for _, how := range []string{"Send", "TrySend"} {
			t.Run(c.name+"/"+how, func(t *testing.T) {
				s := newStore[pay](t, 8)
				e := newEdge(t, s, c.pol)
				if c.prep != nil {
					c.prep(e, s)
				}
				before := e.Stats()
				tk := put(t, s, c.h, 0)
				if c.stale {
					_ = s.Free(tk)
				}
				var err error
				if how == "Send" {
					err = e.Send(ctxT(t, wait), tk)
				} else {
					err = e.TrySend(tk)
				}
				if !errors.Is(err, c.want) {
					t.Fatalf("err = %v, want %v", err, c.want)
				}
				st := e.Stats()
				dr, di := int(st.Rejected-before.Rejected), int(st.Invalid-before.Invalid)
				if c.rejected < 0 {
					if dr+di != 1 {
						t.Errorf("Rejected +%d Invalid +%d, want one refusal counted", dr, di)
					}
				} else if dr != c.rejected || di != c.invalid {
					t.Errorf("Rejected +%d Invalid +%d, want +%d +%d", dr, di, c.rejected, c.invalid)
				}
			})
		}
	}
}

func TestArenaShardsDefaultAndStats(t *testing.T) {
	a := newArena[pay](t, arena.Config{Slots: 100})
	if got := a.Stats().Shards; got != runtime.GOMAXPROCS(0) {
		t.Errorf("Shards 0 gave %d shards, want GOMAXPROCS %d", got, runtime.GOMAXPROCS(0))
	}
	b := newArena[pay](t, arena.Config{Slots: 100, Shards: 3})
	if got := b.Stats().Shards; got != 3 {
		t.Errorf("Stats.Shards = %d, want 3", got)
	}
}

func TestStorePutFuncAndWriteFailures(t *testing.T) {
	bs, err := message.NewByteStore[[64]byte](arena.Config{Slots: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	boom := errors.New("boom")
	cases := []struct {
		name    string
		f       func() (token.Token, error)
		want    error
		panicky bool
	}{
		{"PutFuncError", func() (token.Token, error) {
			return bs.PutFunc(message.Header{}, func(*message.Message[[64]byte]) error { return boom })
		}, boom, false},
		{"PutFuncPanic", func() (token.Token, error) {
			return bs.PutFunc(message.Header{}, func(*message.Message[[64]byte]) error { panic(boom) })
		}, nil, true},
		{"WriteError", func() (token.Token, error) {
			return bs.Write(message.Header{}, func([]byte) (int, error) { return 3, boom })
		}, boom, false},
		{"WriteTooLong", func() (token.Token, error) {
			return bs.Write(message.Header{}, func([]byte) (int, error) { return 65, nil })
		}, nil, false},
		{"WriteNegative", func() (token.Token, error) {
			return bs.Write(message.Header{}, func([]byte) (int, error) { return -1, nil })
		}, nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var err error
			p := noPanic(func() { _, err = c.f() })
			if c.panicky != (p != nil) {
				t.Errorf("panic = %v, want panic %v", p, c.panicky)
			}
			if !c.panicky && err == nil {
				t.Error("no error")
			}
			if c.want != nil && !errors.Is(err, c.want) {
				t.Errorf("err = %v, want %v", err, c.want)
			}
			if bs.Available() != bs.Capacity() {
				t.Errorf("slot not freed: Available %d", bs.Available())
			}
			n := 0
			for range bs.Tokens() {
				n++
			}
			if n != 0 {
				t.Errorf("failed put left %d messages visible", n)
			}
		})
	}
}
