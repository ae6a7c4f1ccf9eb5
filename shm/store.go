package shm

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"math"
	"os"
	"reflect"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/internal/clock"
	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

// StoreConfig describes a shared message store at CreateStore. AttachStore
// takes everything from the segment and uses only Dir and Watch.
type StoreConfig struct {
	// Slots is the capacity in messages; required, 1 ≤ Slots ≤ MaxSlots.
	Slots int
	// Shards is the number of freelists; 0 means 16.
	Shards int
	// Edges are the policies of the store's edges, Edge(0) to
	// Edge(len-1); at most MaxEdges. An edge's queue is fixed at Create:
	// MaxItems entries per lane, or Slots when MaxItems is 0 (then a lane
	// can fill only with messages queued several times, after Retain, and
	// a full lane is treated as an edge at its cap: Block waits,
	// DropNewest refuses, DropOldest and DeadlineQoS evict from it).
	Edges []message.Policy
	// Dir, Perm and Watch are as in Config.
	Dir   string
	Perm  os.FileMode
	Watch time.Duration
}

// ErrNotHeld means this process holds no reference to the message it tried
// to Free or Send: references are owned per process (see Store).
var ErrNotHeld = errors.New("shm: this process holds no reference to the message")

// Store is one process's handle on a shared message store: messages of
// payload P with their headers, reference-counted, and the store's edges,
// all in one segment that every attached process maps.
//
// References are owned by processes and edges. Put and Retain give this
// process a reference; Send moves one of this process's references into an
// edge and Recv moves one out of an edge to the receiving process; Free
// drops one of this process's references. A process cannot Free or Send a
// reference it does not hold (ErrNotHeld): tokens move between processes
// through edges, never around them. When a process dies, its references
// stop counting; a message that no process and no edge references any more
// is freed by the recovery.
type Store[P any] struct {
	a *seg
}

// storeCore is a Store's part of the segment, bound in this process.
type storeCore struct {
	refs     unsafe.Pointer // slot 0's uint32 reference count; slot i's is i strides on
	stride   uintptr
	tables   unsafe.Pointer // MaxProcs reference tables of tableLen uint32 counts
	tableLen uint64
	edges    []*Edge
	tab      refTable
}

func (c *storeCore) ref(idx uint32) *uint32 {
	return (*uint32)(unsafe.Add(c.refs, uintptr(idx)*c.stride))
}

func (c *storeCore) table(rec int) unsafe.Pointer {
	return unsafe.Add(c.tables, uintptr(rec)*uintptr(c.tableLen)*4)
}

// CreateStore makes a new message store segment called name, with its
// edges, and attaches this process to it.
func CreateStore[P any](name string, cfg StoreConfig) (*Store[P], error) {
	return createStore[P](name, cfg, false)
}

func createStore[P any](name string, cfg StoreConfig, memfd bool) (*Store[P], error) {
	switch {
	case cfg.Slots <= 0 || uint64(cfg.Slots) > MaxSlots:
		return nil, fmt.Errorf("%w: Slots = %d, must be in [1, %d]", ErrInvalidConfig, cfg.Slots, uint64(MaxSlots))
	case len(cfg.Edges) > MaxEdges:
		return nil, fmt.Errorf("%w: %d edges, at most %d", ErrInvalidConfig, len(cfg.Edges), MaxEdges)
	}
	shape := &storeShape{tableLen: uint64(cfg.Slots)}
	pols := append([]message.Policy(nil), cfg.Edges...)
	for i, p := range pols {
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("edge %d: %w", i, err)
		}
		c := uint64(cfg.Slots)
		if p.MaxItems > 0 {
			c = uint64(p.MaxItems)
		}
		shape.laneCaps = append(shape.laneCaps, c)
	}
	init := func(a *seg, g geometry) {
		off := g.ringsOff
		for i, p := range pols {
			c := a.edgeCtl(i)
			c.admission = uint32(p.Admission)
			c.maxItems, c.softItems = int64(p.MaxItems), int64(p.SoftItems)
			c.maxBytes, c.softBytes = p.MaxBytes, p.SoftBytes
			c.laneCap, c.ringOff = shape.laneCaps[i], off
			c.minDeadline = math.MaxInt64
			off += ringBytes(c.laneCap)
		}
		_ = a.bindStore() // just written: cannot fail
	}
	s, err := createSeg(name, segSpec{typ: reflect.TypeFor[message.Message[P]](), kind: kindStore,
		slots: cfg.Slots, shards: cfg.Shards, store: shape, init: init, memfd: memfd, dir: cfg.Dir, perm: cfg.Perm, watch: cfg.Watch})
	if err != nil {
		return nil, err
	}
	return &Store[P]{s}, nil
}

// AttachStore attaches this process to the store segment called name, made
// by CreateStore for the same P.
func AttachStore[P any](name string, cfg StoreConfig) (*Store[P], error) {
	s, err := attachSeg(name, reflect.TypeFor[message.Message[P]](), kindStore, cfg.Dir, cfg.Watch)
	if err != nil {
		return nil, err
	}
	return &Store[P]{s}, nil
}

func (a *seg) edgeCtl(i int) *edgeCtl {
	return (*edgeCtl)(unsafe.Add(a.base, uintptr(a.hdr.edgesOff)+uintptr(i)*unsafe.Sizeof(edgeCtl{})))
}

// bindStore checks a Store segment's edges and binds its regions. What it
// reads of each edge's shape (policy, lane capacity, ring offset) it keeps
// in this process: a peer that scribbles on the segment later cannot make
// this process index outside the mapping.
func (a *seg) bindStore() error {
	h := a.hdr
	c := &storeCore{
		refs:     unsafe.Add(a.base, h.refsOff),
		stride:   a.stride,
		tables:   unsafe.Add(a.base, h.tablesOff),
		tableLen: h.tableLen,
	}
	at := roundUp(h.payloadOff+h.stride*uint64(h.capacity), pageSize)
	for i := 0; i < int(h.edges); i++ {
		ctl := a.edgeCtl(i)
		pol := message.Policy{MaxItems: int(ctl.maxItems), SoftItems: int(ctl.softItems),
			MaxBytes: ctl.maxBytes, SoftBytes: ctl.softBytes, Admission: message.Admission(ctl.admission)}
		lc := ctl.laneCap
		switch {
		case lc == 0 || lc > MaxSlots || ctl.ringOff != at || at+ringBytes(lc) > h.size:
			return fmt.Errorf("%w: edge %d: lane capacity %d, rings at %d", ErrCorrupt, i, lc, ctl.ringOff)
		case ctl.admission > uint32(message.DeadlineQoS) || pol.Validate() != nil:
			return fmt.Errorf("%w: edge %d: bad policy", ErrCorrupt, i)
		}
		c.edges = append(c.edges, &Edge{a: a, ctl: ctl, ring: unsafe.Add(a.base, at), laneCap: lc, pol: pol, id: i,
			byLane: pol.Admission == message.DeadlineQoS})
		at += ringBytes(lc)
	}
	a.store = c
	return nil
}

// Edge returns the store's i-th edge, or nil if there is none.
func (s *Store[P]) Edge(i int) *Edge {
	if i < 0 || i >= len(s.a.store.edges) {
		return nil
	}
	return s.a.store.edges[i]
}

// Edges returns the store's edges, in the order of StoreConfig.Edges.
func (s *Store[P]) Edges() []*Edge { return append([]*Edge(nil), s.a.store.edges...) }

// payloadSize is what Header.Size 0 stands for.
func payloadSize[P any]() uint32 {
	var p *P
	return uint32(min(unsafe.Sizeof(*p), math.MaxUint32))
}

// Put stores a message and gives this process its one reference. As in
// message.Store, a zero Created is stamped with message.Now() and a zero
// Size becomes the size of P.
func (s *Store[P]) Put(h message.Header, p P) (token.Token, error) {
	if h.Created == 0 {
		h.Created = clock.Stamp() // message.Now's clock, unfenced
	}
	if h.Size == 0 {
		h.Size = payloadSize[P]()
	}
	t, _, err := s.alloc(&h, &p, false)
	return t, err
}

// PutFunc stores a message built in place: the slot starts zeroed with h
// as its header (defaults applied as in Put), and fill writes the rest,
// straight into shared memory: a large payload is never copied. If fill
// returns an error or panics, the slot is freed and the error (or panic)
// passed on.
func (s *Store[P]) PutFunc(h message.Header, fill func(*message.Message[P]) error) (token.Token, error) {
	if fill == nil {
		return token.Nil, ErrNilFunc
	}
	if h.Created == 0 {
		h.Created = clock.Stamp() // message.Now's clock, unfenced
	}
	if h.Size == 0 {
		h.Size = payloadSize[P]()
	}
	// The hold entry makes Close wait for fill, which writes the slot
	// outside any section.
	e, err := s.a.claimWait(holdFill)
	if err != nil {
		return token.Nil, err
	}
	defer unclaim(e)
	t, m, err := s.alloc(&h, nil, true)
	if err != nil {
		return token.Nil, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = s.Free(t) // t is a local: the results are token.Nil by now
		}
	}()
	if err := fill(m); err != nil {
		return token.Nil, err
	}
	ok = true
	return t, nil
}

// Loan stores a message whose payload this process writes in place: the
// header is h (defaults applied as in Put), the payload is NOT zeroed: it
// holds whatever the slot's previous message left there (always a P of
// this store, never foreign bytes). Write every byte a reader will read.
// It is PutFunc without the zeroing, for large payloads that a producer
// builds in shared memory and would otherwise clear first for nothing.
// The returned pointer is valid until the message is freed or this handle
// is closed.
func (s *Store[P]) Loan(h message.Header) (token.Token, *message.Message[P], error) {
	if h.Created == 0 {
		h.Created = clock.Stamp() // message.Now's clock, unfenced
	}
	if h.Size == 0 {
		h.Size = payloadSize[P]()
	}
	return s.alloc(&h, nil, false)
}

// AwaitFree waits until some process frees a slot (after Put or Loan
// returned ErrFull), ctx is done (ctx.Err()), or the store is closed
// (ErrClosed). Another process may take the freed slot first: retry.
func (s *Store[P]) AwaitFree(ctx context.Context) error { return s.a.awaitFree(ctx) }

// PutWait is Put that waits (parked, not spinning) while the store is
// full, until a slot is freed by any process, ctx is done, or the store is
// closed.
func (s *Store[P]) PutWait(ctx context.Context, h message.Header, p P) (token.Token, error) {
	for {
		t, err := s.Put(h, p)
		if !errors.Is(err, ErrFull) {
			return t, err
		}
		if err := s.a.awaitFree(ctx); err != nil {
			return token.Nil, err
		}
	}
}

// alloc takes a slot with one reference for this process and writes its
// header, then *p, or zeroes, or (Loan) leaves the payload as it is, all
// inside the section: Close unmaps once no section is open.
func (s *Store[P]) alloc(h *message.Header, src *P, zero bool) (token.Token, *message.Message[P], error) {
	a := s.a
	idx, gen, p, w, err := a.takeSlot()
	if err != nil {
		return token.Nil, nil, err
	}
	atomicx.StoreRelease32(a.store.ref(idx), 1) // the slot is ours alone until its token leaves
	if err := a.store.tab.add(idx); err != nil {
		atomic.StoreUint32(a.store.ref(idx), 0)
		a.freeSlot(p, w, idx)
		a.exit(p, w, 0)
		return token.Nil, nil, err
	}
	m := (*message.Message[P])(a.slotAt(idx))
	m.Header = *h
	switch {
	case src != nil:
		m.Payload = *src
	case zero:
		zeroBytes(unsafe.Pointer(&m.Payload), unsafe.Sizeof(m.Payload))
	}
	a.exit(p, w, 1)
	a.stats.add(statAllocs)
	return token.New(idx, gen), m, nil
}

// Header returns a copy of the message's header.
func (s *Store[P]) Header(t token.Token) (message.Header, error) {
	var h message.Header
	err := s.a.header(t, &h, "Header")
	return h, err
}

// View runs fn with shared access to the message.
func (s *Store[P]) View(t token.Token, fn func(*message.Message[P])) error {
	return access(s.a, t, fn, readerOne, holdRead, "View")
}

// Update runs fn with exclusive access to the message. Edges that already
// queue t keep the Deadline, QoS, Flags and Size they admitted it with.
func (s *Store[P]) Update(t token.Token, fn func(*message.Message[P])) error {
	return access(s.a, t, fn, writerBit, holdWrite, "Update")
}

// Retain gives this process one more reference to the message (for
// example to send it to one more edge). The process must hold one already
// (ErrNotHeld otherwise).
func (s *Store[P]) Retain(t token.Token) error {
	a := s.a
	idx, p, w, err := a.enterFor(t, "Retain")
	if err != nil {
		return err
	}
	defer a.exit(p, w, 0)
	if !liveAs(atomic.LoadUint64(a.state(idx)), t.Generation()) {
		return stale("Retain", t)
	}
	// Only a holder may add a reference: its own keeps the count above zero
	// meanwhile. A process without one could race the last Free and add a
	// count to a slot already freed (it would then hold, and one day drop,
	// a reference to the slot's next message).
	if atomic.LoadUint32(a.store.tab.count(idx)) == 0 {
		return fmt.Errorf("shm: Retain %v: %w", t, ErrNotHeld)
	}
	r := a.store.ref(idx)
	if atomic.LoadUint32(r) == math.MaxUint32 {
		return fmt.Errorf("shm: Retain %v: %w", t, message.ErrTooManyRefs)
	}
	if err := a.store.tab.add(idx); err != nil {
		return fmt.Errorf("shm: Retain %v: %w", t, err)
	}
	// The count goes up by CAS, never past the ceiling: two Retains racing
	// at the ceiling less one must not both add (the count would wrap).
	for {
		n := atomic.LoadUint32(r)
		if n == math.MaxUint32 {
			a.store.tab.remove(idx)
			return fmt.Errorf("shm: Retain %v: %w", t, message.ErrTooManyRefs)
		}
		if atomic.CompareAndSwapUint32(r, n, n+1) {
			return nil
		}
	}
}

// Free drops one of this process's references to the message; the last
// reference anywhere frees the slot.
func (s *Store[P]) Free(t token.Token) error {
	a := s.a
	idx, p, w, err := a.enterFor(t, "Free")
	if err != nil {
		return err
	}
	if !liveAs(atomic.LoadUint64(a.state(idx)), t.Generation()) {
		a.exit(p, w, 0)
		return stale("Free", t)
	}
	if !a.store.tab.remove(idx) {
		a.exit(p, w, 0)
		return fmt.Errorf("shm: Free %v: %w", t, ErrNotHeld)
	}
	net := a.dropRef(p, w, idx)
	a.exit(p, w, net)
	return nil
}

// Refs returns the message's reference count (every process and edge) and
// how many of those this process holds.
func (s *Store[P]) Refs(t token.Token) (all, mine int, err error) {
	a := s.a
	idx, p, w, err := a.enterFor(t, "Refs")
	if err != nil {
		return 0, 0, err
	}
	defer a.exit(p, w, 0)
	if !liveAs(atomic.LoadUint64(a.state(idx)), t.Generation()) {
		return 0, 0, stale("Refs", t)
	}
	return int(atomic.LoadUint32(a.store.ref(idx))), int(atomic.LoadUint32(a.store.tab.count(idx))), nil
}

// Tokens yields the token of every message, in any process, that holds
// references when the iteration reaches its slot: message.Store.Tokens
// across processes, weakly consistent in the same way (a message live for
// the whole iteration is yielded exactly once; one whose last reference
// is dropped before its slot is reached is not; messages put or freed
// meanwhile may or may not be). A yielded token may be held by another
// process or queued on an edge: this process holds none of its
// references (Retain needs one; Refs tells who holds them). Breaking out
// of the loop is fine, and the loop body may call any store method. After
// Close it yields nothing.
//
// It reads every slot the shards ever handed out, a section per shard
// run of 256 slots, so it is for leak reports, clean-up and snapshots,
// not for hot paths.
func (s *Store[P]) Tokens() iter.Seq[token.Token] {
	return func(yield func(token.Token) bool) {
		a := s.a
		var batch [256]token.Token
		for sh := uint32(0); sh < a.shards; sh++ {
			start, _ := span(a.capacity, a.shards, sh) // no shared memory outside a section
			for idx := start; ; {
				p, w, err := a.enter()
				if err != nil {
					return
				}
				f, _, _ := a.frontier(sh)
				n := 0
				for ; idx < f && n < len(batch); idx++ {
					st := atomic.LoadUint64(a.state(idx))
					if st&liveBit != 0 && atomic.LoadUint32(a.store.ref(idx)) != 0 &&
						liveAs(atomic.LoadUint64(a.state(idx)), genOf(st)) {
						batch[n] = token.New(idx, genOf(st))
						n++
					}
				}
				more := idx < f
				a.exit(p, w, 0)
				for _, t := range batch[:n] {
					if !yield(t) {
						return
					}
				}
				if !more {
					break
				}
			}
		}
	}
}

// dropRef drops one reference to slot idx inside a section and frees the
// slot when it was the last; it returns the section's net allocation
// change.
func (a *seg) dropRef(p int, w *way, idx uint32) int64 {
	if atomic.AddUint32(a.store.ref(idx), ^uint32(0)) != 0 {
		return 0
	}
	a.freeSlot(p, w, idx)
	return -1
}

// freeSlot frees a live slot inside a section.
func (a *seg) freeSlot(p int, w *way, idx uint32) {
	st := a.state(idx)
	for {
		s := atomic.LoadUint64(st)
		n := freed(s)
		if atomic.CompareAndSwapUint64(st, s, n) {
			if reusable(n) {
				a.recycle(p, w, idx)
			} else if n&retiredBit != 0 {
				atomic.AddUint32(&a.hdr.retired, 1)
			}
			a.stats.add(statFrees)
			return
		}
	}
}

// header copies a live slot's message header under a brief reader hold:
// Message[P] starts with its Header, whatever P is, so it is a Load of a
// Header.
func (a *seg) header(t token.Token, dst *message.Header, op string) error {
	return load(a, t, dst, op)
}

// Capacity returns the number of message slots.
func (s *Store[P]) Capacity() int { return s.a.Capacity() }

// Available returns the number of free message slots, across every
// process.
func (s *Store[P]) Available() int { return s.a.Available() }

// Path returns the segment file's path ("memfd:…" for an anonymous one).
func (s *Store[P]) Path() string { return s.a.Path() }

// File returns a new descriptor of the segment, for another process to
// attach with AttachStoreFile (see Arena.File).
func (s *Store[P]) File() (*os.File, error) { return s.a.File() }

// Recover cleans up after dead processes (see Arena.Recover): their
// references stop counting, messages nobody references are freed, and
// edges they held locked are released.
func (s *Store[P]) Recover() (Recovery, error) { return s.a.Recover() }

// Stats returns this process's counters and the segment's recovery count.
func (s *Store[P]) Stats() Stats { return s.a.Stats() }

// Close detaches this process. The references it still holds are dropped
// (messages nobody else references are freed) and counted in an error
// matching message.ErrReferenced; the store is closed all the same. Calls
// racing Close either finish first (what they took is dropped with the
// rest) or return ErrClosed. The
// last process to close removes the segment. A second Close returns
// ErrClosed.
func (s *Store[P]) Close() error {
	a := s.a
	var dropped int
	// The references are dropped once no operation of this process can
	// start or is running: a Put, Recv or Retain racing Close has either
	// been refused or its reference is in the table by then.
	err := a.closeWith(func() {
		for idx, n := range a.store.tab.held() {
			for range n {
				p, w := a.openOwn()
				var net int64
				if a.store.tab.remove(idx) {
					net = a.dropRef(p, w, idx)
					dropped++
				}
				a.close(w, net)
			}
		}
	})
	if err != nil {
		return err
	}
	if dropped > 0 {
		return fmt.Errorf("shm: %w: this process still held %d references; they were dropped", message.ErrReferenced, dropped)
	}
	return nil
}
