package shm

import (
	"context"
	"testing"

	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

// BenchmarkStoreOps is the cost of a shared Store's operations on one
// goroutine of one process, with nothing contending: what the locked
// instructions and sections of each path cost before any cache line has
// to change cores (BenchmarkIPC in bench/ measures two processes). ns/op is
// per message.
func BenchmarkStoreOps(b *testing.B) {
	dir := b.TempDir()
	s, err := CreateStore[[64]byte]("ops", StoreConfig{Slots: 1024, Dir: dir, Watch: -1, Edges: []message.Policy{{MaxItems: 512}}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	e := s.Edge(0)
	var sink byte
	b.Run("Loan+Free", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			t, _, _ := s.Loan(message.Header{})
			s.Free(t)
		}
	})
	b.Run("Loan+Send+Recv+Free", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			t, _, _ := s.Loan(message.Header{})
			e.Send(ctx, t)
			t, _ = e.Recv(ctx)
			s.Free(t)
		}
	})
	b.Run("Loan+Send+Recv+View+Free", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			t, _, _ := s.Loan(message.Header{})
			e.Send(ctx, t)
			t, _ = e.Recv(ctx)
			s.View(t, func(m *message.Message[[64]byte]) { sink += m.Payload[0] })
			s.Free(t)
		}
	})
	b.Run("batch16", func(b *testing.B) {
		b.ReportAllocs()
		var buf [16]token.Token
		for i := 0; i < b.N; i += 16 {
			for k := range buf {
				buf[k], _, _ = s.Loan(message.Header{})
			}
			e.SendBatch(ctx, buf[:])
			n, _ := e.RecvBatch(ctx, buf[:])
			for _, t := range buf[:n] {
				s.View(t, func(m *message.Message[[64]byte]) { sink += m.Payload[0] })
				s.Free(t)
			}
		}
	})
	t, _, _ := s.Loan(message.Header{})
	b.Run("View", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			s.View(t, func(m *message.Message[[64]byte]) { sink += m.Payload[0] })
		}
	})
	b.Run("Header", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			s.Header(t)
		}
	})
	_ = sink
}
