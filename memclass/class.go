package memclass

// kind says which placement policy a Class applies.
type kind uint8

const (
	kindHost kind = iota // no policy: the kernel's default (first touch)
)

// Class is an immutable placement choice for an arena's memory. The zero
// value is Host().
type Class struct {
	kind kind
}

// Host returns the class of plain anonymous private memory with no placement
// policy: pages land wherever the kernel's default policy puts them (usually
// the node of the CPU that first touches them).
func Host() Class { return Class{kind: kindHost} }

// String returns a short readable name, for example "host".
func (c Class) String() string {
	switch c.kind {
	case kindHost:
		return "host"
	}
	return "unknown"
}
