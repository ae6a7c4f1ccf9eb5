package atomicx

import (
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

func TestPadSize(t *testing.T) {
	if unsafe.Sizeof(Pad{}) != CacheLine || CacheLine%64 != 0 {
		t.Fatal("Pad must be one cache-line stride")
	}
}

// A waiter on one P must let the goroutine it waits for run, even with
// GOMAXPROCS=1: Wait eventually yields.
func TestBackoffLetsHolderRun(t *testing.T) {
	var flag atomic.Bool
	go func() { flag.Store(true) }()
	var b Backoff
	deadline := time.Now().Add(5 * time.Second)
	for !flag.Load() {
		if time.Now().After(deadline) {
			t.Fatal("holder never ran")
		}
		b.Wait()
	}
}

func TestBackoffGrowsToSleep(t *testing.T) {
	var b Backoff
	for i := 0; i < spinRounds+yieldRounds; i++ {
		b.Wait()
	}
	start := time.Now()
	b.Wait()
	if time.Since(start) < time.Microsecond {
		t.Fatal("late rounds should sleep")
	}
	b.Reset()
	if b.round != 0 {
		t.Fatal("Reset did not reset")
	}
}
