package shm

import (
	"runtime"
	"sync/atomic"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/shard"
)

// Stats counts this process's operations on a shared arena, and the
// recoveries of the segment (by any process).
type Stats struct {
	Allocs, Frees, Steals uint64
	// Recoveries counts completed recoveries of the segment, by every
	// process (Recover's report says what each one cleaned up).
	Recoveries uint64
	// Processes is how many processes have the segment attached.
	Processes int
}

const (
	statAllocs = iota
	statFrees
	statSteals
	numStats
)

// statLine is one line of counters.
type statLine struct {
	n [numStats]uint64
	_ [atomicx.CacheLine - numStats*8]byte
}

// stats are this process's counters, in its own memory. In the default
// build a goroutine pinned to P p counts in perP[p] with plain increments:
// only goroutines pinned to p write it, so no atomic is needed. P ids
// beyond perP (GOMAXPROCS raised after the handle was made), the purego
// build and the race detector count in stripes, with atomics.
type stats struct {
	perP    []statLine
	stripes [cacheWays]statLine
}

func newStats() stats {
	return stats{perP: make([]statLine, max(runtime.GOMAXPROCS(0), runtime.NumCPU()))}
}

func (s *stats) add(which int) {
	p := shard.Pin()
	if shard.Pinned && !atomicx.Race && p < len(s.perP) {
		s.perP[p].n[which]++
		shard.Unpin()
		return
	}
	shard.Unpin()
	atomic.AddUint64(&s.stripes[uint(p)%cacheWays].n[which], 1)
}

func (s *stats) sum(which int) (n uint64) {
	for i := range s.perP {
		n += atomic.LoadUint64(&s.perP[i].n[which])
	}
	for i := range s.stripes {
		n += atomic.LoadUint64(&s.stripes[i].n[which])
	}
	return n
}

// Stats returns this process's counters and the segment's recovery count.
func (a *seg) Stats() Stats {
	st := Stats{
		Allocs: a.stats.sum(statAllocs),
		Frees:  a.stats.sum(statFrees),
		Steals: a.stats.sum(statSteals),
	}
	// The gate, not closeMu: Close holds closeMu while it waits for the
	// callbacks, so a callback that calls Stats would deadlock on it.
	p, ok := a.gate.Enter()
	if !ok {
		return st
	}
	defer a.gate.Exit(p)
	st.Recoveries = atomic.LoadUint64(&a.hdr.recoveries)
	for i := range MaxProcs {
		if atomic.LoadUint32(&a.record(i).state) == recordAlive {
			st.Processes++
		}
	}
	return st
}
