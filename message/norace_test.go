//go:build !race

package message

// raceEnabled reports a -race build, where everything runs several times
// slower: timing-based expectations are relaxed.
const raceEnabled = false
