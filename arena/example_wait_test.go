package arena_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// AllocWait gives back-pressure that waits: a full arena parks the caller
// until a Free makes room, its context is done, or the arena is closed.
func ExampleArena_AllocWait() {
	a, _ := arena.New[Order](arena.Config{Slots: 1})
	defer a.Close()
	held, _ := a.Store(Order{ID: 1}) // the arena is full now

	go func() {
		time.Sleep(10 * time.Millisecond) // a consumer finishes with its order
		_ = a.Free(held)
	}()
	tok, o, err := a.AllocWait(context.Background()) // parks until the Free
	fmt.Println(err, o.ID, tok.Index() == held.Index())

	// Full again: StoreWait gives up when its context does.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	_, err = a.StoreWait(ctx, Order{ID: 2})
	fmt.Println(errors.Is(err, context.DeadlineExceeded))
	// Output:
	// <nil> 0 true
	// true
}

// Tokens walks the live allocations: here a leak report at the end of a
// test, then the clean-up.
func ExampleArena_Tokens() {
	a, _ := arena.New[Order](arena.Config{Slots: 16, Shards: 1})
	defer a.Close()
	var toks []token.Token
	for id := uint64(1); id <= 4; id++ {
		tok, _ := a.Store(Order{ID: id})
		toks = append(toks, tok)
	}
	for _, i := range []int{1, 3} { // orders 2 and 4 are done with
		_ = a.Free(toks[i])
	}

	for tok := range a.Tokens() {
		o, _ := a.Load(tok)
		fmt.Println("still live: order", o.ID)
		_ = a.Free(tok) // freeing the yielded token is fine
	}
	fmt.Println(a.Available() == a.Capacity())
	// Output:
	// still live: order 1
	// still live: order 3
	// true
}
