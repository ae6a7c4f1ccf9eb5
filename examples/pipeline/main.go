// Command pipeline runs a small cella message graph on the host memory
// class: a source, a transform stage, and a fan-out to two sinks, one fast
// and one slow behind a DropOldest edge. It prints throughput, hop latency
// percentiles, and what each edge dropped or evicted.
//
//	go run ./examples/pipeline -d 2s
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

// reading is the payload: pointer-free, so it can live off-heap.
type reading struct {
	Sensor uint32
	Value  float64
	Scaled float64
	Hop1   int64 // Now() when the transform stage saw it
}

// latencies collects per-hop samples, one slice per sink.
type latencies struct {
	mu sync.Mutex
	ns []int64
}

func (l *latencies) add(d int64) {
	l.mu.Lock()
	if len(l.ns) < 1<<20 {
		l.ns = append(l.ns, d)
	}
	l.mu.Unlock()
}

func (l *latencies) percentiles() (p50, p99 time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.ns) == 0 {
		return 0, 0
	}
	slices.Sort(l.ns)
	at := func(q float64) time.Duration { return time.Duration(l.ns[int(q*float64(len(l.ns)-1))]) }
	return at(0.50), at(0.99)
}

func main() {
	dur := flag.Duration("d", 2*time.Second, "how long to run")
	slots := flag.Int("slots", 4096, "message store capacity")
	urgent := flag.Duration("urgent", time.Millisecond, "deadline of the LatencyCritical readings")
	flag.Parse()
	if err := run(*dur, *slots, *urgent); err != nil {
		log.SetFlags(0)
		log.Print(err)
		os.Exit(1)
	}
}

func run(dur time.Duration, slots int, urgent time.Duration) error {
	store, err := message.NewStore[reading](arena.Config{Slots: slots})
	if err != nil {
		return err
	}
	defer store.Close()

	newEdge := func(p message.Policy) *message.Edge {
		e, err := message.NewEdge(store, p)
		if err != nil {
			panic(err) // the policies below are constants
		}
		return e
	}
	raw := newEdge(message.Policy{MaxItems: 256, SoftItems: 192, Admission: message.Block})
	fast := newEdge(message.Policy{MaxItems: 256, Admission: message.Block})
	slow := newEdge(message.Policy{MaxItems: 64, MaxBytes: 64 * 32, Admission: message.DropOldest})
	edges := []struct {
		name string
		e    *message.Edge
	}{{"source->transform", raw}, {"transform->fast", fast}, {"transform->slow", slow}}

	var produced, fastGot, slowGot atomic.Uint64
	var hopSrc, hopFast, hopSlow latencies

	g := message.NewGraph(store)
	g.Source("sensors", 1, func(ctx context.Context, out *message.Emitter) error {
		for seq := uint64(0); ctx.Err() == nil; seq++ {
			h := message.Header{Seq: seq, Trace: seq, QoS: message.BestEffort, Size: 32}
			if seq%64 == 0 {
				// Urgent readings are worthless late: edges free them,
				// never deliver them, once the deadline has passed.
				h.QoS = message.LatencyCritical
				h.SetDeadline(time.Now().Add(urgent))
			}
			// PutWait: a full store makes the source wait for a free
			// slot (back-pressure) instead of failing the graph.
			t, err := store.PutWait(ctx, h, reading{Sensor: uint32(seq % 16), Value: float64(seq)})
			if err != nil {
				if ctx.Err() != nil {
					return nil // the graph is stopping
				}
				return err
			}
			if err := out.Emit(t); err != nil {
				return err
			}
			produced.Add(1)
		}
		return nil
	}, raw)
	g.Stage("scale", 2, raw, func(ctx context.Context, t token.Token, out *message.Emitter) error {
		now := message.Now()
		err := store.Update(t, func(m *message.Message[reading]) {
			hopSrc.add(now - m.Header.Created)
			m.Payload.Scaled = m.Payload.Value * 1.5
			m.Payload.Hop1 = now
		})
		if err != nil {
			out.Free(t)
			return err
		}
		return out.Emit(t) // fan-out: one token, two edges, no copy
	}, fast, slow)
	sink := func(hop *latencies, got *atomic.Uint64, work time.Duration) message.SinkFunc {
		return func(ctx context.Context, t token.Token) error {
			now := message.Now()
			err := store.View(t, func(m *message.Message[reading]) { hop.add(now - m.Payload.Hop1) })
			got.Add(1)
			if work > 0 {
				time.Sleep(work)
			}
			return err
		}
	}
	g.Sink("fast", 1, fast, sink(&hopFast, &fastGot, 0))
	g.Sink("slow", 1, slow, sink(&hopSlow, &slowGot, 50*time.Microsecond))

	time.AfterFunc(dur, g.Stop)
	start := time.Now()
	if err := g.Run(context.Background()); err != nil {
		return err
	}
	elapsed := time.Since(start)

	fmt.Printf("ran %v on the %v class, %d-slot store\n", elapsed.Round(time.Millisecond), store.Class(), store.Capacity())
	fmt.Printf("produced %d msgs: %.0f msgs/s; fast sink got %d, slow sink got %d\n",
		produced.Load(), float64(produced.Load())/elapsed.Seconds(), fastGot.Load(), slowGot.Load())
	for _, h := range []struct {
		name string
		l    *latencies
	}{{"source->transform", &hopSrc}, {"transform->fast", &hopFast}, {"transform->slow", &hopSlow}} {
		p50, p99 := h.l.percentiles()
		fmt.Printf("hop %-18s p50 %-10v p99 %v\n", h.name, p50, p99)
	}
	for _, e := range edges {
		s := e.e.Stats()
		fmt.Printf("edge %-18s admitted %-9d delivered %-9d rejected %-6d evicted %-9d expired %-4d waited %-8d high-water %d\n",
			e.name, s.Admitted, s.Delivered, s.Rejected, s.Evicted, s.Expired, s.Waited, s.HighWater)
	}
	if store.Available() != store.Capacity() {
		return fmt.Errorf("leak: %d of %d slots free after the run", store.Available(), store.Capacity())
	}
	fmt.Println("all slots returned to the store")
	return nil
}
