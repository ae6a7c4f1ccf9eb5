package message_test

import (
	"context"
	"errors"
	"fmt"
	"math"
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

type atkPay struct {
	A, B uint64
	Pad  [40]byte
}

func atkStore[P any](t testing.TB, slots, shards int) *message.Store[P] {
	t.Helper()
	s, err := message.NewStore[P](arena.Config{Slots: slots, Shards: shards})
	if err != nil {
		t.Fatalf("NewStore: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func atkNoPanic(t *testing.T, what string, fn func() error) (err error) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s panicked: %v", what, r)
		}
	}()
	return fn()
}

func atkStoreCalls(s *message.Store[atkPay], tok token.Token) map[string]func() error {
	return map[string]func() error{
		"Header": func() error { _, err := s.Header(tok); return err },
		"View":   func() error { return s.View(tok, func(*message.Message[atkPay]) { panic("fn ran") }) },
		"Update": func() error { return s.Update(tok, func(*message.Message[atkPay]) { panic("fn ran") }) },
		"Retain": func() error { return s.Retain(tok) },
		"Refs":   func() error { _, err := s.Refs(tok); return err },
		"Free":   func() error { return s.Free(tok) },
	}
}

func TestAttackStoreStaleAndBadTokens(t *testing.T) {
	s := atkStore[atkPay](t, 8, 2)
	other := atkStore[atkPay](t, 8, 2)
	stale, _ := s.Put(message.Header{Seq: 1}, atkPay{A: 1})
	if err := s.Free(stale); err != nil {
		t.Fatal(err)
	}
	// Reuse the slot.
	var reusedOld token.Token
	for i := 0; i < 100 && reusedOld.IsNil(); i++ {
		t1, _ := s.Put(message.Header{}, atkPay{})
		s.Free(t1)
		t2, _ := s.Put(message.Header{}, atkPay{})
		if t2.Index() == t1.Index() {
			reusedOld = t1
		} else {
			s.Free(t2)
		}
	}
	if reusedOld.IsNil() {
		t.Fatal("no reuse")
	}
	ot, _ := other.Put(message.Header{}, atkPay{})
	staleCases := map[string]token.Token{
		"stale":      stale,
		"reused":     reusedOld,
		"forged":     token.New(2, 4242),
		"untouched":  token.New(7, 99),
		"otherStore": ot,
	}
	badCases := map[string]token.Token{
		"Nil":        token.Nil,
		"outOfRange": token.New(8, 1),
		"hugeIndex":  token.New(math.MaxUint32, 3),
		"gen0":       token.New(1, 0),
	}
	for name, tok := range staleCases {
		for op, call := range atkStoreCalls(s, tok) {
			if err := atkNoPanic(t, op, call); !errors.Is(err, arena.ErrStale) {
				t.Errorf("%s of %s token %v: %v, want ErrStale", op, name, tok, err)
			}
		}
	}
	for name, tok := range badCases {
		for op, call := range atkStoreCalls(s, tok) {
			if err := atkNoPanic(t, op, call); !errors.Is(err, arena.ErrBadToken) {
				t.Errorf("%s of %s token %v: %v, want ErrBadToken", op, name, tok, err)
			}
		}
	}
	if s.Available() != s.Capacity()-1 {
		t.Fatalf("Available %d, want %d", s.Available(), s.Capacity()-1)
	}
	// nil callbacks: errors, no panic.
	live, _ := s.Put(message.Header{}, atkPay{})
	if err := atkNoPanic(t, "View nil", func() error { return s.View(live, nil) }); err == nil || strings.Contains(err.Error(), "panicked") {
		t.Errorf("View nil fn: %v", err)
	}
	if err := atkNoPanic(t, "Update nil", func() error { return s.Update(live, nil) }); err == nil || strings.Contains(err.Error(), "panicked") {
		t.Errorf("Update nil fn: %v", err)
	}
	if _, err := s.PutFunc(message.Header{}, nil); err == nil {
		t.Errorf("PutFunc nil fill accepted")
	}
	if s.Available() != s.Capacity()-2 {
		t.Fatalf("Available %d after nil-arg calls", s.Available())
	}
}

func TestAttackStoreRefcounts(t *testing.T) {
	s := atkStore[atkPay](t, 2, 1)
	tok, err := s.Put(message.Header{Seq: 5}, atkPay{A: 5})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := s.Retain(tok); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.Refs(tok); n != 4 || err != nil {
		t.Fatalf("Refs %d %v", n, err)
	}
	for i := 0; i < 4; i++ {
		if s.Available() != 1 {
			t.Fatalf("slot recycled with %d refs left", 4-i)
		}
		if err := s.Free(tok); err != nil {
			t.Fatalf("Free %d: %v", i, err)
		}
	}
	if err := s.Free(tok); !errors.Is(err, arena.ErrStale) {
		t.Fatalf("one Free too many: %v", err)
	}
	if err := s.Retain(tok); !errors.Is(err, arena.ErrStale) {
		t.Fatalf("Retain after last Free: %v", err)
	}
	if s.Available() != 2 {
		t.Fatalf("Available %d", s.Available())
	}
	// Concurrent Retain/Free never drops below the references held.
	tok, _ = s.Put(message.Header{}, atkPay{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				if err := s.Retain(tok); err != nil {
					t.Error(err)
					return
				}
				if err := s.Free(tok); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n, err := s.Refs(tok); n != 1 || err != nil {
		t.Fatalf("Refs after churn %d %v", n, err)
	}
	s.Free(tok)
	if st := s.Stats(); st.Allocs != st.Frees || s.Available() != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestAttackStoreDefaults(t *testing.T) {
	s := atkStore[atkPay](t, 4, 1)
	want := uint32(unsafe.Sizeof(atkPay{}))
	before := message.Now()
	t1, _ := s.Put(message.Header{}, atkPay{})
	//lint:ignore SA1012 a nil context is what is tested
	t2, _ := s.PutWait(nil, message.Header{}, atkPay{})
	t3, err := s.PutFunc(message.Header{}, func(m *message.Message[atkPay]) error {
		if m.Header.Size != want || m.Header.Created == 0 {
			return fmt.Errorf("fill saw header %+v", m.Header)
		}
		if m.Payload != (atkPay{}) {
			return errors.New("fill saw a non-zero payload")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []token.Token{t1, t2, t3} {
		h, err := s.Header(tok)
		if err != nil || h.Size != want || h.Created < before {
			t.Errorf("header %+v %v, want Size %d and Created stamped", h, err, want)
		}
		s.Free(tok)
	}
	// Explicit values are kept.
	tok, _ := s.Put(message.Header{Size: 3, Created: 17}, atkPay{})
	if h, _ := s.Header(tok); h.Size != 3 || h.Created != 17 {
		t.Errorf("explicit header changed: %+v", h)
	}
	s.Free(tok)
}

func atkParkedInAwait() int {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	c := 0
	for _, g := range strings.Split(string(buf[:n]), "\n\n") {
		if strings.Contains(g, "arena.(*core).await") && (strings.Contains(g, "[select") || strings.Contains(g, "[chan receive")) {
			c++
		}
	}
	return c
}

func atkWaitParkedN(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for atkParkedInAwait() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d parked, want %d", atkParkedInAwait(), n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestAttackStorePutWait(t *testing.T) {
	s := atkStore[atkPay](t, 1, 1)
	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	hold, err := s.PutWait(cctx, message.Header{}, atkPay{A: 1})
	if err != nil {
		t.Fatalf("PutWait with a free slot and a done ctx: %v", err)
	}
	if _, err := s.PutWait(cctx, message.Header{}, atkPay{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("PutWait full, cancelled: %v", err)
	}
	// FIFO.
	const waiters = 5
	order := make(chan int, waiters)
	toks := make(chan token.Token, waiters)
	for i := 0; i < waiters; i++ {
		go func() {
			//lint:ignore SA1012 a nil context is what is tested
			tok, err := s.PutWait(nil, message.Header{Seq: uint64(i)}, atkPay{A: uint64(i)})
			if err != nil {
				t.Error(err)
				return
			}
			order <- i
			toks <- tok
		}()
		atkWaitParkedN(t, i+1)
	}
	s.Free(hold)
	for want := 0; want < waiters; want++ {
		select {
		case got := <-order:
			if got != want {
				t.Fatalf("PutWait waiter %d served before %d", got, want)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("waiter %d never served", want)
		}
		tok := <-toks
		h, err := s.Header(tok)
		if err != nil || h.Seq != uint64(want) {
			t.Fatalf("header %+v %v", h, err)
		}
		s.Free(tok)
	}
	// Give-ups lose nothing.
	hold, _ = s.Put(message.Header{}, atkPay{})
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%4)*time.Millisecond)
			defer cancel()
			tok, err := s.PutWait(ctx, message.Header{}, atkPay{})
			if err == nil {
				s.Free(tok)
			} else if !errors.Is(err, context.DeadlineExceeded) {
				t.Error(err)
			}
		}()
	}
	time.Sleep(time.Millisecond)
	s.Free(hold)
	wg.Wait()
	if s.Available() != 1 {
		t.Fatalf("Available %d after give-ups", s.Available())
	}
	// Close wakes waiters with ErrClosed.
	hold, _ = s.Put(message.Header{}, atkPay{})
	errs := make(chan error, 3)
	for i := 0; i < 3; i++ {
		go func() {
			_, err := s.PutWait(context.Background(), message.Header{}, atkPay{})
			errs <- err
		}()
	}
	atkWaitParkedN(t, 3)
	err = s.Close()
	if !errors.Is(err, message.ErrReferenced) {
		t.Errorf("Close with one message held: %v, want ErrReferenced", err)
	}
	for i := 0; i < 3; i++ {
		select {
		case err := <-errs:
			if !errors.Is(err, arena.ErrClosed) {
				t.Errorf("PutWait after Close: %v", err)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("Close did not wake PutWait")
		}
	}
	if err := s.Free(hold); err != nil {
		t.Errorf("Free of the outstanding reference after Close: %v", err)
	}
	if err := s.Free(hold); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("second Free after Close: %v", err)
	}
	//lint:ignore SA1012 a nil context is what is tested
	if _, err := s.PutWait(nil, message.Header{}, atkPay{}); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("PutWait after Close: %v", err)
	}
}

func TestAttackStoreCloseWithReferences(t *testing.T) {
	s, err := message.NewStore[atkPay](arena.Config{Slots: 16, Shards: 2})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := s.Put(message.Header{}, atkPay{A: 1})
	b, _ := s.Put(message.Header{}, atkPay{A: 2})
	s.Retain(b)
	s.Retain(b) // b: 3 references
	c, _ := s.Put(message.Header{}, atkPay{})
	s.Free(c) // c: freed before Close
	err = s.Close()
	if !errors.Is(err, message.ErrReferenced) {
		t.Fatalf("Close: %v, want ErrReferenced", err)
	}
	if !strings.Contains(err.Error(), "2 message") || !strings.Contains(err.Error(), "4 reference") {
		t.Errorf("Close error does not count 2 messages and 4 references: %v", err)
	}
	if err := s.Close(); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
	// Every other call: ErrClosed.
	for op, call := range atkStoreCalls(s, a) {
		if op == "Free" {
			continue
		}
		if err := atkNoPanic(t, op, call); !errors.Is(err, arena.ErrClosed) {
			t.Errorf("%s after Close: %v", op, err)
		}
	}
	if _, err := s.Put(message.Header{}, atkPay{}); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("Put after Close: %v", err)
	}
	if _, err := s.PutFunc(message.Header{}, func(*message.Message[atkPay]) error { return nil }); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("PutFunc after Close: %v", err)
	}
	if _, err := s.PutFunc(message.Header{}, nil); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("PutFunc(nil) after Close: %v", err)
	}
	if _, err := s.Trim(); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("Trim after Close: %v", err)
	}
	for range s.Tokens() {
		t.Errorf("Tokens yielded after Close")
	}
	if err := s.Free(c); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("Free of a token freed before Close: %v", err)
	}
	if err := s.Free(token.Nil); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("Free(Nil) after Close: %v", err)
	}
	for i := 0; i < 3; i++ {
		if err := s.Free(b); err != nil {
			t.Errorf("Free %d of b after Close: %v", i, err)
		}
	}
	if err := s.Free(b); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("4th Free of b after Close: %v", err)
	}
	if err := s.Free(a); err != nil {
		t.Errorf("Free of a after Close: %v", err)
	}
	if err := s.Free(a); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("second Free of a after Close: %v", err)
	}
}

func TestAttackStoreTokens(t *testing.T) {
	s := atkStore[atkPay](t, 500, 3)
	stable := map[token.Token]bool{}
	var freed []token.Token
	for i := 0; i < 300; i++ {
		tok, err := s.Put(message.Header{Seq: uint64(i)}, atkPay{})
		if err != nil {
			t.Fatal(err)
		}
		if i%4 == 0 {
			freed = append(freed, tok)
		} else {
			stable[tok] = true
			if i%4 == 1 {
				s.Retain(tok) // two references: yielded once all the same
			}
		}
	}
	for _, tok := range freed {
		s.Free(tok)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if tok, err := s.Put(message.Header{}, atkPay{}); err == nil {
				s.Free(tok)
			}
		}
	}()
	seen := map[token.Token]int{}
	for tok := range s.Tokens() {
		seen[tok]++
	}
	close(stop)
	wg.Wait()
	for tok := range stable {
		if seen[tok] != 1 {
			t.Fatalf("stable %v yielded %d times", tok, seen[tok])
		}
	}
	for _, tok := range freed {
		if seen[tok] != 0 {
			t.Fatalf("freed %v yielded", tok)
		}
	}
	n := 0
	for range s.Tokens() {
		if n++; n == 3 {
			break
		}
	}
	// Free inside the loop, to the last reference.
	for tok := range s.Tokens() {
		for {
			if err := s.Free(tok); err != nil {
				break
			}
		}
	}
	if s.Available() != s.Capacity() {
		t.Fatalf("Available %d after freeing every yielded token", s.Available())
	}
	// PutFunc in progress: not yielded (never published).
	entered, release := make(chan struct{}), make(chan struct{})
	go s.PutFunc(message.Header{}, func(*message.Message[atkPay]) error { close(entered); <-release; return errors.New("no") })
	<-entered
	for tok := range s.Tokens() {
		t.Errorf("unpublished PutFunc slot yielded: %v", tok)
	}
	close(release)
}

func TestAttackStoreTrim(t *testing.T) {
	const n = 4096
	s := atkStore[atkPay](t, n, 2)
	toks := make([]token.Token, n)
	for i := range toks {
		tok, err := s.Put(message.Header{Seq: uint64(i), Deadline: 99}, atkPay{A: uint64(i) + 1, B: 7})
		if err != nil {
			t.Fatal(err)
		}
		toks[i] = tok
	}
	keep := toks[100]
	for i, tok := range toks {
		if i != 100 {
			s.Free(tok)
		}
	}
	rel, err := s.Trim()
	if err != nil || rel <= 0 {
		t.Fatalf("Trim %d %v", rel, err)
	}
	if h, err := s.Header(keep); err != nil || h.Seq != 100 || h.Deadline != 99 {
		t.Fatalf("live header after Trim: %+v %v", h, err)
	}
	if n, err := s.Refs(keep); n != 1 || err != nil {
		t.Fatalf("live refs after Trim: %d %v", n, err)
	}
	s.View(keep, func(m *message.Message[atkPay]) {
		if m.Payload.A != 101 || m.Payload.B != 7 {
			t.Errorf("live payload after Trim: %+v", m.Payload)
		}
	})
	for i, tok := range toks {
		if i == 100 {
			continue
		}
		for op, call := range atkStoreCalls(s, tok) {
			if err := atkNoPanic(t, op, call); !errors.Is(err, arena.ErrStale) {
				t.Fatalf("%s of stale %v after Trim: %v", op, tok, err)
			}
		}
	}
	// Recycled slots start zeroed: PutFunc's fill sees a zero payload.
	var again []token.Token
	for i := 0; i < n-1; i++ {
		tok, err := s.PutFunc(message.Header{}, func(m *message.Message[atkPay]) error {
			if m.Payload != (atkPay{}) {
				return fmt.Errorf("payload not zeroed: %+v", m.Payload)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("PutFunc %d after Trim: %v", i, err)
		}
		again = append(again, tok)
	}
	if _, err := s.Put(message.Header{}, atkPay{}); !errors.Is(err, arena.ErrFull) {
		t.Fatalf("Put past capacity: %v", err)
	}
	for _, tok := range again {
		s.Free(tok)
	}
	s.Free(keep)
	if s.Available() != n {
		t.Fatalf("Available %d", s.Available())
	}
}

// Store.Trim while another goroutine puts and frees: documented safe (see
// arena.Arena.Trim). It must neither panic nor break exactness.
func TestAttackStoreTrimConcurrent(t *testing.T) {
	end := time.Now().Add(1200 * time.Millisecond)
	for round := 0; time.Now().Before(end); round++ {
		s, err := message.NewStore[uint64](arena.Config{Slots: 1 << 19, Shards: 2 + round%3})
		if err != nil {
			t.Fatal(err)
		}
		var pre []token.Token
		for i := 0; i < 1<<15; i++ {
			tok, _ := s.Put(message.Header{}, 0)
			pre = append(pre, tok)
		}
		for _, tok := range pre {
			s.Free(tok)
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			var live []token.Token
			for {
				select {
				case <-stop:
					for _, tok := range live {
						s.Free(tok)
					}
					return
				default:
				}
				t1, e1 := s.Put(message.Header{}, 1)
				t2, e2 := s.Put(message.Header{}, 2)
				if e1 != nil || e2 != nil {
					if e1 == nil {
						s.Free(t1)
					}
					if e2 == nil {
						s.Free(t2)
					}
					for _, tok := range live {
						s.Free(tok)
					}
					live = live[:0]
					continue
				}
				s.Free(t1)
				live = append(live, t2)
			}
		}()
		var terr error
		deadline := time.Now().Add(250 * time.Millisecond)
		for time.Now().Before(deadline) && terr == nil {
			terr = atkNoPanic(t, "Trim", func() error { _, err := s.Trim(); return err })
		}
		close(stop)
		wg.Wait()
		if terr == nil && s.Available() != s.Capacity() {
			terr = fmt.Errorf("Available %d, Capacity %d", s.Available(), s.Capacity())
		}
		s.Close()
		if terr != nil {
			t.Fatalf("round %d: %v", round, terr)
		}
	}
}

func TestAttackStorePutFuncFailures(t *testing.T) {
	s := atkStore[atkPay](t, 2, 1)
	boom := errors.New("boom")
	if _, err := s.PutFunc(message.Header{}, func(*message.Message[atkPay]) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("fill error: %v", err)
	}
	func() {
		defer func() {
			if r := recover(); r != "p" {
				t.Fatalf("recovered %v", r)
			}
		}()
		s.PutFunc(message.Header{}, func(*message.Message[atkPay]) error { panic("p") })
	}()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.PutFunc(message.Header{}, func(*message.Message[atkPay]) error { runtime.Goexit(); return nil })
	}()
	<-done
	if s.Available() != 2 {
		t.Fatalf("PutFunc failures leaked slots: Available %d", s.Available())
	}
	if st := s.Stats(); st.Allocs != st.Frees {
		t.Fatalf("stats %+v", st)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close after failed PutFuncs: %v", err)
	}
}

func TestAttackStoreByteStore(t *testing.T) {
	s, err := message.NewByteStore[[64]byte](arena.Config{Slots: 3, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.PutBytes(message.Header{}, make([]byte, 65)); !errors.Is(err, message.ErrTooLarge) {
		t.Fatalf("PutBytes 65: %v", err)
	}
	tok, err := s.PutBytes(message.Header{Size: 50}, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := s.Header(tok); h.Size != 5 {
		t.Fatalf("PutBytes Size %d", h.Size)
	}
	empty, _ := s.PutBytes(message.Header{}, nil)
	if h, _ := s.Header(empty); h.Size != 0 {
		t.Fatalf("PutBytes(nil) Size %d", h.Size)
	}
	s.Free(empty)
	for _, n := range []int{-1, 65, math.MaxInt} {
		if _, err := s.Write(message.Header{}, func(b []byte) (int, error) { return n, nil }); !errors.Is(err, message.ErrTooLarge) {
			t.Errorf("Write returning %d: %v", n, err)
		}
	}
	if s.Available() != 2 {
		t.Fatalf("failed Writes leaked: %d", s.Available())
	}
	for _, n := range []int{-1, 65} {
		if err := s.Rewrite(tok, func(b []byte, used int) int { return n }); !errors.Is(err, message.ErrTooLarge) {
			t.Errorf("Rewrite returning %d: %v", n, err)
		}
	}
	out, err := s.AppendTo(nil, tok)
	if err != nil || string(out) != "hello" {
		t.Fatalf("AppendTo %q %v", out, err)
	}
	s.Free(tok)
	if _, err := s.AppendTo(nil, tok); !errors.Is(err, arena.ErrStale) {
		t.Fatalf("AppendTo stale: %v", err)
	}
	if err := s.Read(tok, func(message.Header, []byte) {}); !errors.Is(err, arena.ErrStale) {
		t.Fatalf("Read stale: %v", err)
	}
}

type atkP64 [64]byte
type atkP128K8 [128<<10 + 8]byte
type atkP1M [1 << 20]byte
type atkP16M [16 << 20]byte

func atkStoreAllocs[P any](t *testing.T, name string) {
	t.Run(name, func(t *testing.T) {
		s := atkStore[P](t, 3, 1)
		p := new(P)
		keep, err := s.Put(message.Header{}, *p)
		if err != nil {
			t.Fatal(err)
		}
		var ferr error
		runs := 20
		if unsafe.Sizeof(*p) >= 1<<20 {
			runs = 4
		}
		for _, c := range []struct {
			op string
			fn func()
		}{
			{"Put+Free", func() {
				tok, err := s.Put(message.Header{}, *p)
				if err != nil {
					ferr = err
					return
				}
				s.Free(tok)
			}},
			{"PutWait+Free", func() {
				tok, err := s.PutWait(context.Background(), message.Header{}, *p)
				if err != nil {
					ferr = err
					return
				}
				s.Free(tok)
			}},
			{"Header", func() {
				if _, err := s.Header(keep); err != nil {
					ferr = err
				}
			}},
			{"View", func() {
				if err := s.View(keep, func(*message.Message[P]) {}); err != nil {
					ferr = err
				}
			}},
			{"Update", func() {
				if err := s.Update(keep, func(*message.Message[P]) {}); err != nil {
					ferr = err
				}
			}},
			{"Retain+Free", func() {
				if err := s.Retain(keep); err != nil {
					ferr = err
				}
				if err := s.Free(keep); err != nil {
					ferr = err
				}
			}},
		} {
			ferr = nil
			if n := testing.AllocsPerRun(runs, c.fn); n != 0 {
				t.Errorf("%s with %d-byte payload allocates %.1f per call", c.op, unsafe.Sizeof(*p), n)
			}
			if ferr != nil {
				t.Errorf("%s: %v", c.op, ferr)
			}
		}
	})
}

func TestAttackStoreNoAllocsBySize(t *testing.T) {
	atkStoreAllocs[atkP64](t, "64B")
	atkStoreAllocs[atkP128K8](t, "128KiB+8")
	atkStoreAllocs[atkP1M](t, "1MiB")
	atkStoreAllocs[atkP16M](t, "16MiB")
}

func TestAttackStoreNewStoreHeap(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s, err := message.NewStore[atkPay](arena.Config{Slots: 1 << 27})
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 4<<20 {
		t.Errorf("NewStore(1<<27) grew the heap by %d bytes", grew)
	}
	tok, _ := s.Put(message.Header{}, atkPay{})
	s.Free(tok)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Config errors and pointer types.
	for _, cfg := range []arena.Config{{Slots: 0}, {Slots: -3}, {Slots: 4, Shards: -1}} {
		if _, err := message.NewStore[atkPay](cfg); !errors.Is(err, arena.ErrInvalidConfig) {
			t.Errorf("NewStore(%+v): %v", cfg, err)
		}
	}
	if _, err := message.NewStore[string](arena.Config{Slots: 4}); !errors.Is(err, arena.ErrPointerType) {
		t.Errorf("NewStore[string]: %v", err)
	}
	if _, err := message.NewStore[struct{ A [2]*int }](arena.Config{Slots: 4}); !errors.Is(err, arena.ErrPointerType) {
		t.Errorf("NewStore[ptr array]: %v", err)
	}
}

func TestAttackStoreCloseUnderLoad(t *testing.T) {
	for round := 0; round < 5; round++ {
		s, err := message.NewByteStore[[256]byte](arena.Config{Slots: 32, Shards: round % 3})
		if err != nil {
			t.Fatal(err)
		}
		var bad atomic.Value
		okErr := func(op string, err error, allowed ...error) {
			if err == nil {
				return
			}
			for _, a := range allowed {
				if errors.Is(err, a) {
					return
				}
			}
			bad.Store(fmt.Sprintf("%s: %v", op, err))
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var held sync.Map // outstanding references at any moment
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					if r := recover(); r != nil {
						bad.Store(fmt.Sprint("panic: ", r))
					}
				}()
				var mine []token.Token
				for i := 0; ; i++ {
					select {
					case <-stop:
						for _, tok := range mine {
							held.Store(tok, true)
						}
						return
					default:
					}
					var tok token.Token
					var err error
					switch i % 11 {
					case 0:
						tok, err = s.Put(message.Header{}, [256]byte{1})
						okErr("Put", err, arena.ErrFull, arena.ErrClosed)
					case 1:
						ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
						tok, err = s.PutWait(ctx, message.Header{}, [256]byte{2})
						cancel()
						okErr("PutWait", err, arena.ErrClosed, context.DeadlineExceeded)
					case 2:
						tok, err = s.PutFunc(message.Header{}, func(m *message.Message[[256]byte]) error {
							time.Sleep(100 * time.Microsecond)
							m.Payload[0] = 3
							return nil
						})
						okErr("PutFunc", err, arena.ErrFull, arena.ErrClosed)
					case 3:
						tok, err = s.Write(message.Header{}, func(b []byte) (int, error) {
							time.Sleep(50 * time.Microsecond)
							return copy(b, "abc"), nil
						})
						okErr("Write", err, arena.ErrFull, arena.ErrClosed)
					case 4:
						tok, err = s.PutBytes(message.Header{}, []byte("xyz"))
						okErr("PutBytes", err, arena.ErrFull, arena.ErrClosed)
					case 5:
						if len(mine) > 0 {
							_, err := s.Header(mine[0])
							okErr("Header", err, arena.ErrClosed)
							okErr("View", s.View(mine[0], func(*message.Message[[256]byte]) {}), arena.ErrClosed)
							okErr("Read", s.Read(mine[0], func(message.Header, []byte) {}), arena.ErrClosed)
						}
					case 6:
						if len(mine) > 0 {
							okErr("Update", s.Update(mine[0], func(m *message.Message[[256]byte]) { m.Payload[1]++ }), arena.ErrClosed)
							okErr("Rewrite", s.Rewrite(mine[0], func(b []byte, u int) int { return u }), arena.ErrClosed)
						}
					case 7:
						if len(mine) > 0 {
							err := s.Retain(mine[0])
							okErr("Retain", err, arena.ErrClosed)
							if err == nil {
								mine = append(mine, mine[0])
							}
							_, err = s.Refs(mine[0])
							okErr("Refs", err, arena.ErrClosed)
						}
					case 8:
						if len(mine) > 0 {
							err := s.Free(mine[0])
							okErr("Free", err, arena.ErrClosed)
							if err == nil || errors.Is(err, arena.ErrClosed) {
								// After Close a nil Free dropped an outstanding
								// reference; ErrClosed means it was not counted
								// (it must then not be retried).
								mine = mine[1:]
							}
						}
					case 9:
						for range s.Tokens() {
						}
					case 10:
						_, err := s.Trim()
						okErr("Trim", err, arena.ErrClosed)
						_ = s.Available()
						_ = s.Stats()
					}
					if err == nil && !tok.IsNil() {
						mine = append(mine, tok)
					}
				}
			}()
		}
		time.Sleep(15 * time.Millisecond)
		cerr := s.Close()
		if cerr != nil && !errors.Is(cerr, message.ErrReferenced) {
			t.Fatalf("Close: %v", cerr)
		}
		time.Sleep(5 * time.Millisecond)
		close(stop)
		wg.Wait()
		if b := bad.Load(); b != nil {
			t.Fatalf("round %d: %v", round, b)
		}
		if err := s.Close(); !errors.Is(err, arena.ErrClosed) {
			t.Fatalf("second Close: %v", err)
		}
		// Every reference still in our hands was outstanding at Close (or
		// taken before it): each may be freed once, with nil.
		held.Range(func(k, _ any) bool {
			_ = s.Free(k.(token.Token)) // nil or ErrClosed; must not crash
			return true
		})
	}
}

// Store.Close while a View callback runs: Close waits, calls from the
// callback on other tokens fail with ErrClosed, and Close then returns.
func TestAttackStoreCloseWaitsForView(t *testing.T) {
	s, err := message.NewStore[atkPay](arena.Config{Slots: 4, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := s.Put(message.Header{}, atkPay{A: 1})
	b, _ := s.Put(message.Header{}, atkPay{A: 2})
	entered, release := make(chan struct{}), make(chan struct{})
	viewErr := make(chan error, 1)
	go func() {
		viewErr <- s.View(a, func(m *message.Message[atkPay]) {
			close(entered)
			<-release
			if m.Payload.A != 1 {
				panic("payload changed")
			}
		})
	}()
	<-entered
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned while a View ran: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := s.Header(b); !errors.Is(err, arena.ErrClosed) {
		t.Errorf("Header during Close: %v", err)
	}
	close(release)
	if err := <-viewErr; err != nil {
		t.Errorf("View: %v", err)
	}
	if err := <-closed; !errors.Is(err, message.ErrReferenced) {
		t.Errorf("Close: %v", err)
	}
	if err := s.Free(a); err != nil {
		t.Error(err)
	}
	if err := s.Free(b); err != nil {
		t.Error(err)
	}
}

// Every reference held when Close runs concurrently with Frees can be freed
// exactly once with nil: before Close by the fast path, after it as an
// outstanding reference.
func TestAttackStoreFreeRacesClose(t *testing.T) {
	for round := 0; round < 20; round++ {
		s, err := message.NewStore[atkPay](arena.Config{Slots: 64, Shards: round % 3})
		if err != nil {
			t.Fatal(err)
		}
		var refs []token.Token
		for i := 0; i < 64; i++ {
			tok, err := s.Put(message.Header{}, atkPay{})
			if err != nil {
				t.Fatal(err)
			}
			s.Retain(tok)
			s.Retain(tok)
			refs = append(refs, tok, tok, tok)
		}
		var wg sync.WaitGroup
		var bad atomic.Value
		start := make(chan struct{})
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for i := w; i < len(refs); i += 4 {
					if err := s.Free(refs[i]); err != nil {
						bad.Store(fmt.Sprintf("Free of held reference %v: %v", refs[i], err))
					}
					if i%16 == 0 {
						runtime.Gosched()
					}
				}
			}()
		}
		close(start)
		cerr := s.Close()
		wg.Wait()
		if b := bad.Load(); b != nil {
			t.Fatalf("round %d: %v (Close: %v)", round, b, cerr)
		}
		if cerr != nil && !errors.Is(cerr, message.ErrReferenced) {
			t.Fatalf("Close: %v", cerr)
		}
		for _, tok := range refs[:3] {
			if err := s.Free(tok); !errors.Is(err, arena.ErrClosed) {
				t.Fatalf("Free beyond the references held: %v", err)
			}
		}
	}
}
