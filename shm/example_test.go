package shm_test

import (
	"errors"
	"fmt"
	"os"

	"github.com/cella-go/cella/shm"
	"github.com/cella-go/cella/token"
)

type Order struct {
	ID    uint64
	Price int64
	Qty   uint32
}

func ExampleCreate() {
	dir, _ := os.MkdirTemp("", "cella-example") // "" (DefaultDir, /dev/shm) in production
	defer os.RemoveAll(dir)

	// One process creates the segment...
	producer, err := shm.Create[Order]("orders", shm.Config{Slots: 1024, Dir: dir})
	if err != nil {
		panic(err)
	}
	defer producer.Close()
	// ...another attaches to it by name (here: a second handle, which
	// behaves like a second process).
	consumer, err := shm.Attach[Order]("orders", shm.Config{Dir: dir})
	if err != nil {
		panic(err)
	}
	defer consumer.Close()

	tok, _ := producer.Store(Order{ID: 7, Price: 1250, Qty: 3})
	// The token is a plain uint64: send it over a pipe, a socket, or put
	// it in another slot. The receiver adopts the allocation, so that it
	// survives the producer's death and is freed if the consumer dies.
	wire := uint64(tok)
	got := token.Token(wire)
	_ = consumer.Adopt(got)
	o, _ := consumer.Load(got)
	fmt.Println(o.ID, o.Price, o.Qty)

	_ = consumer.Free(got)
	_, err = producer.Load(tok)
	fmt.Println(errors.Is(err, shm.ErrStale))
	// Output:
	// 7 1250 3
	// true
}

func ExampleArena_View() {
	dir, _ := os.MkdirTemp("", "cella-example")
	defer os.RemoveAll(dir)
	a, _ := shm.Create[Order]("book", shm.Config{Slots: 16, Dir: dir})
	defer a.Close()
	b, _ := shm.Attach[Order]("book", shm.Config{Dir: dir})
	defer b.Close()

	tok, _ := a.Store(Order{ID: 1, Qty: 10})
	// Update is exclusive across every process; View is shared.
	_ = b.Update(tok, func(o *Order) { o.Qty -= 4 })
	_ = a.View(tok, func(o *Order) { fmt.Println("qty", o.Qty) })

	// Free while a View holds the slot: the token is stale at once, the
	// slot is reused only after the View returns.
	_ = a.View(tok, func(o *Order) {
		fmt.Println(b.Free(tok), o.Qty)
	})
	fmt.Println(errors.Is(a.View(tok, func(*Order) {}), shm.ErrStale))
	// Output:
	// qty 6
	// <nil> 6
	// true
}

func ExampleAttach() {
	dir, _ := os.MkdirTemp("", "cella-example")
	defer os.RemoveAll(dir)

	_, err := shm.Attach[Order]("missing", shm.Config{Dir: dir})
	fmt.Println(errors.Is(err, shm.ErrNotExist))

	a, _ := shm.Create[Order]("orders", shm.Config{Slots: 8, Dir: dir})
	defer a.Close()
	// The segment remembers its payload type: another T is refused.
	_, err = shm.Attach[[3]uint64]("orders", shm.Config{Dir: dir})
	fmt.Println(errors.Is(err, shm.ErrMismatch))
	// Output:
	// true
	// true
}

func ExampleArena_Recover() {
	dir, _ := os.MkdirTemp("", "cella-example")
	defer os.RemoveAll(dir)
	// Watch < 0: no watcher goroutine; this process calls Recover itself.
	a, _ := shm.Create[Order]("orders", shm.Config{Slots: 8, Dir: dir, Watch: -1})
	defer a.Close()

	// With every attached process alive there is nothing to clean up.
	// After a crash, Recover frees what the dead process owned and drops
	// the holds it left.
	rep, err := a.Recover()
	fmt.Printf("%+v %v\n", rep, err)
	// Output:
	// {Dead:0 Reclaimed:0 Holds:0} <nil>
}
