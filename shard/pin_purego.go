//go:build purego

package shard

import "math/rand/v2"

// Pinned reports whether this build pins goroutines to their P. The purego
// build cannot reach the runtime, so it picks a random stripe per call and
// uses atomics where the default build uses per-P plain words.
const Pinned = false

// Pin returns a random stripe in [0, 64). The goroutine is not pinned.
func Pin() int { return int(rand.Uint32N(pureStripes)) }

// Unpin does nothing in the purego build.
func Unpin() {}

// quiesce is never called in the purego build: Gate waits on its stripes.
func quiesce() {}

// EnterAny starts a section even if the gate is closed; see Gate.
func (g *Gate) EnterAny() int {
	p := Pin()
	g.inflight[p].n.Add(1)
	return p
}

// Exit ends the section Enter or EnterAny started.
func (g *Gate) Exit(p int) { g.inflight[p].n.Add(-1) }
