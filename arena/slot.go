package arena

// Slot layout. A slot is its payload, a T in the payload region at
// index × sizeof(T), and 16 bytes of metadata in a region of its own at
// index × 16:
//
//	offset 0   state   uint64  lifecycle word (below)
//	offset 8   link    uint32  freelist link (index+1 of the next free slot)
//	offset 12  version uint32  advanced by every Update (the seqlock below)
//
// Keeping the metadata apart is what lets Trim give a free slot's payload
// pages back to the kernel (they come back zero) without forgetting the
// slot's generation or its place on a freelist, and it packs the state
// words of four slots per cache line for scans (Close, Tokens, Trim). The
// price is a second cache line per slot touched on the fast path.
//
// The state word is the only synchronisation a slot has:
//
//	 63                 32   31      30      29                         0
//	+---------------------+-------+--------+----------------------------+
//	|     generation      | alloc | writer |          readers           |
//	+---------------------+-------+--------+----------------------------+
//
// A slot that was never used has state 0. Alloc sets alloc and keeps the
// generation (the arena's first generation for a never-used slot). A token
// is valid while its generation equals the slot's and alloc is set.
//
// Free clears alloc and advances the generation in one CAS, so every copy of
// the old token is stale from that instant. If readers or the writer bit are
// set at that moment, the slot is not recycled yet: whoever drops the last
// reader or the writer bit, and sees alloc clear, pushes it to a freelist.
// Exactly one goroutine sees that transition, so a slot is recycled once.
//
// Load takes no hold: it reads the state word (valid, no writer) and the
// version, copies the payload, and reads both again; if the generation,
// the alloc or writer bit, or the version changed, it copies again. A
// writer sets the writer bit before it writes and advances the version
// before it clears the bit, so a copy that overlapped any write sees one of
// the two change. So Load writes nothing to shared memory and never returns
// a torn value; the version is 32 bits, so a copy would have to be stalled
// across 2^32 Updates of its slot to be fooled.
//
// A slot whose generation would reach 2^32-1 on Free is retired instead: its
// generation is set to 2^32-1, which no token carries, and it is never pushed
// to a freelist again. So no token can ever match a slot a second time.
const (
	readerMask uint64 = 1<<30 - 1
	writerBit  uint64 = 1 << 30
	allocBit   uint64 = 1 << 31
	genShift          = 32
	holders           = readerMask | writerBit

	// retiredGen is the generation of a retired slot; never issued.
	retiredGen = 1<<32 - 1

	metaSize      = 16
	linkOffset    = 8
	versionOffset = 12

	// maxAlign is the largest payload alignment New accepts (the regions
	// are page aligned, and payloads are packed at T's size).
	maxAlign = 4096
)

func genOf(state uint64) uint32 { return uint32(state >> genShift) }

// valid reports whether state belongs to a live allocation of generation gen.
func valid(state uint64, gen uint32) bool {
	return state&allocBit != 0 && genOf(state) == gen
}
