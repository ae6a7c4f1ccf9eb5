package bench

import (
	"context"
	"errors"
	"testing"
	"unsafe"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/message"
)

// benchHopEdge is BenchmarkHop's cella-edge case: the message goes into a
// message.Store (Put), its token crosses a message.Edge (Send/Recv, Block
// admission, the same capacity as the Go channel of the other cases), and
// the consumer reads it with View and Frees it.
func benchHopEdge[T any](b *testing.B) {
	b.Run("impl=cella-edge/"+sizeName[T](), func(b *testing.B) {
		st, e := storeAndEdge[T](b)
		var z T
		size := uint32(unsafe.Sizeof(z))
		ctx := context.Background()
		settle()
		b.ReportAllocs()
		b.ResetTimer()
		done := make(chan error, 1)
		go func() { done <- consumeEdge(ctx, st, e) }()
		for i := 0; i < b.N; i++ {
			var v T
			stamp(&v, uint64(i))
			t, err := st.Put(message.Header{Seq: uint64(i), Size: size}, v)
			if err == nil {
				err = e.Send(ctx, t)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		if err := e.Close(); err != nil {
			b.Fatal(err)
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	})
}

// storeAndEdge returns a store of pairCapacity messages, closed when the
// benchmark ends, and a Block edge on it with the channels' capacity.
func storeAndEdge[T any](b *testing.B) (*message.Store[T], *message.Edge) {
	st, err := message.NewStore[T](arena.Config{Slots: pairCapacity})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	e, err := message.NewEdge(st, message.Policy{MaxItems: hopBuffer, Admission: message.Block})
	if err != nil {
		b.Fatal(err)
	}
	return st, e
}

// consumeEdge receives from e until it is closed, reading and freeing every
// message; it returns the first error, or nil once the edge is closed and
// empty.
func consumeEdge[T any](ctx context.Context, st *message.Store[T], e *message.Edge) error {
	var acc uint64
	read := func(m *message.Message[T]) { acc += first(&m.Payload) }
	for {
		t, err := e.Recv(ctx)
		if errors.Is(err, message.ErrEdgeClosed) {
			sinkAdd(acc)
			return nil
		}
		if err == nil {
			err = st.View(t, read)
		}
		if err == nil {
			err = st.Free(t)
		}
		if err != nil {
			return err
		}
	}
}
