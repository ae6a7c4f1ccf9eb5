// Command report runs cella's benchmark suite and writes the results page.
//
//	go run ./bench/cmd/report            # about 5 minutes on 2 cores
//	go run ./bench/cmd/report -h         # flags
//
// It builds the bench test binary once, measures the machine's own costs
// (BenchmarkMachine: one uncontended locked instruction, procPin+procUnpin),
// runs the comparison benchmarks with -count runs each, runs every
// GC-headline case in a process of its own (so one case's heap and RSS
// cannot leak into the next), then runs benchstat and writes, under -out (default bench/results):
//
//	<machine>.md   medians, ratios against sync.Pool, GC headline, benchstat output
//	<machine>.svg  ns/op of the parallel Alloc+Free pair against goroutines
//	<machine>.txt  raw `go test -bench` output, for benchstat comparisons
//
// The page's header (machine, its locked-instruction and pin costs, the
// parallelism levels, which follow GOMAXPROCS) and its targets table are
// also printed on stdout; progress goes to stderr.
//
// benchstat is taken from PATH, or else run with `go run` at a pinned
// version of golang.org/x/perf (fetched through the module proxy once).
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/cella-go/cella/internal/clock"
)

// benchstatModule is the pinned benchstat used when none is on PATH.
const benchstatModule = "golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da"

// machineBench selects the machine's own costs (a locked instruction,
// procPin+procUnpin), measured first, while the machine is quietest.
const machineBench = `^BenchmarkMachine$`

// suiteBench selects the comparison benchmarks (everything but the GC
// headline and lazy capacity, which run one case per process).
const suiteBench = `^Benchmark(Pair|PairParallel|StoreLoadFree|Load|View|Update|CrossP|Burst|Hop|MessageHop|MessageLifecycle|MessageBatch|MessagePipeline|MessageFanOut|IPC|IPCLatency)$`

type options struct {
	count          int
	benchtime      string
	gcBenchtime    string
	churnBenchtime string
	bench          string
	out            string
	machine        string
	big            bool
	skipSuite      bool
	skipGC         bool
}

func main() {
	var o options
	flag.IntVar(&o.count, "count", 5, "runs of every benchmark (benchstat wants 5 or more)")
	flag.StringVar(&o.benchtime, "benchtime", "100ms", "-benchtime of the comparison benchmarks")
	flag.StringVar(&o.gcBenchtime, "gc-benchtime", "20x", "-benchtime of BenchmarkGC (forced GC cycles per run)")
	flag.StringVar(&o.churnBenchtime, "churn-benchtime", "1s", "-benchtime of BenchmarkGCChurn")
	flag.StringVar(&o.bench, "bench", suiteBench, "-bench regexp of the comparison suite")
	flag.StringVar(&o.out, "out", "", "output directory (default <module>/bench/results)")
	flag.StringVar(&o.machine, "machine", "", "machine name used for the file names (default: CPU model and core count)")
	flag.BoolVar(&o.big, "big", false, "add the 16M-message GC cases (about 2 GiB of RAM, a few minutes)")
	flag.BoolVar(&o.skipSuite, "skip-suite", false, "only run the GC headline and lazy capacity")
	flag.BoolVar(&o.skipGC, "skip-gc", false, "only run the comparison suite")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	start := time.Now()
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	if o.out == "" {
		o.out = filepath.Join(root, "bench", "results")
	}
	if o.machine == "" {
		o.machine = machineName()
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "cellabench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	bin := filepath.Join(tmp, "bench.test")
	logf("building the bench test binary")
	if err := command(root, nil, "go", "test", "-c", "-o", bin, "./bench"); err != nil {
		return err
	}

	var machineRaw, suiteRaw, gcRaw bytes.Buffer
	logf("measuring the machine: -bench %s -count %d -benchtime %s", machineBench, o.count, o.benchtime)
	if err := runBench(bin, &machineRaw, "-test.bench", machineBench,
		"-test.count", strconv.Itoa(o.count), "-test.benchtime", o.benchtime); err != nil {
		return err
	}
	if !o.skipSuite {
		logf("running the comparison suite: -bench %s -count %d -benchtime %s", o.bench, o.count, o.benchtime)
		if err := runBench(bin, &suiteRaw, "-test.bench", o.bench,
			"-test.count", strconv.Itoa(o.count), "-test.benchtime", o.benchtime); err != nil {
			return err
		}
	}
	if !o.skipGC {
		if err := runGC(o, bin, &gcRaw); err != nil {
			return err
		}
	}

	raw := machineRaw.String() + suiteRaw.String() + gcRaw.String()
	if err := os.WriteFile(filepath.Join(o.out, o.machine+".txt"), []byte(raw), 0o644); err != nil {
		return err
	}
	stats, err := runBenchstat(root, tmp, raw)
	if err != nil {
		return err
	}

	sums := summarize(parseResults(strings.NewReader(raw)))
	procs := procsOf(sums, runtime.GOMAXPROCS(0))
	var svgs []string
	for _, payload := range payloadsOf(sums, "PairParallel") {
		ss := parallelSeries(sums, "PairParallel", payload)
		title := fmt.Sprintf("Alloc+Free pair in parallel, %s-byte payload, %s", payload, o.machine)
		name := o.machine + ".svg"
		if payload != "64" {
			name = o.machine + "-" + payload + ".svg"
		}
		if svg := plotSVG(title, ss, procs); svg != "" {
			if err := os.WriteFile(filepath.Join(o.out, name), []byte(svg), 0o644); err != nil {
				return err
			}
			svgs = append(svgs, name)
		}
	}
	in := pageInput{
		machine: o.machine, cpu: cpuModel(), cpus: runtime.NumCPU(), procs: procs, goVersion: goVersion(root),
		clockSource: clock.Source(), counterClock: clock.UsesCounter(),
		when: time.Now().UTC(), took: time.Since(start), opts: o,
		sums: sums, benchstat: stats, svgs: svgs,
	}
	md := filepath.Join(o.out, o.machine+".md")
	if err := os.WriteFile(md, []byte(renderPage(in)), 0o644); err != nil {
		return err
	}
	fmt.Print(renderTop(in, byFamily(sums)))
	logf("wrote %s (%s)", md, time.Since(start).Round(time.Second))
	return nil
}

// runGC runs the GC headline, the churn figure and lazy capacity, each case
// in its own process.
func runGC(o options, bin string, raw io.Writer) error {
	lives := []string{"1M", "4M"}
	if o.big {
		lives = append(lives, "16M")
	}
	type gcCase struct{ bench, benchtime string }
	cases := []gcCase{{`^BenchmarkGC$/^impl=empty$/^live=0$`, o.gcBenchtime}}
	for _, l := range lives {
		for _, impl := range []string{"cella", "heap"} {
			cases = append(cases, gcCase{`^BenchmarkGC$/^impl=` + impl + `$/^live=` + l + `$`, o.gcBenchtime})
		}
	}
	for _, l := range lives {
		for _, impl := range []string{"cella", "heap"} {
			cases = append(cases, gcCase{`^BenchmarkGCChurn$/^impl=` + impl + `$/^live=` + l + `$`, o.churnBenchtime})
		}
	}
	cases = append(cases, gcCase{`^BenchmarkNewClose$`, "5x"})
	for _, c := range cases {
		logf("GC headline case %s", c.bench)
		args := []string{"-test.bench", c.bench, "-test.count", strconv.Itoa(o.count), "-test.benchtime", c.benchtime}
		if o.big {
			args = append(args, "-cella.big")
		}
		if err := runBench(bin, raw, args...); err != nil {
			return err
		}
	}
	return nil
}

// runBench runs the test binary with only benchmarks selected, echoing
// result lines to stderr as they come so a long run shows progress.
func runBench(bin string, raw io.Writer, args ...string) error {
	cmd := exec.Command(bin, append([]string{"-test.run", "^$"}, args...)...)
	cmd.Dir = filepath.Dir(bin)
	var out bytes.Buffer
	cmd.Stdout = io.MultiWriter(&out, newProgress())
	cmd.Stderr = os.Stderr
	err := cmd.Run()
	raw.Write(out.Bytes())
	if err != nil {
		return fmt.Errorf("%s %s: %w", filepath.Base(bin), strings.Join(args, " "), err)
	}
	return nil
}

// progress echoes complete benchmark result lines and failures to stderr.
// The test binary writes a benchmark's name before it runs it and the
// figures after, so lines are assembled before they are filtered.
type progress struct{ partial *[]byte }

func newProgress() progress { return progress{new([]byte)} }

func (p progress) Write(b []byte) (int, error) {
	*p.partial = append(*p.partial, b...)
	for {
		i := bytes.IndexByte(*p.partial, '\n')
		if i < 0 {
			break
		}
		line := string((*p.partial)[:i+1])
		*p.partial = (*p.partial)[i+1:]
		if strings.HasPrefix(line, "Benchmark") || strings.Contains(line, "FAIL") || strings.Contains(line, "panic") {
			os.Stderr.WriteString(line)
		}
	}
	return len(b), nil
}

type benchstatOut struct{ title, text string }

// benchstatGroups are the sections of benchstat output on the page: which
// families go in each, and the implementation every other is compared to.
var benchstatGroups = []struct {
	title    string
	families []string
	base     string
}{
	{"allocators, against sync.Pool", []string{"Pair", "PairParallel", "StoreLoadFree", "CrossP", "Burst", "Hop"}, "syncpool"},
	{"live-object access, against a per-object sync.RWMutex", []string{"View", "Update"}, "rwmutex"},
	{"message runtime, against Go channels of tokens", []string{"MessageHop", "MessageBatch", "MessagePipeline"}, "chan-token"},
	{"message lifecycle, against a Go channel of values", []string{"MessageLifecycle"}, "chan-value"},
	{"message fan-out, against copying into channels", []string{"MessageFanOut"}, "chan-copy"},
	{"GC headline and lazy capacity", []string{"GC", "GCChurn", "NewClose"}, ""},
}

// runBenchstat runs benchstat once per group on that group's lines. With a
// base implementation, each implementation gets a column (base first) and
// only time and allocations are shown.
func runBenchstat(root, tmp, raw string) ([]benchstatOut, error) {
	var out []benchstatOut
	for gi, g := range benchstatGroups {
		var header, body []string
		var impls []string
		if g.base != "" {
			impls = []string{g.base}
		}
		for _, line := range strings.Split(raw, "\n") {
			if !strings.HasPrefix(line, "Benchmark") {
				if k, _, ok := strings.Cut(line, ":"); ok && !strings.Contains(k, " ") && !contains(header, line) {
					header = append(header, line) // goos:, goarch:, pkg:, cpu:
				}
				continue
			}
			rs := parseResults(strings.NewReader(line))
			if len(rs) != 1 || !contains(g.families, rs[0].family()) {
				continue
			}
			if im := rs[0].param("impl"); im != "" && !contains(impls, im) {
				impls = append(impls, im)
			}
			body = append(body, line)
		}
		if len(body) == 0 {
			continue
		}
		f := filepath.Join(tmp, fmt.Sprintf("group%d.txt", gi))
		text := strings.Join(header, "\n") + "\n" + strings.Join(body, "\n") + "\n"
		if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
			return nil, err
		}
		var args []string
		if g.base != "" {
			args = []string{"-col", "/impl@(" + strings.Join(impls, " ") + ")", "-filter", ".unit:(sec/op OR allocs/op)"}
		}
		text, err := benchstat(root, append(args, f)...)
		if err != nil {
			logf("benchstat failed (%v); the page is written without its output", err)
			text = "benchstat failed: " + err.Error() + "\n" + text
		}
		out = append(out, benchstatOut{g.title, text})
	}
	return out, nil
}

// benchstat runs benchstat from PATH, or the pinned version with go run.
func benchstat(root string, args ...string) (string, error) {
	var cmd *exec.Cmd
	if path, err := exec.LookPath("benchstat"); err == nil {
		cmd = exec.Command(path, args...)
	} else {
		cmd = exec.Command("go", append([]string{"run", benchstatModule}, args...)...)
	}
	cmd.Dir = root
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String() + errb.String(), err
	}
	return out.String(), nil
}

func command(dir string, env []string, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run this inside the cella module (go run ./bench/cmd/report)")
	}
	return filepath.Dir(mod), nil
}

func goVersion(root string) string {
	cmd := exec.Command("go", "version")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return runtime.Version()
	}
	return strings.TrimSpace(string(out))
}

// cpuModel is the "model name" of /proc/cpuinfo, or GOARCH elsewhere.
func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				return strings.TrimSpace(v)
			}
		}
	}
	return runtime.GOOS + "/" + runtime.GOARCH
}

var nonWord = regexp.MustCompile(`[^a-z0-9]+`)

// machineName is a file-name-safe "cpu-model-Nc", e.g. "amd-epyc-2c".
func machineName() string {
	m := strings.ToLower(cpuModel())
	for _, noise := range []string{"(r)", "(tm)", "processor", " cpu ", "-core"} {
		m = strings.ReplaceAll(m, noise, " ")
	}
	m = strings.Trim(nonWord.ReplaceAllString(m, "-"), "-")
	if len(m) > 40 {
		m = strings.Trim(m[:40], "-")
	}
	return fmt.Sprintf("%s-%dc", m, runtime.NumCPU())
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "report: "+format+"\n", args...)
}
