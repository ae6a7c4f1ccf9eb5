package arena

import "sync/atomic"

// Slot layout. A slot is three things, each in a region of its own (the
// state words and versions are two page-aligned parts of one metadata
// mapping):
//
//	payload region:  T at index × sizeof(T)
//	state words:     uint64 state word at index × 8
//	versions:        uint32 version at index × 4, advanced by every Update
//
// Keeping them apart is what lets Trim give memory back without losing a
// guarantee: the state words (generation, holders, freelist link) are never
// released, while the payload and version pages of runs of free slots are
// (a version only has to hold still during one allocation's life, and a
// released page reads as zero). The state words of eight slots share a
// cache line, which keeps the scans of Close, Tokens and Trim dense; the
// price is that the fast path touches two or three lines per slot, not one.
//
// The state word is the only synchronisation a slot has:
//
//	 63                 32   31      30       29       28                 0
//	+---------------------+-------+--------+--------+-------------------+
//	|     generation      | alloc | writer | linked |  readers or link  |
//	+---------------------+-------+--------+--------+-------------------+
//
// A slot that was never used has generation 0 (state 0, or linked). Alloc
// sets alloc and the generation (the arena's first generation for a
// never-used slot). A token is valid while its generation equals the slot's
// and alloc is set.
//
// Free clears alloc and advances the generation in one CAS, so every copy of
// the old token is stale from that instant. If readers or the writer bit are
// set at that moment, the slot is not recycled yet: whoever drops the last
// reader or the writer bit, and sees alloc clear, pushes it to a freelist.
// Exactly one goroutine sees that transition, so a slot is recycled once.
//
// A free slot on a freelist keeps its link (index+1 of the next free slot,
// 0 at the end) in the low 29 bits, with the linked bit set (the shard set
// writes both; see shard.Set.SetLinkFlag). The linked bit is what tells it
// from a freed slot whose callbacks still run (alloc clear, holders set):
// readers never reach 2^29. Links must fit in 29 bits, so an arena of more
// than 2^29-1 slots keeps its links in a part of the metadata of their own,
// 4 bytes per slot, unflagged, and its free slots' low halves stay zero
// (held still reads them right: the linked bit is never set).
// Nothing else writes a free slot's state word (a View or Load of any token
// sees alloc clear and backs off), and Alloc overwrites the link when it
// claims the slot.
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
	readerMask uint64 = 1<<29 - 1
	linkedBit  uint64 = 1 << 29
	writerBit  uint64 = 1 << 30
	allocBit   uint64 = 1 << 31
	genShift          = 32
	holders           = readerMask | writerBit

	// retiredGen is the generation of a retired slot; never issued.
	retiredGen = 1<<32 - 1

	stateSize   = 8
	versionSize = 4

	// maxAlign is the largest payload alignment New accepts (the regions
	// are page aligned, and payloads are packed at T's size).
	maxAlign = 4096
)

func genOf(state uint64) uint32 { return uint32(state >> genShift) }

// held reports whether a View or Update callback holds the slot: readers or
// the writer bit, on a slot that is not on a freelist (whose low half is a
// link, not holders).
func held(state uint64) bool {
	return state&linkedBit == 0 && state&holders != 0
}

// valid reports whether state belongs to a live allocation of generation gen.
func valid(state uint64, gen uint32) bool {
	return state&allocBit != 0 && genOf(state) == gen
}

// blindCAS is a CAS whose expected value was guessed, not loaded: the
// usual state of a slot (live, no holders) when a View takes its hold or a
// Free frees it. On a state word another core wrote last (a consumer
// viewing and freeing what a producer allocated) a load and then a CAS
// fetch the line twice, shared and then for writing; the CAS alone fetches
// it once. A wrong guess costs one failed CAS, after which the caller
// loads the word and goes on as before.
func blindCAS(st *uint64, guess, next uint64) bool {
	return atomic.CompareAndSwapUint64(st, guess, next)
}
