package bench

import (
	"runtime"
	"strconv"
	"testing"
)

// pairCapacity is the capacity given to the bounded pools in the pair
// benchmarks: far more than the goroutines can hold at once.
const pairCapacity = 4096

// BenchmarkPair is one allocation and one free, back to back, on one
// goroutine: the cost of the fast path with a warm cache.
func BenchmarkPair(b *testing.B) {
	benchPair[P16](b)
	benchPair[P64](b)
	benchPair[P1K](b)
	benchPair[P16K](b)
}

func benchPair[T any](b *testing.B) {
	for _, im := range impls[T]() {
		b.Run("impl="+im.name+"/"+sizeName[T](), func(b *testing.B) {
			p := im.make(pairCapacity)
			defer p.close()
			settle()
			b.ReportAllocs()
			b.ResetTimer()
			p.pairs(b.N)
		})
	}
}

// BenchmarkPairParallel is the same pair from every goroutine of
// RunParallel at once, at each parallelism level (see levels).
func BenchmarkPairParallel(b *testing.B) {
	benchPairParallel[P64](b)
	benchPairParallel[P1K](b)
}

func benchPairParallel[T any](b *testing.B) {
	for _, im := range impls[T]() {
		for _, lv := range levels() {
			b.Run("impl="+im.name+"/"+sizeName[T]()+"/"+lv.String(), func(b *testing.B) {
				defer lv.set()()
				p := im.make(pairCapacity)
				defer p.close()
				settle()
				b.ReportAllocs()
				b.SetParallelism(lv.perP)
				b.ResetTimer()
				b.RunParallel(p.pairsPB)
			})
		}
	}
}

// level is one point on the parallelism axis: procs Ps (GOMAXPROCS), perP
// goroutines per P.
type level struct{ procs, perP int }

func (l level) goroutines() int { return l.procs * l.perP }

func (l level) String() string { return "goroutines=" + strconv.Itoa(l.goroutines()) }

// set applies GOMAXPROCS for the level and returns the function that
// restores it. It runs before each implementation is built, so cella's
// default shard count (one per P) follows the level.
func (l level) set() (restore func()) {
	old := runtime.GOMAXPROCS(l.procs)
	return func() { runtime.GOMAXPROCS(old) }
}

// levels returns the parallelism axis: 1, 2, 4, ... Ps up to GOMAXPROCS
// (GOMAXPROCS itself always included), one goroutine per P; then GOMAXPROCS
// Ps with 4 goroutines each (oversubscribed, so goroutines are preempted
// and migrate between Ps while they hold objects).
func levels() []level {
	max := runtime.GOMAXPROCS(0)
	var ls []level
	for p := 1; p < max; p *= 2 {
		ls = append(ls, level{p, 1})
	}
	return append(ls, level{max, 1}, level{max, 4})
}

// settle runs a full GC before the timer starts, so that garbage left by an
// earlier benchmark (the big preallocated pools, the heap peer's rings) is
// not charged to the next one. The heap peer's own GC cost stays inside
// its timed loop.
func settle() { runtime.GC() }
