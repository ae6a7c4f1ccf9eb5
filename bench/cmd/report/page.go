package main

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

type pageInput struct {
	machine, cpu, goVersion string
	clockSource             string // the kernel's clock source, "" if unknown
	counterClock            bool   // whether clock.Stamp reads the CPU's counter here
	cpus, procs             int    // logical CPUs, GOMAXPROCS of the benchmarks
	when                    time.Time
	took                    time.Duration
	opts                    options
	sums                    []*summary
	benchstat               []benchstatOut
	svgs                    []string
}

// families in page order, with what each measures.
var families = []struct{ name, what string }{
	{"Pair", "Alloc+Free (Get+Put) back to back on one goroutine."},
	{"PairParallel", "The same pair from every goroutine of RunParallel; goroutines above GOMAXPROCS are 4x oversubscribed. " +
		"ns/op is wall time over all operations of all goroutines: it falls as an implementation scales, stays flat or rises when it does not."},
	{"StoreLoadFree", "Copy a value in, copy it out, free (cella: Store, Load, Free; cella-into: Store, LoadInto, Free)."},
	{"Load", "Copy a live value out, one goroutine (cella: Load, LoadInto, which write nothing to shared memory; rwmutex: RLock, copy, RUnlock; plain: an unsynchronised copy, the floor)."},
	{"View", "Shared read of a live object (cella: View; rwmutex: RLock; plain: unsynchronised read, the floor)."},
	{"Update", "Exclusive write of a live object (cella: Update; rwmutex: Lock; plain: unsynchronised write, the floor)."},
	{"CrossP", "One goroutine allocates, another frees (handles passed in batches of 64): the remote-free path. Per object."},
	{"Burst", "Take 4096 objects (the whole capacity), then give them all back. Per object; cella reports steals/op."},
	{"Hop", "One message from a producer to a consumer goroutine over a buffered Go channel. Per message."},
	{"MessageHop", "message.Edge Send+Recv between two goroutines (transport only), against buffered channels of tokens and of pointers. Per message."},
	{"MessageLifecycle", "A message's whole life on one goroutine: Put (by value), Send, Recv, View, Free, against sending a value on a buffered channel and receiving it. Per message."},
	{"MessageBatch", "Tokens from a producer to a consumer goroutine: SendBatch and RecvBatch of 16 over an edge, against a channel of tokens one at a time (a channel has no batch operation), both with room for 64 tokens (4 batches) or, where named, 1024. Per token."},
	{"MessagePipeline", "A producer and three stages in a row, joined by three edges (or channels): saturated, and paced at one message every 2 µs. cella-graph is the same pipeline built as a message.Graph (its workers receive and send in batches when several tokens are ready). Per message; p50/p99 are per hop."},
	{"MessageFanOut", "One message to k consumers: cella stores it once and sends the token on k edges (one Retain per extra edge); chan-copy copies the value into k channels. Per message."},
	{"IPC", "A producer process sends messages to this one. cella: a shared shm.Store, the producer builds each message in place (Loan) and sends batches of 16, the consumer views it in place and frees it; unix and pipe: the producer writes every byte (small messages through a 64 KiB bufio.Writer), the consumer reads them all. Per message; each side checks the first and last word."},
	{"IPCLatency", "Ping-pong of one 64 B message between two processes; ns/op is the round trip. cella-parked, unix and pipe leave the receiver idle 200 µs before each ping, so that it sleeps in the kernel: cella-parked's p50/p99 are the measured one-way latency of that leg (CLOCK_MONOTONIC in both processes), unix's and pipe's half the round trip. cella-spinning (no gap, both sides polling TryRecv) reports half the round trip."},
}

// baselines: the implementation each family's ratios are taken against.
var baselines = []string{"syncpool", "rwmutex", "chan-token", "chan-copy", "chan-value", "unix"}

func renderPage(in pageInput) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	byFam := byFamily(in.sums)
	b.WriteString(renderTop(in, byFam))

	for _, svg := range in.svgs {
		p("![ns/op against goroutines](%s)\n\n", svg)
	}

	for _, f := range families {
		rows := byFam[f.name]
		if len(rows) == 0 {
			continue
		}
		p("## %s\n\n%s\n\n", f.name, f.what)
		renderFamily(&b, rows)
	}

	renderGC(&b, byFam)

	for _, s := range in.benchstat {
		p("## benchstat: %s\n\n```\n%s```\n\n", s.title, s.text)
	}
	return b.String()
}

// byFamily groups the summaries by benchmark family, keeping their order.
func byFamily(sums []*summary) map[string][]*summary {
	byFam := map[string][]*summary{}
	for _, s := range sums {
		byFam[s.family()] = append(byFam[s.family()], s)
	}
	return byFam
}

// renderTop is the page's header and targets table; the command also
// prints it on stdout.
func renderTop(in pageInput, byFam map[string][]*summary) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("# cella benchmarks: %s\n\n", in.machine)
	p("- Machine: %s, %d logical CPUs, GOMAXPROCS=%d\n", in.cpu, in.cpus, in.procs)
	renderMachine(&b, byFam["Machine"], in.clockSource, in.counterClock)
	renderSPSC(&b, byFam["Machine"], byFam["MessageBatch"])
	p("- Go: %s\n", in.goVersion)
	p("- Produced %s by `go run ./bench/cmd/report%s` in %s\n", in.when.Format("2006-01-02 15:04 UTC"), flagsOf(in.opts), in.took.Round(time.Second))
	p("- Every figure is the median of %d runs (-benchtime %s for the comparison suite). Ratios are against sync.Pool "+
		"(rwmutex for View and Update) measured in the same run: below 1.00 is faster.\n", in.opts.count, in.opts.benchtime)
	p("- Parallel figures run at 1, 2, 4, ... goroutines up to GOMAXPROCS (%d here), one per P, then %d goroutines "+
		"(4 per P); they follow the machine the report runs on.\n", in.procs, 4*in.procs)
	p("- Rerun on your machine: `go run ./bench/cmd/report` from the repository root; see bench/doc.go.\n\n")
	renderTargets(&b, in, byFam)
	return b.String()
}

// renderMachine writes the header lines of BenchmarkMachine: what one
// uncontended locked instruction and one procPin+procUnpin cost here, and
// what a clock read for Created and a cache line's round trip between two
// cores cost. A line is written only for what the run measured.
func renderMachine(b *strings.Builder, rows []*summary, clockSource string, counterClock bool) {
	op := func(name string) float64 { return ns(find(rows, "BenchmarkMachine/op="+name)) }
	xadd, cas, xchg, plain, pin := op("locked-xadd"), op("locked-cas"), op("locked-xchg"), op("plain-add"), op("procpin")
	val := func(v float64) string {
		if math.IsNaN(v) {
			return "-"
		}
		return fmtVal(v)
	}
	if !math.IsNaN(xadd) || !math.IsNaN(cas) {
		fmt.Fprintf(b, "- One uncontended locked instruction on a private word: %s (atomic.AddUint64; CompareAndSwapUint64 %s, "+
			"SwapUint64 %s; a plain add of the same word %s)\n", val(xadd), val(cas), val(xchg), val(plain))
	}
	if !math.IsNaN(pin) {
		fmt.Fprintf(b, "- procPin+procUnpin (shard.Pin+Unpin, what sync.Pool pays per Get or Put): %s\n", val(pin))
	}
	locked := xadd
	if math.IsNaN(locked) {
		locked = cas
	}
	if !math.IsNaN(locked) && !math.IsNaN(pin) && pin > 0 {
		fmt.Fprintf(b, "- These two costs are why ratios move between machines: cella's hot paths pay locked instructions "+
			"where sync.Pool's fast path pays only a pin, and here one locked instruction costs %.1fx a pin. "+
			"Ratios near 1.00 differ from machine to machine (BenchmarkMachine in bench/).\n", locked/pin)
	}
	if stamp := op("clock-stamp"); !math.IsNaN(stamp) {
		src := "clock source " + clockSource
		if clockSource == "" {
			src = "clock source unknown"
		}
		how := src + ": CLOCK_MONOTONIC through the runtime"
		if counterClock {
			how = src + ": the CPU's counter, read directly"
		}
		fmt.Fprintf(b, "- Stamping a message's Created (clock.Stamp; every Put pays it once, a channel never does; %s): %s\n",
			how, val(stamp))
	}
	if rt := op("line-roundtrip"); !math.IsNaN(rt) {
		fmt.Fprintf(b, "- One cache line passed between two goroutines' cores and back (each waits for the other's store): %s "+
			"per round trip. A message between goroutines moves several lines (the slot's, its metadata's, the edge's), "+
			"a channel of values fewer: these two figures set the floor under the message ratios.\n", val(rt))
	}
}

// renderSPSC writes the header line of BenchmarkMachine's op=spsc-batch16,
// with its ratio to BenchmarkMessageBatch's channel at the same room when
// the run measured both: what the simplest lock-free ring reaches where the
// batch target is measured with room for 4 batches.
func renderSPSC(b *strings.Builder, machine, batch []*summary) {
	spsc := ns(find(machine, "BenchmarkMachine/op=spsc-batch16"))
	if math.IsNaN(spsc) {
		return
	}
	vs := ""
	if ch := ns(find(batch, "BenchmarkMessageBatch/impl=chan-token/batch=16")); !math.IsNaN(ch) && ch > 0 {
		vs = fmt.Sprintf(" (%.2fx the channel of BenchmarkMessageBatch)", spsc/ch)
	}
	fmt.Fprintf(b, "- The simplest lock-free queue, a single-producer single-consumer ring of tokens with room for 4 batches "+
		"of 16 and no locked instruction (BenchmarkMachine op=spsc-batch16): %s per token%s. With that little room the "+
		"producer and the consumer wait for each other's lines; an edge with the same room pays that too.\n", fmtVal(spsc), vs)
}

func flagsOf(o options) string {
	var f []string
	if o.count != 5 {
		f = append(f, "-count "+strconv.Itoa(o.count))
	}
	if o.benchtime != "100ms" {
		f = append(f, "-benchtime "+o.benchtime)
	}
	if o.big {
		f = append(f, "-big")
	}
	if o.skipGC {
		f = append(f, "-skip-gc")
	}
	if o.skipSuite {
		f = append(f, "-skip-suite")
	}
	if o.bench != suiteBench {
		f = append(f, "-bench '"+o.bench+"'")
	}
	if len(f) == 0 {
		return ""
	}
	return " " + strings.Join(f, " ")
}

// find returns the summary with exactly this name (without -procs suffix).
func find(rows []*summary, name string) *summary {
	for _, s := range rows {
		if s.name == name {
			return s
		}
	}
	return nil
}

func ns(s *summary) float64 {
	if s == nil {
		return math.NaN()
	}
	return s.median["ns/op"]
}

type targetRow struct{ target, measured, verdict string }

// absolute is a target row for a figure that must stay at or below limit
// ns (an absolute target, not a ratio).
func absolute(target string, v, limit float64) targetRow {
	verdict := "no"
	if v <= limit {
		verdict = "yes"
	}
	return targetRow{target, fmtNs(v), verdict}
}

// renderMessageTargets adds the message runtime's targets (channels as the
// peer) and the cross-process throughput targets (a unix socket as the
// peer), each a ratio of medians from the same run.
func renderMessageTargets(byFam map[string][]*summary, ratio func(string, float64, float64, func(float64) bool, string)) {
	atMost := func(limit float64) func(float64) bool { return func(r float64) bool { return r <= limit } }
	atLeast := func(limit float64) func(float64) bool { return func(r float64) bool { return r >= limit } }
	hop := byFam["Hop"]
	ratio("producer -> consumer goroutine, Put+Send / Recv+View+Free (64 B), at or below 1.0x a channel of values",
		ns(find(hop, "BenchmarkHop/impl=cella-edge/payload=64")), ns(find(hop, "BenchmarkHop/impl=chan-value/payload=64")),
		atMost(1), "%.2fx chan-value")
	ratio("producer -> consumer goroutine, Put by value (4 KiB), at or below 0.5x a channel of values",
		ns(find(hop, "BenchmarkHop/impl=cella-edge/payload=4096")), ns(find(hop, "BenchmarkHop/impl=chan-value/payload=4096")),
		atMost(0.5), "%.2fx chan-value")
	life := byFam["MessageLifecycle"]
	ratio("one-goroutine lifecycle Put+Send+Recv+View+Free (64 B) at or below 1.5x a channel of values",
		ns(find(life, "BenchmarkMessageLifecycle/impl=cella-edge/payload=64")), ns(find(life, "BenchmarkMessageLifecycle/impl=chan-value/payload=64")),
		atMost(1.5), "%.2fx chan-value")
	mh := byFam["MessageHop"]
	ratio("edge hop (Send+Recv of a token) at or below 0.8x chan token.Token",
		ns(find(mh, "BenchmarkMessageHop/impl=cella-edge/payload=64")), ns(find(mh, "BenchmarkMessageHop/impl=chan-token/payload=64")),
		atMost(0.8), "%.2fx chan-token")
	mb := byFam["MessageBatch"]
	ratio("SendBatch/RecvBatch of 16: per-token cost at or below 0.2x a channel's (room for 4 batches)",
		ns(find(mb, "BenchmarkMessageBatch/impl=cella-edge/batch=16")), ns(find(mb, "BenchmarkMessageBatch/impl=chan-token/batch=16")),
		atMost(0.2), "%.2fx chan-token")
	ratio("SendBatch/RecvBatch of 16: per-token cost at or below 0.2x a channel's (room for 64 batches)",
		ns(find(mb, "BenchmarkMessageBatch/impl=cella-edge/batch=16/room=1024")), ns(find(mb, "BenchmarkMessageBatch/impl=chan-token/batch=16/room=1024")),
		atMost(0.2), "%.2fx chan-token")
	fo := byFam["MessageFanOut"]
	ratio("fan-out of a 4 KiB message to 4 consumers at or below 0.5x copying it into 4 channels",
		ns(find(fo, "BenchmarkMessageFanOut/impl=cella-edge/edges=4/payload=4096")), ns(find(fo, "BenchmarkMessageFanOut/impl=chan-copy/edges=4/payload=4096")),
		atMost(0.5), "%.2fx chan-copy")
	pl := byFam["MessagePipeline"]
	ratio("3-stage pipeline, saturated, at or below 1.0x channels of tokens",
		ns(find(pl, "BenchmarkMessagePipeline/impl=cella-edge/mode=saturated")), ns(find(pl, "BenchmarkMessagePipeline/impl=chan-token/mode=saturated")),
		atMost(1), "%.2fx chan-token")
	if c, t := find(pl, "BenchmarkMessagePipeline/impl=cella-edge/mode=paced"), find(pl, "BenchmarkMessagePipeline/impl=chan-token/mode=paced"); c != nil && t != nil {
		ratio("3-stage pipeline, paced: p99 per hop at or below the channel pipeline's",
			c.median["ns/hop-p99"], t.median["ns/hop-p99"], atMost(1), "%.2fx chan-token's p99")
	}
	ipc := byFam["IPC"]
	ratio("between processes, 4 KiB messages: at least 10x a unix socket's throughput",
		ns(find(ipc, "BenchmarkIPC/4KiB/impl=unix")), ns(find(ipc, "BenchmarkIPC/4KiB/impl=cella")),
		atLeast(10), "%.1fx the unix socket's")
	ratio("between processes, 1 MiB messages: at least 100x a unix socket's throughput",
		ns(find(ipc, "BenchmarkIPC/1MiB/impl=unix")), ns(find(ipc, "BenchmarkIPC/1MiB/impl=cella")),
		atLeast(100), "%.0fx the unix socket's")
}

func renderTargets(b *strings.Builder, in pageInput, byFam map[string][]*summary) {
	type row = targetRow
	var rows []row
	ratio := func(target string, num, den float64, ok func(float64) bool, format string) {
		if math.IsNaN(num) || math.IsNaN(den) || den == 0 {
			return
		}
		r := num / den
		v := "no"
		if ok(r) {
			v = "yes"
		}
		rows = append(rows, row{target, fmt.Sprintf(format, r), v})
	}
	pair := byFam["Pair"]
	ratio("single-goroutine pair (64 B) at or below 1.0x sync.Pool",
		ns(find(pair, "BenchmarkPair/impl=cella/payload=64")), ns(find(pair, "BenchmarkPair/impl=syncpool/payload=64")),
		func(r float64) bool { return r <= 1 }, "%.2fx sync.Pool")
	par := byFam["PairParallel"]
	g := "/payload=64/goroutines=" + strconv.Itoa(in.procs)
	ratio("RunParallel pair (64 B, one goroutine per P) at or below 1.0x sync.Pool",
		ns(find(par, "BenchmarkPairParallel/impl=cella"+g)), ns(find(par, "BenchmarkPairParallel/impl=syncpool"+g)),
		func(r float64) bool { return r <= 1 }, "%.2fx sync.Pool")
	ratio("RunParallel pair (64 B) at least 10x faster than the shared tagged stack",
		ns(find(par, "BenchmarkPairParallel/impl=treiber"+g)), ns(find(par, "BenchmarkPairParallel/impl=cella"+g)),
		func(r float64) bool { return r >= 10 }, "treiber ns/op is %.2fx cella's")
	g4 := "/payload=64/goroutines=" + strconv.Itoa(4*in.procs)
	ratio("oversubscribed pair (64 B, 4 goroutines per P) at or below 1.0x sync.Pool",
		ns(find(par, "BenchmarkPairParallel/impl=cella"+g4)), ns(find(par, "BenchmarkPairParallel/impl=syncpool"+g4)),
		func(r float64) bool { return r <= 1 }, "%.2fx sync.Pool")
	slf := byFam["StoreLoadFree"]
	ratio("Store+Load+Free (64 B) at or below 1.2x sync.Pool with a copy in and out",
		ns(find(slf, "BenchmarkStoreLoadFree/impl=cella/payload=64")), ns(find(slf, "BenchmarkStoreLoadFree/impl=syncpool/payload=64")),
		func(r float64) bool { return r <= 1.2 }, "%.2fx sync.Pool")
	// At 1 KiB the copy out is LoadInto, which the issue added for values
	// too large to return by value (Load's own row is in the family table).
	ratio("Store+LoadInto+Free (1 KiB) at or below 1.0x sync.Pool with a copy in and out",
		ns(find(slf, "BenchmarkStoreLoadFree/impl=cella-into/payload=1024")), ns(find(slf, "BenchmarkStoreLoadFree/impl=syncpool/payload=1024")),
		func(r float64) bool { return r <= 1 }, "%.2fx sync.Pool")
	if l := find(byFam["Load"], "BenchmarkLoad/impl=cella/payload=64"); l != nil {
		v := "no"
		if ns(l) <= 6 {
			v = "yes"
		}
		rows = append(rows, row{"Load (64 B) at or below 6 ns", fmtNs(ns(l)), v})
	}
	// View and Update on one goroutine and on one per P: the single
	// goroutine pays the whole cost of each call (no other P's work to
	// overlap with), so it is the harder of the two.
	for _, fam := range []string{"View", "Update"} {
		rows := byFam[fam]
		for _, lv := range []struct{ name, suffix string }{{"one goroutine", "/payload=64/goroutines=1"}, {"one goroutine per P", g}} {
			if lv.name == "one goroutine" && in.procs == 1 {
				continue // the same benchmark as one per P
			}
			ratio(fmt.Sprintf("%s (64 B, %s) at or below 1.0x sync.RWMutex", fam, lv.name),
				ns(find(rows, "Benchmark"+fam+"/impl=cella"+lv.suffix)), ns(find(rows, "Benchmark"+fam+"/impl=rwmutex"+lv.suffix)),
				func(r float64) bool { return r <= 1 }, "%.2fx RWMutex")
		}
	}

	renderMessageTargets(byFam, ratio)
	if l := find(byFam["IPCLatency"], "BenchmarkIPCLatency/impl=cella-parked"); l != nil {
		rows = append(rows, absolute("cross-process one-way latency p50 (64 B, parked receiver) at or below 1 µs", l.median["ns/hop-p50"], 1000))
	}
	if l := find(byFam["IPCLatency"], "BenchmarkIPCLatency/impl=cella-spinning"); l != nil {
		rows = append(rows, absolute("cross-process one-way latency p50 (64 B, polling receiver) at or below 250 ns", l.median["ns/hop-p50"], 250))
	}

	// 0 allocs/op on every cella hot path.
	worst, where, seen := 0.0, "", false
	for _, f := range families {
		for _, s := range byFam[f.name] {
			if s.param("impl") != "cella" {
				continue
			}
			seen = true
			if a := s.median["allocs/op"]; a > worst {
				worst, where = a, s.name
			}
		}
	}
	if seen {
		v, m := "yes", "0 allocs/op everywhere"
		if worst > 0 {
			v, m = "no", fmt.Sprintf("%g allocs/op in %s", worst, where)
		}
		rows = append(rows, row{"0 allocs/op on every cella hot path", m, v})
	}

	gc := byFam["GC"]
	empty, c4, h4 := ns(find(gc, "BenchmarkGC/impl=empty/live=0")), ns(find(gc, "BenchmarkGC/impl=cella/live=4M")), ns(find(gc, "BenchmarkGC/impl=heap/live=4M"))
	ratio("forced GC with 4M live cella messages at most 1.5x an empty-heap GC", c4, empty,
		func(r float64) bool { return r <= 1.5 }, "%.2fx empty heap")
	ratio("forced GC with 4M cella messages at least 30x cheaper than 4M heap objects", h4, c4,
		func(r float64) bool { return r >= 30 }, "heap-object GC is %.1fx the cella one")

	if nc := find(byFam["NewClose"], "BenchmarkNewClose/payload=64/slots=2^27"); nc != nil {
		t, rss := nc.median["new-ns/op"], nc.median["rss-KiB"]
		v := "no"
		if t < 5e6 && rss < 4096 {
			v = "yes"
		}
		rows = append(rows, row{"New of 2^27 x 64-byte slots under 5 ms and 4 MiB RSS",
			fmt.Sprintf("%s, +%.0f KiB RSS", fmtNs(t), rss), v})
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(b, "## Targets\n\n| target | measured | met |\n|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(b, "| %s | %s | %s |\n", r.target, r.measured, r.verdict)
	}
	b.WriteString("\n")
}

// renderFamily writes one table: a row per workload variant, a column per
// implementation, each cell the median ns/op and its ratio to the baseline.
func renderFamily(b *strings.Builder, rows []*summary) {
	var keys, impls []string
	cell := map[string]map[string]*summary{}
	for _, s := range rows {
		k, im := s.rowKey(), s.param("impl")
		if cell[k] == nil {
			cell[k] = map[string]*summary{}
			keys = append(keys, k)
		}
		if !contains(impls, im) {
			impls = append(impls, im)
		}
		cell[k][im] = s
	}
	fmt.Fprintf(b, "| workload | %s |\n|---|%s\n", strings.Join(impls, " | "), strings.Repeat("---|", len(impls)))
	for _, k := range keys {
		// Each row's ratios are against the first baseline that row has
		// (Hop's 4 KiB row has no sync.Pool, only a channel of values).
		base := ""
		for _, c := range baselines {
			if cell[k][c] != nil {
				base = c
				break
			}
		}
		label := strings.Join(strings.Split(k, "/")[1:], " ")
		fmt.Fprintf(b, "| %s |", label)
		for _, im := range impls {
			s := cell[k][im]
			if s == nil {
				b.WriteString(" - |")
				continue
			}
			v := s.median["ns/op"]
			fmt.Fprintf(b, " %s", fmtVal(v))
			if bs := cell[k][base]; bs != nil && base != "" && bs.median["ns/op"] > 0 {
				fmt.Fprintf(b, " (%.2fx)", v/bs.median["ns/op"])
			}
			if a := s.median["allocs/op"]; a > 0 {
				fmt.Fprintf(b, " %g alloc", a)
			}
			if st, ok := s.median["steals/op"]; ok {
				fmt.Fprintf(b, " %.3g steals/op", st)
			}
			if p50, ok := s.median["ns/hop-p50"]; ok {
				fmt.Fprintf(b, " (hop p50 %s, p99 %s)", fmtVal(p50), fmtVal(s.median["ns/hop-p99"]))
			}
			b.WriteString(" |")
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}

func renderGC(b *strings.Builder, byFam map[string][]*summary) {
	if gc := byFam["GC"]; len(gc) > 0 {
		b.WriteString("## GC headline: a forced GC cycle with N live 64-byte messages\n\n" +
			"One op is one complete `runtime.GC()`. Pause is the stop-the-world time per cycle " +
			"(debug.ReadGCStats), heap is the live heap objects, RSS is VmRSS once the set is built. " +
			"Each case ran in a process of its own.\n\n" +
			"| case | GC cycle | STW pause | heap | RSS | vs empty heap | vs heap objects |\n|---|---|---|---|---|---|---|\n")
		empty := ns(find(gc, "BenchmarkGC/impl=empty/live=0"))
		for _, s := range gc {
			vsHeap := "-"
			if s.param("impl") == "cella" {
				h := ns(find(gc, "BenchmarkGC/impl=heap/live="+s.param("live")))
				if h > 0 {
					vsHeap = fmt.Sprintf("%.1fx cheaper", h/s.median["ns/op"])
				}
			}
			fmt.Fprintf(b, "| %s %s | %s | %s | %.1f MiB | %.0f MiB | %.2fx | %s |\n",
				s.param("impl"), s.param("live"), fmtVal(s.median["ns/op"]), fmtVal(s.median["pause-ns/op"]),
				s.median["heap-MiB"], s.median["rss-MiB"], s.median["ns/op"]/empty, vsHeap)
		}
		b.WriteString("\n")
	}
	if ch := byFam["GCChurn"]; len(ch) > 0 {
		b.WriteString("## GC under steady churn\n\n" +
			"With N live messages, each op frees one and stores a new one (heap: a new object replaces the old " +
			"pointer). GC CPU is the runtime's GC CPU time over wall time x GOMAXPROCS during the run.\n\n" +
			"| case | ns/op | GC CPU | GC cycles per 1M ops | RSS | allocs/op |\n|---|---|---|---|---|---|\n")
		for _, s := range ch {
			fmt.Fprintf(b, "| %s %s | %s | %.2f%% | %.2f | %.0f MiB | %g |\n", s.param("impl"), s.param("live"),
				fmtVal(s.median["ns/op"]), s.median["gc-cpu-%"], s.median["gcs/Mop"], s.median["rss-MiB"], s.median["allocs/op"])
		}
		b.WriteString("\n")
	}
	if nc := byFam["NewClose"]; len(nc) > 0 {
		b.WriteString("## Lazy capacity: New and Close of a huge arena\n\n" +
			"| slots (64 B each) | reserved | New | Close | RSS growth after New |\n|---|---|---|---|---|\n")
		for _, s := range nc {
			slots := s.param("slots")
			res := "-"
			if k, err := strconv.Atoi(strings.TrimPrefix(slots, "2^")); err == nil {
				res = fmt.Sprintf("%d GiB", (uint64(64)<<k)>>30)
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s | %.0f KiB |\n", slots, res,
				fmtVal(s.median["new-ns/op"]), fmtVal(s.median["close-ns/op"]), s.median["rss-KiB"])
		}
		b.WriteString("\n")
	}
}

// fmtVal prints a duration in ns with a readable unit.
func fmtVal(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2f ms", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.1f µs", v/1e3)
	case v >= 100:
		return fmt.Sprintf("%.0f ns", v)
	default:
		return fmt.Sprintf("%.3g ns", v)
	}
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// payloadsOf lists the payload sizes present in a family, in order.
func payloadsOf(sums []*summary, family string) []string {
	var out []string
	for _, s := range sums {
		if s.family() == family && !contains(out, s.param("payload")) {
			out = append(out, s.param("payload"))
		}
	}
	return out
}

// parallelSeries gathers, per implementation, median ns/op by goroutines.
func parallelSeries(sums []*summary, family, payload string) []series {
	var out []series
	idx := map[string]int{}
	for _, s := range sums {
		if s.family() != family || s.param("payload") != payload {
			continue
		}
		g, err := strconv.Atoi(s.param("goroutines"))
		if err != nil {
			continue
		}
		im := s.param("impl")
		i, ok := idx[im]
		if !ok {
			i = len(out)
			idx[im] = i
			out = append(out, series{impl: im, points: map[int]float64{}})
		}
		out[i].points[g] = s.median["ns/op"]
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].impl == "cella" && out[j].impl != "cella" })
	return out
}
