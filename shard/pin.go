//go:build !purego

package shard

import (
	"runtime"
	_ "unsafe" // for go:linkname
)

// Pinned reports whether this build pins goroutines to their P (the default
// build). The purego build cannot, and uses striped counters instead.
const Pinned = true

// runtime.procPin disables preemption of the calling goroutine and returns the
// id of the P it runs on; runtime.procUnpin undoes it. sync.Pool uses the same
// pair. Both carry a push linkname in the runtime and are on its list of
// symbols that must stay reachable (go.dev/issue/67401).
//
//go:linkname runtime_procPin runtime.procPin
func runtime_procPin() int

//go:linkname runtime_procUnpin runtime.procUnpin
func runtime_procUnpin()

// Pin pins the calling goroutine to its P and returns the P's id. Until Unpin
// the goroutine is not preempted and no other goroutine runs on that P, so
// per-P data may be updated without atomics. While pinned: no blocking, no
// locks, no channel operations, no allocation, no syscalls, no waiting on
// another goroutine.
func Pin() int { return runtime_procPin() }

// Unpin ends the section started by Pin.
func Unpin() { runtime_procUnpin() }

// quiesce returns once every goroutine that was pinned when it was called has
// unpinned. It stops the world briefly: the runtime cannot stop a P whose
// goroutine is pinned (preemption is disabled), so the stop completes only
// after every such section has ended. runtime.ReadMemStats is the cheapest
// public call that stops the world without running a collection.
func quiesce() {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
}

// EnterAny starts a section even if the gate is closed; see Gate.
func (g *Gate) EnterAny() int { return runtime_procPin() }

// Exit ends the section Enter or EnterAny started.
func (g *Gate) Exit(int) { runtime_procUnpin() }
