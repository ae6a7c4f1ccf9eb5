package bench

import (
	"bufio"
	"bytes"
	"flag"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

var bigGC = flag.Bool("cella.big", false,
	"also run the GC headline with 16M live messages (about 2 GiB and a minute of set-up)")

// gcLive is the live-set axis of the GC headline.
func gcLive() []int {
	ls := []int{1 << 20, 4 << 20}
	if *bigGC {
		ls = append(ls, 16<<20)
	}
	return ls
}

func liveName(n int) string {
	if n%(1<<20) == 0 {
		return "live=" + strconv.Itoa(n>>20) + "M"
	}
	return "live=" + strconv.Itoa(n)
}

// liveSet is a set of live 64-byte messages held either off-heap in cella
// or on the heap behind pointers.
type liveSet interface {
	// replace frees message i and stores a fresh one in its place.
	replace(i int, seq uint64)
	close()
}

type heapSet struct{ objs []*Msg64 }

func newHeapSet(n int) *heapSet {
	s := &heapSet{objs: make([]*Msg64, n)}
	for i := range s.objs {
		s.objs[i] = &Msg64{Seq: uint64(i), Size: 32}
	}
	return s
}

func (s *heapSet) replace(i int, seq uint64) { s.objs[i] = &Msg64{Seq: seq, Size: 32} }
func (s *heapSet) close()                    { s.objs = nil }

// cellaSet holds its messages in an arena; the tokens are in a []uint64-like
// slice the collector does not scan (tokens are not pointers).
type cellaSet struct {
	a    *arena.Arena[Msg64]
	toks []token.Token
}

func newCellaSet(n int) *cellaSet {
	a, err := arena.New[Msg64](arena.Config{Slots: n})
	if err != nil {
		panic(err)
	}
	s := &cellaSet{a: a, toks: make([]token.Token, n)}
	for i := range s.toks {
		t, err := a.Store(Msg64{Seq: uint64(i), Size: 32})
		if err != nil {
			panic(err)
		}
		s.toks[i] = t
	}
	return s
}

func (s *cellaSet) replace(i int, seq uint64) {
	if err := s.a.Free(s.toks[i]); err != nil {
		panic(err)
	}
	t, err := s.a.Store(Msg64{Seq: seq, Size: 32})
	if err != nil {
		panic(err)
	}
	s.toks[i] = t
}

func (s *cellaSet) close() {
	if err := s.a.Close(); err != nil {
		panic(err)
	}
}

type emptySet struct{}

func (emptySet) replace(int, uint64) {}
func (emptySet) close()              {}

// current caches the live set of the running GC benchmark: the framework
// calls a benchmark function several times (to find b.N, and once per
// -count), and building 4M objects each time would dominate the run. Only
// one set exists at a time, so one benchmark's set never inflates
// another's GC.
var current struct {
	key string
	set liveSet
}

func liveFor(impl string, n int) liveSet {
	key := impl + "/" + strconv.Itoa(n)
	if current.key == key {
		return current.set
	}
	if current.set != nil {
		current.set.close()
		current.set, current.key = nil, ""
		runtime.GC()
		debug.FreeOSMemory()
	}
	switch impl {
	case nameCella:
		current.set = newCellaSet(n)
	case nameHeap:
		current.set = newHeapSet(n)
	default:
		current.set = emptySet{}
	}
	current.key = key
	return current.set
}

// BenchmarkGC is the GC headline: one op is one forced, complete GC cycle
// (runtime.GC) with N live 64-byte messages held in cella or as heap
// objects, and with an empty heap as the baseline. Extra metrics:
// pause-ns/op (stop-the-world time per cycle, from debug.ReadGCStats),
// rss-MiB (VmRSS once the set is built) and heap-MiB (live heap objects).
// Run each case in its own process for a clean RSS figure (the report
// command does).
func BenchmarkGC(b *testing.B) {
	b.Run("impl=empty/live=0", func(b *testing.B) { benchGC(b, "empty", 0) })
	for _, n := range gcLive() {
		for _, impl := range []string{nameCella, nameHeap} {
			b.Run("impl="+impl+"/"+liveName(n), func(b *testing.B) { benchGC(b, impl, n) })
		}
	}
}

func benchGC(b *testing.B, impl string, n int) {
	set := liveFor(impl, n)
	runtime.GC()
	runtime.GC()
	rss := vmRSSKiB()
	heap := heapObjectBytes()
	var s0, s1 debug.GCStats
	debug.ReadGCStats(&s0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		runtime.GC()
	}
	b.StopTimer()
	debug.ReadGCStats(&s1)
	if cycles := s1.NumGC - s0.NumGC; cycles > 0 {
		b.ReportMetric(float64(s1.PauseTotal-s0.PauseTotal)/float64(cycles), "pause-ns/op")
	}
	b.ReportMetric(float64(rss)/1024, "rss-MiB")
	b.ReportMetric(float64(heap)/(1<<20), "heap-MiB")
	runtime.KeepAlive(set)
}

// BenchmarkGCChurn is the steady state: with N live messages, each op
// frees one message and stores a new one in its place (a new heap object
// for the heap, Free + Store for cella). gc-cpu-% is the share of the
// process's CPU capacity (wall time x GOMAXPROCS) that the runtime spent
// in the GC during the run; gcs/Mop is GC cycles per million ops.
func BenchmarkGCChurn(b *testing.B) {
	for _, n := range gcLive() {
		for _, impl := range []string{nameCella, nameHeap} {
			b.Run("impl="+impl+"/"+liveName(n), func(b *testing.B) {
				set := liveFor(impl, n)
				runtime.GC()
				rss := vmRSSKiB()
				var s0, s1 debug.GCStats
				debug.ReadGCStats(&s0)
				gc0 := gcCPUSeconds()
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				// A large odd stride visits every message, in an order
				// that defeats the cache as a real workload would.
				const stride = 7919
				j := 0
				for i := 0; i < b.N; i++ {
					set.replace(j, uint64(i))
					j += stride
					if j >= n {
						j -= n
					}
				}
				elapsed := time.Since(start)
				b.StopTimer()
				gc := gcCPUSeconds() - gc0
				debug.ReadGCStats(&s1)
				capacity := elapsed.Seconds() * float64(runtime.GOMAXPROCS(0))
				b.ReportMetric(100*gc/capacity, "gc-cpu-%")
				b.ReportMetric(float64(s1.NumGC-s0.NumGC)*1e6/float64(b.N), "gcs/Mop")
				b.ReportMetric(float64(max(rss, vmRSSKiB()))/1024, "rss-MiB")
			})
		}
	}
}

// BenchmarkNewClose is lazy capacity: one op is New and Close of an arena
// of 2^k 64-byte slots. new-ns/op and close-ns/op split the time;
// rss-KiB is the largest growth of VmRSS seen between before New and
// after New.
func BenchmarkNewClose(b *testing.B) {
	for _, k := range []uint{27, 30} {
		b.Run(sizeName[P64]()+"/slots=2^"+strconv.Itoa(int(k)), func(b *testing.B) {
			b.ReportAllocs()
			var newT, closeT time.Duration
			var grow int64
			for i := 0; i < b.N; i++ {
				r0 := vmRSSKiB()
				t0 := time.Now()
				a, err := arena.New[P64](arena.Config{Slots: 1 << k})
				t1 := time.Now()
				if err != nil {
					b.Skipf("New(2^%d): %v", k, err)
				}
				grow = max(grow, vmRSSKiB()-r0)
				t2 := time.Now()
				if err := a.Close(); err != nil {
					b.Fatal(err)
				}
				closeT += time.Since(t2)
				newT += t1.Sub(t0)
			}
			b.ReportMetric(float64(newT.Nanoseconds())/float64(b.N), "new-ns/op")
			b.ReportMetric(float64(closeT.Nanoseconds())/float64(b.N), "close-ns/op")
			b.ReportMetric(float64(grow), "rss-KiB")
		})
	}
}

// vmRSSKiB reads the resident set size of this process from
// /proc/self/status (0 where there is no such file).
func vmRSSKiB() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Bytes()
		if rest, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			f := bytes.Fields(rest)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(string(f[0]), 10, 64)
				return n
			}
		}
	}
	return 0
}

var gcMetrics = []metrics.Sample{
	{Name: "/cpu/classes/gc/total:cpu-seconds"},
	{Name: "/memory/classes/heap/objects:bytes"},
}

func readGCMetrics() []metrics.Sample {
	s := append([]metrics.Sample(nil), gcMetrics...)
	metrics.Read(s)
	return s
}

func gcCPUSeconds() float64 {
	s := readGCMetrics()[0]
	if s.Value.Kind() != metrics.KindFloat64 {
		return 0
	}
	return s.Value.Float64()
}

func heapObjectBytes() uint64 {
	s := readGCMetrics()[1]
	if s.Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s.Value.Uint64()
}
