// Quickstart: allocate messages off the Go heap, hand their tokens to other
// goroutines, catch a stale token, and print the arena's stats.
//
//	go run ./examples/quickstart
package main

import (
	"errors"
	"fmt"
	"log"
	"sync"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// Tick is the payload: pointer-free, so it can live off-heap.
type Tick struct {
	Symbol [8]byte
	Price  int64
	Seq    uint64
}

func main() {
	a, err := arena.New[Tick](arena.Config{Slots: 1 << 16}) // 64 Ki slots reserved, none committed
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()
	fmt.Printf("arena: %d slots, class %s, %d shards\n", a.Capacity(), a.Class(), a.Stats().Shards)

	// Producers store ticks and pass only tokens; consumers read and free.
	const producers, perProducer = 4, 10_000
	tokens := make(chan token.Token, 256)
	var prod, cons sync.WaitGroup
	for p := 0; p < producers; p++ {
		prod.Add(1)
		go func(p int) {
			defer prod.Done()
			for i := 0; i < perProducer; i++ {
				t := Tick{Price: int64(100 + i%7), Seq: uint64(p*perProducer + i)}
				copy(t.Symbol[:], "CELLA")
				tok, err := a.Store(t)
				if err != nil {
					log.Fatal(err)
				}
				tokens <- tok
			}
		}(p)
	}
	var sum int64
	var mu sync.Mutex
	for c := 0; c < 2; c++ {
		cons.Add(1)
		go func() {
			defer cons.Done()
			var local int64
			for tok := range tokens {
				if err := a.View(tok, func(t *Tick) { local += t.Price }); err != nil {
					log.Fatal(err)
				}
				if err := a.Free(tok); err != nil { // freed on another goroutine than it was allocated on
					log.Fatal(err)
				}
			}
			mu.Lock()
			sum += local
			mu.Unlock()
		}()
	}
	prod.Wait()
	close(tokens)
	cons.Wait()
	fmt.Printf("moved %d ticks through tokens, price sum %d\n", producers*perProducer, sum)

	// A token outlives its slot: every later use is caught.
	tok, _ := a.Store(Tick{Price: 1})
	_ = a.Free(tok)
	_, err = a.Load(tok)
	fmt.Printf("load after free: %v (stale: %v)\n", err, errors.Is(err, arena.ErrStale))
	next, _ := a.Store(Tick{Price: 2}) // may reuse the same slot, with a new generation
	fmt.Printf("old token %v, new token %v, old still stale: %v\n", tok, next, errors.Is(a.Free(tok), arena.ErrStale))
	_ = a.Free(next)

	st := a.Stats()
	fmt.Printf("stats: allocs=%d frees=%d steals=%d failed=%d live=%d available=%d/%d\n",
		st.Allocs, st.Frees, st.Steals, st.Failed, st.Live, a.Available(), a.Capacity())
}
