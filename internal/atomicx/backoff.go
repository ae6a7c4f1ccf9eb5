package atomicx

import (
	"runtime"
	"time"
)

// Backoff paces a goroutine that waits for a word another goroutine will
// change: a few short spins first (the holder is usually running and about to
// finish), then runtime.Gosched so a holder on the same P can run, and for
// long waits short sleeps so the waiter stops burning a core.
//
// The zero value is ready to use. A Backoff must not be shared.
type Backoff struct {
	round uint32
	spun  uint32 // keeps the spin loop from being optimised away
}

const (
	spinRounds  = 4  // rounds of busy spinning, doubling each time
	yieldRounds = 64 // rounds of Gosched before sleeping
	maxSleep    = time.Millisecond
)

// Wait waits a little longer each time it is called.
func (b *Backoff) Wait() {
	r := b.round
	b.round++
	switch {
	case r < spinRounds:
		n := uint32(8) << r
		var x uint32
		for i := uint32(0); i < n; i++ {
			x += i
		}
		b.spun += x
	case r < spinRounds+yieldRounds:
		runtime.Gosched()
	default:
		d := time.Microsecond << min(r-spinRounds-yieldRounds, 10)
		time.Sleep(min(d, maxSleep))
	}
}

// Reset starts the next wait from short spins again.
func (b *Backoff) Reset() { b.round = 0 }
