package message

import (
	"context"
	"errors"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

func TestPutWaitReturnsAtOnceWhenFree(t *testing.T) {
	s := newStore[payload](t, 2)
	tok, err := s.PutWait(nilCtx, Header{Seq: 3}, payload{A: 9})
	if err != nil {
		t.Fatal(err)
	}
	h, err := s.Header(tok)
	if err != nil || h.Seq != 3 || h.Created == 0 || h.Size != 64 {
		t.Fatalf("Header = %+v, %v (want Created stamped and Size 64)", h, err)
	}
	var a uint64
	s.View(tok, func(m *Message[payload]) { a = m.Payload.A })
	if a != 9 {
		t.Fatal("payload not stored")
	}
	if err := s.Free(tok); err != nil {
		t.Fatal(err)
	}
}

func TestPutWaitParksUntilFree(t *testing.T) {
	s := newStore[payload](t, 1)
	first, _ := s.Put(Header{}, payload{})
	got := make(chan error, 1)
	var tok token.Token
	go func() {
		var err error
		tok, err = s.PutWait(context.Background(), Header{Seq: 2}, payload{A: 2})
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("PutWait on a full store returned %v without waiting", err)
	case <-time.After(20 * time.Millisecond):
	}
	if err := s.Free(first); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("PutWait not woken by Free")
	}
	if h, err := s.Header(tok); err != nil || h.Seq != 2 {
		t.Fatalf("woken PutWait stored %+v, %v", h, err)
	}
	s.Free(tok)
	if s.Available() != s.Capacity() {
		t.Fatal("slot lost")
	}
}

func TestPutWaitHonoursContextAndClose(t *testing.T) {
	s, err := NewStore[payload](arena.Config{Slots: 1, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	held, _ := s.Put(Header{}, payload{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := s.PutWait(ctx, Header{}, payload{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("PutWait past its deadline = %v", err)
	}
	// The waiter that gave up lost no slot.
	s.Free(held)
	if s.Available() != s.Capacity() {
		t.Fatal("a waiter that gave up lost a slot")
	}
	held, _ = s.Put(Header{}, payload{})
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.PutWait(context.Background(), Header{}, payload{})
		}()
	}
	time.Sleep(20 * time.Millisecond)
	if err := s.Close(); !errors.Is(err, ErrReferenced) {
		t.Fatalf("Close = %v", err)
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, arena.ErrClosed) {
			t.Errorf("waiter %d after Close = %v", i, err)
		}
	}
	if _, err := s.PutWait(context.Background(), Header{}, payload{}); !errors.Is(err, arena.ErrClosed) {
		t.Fatalf("PutWait after Close = %v", err)
	}
	if err := s.Free(held); err != nil {
		t.Fatalf("Free of the reference outstanding at Close = %v", err)
	}
}

func TestPutWaitAllocatesNothing(t *testing.T) {
	s := newStore[payload](t, 4)
	ctx := context.Background()
	allocs := testing.AllocsPerRun(200, func() {
		tok, err := s.PutWait(ctx, Header{}, payload{})
		if err != nil {
			t.Fatal(err)
		}
		s.Free(tok)
	})
	if allocs != 0 {
		t.Fatalf("PutWait+Free allocates %.1f times", allocs)
	}
}

func TestStoreTokens(t *testing.T) {
	s := newStore[payload](t, 16)
	var live []token.Token
	for i := 0; i < 10; i++ {
		tok, _ := s.Put(Header{}, payload{})
		live = append(live, tok)
	}
	s.Retain(live[0]) // two references: still yielded once
	for _, tok := range []token.Token{live[3], live[7]} {
		s.Free(tok)
	}
	want := slices.DeleteFunc(slices.Clone(live), func(t token.Token) bool { return t == live[3] || t == live[7] })
	var got []token.Token
	for tok := range s.Tokens() {
		got = append(got, tok)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("Tokens = %v, want %v", got, want)
	}
	// Breaking out, and freeing inside the loop.
	n := 0
	for tok := range s.Tokens() {
		s.Free(tok)
		if n++; n == 2 {
			break
		}
	}
	if n != 2 {
		t.Fatal(n)
	}
	// A slot allocated but not published (a Put in progress) is not yielded.
	tok, m, err := s.a.Alloc()
	if err != nil {
		t.Fatal(err)
	}
	_ = m
	for y := range s.Tokens() {
		if y == tok {
			t.Fatal("Tokens yielded a slot whose message was never published")
		}
	}
	s.a.Free(tok)
}

func TestStoreTokensAfterClose(t *testing.T) {
	s, _ := NewStore[payload](arena.Config{Slots: 4, Shards: 1})
	s.Put(Header{}, payload{})
	s.Close()
	for tok := range s.Tokens() {
		t.Fatalf("Tokens after Close yielded %v", tok)
	}
	if _, err := s.Trim(); !errors.Is(err, arena.ErrClosed) {
		t.Fatalf("Trim after Close = %v", err)
	}
}

func TestStoreTokensRacesClose(t *testing.T) {
	for try := 0; try < 10; try++ {
		s, _ := NewStore[payload](arena.Config{Slots: 64, Shards: 2})
		for i := 0; i < 40; i++ {
			s.Put(Header{}, payload{})
		}
		var wg sync.WaitGroup
		for g := 0; g < 2; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 20; i++ {
					for range s.Tokens() {
					}
				}
			}()
		}
		s.Close()
		wg.Wait()
	}
}

func TestStoreTrim(t *testing.T) {
	s := newStore[[4096]byte](t, 64)
	var toks []token.Token
	for i := 0; i < 64; i++ {
		tok, err := s.Put(Header{}, [4096]byte{1})
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	for _, tok := range toks[1:] {
		s.Free(tok)
	}
	released, err := s.Trim()
	if err != nil || released < 0 {
		t.Fatalf("Trim = %d, %v", released, err)
	}
	// The live message is intact, freed tokens stay stale, and recycled
	// slots come back zeroed.
	s.View(toks[0], func(m *Message[[4096]byte]) {
		if m.Payload[0] != 1 {
			t.Error("Trim touched a live message")
		}
	})
	if err := s.Free(toks[5]); !errors.Is(err, arena.ErrStale) {
		t.Fatalf("Free of a freed token after Trim = %v", err)
	}
	tok, err := s.PutFunc(Header{}, func(m *Message[[4096]byte]) error {
		if m.Payload[0] != 0 {
			t.Error("recycled slot not zeroed after Trim")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Free(tok)
}

// After a burst of 64-byte messages is 99% freed, Store.Trim brings the
// store's resident memory (messages, the arena's state words and versions,
// the store's own metadata) to at most 15% of its peak.
func TestStoreTrimBurstRSS(t *testing.T) {
	const n = 1 << 20
	toks := make([]token.Token, n)
	for i := range toks {
		toks[i] = token.Token(i) // touch it now, so it is in the baseline
	}
	runtime.GC()
	base := rssKiB(t)
	s, err := NewStore[[64]byte](arena.Config{Slots: n})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range toks {
		if toks[i], err = s.Put(Header{}, [64]byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	peak := rssKiB(t)
	for _, tok := range toks[n/100:] {
		if err := s.Free(tok); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Trim(); err != nil {
		t.Fatal(err)
	}
	after := rssKiB(t)
	share := float64(after-base) / float64(peak-base)
	t.Logf("RSS: base %d KiB, peak %d KiB, after Trim %d KiB: %.1f%% of the store's peak", base, peak, after, 100*share)
	if share > 0.15 {
		t.Fatalf("after Trim the store keeps %.1f%% of its peak resident, want at most 15%%", 100*share)
	}
	// Stale tokens stay stale; the live ones are intact.
	if _, err := s.Header(toks[n-1]); !errors.Is(err, arena.ErrStale) {
		t.Fatalf("Header of a freed, trimmed message: %v", err)
	}
	if err := s.Free(toks[n-1]); !errors.Is(err, arena.ErrStale) {
		t.Fatalf("Free of a freed, trimmed message: %v", err)
	}
	for _, tok := range toks[:n/100] {
		if err := s.View(tok, func(m *Message[[64]byte]) {
			if m.Payload[0] != 1 {
				t.Fatalf("message %v lost its payload", tok)
			}
		}); err != nil {
			t.Fatal(err)
		}
		if err := s.Free(tok); err != nil {
			t.Fatal(err)
		}
	}
	if s.Available() != s.Capacity() {
		t.Fatalf("Available %d, Capacity %d", s.Available(), s.Capacity())
	}
}

// rssKiB is the process's resident set (VmRSS).
func rssKiB(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("needs /proc/self/status")
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	t.Skip("no VmRSS")
	return 0
}
