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

// BenchmarkMessageBatch moves b.N tokens from a producer goroutine to a
// consumer goroutine. cella-edge sends them in batches of messageBatch with
// SendBatch and receives up to messageBatch at a time with RecvBatch, over
// an edge holding 4 batches; chan-token sends them one at a time over a
// channel of the same capacity (a channel has no batch operation). ns/op
// is per token.
func BenchmarkMessageBatch(b *testing.B) {
	b.Run("impl=cella-edge/batch=16", func(b *testing.B) {
		st, toks := storeWith[P64](b, messageBatch)
		e, err := message.NewEdge(st, message.Policy{MaxItems: 4 * messageBatch, Admission: message.Block})
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
		for sent := 0; sent < b.N; {
			n, err := e.SendBatch(ctx, toks[:min(messageBatch, b.N-sent)])
			if err != nil {
				b.Fatal(err)
			}
			sent += n
		}
		sinkAdd(<-done)
	})
	b.Run("impl=chan-token/batch=16", func(b *testing.B) {
		toks := make([]token.Token, messageBatch)
		for i := range toks {
			toks[i] = token.New(uint32(i), 1)
		}
		ch := make(chan token.Token, 4*messageBatch)
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
		for sent := 0; sent < b.N; sent += messageBatch {
			for _, t := range toks[:min(messageBatch, b.N-sent)] {
				ch <- t
			}
		}
		sinkAdd(<-done)
	})
}
