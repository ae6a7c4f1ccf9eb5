package message

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func checksum(seq uint64) uint64 { return seq*0x9e3779b97f4a7c15 ^ 0xabcdef }

// TestStressNoLossNoDup runs many producers and consumers over a tiny edge in
// every admission mode and accounts for every message: it is received
// exactly once, refused back to its producer, or freed by the edge
// (evicted or expired) — never two of these, never none.
func TestStressNoLossNoDup(t *testing.T) {
	const producers, consumers = 6, 4
	perProducer := 3000
	if testing.Short() {
		perProducer = 500
	}
	policies := []Policy{
		{MaxItems: 2, Admission: Block},
		{MaxItems: 3, SoftItems: 1, MaxBytes: 40, SoftBytes: 10, Admission: Block},
		{MaxItems: 2, Admission: DropNewest},
		{MaxItems: 3, MaxBytes: 30, Admission: DropOldest},
		{MaxItems: 3, SoftItems: 2, MaxBytes: 30, Admission: DeadlineQoS},
	}
	for _, p := range policies {
		t.Run(p.Admission.String(), func(t *testing.T) {
			fs := newFakeStore()
			e := mustEdge(t, fs, p)
			var refused atomic.Uint64
			received := make([]atomic.Uint32, producers*perProducer)
			var bad atomic.Uint64
			var pwg, cwg sync.WaitGroup
			ctx := context.Background()
			for c := 0; c < consumers; c++ {
				cwg.Add(1)
				go func() {
					defer cwg.Done()
					for {
						tok, err := e.Recv(ctx)
						if errors.Is(err, ErrEdgeClosed) {
							return
						}
						if err != nil {
							t.Error(err)
							return
						}
						h, err := fs.Header(tok)
						if err != nil || h.Trace != checksum(h.Seq) {
							bad.Add(1)
						} else {
							received[h.Seq].Add(1)
						}
						if err := fs.Free(tok); err != nil {
							t.Error(err)
						}
					}
				}()
			}
			for pi := 0; pi < producers; pi++ {
				pwg.Add(1)
				go func(pi int) {
					defer pwg.Done()
					rng := rand.New(rand.NewPCG(uint64(pi), 7))
					for i := 0; i < perProducer; i++ {
						seq := uint64(pi*perProducer + i)
						h := Header{Seq: seq, Trace: checksum(seq), QoS: QoS(rng.IntN(3) + 1), Size: uint32(rng.IntN(10))}
						if rng.IntN(8) == 0 {
							h.Deadline = Now() + int64(rng.IntN(200))*int64(time.Microsecond)
						}
						if rng.IntN(4) == 0 {
							h.Flags |= DegradeAllowed
						}
						tok := fs.put(h)
						var err error
						if rng.IntN(2) == 0 {
							err = e.TrySend(tok)
						} else {
							err = e.Send(ctx, tok)
						}
						if err != nil {
							refused.Add(1)
							if err := fs.Free(tok); err != nil {
								t.Error(err)
							}
						}
					}
				}(pi)
			}
			pwg.Wait()
			e.Close()
			cwg.Wait()

			st := e.Stats()
			var got uint64
			for i := range received {
				switch n := received[i].Load(); n {
				case 0:
				case 1:
					got++
				default:
					t.Fatalf("seq %d received %d times", i, n)
				}
			}
			total := uint64(producers * perProducer)
			if bad.Load() != 0 {
				t.Fatalf("%d corrupt messages", bad.Load())
			}
			if got != st.Delivered {
				t.Fatalf("received %d, edge delivered %d", got, st.Delivered)
			}
			if got+refused.Load()+st.Evicted+st.Expired != total {
				t.Fatalf("received %d + refused %d + evicted %d + expired %d != %d (%+v)",
					got, refused.Load(), st.Evicted, st.Expired, total, st)
			}
			if st.Admitted != st.Delivered+st.Evicted+st.Expired || st.Len != 0 || st.FreeErrors != 0 {
				t.Fatalf("stats do not balance: %+v", st)
			}
			if n := fs.liveCount(); n != 0 {
				t.Fatalf("%d tokens leaked", n)
			}
			for tok, n := range fs.freed {
				if n != 1 {
					t.Fatalf("token %v freed %d times", tok, n)
				}
			}
			if refused.Load() != st.Rejected {
				t.Fatalf("producers saw %d refusals, edge counted %d", refused.Load(), st.Rejected)
			}
			t.Logf("%+v", st)
		})
	}
}
