package arena

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"os"
	"reflect"
	"runtime"
	"sync/atomic"
	"unsafe"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/memclass"
	"github.com/cella-go/cella/shard"
	"github.com/cella-go/cella/token"
)

// Arena is a fixed-capacity store of T values in off-heap memory, handed out
// as generation-checked tokens. All methods are safe for concurrent use.
//
// The methods that do not depend on T (Free, Capacity, Available, Class,
// Stats, Close, Nodes, Residency) belong to the embedded engine and are
// promoted to Arena.
type Arena[T any] struct {
	core
}

// core is everything about an arena that does not depend on T: slots as
// indices and bytes, the shards, the state words, the counters. Keeping it
// out of the generic type lets the compiler inline its hot paths (calls made
// inside a generic instantiation's body are not inlined); Arena[T] adds the
// typed copies on top.
type core struct {
	// Read on every call; written only by New and Close.
	gate     shard.Gate // by value: one pointer hop less on every call
	set      *shard.Set
	base     unsafe.Pointer // slot 0's payload
	states   unsafe.Pointer // slot 0's state word (slot.go)
	versions unsafe.Pointer // slot 0's version (slot.go)
	stride   uintptr        // payload bytes per slot: T's size
	slots    uint32
	firstGen uint32         // generation of a never-used slot
	noZero   bool           // Config.NoZero: Alloc leaves a recycled slot as it is
	perP     unsafe.Pointer // nP pCounters, off-heap
	nP       int

	class    memclass.Class
	nodes    *nodeLayout      // per-node arenas only
	region   *memclass.Region // the payloads
	regionRO memclass.Region  // a copy of *region that Unmap never clears, for Residency (pernode.go)
	meta     metaRegions      // the state words, versions (and links) (slot.go)
	counters *memclass.Region // the per-P counters

	_       atomicx.Pad
	spill   spillCounters // for P ids ≥ nP and for the purego build
	retired atomic.Uint64
	final   atomic.Pointer[Stats] // published by Close
	trim    trimState             // Trim's lock and scratch (trim.go)

	waitq waitQueue // goroutines parked in AllocWait/StoreWait (wait.go)
}

// New reserves an arena of cfg.Slots slots of T. It commits no memory: a
// slot's page becomes resident when the slot is first used. T must hold no Go
// pointers (ErrPointerType).
func New[T any](cfg Config) (*Arena[T], error) {
	return newArena[T](cfg, 0)
}

// newArena is New with a chosen first generation (0 = random); tests use it to
// start slots near the generation wrap.
func newArena[T any](cfg Config, firstGen uint32) (*Arena[T], error) {
	shards, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	typ := reflect.TypeFor[T]()
	if err := checkPointerFree(typ); err != nil {
		return nil, err
	}
	if typ.Align() > maxAlign {
		return nil, fmt.Errorf("%w: %s needs %d-byte alignment, at most %d is supported",
			ErrInvalidConfig, typ, typ.Align(), maxAlign)
	}
	// Payloads are packed at T's own size (a multiple of its alignment);
	// the slots' metadata lives in a region of its own (slot.go).
	stride := typ.Size()
	hi, total := bits.Mul64(uint64(cfg.Slots), uint64(stride+stateSize+versionSize))
	if hi != 0 || total > 1<<47 {
		return nil, fmt.Errorf("%w: Slots = %d of %d-byte %s needs more address space than the machine has",
			ErrInvalidConfig, cfg.Slots, stride, typ)
	}
	payloadBytes := max(uintptr(cfg.Slots)*stride, 1) // a zero-size T still gets a mapping
	var (
		region *memclass.Region
		layout *nodeLayout
	)
	if cfg.Class.IsPerNode() {
		if layout, err = planNodes(cfg, shards, stride); err == nil {
			region, err = memclass.MapNodes(cfg.Class, layout.nodes, layout.sizes)
		}
	} else {
		region, err = memclass.Map(cfg.Class, payloadBytes)
	}
	if err != nil {
		return nil, fmt.Errorf("arena: reserving %d slots of %s: %w", cfg.Slots, typ, err)
	}
	meta, err := mapMeta(cfg.Class, cfg.Slots)
	if err != nil {
		region.Unmap()
		return nil, err
	}
	nP := min(max(runtime.GOMAXPROCS(0), runtime.NumCPU()), maxCachedPs)
	counters, err := memclass.Map(memclass.Host(), uintptr(nP)*unsafe.Sizeof(pCounters{}))
	if err != nil {
		region.Unmap()
		meta.unmap()
		return nil, fmt.Errorf("arena: mapping per-P counters: %w", err)
	}
	if firstGen == 0 {
		// A random first generation per arena makes a token from another
		// arena fail its generation check with high probability.
		firstGen = 1 + rand.Uint32N(1<<30)
	}
	a := &Arena[T]{core: core{
		set:      newSet(cfg, shards, layout, meta.links, meta.linkStride),
		base:     region.Base(),
		states:   meta.states,
		versions: meta.versions,
		stride:   stride,
		slots:    uint32(cfg.Slots),
		firstGen: firstGen,
		noZero:   cfg.NoZero,
		perP:     counters.Base(),
		nP:       nP,
		class:    cfg.Class,
		nodes:    layout,
		region:   region,
		meta:     meta,
		counters: counters,
	}}
	a.set.SetLinkFlag(meta.linkFlag)
	a.set.SetFreshFirst(freshFirst(stride))
	a.regionRO = *region
	a.gate.Init()
	return a, nil
}

// freshBudget is how much slot memory a shard hands out never-used before
// it reuses the slots other Ps freed onto their shards ahead of its own
// (shard.Set.SetFreshFirst): a working set of up to a fraction of a
// core's L2 per shard, so that a freed slot's lines have time to leave the
// core that freed them before another core writes them again, and a bound
// on what a stream ever touches. Measured on the build machine with the
// 3-stage 64-byte message pipeline of 4096 slots (BenchmarkMessagePipeline,
// saturated): recycling from the first slot made it 9-12% slower than
// taking every never-used slot first, and letting each shard use 2048 (its
// whole range; this budget is 2520 of those 104-byte slots) gave that speed
// back. A 4 KiB slot gets 64: it costs a page fault when first touched, and
// reusing it soon made the 4 KiB hop 54% faster in 100 ms runs (a fresh
// store each) and 6% in 300 ms ones.
const freshBudget = 256 << 10

// freshFirst is freshBudget in slots of stride bytes, at least a steal's
// worth (64).
func freshFirst(stride uintptr) uint32 {
	return uint32(max(64, freshBudget/max(stride, 1)))
}

func newSet(cfg Config, shards int, layout *nodeLayout, links unsafe.Pointer, stride uintptr) *shard.Set {
	if layout != nil {
		return layout.newSet(links, stride)
	}
	return shard.New(uint32(cfg.Slots), shards, links, stride)
}

// metaRegions is the slots' metadata (slot.go): one mapping holding, each
// part page aligned so that Trim can release pages of one part alone, the
// state words, the versions and, for arenas too large for links in the
// state words, the freelist links.
type metaRegions struct {
	rgn              *memclass.Region
	states, versions unsafe.Pointer
	// links is where the shard set keeps freelist links, linkStride apart,
	// with linkFlag ORed in: the low halves of the state words, flagged
	// linked, for arenas of at most maxLinkedSlots; else a part of its
	// own, unflagged.
	links      unsafe.Pointer
	linkStride uintptr
	linkFlag   uint32
}

// maxLinkedSlots is the largest arena whose freelist links fit in the state
// words: index+1 must stay below the linked bit.
const maxLinkedSlots = int(linkedBit) - 1

// mapMeta maps the metadata of an arena of slots slots.
func mapMeta(class memclass.Class, slots int) (m metaRegions, err error) {
	page := uintptr(os.Getpagesize())
	part := func(bytes uintptr) uintptr { return (bytes + page - 1) &^ (page - 1) }
	n := uintptr(slots)
	size := part(n*stateSize) + part(n*versionSize)
	wide := slots > maxLinkedSlots
	if wide {
		size += part(n * 4)
	}
	if m.rgn, err = memclass.Map(metaClass(class), size); err != nil {
		return m, fmt.Errorf("arena: reserving the metadata of %d slots: %w", slots, err)
	}
	m.states = m.rgn.Base()
	m.versions = unsafe.Add(m.states, part(n*stateSize))
	if !wide {
		m.links, m.linkStride, m.linkFlag = unsafe.Add(m.states, linkOffset()), stateSize, uint32(linkedBit)
		return m, nil
	}
	m.links, m.linkStride = unsafe.Add(m.versions, part(n*versionSize)), 4
	return m, nil
}

// unmap unmaps the metadata.
func (m metaRegions) unmap() error { return m.rgn.Unmap() }

// linkOffset is where the low half of a state word lives, the half that
// holds a free slot's freelist link: byte 0 on little-endian machines, byte
// 4 on big-endian ones.
func linkOffset() uintptr {
	x := uint64(1)
	if *(*byte)(unsafe.Pointer(&x)) == 1 {
		return 0
	}
	return 4
}

// metaClass is the class of the metadata regions: the payload's placement
// and locking, but never hugetlb pages (the region is small, and reserved
// huge pages are scarce), never a provider's memory (which may not take
// atomics), and for per-node arenas plain host memory, first touched by the
// goroutines that allocate there, which are mostly on the slot's node.
func metaClass(c memclass.Class) memclass.Class {
	switch c.Kind() {
	case memclass.KindPerNode, memclass.KindDevice, memclass.KindPinnedHost, memclass.KindShared:
	default:
		if !c.HugeTLB() {
			return c
		}
	}
	m := memclass.Host()
	if c.IsLocked() {
		m = m.Locked()
	}
	if c.IsPrefault() {
		m = m.Prefault()
	}
	if !c.IsStrict() {
		m = m.BestEffort() // as the payload: a lock the machine refuses is skipped
	}
	return m
}

// state returns slot idx's state word.
func (c *core) state(idx uint32) *uint64 {
	return (*uint64)(unsafe.Add(c.states, uintptr(idx)*stateSize))
}

// version returns slot idx's version word, advanced by every Update.
func (c *core) version(idx uint32) *uint32 {
	return (*uint32)(unsafe.Add(c.versions, uintptr(idx)*versionSize))
}

// payload returns slot idx's value.
func (a *Arena[T]) payload(idx uint32) *T {
	return (*T)(a.slot(idx))
}

// slot returns the first byte of slot idx's payload.
func (c *core) slot(idx uint32) unsafe.Pointer {
	return unsafe.Add(c.base, uintptr(idx)*c.stride)
}

// check splits t and reports whether it could have been issued by an arena
// of this size. It touches no memory.
func (c *core) check(t token.Token) (idx, gen uint32, ok bool) {
	idx, gen = t.Index(), t.Generation()
	return idx, gen, gen != 0 && gen != retiredGen && idx < c.slots
}

func (c *core) badToken(op string, t token.Token) error {
	if c.gate.Closed() { // after Close, every call says closed
		return ErrClosed
	}
	return &tokenError{err: ErrBadToken, op: op, t: t, slots: c.slots}
}

// nilFunc is the error for a nil View or Update callback.
func (c *core) nilFunc(op string, t token.Token) error {
	if c.gate.Closed() {
		return ErrClosed
	}
	return &tokenError{err: ErrNilFunc, op: op, t: t}
}

// nilDst is the error for LoadInto into a nil pointer.
func (c *core) nilDst(t token.Token) error {
	if c.gate.Closed() {
		return ErrClosed
	}
	return &tokenError{err: ErrNilPointer, op: "LoadInto", t: t}
}

func staleToken(op string, t token.Token) error {
	return &tokenError{err: ErrStale, op: op, t: t}
}

// Capacity returns how many slots the arena can hold at once: the configured
// slots less any retired at generation wrap.
func (c *core) Capacity() int {
	return int(uint64(c.slots) - c.retired.Load())
}

// Class returns the memory class the arena was made with.
func (c *core) Class() memclass.Class { return c.class }
