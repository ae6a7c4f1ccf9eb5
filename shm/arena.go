package shm

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cella-go/cella/internal/ptrfree"
	"github.com/cella-go/cella/shard"
	"golang.org/x/sys/unix"
)

// Config describes a shared arena at Create. Attach takes the geometry from
// the segment and uses only Dir and Watch.
type Config struct {
	// Slots is the capacity; required, 1 ≤ Slots ≤ MaxSlots.
	Slots int
	// Shards is how many freelists the segment has; 0 means 16. Each
	// process's Ps start at different shards and steal from the others.
	Shards int
	// Dir is the directory of the segment file; "" means DefaultDir.
	Dir string
	// Perm is the file mode of a new segment; 0 means 0600.
	Perm os.FileMode
	// Watch is how often this process checks the others for death and
	// recovers after them; 0 means 100ms, negative means never (call
	// Recover yourself).
	Watch time.Duration
}

const (
	defaultShards = 16
	defaultWatch  = 100 * time.Millisecond
)

// Arena is one process's handle on a shared arena of T. It has the methods
// of arena.Arena, with the same guarantees across every process attached.
type Arena[T any] struct {
	*seg
}

// seg is a process's handle on a mapped segment: everything that does not
// depend on the payload type (the Store and its edges use it too).
type seg struct {
	path string
	anon bool     // a memfd: no name in the file system, nothing to remove
	file *os.File // our own open file description: its OFD lock is our liveness
	mem  []byte
	base unsafe.Pointer

	hdr      *header
	me       int // our record index
	rec      *record
	capacity uint32
	shards   uint32
	stride   uintptr
	states   unsafe.Pointer
	links    unsafe.Pointer
	shardsAt unsafe.Pointer
	recsAt   unsafe.Pointer
	recSize  uintptr
	payload  unsafe.Pointer
	store    *storeCore // nil for a plain Arena

	gate   shard.Gate
	closed atomic.Bool
	// cacheLen counts, roughly, the slots gathered in each way's cache
	// since its last flush (thieves do not tell it what they took).
	cacheLen [cacheWays]atomic.Int32
	// parked counts goroutines of this process that use the mapping outside
	// any section: asleep on a futex word, or checking for dead processes
	// between two attempts. Close waits for it to drop to 0.
	parked atomic.Int32
	holds  holdTable
	stats  stats

	watchStop chan struct{}
	watchDone chan struct{}
	closeMu   sync.Mutex
	recoverMu sync.Mutex
}

// Create makes a new segment called name for slots of T and attaches this
// process to it. A segment of that name left by processes that all died is
// found, removed and made again; one that a live process uses is
// ErrExists.
func Create[T any](name string, cfg Config) (*Arena[T], error) {
	typ := reflect.TypeFor[T]()
	if cfg.Slots <= 0 || uint64(cfg.Slots) > MaxSlots {
		return nil, fmt.Errorf("%w: Slots = %d, must be in [1, %d]", ErrInvalidConfig, cfg.Slots, uint64(MaxSlots))
	}
	s, err := createSeg(name, segSpec{typ: typ, kind: kindArena, slots: cfg.Slots, shards: cfg.Shards,
		dir: cfg.Dir, perm: cfg.Perm, watch: cfg.Watch})
	if err != nil {
		return nil, err
	}
	return &Arena[T]{s}, nil
}

// Attach attaches this process to the segment called name, made by Create
// for the same T (same fields, offsets, size and alignment). Only cfg.Dir
// and cfg.Watch are used.
func Attach[T any](name string, cfg Config) (*Arena[T], error) {
	s, err := attachSeg(name, reflect.TypeFor[T](), kindArena, cfg.Dir, cfg.Watch)
	if err != nil {
		return nil, err
	}
	return &Arena[T]{s}, nil
}

// segSpec is what createSeg needs: the payload type and the geometry's
// inputs, plus, for a Store, its shape and a hook that initialises its
// part of the segment.
type segSpec struct {
	typ           reflect.Type
	kind          uint32
	slots, shards int
	store         *storeShape
	init          func(*seg, geometry)
	memfd         bool // an anonymous, sealed memory file instead of a file under dir
	dir           string
	perm          os.FileMode
	watch         time.Duration
}

func createSeg(name string, sp segSpec) (*seg, error) {
	if path, ok := ptrfree.Path(sp.typ, sp.typ.String()); ok {
		return nil, fmt.Errorf("%w: %s holds a Go pointer", ErrPointerType, path)
	}
	if sp.shards < 0 || sp.shards > MaxShards {
		return nil, fmt.Errorf("%w: Shards = %d, must be in [0, %d]", ErrInvalidConfig, sp.shards, MaxShards)
	}
	shards := sp.shards
	if shards == 0 {
		shards = defaultShards
	}
	shards = min(shards, sp.slots)
	path, err := segmentPath(sp.dir, name)
	if err != nil {
		return nil, err
	}
	g := layoutFor(uint32(sp.slots), uint32(shards), uint64(sp.typ.Size()), uint64(sp.typ.Align()), sp.store)
	if sp.memfd {
		f, err := memfdCreate(filePrefix + name)
		if err != nil {
			return nil, err
		}
		return initSeg("memfd:"+filePrefix+name, f, g, sp)
	}
	perm := sp.perm
	if perm == 0 {
		perm = 0o600
	}
	for range 8 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, perm)
		if err == nil {
			a, err := initSeg(path, f, g, sp)
			if errors.Is(err, errRemoved) {
				continue // a racing Create took our empty file for a dead creator's
			}
			return a, err
		}
		if !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("shm: create %s: %w", path, err)
		}
		if err := removeStale(path); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%w: %s keeps coming back", ErrExists, path)
}

// errRemoved means the file createSeg made was removed before initSeg took
// its flock: in between, a racing Create's removeStale found it empty,
// took it for a dead creator's and removed it. createSeg tries again.
var errRemoved = errors.New("shm: new segment file removed by a racing Create")

// initSeg initialises a segment in the new, empty file f.
func initSeg(path string, f *os.File, g geometry, sp segSpec) (*seg, error) {
	fail := func(err error) (*seg, error) {
		if !sp.memfd {
			_ = os.Remove(path)
		}
		_ = f.Close()
		return nil, err
	}
	if err := flockFile(f, unix.LOCK_EX); err != nil {
		return fail(fmt.Errorf("shm: lock %s: %w", path, err))
	}
	if !sp.memfd && !sameFile(f, path) {
		_ = f.Close() // path is no longer ours: do not remove it
		return nil, errRemoved
	}
	if err := f.Truncate(int64(g.size)); err != nil {
		return fail(fmt.Errorf("shm: size %s to %d bytes: %w", path, g.size, err))
	}
	if sp.memfd {
		if err := seal(f); err != nil {
			return fail(err)
		}
	}
	mem, err := mapFile(f, g.size)
	if err != nil {
		return fail(err)
	}
	a := newSeg(path, f, mem)
	a.anon = sp.memfd
	h := a.hdr
	h.layout = layoutVersion
	h.size = g.size
	h.slotSize, h.slotAlign = g.slotSize, g.align
	h.typeHash = fingerprint(sp.typ)
	copy(h.typeName[:], sp.typ.String())
	h.capacity, h.shards = g.capacity, g.shards
	h.maxProcs, h.ways, h.holds = MaxProcs, cacheWays, holdsPerProc
	h.recordsOff, h.recordSize = g.recordsOff, g.recordSize
	h.shardsOff, h.statesOff, h.linksOff, h.payloadOff = g.shardsOff, g.statesOff, g.linksOff, g.payloadOff
	h.stride = g.stride
	h.kind, h.edges = sp.kind, g.edges
	h.refsOff, h.tablesOff, h.tableLen, h.edgesOff = g.refsOff, g.tablesOff, g.tableLen, g.edgesOff
	h.genBase = 1 + rand.Uint32N(1<<30)
	h.magic = magic
	a.bind()
	for i := uint32(0); i < g.shards; i++ {
		s := a.shard(i)
		s.start, s.end = span(g.capacity, g.shards, i)
		s.frontier = s.start
	}
	if sp.init != nil {
		sp.init(a, g)
	}
	atomic.StoreUint32(&h.ready, 1)
	if err := a.claimRecord(); err != nil {
		_ = unix.Munmap(mem)
		return fail(err)
	}
	_ = flockFile(f, unix.LOCK_UN)
	a.start(sp.watch)
	return a, nil
}

// removeStale removes the segment at path if no live process has it
// attached (every process died, or its creator died half-way).
func removeStale(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil // gone meanwhile: try to create again
	}
	if err != nil {
		return fmt.Errorf("shm: open existing %s: %w", path, err)
	}
	defer f.Close()
	if err := flockFile(f, unix.LOCK_EX); err != nil {
		return fmt.Errorf("shm: lock %s: %w", path, err)
	}
	defer flockFile(f, unix.LOCK_UN)
	if !sameFile(f, path) {
		return nil
	}
	if inUse(f) {
		return fmt.Errorf("%w: %s", ErrExists, path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("shm: remove stale %s: %w", path, err)
	}
	return nil
}

// inUse reports whether the segment in f (flocked by the caller) is ready
// and has a record whose process is alive.
func inUse(f *os.File) bool {
	var h header
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&h)), headerSize)
	if n, _ := f.ReadAt(buf, 0); n < headerSize || h.magic != magic || h.ready != 1 {
		return false // the creator died before finishing it
	}
	for i := range MaxProcs {
		if recordLocked(f, i) {
			return true
		}
	}
	return false
}

func attachSeg(name string, typ reflect.Type, kind uint32, dir string, watch time.Duration) (*seg, error) {
	if path, ok := ptrfree.Path(typ, typ.String()); ok {
		return nil, fmt.Errorf("%w: %s holds a Go pointer", ErrPointerType, path)
	}
	path, err := segmentPath(dir, name)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotExist, path)
	}
	if err != nil {
		return nil, fmt.Errorf("shm: open %s: %w", path, err)
	}
	return attachOpen(path, f, typ, kind, false, watch)
}

// attachOpen attaches through f, this process's own open file description
// of the segment (it owns f from here on).
func attachOpen(path string, f *os.File, typ reflect.Type, kind uint32, anon bool, watch time.Duration) (*seg, error) {
	a, err := mapExisting(path, f, typ, kind, anon)
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	_ = flockFile(f, unix.LOCK_UN)
	a.start(watch)
	if a.anyDead() {
		_, _ = a.Recover()
	}
	return a, nil
}

// mapExisting maps and checks the segment in f and claims a record in it.
// It returns with the flock held on success.
func mapExisting(path string, f *os.File, typ reflect.Type, kind uint32, anon bool) (*seg, error) {
	if err := flockFile(f, unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("shm: lock %s: %w", path, err)
	}
	unlockFail := func(err error) (*seg, error) {
		_ = flockFile(f, unix.LOCK_UN)
		return nil, err
	}
	if !anon && !sameFile(f, path) {
		return unlockFail(fmt.Errorf("%w: %s was removed", ErrNotExist, path))
	}
	st, err := f.Stat()
	if err != nil {
		return unlockFail(fmt.Errorf("shm: stat %s: %w", path, err))
	}
	if st.Size() == 0 {
		// Created a moment ago (its creator has not taken the flock yet),
		// or its creator died right after: either way not a segment yet.
		return unlockFail(fmt.Errorf("%w: %s is empty: its creator never finished it", ErrNotExist, path))
	}
	var h header
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&h)), headerSize)
	if n, _ := f.ReadAt(buf, 0); n < headerSize {
		return unlockFail(fmt.Errorf("%w: %s has %d bytes, less than a header", ErrCorrupt, path, st.Size()))
	}
	if err := check(&h, uint64(st.Size()), typ, kind); err != nil {
		return unlockFail(fmt.Errorf("%s: %w", path, err))
	}
	mem, err := mapFile(f, h.size)
	if err != nil {
		return unlockFail(err)
	}
	a := newSeg(path, f, mem)
	a.anon = anon
	a.bind()
	if err := a.checkShards(); err != nil {
		_ = unix.Munmap(mem)
		return unlockFail(fmt.Errorf("%s: %w", path, err))
	}
	if kind == kindStore {
		if err := a.bindStore(); err != nil {
			_ = unix.Munmap(mem)
			return unlockFail(fmt.Errorf("%s: %w", path, err))
		}
	}
	if err := a.claimRecord(); err != nil {
		_ = unix.Munmap(mem)
		return unlockFail(err)
	}
	return a, nil
}

// check compares a segment's header with what this process expects. The
// geometry is recomputed from the header's own inputs, so a header that
// was not written by this layout (garbage, a truncated file) is refused
// before any offset in it is used. A Store's edges are checked once mapped
// (bindStore).
func check(h *header, fileSize uint64, typ reflect.Type, kind uint32) error {
	switch {
	case h.magic == 0 && h.ready == 0:
		// initSeg sizes the file, then writes the header, magic and ready
		// last: a creator that died before the magic left zeros.
		return fmt.Errorf("%w: its creator never finished it", ErrNotExist)
	case h.magic != magic:
		return fmt.Errorf("%w: bad magic %#x", ErrCorrupt, h.magic)
	case h.layout != layoutVersion:
		return fmt.Errorf("%w: layout version %d, this build reads %d", ErrMismatch, h.layout, layoutVersion)
	case h.ready != 1:
		return fmt.Errorf("%w: its creator never finished it", ErrNotExist)
	case h.kind != kind:
		return fmt.Errorf("%w: segment holds a %s, not a %s", ErrMismatch, kindName(h.kind), kindName(kind))
	case h.capacity == 0 || uint64(h.capacity) > MaxSlots || h.shards == 0 || h.shards > MaxShards || h.shards > h.capacity:
		return fmt.Errorf("%w: capacity %d, shards %d", ErrCorrupt, h.capacity, h.shards)
	case h.maxProcs != MaxProcs || h.ways != cacheWays || h.holds != holdsPerProc:
		return fmt.Errorf("%w: %d processes × %d ways × %d holds, this build has %d × %d × %d",
			ErrMismatch, h.maxProcs, h.ways, h.holds, MaxProcs, cacheWays, holdsPerProc)
	case h.slotSize != uint64(typ.Size()) || h.slotAlign != max(uint64(typ.Align()), 1):
		return fmt.Errorf("%w: slots of %d bytes aligned to %d (%s), %s is %d aligned to %d", ErrMismatch,
			h.slotSize, h.slotAlign, cstring(h.typeName[:]), typ, typ.Size(), typ.Align())
	case h.typeHash != fingerprint(typ):
		return fmt.Errorf("%w: payload type %s, not %s (fields differ)", ErrMismatch, cstring(h.typeName[:]), typ)
	case h.genBase == 0 || h.genBase > 1<<30:
		return fmt.Errorf("%w: generation base %d", ErrCorrupt, h.genBase)
	case kind == kindStore && (h.edges > MaxEdges || h.tableLen != uint64(h.capacity)):
		return fmt.Errorf("%w: %d edges, reference tables of %d", ErrCorrupt, h.edges, h.tableLen)
	}
	var st *storeShape
	if kind == kindStore {
		st = &storeShape{tableLen: h.tableLen, laneCaps: make([]uint64, h.edges)}
	}
	g := layoutFor(h.capacity, h.shards, h.slotSize, h.slotAlign, st)
	if g.recordsOff != h.recordsOff || g.recordSize != h.recordSize || g.shardsOff != h.shardsOff ||
		g.statesOff != h.statesOff || g.linksOff != h.linksOff || g.payloadOff != h.payloadOff || g.stride != h.stride ||
		g.refsOff != h.refsOff || g.tablesOff != h.tablesOff || g.edgesOff != h.edgesOff || h.size < g.size ||
		kind == kindArena && h.size != g.size {
		return fmt.Errorf("%w: header offsets do not match its geometry", ErrCorrupt)
	}
	if fileSize < h.size {
		return fmt.Errorf("%w: %d bytes, the header says %d", ErrCorrupt, fileSize, h.size)
	}
	return nil
}

func kindName(k uint32) string {
	switch k {
	case kindArena:
		return "shm.Arena"
	case kindStore:
		return "shm.Store"
	}
	return fmt.Sprintf("kind %d", k)
}

func cstring(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

func newSeg(path string, f *os.File, mem []byte) *seg {
	a := &seg{path: path, file: f, mem: mem, base: unsafe.Pointer(unsafe.SliceData(mem)), stats: newStats()}
	a.hdr = (*header)(a.base)
	a.gate.Init()
	return a
}

// bind caches the header's geometry in the handle.
func (a *seg) bind() {
	h := a.hdr
	a.capacity, a.shards, a.stride = h.capacity, h.shards, uintptr(h.stride)
	a.recsAt = unsafe.Add(a.base, h.recordsOff)
	a.recSize = uintptr(h.recordSize)
	a.shardsAt = unsafe.Add(a.base, h.shardsOff)
	a.states = unsafe.Add(a.base, h.statesOff)
	a.links = unsafe.Add(a.base, h.linksOff)
	a.payload = unsafe.Add(a.base, h.payloadOff+slotMeta)
}

// claimRecord finds a record whose lock it can take and that no dead
// process still occupies, and makes it this process's. The caller holds
// the flock.
func (a *seg) claimRecord() error {
	for i := range MaxProcs {
		ok, err := lockRecord(a.file, i)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		r := a.record(i)
		if atomic.LoadUint32(&r.state) != recordFree {
			unlockRecord(a.file, i) // a dead process's: recovery frees it
			continue
		}
		r.pid = uint32(os.Getpid())
		if a.store != nil {
			// A record comes back from Close or recovery with an empty
			// table; clear it all the same, so that a process never starts
			// out holding references it did not take.
			tab := a.store.table(i)
			for idx := range min(r.tableHigh, a.capacity) {
				*(*uint32)(unsafe.Add(tab, uintptr(idx)*4)) = 0
			}
		}
		r.tableHigh = 0
		atomic.AddUint64(&r.incarnation, 1)
		atomic.StoreUint32(&r.state, recordAlive)
		a.me, a.rec = i, r
		a.holds.entries = &r.holds
		if a.store != nil {
			a.store.tab.rec = r
			a.store.tab.counts = a.store.table(i)
		}
		return nil
	}
	return fmt.Errorf("%w: all %d records are taken", ErrTooManyProcs, MaxProcs)
}

func (a *seg) record(i int) *record {
	return (*record)(unsafe.Add(a.recsAt, uintptr(i)*a.recSize))
}

// span is the range of slot indices shard i of shards hands out from its
// frontier. The handle computes it rather than trust the segment's copy,
// so a scribbled shard line cannot make it index outside the slots.
func span(capacity, shards, i uint32) (start, end uint32) {
	return uint32(uint64(capacity) * uint64(i) / uint64(shards)),
		uint32(uint64(capacity) * uint64(i+1) / uint64(shards))
}

// frontier reads shard i's frontier. One outside the shard's span (only a
// scribbled segment has one) reads as end: the shard hands out nothing more
// from it, and recovery walks the whole span.
func (a *seg) frontier(i uint32) (f, start, end uint32) {
	start, end = span(a.capacity, a.shards, i)
	if f = atomic.LoadUint32(&a.shard(i).frontier); f < start || f > end {
		f = end
	}
	return f, start, end
}

// checkShards refuses a segment whose shard lines do not partition its
// slots the way its header's capacity and shard count say they must (a
// header whose capacity was altered while its offsets still fit).
func (a *seg) checkShards() error {
	for i := uint32(0); i < a.shards; i++ {
		s := a.shard(i)
		start, end := span(a.capacity, a.shards, i)
		if f := atomic.LoadUint32(&s.frontier); s.start != start || s.end != end || f < start || f > end {
			return fmt.Errorf("%w: shard %d covers [%d, %d) with frontier %d; %d slots over %d shards put it at [%d, %d)",
				ErrCorrupt, i, s.start, s.end, f, a.capacity, a.shards, start, end)
		}
	}
	return nil
}

func (a *seg) shard(i uint32) *shardLine {
	return (*shardLine)(unsafe.Add(a.shardsAt, uintptr(i)*unsafe.Sizeof(shardLine{})))
}

func (a *seg) state(idx uint32) *uint64 {
	return (*uint64)(unsafe.Add(a.states, uintptr(idx)*a.stride))
}

func (a *seg) link(idx uint32) *uint32 {
	return (*uint32)(unsafe.Add(a.links, uintptr(idx)*a.stride))
}

func (a *seg) slotAt(idx uint32) unsafe.Pointer {
	return unsafe.Add(a.payload, uintptr(idx)*a.stride)
}

func (a *Arena[T]) slot(idx uint32) *T {
	return (*T)(unsafe.Add(a.payload, uintptr(idx)*a.stride))
}

// Path returns the path of the segment file.
func (a *seg) Path() string { return a.path }

// Capacity returns the number of slots, less those retired because their
// generation would have wrapped (they are never handed out again); after
// Close, the number of slots.
func (a *seg) Capacity() int {
	p, ok := a.gate.Enter()
	if !ok {
		return int(a.capacity)
	}
	defer a.gate.Exit(p)
	return int(a.capacity) - int(min(atomic.LoadUint32(&a.hdr.retired), a.capacity))
}

// Available returns the number of free slots, across every process; exact
// when no operation is in flight anywhere.
func (a *seg) Available() int {
	p, ok := a.gate.Enter()
	if !ok {
		return 0
	}
	defer a.gate.Exit(p)
	live := atomic.LoadInt64(&a.hdr.base)
	for i := range MaxProcs {
		r := a.record(i)
		for w := range r.ways {
			live += int64(atomic.LoadUint64(&r.ways[w].section)) >> 16
		}
	}
	retired := int64(min(atomic.LoadUint32(&a.hdr.retired), a.capacity))
	return int(int64(a.capacity) - retired - live)
}

// start launches the watcher, unless watch < 0.
func (a *seg) start(watch time.Duration) {
	if watch < 0 {
		return
	}
	if watch == 0 {
		watch = defaultWatch
	}
	a.watchStop, a.watchDone = make(chan struct{}), make(chan struct{})
	go a.watch(watch)
}

func (a *seg) watch(every time.Duration) {
	defer close(a.watchDone)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-a.watchStop:
			return
		case <-t.C:
			if a.anyDead() {
				_, _ = a.Recover()
			}
		}
	}
}

// Close detaches this process. Slots it allocated and did not free stay
// allocated (and no longer die with it); its way caches go back to the
// freelists. The last process to close removes the segment file. Close
// waits for this process's callbacks to return; a second Close returns
// ErrClosed.
func (a *seg) Close() error { return a.closeWith(nil) }

// closeWith is Close that calls quiesced, if not nil, once no operation of
// this process can start or is still running (the gate is closed, every
// section has ended, no receiver is parked) and before the process
// detaches: a Store drops the references its process still holds there,
// so that none taken by an operation racing Close is left behind.
func (a *seg) closeWith(quiesced func()) error {
	a.closeMu.Lock()
	defer a.closeMu.Unlock()
	if !a.closed.CompareAndSwap(false, true) {
		return ErrClosed
	}
	if a.watchStop != nil {
		close(a.watchStop)
		<-a.watchDone
	}
	a.holds.drain()
	a.gate.Close()
	a.waitSections()
	for a.parked.Load() != 0 {
		a.wakeParked()
		time.Sleep(50 * time.Microsecond)
	}
	if quiesced != nil {
		quiesced()
	}
	_ = flockFile(a.file, unix.LOCK_EX)
	a.detach()
	last := true
	for i := range MaxProcs {
		if i != a.me && atomic.LoadUint32(&a.record(i).state) == recordAlive && recordLocked(a.file, i) {
			last = false
			break
		}
	}
	if last && !a.anon && sameFile(a.file, a.path) {
		_ = os.Remove(a.path)
	}
	_ = flockFile(a.file, unix.LOCK_UN)
	a.recoverMu.Lock() // a Recover that began before Close finishes first
	defer a.recoverMu.Unlock()
	err := unix.Munmap(a.mem)
	a.mem, a.base = nil, nil
	if cerr := a.file.Close(); err == nil && cerr != nil && !errors.Is(cerr, io.EOF) {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("shm: close %s: %w", a.path, err)
	}
	return nil
}
