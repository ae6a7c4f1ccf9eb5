package message

import (
	"context"
	"testing"

	"github.com/cella-go/cella/token"
)

// BenchmarkHopEdgeBatch16 moves b.N tokens from one goroutine to another
// through an edge of capacity 64 in batches of 16 (SendBatch, RecvBatch);
// ns/op is the cost per token, to compare with BenchmarkHopChanToken.
func BenchmarkHopEdgeBatch16(b *testing.B) {
	const batch = 16
	s := newStore[payload](b, 256)
	e := mustEdge(b, s, Policy{MaxItems: 64})
	tok, _ := s.Put(Header{Size: 64}, payload{})
	var ts [batch]token.Token
	for i := range ts {
		ts[i] = tok
	}
	ctx := context.Background()
	done := make(chan struct{})
	recvs := 0
	go func() {
		var dst [batch]token.Token
		for got := 0; got < b.N; recvs++ {
			n, err := e.RecvBatch(ctx, dst[:])
			if err != nil {
				panic(err)
			}
			got += n
		}
		close(done)
	}()
	b.ReportAllocs()
	b.ResetTimer()
	for sent := 0; sent < b.N; {
		k := min(batch, b.N-sent)
		n, err := e.SendBatch(ctx, ts[:k])
		if err != nil {
			b.Fatal(err)
		}
		sent += n
	}
	<-done
	b.ReportMetric(float64(b.N)/float64(recvs), "tokens/recv")
}

// BenchmarkHopChanTokenBatch16 is the channel peer of
// BenchmarkHopEdgeBatch16: a channel has no batch operation, so 16 tokens
// cost 16 channel operations on each side.
func BenchmarkHopChanTokenBatch16(b *testing.B) {
	const batch = 16
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
	for sent := 0; sent < b.N; sent += batch {
		for i := 0; i < min(batch, b.N-sent); i++ {
			ch <- token.New(1, 1)
		}
	}
	<-done
}

// BenchmarkGraphPipeline runs b.N messages through a Graph of a source,
// two stages and a sink (three hops), one worker each; ns/op is per
// message. Graph workers receive and send in batches where several tokens
// are ready.
func BenchmarkGraphPipeline(b *testing.B) {
	s := newStore[payload](b, 4096)
	e1, e2, e3 := mustEdge(b, s, Policy{MaxItems: 64}), mustEdge(b, s, Policy{MaxItems: 64}), mustEdge(b, s, Policy{MaxItems: 64})
	g := NewGraph(s)
	n := b.N
	g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
		for i := 0; i < n; i++ {
			tok, err := putRetry(s, Header{Size: 64}, payload{A: uint64(i)})
			if err != nil {
				return err
			}
			if err := out.Emit(tok); err != nil {
				return err
			}
		}
		return nil
	}, e1)
	pass := func(ctx context.Context, tok token.Token, out *Emitter) error { return out.Emit(tok) }
	g.Stage("s1", 1, e1, pass, e2)
	g.Stage("s2", 1, e2, pass, e3)
	var got int
	g.Sink("sink", 1, e3, func(ctx context.Context, tok token.Token) error { got++; return nil })
	b.ReportAllocs()
	b.ResetTimer()
	if err := g.Run(context.Background()); err != nil {
		b.Fatal(err)
	}
	if got != n {
		b.Fatalf("sink got %d of %d", got, n)
	}
}
