package arena

import "runtime"

// stopTheWorld stops every goroutine briefly and lets them go on: each thread
// that was running Go code passes the scheduler's locked instructions (full
// fences) before it returns. runtime.ReadMemStats is the cheapest public call
// that stops the world without running a collection. The fallback of barrier.
func stopTheWorld() {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
}
