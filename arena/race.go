//go:build race

package arena

// raceEnabled is true under the race detector: words that the default build
// writes with plain stores while other goroutines may read them atomically
// (a P's slot cache, a claimed slot's state) are written atomically instead,
// so the detector sees what the hardware guarantees anyway.
const raceEnabled = true
