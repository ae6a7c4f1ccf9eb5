//go:build !race

package arena

// raceEnabled: see race.go.
const raceEnabled = false
