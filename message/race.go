//go:build race

package message

// raceEnabled is true under the race detector: publish writes a slot's
// metadata atomically instead of with plain stores (see publish).
const raceEnabled = true
