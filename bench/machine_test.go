package bench

import (
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/internal/clock"
	"github.com/cella-go/cella/shard"
)

// privateWord is a word only the benchmark's goroutine touches, padded so
// that nothing laid out after it shares its cache line.
type privateWord struct {
	v uint64
	_ [120]byte
}

// BenchmarkMachine measures the costs that set where cella's ratios land on
// a machine. The first five run on one goroutine, with no contention, and
// set the ratios against sync.Pool:
//
//   - op=locked-xadd: atomic.AddUint64 on a private word (LOCK XADD on amd64).
//   - op=locked-cas: a CompareAndSwapUint64 that always succeeds (LOCK CMPXCHG).
//   - op=locked-xchg: atomic.SwapUint64 (XCHG, which is what atomic.Store
//     compiles to on amd64).
//   - op=plain-add: a plain load, add and store of the same word: the loop
//     and memory cost the locked forms include, as a baseline.
//   - op=procpin: shard.Pin + shard.Unpin, which is runtime.procPin +
//     runtime.procUnpin in the default build (what sync.Pool pays per call);
//     in the purego build it is the striped fallback instead.
//
// A locked instruction is several times a plain add on most x86 machines,
// but by how much varies a lot (about 2 to 20 ns under virtualisation), and
// cella's hot paths pay locked instructions where sync.Pool's fast path pays
// a pin.
//
// The last two set the floor under the message benchmarks' ratios against
// channels:
//
//   - op=clock-stamp: one read of the clock that Put stamps Created with
//     (what every message pays once, and a channel never does): the CPU's
//     counter where the kernel reads its clock from it (clock source "tsc",
//     or "kvm-clock" served by the vDSO), otherwise CLOCK_MONOTONIC
//     through the runtime (see internal/clock).
//   - op=line-roundtrip: two goroutines on two Ps pass one cache line back
//     and forth (each waits for the other's store, then stores): ns/op is a
//     round trip, two transfers of the line between cores. A message from
//     one goroutine to another moves several such lines (the slot's, its
//     metadata's, the edge's), a channel of values fewer.
//   - op=spsc-batch16: the simplest lock-free queue there is, a
//     single-producer single-consumer ring of 8-byte tokens with room for
//     4 batches, moving b.N tokens between two goroutines in batches of 16
//     (plain stores, a release store of the tail or head per batch, a
//     yield when full or empty: no locked instruction, no validation, no
//     second producer or consumer to allow for). ns/op is per token: a
//     reference for BenchmarkMessageBatch at the same room, whose edge does
//     all of that and more.
//
// The report command prints these figures in its header.
func BenchmarkMachine(b *testing.B) {
	b.Run("op=locked-xadd", func(b *testing.B) {
		w := new(privateWord)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			atomic.AddUint64(&w.v, 1)
		}
		b.StopTimer()
		if got := atomic.LoadUint64(&w.v); got != uint64(b.N) {
			b.Fatalf("word is %d after %d adds", got, b.N)
		}
	})
	b.Run("op=locked-cas", func(b *testing.B) {
		w := new(privateWord)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			v := uint64(i)
			if !atomic.CompareAndSwapUint64(&w.v, v, v+1) {
				b.Fatalf("CAS %d on a private word failed", i)
			}
		}
	})
	b.Run("op=locked-xchg", func(b *testing.B) {
		w := new(privateWord)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			atomic.SwapUint64(&w.v, uint64(i))
		}
	})
	b.Run("op=plain-add", func(b *testing.B) {
		w := new(privateWord)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			w.v++
		}
		b.StopTimer()
		if w.v != uint64(b.N) {
			b.Fatalf("word is %d after %d adds", w.v, b.N)
		}
	})
	b.Run("op=procpin", func(b *testing.B) {
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			shard.Pin()
			shard.Unpin()
		}
	})
	b.Run("op=clock-stamp", func(b *testing.B) {
		var acc int64
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			acc += clock.Stamp()
		}
		sinkAdd(uint64(acc))
	})
	b.Run("op=line-roundtrip", func(b *testing.B) {
		if runtime.GOMAXPROCS(0) < 2 {
			b.Skip("needs two Ps")
		}
		w := new(privateWord)
		done := make(chan struct{})
		b.ReportAllocs()
		b.ResetTimer()
		go func() { // the echo: waits for each odd value, answers with the next
			defer close(done)
			for want := uint64(1); ; want += 2 {
				if !awaitWord(&w.v, want) {
					return
				}
				atomicx.StoreRelease64(&w.v, want+1)
			}
		}()
		for i := uint64(0); i < uint64(b.N); i++ {
			atomicx.StoreRelease64(&w.v, 2*i+1)
			awaitWord(&w.v, 2*i+2)
		}
		b.StopTimer()
		atomic.StoreUint64(&w.v, lineStop)
		<-done
	})
	b.Run("op=spsc-batch16", benchSPSC)
}

// spscRing is op=spsc-batch16's queue: the producer owns tail, the
// consumer head, each on its own line.
type spscRing struct {
	_     [64]byte
	tail  uint64
	_     [120]byte
	head  uint64
	_     [120]byte
	cells [4 * messageBatch]uint64
}

// benchSPSC moves b.N tokens through an spscRing in batches of
// messageBatch. Each side loads the other's index only when what it last
// loaded says it must wait.
func benchSPSC(b *testing.B) {
	if runtime.GOMAXPROCS(0) < 2 {
		b.Skip("needs two Ps")
	}
	r := new(spscRing)
	const size = uint64(len(r.cells))
	done := make(chan uint64)
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		var acc uint64
		head, tail := uint64(0), uint64(0)
		for head < uint64(b.N) {
			if head == tail {
				if tail = atomic.LoadUint64(&r.tail); head == tail {
					runtime.Gosched()
					continue
				}
			}
			n := min(tail-head, messageBatch)
			for i := uint64(0); i < n; i++ {
				acc += r.cells[(head+i)%size]
			}
			head += n
			atomicx.StoreRelease64(&r.head, head)
		}
		done <- acc
	}()
	tail, head := uint64(0), uint64(0)
	for tail < uint64(b.N) {
		n := min(messageBatch, uint64(b.N)-tail)
		for tail+n-head > size {
			if head = atomic.LoadUint64(&r.head); tail+n-head > size {
				runtime.Gosched()
			}
		}
		for i := uint64(0); i < n; i++ {
			r.cells[(tail+i)%size] = tail + i
		}
		tail += n
		atomicx.StoreRelease64(&r.tail, tail)
	}
	b.StopTimer()
	if got, want := <-done, uint64(b.N)*uint64(b.N-1)/2; got != want {
		b.Fatalf("consumer summed %d, want %d", got, want)
	}
}

// lineStop, stored into the word, ends the echo of op=line-roundtrip.
const lineStop = ^uint64(0)

// awaitWord spins until *p holds want (true) or lineStop (false). It
// yields now and then, so that it also ends where the two goroutines share
// one CPU.
func awaitWord(p *uint64, want uint64) bool {
	for i := 1; ; i++ {
		switch atomic.LoadUint64(p) {
		case want:
			return true
		case lineStop:
			return false
		}
		if i%1024 == 0 {
			runtime.Gosched()
		}
	}
}
