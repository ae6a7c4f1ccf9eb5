package message

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// readsOnce fails if err's text repeats the package prefix.
func readsOnce(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error", what)
	}
	msg := err.Error()
	if n := strings.Count(msg, "message:") + strings.Count(msg, "arena:"); n > 1 {
		t.Errorf("%s: %q repeats its prefix", what, msg)
	}
}

func TestTokenErrorsReadOnce(t *testing.T) {
	s := newStore[payload](t, 4)
	other := newStore[payload](t, 4)
	foreign, _ := other.Put(Header{}, payload{})
	tok, _ := s.Put(Header{}, payload{})
	forged := token.New(tok.Index()+1, tok.Generation()+12345)
	freed, _ := s.Put(Header{}, payload{})
	s.Free(freed)

	type check struct {
		name string
		err  error
		is   error
		says string
	}
	var checks []check
	add := func(name string, err, is error, says string) {
		checks = append(checks, check{name, err, is, says})
	}
	for _, bad := range []struct {
		name string
		t    token.Token
	}{{"foreign", foreign}, {"forged", forged}} {
		add("Free "+bad.name, s.Free(bad.t), arena.ErrStale, "stale or foreign token")
		add("Retain "+bad.name, s.Retain(bad.t), arena.ErrStale, "stale or foreign token")
		_, err := s.Refs(bad.t)
		add("Refs "+bad.name, err, arena.ErrStale, "stale or foreign token")
		_, err = s.Header(bad.t)
		add("Header "+bad.name, err, arena.ErrStale, "stale or foreign token")
		add("View "+bad.name, s.View(bad.t, func(*Message[payload]) {}), arena.ErrStale, "stale or foreign token")
		add("Update "+bad.name, s.Update(bad.t, func(*Message[payload]) {}), arena.ErrStale, "stale or foreign token")
	}
	add("Free freed", s.Free(freed), arena.ErrStale, "last reference was freed")
	add("Retain freed", s.Retain(freed), arena.ErrStale, "last reference was freed")
	add("Free Nil", s.Free(token.Nil), arena.ErrBadToken, "Free of the Nil token: bad token")
	add("Free out of range", s.Free(token.New(9, 1)), arena.ErrBadToken, "index must be < 4 slots")
	add("View out of range", s.View(token.New(9, 1), func(*Message[payload]) {}), arena.ErrBadToken, "index must be < 4 slots")
	add("Free generation 0", s.Free(token.New(1, 0)), arena.ErrBadToken, "bad token")

	e := mustEdge(t, s, Policy{MaxItems: 4})
	add("send foreign", e.TrySend(foreign), arena.ErrStale, "stale or foreign token")
	add("send freed", e.TrySend(freed), arena.ErrStale, "stale token")
	add("send Nil", e.TrySend(token.Nil), arena.ErrBadToken, "bad token")

	// Retain at the reference limit.
	s.md(tok.Index()).ref.Store(refOf(tok.Generation(), math.MaxInt32))
	add("Retain at the limit", s.Retain(tok), ErrTooManyRefs, "Retain of "+tok.String()+": too many references")
	s.md(tok.Index()).ref.Store(refOf(tok.Generation(), 1))

	for _, c := range checks {
		if !errors.Is(c.err, c.is) {
			t.Errorf("%s = %v, want %v", c.name, c.err, c.is)
			continue
		}
		readsOnce(t, c.name, c.err)
		if !strings.Contains(c.err.Error(), c.says) {
			t.Errorf("%s = %q, want it to say %q", c.name, c.err, c.says)
		}
		if strings.Contains(c.err.Error(), "(slot was freed)") {
			t.Errorf("%s = %q claims to know the slot was freed", c.name, c.err)
		}
	}
	if s.Available() != s.Capacity()-1 {
		t.Fatal("bad tokens changed the store")
	}
}

func TestSendErrorsReadOnce(t *testing.T) {
	for _, c := range []struct {
		err error
		is  []error
	}{
		{errFullDropNewest, []error{ErrEdgeFull, ErrRejected}},
		{errFullTrySend, []error{ErrEdgeFull, ErrRejected}},
		{errFullNoVictim, []error{ErrEdgeFull, ErrRejected}},
		{errExpiredOnSend, []error{ErrRejected, ErrExpired}},
		{errShedBackground, []error{ErrRejected}},
		{errSendClosed, []error{ErrEdgeClosed}},
		{errNilToken, []error{arena.ErrBadToken}},
	} {
		readsOnce(t, c.err.Error(), c.err)
		for _, is := range c.is {
			if !errors.Is(c.err, is) {
				t.Errorf("%q does not match %v", c.err, is)
			}
		}
	}
	// Through a real edge: an expired message.
	s := newStore[payload](t, 2)
	e := mustEdge(t, s, Policy{MaxItems: 2})
	tok, _ := s.Put(Header{Deadline: 1}, payload{})
	err := e.TrySend(tok)
	if !errors.Is(err, ErrExpired) || !errors.Is(err, ErrRejected) {
		t.Fatalf("send of an expired message = %v", err)
	}
	readsOnce(t, "expired send", err)
	s.Free(tok)
}

// TestSizeDefaultsToPayload: Header.Size 0 on Put and PutFunc means the
// payload's size, so byte caps hold without the caller counting; a byte
// store's size is the message length, 0 included.
func TestSizeDefaultsToPayload(t *testing.T) {
	type p256 struct{ B [256]byte }
	s := newStore[p256](t, 32)
	tok, _ := s.Put(Header{}, p256{})
	if h, _ := s.Header(tok); h.Size != 256 {
		t.Fatalf("Put with Size 0: Size = %d, want 256", h.Size)
	}
	s.Free(tok)
	tok, _ = s.Put(Header{Size: 7}, p256{})
	if h, _ := s.Header(tok); h.Size != 7 {
		t.Fatalf("Put with Size 7: Size = %d", h.Size)
	}
	s.Free(tok)
	tok, _ = s.PutFunc(Header{}, func(m *Message[p256]) error {
		if m.Header.Size != 256 {
			t.Errorf("fill sees Size %d, want 256", m.Header.Size)
		}
		return nil
	})
	if h, _ := s.Header(tok); h.Size != 256 {
		t.Fatalf("PutFunc with Size 0: Size = %d", h.Size)
	}
	s.Free(tok)
	tok, _ = s.PutFunc(Header{}, func(m *Message[p256]) error { m.Header.Size = 3; return nil })
	if h, _ := s.Header(tok); h.Size != 3 {
		t.Fatalf("PutFunc whose fill set Size 3: Size = %d", h.Size)
	}
	s.Free(tok)

	// The user's report: a MaxBytes 1024 edge admitted 20 of 20 messages of
	// 256 bytes. Now it holds 4.
	e := mustEdge(t, s, Policy{MaxBytes: 1024, Admission: DropNewest})
	admitted := 0
	for i := 0; i < 20; i++ {
		tok, err := s.Put(Header{}, p256{})
		if err != nil {
			t.Fatal(err)
		}
		if e.TrySend(tok) == nil {
			admitted++
		} else {
			s.Free(tok)
		}
	}
	if admitted != 4 || e.Bytes() != 1024 {
		t.Fatalf("MaxBytes 1024 edge admitted %d messages of 256 B, Bytes %d", admitted, e.Bytes())
	}
	e.Close()
	e.Drain()

	bs, err := NewByteStore[[64]byte](arena.Config{Slots: 2, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	empty, _ := bs.PutBytes(Header{}, nil)
	if h, _ := bs.Header(empty); h.Size != 0 {
		t.Fatalf("PutBytes of nothing: Size = %d, want 0", h.Size)
	}
	w, _ := bs.Write(Header{}, func([]byte) (int, error) { return 0, nil })
	if h, _ := bs.Header(w); h.Size != 0 {
		t.Fatalf("Write of nothing: Size = %d, want 0", h.Size)
	}
	if got := payloadSize[[1 << 20]byte](); got != 1<<20 {
		t.Fatal(got)
	}
}

// TestPutPathsAllocateNothing: the put paths, which now run inside a gate
// section or an arena hold, still allocate nothing.
func TestPutPathsAllocateNothing(t *testing.T) {
	s := newStore[payload](t, 4)
	fill := func(m *Message[payload]) error { m.Payload.A = 1; return nil }
	bs, err := NewByteStore[[256]byte](arena.Config{Slots: 4, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	data := []byte("hello")
	write := func(slot []byte) (int, error) { return copy(slot, data), nil }
	for name, f := range map[string]func(){
		"Put+Free":      func() { tok, _ := s.Put(Header{}, payload{A: 1}); s.Free(tok) },
		"PutFunc+Free":  func() { tok, _ := s.PutFunc(Header{}, fill); s.Free(tok) },
		"PutBytes+Free": func() { tok, _ := bs.PutBytes(Header{}, data); bs.Free(tok) },
		"Write+Free":    func() { tok, _ := bs.Write(Header{}, write); bs.Free(tok) },
		"Retain+Refs+Header+Free": func() {
			tok, _ := s.Put(Header{}, payload{})
			s.Retain(tok)
			s.Refs(tok)
			s.Header(tok)
			s.Free(tok)
			s.Free(tok)
		},
	} {
		if n := testing.AllocsPerRun(200, f); n != 0 {
			t.Errorf("%s allocates %.1f times", name, n)
		}
	}
}

// TestUnissuedGenerationIsBadToken: generation 2^32-1 is never issued (it
// marks a retired slot), so every Store method and an edge's send call a
// token carrying it a bad token, as the arena and Store.Header do.
func TestUnissuedGenerationIsBadToken(t *testing.T) {
	s := newStore[payload](t, 4)
	e := mustEdge(t, s, Policy{})
	tok := token.New(1, math.MaxUint32)
	_, herr := s.Header(tok)
	_, rerr := s.Refs(tok)
	for name, err := range map[string]error{
		"Header": herr,
		"Refs":   rerr,
		"Retain": s.Retain(tok),
		"Free":   s.Free(tok),
		"View":   s.View(tok, func(*Message[payload]) {}),
		"Update": s.Update(tok, func(*Message[payload]) {}),
		"Send":   e.TrySend(tok),
	} {
		if !errors.Is(err, arena.ErrBadToken) {
			t.Errorf("%s of a generation-2^32-1 token = %v, want ErrBadToken", name, err)
		}
	}
}
