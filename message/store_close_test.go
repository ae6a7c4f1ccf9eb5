package message

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

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// closedOrFull reports whether err is one of the errors a store call racing
// Close may return.
func closedOrFull(err error) bool {
	return err == nil || errors.Is(err, arena.ErrClosed) || errors.Is(err, arena.ErrFull)
}

// TestPutFuncFillSleepsThroughClose: a fill that is still writing into its
// slot when another goroutine closes the store must not fault. Close waits
// for the fill, which then gets ErrClosed (its message is never published).
func TestPutFuncFillSleepsThroughClose(t *testing.T) {
	s, err := NewStore[[1 << 16]byte](arena.Config{Slots: 2, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	inFill := make(chan struct{})
	closed := make(chan error, 1)
	var tok token.Token
	var perr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		tok, perr = s.PutFunc(Header{}, func(m *Message[[1 << 16]byte]) error {
			close(inFill)
			time.Sleep(50 * time.Millisecond) // Close is called meanwhile
			for i := range m.Payload {
				m.Payload[i] = byte(i)
			}
			return nil
		})
	}()
	<-inFill
	go func() { closed <- s.Close() }()
	<-done
	if !errors.Is(perr, arena.ErrClosed) || !tok.IsNil() {
		t.Fatalf("PutFunc whose fill outlived Close's start = %v, %v; want ErrClosed", tok, perr)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close = %v", err)
	}
}

// TestByteWriteFillSleepsThroughClose is the ByteStore.Write version.
func TestByteWriteFillSleepsThroughClose(t *testing.T) {
	s, err := NewByteStore[[65536]byte](arena.Config{Slots: 2, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	inFill := make(chan struct{})
	var werr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, werr = s.Write(Header{}, func(slot []byte) (int, error) {
			close(inFill)
			time.Sleep(30 * time.Millisecond)
			return copy(slot, strings.Repeat("x", len(slot))), nil
		})
	}()
	<-inFill
	if err := s.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	<-done
	if !errors.Is(werr, arena.ErrClosed) {
		t.Fatalf("Write whose fill outlived Close's start = %v", werr)
	}
}

type mib [1 << 20]byte

// TestBigPutsRaceClose: 1 MiB Puts (and PutBytes, Writes) racing Close, many
// times over. Before the store had its own gate this faulted within a few
// tries: Put copied the payload into a slot that Close had unmapped.
func TestBigPutsRaceClose(t *testing.T) {
	tries := 60
	if testing.Short() {
		tries = 15
	}
	var big mib
	for i := range big {
		big[i] = byte(i)
	}
	data := big[:]
	for try := 0; try < tries; try++ {
		s, err := NewByteStore[[65536]byte](arena.Config{Slots: 8, Shards: 2})
		if err != nil {
			t.Fatal(err)
		}
		bs, err := NewStore[mib](arena.Config{Slots: 4, Shards: 2})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var bad atomic.Value
		check := func(op string, err error) {
			if !closedOrFull(err) {
				bad.Store(op + ": " + err.Error())
			}
		}
		start := make(chan struct{})
		for g := 0; g < 3; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for i := 0; ; i++ {
					var err error
					var tok token.Token
					switch (g + i) % 3 {
					case 0:
						tok, err = bs.Put(Header{}, big)
						if err == nil {
							check("Free", bs.Free(tok))
						}
					case 1:
						tok, err = s.PutBytes(Header{}, data[:65536])
						if err == nil {
							check("Free", s.Free(tok))
						}
					case 2:
						tok, err = s.Write(Header{}, func(slot []byte) (int, error) {
							return copy(slot, data), nil
						})
						if err == nil {
							check("Free", s.Free(tok))
						}
					}
					check("Put", err)
					if errors.Is(err, arena.ErrClosed) {
						return
					}
				}
			}()
		}
		close(start)
		time.Sleep(time.Duration(try%5) * 100 * time.Microsecond)
		e1, e2 := bs.Close(), s.Close()
		wg.Wait()
		for _, err := range []error{e1, e2} {
			// A Put that completed just before Close holds its reference
			// until the goroutine frees it: Close may report it.
			if err != nil && !errors.Is(err, ErrReferenced) {
				t.Fatalf("try %d: Close = %v", try, err)
			}
		}
		if v := bad.Load(); v != nil {
			t.Fatalf("try %d: %s", try, v)
		}
	}
}

// TestEveryMethodRacesClose hammers every Store, ByteStore and edge method
// while the store closes: each returns a documented error, none faults, and
// every reference a goroutine owned could be freed with a nil error, before
// or after Close.
func TestEveryMethodRacesClose(t *testing.T) {
	for try := 0; try < 20; try++ {
		s, err := NewByteStore[[256]byte](arena.Config{Slots: 64, Shards: 2})
		if err != nil {
			t.Fatal(err)
		}
		e := mustEdge(t, s, Policy{MaxItems: 8, Admission: DropOldest})
		var wg sync.WaitGroup
		var bad atomic.Value
		fail := func(op string, err error) { bad.Store(op + ": " + err.Error()) }
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 400; i++ {
					tok, err := s.PutBytes(Header{Seq: uint64(i)}, []byte("hello"))
					if err != nil {
						if !closedOrFull(err) {
							fail("PutBytes", err)
						}
						continue
					}
					owned := 1
					if s.Retain(tok) == nil {
						owned++
					}
					if err := e.TrySend(tok); err == nil {
						owned--
					}
					for _, err := range []error{
						s.Read(tok, func(Header, []byte) {}),
						s.Rewrite(tok, func(_ []byte, n int) int { return n }),
						s.View(tok, func(*Message[[256]byte]) {}),
					} {
						if !errors.Is(err, arena.ErrClosed) && err != nil {
							fail("access", err)
						}
					}
					if _, err := s.Header(tok); err != nil && !errors.Is(err, arena.ErrClosed) {
						fail("Header", err)
					}
					if _, err := s.AppendTo(nil, tok); err != nil && !errors.Is(err, arena.ErrClosed) {
						fail("AppendTo", err)
					}
					if _, err := s.Refs(tok); err != nil && !errors.Is(err, arena.ErrClosed) {
						fail("Refs", err)
					}
					if got, ok := e.TryRecv(); ok {
						// An evicted or received token: ours now.
						if err := s.Free(got); err != nil {
							fail("Free of a received token", err)
						}
					}
					for ; owned > 0; owned-- {
						if err := s.Free(tok); err != nil {
							fail("Free of an owned reference", err)
						}
					}
				}
			}()
		}
		time.Sleep(time.Duration(try%4) * 200 * time.Microsecond)
		cerr := s.Close()
		wg.Wait()
		if cerr != nil && !errors.Is(cerr, ErrReferenced) {
			t.Fatalf("try %d: Close = %v", try, cerr)
		}
		e.Close()
		e.Drain()
		if st := e.Stats(); st.FreeErrors != 0 {
			t.Fatalf("try %d: draining the edge of a closed store: %d free errors", try, st.FreeErrors)
		}
		if v := bad.Load(); v != nil {
			t.Fatalf("try %d: %s", try, v)
		}
		s.late.mu.Lock()
		region := s.late.region
		s.late.mu.Unlock()
		if region != nil {
			t.Fatalf("try %d: every outstanding reference was freed, but the metadata is still mapped", try)
		}
	}
}

// TestClosedMeansClosed: after Close, every method of every token, Nil and
// out-of-range ones included, returns ErrClosed; the only nil answers are
// the frees of references outstanding at Close, once each.
func TestClosedMeansClosed(t *testing.T) {
	s, err := NewByteStore[[64]byte](arena.Config{Slots: 4, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	live, _ := s.PutBytes(Header{}, []byte("x"))
	s.Retain(live)
	stale, _ := s.PutBytes(Header{}, nil)
	s.Free(stale)
	cerr := s.Close()
	if !errors.Is(cerr, ErrReferenced) || !strings.Contains(cerr.Error(), "1 message(s) still held 2 reference(s) ("+live.String()+")") {
		t.Fatalf("Close with 2 references to %v = %v", live, cerr)
	}
	if strings.Count(cerr.Error(), "message:") != 1 {
		t.Errorf("Close error repeats its prefix: %v", cerr)
	}
	for _, tok := range []token.Token{token.Nil, token.New(99, 1), token.New(1, 0), stale, live} {
		checks := map[string]error{
			"Retain":    s.Retain(tok),
			"View":      s.View(tok, func(*Message[[64]byte]) {}),
			"View nil":  s.View(tok, nil),
			"Update":    s.Update(tok, func(*Message[[64]byte]) {}),
			"Update nl": s.Update(tok, nil),
			"Read":      s.Read(tok, func(Header, []byte) {}),
			"Read nil":  s.Read(tok, nil),
			"Rewrite":   s.Rewrite(tok, func([]byte, int) int { return 0 }),
		}
		_, checks["Header"] = s.Header(tok)
		_, checks["Refs"] = s.Refs(tok)
		_, checks["AppendTo"] = s.AppendTo(nil, tok)
		_, _, checks["admitInfo"] = s.admitInfo(tok)
		if tok != live {
			checks["Free"] = s.Free(tok)
		}
		for name, err := range checks {
			if !errors.Is(err, arena.ErrClosed) {
				t.Errorf("%s(%v) after Close = %v, want ErrClosed", name, tok, err)
			}
		}
	}
	puts := map[string]error{}
	_, puts["Put"] = s.Put(Header{}, [64]byte{})
	_, puts["PutFunc"] = s.PutFunc(Header{}, func(*Message[[64]byte]) error { return nil })
	_, puts["PutFunc nil"] = s.PutFunc(Header{}, nil)
	_, puts["PutBytes"] = s.PutBytes(Header{}, []byte("y"))
	_, puts["Write"] = s.Write(Header{}, func([]byte) (int, error) { return 0, nil })
	_, puts["Write nil"] = s.Write(Header{}, nil)
	puts["Close"] = s.Close()
	for name, err := range puts {
		if !errors.Is(err, arena.ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}
	// The two references outstanding at Close: nil once each, then closed.
	for i := 0; i < 2; i++ {
		if err := s.Free(live); err != nil {
			t.Fatalf("Free %d of a reference outstanding at Close = %v", i+1, err)
		}
	}
	if err := s.Free(live); !errors.Is(err, arena.ErrClosed) {
		t.Fatalf("third Free after Close = %v", err)
	}
	if s.late.region != nil {
		t.Fatal("metadata still mapped after the last outstanding reference was freed")
	}
}

// TestCloseReportsEdgeHeldTokens: closing a store while an edge still holds
// its tokens reports them, and draining the edge afterwards frees them
// without a FreeError.
func TestCloseReportsEdgeHeldTokens(t *testing.T) {
	s, err := NewStore[payload](arena.Config{Slots: 8, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	e := mustEdge(t, s, Policy{MaxItems: 4})
	var toks []token.Token
	for i := 0; i < 3; i++ {
		tok, _ := s.Put(Header{}, payload{})
		if err := e.TrySend(tok); err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	s.Retain(toks[0])
	s.Free(toks[0])
	err = s.Close()
	if !errors.Is(err, ErrReferenced) {
		t.Fatalf("Close with an edge holding 3 tokens = %v", err)
	}
	for _, want := range []string{"3 message(s) still held 3 reference(s)", toks[0].String(), toks[2].String()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Close error %q does not say %q", err, want)
		}
	}
	e.Close()
	if n := e.Drain(); n != 3 {
		t.Fatalf("Drain = %d", n)
	}
	if st := e.Stats(); st.FreeErrors != 0 {
		t.Fatalf("draining the edge of a closed store counted %d free errors", st.FreeErrors)
	}

	// The right order closes quietly.
	s2, _ := NewStore[payload](arena.Config{Slots: 8, Shards: 1})
	e2 := mustEdge(t, s2, Policy{MaxItems: 4})
	tok, _ := s2.Put(Header{}, payload{})
	e2.TrySend(tok)
	e2.Close()
	e2.Drain()
	if err := s2.Close(); err != nil {
		t.Fatalf("Close after the edges were drained = %v", err)
	}
}

// TestLateReferencesUnmappedWhenUnreachable: a store closed with references
// that are never freed does not keep its metadata mapped forever.
func TestLateReferencesUnmappedWhenUnreachable(t *testing.T) {
	unmapped := make(chan struct{})
	func() {
		s, _ := NewStore[payload](arena.Config{Slots: 4, Shards: 1})
		s.Put(Header{}, payload{})
		if err := s.Close(); !errors.Is(err, ErrReferenced) {
			t.Fatal(err)
		}
		region := s.late.region
		runtime.AddCleanup(region, func(c chan struct{}) { close(c) }, unmapped)
	}()
	for i := 0; i < 20; i++ {
		runtime.GC()
		select {
		case <-unmapped:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatal("the closed store's metadata region was never released")
}

// TestLateFreeRacesFastPaths: references freed and retained while Close
// runs are all accounted for: every owned reference frees with nil, and the
// metadata is released once the last one is gone.
func TestLateFreeRacesFastPaths(t *testing.T) {
	for try := 0; try < 30; try++ {
		s, _ := NewStore[payload](arena.Config{Slots: 16, Shards: 2})
		toks := make([]token.Token, 8)
		for i := range toks {
			toks[i], _ = s.Put(Header{}, payload{})
			for j := 0; j < 3; j++ {
				s.Retain(toks[i]) // 4 references each
			}
		}
		var wg sync.WaitGroup
		var bad atomic.Value
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, tok := range toks {
					owned := 1 // each goroutine owns one reference of each
					for k := 0; k < 5 && owned > 0; k++ {
						if s.Retain(tok) == nil {
							owned++
						}
						if err := s.Free(tok); err != nil {
							bad.Store("Free of an owned reference: " + err.Error())
						}
						owned--
						runtime.Gosched()
					}
					for ; owned > 0; owned-- {
						if err := s.Free(tok); err != nil {
							bad.Store("final Free: " + err.Error())
						}
					}
				}
			}()
		}
		runtime.Gosched()
		cerr := s.Close()
		wg.Wait()
		if cerr != nil && !errors.Is(cerr, ErrReferenced) {
			t.Fatal(cerr)
		}
		if v := bad.Load(); v != nil {
			t.Fatalf("try %d: %v", try, v)
		}
		if s.late.region != nil {
			t.Fatalf("try %d: metadata still mapped with every reference freed", try)
		}
	}
}

// TestNewStoreHugeIsCheap: a store of 2^27 slots costs O(1) Go heap, and its
// metadata is committed only as slots are used.
func TestNewStoreHugeIsCheap(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	rss0 := residentBytes(t)
	s, err := NewStore[payload](arena.Config{Slots: 1 << 27})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 4<<20 {
		t.Fatalf("NewStore of 2^27 slots grew the Go heap by %d bytes", grew)
	}
	var toks []token.Token
	for i := 0; i < 1000; i++ {
		tok, err := s.Put(Header{Seq: 1}, payload{A: 7})
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	// 3 GiB of metadata reserved; what a thousand messages touched is
	// committed, not the rest.
	if grew := residentBytes(t) - rss0; grew > 64<<20 {
		t.Fatalf("NewStore of 2^27 slots and 1000 Puts grew RSS by %d bytes", grew)
	}
	for _, tok := range toks[1:] {
		s.Free(tok)
	}
	tok := toks[0]
	if h, err := s.Header(tok); err != nil || h.Seq != 1 {
		t.Fatal(h, err)
	}
	if err := s.Free(tok); err != nil {
		t.Fatal(err)
	}
}

// residentBytes reads the process's resident set size (Linux), or skips.
func residentBytes(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Skip("no /proc/self/statm:", err)
	}
	f := strings.Fields(string(b))
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return pages * int64(os.Getpagesize())
}

// TestCloseWaitsForEdgeSend: an edge send (the admission fast path) racing
// Close gets ErrClosed or succeeds, never faults.
func TestCloseWaitsForEdgeSend(t *testing.T) {
	for try := 0; try < 20; try++ {
		s, _ := NewStore[payload](arena.Config{Slots: 8, Shards: 2})
		e := mustEdge(t, s, Policy{MaxItems: 4, Admission: DropOldest})
		tok, _ := s.Put(Header{}, payload{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for i := 0; i < 200; i++ {
				if s.Retain(tok) != nil {
					return
				}
				if err := e.Send(ctx, tok); err != nil {
					s.Free(tok)
				}
				if got, ok := e.TryRecv(); ok {
					s.Free(got)
				}
			}
		}()
		runtime.Gosched()
		s.Close()
		wg.Wait()
		e.Close()
		e.Drain()
		if e.Stats().FreeErrors != 0 {
			t.Fatalf("try %d: free errors", try)
		}
	}
}
