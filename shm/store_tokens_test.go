package shm

import (
	"slices"
	"testing"

	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

// TestStoreTokens: Tokens yields every live message of every process,
// also one queued on an edge, once each, and nothing freed; the loop body
// may free what it is given; breaking out is fine; after Close it yields
// nothing.
func TestStoreTokens(t *testing.T) {
	dir := t.TempDir()
	a, err := CreateStore[tick]("toks", StoreConfig{Slots: 600, Shards: 3, Dir: dir, Watch: -1,
		Edges: []message.Policy{{MaxItems: 64}}})
	must(t, err, "CreateStore")
	defer a.Close()
	b, err := AttachStore[tick]("toks", StoreConfig{Dir: dir, Watch: -1})
	must(t, err, "AttachStore")
	defer b.Close()

	var want []token.Token
	mine := map[token.Token]*Store[tick]{}
	for i := range 520 { // past one 256-slot run of a shard
		s := a
		if i%2 == 1 {
			s = b
		}
		tok, err := s.Put(message.Header{Seq: uint64(i)}, tick{Seq: uint64(i)})
		must(t, err, "Put")
		switch {
		case i%5 == 0:
			must(t, s.Free(tok), "Free")
			continue
		case i%7 == 0 && len(want) < 600:
			must(t, s.Edge(0).TrySend(tok), "TrySend") // held by the edge now
		default:
			mine[tok] = s
		}
		want = append(want, tok)
	}
	collect := func(s *Store[tick]) []token.Token {
		var got []token.Token
		for tok := range s.Tokens() {
			got = append(got, tok)
		}
		slices.Sort(got)
		return got
	}
	slices.Sort(want)
	for _, s := range []*Store[tick]{a, b} {
		if got := collect(s); !slices.Equal(got, want) {
			t.Fatalf("Tokens yielded %d tokens, want the %d live ones (first %v vs %v)", len(got), len(want), got[:min(3, len(got))], want[:3])
		}
	}
	n := 0
	for range a.Tokens() {
		if n++; n == 3 {
			break
		}
	}
	// The loop body frees what this process holds: every live one goes,
	// except those on the edge and those b holds.
	for tok := range a.Tokens() {
		if mine[tok] == a {
			must(t, a.Free(tok), "Free in the loop")
		}
	}
	var left []token.Token
	for _, tok := range want {
		if mine[tok] != a {
			left = append(left, tok)
		}
	}
	if got := collect(b); !slices.Equal(got, left) {
		t.Fatalf("after freeing a's messages Tokens yielded %d, want %d", len(got), len(left))
	}
	must(t, a.Close(), "Close")
	for tok := range a.Tokens() {
		t.Fatalf("Tokens after Close yielded %v", tok)
	}
	b.Edge(0).Drain()
	for tok := range b.Tokens() {
		if mine[tok] != b {
			t.Fatalf("Tokens yielded %v, held by nobody but a closed process or a drained edge", tok)
		}
		must(t, b.Free(tok), "Free")
	}
	if b.Available() != b.Capacity() {
		t.Fatalf("Available = %d, want %d", b.Available(), b.Capacity())
	}
}
