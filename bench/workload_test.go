package bench

import (
	"runtime"
	"strconv"
	"sync"
	"testing"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// sink keeps values read back by the benchmarks observable.
var sink uint64

// BenchmarkStoreLoadFree copies a value in, copies it back out and frees
// the slot. cella calls Store, Load and Free; the peers get an object,
// assign the value, read it back and put it.
func BenchmarkStoreLoadFree(b *testing.B) {
	benchStoreLoadFree[P64](b)
	benchStoreLoadFree[P1K](b)
}

func benchStoreLoadFree[T any](b *testing.B) {
	var v T
	stamp(&v, 42)
	// cella-into copies out with LoadInto into the caller's variable, the
	// way to read a value too large to return.
	b.Run("impl="+nameCella+"-into/"+sizeName[T](), func(b *testing.B) {
		c := newCellaPool[T](pairCapacity, 0)
		defer c.close()
		a := c.a
		settle()
		b.ReportAllocs()
		var acc uint64
		var out T
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			t, err := a.Store(v)
			if err != nil {
				b.Fatal(err)
			}
			if err := a.LoadInto(t, &out); err != nil {
				b.Fatal(err)
			}
			acc += first(&out)
			if err := a.Free(t); err != nil {
				b.Fatal(err)
			}
		}
		sink += acc
	})
	for _, im := range impls[T]() {
		b.Run("impl="+im.name+"/"+sizeName[T](), func(b *testing.B) {
			p := im.make(pairCapacity)
			defer p.close()
			settle()
			b.ReportAllocs()
			var acc uint64
			b.ResetTimer()
			if c, ok := p.(*cellaPool[T]); ok {
				a := c.a
				for i := 0; i < b.N; i++ {
					t, err := a.Store(v)
					if err != nil {
						b.Fatal(err)
					}
					out, err := a.Load(t)
					if err != nil {
						b.Fatal(err)
					}
					acc += first(&out)
					if err := a.Free(t); err != nil {
						b.Fatal(err)
					}
				}
			} else {
				for i := 0; i < b.N; i++ {
					h, q, ok := p.get()
					if !ok {
						b.Fatal("empty")
					}
					*q = v
					out := *q
					acc += first(&out)
					p.put(h, q)
				}
			}
			sink += acc
		})
	}
}

// BenchmarkLoad copies a live value out, one goroutine. cella: Load and
// LoadInto (the seqlock: no write to shared memory); peers: rwmutex (RLock,
// copy, RUnlock of the object's own RWMutex) and plain (an unsynchronised
// copy: the floor).
func BenchmarkLoad(b *testing.B) {
	benchLoad[P64](b)
	benchLoad[P1K](b)
}

func benchLoad[T any](b *testing.B) {
	c := newCellaPool[T](liveSlots, 0)
	defer c.close()
	toks := make([]token.Token, liveSlots)
	objs := make([]*lockedObj[T], liveSlots)
	for i := range toks {
		var v T
		stamp(&v, uint64(i))
		t, err := c.a.Store(v)
		if err != nil {
			b.Fatal(err)
		}
		toks[i] = t
		objs[i] = &lockedObj[T]{v: v}
	}
	a := c.a
	run := func(name string, body func(i int) uint64) {
		b.Run("impl="+name+"/"+sizeName[T](), func(b *testing.B) {
			settle()
			b.ReportAllocs()
			var acc uint64
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				acc += body(i % liveSlots)
			}
			sink += acc
		})
	}
	run(nameCella, func(i int) uint64 {
		v, err := a.Load(toks[i])
		if err != nil {
			b.Fatal(err)
		}
		return first(&v)
	})
	var out T
	run(nameCella+"-into", func(i int) uint64 {
		if err := a.LoadInto(toks[i], &out); err != nil {
			b.Fatal(err)
		}
		return first(&out)
	})
	run("rwmutex", func(i int) uint64 {
		o := objs[i]
		o.mu.RLock()
		v := o.v
		o.mu.RUnlock()
		return first(&v)
	})
	run("plain", func(i int) uint64 {
		v := objs[i].v
		return first(&v)
	})
}

// liveSlots is how many live objects the View and Update benchmarks spread
// their accesses over.
const liveSlots = 1024

// lockedObj is what a Go user writes for an object that several
// goroutines read and write: the value and its own RWMutex, on the heap.
type lockedObj[T any] struct {
	mu sync.RWMutex
	v  T
}

// BenchmarkView reads a word of a live object under shared access, from
// every goroutine at each parallelism level. Peers: rwmutex (a heap object
// with its own sync.RWMutex, RLock/RUnlock) and plain (a bare pointer read
// with no synchronisation at all: the floor, not a safe alternative).
func BenchmarkView(b *testing.B) { benchAccess[P64](b, false) }

// BenchmarkUpdate writes a live object under exclusive access. Peers:
// rwmutex (Lock/Unlock of the object's RWMutex) and plain (unsynchronised
// write, the floor).
func BenchmarkUpdate(b *testing.B) { benchAccess[P64](b, true) }

func benchAccess[T any](b *testing.B, write bool) {
	for _, name := range []string{nameCella, "rwmutex", "plain"} {
		for _, lv := range levels() {
			b.Run("impl="+name+"/"+sizeName[T]()+"/"+lv.String(), func(b *testing.B) {
				defer lv.set()()
				var body func(pb *testing.PB)
				switch name {
				case nameCella:
					c := newCellaPool[T](liveSlots, 0)
					defer c.close()
					toks := make([]token.Token, liveSlots)
					for i := range toks {
						t, _, err := c.a.Alloc()
						if err != nil {
							b.Fatal(err)
						}
						toks[i] = t
					}
					body = func(pb *testing.PB) { cellaAccess(b, c.a, toks, write, pb) }
				case "rwmutex":
					objs := make([]*lockedObj[T], liveSlots)
					for i := range objs {
						objs[i] = new(lockedObj[T])
					}
					body = func(pb *testing.PB) { rwAccess(objs, write, pb) }
				default:
					objs := make([]*T, liveSlots)
					for i := range objs {
						objs[i] = new(T)
					}
					body = func(pb *testing.PB) { plainAccess(objs, write, pb) }
				}
				settle()
				b.ReportAllocs()
				b.SetParallelism(lv.perP)
				b.ResetTimer()
				b.RunParallel(body)
			})
		}
	}
}

// startAt gives each goroutine its own starting slot, so that goroutines
// do not walk the live slots in lockstep.
var startAt struct {
	sync.Mutex
	n uint32
}

func nextStart() uint32 {
	startAt.Lock()
	defer startAt.Unlock()
	startAt.n += 397
	return startAt.n
}

func cellaAccess[T any](b *testing.B, a *arena.Arena[T], toks []token.Token, write bool, pb *testing.PB) {
	i := nextStart()
	var acc uint64
	// The callbacks are made once per goroutine, outside the loop: a
	// closure built per call would allocate.
	read := func(p *T) { acc += first(p) }
	upd := func(p *T) { stamp(p, uint64(i)) }
	fn := read
	if write {
		fn = upd
	}
	for pb.Next() {
		t := toks[i%liveSlots]
		var err error
		if write {
			err = a.Update(t, fn)
		} else {
			err = a.View(t, fn)
		}
		if err != nil {
			b.Error(err)
			return
		}
		i++
	}
	sinkAdd(acc)
}

func rwAccess[T any](objs []*lockedObj[T], write bool, pb *testing.PB) {
	i := nextStart()
	var acc uint64
	for pb.Next() {
		o := objs[i%liveSlots]
		if write {
			o.mu.Lock()
			stamp(&o.v, uint64(i))
			o.mu.Unlock()
		} else {
			o.mu.RLock()
			acc += first(&o.v)
			o.mu.RUnlock()
		}
		i++
	}
	sinkAdd(acc)
}

func plainAccess[T any](objs []*T, write bool, pb *testing.PB) {
	i := nextStart()
	var acc uint64
	for pb.Next() {
		o := objs[i%liveSlots]
		if write {
			stamp(o, uint64(i))
		} else {
			acc += first(o)
		}
		i++
	}
	sinkAdd(acc)
}

var sinkMu sync.Mutex

func sinkAdd(v uint64) {
	sinkMu.Lock()
	sink += v
	sinkMu.Unlock()
}

// batchLen is how many handles the producer of BenchmarkCrossP hands over
// at once. Batching keeps the channel's cost out of the figure, which is
// about the allocator's cross-P free path.
const batchLen = 64

type handle[T any] struct {
	h uint64
	p *T
}

// BenchmarkCrossP has one goroutine allocating and stamping objects while
// another frees them, so every free is remote (another P, when there are
// two) and objects must flow back to the allocating side. ns/op is per
// object. Handles travel in batches of batchLen over a channel.
func BenchmarkCrossP(b *testing.B) {
	if runtime.GOMAXPROCS(0) < 2 {
		b.Skip("needs 2 Ps")
	}
	benchCrossP[P64](b)
}

func benchCrossP[T any](b *testing.B) {
	for _, im := range impls[T]() {
		b.Run("impl="+im.name+"/"+sizeName[T](), func(b *testing.B) {
			p := im.make(pairCapacity)
			defer p.close()
			const inFlight = 8
			free := make(chan *[batchLen]handle[T], inFlight)
			full := make(chan *[batchLen]handle[T], inFlight)
			for i := 0; i < inFlight; i++ {
				free <- new([batchLen]handle[T])
			}
			settle()
			b.ReportAllocs()
			b.ResetTimer()
			done := make(chan struct{})
			go func() {
				defer close(done)
				l := p.local()
				for batch := range full {
					for _, x := range batch {
						if x.p == nil {
							break
						}
						l.put(x.h, x.p)
					}
					free <- batch
				}
			}()
			for n := 0; n < b.N; {
				batch := <-free
				k := min(batchLen, b.N-n)
				for j := 0; j < k; j++ {
					h, q, ok := p.get()
					if !ok {
						b.Fatal("empty")
					}
					stamp(q, uint64(n+j))
					batch[j] = handle[T]{h, q}
				}
				clear(batch[k:])
				n += k
				full <- batch
			}
			close(full)
			<-done
		})
	}
}

// burstLen is how many objects BenchmarkBurst takes before giving them all
// back: the whole capacity of the bounded pools. One goroutine taking all
// of cella's slots drains its own shard and must steal the others'.
const burstLen = 4096

// BenchmarkBurst allocates burstLen objects, then frees them all, and
// repeats. ns/op is per object (one alloc and one free). cella reports
// steals/op from its Stats; sync.Pool and the heap fall back to the Go
// allocator when a burst outgrows what they cache, which shows in
// allocs/op.
func BenchmarkBurst(b *testing.B) { benchBurst[P64](b) }

func benchBurst[T any](b *testing.B) {
	for _, im := range impls[T]() {
		b.Run("impl="+im.name+"/"+sizeName[T]()+"/burst="+strconv.Itoa(burstLen), func(b *testing.B) {
			p := im.make(burstLen)
			defer p.close()
			held := make([]handle[T], burstLen)
			settle()
			var steals0 uint64
			c, isCella := p.(*cellaPool[T])
			if isCella {
				steals0 = c.a.Stats().Steals
			}
			b.ReportAllocs()
			b.ResetTimer()
			for n := 0; n < b.N; {
				k := min(burstLen, b.N-n)
				for j := 0; j < k; j++ {
					h, q, ok := p.get()
					if !ok {
						b.Fatalf("%s: empty after %d of %d", im.name, j, k)
					}
					stamp(q, uint64(j))
					held[j] = handle[T]{h, q}
				}
				for j := 0; j < k; j++ {
					p.put(held[j].h, held[j].p)
				}
				n += k
			}
			b.StopTimer()
			if isCella {
				b.ReportMetric(float64(c.a.Stats().Steals-steals0)/float64(b.N), "steals/op")
			}
		})
	}
}

// BenchmarkHop sends one message from a producer goroutine to a consumer
// goroutine over a buffered Go channel, the way Go programs pass work
// between stages. Every pool implementation sends its handle (the arena a
// token); chan-value sends the payload itself by value; cella-edge sends a
// message.Store token over a message.Edge (hop_edge_test.go). The consumer
// reads the message and releases it. ns/op is per message.
//
// At 4 KiB only chan-value and cella-edge run: a channel of values is
// what the 4 KiB target compares a Put by value with.
func BenchmarkHop(b *testing.B) {
	benchHop[P64](b)
	benchHopChanValue[P64](b)
	benchHopEdge[P64](b)
	benchHopChanValue[P4K](b)
	benchHopEdge[P4K](b)
}

const hopBuffer = 128

func benchHop[T any](b *testing.B) {
	for _, im := range impls[T]() {
		b.Run("impl="+im.name+"/"+sizeName[T](), func(b *testing.B) {
			p := im.make(pairCapacity)
			defer p.close()
			ch := make(chan handle[T], hopBuffer)
			settle()
			b.ReportAllocs()
			b.ResetTimer()
			done := make(chan uint64)
			go func() {
				l := p.local()
				var acc uint64
				for x := range ch {
					acc += first(x.p)
					l.put(x.h, x.p)
				}
				done <- acc
			}()
			for i := 0; i < b.N; i++ {
				h, q, ok := p.get()
				if !ok {
					b.Fatal("empty")
				}
				stamp(q, uint64(i))
				ch <- handle[T]{h, q}
			}
			close(ch)
			sink += <-done
		})
	}
}

// benchHopChanValue sends the payload itself, by value, over a buffered
// channel.
func benchHopChanValue[T any](b *testing.B) {
	b.Run("impl=chan-value/"+sizeName[T](), func(b *testing.B) {
		ch := make(chan T, hopBuffer)
		settle()
		b.ReportAllocs()
		b.ResetTimer()
		done := make(chan uint64)
		go func() {
			var acc uint64
			for v := range ch {
				acc += first(&v)
			}
			done <- acc
		}()
		for i := 0; i < b.N; i++ {
			var v T
			stamp(&v, uint64(i))
			ch <- v
		}
		close(ch)
		sink += <-done
	})
}
