package arena_test

import (
	"errors"
	"fmt"

	"github.com/cella-go/cella/arena"
)

type Order struct {
	ID    uint64
	Price int64
	Qty   uint32
}

func Example() {
	a, err := arena.New[Order](arena.Config{Slots: 1024})
	if err != nil {
		panic(err)
	}
	defer a.Close()

	tok, _ := a.Store(Order{ID: 7, Price: 1250, Qty: 3})
	_ = a.Update(tok, func(o *Order) { o.Qty++ })
	o, _ := a.Load(tok)
	fmt.Println(o.ID, o.Qty)

	_ = a.Free(tok)
	_, err = a.Load(tok)
	fmt.Println(errors.Is(err, arena.ErrStale))
	// Output:
	// 7 4
	// true
}

func ExampleArena_Alloc() {
	a, _ := arena.New[[64]byte](arena.Config{Slots: 2, Shards: 1})
	defer a.Close()
	t1, buf, _ := a.Alloc() // zeroed, valid until Free
	copy(buf[:], "hello")
	_, _, _ = a.Alloc()
	_, _, err := a.Alloc()
	fmt.Println(string(buf[:5]), errors.Is(err, arena.ErrFull), a.Available())
	_ = a.Free(t1)
	fmt.Println(a.Available())
	// Output:
	// hello true 0
	// 1
}

func ExampleArena_View() {
	a, _ := arena.New[Order](arena.Config{Slots: 8})
	defer a.Close()
	tok, _ := a.Store(Order{ID: 1, Price: 99})
	var total int64
	_ = a.View(tok, func(o *Order) { total += o.Price }) // shared, no copy
	fmt.Println(total)
	// Output: 99
}
