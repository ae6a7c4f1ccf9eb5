package message_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

// A DropOldest edge keeps the newest messages: a send to a full edge
// evicts (and frees) the oldest queued one.
func ExampleEdge_dropOldest() {
	store, _ := message.NewStore[order](arena.Config{Slots: 8})
	defer store.Close()
	edge, _ := message.NewEdge(store, message.Policy{MaxItems: 2, Admission: message.DropOldest})
	for id := uint64(1); id <= 4; id++ {
		t, _ := store.Put(message.Header{}, order{ID: id})
		edge.TrySend(t) // never refused for room
	}
	for t := range edge.All(context.Background()) {
		store.View(t, func(m *message.Message[order]) { fmt.Println("got", m.Payload.ID) })
		store.Free(t)
		if edge.Len() == 0 {
			break
		}
	}
	st := edge.Stats()
	fmt.Println("evicted", st.Evicted, "free slots", store.Available())
	// Output:
	// got 3
	// got 4
	// evicted 2 free slots 8
}

// A DeadlineQoS edge makes room for urgent traffic by evicting the lowest
// QoS first, never a message more urgent than the one sent, and above its
// soft cap it sheds Background messages outright.
func ExampleEdge_deadlineQoS() {
	store, _ := message.NewStore[order](arena.Config{Slots: 8})
	defer store.Close()
	edge, _ := message.NewEdge(store, message.Policy{MaxItems: 3, SoftItems: 2, Admission: message.DeadlineQoS})
	send := func(id uint64, q message.QoS) {
		t, _ := store.Put(message.Header{Seq: id, QoS: q}, order{ID: id})
		if err := edge.TrySend(t); err != nil {
			fmt.Printf("%d (%v) refused: full %v\n", id, q, errors.Is(err, message.ErrEdgeFull))
			store.Free(t) // a refused message stays ours
		}
	}
	send(1, message.Background)
	send(2, message.BestEffort)
	send(3, message.Background) // at the soft cap: Background is shed
	send(4, message.LatencyCritical)
	send(5, message.LatencyCritical) // full: evicts 1, the oldest Background
	send(6, message.Background)      // full of more urgent traffic: refused
	for edge.Len() > 0 {
		t, _ := edge.TryRecv()
		h, _ := store.Header(t)
		fmt.Println("got", h.Seq, h.QoS)
		store.Free(t)
	}
	fmt.Println("evicted", edge.Stats().Evicted)
	// Output:
	// 3 (Background) refused: full false
	// 6 (Background) refused: full false
	// got 4 LatencyCritical
	// got 5 LatencyCritical
	// got 2 BestEffort
	// evicted 1
}

// Deadlines come from Go's clocks: a time.Time or a context's deadline. An
// edge never delivers a message whose deadline has passed; it frees it.
func ExampleHeader_SetDeadline() {
	store, _ := message.NewStore[order](arena.Config{Slots: 4})
	defer store.Close()
	edge, _ := message.NewEdge(store, message.Policy{})

	var h message.Header
	h.SetDeadline(time.Now().Add(20 * time.Millisecond))
	t, _ := store.Put(h, order{ID: 1})
	edge.TrySend(t)

	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	h.Deadline, _ = message.DeadlineFromContext(ctx) // the request's deadline
	t, _ = store.Put(h, order{ID: 2})
	edge.TrySend(t)

	time.Sleep(30 * time.Millisecond) // the first deadline passes
	got, _ := edge.TryRecv()
	store.View(got, func(m *message.Message[order]) {
		left, _ := m.Header.DeadlineTime()
		fmt.Println("got", m.Payload.ID, "due within an hour:", time.Until(left) <= time.Hour)
	})
	store.Free(got)
	fmt.Println("expired", edge.Stats().Expired)
	// Output:
	// got 2 due within an hour: true
	// expired 1
}

// Recv waits for a message until its context is done.
func ExampleEdge_Recv_context() {
	store, _ := message.NewStore[order](arena.Config{Slots: 4})
	defer store.Close()
	edge, _ := message.NewEdge(store, message.Policy{MaxItems: 4})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	_, err := edge.Recv(ctx) // nothing comes
	fmt.Println(errors.Is(err, context.DeadlineExceeded))

	go func() {
		t, _ := store.Put(message.Header{}, order{ID: 9})
		edge.Send(context.Background(), t)
	}()
	t, err := edge.Recv(context.Background()) // waits for the sender
	store.View(t, func(m *message.Message[order]) { fmt.Println(m.Payload.ID, err) })
	store.Free(t)

	edge.Close()
	_, err = edge.Recv(context.Background()) // closed and empty
	fmt.Println(errors.Is(err, message.ErrEdgeClosed))
	// Output:
	// true
	// 9 <nil>
	// true
}

// SendAll fans one message out to several edges without copying it; it
// always consumes the caller's reference, freeing the shares refused.
func ExampleSendAll() {
	store, _ := message.NewStore[order](arena.Config{Slots: 4})
	defer store.Close()
	audit, _ := message.NewEdge(store, message.Policy{MaxItems: 8})
	billing, _ := message.NewEdge(store, message.Policy{MaxItems: 8})
	closed, _ := message.NewEdge(store, message.Policy{})
	closed.Close()

	t, _ := store.Put(message.Header{}, order{ID: 5, Cents: 250})
	sent, err := message.SendAll(context.Background(), store, t, audit, billing, closed)
	fmt.Println(sent, errors.Is(err, message.ErrEdgeClosed))
	refs, _ := store.Refs(t)
	fmt.Println("references", refs)

	for _, e := range []*message.Edge{audit, billing} {
		got, _ := e.TryRecv()
		store.Free(got)
	}
	fmt.Println(store.Available() == store.Capacity())
	// Output:
	// 2 true
	// references 2
	// true
}

// All is a receive loop: it ends when the edge is closed and drained (or
// its context is done), and the loop body owns each token.
func ExampleEdge_All() {
	store, _ := message.NewStore[order](arena.Config{Slots: 8})
	defer store.Close()
	edge, _ := message.NewEdge(store, message.Policy{MaxItems: 2})
	go func() {
		for id := uint64(1); id <= 5; id++ {
			t, _ := store.Put(message.Header{}, order{ID: id, Cents: 100})
			edge.Send(context.Background(), t) // Block: waits for room
		}
		edge.Close()
	}()
	var total int64
	for t := range edge.All(context.Background()) {
		store.View(t, func(m *message.Message[order]) { total += m.Payload.Cents })
		store.Free(t)
	}
	fmt.Println(total)
	// Output:
	// 500
}

// SendBatch and RecvBatch move many tokens under one lock: on a refusal the
// caller keeps the tokens from the first refused one on.
func ExampleEdge_SendBatch() {
	store, _ := message.NewStore[order](arena.Config{Slots: 8})
	defer store.Close()
	edge, _ := message.NewEdge(store, message.Policy{MaxItems: 4, Admission: message.DropNewest})
	batch := make([]token.Token, 6)
	for i := range batch {
		batch[i], _ = store.Put(message.Header{}, order{ID: uint64(i)})
	}
	n, err := edge.SendBatch(context.Background(), batch)
	fmt.Println(n, errors.Is(err, message.ErrEdgeFull))
	for _, t := range batch[n:] {
		store.Free(t) // still ours
	}

	dst := make([]token.Token, 16)
	n, err = edge.RecvBatch(context.Background(), dst)
	fmt.Println(n, err)
	for _, t := range dst[:n] {
		store.Free(t)
	}
	fmt.Println(store.Available())
	// Output:
	// 4 true
	// 4 <nil>
	// 8
}
