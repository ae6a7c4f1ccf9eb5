package shm

import (
	"sync/atomic"

	"github.com/cella-go/cella/internal/atomicx"
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

// stats is striped by way, so that Ps rarely share a counter's line.
type stats struct {
	stripes [cacheWays]struct {
		n [numStats]uint64
		_ [atomicx.CacheLine - numStats*8]byte
	}
}

func (s *stats) add(p, which int) { atomic.AddUint64(&s.stripes[uint(p)%cacheWays].n[which], 1) }

func (s *stats) sum(which int) (n uint64) {
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
