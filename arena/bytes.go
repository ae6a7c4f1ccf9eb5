package arena

import "unsafe"

// bigValue is the payload size from which Alloc, Store, Load and LoadInto
// clear and copy through byte views instead of typed assignments. The
// compiler puts a typed temporary (`var zero T`, a T copied through a
// register-free path) on the heap once T exceeds 128 KiB, which would be
// one allocation per call; a byte view never allocates. Below this size the
// typed assignment is faster (inline moves, no call). The comparison is
// against unsafe.Sizeof of a type parameter, which the compiler resolves per
// instantiation, so the branch costs nothing.
const bigValue = 4 << 10

// typedCopyMax is the largest payload an optimistic Load copies with a
// typed assignment; past it memmove's wide moves are faster than the
// compiler's unrolled 16-byte ones.
const typedCopyMax = 256

// zeroValue zeroes *v; past bigValue bytes through a byte view, because
// `var zero T` of more than 128 KiB would be put on the heap.
func zeroValue[T any](v *T) {
	if unsafe.Sizeof(*v) > bigValue {
		clearBytes(unsafe.Pointer(v), unsafe.Sizeof(*v))
		return
	}
	var zero T
	*v = zero
}

// clearBytes zeroes n bytes at p.
func clearBytes(p unsafe.Pointer, n uintptr) {
	clear(unsafe.Slice((*byte)(p), n))
}

// copyBytes copies n bytes from src to dst.
func copyBytes(dst, src unsafe.Pointer, n uintptr) {
	copy(unsafe.Slice((*byte)(dst), n), unsafe.Slice((*byte)(src), n))
}
