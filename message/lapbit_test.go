package message

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
)

// A cell keeps its position's lap parity in the top bit of the token's
// index (lapBit). A token that has that bit set of its own (an index of
// 2^31 or more) cannot travel in a cell: the ring refuses it and it goes
// the locked way, behind what the ring holds, and the edge stays in slow
// mode while it is queued. These tests send such tokens among ordinary
// ones and check order, Stats and that nothing is lost or doubled.

// watchdog crashes the test binary with a message if the test runs longer
// than d: a high token let into the ring would never read as published,
// and the edge's switch to slow mode would wait for it forever.
func watchdog(t *testing.T, d time.Duration) {
	timer := time.AfterFunc(d, func() { panic(fmt.Sprintf("%s: stuck for %v", t.Name(), d)) })
	t.Cleanup(func() { timer.Stop() })
}

func TestLapBitRingRefusesHighTokens(t *testing.T) {
	f := newFastRing(&Policy{MaxItems: 8})
	high := token.New(1<<31|5, 1)
	low := token.New(5, 1)
	if ringable(high) || !ringable(low) {
		t.Fatalf("ringable(%v) = %v, ringable(%v) = %v", high, ringable(high), low, ringable(low))
	}
	tail := f.tail.Load()
	if f.trySend(high, 1) {
		t.Fatal("trySend took a token with the lap bit set")
	}
	if f.tail.Load() != tail {
		t.Fatal("a refused trySend moved the tail")
	}
	if n := f.trySendTokens([]token.Token{low, high, low}, []uint32{1, 1, 1}); n != 1 {
		t.Fatalf("trySendTokens sent %d, want 1 (stop at the high token)", n)
	}
	qs := []queued{{tok: low}, {tok: high}, {tok: low}}
	lanes := []uint8{laneBestEffort, laneBestEffort, laneBestEffort}
	if n := f.trySendN(qs, lanes); n != 1 {
		t.Fatalf("trySendN sent %d, want 1 (stop at the high token)", n)
	}
	var dst [4]token.Token
	if n := f.tryRecvN(dst[:]); n != 2 || dst[0] != low || dst[1] != low {
		t.Fatalf("tryRecvN = %d, %v", n, dst[:n])
	}
}

func TestLapBitHighTokensKeepOrder(t *testing.T) {
	watchdog(t, 30*time.Second)
	fs := newFakeStore()
	e := mustEdge(t, fs, Policy{MaxItems: 16})
	a, h, b := fs.put(Header{Size: 1}), fs.putHigh(Header{Size: 10}), fs.put(Header{Size: 100})
	for _, tok := range []token.Token{a, h, b} {
		if err := e.TrySend(tok); err != nil {
			t.Fatal(err)
		}
	}
	if e.inFastMode() {
		t.Fatal("fast mode with a high token queued")
	}
	if st := e.Stats(); st.Admitted != 3 || st.Len != 3 || st.Bytes != 111 || st.HighWater != 3 {
		t.Fatalf("Stats = %+v; want Admitted 3, Len 3, Bytes 111, HighWater 3", st)
	}
	for i, want := range []token.Token{a, h, b} {
		if got, ok := e.TryRecv(); !ok || got != want {
			t.Fatalf("TryRecv #%d = %v, %v; want %v", i, got, ok, want)
		}
	}
	// With the high token gone, the next send reopens the ring.
	c := fs.put(Header{})
	if err := e.TrySend(c); err != nil {
		t.Fatal(err)
	}
	if got, ok := e.TryRecv(); !ok || got != c {
		t.Fatalf("TryRecv = %v, %v; want %v", got, ok, c)
	}
	if err := e.TrySend(fs.put(Header{})); err != nil {
		t.Fatal(err)
	}
	if !e.inFastMode() {
		t.Fatal("the edge did not return to fast mode")
	}

	// Batches: the high tokens split a SendBatch's fast prefix and stay
	// in place; RecvBatch returns everything in order.
	e.Drain()
	batch := []token.Token{fs.put(Header{}), fs.put(Header{}), fs.putHigh(Header{}), fs.put(Header{}), fs.putHigh(Header{}), fs.put(Header{})}
	if n, err := e.SendBatch(context.Background(), batch); n != len(batch) || err != nil {
		t.Fatalf("SendBatch = %d, %v", n, err)
	}
	dst := make([]token.Token, 16)
	n, err := e.RecvBatch(context.Background(), dst)
	if err != nil || n != len(batch) {
		t.Fatalf("RecvBatch = %d, %v; want %d", n, err, len(batch))
	}
	for i := range batch {
		if dst[i] != batch[i] {
			t.Fatalf("RecvBatch[%d] = %v, want %v (all: %v)", i, dst[i], batch[i], dst[:n])
		}
	}
}

// Senders mixing high tokens into their streams, receivers taking one at a
// time and in batches: every token is delivered once, and each sender's
// tokens come out in its order (one receiver checks order; with two, only
// conservation is checked).
func TestLapBitHighTokensConcurrent(t *testing.T) {
	watchdog(t, 60*time.Second)
	for _, receivers := range []int{1, 2} {
		fs := newFakeStore()
		e := mustEdge(t, fs, Policy{MaxItems: 8, Admission: Block})
		const senders, per = 3, 2000
		toks := make([][]token.Token, senders)
		sender := map[token.Token]int{}
		for s := range toks {
			for i := range per {
				var tok token.Token
				if i%7 == 3 {
					tok = fs.putHigh(Header{})
				} else {
					tok = fs.put(Header{})
				}
				toks[s] = append(toks[s], tok)
				sender[tok] = s
			}
		}
		var wg sync.WaitGroup
		for s := range toks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ts := toks[s]
				for len(ts) > 0 {
					if len(ts)%5 == 0 {
						n, err := e.SendBatch(context.Background(), ts[:min(len(ts), 4)])
						if err != nil {
							t.Error(err)
							return
						}
						ts = ts[n:]
						continue
					}
					if err := e.Send(context.Background(), ts[0]); err != nil {
						t.Error(err)
						return
					}
					ts = ts[1:]
				}
			}()
		}
		got := make([][]token.Token, receivers)
		var rwg sync.WaitGroup
		for r := range receivers {
			rwg.Add(1)
			go func() {
				defer rwg.Done()
				var dst [3]token.Token
				for i := 0; ; i++ {
					if i%2 == 0 {
						tok, err := e.Recv(context.Background())
						if err != nil {
							return
						}
						got[r] = append(got[r], tok)
						continue
					}
					n, err := e.RecvBatch(context.Background(), dst[:])
					if err != nil {
						return
					}
					got[r] = append(got[r], dst[:n]...)
				}
			}()
		}
		wg.Wait()
		e.Close()
		rwg.Wait()
		seen := map[token.Token]bool{}
		next := make([]int, senders)
		for _, g := range got {
			for _, tok := range g {
				if seen[tok] {
					t.Fatalf("receivers %d: %v delivered twice", receivers, tok)
				}
				seen[tok] = true
				s, ok := sender[tok]
				if !ok {
					t.Fatalf("receivers %d: %v was never sent", receivers, tok)
				}
				if receivers == 1 {
					if toks[s][next[s]] != tok {
						t.Fatalf("sender %d: got %v, want %v (#%d)", s, tok, toks[s][next[s]], next[s])
					}
					next[s]++
				}
			}
		}
		if len(seen) != senders*per {
			t.Fatalf("receivers %d: %d of %d tokens delivered", receivers, len(seen), senders*per)
		}
		if st := e.Stats(); st.Admitted != senders*per || st.Delivered != senders*per {
			t.Fatalf("receivers %d: Stats = %+v", receivers, st)
		}
	}
}

// FuzzLapBitEdgeModel drives one edge from one goroutine with a mix of
// ordinary and high tokens (BestEffort, and LatencyCritical ones that
// switch the edge to slow mode), sent one at a time and in batches,
// received one at a time and in batches, and checks every result against
// a model: the LatencyCritical tokens first, each lane in send order, the
// item cap exact, and Stats at the end. Each input byte is one operation.
func FuzzLapBitEdgeModel(f *testing.F) {
	f.Add([]byte{0, 1, 0, 1, 3, 3, 3, 3})
	f.Add([]byte{2, 2, 2, 5, 4, 4, 1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 1, 4, 6, 4, 0, 1, 0, 1, 2, 2, 5})
	f.Add([]byte{6, 0, 1, 3, 6, 3, 3, 2, 4, 4, 4, 4})
	f.Fuzz(func(t *testing.T, ops []byte) {
		const maxItems = 6
		fs := newFakeStore()
		e := mustEdge(t, fs, Policy{MaxItems: maxItems, Admission: Block})
		var crit, be []token.Token // the model's lanes
		admitted, delivered := uint64(0), uint64(0)
		newTok := func(b byte) token.Token {
			if b&0x10 != 0 {
				return fs.putHigh(Header{})
			}
			return fs.put(Header{})
		}
		take := func() token.Token {
			if len(crit) > 0 {
				t := crit[0]
				crit = crit[1:]
				return t
			}
			t := be[0]
			be = be[1:]
			return t
		}
		ctx := context.Background()
		for i, b := range ops {
			queued := len(crit) + len(be)
			switch b % 7 {
			case 0, 1: // one BestEffort token: high by bit 4 of b (0), or high (1)
				tok := newTok(b | byte(b%7)<<4)
				err := e.TrySend(tok)
				if queued < maxItems {
					if err != nil {
						t.Fatalf("op %d: TrySend with %d queued = %v", i, queued, err)
					}
					be = append(be, tok)
					admitted++
				} else if err == nil {
					t.Fatalf("op %d: TrySend past MaxItems succeeded", i)
				}
			case 2: // a batch that fits, ordinary and high mixed by b's bits
				k := min(int(b>>4)%4+1, maxItems-queued)
				if k == 0 {
					continue
				}
				ts := make([]token.Token, k)
				for j := range ts {
					ts[j] = newTok(b << (j + 1))
				}
				if n, err := e.SendBatch(ctx, ts); n != k || err != nil {
					t.Fatalf("op %d: SendBatch of %d with %d queued = %d, %v", i, k, queued, n, err)
				}
				be = append(be, ts...)
				admitted += uint64(k)
			case 3: // one receive
				got, ok := e.TryRecv()
				if queued == 0 {
					if ok {
						t.Fatalf("op %d: TryRecv = %v from an empty edge", i, got)
					}
					continue
				}
				if want := take(); !ok || got != want {
					t.Fatalf("op %d: TryRecv = %v, %v; want %v", i, got, ok, want)
				}
				delivered++
			case 4: // a batch receive, only when something is queued
				if queued == 0 {
					continue
				}
				dst := make([]token.Token, int(b>>4)%5+1)
				n, err := e.RecvBatch(ctx, dst)
				if err != nil || n == 0 || n > len(dst) {
					t.Fatalf("op %d: RecvBatch = %d, %v", i, n, err)
				}
				for j := range n {
					if want := take(); dst[j] != want {
						t.Fatalf("op %d: RecvBatch[%d] = %v; want %v", i, j, dst[j], want)
					}
				}
				delivered += uint64(n)
			case 5: // a LatencyCritical token: slow mode
				tok := fs.put(Header{QoS: LatencyCritical})
				if b&0x10 != 0 {
					tok = fs.putHigh(Header{QoS: LatencyCritical})
				}
				err := e.TrySend(tok)
				if queued < maxItems {
					if err != nil {
						t.Fatalf("op %d: TrySend LatencyCritical = %v", i, err)
					}
					crit = append(crit, tok)
					admitted++
				} else if err == nil {
					t.Fatalf("op %d: LatencyCritical TrySend past MaxItems succeeded", i)
				}
			case 6: // Len and Bytes go through the lock (a switch to slow mode)
				if n := e.Len(); n != queued {
					t.Fatalf("op %d: Len = %d; want %d", i, n, queued)
				}
			}
		}
		st := e.Stats()
		if st.Admitted != admitted || st.Delivered != delivered || st.Len != len(crit)+len(be) {
			t.Fatalf("Stats = %+v; want Admitted %d Delivered %d Len %d", st, admitted, delivered, len(crit)+len(be))
		}
		for len(crit)+len(be) > 0 {
			want := take()
			if got, ok := e.TryRecv(); !ok || got != want {
				t.Fatalf("drain: TryRecv = %v, %v; want %v", got, ok, want)
			}
		}
	})
}
