//go:build race

package shard

// raceEnabled: under the race detector, links are written atomically (see
// storeLink).
const raceEnabled = true
