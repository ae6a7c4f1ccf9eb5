package main

import (
	"bufio"
	"io"
	"sort"
	"strconv"
	"strings"
)

// result is one line of `go test -bench` output.
type result struct {
	name    string // full name without the -GOMAXPROCS suffix
	procs   int    // the suffix (GOMAXPROCS when the benchmark started)
	iters   int64
	metrics map[string]float64 // unit -> value ("ns/op", "allocs/op", ...)
}

// family is the top-level benchmark name ("Pair" for BenchmarkPair/...).
func (r result) family() string {
	f, _, _ := strings.Cut(r.name, "/")
	return strings.TrimPrefix(f, "Benchmark")
}

// param returns the value of key=value in the name, "" if absent.
func (r result) param(key string) string {
	for _, part := range strings.Split(r.name, "/")[1:] {
		if k, v, ok := strings.Cut(part, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// rowKey is the name with the impl=... part removed: the results of the
// different implementations for the same workload share it.
func (r result) rowKey() string {
	parts := strings.Split(r.name, "/")
	out := parts[:1:1]
	for _, p := range parts[1:] {
		if !strings.HasPrefix(p, "impl=") {
			out = append(out, p)
		}
	}
	return strings.Join(out, "/")
}

// parseResults reads benchmark lines; everything else is ignored.
func parseResults(r io.Reader) []result {
	var out []result
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
			continue
		}
		iters, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		res := result{name: f[0], iters: iters, metrics: map[string]float64{}}
		if i := strings.LastIndexByte(f[0], '-'); i > 0 {
			if p, err := strconv.Atoi(f[0][i+1:]); err == nil {
				res.name, res.procs = f[0][:i], p
			}
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			res.metrics[f[i+1]] = v
		}
		out = append(out, res)
	}
	return out
}

// summary is the median of every metric over the runs of one benchmark.
type summary struct {
	result     // first run, for the name and parameters
	runs   int // how many runs the medians are over
	order  int // position of the first run in the output
	median map[string]float64
}

// summarize groups runs by name and takes medians, keeping output order.
func summarize(rs []result) []*summary {
	byName := map[string]*summary{}
	vals := map[string]map[string][]float64{}
	var out []*summary
	for _, r := range rs {
		s, ok := byName[r.name]
		if !ok {
			s = &summary{result: r, order: len(out), median: map[string]float64{}}
			byName[r.name] = s
			vals[r.name] = map[string][]float64{}
			out = append(out, s)
		}
		s.runs++
		for u, v := range r.metrics {
			vals[r.name][u] = append(vals[r.name][u], v)
		}
	}
	for _, s := range out {
		for u, vs := range vals[s.name] {
			s.median[u] = median(vs)
		}
	}
	return out
}

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// procsOf is the GOMAXPROCS the benchmarks ran with: the -N suffix of their
// names (the test binary's GOMAXPROCS, which levels() in bench/ builds its
// parallelism axis from), or fallback when no name has one (go test omits
// the suffix when GOMAXPROCS is 1).
func procsOf(sums []*summary, fallback int) int {
	for _, s := range sums {
		if s.procs > 0 {
			return s.procs
		}
	}
	return fallback
}
