package bench

import (
	"strconv"
	"unsafe"
)

// The payload types of the suite. They are plain arrays of numbers, so
// that every implementation (the off-heap arena included) can hold them, of
// exactly the size in the benchmark name.
//
// They are uint64 arrays, 8-byte aligned like a real message struct, not
// byte arrays. The Go compiler places a [N]byte local at any byte address,
// and it zeroes and copies large values with REP STOSQ / REP MOVSQ, which
// at an odd address run several times slower on the build machine: with
// P4K a [4096]byte, BenchmarkMessageFanOut's 4 KiB case took 1.63 µs per
// message for cella-edge because its "var v T" happened to sit at an odd
// address (47 mod 64), and 0.82 µs once aligned, while BenchmarkHop's v sat
// at 56 mod 64 and did not move (5 alternating runs, benchstat). A by-value
// benchmark measured where the compiler put a local, not the transport.
type (
	// P16 is a 16-byte payload.
	P16 [16 / 8]uint64
	// P64 is a 64-byte payload, the size of a small message.
	P64 [64 / 8]uint64
	// P1K is a 1 KiB payload.
	P1K [1 << 10 / 8]uint64
	// P4K is a 4 KiB payload (the message fan-out's large case).
	P4K [4 << 10 / 8]uint64
	// P16K is a 16 KiB payload.
	P16K [16 << 10 / 8]uint64
)

// Msg64 is the 64-byte message of the GC headline: a small header and a
// body, no Go pointers.
type Msg64 struct {
	Trace, Seq uint64
	Created    int64
	Size       uint32
	Flags      uint32
	Body       [32]byte
}

// stamp writes v into the first and the last word of *p. Every benchmark
// writes its payload through stamp, so the compiler cannot drop the write and
// the payload's cache lines are really touched (first and last line for the
// big payloads). All payload types are at least 16 bytes long.
func stamp[T any](p *T, v uint64) {
	n := unsafe.Sizeof(*p)
	*(*uint64)(unsafe.Pointer(p)) = v
	*(*uint64)(unsafe.Add(unsafe.Pointer(p), n-8)) = v
}

// first reads back the word written by stamp.
func first[T any](p *T) uint64 { return *(*uint64)(unsafe.Pointer(p)) }

// sizeName is the payload part of a benchmark name ("payload=64").
func sizeName[T any]() string {
	var z T
	return "payload=" + strconv.Itoa(int(unsafe.Sizeof(z)))
}
