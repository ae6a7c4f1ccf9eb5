//go:build race

package clock

const race = true
