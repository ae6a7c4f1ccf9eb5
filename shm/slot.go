package shm

// A slot's state word (8 bytes, in the segment):
//
//	bits  0-31  generation: the one its live token carries; bumped by Free
//	bit     32  live: allocated
//	bit     33  writer: an Update callback holds the slot
//	bit     34  pending: freed while held; the last release recycles it
//	bit     35  retired: its generation would wrap; never handed out again
//	bits 36-43  owner: record index + 1 of the process that answers for the
//	            allocation if it dies (0: none, after the owner closed)
//	bits 44-63  readers: View callbacks and Loads holding the slot
//
// A word of 0 is a slot that was never handed out (generation 0 is never
// issued: a token's generation is ≥ 1, so the Nil token is never valid).
const (
	genMask     = 1<<32 - 1
	liveBit     = 1 << 32
	writerBit   = 1 << 33
	pendingBit  = 1 << 34
	retiredBit  = 1 << 35
	ownerShift  = 36
	ownerMask   = 0xff << ownerShift
	readerShift = 44
	readerOne   = 1 << readerShift
	maxReaders  = 1<<20 - 1
)

func genOf(s uint64) uint32            { return uint32(s & genMask) }
func readersOf(s uint64) uint64        { return s >> readerShift }
func ownerOf(s uint64) int             { return int(s&ownerMask>>ownerShift) - 1 }
func ownerBits(rec int) uint64         { return uint64(rec+1) << ownerShift }
func held(s uint64) bool               { return s&writerBit != 0 || readersOf(s) != 0 }
func liveAs(s uint64, gen uint32) bool { return s&liveBit != 0 && genOf(s) == gen }

// freed returns the state after freeing s: next generation, not live, no
// owner; pending if it is still held, retired if the generation would wrap.
func freed(s uint64) uint64 {
	n := s &^ (liveBit | ownerMask | genMask)
	if g := genOf(s); g == genMask {
		n |= genMask | retiredBit
	} else {
		n |= uint64(g + 1)
	}
	if held(n) {
		n |= pendingBit
	}
	return n
}

// reusable reports whether a slot in state s belongs on a freelist.
func reusable(s uint64) bool { return s&(liveBit|pendingBit|retiredBit) == 0 && !held(s) }
