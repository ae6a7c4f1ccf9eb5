//go:build race

package atomicx

// Race is true under the race detector, which needs every access to a word
// that goroutines share to be an atomic one (StoreRelease64 is then an
// atomic store), and which cannot see that a P-pinned plain counter has one
// writer.
const Race = true
