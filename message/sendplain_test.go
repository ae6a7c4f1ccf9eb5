package message

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// Tests of Send's and TrySend's fast path for a *Store's plain messages
// (trySendPlain, fastInfo): what it admits must be exactly what the checked
// path admits, sizes and counters included, and everything else must reach
// the checked path for its error or lane.

func newPlainStore(t *testing.T) *Store[[16]byte] {
	t.Helper()
	st, err := NewStore[[16]byte](arena.Config{Slots: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func mustPut(t *testing.T, st *Store[[16]byte], h Header) token.Token {
	t.Helper()
	tok, err := st.Put(h, [16]byte{1})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// Sizes and counters of plain messages sent through the fast path: Size 0
// counts as the payload's size, an explicit Size as itself.
func TestSendPlainKeepsSizesAndCounts(t *testing.T) {
	st := newPlainStore(t)
	e := mustEdge(t, st, Policy{MaxItems: 8})
	ctx := context.Background()
	sizes := []uint32{0, 100, 7, 1 << 20}
	var toks []token.Token
	var want int64
	for i, sz := range sizes {
		tok := mustPut(t, st, Header{Size: sz, Flags: Flags(i%2) * DegradeAllowed})
		var err error
		if i%2 == 0 {
			err = e.Send(ctx, tok)
		} else {
			err = e.TrySend(tok)
		}
		if err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		toks = append(toks, tok)
		if sz == 0 {
			sz = 16
		}
		want += int64(sz)
	}
	if !e.inFastMode() {
		t.Fatal("plain sends left fast mode")
	}
	if got := e.Bytes(); got != want {
		t.Fatalf("Bytes() = %d, want %d", got, want)
	}
	s := e.Stats()
	if s.Admitted != uint64(len(sizes)) || s.HighWater != len(sizes) || s.Len != len(sizes) || s.Bytes != want {
		t.Fatalf("Stats = %+v, want %d admitted, high water and len, %d bytes", s, len(sizes), want)
	}
	for i, tok := range toks {
		got, err := e.Recv(ctx)
		if err != nil || got != tok {
			t.Fatalf("recv %d = %v, %v; want %v", i, got, err, tok)
		}
		if err := st.Free(got); err != nil {
			t.Fatal(err)
		}
	}
}

// Everything that is not a live plain message goes the checked way: its
// error, its lane, or its wait.
func TestSendPlainRefusesTheRest(t *testing.T) {
	ctx := context.Background()
	for _, send := range []struct {
		name string
		fn   func(*Edge, token.Token) error
	}{
		{"Send", func(e *Edge, tok token.Token) error { return e.Send(ctx, tok) }},
		{"TrySend", func(e *Edge, tok token.Token) error { return e.TrySend(tok) }},
	} {
		t.Run(send.name, func(t *testing.T) {
			st := newPlainStore(t)
			e := mustEdge(t, st, Policy{MaxItems: 2, Admission: DropNewest})

			freed := mustPut(t, st, Header{})
			if err := st.Free(freed); err != nil {
				t.Fatal(err)
			}
			if err := send.fn(e, freed); !errors.Is(err, arena.ErrStale) {
				t.Errorf("freed token: %v, want ErrStale", err)
			}
			if err := send.fn(e, token.Nil); err == nil {
				t.Error("nil token admitted")
			}
			if err := send.fn(e, token.New(1<<20, 1)); !errors.Is(err, arena.ErrBadToken) {
				t.Errorf("out-of-range token: %v, want ErrBadToken", err)
			}
			if err := send.fn(e, mustPut(t, st, Header{QoS: QoS(9)})); err == nil {
				t.Error("invalid QoS admitted")
			}
			if s := e.Stats(); s.Invalid != 4 || s.Admitted != 0 {
				t.Errorf("Stats = %+v, want 4 invalid, none admitted", s)
			}

			// A plain message, then a LatencyCritical one: it overtakes.
			plain := mustPut(t, st, Header{})
			crit := mustPut(t, st, Header{QoS: LatencyCritical})
			for _, tok := range []token.Token{plain, crit} {
				if err := send.fn(e, tok); err != nil {
					t.Fatal(err)
				}
			}
			// Full (MaxItems 2): refused by policy, even though plain.
			extra := mustPut(t, st, Header{})
			if err := send.fn(e, extra); !errors.Is(err, ErrEdgeFull) {
				t.Errorf("send to a full edge: %v, want ErrEdgeFull", err)
			}
			for _, want := range []token.Token{crit, plain} {
				if got, err := e.Recv(ctx); err != nil || got != want {
					t.Fatalf("recv = %v, %v; want %v", got, err, want)
				}
			}

			// A deadline is not plain: expired, it is refused by policy.
			late := mustPut(t, st, Header{Deadline: Now() - int64(time.Second)})
			if err := send.fn(e, late); !errors.Is(err, ErrRejected) {
				t.Errorf("expired message: %v, want ErrRejected", err)
			}

			// A closed edge, then a closed store.
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			if err := send.fn(e, extra); !errors.Is(err, ErrEdgeClosed) {
				t.Errorf("closed edge: %v, want ErrEdgeClosed", err)
			}
			e2 := mustEdge(t, st, Policy{})
			st.Close()
			if err := send.fn(e2, extra); !errors.Is(err, arena.ErrClosed) {
				t.Errorf("closed store: %v, want ErrClosed", err)
			}
			if n := e2.Len(); n != 0 {
				t.Errorf("closed store's token admitted: Len %d", n)
			}
		})
	}
}
