package bench

import (
	"sync/atomic"
	"testing"

	"github.com/cella-go/cella/shard"
)

// privateWord is a word only the benchmark's goroutine touches, padded so
// that nothing laid out after it shares its cache line.
type privateWord struct {
	v uint64
	_ [120]byte
}

// BenchmarkMachine measures the two costs that set where cella's ratios
// against sync.Pool land on a machine, one goroutine, no contention:
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
// a pin. The report command prints these figures in its header.
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
}
