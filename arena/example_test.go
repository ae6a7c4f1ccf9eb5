package arena_test

import (
	"errors"
	"fmt"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
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

// LoadInto copies into memory the caller owns: the way to read a value too
// large to return (a T over 128 KiB returned by value costs the caller a
// heap allocation).
func ExampleArena_LoadInto() {
	type image [256 << 10]byte
	a, _ := arena.New[image](arena.Config{Slots: 2})
	defer a.Close()
	tok, img, _ := a.Alloc()
	copy(img[:], "pixels")

	dst := new(image) // reused across calls: no allocation per LoadInto
	if err := a.LoadInto(tok, dst); err != nil {
		panic(err)
	}
	fmt.Println(string(dst[:6]))
	fmt.Println(errors.Is(a.LoadInto(tok, nil), arena.ErrNilPointer))
	// Output:
	// pixels
	// true
}

// After a burst, Trim gives the payload memory of free slots back to the OS.
// Stale tokens stay stale and recycled slots still come back zeroed: the
// slots' metadata is kept apart from the payloads and is not released.
func ExampleArena_Trim() {
	a, _ := arena.New[[4096]byte](arena.Config{Slots: 1024})
	defer a.Close()
	burst := make([]token.Token, 0, 1024)
	for i := 0; i < 1024; i++ {
		tok, p, _ := a.Alloc()
		p[0] = 1 // touch the page
		burst = append(burst, tok)
	}
	for _, tok := range burst[8:] {
		a.Free(tok)
	}
	released, err := a.Trim()
	fmt.Println(released >= 1000*4096, err)
	_, err = a.Load(burst[500])
	fmt.Println(errors.Is(err, arena.ErrStale))
	// Output:
	// true <nil>
	// true
}
