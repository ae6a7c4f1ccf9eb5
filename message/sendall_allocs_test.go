package message

import (
	"context"
	"testing"

	"github.com/cella-go/cella/arena"
)

// TestSendAllAllocatesNothing: "SendAll allocates nothing unless an edge
// refuses t", also with its share bookkeeping (fanOut) and the catching
// wrappers around the store and the edges.
func TestSendAllAllocatesNothing(t *testing.T) {
	st, err := NewStore[[64]byte](arena.Config{Slots: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var edges []*Edge
	for range 3 {
		e, err := NewEdge(st, Policy{MaxItems: 8, Admission: Block})
		if err != nil {
			t.Fatal(err)
		}
		edges = append(edges, e)
	}
	ctx := context.Background()
	n := testing.AllocsPerRun(200, func() {
		tok, err := st.Put(Header{}, [64]byte{})
		if err != nil {
			t.Fatal(err)
		}
		if sent, err := SendAll(ctx, st, tok, edges...); sent != len(edges) || err != nil {
			t.Fatalf("SendAll = %d, %v", sent, err)
		}
		for _, e := range edges {
			got, ok := e.TryRecv()
			if !ok {
				t.Fatal("TryRecv: empty")
			}
			if err := st.Free(got); err != nil {
				t.Fatal(err)
			}
		}
	})
	if n != 0 {
		t.Errorf("Put + SendAll to %d edges + receive and Free: %v allocs/op, want 0", len(edges), n)
	}
}
