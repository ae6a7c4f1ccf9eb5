package arena

import (
	"runtime"

	"github.com/cella-go/cella/internal/atomicx"
)

// barrier makes every thread of the process that is running now execute a
// full memory fence before it returns, so that every store another thread
// made before its fence is visible to the caller afterwards. It is the heavy
// half of an asymmetric fence whose light half is free: atomicx.ProcessBarrier
// (membarrier), or where that is missing a brief stop-the-world.
func barrier() {
	if !atomicx.ProcessBarrier() {
		stopTheWorld()
	}
}

// stopTheWorld stops every goroutine briefly and lets them go on: each thread
// that was running Go code passes the scheduler's locked instructions (full
// fences) before it returns. runtime.ReadMemStats is the cheapest public call
// that stops the world without running a collection.
func stopTheWorld() {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
}
