//go:build !race

package message

// raceEnabled: see race.go.
const raceEnabled = false
