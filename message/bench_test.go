package message

import (
	"context"
	"testing"

	"github.com/cella-go/cella/token"
)

// The hop benchmarks move b.N messages from one goroutine to another
// through a queue of capacity 64; ns/op is the cost of one hop.

func BenchmarkHopEdge(b *testing.B) {
	s := newStore[payload](b, 256)
	e := mustEdge(b, s, Policy{MaxItems: 64})
	tok, _ := s.Put(Header{Size: 64}, payload{})
	ctx := context.Background()
	done := make(chan struct{})
	go func() {
		for i := 0; i < b.N; i++ {
			if _, err := e.Recv(ctx); err != nil {
				panic(err)
			}
		}
		close(done)
	}()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := e.Send(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
	<-done
}

func BenchmarkHopChanToken(b *testing.B) {
	ch := make(chan token.Token, 64)
	done := make(chan struct{})
	go func() {
		for i := 0; i < b.N; i++ {
			<-ch
		}
		close(done)
	}()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ch <- token.New(1, 1)
	}
	<-done
}

func BenchmarkHopChanPointer(b *testing.B) {
	ch := make(chan *payload, 64)
	p := &payload{}
	done := make(chan struct{})
	go func() {
		for i := 0; i < b.N; i++ {
			<-ch
		}
		close(done)
	}()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ch <- p
	}
	<-done
}

// BenchmarkPutSendRecvFree is a full message lifetime over one hop: store,
// send, receive, read, free.
func BenchmarkPutSendRecvFree(b *testing.B) {
	s := newStore[payload](b, 256)
	e := mustEdge(b, s, Policy{MaxItems: 64})
	ctx := context.Background()
	done := make(chan struct{})
	go func() {
		for i := 0; i < b.N; i++ {
			t, err := e.Recv(ctx)
			if err != nil {
				panic(err)
			}
			s.Free(t)
		}
		close(done)
	}()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t, err := s.Put(Header{Size: 64}, payload{A: uint64(i)})
		if err != nil {
			b.Fatal(err)
		}
		if err := e.Send(ctx, t); err != nil {
			b.Fatal(err)
		}
	}
	<-done
}
