package arena

import (
	"fmt"
	"reflect"
	"runtime"

	"github.com/cella-go/cella/internal/ptrfree"
	"github.com/cella-go/cella/memclass"
	"github.com/cella-go/cella/shard"
)

// Config describes an arena.
type Config struct {
	// Slots is the capacity in slots; required, 1 ≤ Slots ≤ MaxSlots.
	// It is reserved address space, not committed memory.
	Slots int
	// Shards is the number of shards: 0 means one per P
	// (runtime.GOMAXPROCS(0) at New); negative is invalid.
	Shards int
	// Class says where the memory lives; the zero value is memclass.Host().
	Class memclass.Class
	// NoZero makes Alloc and AllocWait hand out a recycled slot as its
	// last value left it instead of zeroed (a never-used slot is zero
	// either way). It is for callers that write the whole value right
	// after Alloc: for a large T, zeroing is a pass over the slot that
	// costs about as much as the write (message.Store uses it for Put).
	// Store, StoreWait, Load, View and Update are unaffected.
	NoZero bool
}

// MaxSlots is the largest capacity an arena supports. Up to 2^29-1 slots a
// free slot keeps its freelist link in its state word; larger arenas keep
// links in a region of their own, 4 more bytes per slot (slot.go).
const MaxSlots = shard.MaxSlots

// MaxShards is the largest shard count an arena supports.
const MaxShards = shard.MaxShards

func (c Config) validate() (shards int, err error) {
	switch {
	case c.Slots <= 0:
		return 0, fmt.Errorf("%w: Slots = %d, must be > 0", ErrInvalidConfig, c.Slots)
	case uint64(c.Slots) > MaxSlots:
		return 0, fmt.Errorf("%w: Slots = %d, must be ≤ %d", ErrInvalidConfig, c.Slots, uint64(MaxSlots))
	case c.Shards < 0:
		return 0, fmt.Errorf("%w: Shards = %d, must be ≥ 0 (0 = one per P)", ErrInvalidConfig, c.Shards)
	case c.Shards > MaxShards:
		return 0, fmt.Errorf("%w: Shards = %d, must be ≤ %d", ErrInvalidConfig, c.Shards, MaxShards)
	}
	shards = c.Shards
	if shards == 0 {
		shards = min(runtime.GOMAXPROCS(0), MaxShards)
	}
	return shards, nil
}

// checkPointerFree reports (wrapped ErrPointerType) the first place in t that
// holds a Go pointer, walking nested structs and arrays.
func checkPointerFree(t reflect.Type) error {
	if path, ok := ptrfree.Path(t, t.String()); ok {
		return fmt.Errorf("%w: %s holds a %s", ErrPointerType, path, "Go pointer")
	}
	return nil
}
