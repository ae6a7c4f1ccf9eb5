package main

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

// machineOutput is canned `go test -bench` output of BenchmarkMachine on an
// 8-P machine, three runs each, with the header lines go test prints.
const machineOutput = `goos: linux
goarch: amd64
pkg: github.com/cella-go/cella/bench
cpu: Some CPU
BenchmarkMachine/op=locked-xadd-8   	19660693	         6.0 ns/op	       0 B/op	       0 allocs/op
BenchmarkMachine/op=locked-xadd-8   	19660693	         9.0 ns/op	       0 B/op	       0 allocs/op
BenchmarkMachine/op=locked-xadd-8   	19660693	         5.0 ns/op	       0 B/op	       0 allocs/op
BenchmarkMachine/op=locked-cas-8    	13280320	         8.0 ns/op	       0 B/op	       0 allocs/op
BenchmarkMachine/op=locked-cas-8    	13280320	         8.5 ns/op	       0 B/op	       0 allocs/op
BenchmarkMachine/op=locked-cas-8    	13280320	         9.5 ns/op	       0 B/op	       0 allocs/op
BenchmarkMachine/op=locked-xchg-8   	14604820	         7.5 ns/op	       0 B/op	       0 allocs/op
BenchmarkMachine/op=locked-xchg-8   	14604820	         7.5 ns/op	       0 B/op	       0 allocs/op
BenchmarkMachine/op=locked-xchg-8   	14604820	         7.5 ns/op	       0 B/op	       0 allocs/op
BenchmarkMachine/op=plain-add-8     	319105096	         0.38 ns/op	       0 B/op	       0 allocs/op
BenchmarkMachine/op=plain-add-8     	319105096	         0.38 ns/op	       0 B/op	       0 allocs/op
BenchmarkMachine/op=plain-add-8     	319105096	         0.38 ns/op	       0 B/op	       0 allocs/op
BenchmarkMachine/op=procpin-8       	46767981	         3.0 ns/op	       0 B/op	       0 allocs/op
BenchmarkMachine/op=procpin-8       	46767981	         2.0 ns/op	       0 B/op	       0 allocs/op
BenchmarkMachine/op=procpin-8       	46767981	         4.0 ns/op	       0 B/op	       0 allocs/op
PASS
`

func testInput(raw string) pageInput {
	sums := summarize(parseResults(strings.NewReader(raw)))
	return pageInput{
		machine: "test-8c", cpu: "Some CPU", cpus: 8, procs: procsOf(sums, 1), goVersion: "go test",
		when: time.Date(2026, 11, 30, 5, 0, 0, 0, time.UTC), took: time.Minute,
		opts: options{count: 3, benchtime: "100ms", bench: suiteBench}, sums: sums,
	}
}

func TestParseMachine(t *testing.T) {
	sums := summarize(parseResults(strings.NewReader(machineOutput)))
	want := map[string]float64{
		"BenchmarkMachine/op=locked-xadd": 6.0,
		"BenchmarkMachine/op=locked-cas":  8.5,
		"BenchmarkMachine/op=locked-xchg": 7.5,
		"BenchmarkMachine/op=plain-add":   0.38,
		"BenchmarkMachine/op=procpin":     3.0,
	}
	if len(sums) != len(want) {
		t.Fatalf("%d summaries, want %d", len(sums), len(want))
	}
	for _, s := range sums {
		w, ok := want[s.name]
		if !ok {
			t.Errorf("unexpected summary %q", s.name)
			continue
		}
		if s.family() != "Machine" || s.procs != 8 || s.runs != 3 {
			t.Errorf("%s: family %q procs %d runs %d, want Machine 8 3", s.name, s.family(), s.procs, s.runs)
		}
		if got := s.median["ns/op"]; math.Abs(got-w) > 1e-9 {
			t.Errorf("%s: median %g ns/op, want %g", s.name, got, w)
		}
	}
}

func TestHeaderMachineCosts(t *testing.T) {
	in := testInput(machineOutput)
	top := renderTop(in, byFamily(in.sums))
	for _, want := range []string{
		"- Machine: Some CPU, 8 logical CPUs, GOMAXPROCS=8\n",
		"- One uncontended locked instruction on a private word: 6 ns (atomic.AddUint64; CompareAndSwapUint64 8.5 ns, SwapUint64 7.5 ns; a plain add of the same word 0.38 ns)\n",
		"- procPin+procUnpin (shard.Pin+Unpin, what sync.Pool pays per Get or Put): 3 ns\n",
		"one locked instruction costs 2.0x a pin",
	} {
		if !strings.Contains(top, want) {
			t.Errorf("header lacks %q:\n%s", want, top)
		}
	}
	// The page carries the same header.
	if page := renderPage(in); !strings.HasPrefix(page, top) {
		t.Errorf("page does not start with the header:\n%s", page)
	}
}

func TestHeaderWithoutMachineResults(t *testing.T) {
	in := testInput("BenchmarkPair/impl=cella/payload=64-8 100 10 ns/op\n")
	top := renderTop(in, byFamily(in.sums))
	if strings.Contains(top, "locked instruction") || strings.Contains(top, "procPin") {
		t.Errorf("header names machine costs it did not measure:\n%s", top)
	}
}

func TestHeaderOnlyPin(t *testing.T) {
	in := testInput("BenchmarkMachine/op=procpin-8 100 2.5 ns/op\n")
	top := renderTop(in, byFamily(in.sums))
	if !strings.Contains(top, "procPin+procUnpin (shard.Pin+Unpin, what sync.Pool pays per Get or Put): 2.5 ns") {
		t.Errorf("pin cost missing:\n%s", top)
	}
	if strings.Contains(top, "locked instruction") {
		t.Errorf("header names a locked-instruction cost it did not measure:\n%s", top)
	}
}

// parallelOutput is PairParallel output at 1, 2, 4 and 8 Ps and 32
// goroutines (4 per P), with GOMAXPROCS=procs for the suffix. At 2
// goroutines cella is 5x sync.Pool, at 8 it is 0.5x, at 32 0.75x, so a
// targets table that picked its levels from anything but procs would show
// the wrong ratio.
func parallelOutput(procs int) string {
	var b strings.Builder
	ratio := map[int]float64{1: 2, 2: 5, 4: 3, 8: 0.5, 32: 0.75}
	for _, g := range []int{1, 2, 4, 8, 32} {
		fmt.Fprintf(&b, "BenchmarkPairParallel/impl=cella/payload=64/goroutines=%d-%d 100 %g ns/op 0 B/op 0 allocs/op\n", g, procs, 10*ratio[g])
		fmt.Fprintf(&b, "BenchmarkPairParallel/impl=syncpool/payload=64/goroutines=%d-%d 100 10 ns/op 0 B/op 0 allocs/op\n", g, procs)
		fmt.Fprintf(&b, "BenchmarkPairParallel/impl=treiber/payload=64/goroutines=%d-%d 100 60 ns/op 0 B/op 0 allocs/op\n", g, procs)
	}
	return b.String()
}

func TestLevelsFollowGOMAXPROCS(t *testing.T) {
	in := testInput(parallelOutput(8))
	if in.procs != 8 {
		t.Fatalf("procs %d from the -8 suffix, want 8", in.procs)
	}
	top := renderTop(in, byFamily(in.sums))
	for _, want := range []string{
		"GOMAXPROCS=8",
		"GOMAXPROCS (8 here), one per P, then 32 goroutines (4 per P)",
		"| RunParallel pair (64 B, one goroutine per P) at or below 1.0x sync.Pool | 0.50x sync.Pool | yes |",
		"| RunParallel pair (64 B) at least 10x faster than the shared tagged stack | treiber ns/op is 12.00x cella's | yes |",
		"| oversubscribed pair (64 B, 4 goroutines per P) at or below 1.0x sync.Pool | 0.75x sync.Pool | yes |",
	} {
		if !strings.Contains(top, want) {
			t.Errorf("header lacks %q:\n%s", want, top)
		}
	}
	if strings.Contains(top, "5.00x sync.Pool") {
		t.Errorf("targets use the 2-goroutine level on an 8-P run:\n%s", top)
	}

	svg := plotSVG("t", parallelSeries(in.sums, "PairParallel", "64"), in.procs)
	if !strings.Contains(svg, ">32 (4x)<") || strings.Contains(svg, ">8 (") {
		t.Errorf("plot does not mark 32 goroutines (and only it) as 4x oversubscribed on 8 Ps")
	}
	if !strings.Contains(svg, "GOMAXPROCS up to 8") {
		t.Errorf("plot axis does not name GOMAXPROCS 8")
	}
}

func TestProcsOf(t *testing.T) {
	// GOMAXPROCS=1: go test writes no -1 suffix; the fallback is used.
	sums := summarize(parseResults(strings.NewReader("BenchmarkPair/impl=cella/payload=64 100 10 ns/op\n")))
	if got := procsOf(sums, 1); got != 1 {
		t.Errorf("procsOf without suffix = %d, want the fallback 1", got)
	}
	sums = summarize(parseResults(strings.NewReader(parallelOutput(64))))
	if got := procsOf(sums, 2); got != 64 {
		t.Errorf("procsOf with -64 suffix = %d, want 64", got)
	}
}

// TestMessageTargets: the message runtime's and the cross-process targets
// appear in the targets table with the ratio of the same-run medians, and
// a met or missed verdict.
func TestMessageTargets(t *testing.T) {
	raw := strings.Join([]string{
		"BenchmarkHop/impl=chan-value/payload=64-2 100 80 ns/op 0 B/op 0 allocs/op",
		"BenchmarkHop/impl=cella-edge/payload=64-2 100 240 ns/op 0 B/op 0 allocs/op",
		"BenchmarkHop/impl=chan-value/payload=4096-2 100 700 ns/op 0 B/op 0 allocs/op",
		"BenchmarkHop/impl=cella-edge/payload=4096-2 100 300 ns/op 0 B/op 0 allocs/op",
		"BenchmarkMessageHop/impl=cella-edge/payload=64-2 100 56 ns/op 0 B/op 0 allocs/op",
		"BenchmarkMessageHop/impl=chan-token/payload=64-2 100 80 ns/op 0 B/op 0 allocs/op",
		"BenchmarkMessageBatch/impl=cella-edge/batch=16-2 100 30 ns/op 0 B/op 0 allocs/op",
		"BenchmarkMessageBatch/impl=chan-token/batch=16-2 100 75 ns/op 0 B/op 0 allocs/op",
		"BenchmarkMessageBatch/impl=cella-edge/batch=16/room=1024-2 100 9 ns/op 0 B/op 0 allocs/op",
		"BenchmarkMessageBatch/impl=chan-token/batch=16/room=1024-2 100 60 ns/op 0 B/op 0 allocs/op",
		"BenchmarkMessagePipeline/impl=cella-edge/mode=paced-2 100 2800 ns/op 1100 ns/hop-p50 90000 ns/hop-p99 0 B/op 0 allocs/op",
		"BenchmarkMessagePipeline/impl=chan-token/mode=paced-2 100 2300 ns/op 320 ns/hop-p50 200000 ns/hop-p99 0 B/op 0 allocs/op",
		"BenchmarkIPC/4KiB/impl=cella-2 100 500 ns/op 0 B/op 0 allocs/op",
		"BenchmarkIPC/4KiB/impl=unix-2 100 2500 ns/op 0 B/op 0 allocs/op",
		"BenchmarkIPCLatency/impl=cella-spinning-2 100 1500 ns/op 700 ns/hop-p50 900 ns/hop-p99 0 B/op 0 allocs/op",
	}, "\n") + "\n"
	in := testInput(raw)
	top := renderTop(in, byFamily(in.sums))
	for _, want := range []string{
		"| producer -> consumer goroutine, Put+Send / Recv+View+Free (64 B), at or below 1.0x a channel of values | 3.00x chan-value | no |",
		"| producer -> consumer goroutine, Put by value (4 KiB), at or below 0.5x a channel of values | 0.43x chan-value | yes |",
		"| edge hop (Send+Recv of a token) at or below 0.8x chan token.Token | 0.70x chan-token | yes |",
		"| SendBatch/RecvBatch of 16: per-token cost at or below 0.2x a channel's (room for 4 batches) | 0.40x chan-token | no |",
		"| SendBatch/RecvBatch of 16: per-token cost at or below 0.2x a channel's (room for 64 batches) | 0.15x chan-token | yes |",
		"| 3-stage pipeline, paced: p99 per hop at or below the channel pipeline's | 0.45x chan-token's p99 | yes |",
		"| between processes, 4 KiB messages: at least 10x a unix socket's throughput | 5.0x the unix socket's | no |",
		"| cross-process one-way latency p50 (64 B, polling receiver) at or below 250 ns | 700 ns | no |",
	} {
		if !strings.Contains(top, want) {
			t.Errorf("targets lack %q:\n%s", want, top)
		}
	}
	// A target whose benchmarks did not run has no row.
	if strings.Contains(top, "1 MiB messages") || strings.Contains(top, "fan-out of a 4 KiB") {
		t.Errorf("rows for benchmarks that did not run:\n%s", top)
	}
}

// TestRowBaseline: a row without the family's first baseline takes its
// ratios against the next one it has (Hop's 4 KiB row: a channel of
// values, no sync.Pool).
func TestRowBaseline(t *testing.T) {
	in := testInput(strings.Join([]string{
		"BenchmarkHop/impl=syncpool/payload=64-2 100 100 ns/op 0 B/op 0 allocs/op",
		"BenchmarkHop/impl=chan-value/payload=64-2 100 80 ns/op 0 B/op 0 allocs/op",
		"BenchmarkHop/impl=cella-edge/payload=64-2 100 250 ns/op 0 B/op 0 allocs/op",
		"BenchmarkHop/impl=chan-value/payload=4096-2 100 700 ns/op 0 B/op 0 allocs/op",
		"BenchmarkHop/impl=cella-edge/payload=4096-2 100 1400 ns/op 0 B/op 0 allocs/op",
	}, "\n") + "\n")
	var b strings.Builder
	renderFamily(&b, byFamily(in.sums)["Hop"])
	for _, want := range []string{"| payload=64 | 100 ns (1.00x) | 80 ns (0.80x) | 250 ns (2.50x) |", "| payload=4096 | - | 700 ns (1.00x) | 1400 ns (2.00x) |"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

// TestViewUpdateBothLevels: the targets table shows View and Update on one
// goroutine as well as at one per P, each against RWMutex at its level.
func TestViewUpdateBothLevels(t *testing.T) {
	var b strings.Builder
	for _, fam := range []string{"View", "Update"} {
		for _, lv := range []struct{ g, cella, rw int }{{1, 30, 20}, {4, 9, 10}} {
			fmt.Fprintf(&b, "Benchmark%s/impl=cella/payload=64/goroutines=%d-4 100 %d ns/op 0 B/op 0 allocs/op\n", fam, lv.g, lv.cella)
			fmt.Fprintf(&b, "Benchmark%s/impl=rwmutex/payload=64/goroutines=%d-4 100 %d ns/op 0 B/op 0 allocs/op\n", fam, lv.g, lv.rw)
		}
	}
	in := testInput(b.String())
	top := renderTop(in, byFamily(in.sums))
	for _, want := range []string{
		"| View (64 B, one goroutine) at or below 1.0x sync.RWMutex | 1.50x RWMutex | no |",
		"| View (64 B, one goroutine per P) at or below 1.0x sync.RWMutex | 0.90x RWMutex | yes |",
		"| Update (64 B, one goroutine) at or below 1.0x sync.RWMutex | 1.50x RWMutex | no |",
		"| Update (64 B, one goroutine per P) at or below 1.0x sync.RWMutex | 0.90x RWMutex | yes |",
	} {
		if !strings.Contains(top, want) {
			t.Errorf("targets lack %q:\n%s", want, top)
		}
	}
}

// TestStoreLoadIntoTarget: the 1 KiB Store+Load+Free target is taken with
// LoadInto (the API for values too large to return by value), the 64 B one
// with Load.
func TestStoreLoadIntoTarget(t *testing.T) {
	in := testInput(`BenchmarkStoreLoadFree/impl=cella/payload=64-2 100 30 ns/op 0 B/op 0 allocs/op
BenchmarkStoreLoadFree/impl=cella-into/payload=64-2 100 29 ns/op 0 B/op 0 allocs/op
BenchmarkStoreLoadFree/impl=syncpool/payload=64-2 100 20 ns/op 0 B/op 0 allocs/op
BenchmarkStoreLoadFree/impl=cella/payload=1024-2 100 150 ns/op 0 B/op 0 allocs/op
BenchmarkStoreLoadFree/impl=cella-into/payload=1024-2 100 50 ns/op 0 B/op 0 allocs/op
BenchmarkStoreLoadFree/impl=syncpool/payload=1024-2 100 100 ns/op 0 B/op 0 allocs/op
`)
	top := renderTop(in, byFamily(in.sums))
	for _, want := range []string{
		"| Store+Load+Free (64 B) at or below 1.2x sync.Pool with a copy in and out | 1.50x sync.Pool | no |",
		"| Store+LoadInto+Free (1 KiB) at or below 1.0x sync.Pool with a copy in and out | 0.50x sync.Pool | yes |",
	} {
		if !strings.Contains(top, want) {
			t.Errorf("targets lack %q:\n%s", want, top)
		}
	}
}

func TestHeaderClockAndLine(t *testing.T) {
	in := testInput("BenchmarkMachine/op=clock-stamp-8 100 31 ns/op\n" +
		"BenchmarkMachine/op=line-roundtrip-8 100 480 ns/op\n")
	in.clockSource = "hpet"
	top := renderTop(in, byFamily(in.sums))
	for _, want := range []string{
		"Stamping a message's Created (clock.Stamp;",
		"clock source hpet: CLOCK_MONOTONIC through the runtime): 31 ns",
		"and back (each waits for the other's store): 480 ns per round trip",
	} {
		if !strings.Contains(top, want) {
			t.Errorf("header lacks %q:\n%s", want, top)
		}
	}
	in.clockSource, in.counterClock = "kvm-clock", true
	if top := renderTop(in, byFamily(in.sums)); !strings.Contains(top, "clock source kvm-clock: the CPU's counter, read directly): 31 ns") {
		t.Errorf("header does not say the counter is read:\n%s", top)
	}
	in = testInput("BenchmarkMachine/op=spsc-batch16-8 100 20 ns/op\n" +
		"BenchmarkMessageBatch/impl=chan-token/batch=16-8 100 50 ns/op\n")
	if top := renderTop(in, byFamily(in.sums)); !strings.Contains(top, "(BenchmarkMachine op=spsc-batch16): 20 ns per token "+
		"(0.40x the channel of BenchmarkMessageBatch)") {
		t.Errorf("header lacks the SPSC ring's line:\n%s", top)
	}
	in = testInput("BenchmarkMachine/op=procpin-8 100 2.5 ns/op\n")
	if top := renderTop(in, byFamily(in.sums)); strings.Contains(top, "Created") || strings.Contains(top, "round trip") ||
		strings.Contains(top, "spsc") {
		t.Errorf("header names a clock or line cost it did not measure:\n%s", top)
	}
}
