package message

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// TestEdgeConcurrentConservation is the concurrent companion of
// FuzzEdgeModel: several goroutines Put, Send (blocking, with a timeout),
// TrySend, fan out, Recv, TryRecv and Free at random over a small store and
// three edges with different admission modes (single sends and receives
// and SendBatch / RecvBatch), with real-time deadlines, and
// one edge is closed halfway. Timing makes the outcomes nondeterministic, so
// only conservation is checked:
//
//   - no reference is duplicated: a message is never received more often
//     than it was successfully sent, every received payload is intact and
//     belongs to the received token, and no Free of an owned reference fails;
//   - no reference is lost: once every edge is closed and drained and every
//     held reference freed, Available() == Capacity(), and each edge's
//     counters balance (Admitted = Delivered + Evicted + Expired + Drained,
//     FreeErrors = 0, Delivered = what the goroutines received).
func TestEdgeConcurrentConservation(t *testing.T) {
	configs := [][3]Policy{
		{
			{MaxItems: 4, SoftItems: 2, Admission: Block},
			{MaxItems: 3, MaxBytes: 40, Admission: DropOldest},
			{MaxItems: 5, SoftItems: 3, MaxBytes: 64, SoftBytes: 32, Admission: DeadlineQoS},
		},
		{
			{MaxBytes: 24, Admission: DropNewest},
			{MaxItems: 2, Admission: DeadlineQoS},
			{MaxItems: 1, MaxBytes: 16, Admission: Block},
		},
		{
			{MaxItems: 6, SoftItems: 6, Admission: DropOldest},
			{MaxBytes: 32, SoftBytes: 8, Admission: Block},
			{}, // unbounded: only the store bounds it
		},
	}
	ops := 3000
	if testing.Short() {
		ops = 600
	}
	for i, pols := range configs {
		t.Run(fmt.Sprint("config", i), func(t *testing.T) { conserveRun(t, pols, 6, ops, uint64(i)+1) })
	}
}

type conserveHeld struct {
	tok token.Token
	id  uint64
}

func conserveRun(t *testing.T, pols [3]Policy, workers, ops int, seed uint64) {
	s, err := NewStore[efPayload](arena.Config{Slots: 24, Shards: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var edges [3]*Edge
	for i, p := range pols {
		if edges[i], err = NewEdge(s, p); err != nil {
			t.Fatal(err)
		}
	}
	maxIDs := workers*ops + 1
	sent := make([]atomic.Int32, maxIDs) // successful sends, raised before the send
	recvd := make([]atomic.Int32, maxIDs)
	var nextID, received atomic.Uint64
	var errMu sync.Mutex
	var errs []string
	violate := func(format string, args ...any) {
		errMu.Lock()
		defer errMu.Unlock()
		if len(errs) < 20 {
			errs = append(errs, fmt.Sprintf(format, args...))
		}
	}

	held := make([][]conserveHeld, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			mine := held[w][:0]
			take := func(k int) conserveHeld {
				h := mine[k]
				mine[k] = mine[len(mine)-1]
				mine = mine[:len(mine)-1]
				return h
			}
			send := func(e *Edge, h conserveHeld) bool {
				sent[h.id].Add(1)
				var err error
				if rng.IntN(2) == 0 {
					err = e.TrySend(h.tok)
				} else {
					ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(300))*time.Microsecond)
					err = e.Send(ctx, h.tok)
					cancel()
				}
				if err != nil {
					sent[h.id].Add(-1)
					if !errors.Is(err, ErrRejected) && !errors.Is(err, ErrEdgeClosed) && !errors.Is(err, context.DeadlineExceeded) {
						violate("Send(%v): unexpected %v", h.tok, err)
					}
					return false
				}
				return true
			}
			got := func(tok token.Token) {
				var p efPayload
				var seq uint64
				if err := s.View(tok, func(m *Message[efPayload]) { p, seq = m.Payload, m.Header.Seq }); err != nil {
					violate("View(%v) of a received token: %v", tok, err)
					return
				}
				if p != efPattern(p.ID) || p.ID != seq || p.ID == 0 || p.ID >= uint64(maxIDs) {
					violate("received %v: payload %+v corrupt or not its header's (Seq %d)", tok, p, seq)
					return
				}
				if r := recvd[p.ID].Add(1); r > sent[p.ID].Load() {
					violate("message %d received %d times, sent %d times: duplicated", p.ID, r, sent[p.ID].Load())
				}
				received.Add(1)
				mine = append(mine, conserveHeld{tok: tok, id: p.ID})
			}
			for i := 0; i < ops; i++ {
				if w == 0 && i == ops/2 {
					edges[2].Close()
				}
				e := edges[rng.IntN(len(edges))]
				switch op := rng.IntN(100); {
				case op < 25 && len(mine) < 6: // Put
					id := nextID.Add(1)
					h := Header{Seq: id, QoS: QoS(rng.IntN(4)), Size: uint32(rng.IntN(12))}
					switch rng.IntN(5) {
					case 0:
						h.Deadline = 1
					case 1:
						h.Deadline = math.MaxInt64
					case 2:
						h.Deadline = Now() + int64(rng.IntN(200))*int64(time.Microsecond)
					}
					if rng.IntN(3) == 0 {
						h.Flags |= DegradeAllowed
					}
					tok, err := s.Put(h, efPattern(id))
					if errors.Is(err, arena.ErrFull) {
						continue
					}
					if err != nil {
						violate("Put: %v", err)
						continue
					}
					mine = append(mine, conserveHeld{tok: tok, id: id})
				case op < 40 && len(mine) > 0: // send
					k := rng.IntN(len(mine))
					if send(e, mine[k]) {
						take(k)
					}
				case op < 45 && len(mine) > 0: // SendBatch of the last 1-4 held
					k := len(mine) - 1 - rng.IntN(min(4, len(mine)))
					batch := mine[k:]
					var ts [4]token.Token
					for j, h := range batch {
						ts[j] = h.tok
						sent[h.id].Add(1)
					}
					ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(300))*time.Microsecond)
					n, err := e.SendBatch(ctx, ts[:len(batch)])
					cancel()
					if n < 0 || n > len(batch) || (err == nil) != (n == len(batch)) {
						violate("SendBatch(%d) = %d, %v", len(batch), n, err)
						n = max(0, min(n, len(batch)))
					}
					for _, h := range batch[n:] {
						sent[h.id].Add(-1)
					}
					if err != nil && !errors.Is(err, ErrRejected) && !errors.Is(err, ErrEdgeClosed) && !errors.Is(err, context.DeadlineExceeded) {
						violate("SendBatch: unexpected %v", err)
					}
					// The caller keeps batch[n:]: move them down over the sent.
					kept := copy(mine[k:], batch[n:])
					mine = mine[:k+kept]
				case op < 55 && len(mine) > 0: // fan-out to two edges
					k := rng.IntN(len(mine))
					h := mine[k]
					if err := s.Retain(h.tok); err != nil {
						violate("Retain(%v) of a held reference: %v", h.tok, err)
						continue
					}
					mine = append(mine, h)
					for _, e := range [2]*Edge{e, edges[(rng.IntN(2)+1+indexOf(edges, e))%3]} {
						if send(e, h) {
							for j := len(mine) - 1; j >= 0; j-- {
								if mine[j] == h {
									take(j)
									break
								}
							}
						}
					}
				case op < 70: // blocking Recv with a timeout
					ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(300))*time.Microsecond)
					tok, err := e.Recv(ctx)
					cancel()
					switch {
					case err == nil:
						got(tok)
					case !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrEdgeClosed):
						violate("Recv: %v", err)
					}
				case op < 75:
					if tok, ok := e.TryRecv(); ok {
						got(tok)
					}
				case op < 80: // RecvBatch with a timeout
					var dst [4]token.Token
					ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(300))*time.Microsecond)
					n, err := e.RecvBatch(ctx, dst[:1+rng.IntN(4)])
					cancel()
					switch {
					case err == nil && n > 0:
						for _, tok := range dst[:n] {
							got(tok)
						}
					case err == nil || n != 0:
						violate("RecvBatch = %d, %v", n, err)
					case !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrEdgeClosed):
						violate("RecvBatch: %v", err)
					}
				case len(mine) > 0: // Free
					h := take(rng.IntN(len(mine)))
					if err := s.Free(h.tok); err != nil {
						violate("Free(%v) of a held reference (message %d): %v", h.tok, h.id, err)
					}
				}
			}
			held[w] = mine
		}(w)
	}
	wg.Wait()

	var delivered uint64
	for i, e := range edges {
		e.Close()
		e.Drain()
		st := e.Stats()
		if st.Len != 0 || st.Admitted != st.Delivered+st.Evicted+st.Expired+st.Drained || st.FreeErrors != 0 {
			violate("edge %d (%+v): counters do not balance: %+v", i, pols[i], st)
		}
		delivered += st.Delivered
	}
	if delivered != received.Load() {
		violate("edges delivered %d, goroutines received %d", delivered, received.Load())
	}
	for w := range held {
		for _, h := range held[w] {
			if err := s.Free(h.tok); err != nil {
				violate("final Free(%v) of message %d: %v", h.tok, h.id, err)
			}
		}
	}
	if s.Available() != s.Capacity() {
		violate("after draining every edge and freeing everything: Available() = %d, Capacity() = %d", s.Available(), s.Capacity())
	}
	for _, e := range errs {
		t.Error(e)
	}
	t.Logf("%d messages, %d received", nextID.Load(), received.Load())
}

func indexOf(edges [3]*Edge, e *Edge) int {
	for i, x := range edges {
		if x == e {
			return i
		}
	}
	return 0
}
