package bench

import (
	"context"
	"testing"
	"unsafe"

	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

// BenchmarkMessageLifecycle is a message's whole life on one goroutine:
// cella Puts it (by value), sends its token on an edge, receives it back,
// Views it and Frees it; chan-value sends the value on a buffered channel
// and receives it. Per message.
func BenchmarkMessageLifecycle(b *testing.B) {
	b.Run("impl=cella-edge/"+sizeName[P64](), func(b *testing.B) {
		st, e := storeAndEdge[P64](b)
		ctx := context.Background()
		var acc uint64
		read := func(m *message.Message[P64]) { acc += first(&m.Payload) }
		settle()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			var v P64
			stamp(&v, uint64(i))
			t, err := st.Put(message.Header{Seq: uint64(i), Size: uint32(unsafe.Sizeof(v))}, v)
			if err == nil {
				err = e.Send(ctx, t)
			}
			if err == nil {
				t, err = e.Recv(ctx)
			}
			if err == nil {
				err = st.View(t, read)
			}
			if err == nil {
				err = st.Free(t)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		sinkAdd(acc)
	})
	b.Run("impl=chan-value/"+sizeName[P64](), func(b *testing.B) {
		ch := make(chan P64, hopBuffer)
		var acc uint64
		settle()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			var v P64
			stamp(&v, uint64(i))
			ch <- v
			w := <-ch
			acc += first(&w)
		}
		sinkAdd(acc)
	})
}

// messageBatch is how many tokens BenchmarkMessageBatch moves per call.
const messageBatch = 16

// batchRooms are the capacities BenchmarkMessageBatch runs at, in tokens,
// with the names of its cases: room for 4 batches (the first case, named
// without a room), where the producer and the consumer keep waiting for
// each other, and room for 64, where they work on different cache lines.
var batchRooms = []struct {
	name string
	room int
}{{"", 4 * messageBatch}, {"/room=1024", 1024}}

// BenchmarkMessageBatch moves b.N tokens from a producer goroutine to a
// consumer goroutine. cella-edge sends them in batches of messageBatch with
// SendBatch and receives up to messageBatch at a time with RecvBatch;
// chan-token sends them one at a time over a channel of the same capacity
// (a channel has no batch operation). ns/op is per token.
//
// The tokens are room+messageBatch distinct messages sent in turn, so no
// token is queued twice at once (an edge owns a reference per queued
// token).
func BenchmarkMessageBatch(b *testing.B) {
	for _, r := range batchRooms {
		b.Run("impl=cella-edge/batch=16"+r.name, func(b *testing.B) { benchBatchEdge(b, r.room) })
		b.Run("impl=chan-token/batch=16"+r.name, func(b *testing.B) { benchBatchChan(b, r.room) })
	}
}

func benchBatchEdge(b *testing.B, room int) {
	st, toks := storeWith[P64](b, room+messageBatch)
	e, err := message.NewEdge(st, message.Policy{MaxItems: room, Admission: message.Block})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	done := make(chan uint64)
	settle()
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		var dst [messageBatch]token.Token
		var acc uint64
		for got := 0; got < b.N; {
			n, err := e.RecvBatch(ctx, dst[:])
			if err != nil {
				panic(err)
			}
			for _, t := range dst[:n] {
				acc += uint64(t)
			}
			got += n
		}
		done <- acc
	}()
	next := 0 // index in toks of the next token to send
	for sent := 0; sent < b.N; {
		m := min(messageBatch, b.N-sent, len(toks)-next)
		n, err := e.SendBatch(ctx, toks[next:next+m])
		if err != nil {
			b.Fatal(err)
		}
		sent += n
		if next += n; next == len(toks) {
			next = 0
		}
	}
	sinkAdd(<-done)
}

func benchBatchChan(b *testing.B, room int) {
	toks := make([]token.Token, room+messageBatch)
	for i := range toks {
		toks[i] = token.New(uint32(i), 1)
	}
	ch := make(chan token.Token, room)
	done := make(chan uint64)
	settle()
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		var acc uint64
		for range b.N {
			acc += uint64(<-ch)
		}
		done <- acc
	}()
	for i := 0; i < b.N; i++ {
		ch <- toks[i%len(toks)]
	}
	sinkAdd(<-done)
}
