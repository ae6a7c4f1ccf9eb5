package bench

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

// The message benchmarks put message.Edge beside the buffered Go channels a
// Go program would use for the same job, all with the capacity hopBuffer:
//
//   - chan-token: a chan token.Token, the same 8-byte handle an edge moves;
//   - chan-ptr: a chan *T, the usual way to pass work between goroutines;
//   - chan-copy (fan-out only): every consumer gets its own copy of the value.
//
// ns/op is per message; every benchmark reports allocs/op.

// BenchmarkMessageHop is the transport cost of one hop: a producer goroutine
// sends b.N already-stored messages, a consumer goroutine receives them. The
// edge uses Block admission (as a Go channel blocks), so the comparison is
// the queue and nothing else; BenchmarkHop/impl=cella-edge adds the store's
// Put, View and Free.
func BenchmarkMessageHop(b *testing.B) {
	const ring = 256 // distinct messages cycled through (each send reuses one)
	b.Run("impl=cella-edge/"+sizeName[P64](), func(b *testing.B) {
		st, toks := storeWith[P64](b, ring)
		e, err := message.NewEdge(st, message.Policy{MaxItems: hopBuffer, Admission: message.Block})
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		settle()
		b.ReportAllocs()
		b.ResetTimer()
		done := make(chan uint64)
		go func() {
			var acc uint64
			for {
				t, err := e.Recv(ctx)
				if err != nil {
					done <- acc
					return
				}
				acc += uint64(t)
			}
		}()
		for i := 0; i < b.N; i++ {
			if err := e.Send(ctx, toks[i&(ring-1)]); err != nil {
				b.Fatal(err)
			}
		}
		e.Close()
		sinkAdd(<-done)
	})
	b.Run("impl=chan-token/"+sizeName[P64](), func(b *testing.B) {
		toks := make([]token.Token, ring)
		for i := range toks {
			toks[i] = token.New(uint32(i), 1)
		}
		ch := make(chan token.Token, hopBuffer)
		settle()
		b.ReportAllocs()
		b.ResetTimer()
		done := make(chan uint64)
		go func() {
			var acc uint64
			for t := range ch {
				acc += uint64(t)
			}
			done <- acc
		}()
		for i := 0; i < b.N; i++ {
			ch <- toks[i&(ring-1)]
		}
		close(ch)
		sinkAdd(<-done)
	})
	b.Run("impl=chan-ptr/"+sizeName[P64](), func(b *testing.B) {
		objs := make([]*P64, ring)
		for i := range objs {
			objs[i] = new(P64)
			stamp(objs[i], uint64(i))
		}
		ch := make(chan *P64, hopBuffer)
		settle()
		b.ReportAllocs()
		b.ResetTimer()
		done := make(chan uint64)
		go func() {
			var acc uint64
			for p := range ch {
				acc += first(p)
			}
			done <- acc
		}()
		for i := 0; i < b.N; i++ {
			ch <- objs[i&(ring-1)]
		}
		close(ch)
		sinkAdd(<-done)
	})
}

// storeWith returns a store holding n messages (one reference each, freed
// when the benchmark ends) and their tokens.
func storeWith[T any](b *testing.B, n int) (*message.Store[T], []token.Token) {
	st, err := message.NewStore[T](arena.Config{Slots: n})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	toks := make([]token.Token, n)
	for i := range toks {
		var v T
		stamp(&v, uint64(i))
		if toks[i], err = st.Put(message.Header{Seq: uint64(i), Size: 64}, v); err != nil {
			b.Fatal(err)
		}
	}
	return st, toks
}

// pipelineStages is the depth of BenchmarkMessagePipeline: the shape of the
// LMAX Disruptor's three-stage pipeline (about 52 ns mean hop).
const pipelineStages = 3

// latencySampler keeps every sampleEvery-th end-to-end latency, at most
// maxSamples of them, and reports per-hop percentiles.
// Only the last stage adds; report runs after it has finished.
type latencySampler struct {
	lat []int64
}

const (
	sampleEvery = 8
	maxSamples  = 1 << 18
)

func newSampler(n int) *latencySampler {
	return &latencySampler{lat: make([]int64, 0, min(n/sampleEvery+1, maxSamples))}
}

func (s *latencySampler) add(seq uint64, created int64) {
	if seq%sampleEvery != 0 || len(s.lat) == cap(s.lat) {
		return
	}
	s.lat = append(s.lat, message.Now()-created)
}

func (s *latencySampler) report(b *testing.B, hops int) {
	if len(s.lat) == 0 {
		return
	}
	slices.Sort(s.lat)
	pct := func(p float64) float64 {
		return float64(s.lat[int(p*float64(len(s.lat)-1))]) / float64(hops)
	}
	b.ReportMetric(pct(0.50), "ns/hop-p50")
	b.ReportMetric(pct(0.99), "ns/hop-p99")
}

// pipelineMode is how BenchmarkMessagePipeline's producer sends: as fast as
// it can (saturated: latency includes the time spent queued behind full
// buffers, ns/op is the pipeline's throughput), or paced, one message every
// pacedGap, so that queues stay empty and the percentiles are the hops
// themselves (wake-ups included), as in the Disruptor's latency test.
type pipelineMode struct {
	name string
	gap  int64 // ns between sends; 0 = saturated
}

const pacedGap = 2000

var pipelineModes = []pipelineMode{{"saturated", 0}, {"paced", pacedGap}}

// pace waits until Now() reaches next and returns the next send time. It
// yields while it waits, so that the stages get the CPUs even when there
// are fewer CPUs than goroutines.
func pace(next, gap int64) int64 {
	if gap == 0 {
		return 0
	}
	for message.Now() < next {
		runtime.Gosched()
	}
	return message.Now() + gap
}

// BenchmarkMessagePipeline sends b.N messages through pipelineStages
// goroutines in a row (producer → stage 1 → ... → last stage), each stage
// forwarding to the next over an edge or channel, the last one consuming.
// Latency is end to end (creation to the last stage's receive) divided by
// the number of hops; ns/op is per message.
func BenchmarkMessagePipeline(b *testing.B) {
	for _, mode := range pipelineModes {
		b.Run("impl=cella-edge/mode="+mode.name, func(b *testing.B) { benchPipelineEdge(b, mode.gap) })
		b.Run("impl=cella-graph/mode="+mode.name, func(b *testing.B) { benchPipelineGraph(b, mode.gap) })
		b.Run("impl=chan-ptr/mode="+mode.name, func(b *testing.B) { benchPipelineChanPtr(b, mode.gap) })
		b.Run("impl=chan-token/mode="+mode.name, func(b *testing.B) { benchPipelineChanToken(b, mode.gap) })
	}
}

// pipelineEdges returns a store, closed when the benchmark ends, and the
// pipeline's Block edges on it, each with the channels' capacity.
func pipelineEdges(b *testing.B) (*message.Store[P64], []*message.Edge) {
	st, err := message.NewStore[P64](arena.Config{Slots: pairCapacity})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	edges := make([]*message.Edge, pipelineStages)
	for i := range edges {
		if edges[i], err = message.NewEdge(st, message.Policy{MaxItems: hopBuffer, Admission: message.Block}); err != nil {
			b.Fatal(err)
		}
	}
	return st, edges
}

func benchPipelineEdge(b *testing.B, gap int64) {
	st, edges := pipelineEdges(b)
	ctx := context.Background()
	lat := newSampler(b.N)
	var wg sync.WaitGroup
	errc := make(chan error, pipelineStages)
	for i, in := range edges {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := i == len(edges)-1
			for {
				t, err := in.Recv(ctx)
				if errors.Is(err, message.ErrEdgeClosed) {
					if !last {
						edges[i+1].Close()
					}
					return
				}
				if err == nil {
					if last {
						var h message.Header
						h, err = st.Header(t)
						if err == nil {
							lat.add(h.Seq, h.Created)
							err = st.Free(t)
						}
					} else {
						err = edges[i+1].Send(ctx, t)
					}
				}
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	settle()
	b.ReportAllocs()
	b.ResetTimer()
	next := message.Now()
	for i := 0; i < b.N; i++ {
		next = pace(next, gap)
		var v P64
		stamp(&v, uint64(i))
		t, err := st.Put(message.Header{Seq: uint64(i), Size: 64}, v) // Created = Now()
		if err == nil {
			err = edges[0].Send(ctx, t)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	edges[0].Close()
	wg.Wait()
	b.StopTimer()
	select {
	case err := <-errc:
		b.Fatal(err)
	default:
	}
	lat.report(b, pipelineStages)
}

// benchPipelineGraph is benchPipelineEdge built as a message.Graph, the
// runtime's own pipeline: a source, two pass-through stages and a sink,
// one worker each, joined by the same three edges. The graph's workers
// receive with RecvBatch and its stages send with SendBatch where several
// tokens are ready (a paced stream gets one at a time).
func benchPipelineGraph(b *testing.B, gap int64) {
	st, edges := pipelineEdges(b)
	lat := newSampler(b.N)
	g := message.NewGraph(st)
	g.Source("producer", 1, func(ctx context.Context, out *message.Emitter) error {
		next := message.Now()
		for i := 0; i < b.N; i++ {
			next = pace(next, gap)
			var v P64
			stamp(&v, uint64(i))
			t, err := st.Put(message.Header{Seq: uint64(i), Size: 64}, v) // Created = Now()
			if err == nil {
				err = out.Emit(t)
			}
			if err != nil {
				return err
			}
		}
		return nil
	}, edges[0])
	pass := func(_ context.Context, t token.Token, out *message.Emitter) error { return out.Emit(t) }
	for i := 1; i < pipelineStages; i++ {
		g.Stage("stage"+strconv.Itoa(i), 1, edges[i-1], pass, edges[i])
	}
	g.Sink("sink", 1, edges[pipelineStages-1], func(_ context.Context, t token.Token) error {
		h, err := st.Header(t)
		if err == nil {
			lat.add(h.Seq, h.Created)
		}
		return err
	})
	settle()
	b.ReportAllocs()
	b.ResetTimer()
	if err := g.Run(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	lat.report(b, pipelineStages)
}

// stampedMsg is the chan-ptr pipeline's message: the same 64-byte payload
// with the header fields the cella case carries.
type stampedMsg struct {
	seq     uint64
	created int64
	payload P64
}

func benchPipelineChanPtr(b *testing.B, gap int64) {
	chans := make([]chan *stampedMsg, pipelineStages)
	for i := range chans {
		chans[i] = make(chan *stampedMsg, hopBuffer)
	}
	lat := newSampler(b.N)
	var wg sync.WaitGroup
	for i, in := range chans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := i == len(chans)-1
			for m := range in {
				if last {
					lat.add(m.seq, m.created)
				} else {
					chans[i+1] <- m
				}
			}
			if !last {
				close(chans[i+1])
			}
		}()
	}
	settle()
	b.ReportAllocs()
	b.ResetTimer()
	next := message.Now()
	for i := 0; i < b.N; i++ {
		next = pace(next, gap)
		m := &stampedMsg{seq: uint64(i), created: message.Now()} // what Put does for cella
		stamp(&m.payload, uint64(i))
		chans[0] <- m
	}
	close(chans[0])
	wg.Wait()
	b.StopTimer()
	lat.report(b, pipelineStages)
}

// benchPipelineChanToken moves 8-byte handles, like the edges, and keeps
// the creation times in a side table indexed by handle.
func benchPipelineChanToken(b *testing.B, gap int64) {
	const ring = pairCapacity
	created := make([]int64, ring)
	chans := make([]chan token.Token, pipelineStages)
	for i := range chans {
		chans[i] = make(chan token.Token, hopBuffer)
	}
	lat := newSampler(b.N)
	var wg sync.WaitGroup
	for i, in := range chans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := i == len(chans)-1
			for t := range in {
				if last {
					lat.add(uint64(t.Generation()), created[t.Index()])
				} else {
					chans[i+1] <- t
				}
			}
			if !last {
				close(chans[i+1])
			}
		}()
	}
	settle()
	b.ReportAllocs()
	b.ResetTimer()
	next := message.Now()
	for i := 0; i < b.N; i++ {
		next = pace(next, gap)
		// ring > pipelineStages*hopBuffer + pipelineStages, so a handle is
		// never reused while still in flight.
		idx := uint32(i % ring)
		created[idx] = message.Now()
		chans[0] <- token.New(idx, uint32(i))
	}
	close(chans[0])
	wg.Wait()
	b.StopTimer()
	lat.report(b, pipelineStages)
}

// BenchmarkMessageFanOut sends each message to 2 or 4 consumers. cella-edge
// stores it once and Retains it once per extra edge (zero-copy: every
// consumer Views the same slot and Frees its reference); chan-copy sends a
// copy of the value on every channel; chan-ptr shares one heap object
// through every channel (the GC reclaims it).
//
// The 64-byte cases are named edges=k; the 4 KiB case (the target:
// at most 0.5x copying into the channels) edges=4/payload=4096.
func BenchmarkMessageFanOut(b *testing.B) {
	for _, k := range []int{2, 4} {
		ks := "/edges=" + strconv.Itoa(k)
		b.Run("impl=cella-edge"+ks, func(b *testing.B) { benchFanOutEdge[P64](b, k) })
		b.Run("impl=chan-copy"+ks, func(b *testing.B) { benchFanOutChanCopy[P64](b, k) })
		b.Run("impl=chan-ptr"+ks, func(b *testing.B) { benchFanOutChanPtr[P64](b, k) })
	}
	ks := "/edges=4/" + sizeName[P4K]()
	b.Run("impl=cella-edge"+ks, func(b *testing.B) { benchFanOutEdge[P4K](b, 4) })
	b.Run("impl=chan-copy"+ks, func(b *testing.B) { benchFanOutChanCopy[P4K](b, 4) })
	b.Run("impl=chan-ptr"+ks, func(b *testing.B) { benchFanOutChanPtr[P4K](b, 4) })
}

func benchFanOutEdge[T any](b *testing.B, k int) {
	st, err := message.NewStore[T](arena.Config{Slots: pairCapacity})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	edges := make([]*message.Edge, k)
	for i := range edges {
		if edges[i], err = message.NewEdge(st, message.Policy{MaxItems: hopBuffer, Admission: message.Block}); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	errc := make(chan error, k)
	for _, e := range edges {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := consumeEdge(ctx, st, e); err != nil {
				errc <- err
			}
		}()
	}
	settle()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var v T
		stamp(&v, uint64(i))
		t, err := st.Put(message.Header{Seq: uint64(i)}, v) // Size 0: the payload's
		for j := 1; j < k && err == nil; j++ {
			err = st.Retain(t)
		}
		for j := 0; j < k && err == nil; j++ {
			err = edges[j].Send(ctx, t)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	for _, e := range edges {
		e.Close()
	}
	wg.Wait()
	b.StopTimer()
	select {
	case err := <-errc:
		b.Fatal(err)
	default:
	}
	if st.Available() != st.Capacity() {
		b.Fatalf("fan-out leaked: %d of %d slots free", st.Available(), st.Capacity())
	}
}

func benchFanOutChanCopy[T any](b *testing.B, k int) {
	chans := make([]chan T, k)
	var wg sync.WaitGroup
	for i := range chans {
		chans[i] = make(chan T, hopBuffer)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var acc uint64
			for v := range chans[i] {
				acc += first(&v)
			}
			sinkAdd(acc)
		}()
	}
	settle()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var v T
		stamp(&v, uint64(i))
		for _, ch := range chans {
			ch <- v
		}
	}
	for _, ch := range chans {
		close(ch)
	}
	wg.Wait()
}

func benchFanOutChanPtr[T any](b *testing.B, k int) {
	chans := make([]chan *T, k)
	var wg sync.WaitGroup
	for i := range chans {
		chans[i] = make(chan *T, hopBuffer)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var acc uint64
			for p := range chans[i] {
				acc += first(p)
			}
			sinkAdd(acc)
		}()
	}
	settle()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := new(T)
		stamp(p, uint64(i))
		for _, ch := range chans {
			ch <- p
		}
	}
	for _, ch := range chans {
		close(ch)
	}
	wg.Wait()
}
