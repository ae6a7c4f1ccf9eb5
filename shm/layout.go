package shm

import (
	"unsafe"

	"github.com/cella-go/cella/internal/atomicx"
)

// The segment, from offset 0:
//
//	header      one page: identity, geometry, offsets, the recovery word
//	records     MaxProcs process records, page-aligned each
//	shards      one 64-byte line per shard: freelist head, frontier, range
//	[Store]     a reference table per record, the edge control blocks
//	slots       page-aligned; each slot starts on a cache line of its own:
//	            its state word (8 bytes), freelist link (4) and, in a
//	            Store, reference count (4), then T; stride = 16 + sizeof(T)
//	            rounded up to 64 bytes (and to T's alignment)
//	[Store]     each edge's rings
//
// A slot's words sit in front of its payload so that a process taking a
// slot over from another pulls one cache line for its link, state word,
// count and the start of the payload (a message's header), not one line
// from each of three arrays and one from the slot.
//
// Every cross-reference is an offset or a slot index: a process maps the
// segment wherever its kernel likes, and nothing in it is a Go pointer.

const (
	magic = 0x4d48534c4c4c4543 // "CELLLSHM" little-endian; written last-but-one by the creator
	// layoutVersion changes whenever the bytes below change meaning.
	layoutVersion = 7

	// MaxProcs is how many processes may have one segment attached at once.
	MaxProcs = 64
	// cacheWays is how many way caches (and section counters) each
	// process record has; a P uses way p % cacheWays.
	cacheWays = 16
	// holdsPerProc bounds the View and Update callbacks one process can have
	// running at once on a segment (further ones wait for a free entry).
	holdsPerProc = 4096

	// MaxEdges bounds StoreConfig.Edges.
	MaxEdges = 64
	// MaxShards bounds Config.Shards.
	MaxShards = 4096
	// MaxSlots bounds Config.Slots: indices and index+1 fit 32 bits.
	MaxSlots = 1<<32 - 2

	pageSize    = 4096
	headerSize  = pageSize
	typeNameLen = 128

	// slotMeta is the size of the words in front of each slot's payload:
	// state (at 0), link (at 8), reference count (at 12, Store only).
	slotMeta = 16
)

// header is the first page of a segment. Its fields are written by the
// creator before ready is set and never change afterwards, except the words
// below the recovery line.
type header struct {
	magic      uint64
	layout     uint32
	ready      uint32 // 1 once the creator finished; read with atomics
	size       uint64 // bytes in the segment
	slotSize   uint64
	slotAlign  uint64
	typeHash   uint64
	typeName   [typeNameLen]byte
	capacity   uint32
	shards     uint32
	maxProcs   uint32
	ways       uint32
	holds      uint32
	_          uint32
	recordsOff uint64
	recordSize uint64
	shardsOff  uint64
	// statesOff, linksOff and refsOff are the offsets of slot 0's state
	// word, link and reference count; slot i's are i strides further.
	// payloadOff is where slot 0 starts (its state word).
	statesOff  uint64
	linksOff   uint64
	payloadOff uint64
	stride     uint64
	// A Store's segment (kind == kindStore) adds a reference count per
	// slot, a reference table per record, and its edges.
	kind      uint32
	edges     uint32
	refsOff   uint64
	tablesOff uint64
	tableLen  uint64 // entries (uint32 counts) per record: the capacity
	edgesOff  uint64 // edgeCtl blocks; their rings follow the payload
	// genBase is the generation a slot gets when first handed out: random
	// per segment, so that a token of another segment is almost surely
	// stale here rather than valid.
	genBase uint32
	_       uint32
	_       [pageSize/2 - 304]byte

	// recovering is 0, or the record index + 1 of the process that is
	// rebuilding the segment after a death. Processes futex-wait on it.
	recovering uint32
	_          uint32
	// recoveries counts completed recoveries.
	recoveries uint64
	// base is what Available subtracts besides the records' net counts:
	// the allocations the last recovery counted, minus the live records'
	// net counts at that moment.
	base int64
	// freeSeq is bumped by every free while freeWaiters > 0: AllocWait
	// and PutWait futex-wait on it.
	freeSeq     uint32
	freeWaiters uint32
	// retired counts the slots whose generation would have wrapped: never
	// handed out again, out of Capacity (recovery recounts them from the
	// state words).
	retired uint32
	_       uint32
	_       [pageSize/2 - 40]byte
}

// record is one process's part of the segment. state and the OFD lock on
// byte lockByte(i) of the segment file say who owns it: a record whose state
// is alive but whose lock byte is free belongs to a dead process.
type record struct {
	state       uint32 // recordFree or recordAlive
	pid         uint32 // for humans: ps, error messages
	incarnation uint64 // bumped each time a process claims the record
	// tableHigh bounds the slots this record ever held Store references
	// to, so that recovery reads no more of its table than that.
	tableHigh uint32
	// freeWaiters is this process's part of header.freeWaiters (awaitFree),
	// which recovery subtracts when the process dies parked.
	freeWaiters uint32
	_           [atomicx.CacheLine - 24]byte
	ways        [cacheWays]way
	// holds lists the slots this process's callbacks hold: 0, or
	// holdRead|holdWrite in the top bits and index+1 in the low 32. Recovery
	// recomputes every slot's reader count and writer bit from the live
	// records' entries, so a dead process's holds simply vanish.
	holds [holdsPerProc]uint64
	// edgeWaiters is this process's part of each edge's recvWaiters and
	// sendWaiters (a Store's edges; unused in a plain Arena), which
	// recovery subtracts when the process dies parked: a count left raised
	// would cost every later send on the edge a wake syscall.
	edgeWaiters [MaxEdges]edgeWaiters
}

// edgeWaiters counts one process's goroutines announced as parked on one
// edge.
type edgeWaiters struct{ recv, send uint32 }

// way is one cache line of a record: the section word and a cache (a chain of free slots).
type way struct {
	// section is net<<16 | open: open counts operations of this way
	// inside a section (recovery waits for it to be 0 on every live record),
	// net counts this way's allocations minus its frees (Available).
	section uint64
	// cache is the head of a chain of free slots (linked through links[]):
	// version<<32 | index+1, or version<<32 when empty. Every change bumps
	// version: pops are ABA-safe, and two equal reads bracket an instant.
	cache uint64
	// moving holds a chain on its way between this cache and a shard's
	// freelist (a flush, or a grab of a whole freelist): the moved list's
	// head word as it was, so version<<32 | index+1, or 0. It is set before
	// the chain leaves where it was and cleared after it arrived, so at
	// every instant each free slot is in a freelist, a cache or a moving
	// word, all of which the ErrFull census reads. One move per way at a
	// time: a second would-be mover skips (a flush) or pops one slot
	// instead (a grab).
	moving uint64
	_      [atomicx.CacheLine - 24]byte
}

// shardLine is one freelist: a tagged Treiber stack of slot indices linked
// through links[], plus a frontier of never-used slots.
type shardLine struct {
	// head is tag<<32 | index+1 (0 when empty); tag grows with each change.
	head     uint64
	frontier uint32 // slots in [frontier, end) were never handed out
	start    uint32
	end      uint32
	_        [atomicx.CacheLine - 20]byte
}

const (
	recordFree  = 0
	recordAlive = 1

	holdRead  = 1 << 62
	holdWrite = 1 << 63

	sectionOpen = 1
	sectionNet  = 1 << 16
)

const (
	kindArena = 0
	kindStore = 1
)

// geometry is the computed placement of every region for a capacity.
type geometry struct {
	capacity, shards uint32
	slotSize, align  uint64
	stride           uint64
	recordsOff       uint64
	recordSize       uint64
	shardsOff        uint64
	statesOff        uint64
	linksOff         uint64
	refsOff          uint64
	tablesOff        uint64
	tableLen         uint64
	edgesOff         uint64
	edges            uint32
	payloadOff       uint64
	ringsOff         uint64 // where the first edge's rings start
	size             uint64
}

// storeShape is what a Store adds to the geometry: the reference table
// length (the capacity) and each edge's lane capacity.
type storeShape struct {
	tableLen uint64
	laneCaps []uint64
}

func roundUp(n, to uint64) uint64 { return (n + to - 1) / to * to }

// layoutFor computes the geometry of a segment; it is a pure function of its
// inputs, so an attaching process recomputes it to check the header.
func layoutFor(capacity, shards uint32, slotSize, align uint64, st *storeShape) geometry {
	g := geometry{capacity: capacity, shards: shards, slotSize: slotSize, align: max(align, 1)}
	g.stride = roundUp(roundUp(slotMeta+max(slotSize, 1), atomicx.CacheLine), g.align)
	g.recordsOff = headerSize
	g.recordSize = roundUp(uint64(unsafe.Sizeof(record{})), pageSize)
	g.shardsOff = g.recordsOff + MaxProcs*g.recordSize
	end := g.shardsOff + uint64(shards)*uint64(unsafe.Sizeof(shardLine{}))
	if st != nil {
		g.tablesOff = roundUp(end, pageSize)
		g.tableLen = st.tableLen
		g.edgesOff = roundUp(g.tablesOff+MaxProcs*4*st.tableLen, pageSize)
		g.edges = uint32(len(st.laneCaps))
		end = g.edgesOff + uint64(len(st.laneCaps))*uint64(unsafe.Sizeof(edgeCtl{}))
	}
	g.payloadOff = roundUp(end, max(pageSize, g.align))
	g.statesOff, g.linksOff = g.payloadOff, g.payloadOff+8
	if st != nil {
		g.refsOff = g.payloadOff + 12
	}
	g.ringsOff = roundUp(g.payloadOff+g.stride*uint64(capacity), pageSize)
	end = g.ringsOff
	if st != nil {
		for _, c := range st.laneCaps {
			end += ringBytes(c)
		}
	}
	g.size = roundUp(end, pageSize)
	return g
}

// ringBytes is the size of one edge's rings: numLanes lanes of laneCap
// entries.
func ringBytes(laneCap uint64) uint64 {
	return roundUp(numLanes*laneCap*uint64(unsafe.Sizeof(ringEntry{})), atomicx.CacheLine)
}

// lockByte is the byte of the segment file whose OFD lock says record i's
// process is alive. Locks do not touch the bytes; any offset works.
func lockByte(i int) int64 { return int64(i) }

// The header is exactly one page, and the structs shared between processes
// have the sizes the layout promises (a compile error otherwise).
var (
	_ [headerSize - unsafe.Sizeof(header{})]byte
	_ [unsafe.Sizeof(header{}) - headerSize]byte
	_ [atomicx.CacheLine - unsafe.Sizeof(way{})]byte
	_ [atomicx.CacheLine - unsafe.Sizeof(shardLine{})]byte
)
