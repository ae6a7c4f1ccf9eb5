package arena_test

import (
	"context"
	"errors"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/memclass"
	"github.com/cella-go/cella/token"
)

type msg struct {
	ID  uint64
	Seq uint64
	Buf [48]byte
}

func newArena[T any](t testing.TB, slots, shards int) *arena.Arena[T] {
	t.Helper()
	a, err := arena.New[T](arena.Config{Slots: slots, Shards: shards})
	require.NoError(t, err)
	t.Cleanup(func() { a.Close() })
	return a
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		cfg   arena.Config
		field string
	}{
		{arena.Config{Slots: 0}, "Slots"},
		{arena.Config{Slots: -5}, "Slots"},
		{arena.Config{Slots: arena.MaxSlots + 1}, "Slots"},
		{arena.Config{Slots: 10, Shards: -1}, "Shards"},
		{arena.Config{Slots: 10, Shards: arena.MaxShards + 1}, "Shards"},
	}
	for _, c := range cases {
		_, err := arena.New[msg](c.cfg)
		require.ErrorIs(t, err, arena.ErrInvalidConfig, "%+v", c.cfg)
		require.Contains(t, err.Error(), c.field)
	}
	// Absurd total size: the error says so, nothing is mapped.
	_, err := arena.New[[1 << 20]byte](arena.Config{Slots: arena.MaxSlots})
	require.ErrorIs(t, err, arena.ErrInvalidConfig)
}

func TestPointerTypesRejected(t *testing.T) {
	type inner struct {
		A int
		S string
	}
	type deep struct {
		X   [3]struct{ Y [2]inner }
		Pad uint64
	}
	check := func(name string, err error) {
		t.Helper()
		require.ErrorIs(t, err, arena.ErrPointerType, name)
	}
	cfg := arena.Config{Slots: 4}
	_, err := arena.New[*int](cfg)
	check("pointer", err)
	_, err = arena.New[[]byte](cfg)
	check("slice", err)
	_, err = arena.New[string](cfg)
	check("string", err)
	_, err = arena.New[map[int]int](cfg)
	check("map", err)
	_, err = arena.New[chan int](cfg)
	check("chan", err)
	_, err = arena.New[func()](cfg)
	check("func", err)
	_, err = arena.New[any](cfg)
	check("interface", err)
	_, err = arena.New[unsafe.Pointer](cfg)
	check("unsafe.Pointer", err)
	_, err = arena.New[deep](cfg)
	check("nested", err)
	require.Contains(t, err.Error(), ".S", "error names the field")

	// Pointer-free types, including odd sizes and an empty struct, work.
	for _, f := range []func() error{
		func() error { a, err := arena.New[struct{}](cfg); closeIf(a, err); return err },
		func() error { a, err := arena.New[[3]byte](cfg); closeIf(a, err); return err },
		func() error { a, err := arena.New[complex128](cfg); closeIf(a, err); return err },
		func() error { a, err := arena.New[[2][2]struct{ U uintptr }](cfg); closeIf(a, err); return err },
	} {
		require.NoError(t, f())
	}
}

func closeIf[T any](a *arena.Arena[T], err error) {
	if err == nil {
		a.Close()
	}
}

// One goroutine can take exactly Capacity slots whatever the shard count:
// stealing reaches every shard's freelist and frontier.
func TestExactCapacityAnyShards(t *testing.T) {
	for _, shards := range []int{0, 1, 2, 3, 7, 64, 200} {
		for _, slots := range []int{1, 5, 64, 1000} {
			a := newArena[msg](t, slots, shards)
			seen := map[uint32]bool{}
			for i := 0; i < slots; i++ {
				tok, p, err := a.Alloc()
				require.NoError(t, err, "shards=%d slots=%d i=%d", shards, slots, i)
				require.False(t, seen[tok.Index()], "slot handed out twice")
				seen[tok.Index()] = true
				require.Less(t, int(tok.Index()), slots)
				p.ID = uint64(i)
			}
			_, _, err := a.Alloc()
			require.ErrorIs(t, err, arena.ErrFull)
			_, err = a.Store(msg{})
			require.ErrorIs(t, err, arena.ErrFull)
			require.Equal(t, 0, a.Available())
			st := a.Stats()
			require.EqualValues(t, slots, st.Allocs)
			require.EqualValues(t, 2, st.Failed)
			require.EqualValues(t, 0, st.Untouched)
		}
	}
}

func TestNoSlotLost(t *testing.T) {
	a := newArena[msg](t, 100, 4)
	var toks []token.Token
	for round := 0; round < 5; round++ {
		for i := 0; i < 100; i++ {
			tok, err := a.Store(msg{ID: uint64(i)})
			require.NoError(t, err)
			toks = append(toks, tok)
		}
		for _, tok := range toks {
			require.NoError(t, a.Free(tok))
		}
		toks = toks[:0]
		require.Equal(t, a.Capacity(), a.Available())
		st := a.Stats()
		require.Equal(t, st.Allocs, st.Frees)
		require.EqualValues(t, 0, st.Live)
	}
}

func TestStaleThroughEveryMethod(t *testing.T) {
	a := newArena[msg](t, 1, 1)
	old, err := a.Store(msg{ID: 1})
	require.NoError(t, err)
	require.NoError(t, a.Free(old))

	stale := func() {
		t.Helper()
		_, err := a.Load(old)
		require.ErrorIs(t, err, arena.ErrStale)
		require.ErrorIs(t, a.View(old, func(*msg) { t.Error("View ran on a stale token") }), arena.ErrStale)
		require.ErrorIs(t, a.Update(old, func(*msg) { t.Error("Update ran on a stale token") }), arena.ErrStale)
		require.ErrorIs(t, a.Free(old), arena.ErrStale)
	}
	stale() // after free
	reused, err := a.Store(msg{ID: 2})
	require.NoError(t, err)
	require.Equal(t, old.Index(), reused.Index(), "one slot: it must be reused")
	require.NotEqual(t, old.Generation(), reused.Generation())
	stale() // after the slot was reused
	v, err := a.Load(reused)
	require.NoError(t, err)
	require.EqualValues(t, 2, v.ID, "stale use must not have touched the new occupant")
	require.Contains(t, a.Free(old).Error(), old.String(), "the error names the token")
}

func TestNilAndForgedTokens(t *testing.T) {
	a := newArena[msg](t, 16, 2)
	live, err := a.Store(msg{ID: 7})
	require.NoError(t, err)
	forged := []token.Token{
		token.Nil,
		token.New(16, 1),                // index out of range
		token.New(1<<32-1, 5),           // far out of range
		token.New(3, 0),                 // generation 0 is never issued
		token.New(3, 1<<32-1),           // the retired generation is never issued
		token.New(live.Index(), 0),      //
		token.New(5, live.Generation()), // in range, never allocated
		token.New(live.Index(), live.Generation()+1),
	}
	for _, tok := range forged {
		_, err := a.Load(tok)
		isBadOrStale(t, err, tok)
		isBadOrStale(t, a.View(tok, func(*msg) { t.Error("callback ran") }), tok)
		isBadOrStale(t, a.Update(tok, func(*msg) { t.Error("callback ran") }), tok)
		isBadOrStale(t, a.Free(tok), tok)
	}
	_, err = a.Load(token.Nil)
	require.ErrorIs(t, err, arena.ErrBadToken)
	require.ErrorIs(t, a.Free(token.New(16, 1)), arena.ErrBadToken)
	v, err := a.Load(live)
	require.NoError(t, err)
	require.EqualValues(t, 7, v.ID)
	require.Equal(t, a.Capacity()-1, a.Available())
}

func isBadOrStale(t *testing.T, err error, tok token.Token) {
	t.Helper()
	if !errors.Is(err, arena.ErrBadToken) && !errors.Is(err, arena.ErrStale) {
		t.Fatalf("token %v: got %v, want ErrBadToken or ErrStale", tok, err)
	}
}

// A token from one arena must not work in another (the generations start at
// a random base per arena).
func TestForeignToken(t *testing.T) {
	a := newArena[msg](t, 8, 1)
	b := newArena[msg](t, 8, 1)
	ta, err := a.Store(msg{ID: 1})
	require.NoError(t, err)
	_, err = b.Store(msg{ID: 2})
	require.NoError(t, err)
	_, err = b.Load(ta)
	isBadOrStale(t, err, ta)
}

func TestRecycledSlotIsZeroed(t *testing.T) {
	a := newArena[msg](t, 1, 1)
	tok, p, err := a.Alloc()
	require.NoError(t, err)
	*p = msg{ID: 99, Seq: 98}
	for i := range p.Buf {
		p.Buf[i] = 0xAB
	}
	require.NoError(t, a.Free(tok))
	tok2, p2, err := a.Alloc()
	require.NoError(t, err)
	require.Equal(t, tok.Index(), tok2.Index())
	require.Equal(t, msg{}, *p2, "a recycled slot must come back zeroed")
}

// With Config.NoZero, Alloc and AllocWait hand a recycled slot out as its
// last value left it (across the P cache and the shards), a never-used slot
// is still zero, and Store overwrites the whole value as always.
func TestNoZeroKeepsRecycledBytes(t *testing.T) {
	for _, big := range []bool{false, true} {
		t.Run("big="+strconv.FormatBool(big), func(t *testing.T) {
			if big {
				testNoZero[[8192]byte](t, func(v *[8192]byte, b byte) { v[0], v[8191] = b, b },
					func(v *[8192]byte) byte { return v[0] | v[8191] })
			} else {
				testNoZero[msg](t, func(v *msg, b byte) { v.ID, v.Buf[47] = uint64(b), b },
					func(v *msg) byte { return byte(v.ID) | v.Buf[47] })
			}
		})
	}
}

func testNoZero[T any](t *testing.T, mark func(*T, byte), marked func(*T) byte) {
	a, err := arena.New[T](arena.Config{Slots: 2, Shards: 1, NoZero: true})
	require.NoError(t, err)
	defer a.Close()
	t1, p1, err := a.Alloc()
	require.NoError(t, err)
	t2, p2, err := a.AllocWait(context.Background())
	require.NoError(t, err)
	require.Zero(t, marked(p1), "a never-used slot is zero")
	require.Zero(t, marked(p2), "a never-used slot is zero")
	mark(p1, 0x5a)
	mark(p2, 0x5a)
	require.NoError(t, a.Free(t1))
	require.NoError(t, a.Free(t2))
	for range 2 {
		tok, p, err := a.Alloc()
		require.NoError(t, err)
		require.Equal(t, byte(0x5a), marked(p), "Alloc with NoZero keeps the recycled bytes")
		require.NoError(t, a.Free(tok))
		tok, p, err = a.AllocWait(context.Background())
		require.NoError(t, err)
		require.Equal(t, byte(0x5a), marked(p), "AllocWait with NoZero keeps the recycled bytes")
		require.NoError(t, a.Free(tok))
	}
	var zero T
	tok, err := a.Store(zero)
	require.NoError(t, err)
	v, err := a.Load(tok)
	require.NoError(t, err)
	require.Zero(t, marked(&v), "Store writes the whole value")
	require.NoError(t, a.Free(tok))
}

func TestCloseBeforeUse(t *testing.T) {
	a, err := arena.New[msg](arena.Config{Slots: 8})
	require.NoError(t, err)
	tok, err := a.Store(msg{ID: 1})
	require.NoError(t, err)
	require.NoError(t, a.Close())
	require.ErrorIs(t, a.Close(), arena.ErrClosed)

	_, _, err = a.Alloc()
	require.ErrorIs(t, err, arena.ErrClosed)
	_, err = a.Store(msg{})
	require.ErrorIs(t, err, arena.ErrClosed)
	_, err = a.Load(tok)
	require.ErrorIs(t, err, arena.ErrClosed)
	require.ErrorIs(t, a.View(tok, func(*msg) {}), arena.ErrClosed)
	require.ErrorIs(t, a.Update(tok, func(*msg) {}), arena.ErrClosed)
	require.ErrorIs(t, a.Free(tok), arena.ErrClosed)
	// Closed wins over every other complaint.
	_, err = a.Load(token.Nil)
	require.ErrorIs(t, err, arena.ErrClosed)
	require.ErrorIs(t, a.Free(token.New(1<<31, 1)), arena.ErrClosed)
	require.ErrorIs(t, a.View(tok, nil), arena.ErrClosed)
	require.ErrorIs(t, a.Update(token.Nil, func(*msg) {}), arena.ErrClosed)
	require.Equal(t, 8, a.Capacity())
	require.Equal(t, 0, a.Available())
	require.Equal(t, memclass.Host(), a.Class())
	st := a.Stats()
	require.EqualValues(t, 1, st.Allocs)
	require.EqualValues(t, 1, st.Live)
}

func TestPanicInCallbackReleasesSlot(t *testing.T) {
	a := newArena[msg](t, 2, 1)
	tok, err := a.Store(msg{ID: 5})
	require.NoError(t, err)
	require.PanicsWithValue(t, "boom", func() { a.View(tok, func(*msg) { panic("boom") }) })
	require.PanicsWithValue(t, "bang", func() { a.Update(tok, func(m *msg) { m.ID = 6; panic("bang") }) })
	// Both holds were released: Update (exclusive) can run, and so can Free.
	done := make(chan error, 1)
	go func() { done <- a.Update(tok, func(m *msg) { m.ID++ }) }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("slot still locked after a panicking callback")
	}
	v, err := a.Load(tok)
	require.NoError(t, err)
	require.EqualValues(t, 7, v.ID)
	require.NoError(t, a.Free(tok))
	require.Equal(t, a.Capacity(), a.Available())
}

func TestNilCallback(t *testing.T) {
	a := newArena[msg](t, 2, 1)
	tok, err := a.Store(msg{})
	require.NoError(t, err)
	require.ErrorIs(t, a.View(tok, nil), arena.ErrNilFunc)
	require.ErrorIs(t, a.Update(tok, nil), arena.ErrNilFunc)
	require.NoError(t, a.Free(tok))
}

// Free during a View returns at once, makes the token stale at once, and
// recycles the slot only when the View returns.
func TestFreeDuringViewIsDeferred(t *testing.T) {
	a := newArena[msg](t, 1, 1)
	tok, err := a.Store(msg{ID: 1})
	require.NoError(t, err)
	inside, release := make(chan struct{}), make(chan struct{})
	viewDone := make(chan error, 1)
	go func() {
		viewDone <- a.View(tok, func(m *msg) {
			close(inside)
			<-release
			if m.ID != 1 {
				t.Error("slot reused while a View was inside it")
			}
		})
	}()
	<-inside
	freed := make(chan error, 1)
	go func() { freed <- a.Free(tok) }()
	select {
	case err := <-freed:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Free blocked behind a View")
	}
	_, err = a.Load(tok)
	require.ErrorIs(t, err, arena.ErrStale, "token stale as soon as Free returned")
	_, _, err = a.Alloc()
	require.ErrorIs(t, err, arena.ErrFull, "slot must not be recycled while the View runs")
	close(release)
	require.NoError(t, <-viewDone)
	tok2, p, err := a.Alloc()
	require.NoError(t, err, "the View's release recycles the slot")
	require.Equal(t, tok.Index(), tok2.Index())
	require.Equal(t, msg{}, *p)
}

func TestViewsShareUpdateExcludes(t *testing.T) {
	a := newArena[msg](t, 1, 1)
	tok, err := a.Store(msg{})
	require.NoError(t, err)

	// Two Views are inside at once.
	var both sync.WaitGroup
	both.Add(2)
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			require.NoError(t, a.View(tok, func(*msg) {
				both.Done()
				both.Wait() // deadlocks if Views exclude each other
			}))
		}()
	}
	waitOrFail(t, &wg, "two Views could not run at once")

	// Update excludes View and Update.
	var inWriter, inReader atomic.Int32
	var errs atomic.Int32
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 300; i++ {
				if g%2 == 0 {
					a.Update(tok, func(m *msg) {
						if inWriter.Add(1) != 1 || inReader.Load() != 0 {
							errs.Add(1)
						}
						m.Seq++
						inWriter.Add(-1)
					})
				} else {
					a.View(tok, func(*msg) {
						inReader.Add(1)
						if inWriter.Load() != 0 {
							errs.Add(1)
						}
						inReader.Add(-1)
					})
				}
			}
		}(g)
	}
	waitOrFail(t, &wg, "Update/View deadlocked")
	require.Zero(t, errs.Load(), "Update overlapped another callback")
	v, err := a.Load(tok)
	require.NoError(t, err)
	require.EqualValues(t, 4*300, v.Seq, "lost updates")
}

// Load and LoadInto never return a value torn by Updates rewriting the
// slot from two goroutines: every word of a copy must be equal. Under the
// race detector they copy under a reader hold; without it, optimistically
// (the seqlock), which CI runs too.
func TestLoadNeverTorn(t *testing.T) {
	type wide struct{ W [64]uint64 }
	a := newArena[wide](t, 1, 1)
	tok, err := a.Store(wide{})
	require.NoError(t, err)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := uint64(1); ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				a.Update(tok, func(w *wide) {
					for i := range w.W {
						w.W[i] = n
					}
				})
			}
		}()
	}
	deadline := time.Now().Add(300 * time.Millisecond)
	for i := 0; i < 3000 || time.Now().Before(deadline); i++ {
		var v wide
		if i%2 == 0 {
			v, err = a.Load(tok)
		} else {
			err = a.LoadInto(tok, &v)
		}
		require.NoError(t, err)
		for _, x := range v.W {
			if x != v.W[0] {
				close(stop)
				t.Fatalf("torn read after %d loads: %d vs %d", i, x, v.W[0])
			}
		}
	}
	close(stop)
	wg.Wait()
}

func TestCloseDuringUse(t *testing.T) {
	for round := 0; round < 5; round++ {
		a, err := arena.New[msg](arena.Config{Slots: 64, Shards: 3})
		require.NoError(t, err)
		var wg sync.WaitGroup
		var unexpected atomic.Value
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 5000; i++ {
					tok, err := a.Store(msg{ID: uint64(i)})
					if errors.Is(err, arena.ErrClosed) {
						return
					}
					if err != nil && !errors.Is(err, arena.ErrFull) {
						unexpected.Store(err)
						return
					}
					for _, e := range []error{
						a.View(tok, func(m *msg) { m.Seq = m.ID }),
						a.Update(tok, func(m *msg) { m.Seq++ }),
						a.Free(tok),
					} {
						if e != nil && !errors.Is(e, arena.ErrClosed) && !errors.Is(e, arena.ErrBadToken) {
							unexpected.Store(e)
						}
					}
					a.Stats()
					a.Available()
				}
			}()
		}
		time.Sleep(time.Duration(round) * time.Millisecond)
		require.NoError(t, a.Close())
		wg.Wait()
		if e := unexpected.Load(); e != nil {
			t.Fatalf("unexpected error during Close: %v", e)
		}
		st := a.Stats()
		require.Equal(t, st.Allocs-st.Frees, st.Live)
	}
}

func TestCloseWaitsForCallback(t *testing.T) {
	a, err := arena.New[msg](arena.Config{Slots: 4})
	require.NoError(t, err)
	tok, err := a.Store(msg{ID: 3})
	require.NoError(t, err)
	inside, release := make(chan struct{}), make(chan struct{})
	go a.View(tok, func(m *msg) {
		close(inside)
		<-release
		if m.ID != 3 { // would fault if the memory were unmapped
			t.Error("payload changed")
		}
	})
	<-inside
	closed := make(chan error, 1)
	go func() { closed <- a.Close() }()
	select {
	case <-closed:
		t.Fatal("Close returned while a callback was still running")
	case <-time.After(50 * time.Millisecond):
	}
	_, err = a.Load(tok)
	require.ErrorIs(t, err, arena.ErrClosed, "new calls fail while Close waits")
	close(release)
	require.NoError(t, <-closed)
}

// GOMAXPROCS raised above the P count the arena was built for still works
// and the counters stay exact.
func TestGOMAXPROCSRaised(t *testing.T) {
	prev := runtime.GOMAXPROCS(0)
	a := newArena[msg](t, 256, 0)
	runtime.GOMAXPROCS(prev*4 + 3)
	defer runtime.GOMAXPROCS(prev)
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				tok, err := a.Store(msg{ID: uint64(i)})
				if errors.Is(err, arena.ErrFull) {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				if err := a.Free(tok); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	runtime.GOMAXPROCS(prev)
	st := a.Stats()
	require.Equal(t, st.Allocs, st.Frees)
	require.Equal(t, a.Capacity(), a.Available())
}

// Reserving 2^27 slots of 64 bytes (8 GiB plus headers) commits almost
// nothing; memory grows with the slots used.
func TestLazyCapacity(t *testing.T) {
	before := rssKiB(t)
	a, err := arena.New[[64]byte](arena.Config{Slots: 1 << 27})
	require.NoError(t, err)
	defer a.Close()
	grew := rssKiB(t) - before
	require.Less(t, grew, int64(4<<10), "New grew RSS by %d KiB", grew)
	require.Equal(t, 1<<27, a.Available())

	// Use 100k slots: RSS grows by roughly their size, not the capacity's.
	for i := 0; i < 100_000; i++ {
		_, p, err := a.Alloc()
		require.NoError(t, err)
		p[0] = 1
	}
	grew = rssKiB(t) - before
	require.Less(t, grew, int64(64<<10), "100k slots grew RSS by %d KiB", grew)
}

func rssKiB(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			require.NoError(t, err)
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

func waitOrFail(t *testing.T, wg *sync.WaitGroup, msg string) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal(msg)
	}
}
