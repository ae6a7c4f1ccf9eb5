package message_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

type order struct {
	ID    uint64
	Cents int64
}

func Example() {
	store, _ := message.NewStore[order](arena.Config{Slots: 16})
	defer store.Close()
	edge, _ := message.NewEdge(store, message.Policy{MaxItems: 8})

	t, _ := store.Put(message.Header{Seq: 1}, order{ID: 42, Cents: 1999})
	_ = edge.Send(context.Background(), t) // the edge owns the reference now

	got, _ := edge.Recv(context.Background()) // and now we do
	store.View(got, func(m *message.Message[order]) {
		fmt.Println(m.Header.Seq, m.Payload.ID, m.Payload.Cents)
	})
	store.Free(got)
	fmt.Println(store.Available() == store.Capacity())
	// Output:
	// 1 42 1999
	// true
}

func ExampleEdge_priorityLanes() {
	store, _ := message.NewStore[order](arena.Config{Slots: 16})
	defer store.Close()
	edge, _ := message.NewEdge(store, message.Policy{MaxItems: 8})
	for i, q := range []message.QoS{message.BestEffort, message.Background, message.LatencyCritical} {
		t, _ := store.Put(message.Header{Seq: uint64(i), QoS: q}, order{})
		edge.TrySend(t)
	}
	for edge.Len() > 0 {
		t, _ := edge.TryRecv()
		h, _ := store.Header(t)
		fmt.Println(h.Seq, h.QoS)
		store.Free(t)
	}
	// Output:
	// 2 LatencyCritical
	// 0 BestEffort
	// 1 Background
}

func ExampleEdge_dropNewest() {
	store, _ := message.NewStore[order](arena.Config{Slots: 16})
	defer store.Close()
	edge, _ := message.NewEdge(store, message.Policy{MaxItems: 1, Admission: message.DropNewest})
	a, _ := store.Put(message.Header{}, order{ID: 1})
	b, _ := store.Put(message.Header{}, order{ID: 2})
	fmt.Println(edge.TrySend(a) == nil)
	err := edge.TrySend(b)
	fmt.Println(errors.Is(err, message.ErrEdgeFull), edge.Watermark())
	store.Free(b) // refused: still ours
	edge.Close()
	fmt.Println(edge.Drain(), store.Available() == store.Capacity())
	// Output:
	// true
	// true HardReached
	// 1 true
}

func ExampleStore_Retain() {
	store, _ := message.NewStore[order](arena.Config{Slots: 4})
	defer store.Close()
	left, _ := message.NewEdge(store, message.Policy{MaxItems: 4})
	right, _ := message.NewEdge(store, message.Policy{MaxItems: 4})

	t, _ := store.Put(message.Header{}, order{ID: 7})
	store.Retain(t) // one reference per edge: zero-copy fan-out
	left.TrySend(t)
	right.TrySend(t)

	for _, e := range []*message.Edge{left, right} {
		got, _ := e.TryRecv()
		store.Free(got)
		fmt.Println(store.Available())
	}
	// Output:
	// 3
	// 4
}

func ExampleByteStore() {
	store, _ := message.NewByteStore[[256]byte](arena.Config{Slots: 4})
	defer store.Close()
	t, _ := store.PutBytes(message.Header{}, []byte("hello, cella"))
	store.Read(t, func(h message.Header, data []byte) {
		fmt.Printf("%d bytes: %s\n", h.Size, data)
	})
	store.Free(t)
	// Output:
	// 12 bytes: hello, cella
}

func ExampleGraph() {
	store, _ := message.NewStore[order](arena.Config{Slots: 64})
	defer store.Close()
	in, _ := message.NewEdge(store, message.Policy{MaxItems: 8})
	out, _ := message.NewEdge(store, message.Policy{MaxItems: 8})

	g := message.NewGraph(store)
	g.Source("orders", 1, func(ctx context.Context, e *message.Emitter) error {
		for id := uint64(1); id <= 100; id++ {
			t, err := store.Put(message.Header{}, order{ID: id, Cents: 100})
			if err != nil {
				return err
			}
			if err := e.Emit(t); err != nil {
				return err
			}
		}
		return nil // done: the graph drains and stops
	}, in)
	g.Stage("discount", 4, in, func(ctx context.Context, t token.Token, e *message.Emitter) error {
		store.Update(t, func(m *message.Message[order]) { m.Payload.Cents -= 10 })
		return e.Emit(t)
	}, out)
	var total int64 // one sink worker: no locking needed
	g.Sink("sum", 1, out, func(ctx context.Context, t token.Token) error {
		return store.View(t, func(m *message.Message[order]) { total += m.Payload.Cents })
	})
	if err := g.Run(context.Background()); err != nil {
		fmt.Println(err)
	}
	fmt.Println(total, store.Available() == store.Capacity())
	// Output:
	// 9000 true
}
