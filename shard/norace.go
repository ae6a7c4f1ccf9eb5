//go:build !race

package shard

// raceEnabled: see race.go.
const raceEnabled = false
