package arena_test

import (
	"errors"
	"sync"
	"testing"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/memclass"
)

// Issue 11 item 6: Residency racing Close must be neither a data race (run
// under -race) nor a fault, and must report either a residency or ErrClosed.
func TestResidencyRacingClose(t *testing.T) {
	for round := 0; round < 20; round++ {
		for _, class := range []memclass.Class{memclass.Host(), memclass.PerNode()} {
			a, err := arena.New[[64]byte](arena.Config{Slots: 4096, Class: class})
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 64; i++ {
				if _, _, err := a.Alloc(); err != nil {
					t.Fatal(err)
				}
			}
			var wg sync.WaitGroup
			start := make(chan struct{})
			for g := 0; g < 2; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					for {
						_, err := a.Residency()
						if errors.Is(err, arena.ErrClosed) {
							return
						}
						// A call that raced Close may see the pages gone:
						// any error but a fault is acceptable then.
					}
				}()
			}
			close(start)
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			wg.Wait()
		}
	}
}
