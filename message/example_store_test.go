package message_test

import (
	"errors"
	"fmt"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

// frame is a payload too large to copy around: PutFunc fills it in place.
type frame struct {
	N    uint32
	Data [4096]byte
}

func ExampleStore_PutFunc() {
	store, _ := message.NewStore[frame](arena.Config{Slots: 4})
	defer store.Close()

	t, err := store.PutFunc(message.Header{Seq: 1}, func(m *message.Message[frame]) error {
		m.Payload.N = uint32(copy(m.Payload.Data[:], "written in place"))
		return nil
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	store.View(t, func(m *message.Message[frame]) {
		fmt.Println(string(m.Payload.Data[:m.Payload.N]), m.Header.Size)
	})

	// A fill that fails leaves nothing behind: the slot is freed.
	_, err = store.PutFunc(message.Header{}, func(*message.Message[frame]) error {
		return errors.New("sensor offline")
	})
	fmt.Println(err, store.Available())
	store.Free(t)
	// Output:
	// written in place 4100
	// sensor offline 3
}

func ExampleStore_Update() {
	store, _ := message.NewStore[order](arena.Config{Slots: 4})
	defer store.Close()
	t, _ := store.Put(message.Header{}, order{ID: 7, Cents: 1000})

	// Exclusive access, in place: no View or Update of the message runs
	// meanwhile. Reading the same token inside the callback would wait for
	// this Update to end: do not.
	store.Update(t, func(m *message.Message[order]) {
		m.Payload.Cents -= 250
		m.Header.Flags |= message.DegradeAllowed
	})
	store.View(t, func(m *message.Message[order]) {
		fmt.Println(m.Payload.Cents, m.Header.Flags.Has(message.DegradeAllowed))
	})
	store.Free(t)
	// Output:
	// 750 true
}

// After a burst, Trim gives the memory of the free slots back to the OS;
// stale tokens stay stale.
func ExampleStore_Trim() {
	store, _ := message.NewStore[frame](arena.Config{Slots: 256})
	defer store.Close()
	var burst []token.Token
	for i := 0; i < 256; i++ {
		t, _ := store.Put(message.Header{}, frame{N: uint32(i)})
		burst = append(burst, t)
	}
	for _, t := range burst[16:] { // the burst is over: all but 16 go
		store.Free(t)
	}
	released, err := store.Trim()
	fmt.Println(released > 900_000, err)
	_, err = store.Header(burst[100])
	fmt.Println(errors.Is(err, arena.ErrStale))
	for _, t := range burst[:16] {
		store.Free(t)
	}
	// Output:
	// true <nil>
	// true
}
