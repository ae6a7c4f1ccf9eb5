package bench

import (
	"runtime"
	"slices"
	"testing"
)

// TestLevels checks that the parallelism axis of the parallel benchmarks
// follows the machine: powers of two up to GOMAXPROCS, GOMAXPROCS itself,
// then 4 goroutines per P. The report's targets and plot read these levels
// back from the benchmark names, so nothing assumes 2 Ps.
func TestLevels(t *testing.T) {
	cases := map[int][]int{
		1:  {1, 4},
		2:  {1, 2, 8},
		3:  {1, 2, 3, 12},
		8:  {1, 2, 4, 8, 32},
		64: {1, 2, 4, 8, 16, 32, 64, 256},
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for procs, want := range cases {
		runtime.GOMAXPROCS(procs)
		var got []int
		for _, lv := range levels() {
			got = append(got, lv.goroutines())
		}
		if !slices.Equal(got, want) {
			t.Errorf("GOMAXPROCS=%d: levels %v, want %v", procs, got, want)
		}
	}
}
