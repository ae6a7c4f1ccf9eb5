//go:build !race

package atomicx

// Race: see race.go.
const Race = false
