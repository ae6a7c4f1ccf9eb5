package message

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/internal/arenalink"
	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/internal/clock"
	"github.com/cella-go/cella/memclass"
	"github.com/cella-go/cella/shard"
	"github.com/cella-go/cella/token"
)

// slotMeta is a store's shadow of one arena slot: the reference count of the
// live allocation and the header fields an edge's admission needs. It lets
// Retain, Free and an edge's send check a token with a few atomic loads and
// at most one CAS, instead of taking and dropping an arena reader hold (two
// atomic read-modify-writes, two pin sections and a callback) per call.
//
// ref packs the generation of the allocation it describes (high 32 bits)
// with its reference count (low 32 bits). Put writes deadline and info,
// then publishes ref = gen<<32 | 1; the last Free has the arena set the
// count to 0 as it frees the slot (freeLast), before the slot can be
// allocated again, and the next Put of the slot overwrites the generation.
// A token matches its slot's metadata only while ref carries its
// generation and a count above zero, and the arena never issues a
// generation twice for one slot, so the check is exact.
//
// The metadata of all slots is one off-heap mapping (see Store), so it holds
// no Go pointers and is only ever accessed atomically.
type slotMeta struct {
	ref      atomic.Uint64
	deadline atomic.Int64
	info     atomic.Uint64 // packInfo(Header)
}

const metaSize = unsafe.Sizeof(slotMeta{})

// refWord is ref as the plain word the arenalink calls read (Hold,
// LoadHead) or mark (FreeMarking).
func (md *slotMeta) refWord() *uint64 { return (*uint64)(unsafe.Pointer(&md.ref)) }

// packInfo packs what an edge keeps of a header besides its deadline:
// Size in the high 32 bits, the raw QoS in bits 0-7, DegradeAllowed in bit
// 8 and infoPlain in bit 9 (bits 10-31 are refresh's sequence, 0 here).
func packInfo(h *Header) uint64 {
	v := uint64(h.Size)<<32 | uint64(h.QoS)
	if h.Flags.Has(DegradeAllowed) {
		v |= infoDegrade
	}
	if h.Deadline == 0 && h.QoS.Valid() && h.QoS.lane() == laneBestEffort {
		v |= infoPlain
	}
	return v
}

const (
	infoDegrade = 1 << 8
	// infoPlain marks a message that an edge's fast ring may take as it
	// is: no deadline, a valid QoS whose lane is BestEffort (most
	// messages). A send that sees it in an even info word needs neither
	// the deadline (it is 0) nor the QoS checks: one load instead of the
	// seqlock's three, the larger part of a batch's per-token cost.
	infoPlain = 1 << 9
	// Bits 10-31 of info count refresh's writes (a seqlock with
	// admission): odd while a refresh is writing the pair.
	infoWriting = 1 << 10
	infoSeqMask = 1<<32 - infoWriting
)

func refOf(gen uint32, n uint32) uint64 { return uint64(gen)<<32 | uint64(n) }

// Store keeps messages in an off-heap arena and hands out reference-counted
// tokens. Put returns a token holding one reference; Retain adds one (for
// fan-out); Free drops one, and the slot is recycled when the last reference
// is dropped. *Store[P] implements HeaderStore, so its tokens can travel on
// edges. All methods are safe for concurrent use, Close included: a call
// racing Close returns an error (arena.ErrClosed), never a fault.
//
// Tokens are generation-checked: a token whose slot was freed (or freed and
// reused) gets an error matching arena.ErrStale from every method. A token
// that this store never issued (a forged one, or one from another store)
// gets arena.ErrBadToken when its index is out of range and otherwise
// arena.ErrStale with high probability (each arena starts its generations
// at a random value); the token format carries no store identity, so such
// errors say "stale or foreign token". Keep tokens with the store that
// issued them.
//
// # Memory
//
// Besides the arena, a store keeps 24 bytes of metadata per slot (reference
// count and the header fields edges read, so that a hop does not touch the
// slot). It lives in its own anonymous mapping, off the Go heap: like the
// arena's slots it is reserved at NewStore and committed page by page as
// slots are first used, so NewStore costs O(1) Go heap whatever cfg.Slots.
//
// # Close
//
// Put and the metadata fast paths (Free, Retain, Refs, an edge's send) run
// their memory accesses inside a section of the store's gate (the arena's
// mechanism: a pinned stretch of code in the default build, no atomic
// write; a striped counter in the purego build). Close marks the store
// closed, waits for the sections already running, then closes the arena,
// which waits for running View, Update and PutFunc callbacks. Only then is
// memory unmapped. Every call that starts after the mark returns
// arena.ErrClosed, whatever its token, with one exception that makes the
// wrong closing order harmless:
//
// Close with references still outstanding (tokens not freed, or still
// queued on edges) closes anyway, and returns an error matching
// ErrReferenced that counts them. Each of those references may still be
// freed once: Free returns nil for it (and arena.ErrClosed for anything
// else), so an edge drained after its store was closed counts no
// FreeErrors. The metadata mapping is kept for that, and unmapped when the
// last outstanding reference is freed or the store becomes unreachable.
// The right order is still: close and drain edges, free what you hold,
// then Close the store.
type Store[P any] struct {
	metaTable
	a *arena.Arena[Message[P]]
	// core is a's type-free core, for the arenalink calls: FreeMarking
	// (Free's last reference), Hold and Release (View), LoadHead (Header).
	core unsafe.Pointer

	writers []writerStripe // PutFunc fills in progress, per P

	late lateState
}

// metaTable is the part of a Store that an edge reads on every send: the
// gate and the metadata. It does not depend on the payload type, so an edge
// calls its methods directly (Edge.meta), not through an interface: no
// dynamic call per token, and the batch path's arrays stay on the stack.
type metaTable struct {
	gate  shard.Gate     // by value: sections of Put and the metadata fast paths
	meta  unsafe.Pointer // slots × slotMeta, off-heap; set once by NewStore
	slots uint32
}

// table gives an edge the store's metaTable; nil for a nil store.
func (s *Store[P]) table() *metaTable {
	if s == nil {
		return nil
	}
	return &s.metaTable
}

// lateState is what Close decides about the metadata, and the bookkeeping
// of references freed after Close. All fields are guarded by mu; fast paths
// never read them.
type lateState struct {
	mu       sync.Mutex
	region   *memclass.Region // the metadata; nil once unmapped
	counted  bool             // Close has counted the outstanding references
	refs     int64            // outstanding at Close and not freed since
	cleanup  runtime.Cleanup  // unmaps region if the store is dropped first
	cleaning bool
}

// NewStore creates a store of cfg.Slots messages. P must hold no Go pointers
// (arena.ErrPointerType); cfg errors match arena.ErrInvalidConfig. It
// reserves address space for the messages and their metadata and commits
// none of it.
func NewStore[P any](cfg arena.Config) (*Store[P], error) {
	// Put writes a whole message over the slot: zeroing it first is a
	// second pass over it (without it, Free+Put of a 4 KiB message took
	// 26% less). PutFunc and putBytes zero what they do not write
	// themselves.
	cfg.NoZero = true
	a, err := arena.New[Message[P]](cfg)
	if err != nil {
		return nil, fmt.Errorf("message: NewStore: %w", err)
	}
	n := a.Capacity()
	region, err := memclass.Map(memclass.Host(), uintptr(n)*metaSize)
	if err != nil {
		a.Close()
		return nil, fmt.Errorf("message: NewStore: mapping metadata for %d slots: %w", n, err)
	}
	nP := max(runtime.GOMAXPROCS(0), runtime.NumCPU())
	s := &Store[P]{metaTable: metaTable{meta: region.Base(), slots: uint32(n)}, a: a, core: arenalink.Core(a), writers: make([]writerStripe, nP)}
	s.late.region = region
	s.gate.Init()
	return s, nil
}

// md returns slot idx's metadata; idx < s.slots.
func (s *metaTable) md(idx uint32) *slotMeta {
	return (*slotMeta)(unsafe.Add(s.meta, uintptr(idx)*metaSize))
}

// payloadSize is what Header.Size 0 stands for: the size of P.
func payloadSize[P any]() uint32 {
	var p *P // Sizeof does not evaluate *p: no P is materialised
	return uint32(min(unsafe.Sizeof(*p), math.MaxUint32))
}

// Put stores a message and returns its token, holding one reference. A zero
// h.Created is stamped with Now(); a zero h.Size becomes the size of P, so
// that edges' byte caps count the message. It fails with arena.ErrFull when
// every slot is in use and arena.ErrClosed after Close (both unwrapped, so
// that back-pressure allocates nothing).
//
// p is copied twice: into the call, then into the slot. For a large P,
// PutFunc writes the message in place instead. A large byte-array P (say
// [4096]byte) may also be placed by the compiler at an odd stack address,
// where Go's copies of it ran several times slower on the build machine
// (bench/payload.go says how much); a P of uint64s is 8-byte aligned.
func (s *Store[P]) Put(h Header, p P) (token.Token, error) {
	t, m, err := s.a.Alloc()
	if err != nil {
		return token.Nil, err
	}
	return s.finishPut(t, m, &h, &p)
}

// finishPut writes h and *p into the slot Alloc (or AllocWait) returned and
// publishes it. The writes run inside a gate section, so Close cannot unmap
// the slot under them: either the section sees the store open and Close
// waits for it, or it sees it closed and touches nothing.
func (s *Store[P]) finishPut(t token.Token, m *Message[P], h *Header, p *P) (token.Token, error) {
	if h.Created == 0 {
		// Outside the section. Stamp is Now without the fence before its
		// counter read (see internal/clock): 10 ns less per message.
		h.Created = clock.Stamp()
	}
	if h.Size == 0 {
		h.Size = payloadSize[P]()
	}
	g := s.gate.EnterAny()
	if s.gate.Closed() {
		// The slot stays allocated in an arena that is being closed.
		s.gate.Exit(g)
		return token.Nil, arena.ErrClosed
	}
	m.Header = *h
	m.Payload = *p
	s.publish(t, h)
	s.gate.Exit(g)
	return t, nil
}

// raceEnabled is true under the race detector, which publish must not
// hide plain stores from.
const raceEnabled = atomicx.Race

// publish makes t's freshly written message visible with one reference.
//
// It writes the three words with plain stores, not atomic ones (on amd64 an
// atomic store is an XCHG, a full fence: three of them were a tenth of a
// message hop). That is enough because nobody can be inside a CAS on ref
// now (its count is 0, and Retain and Free never CAS a zero count), a plain
// aligned 8-byte store is never torn, and a goroutine reads this message's
// fields only with t, which reaches it through a synchronising hand-off
// (an edge, a channel) that orders these stores before its loads. Readers
// with an older token of the slot see either the old words or the new
// generation, and refuse both. Under the race detector the stores are
// atomic, as the arena does with its plain stores.
func (s *Store[P]) publish(t token.Token, h *Header) {
	md := s.md(t.Index())
	if raceEnabled {
		md.deadline.Store(h.Deadline)
		md.info.Store(packInfo(h))
		md.ref.Store(refOf(t.Generation(), 1))
		return
	}
	*(*int64)(unsafe.Pointer(&md.deadline)) = h.Deadline
	*(*uint64)(unsafe.Pointer(&md.info)) = packInfo(h)
	*(*uint64)(unsafe.Pointer(&md.ref)) = refOf(t.Generation(), 1)
}

// PutFunc is Put for payloads too large to copy around: fill writes the
// message in place, in the slot, before anyone else can see it. The slot
// starts zeroed with h as its header (h.Created stamped if zero, h.Size set
// to the size of P if zero; fill may change both). If fill returns an
// error, or panics, the slot is freed and the error returned (or the panic
// propagated).
//
// A Close that starts while fill runs waits for fill to return (PutFunc
// then returns arena.ErrClosed, with the message never published), as it
// waits for View and Update callbacks. So fill must not wait for the store
// to be closed, and must not call Close.
func (s *Store[P]) PutFunc(h Header, fill func(*Message[P]) error) (token.Token, error) {
	if fill == nil {
		if s.gate.Closed() {
			return token.Nil, arena.ErrClosed
		}
		return token.Nil, fmt.Errorf("message: PutFunc: %w", arena.ErrNilFunc)
	}
	if h.Size == 0 {
		h.Size = payloadSize[P]()
	}
	return s.putFunc(h, fill)
}

// putFunc is PutFunc without the defaults (ByteStore.Write sets Size itself).
func (s *Store[P]) putFunc(h Header, fill func(*Message[P]) error) (token.Token, error) {
	if h.Created == 0 {
		h.Created = clock.Stamp()
	}
	t, m, err := s.a.Alloc()
	if err != nil {
		return token.Nil, err
	}
	w, ok := s.enterWriter()
	if !ok {
		return token.Nil, arena.ErrClosed // the slot stays in the closing arena
	}
	returned := false
	defer func() {
		if !returned {
			// fill panicked: the slot was never published, give it back.
			s.exitWriter(w)
			s.a.Free(t)
		}
	}()
	clearMessage(m) // the arena does not (NoZero), and fill is promised a zeroed slot
	m.Header = h
	ferr := fill(m)
	returned = true
	if ferr == nil && !s.gate.Closed() {
		s.publish(t, &m.Header)
		s.exitWriter(w)
		return t, nil
	}
	s.exitWriter(w)
	if ferr == nil {
		return token.Nil, arena.ErrClosed // Close started while fill ran
	}
	if err := s.a.Free(t); err != nil && !errors.Is(err, arena.ErrClosed) {
		return token.Nil, fmt.Errorf("message: PutFunc: %w (and freeing the slot: %v)", ferr, err)
	}
	return token.Nil, ferr
}

// clearMessage zeroes *m through a byte view: a typed zero value of a
// large P would be a temporary on the stack (or, past 128 KiB, the heap).
func clearMessage[P any](m *Message[P]) {
	clear(unsafe.Slice((*byte)(unsafe.Pointer(m)), unsafe.Sizeof(*m)))
}

// writerStripe counts the PutFunc fills running on one P (or stripe).
type writerStripe struct {
	n atomic.Int64
	_ [atomicx.CacheLine - 8]byte
}

// enterWriter counts a fill in, on the calling P's stripe, unless the store
// is closed. The count goes up before closed is read and Close sets closed
// before it reads the counts (both sequentially consistent), so either the
// writer sees closed or Close sees the writer and waits for it.
func (s *Store[P]) enterWriter() (*writerStripe, bool) {
	p := shard.Pin()
	shard.Unpin()
	w := &s.writers[uint(p)%uint(len(s.writers))]
	w.n.Add(1)
	if s.gate.Closed() {
		w.n.Add(-1)
		return nil, false
	}
	return w, true
}

func (s *Store[P]) exitWriter(w *writerStripe) { w.n.Add(-1) }

// waitWriters waits, after closed is set, for every fill counted in.
func (s *Store[P]) waitWriters() {
	var bo atomicx.Backoff
	for i := range s.writers {
		for s.writers[i].n.Load() != 0 {
			bo.Wait()
		}
	}
}

// putBytes stores data (at most the size of P) as the payload with
// h.Size = len(data), copying it straight into the slot inside a gate
// section. It is ByteStore.PutBytes without a callback.
func (s *Store[P]) putBytes(h Header, data []byte) (token.Token, error) {
	if h.Created == 0 {
		h.Created = clock.Stamp()
	}
	h.Size = uint32(len(data))
	t, m, err := s.a.Alloc()
	if err != nil {
		return token.Nil, err
	}
	g := s.gate.EnterAny()
	if s.gate.Closed() {
		s.gate.Exit(g)
		return token.Nil, arena.ErrClosed
	}
	m.Header = h
	payload := unsafe.Slice((*byte)(unsafe.Pointer(&m.Payload)), unsafe.Sizeof(m.Payload))
	clear(payload[copy(payload, data):]) // the rest of the slot reads as zeros (Rewrite, View)
	s.publish(t, &h)
	s.gate.Exit(g)
	return t, nil
}

// admitInfo is the edges' fast path of Header: it validates t and returns
// the header fields admission needs, with a few atomic loads and without
// touching the slot. Its errors carry no "message: op of token" prefix: the
// edge adds its own.
func (s *metaTable) admitInfo(t token.Token) (deadline int64, info uint64, err error) {
	idx, gen := t.Index(), uint64(t.Generation())
	for {
		g := s.gate.EnterAny()
		if s.gate.Closed() {
			s.gate.Exit(g)
			return 0, 0, arena.ErrClosed
		}
		if unissued(gen) || idx >= s.slots {
			s.gate.Exit(g)
			return 0, 0, &tokenError{t: t, kind: badIndex, slots: s.slots}
		}
		md := s.md(idx)
		r := md.ref.Load()
		var whole bool
		deadline, info, whole = md.admission()
		// A count that was above zero in both loads was above zero in
		// between: for one generation it never comes back from zero, so
		// the fields read belong to this allocation (a later one writes
		// them only after the count reached zero).
		if r>>32 == gen && uint32(r) != 0 {
			r = md.ref.Load()
		}
		s.gate.Exit(g)
		if r>>32 != gen || uint32(r) == 0 {
			return 0, 0, &tokenError{t: t, kind: staleKind(r, gen)}
		}
		if whole {
			return deadline, info, nil
		}
		runtime.Gosched() // an Update is rewriting the pair (refresh): let it finish
	}
}

// admission reads the slot's deadline and info as one pair, written
// together by publish or refresh: whole is false while a refresh is
// between its stores (a seqlock on info's sequence bits).
func (md *slotMeta) admission() (deadline int64, info uint64, whole bool) {
	info = md.info.Load()
	if info&(infoWriting|infoPlain) != 0 {
		// Writing: not whole. Plain: the deadline of this info's
		// version is 0, and info alone was read atomically.
		return 0, info, info&infoWriting == 0
	}
	deadline = md.deadline.Load()
	return deadline, info, md.info.Load() == info
}

// fastInfo is fastInfoN for one token, Send's path: t's size and true
// when t is a live message that an edge's fast ring may take as it is.
// On false the caller sends the checked way, which gives the exact error
// or lane.
func (s *metaTable) fastInfo(t token.Token) (size uint32, ok bool) {
	idx, gen := t.Index(), uint64(t.Generation())
	if t.IsNil() || unissued(gen) || idx >= s.slots {
		return 0, false
	}
	g := s.gate.EnterAny()
	if !s.gate.Closed() {
		size, ok = s.md(idx).plain(gen)
	}
	s.gate.Exit(g)
	return size, ok
}

// admitInfoN is admitInfo for a batch, in one gate section: for each
// token of ts, from the first, it fills qs[i] (token, deadline, size,
// flags) and qos[i] (the header's raw QoS) and returns how many tokens it
// found live. It stops at the first one that is not (nil, out of range,
// stale, or the store closed); the edge checks that one again with
// admitInfo for its error.
func (s *metaTable) admitInfoN(ts []token.Token, qs []queued, qos []uint8) int {
	g := s.gate.EnterAny()
	if s.gate.Closed() {
		s.gate.Exit(g)
		return 0
	}
	n := 0
	for ; n < len(ts); n++ {
		idx, gen := ts[n].Index(), uint64(ts[n].Generation())
		if unissued(gen) || idx >= s.slots {
			break
		}
		md := s.md(idx)
		r := md.ref.Load()
		deadline, info, whole := md.admission()
		// As in admitInfo: live in both loads means live in between. A
		// pair being rewritten stops the batch: admitInfo waits for it.
		if !whole || r>>32 != gen || uint32(r) == 0 {
			break
		}
		if r = md.ref.Load(); r>>32 != gen || uint32(r) == 0 {
			break
		}
		q := &qs[n]
		q.tok = ts[n]
		qos[n] = uint8(q.setInfo(deadline, info))
	}
	s.gate.Exit(g)
	return n
}

// fastInfoN is admitInfoN for SendBatch's path without staging: it returns
// how many leading tokens of ts are live messages that an edge's fast ring
// may take as they are (a valid QoS whose lane is BestEffort, no deadline),
// with their sizes in sizes. It stops at the first other token, which the
// caller sends the staged way (check gives its exact error or lane).
//
// It reads less than admitInfoN: the info word's infoPlain bit stands for
// the deadline and QoS checks, so the deadline is not read and info is
// read once (a refresh in progress, odd, stops the batch like a token
// that is not plain).
func (s *metaTable) fastInfoN(ts []token.Token, sizes []uint32) int {
	g := s.gate.EnterAny()
	if s.gate.Closed() {
		s.gate.Exit(g)
		return 0
	}
	n := 0
	for ; n < len(ts); n++ {
		idx, gen := ts[n].Index(), uint64(ts[n].Generation())
		if ts[n].IsNil() || unissued(gen) || idx >= s.slots {
			break
		}
		size, ok := s.md(idx).plain(gen)
		if !ok {
			break
		}
		sizes[n] = size
	}
	s.gate.Exit(g)
	return n
}

// plain reads ref, info and ref again, and returns the message's size and
// true when the slot holds a live allocation of generation gen whose info
// word is plain and even (no deadline, a BestEffort QoS, no refresh
// writing). As in admitInfo, live in both loads of ref means live in
// between, so info is this allocation's. The caller holds a gate section.
func (md *slotMeta) plain(gen uint64) (size uint32, ok bool) {
	r := md.ref.Load()
	info := md.info.Load()
	if info&(infoWriting|infoPlain) != infoPlain || r>>32 != gen || uint32(r) == 0 {
		return 0, false
	}
	if r = md.ref.Load(); r>>32 != gen || uint32(r) == 0 {
		return 0, false
	}
	return uint32(info >> 32), true
}

// live reports whether t holds references, for callers inside an arena hold
// (which keeps the metadata mapped).
func (s *metaTable) live(t token.Token) bool {
	r := s.md(t.Index()).ref.Load()
	return r>>32 == uint64(t.Generation()) && uint32(r) != 0
}

// Header returns a copy of t's header without touching the payload.
//
// It takes no hold: it copies the header optimistically, as arena.Load
// copies a value (arenalink.LoadHead: a seqlock on the slot's state word
// and version, retried if an Update ran meanwhile), and reads the
// message's count in the same section, so a message that is not published
// yet, or released, is refused. Before, the copy ran under an arena reader
// hold: two locked instructions on a word the producer wrote.
func (s *Store[P]) Header(t token.Token) (Header, error) {
	idx, gen := t.Index(), uint64(t.Generation())
	if s.gate.Closed() {
		return Header{}, arena.ErrClosed
	}
	if unissued(gen) || idx >= s.slots {
		return Header{}, &tokenError{op: "Header", t: t, kind: badIndex, slots: s.slots}
	}
	// The count is read by LoadHead, inside its section.
	head, r, err := arenalink.LoadHead(s.core, t, unsafe.Sizeof(Header{}), "Header", s.md(idx).refWord())
	if err != nil {
		return Header{}, s.arenaErr("Header", t, err)
	}
	if r>>32 != gen || uint32(r) == 0 {
		return Header{}, &tokenError{op: "Header", t: t, kind: staleKind(r, gen)}
	}
	return *(*Header)(unsafe.Pointer(&head)), nil
}

// Header sits at the start of Message and fits in what LoadHead copies.
var _ [arenalink.HeadMax - unsafe.Sizeof(Header{})]byte
var _ [0 - unsafe.Offsetof(Message[struct{}]{}.Header)]byte

// View runs fn with shared access to t's message; other View calls may run
// at the same time. fn must not keep the pointer, and must not call Update
// on t or Close on the store (both wait for fn). A Close that starts while
// fn runs waits for it.
//
// Nor should fn View t again, or read its Header: once an Update of t is
// waiting, a nested read waits for it, and the Update waits for fn, so the
// three deadlock (and a Close with them). Free and Retain of t inside fn
// are fine, as is any access to other tokens. Builds with -tags cella_debug report a nested
// access as arena.ErrNestedAccess instead of hanging.
func (s *Store[P]) View(t token.Token, fn func(*Message[P])) error {
	if s.gate.Closed() {
		return arena.ErrClosed
	}
	if fn == nil {
		return fmt.Errorf("message: View: %w", arena.ErrNilFunc)
	}
	idx, gen := t.Index(), uint64(t.Generation())
	if unissued(gen) || idx >= s.slots {
		return &tokenError{op: "View", t: t, kind: badIndex, slots: s.slots}
	}
	// The hold is Arena.View's, without its callback; the count is read
	// under it, where Close cannot unmap the metadata.
	m, r, err := arenalink.Hold(s.core, t, "View", s.md(idx).refWord())
	if err != nil {
		return s.arenaErr("View", t, err)
	}
	defer arenalink.Release(s.core, t)
	if r>>32 != gen || uint32(r) == 0 {
		return &tokenError{op: "View", t: t, kind: released}
	}
	fn((*Message[P])(m))
	return nil
}

// Update runs fn with exclusive access to t's message. fn must not keep the
// pointer, and must not call View, Header or Update on t (they wait for fn,
// which waits for them: a deadlock; builds with -tags cella_debug report it
// as arena.ErrNestedAccess) or Close on the store. With fan-out, every holder
// sees the update: copy first (Put a new message) if the holders must not.
// Edges that already hold t keep the Deadline, QoS, Flags and Size they
// read when it was sent. Free and Retain of t inside fn are fine (a slot
// freed there is recycled when fn returns), as is any access to other
// tokens.
func (s *Store[P]) Update(t token.Token, fn func(*Message[P])) error {
	if s.gate.Closed() {
		return arena.ErrClosed
	}
	if fn == nil {
		return fmt.Errorf("message: Update: %w", arena.ErrNilFunc)
	}
	ok := false
	err := s.a.Update(t, func(m *Message[P]) {
		if s.live(t) {
			ok = true
			defer s.refresh(t, m)
			fn(m)
		}
	})
	if err != nil {
		return s.arenaErr("Update", t, err)
	}
	if !ok {
		return &tokenError{op: "Update", t: t, kind: released}
	}
	return nil
}

// refresh copies the admission fields of m's header to t's metadata, at
// the end of an Update. Edges read the deadline and info without a hold,
// so the two are written as a seqlock: info's sequence bits go odd
// (infoWriting), the deadline is stored, then info with the new fields and
// the next even sequence; a reader that sees an odd sequence, or info
// change across its read of the deadline, reads again (admission). The
// stores run pinned (a gate section), so a reader never waits for a writer
// that the scheduler has put aside.
func (s *Store[P]) refresh(t token.Token, m *Message[P]) {
	md := s.md(t.Index())
	g := s.gate.EnterAny()
	old := md.info.Load()
	seq := old&infoSeqMask + infoWriting
	md.info.Store(old&^infoSeqMask | seq&infoSeqMask)
	md.deadline.Store(m.Header.Deadline)
	md.info.Store(packInfo(&m.Header) | (seq+infoWriting)&infoSeqMask)
	s.gate.Exit(g)
}

// arenaErr restates an arena error of op on t in the store's words.
func (s *Store[P]) arenaErr(op string, t token.Token, err error) error {
	switch {
	case errors.Is(err, arena.ErrClosed):
		return arena.ErrClosed
	case errors.Is(err, arena.ErrStale):
		return &tokenError{op: op, t: t, kind: staleOrForeign}
	case errors.Is(err, arena.ErrBadToken):
		return &tokenError{op: op, t: t, kind: badIndex, slots: s.slots}
	}
	return fmt.Errorf("message: %s of %v: %w", op, t, err)
}

// Retain adds one reference to t, for handing the same message to one more
// holder (fan-out: one Retain per extra edge). It refuses a token whose last
// reference is already gone. Call it while holding a reference to t (as
// SendAll and the Graph do): a Retain that races the Free of t's last
// reference may succeed on a message that is being freed, whose token then
// fails with ErrStale everywhere (see freeLast).
func (s *Store[P]) Retain(t token.Token) error {
	idx, gen := t.Index(), uint64(t.Generation())
	g := s.gate.EnterAny()
	if s.gate.Closed() {
		s.gate.Exit(g)
		return arena.ErrClosed
	}
	if unissued(gen) || idx >= s.slots {
		s.gate.Exit(g)
		return &tokenError{op: "Retain", t: t, kind: badIndex, slots: s.slots}
	}
	md := s.md(idx)
	for {
		r := md.ref.Load()
		if r>>32 != gen || uint32(r) == 0 {
			s.gate.Exit(g)
			return &tokenError{op: "Retain", t: t, kind: staleKind(r, gen)}
		}
		if uint32(r) == math.MaxInt32 {
			s.gate.Exit(g)
			return &tokenError{op: "Retain", t: t, kind: tooManyRefs}
		}
		if md.ref.CompareAndSwap(r, r+1) {
			s.gate.Exit(g)
			return nil
		}
	}
}

// Free drops one reference to t; dropping the last one recycles the slot.
// Freeing more often than t was retained (plus one for Put) returns an error
// matching arena.ErrStale and changes nothing. After Close, Free returns nil
// once per reference that was outstanding at Close, and arena.ErrClosed for
// anything else (see Store).
func (s *Store[P]) Free(t token.Token) error {
	idx, gen := t.Index(), uint64(t.Generation())
	g := s.gate.EnterAny()
	if s.gate.Closed() {
		s.gate.Exit(g)
		return s.lateFree(t)
	}
	if unissued(gen) || idx >= s.slots {
		s.gate.Exit(g)
		return &tokenError{op: "Free", t: t, kind: badIndex, slots: s.slots}
	}
	md := s.md(idx)
	for {
		r := md.ref.Load()
		if r>>32 != gen || uint32(r) == 0 {
			s.gate.Exit(g)
			return &tokenError{op: "Free", t: t, kind: staleKind(r, gen)}
		}
		if uint32(r) == 1 {
			s.gate.Exit(g)
			return s.freeLast(t, md)
		}
		if md.ref.CompareAndSwap(r, r-1) {
			s.gate.Exit(g)
			return nil
		}
	}
}

// freeLast drops t's last reference: the slot goes back to the arena,
// whose Free zeroes the count as it frees the slot (arenalink.FreeMarking),
// outside the section (the arena's Free has its own).
//
// The count is not CASed to zero first: the arena's CAS of the slot's state
// already picks one winner among Frees racing for the last reference (the
// others get ErrStale, as a later Free would), and one locked instruction
// less was 6% of a message's life on one goroutine here. What this
// gives up is only for misuse: a Retain by a goroutine that holds no
// reference, racing the last Free, may return nil for a message that is
// being freed (every later use of its token then returns ErrStale). A holder
// that Retains, as fan-out does, holds a reference of its own, so the count
// it sees is never the last one.
//
// If Close came in after the section, the arena refuses the Free and the
// reference is still counted: it is dropped as one that was outstanding at
// Close (lateFree), and Free returns nil all the same.
func (s *Store[P]) freeLast(t token.Token, md *slotMeta) error {
	err := arenalink.FreeMarking(s.core, t, md.refWord(), refOf(t.Generation(), 0))
	switch {
	case err == nil:
		return nil
	case errors.Is(err, arena.ErrClosed):
		return s.lateFree(t)
	case errors.Is(err, arena.ErrStale):
		// Another Free of the same reference won the arena's CAS.
		return &tokenError{op: "Free", t: t, kind: released}
	}
	return err
}

// lateFree is Free after Close: it drops one of the references that were
// outstanding at Close, or reports ErrClosed. It runs under late.mu, which
// is also what keeps the metadata mapped while it reads it.
func (s *Store[P]) lateFree(t token.Token) error {
	idx, gen := t.Index(), uint64(t.Generation())
	if unissued(gen) || idx >= s.slots {
		return arena.ErrClosed
	}
	l := &s.late
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.region == nil { // nothing was outstanding: unmapped
		return arena.ErrClosed
	}
	md := s.md(idx)
	for {
		// Until Close's sections have drained, fast paths that saw the
		// store open may still move this count: CAS, like them.
		r := md.ref.Load()
		if r>>32 != gen || uint32(r) == 0 {
			return arena.ErrClosed
		}
		if md.ref.CompareAndSwap(r, r-1) {
			break
		}
	}
	if l.counted {
		if l.refs--; l.refs == 0 {
			l.unmap()
		}
	}
	return nil
}

// unmap releases the metadata; late.mu is held and nothing else reads it.
func (l *lateState) unmap() {
	if l.cleaning {
		l.cleanup.Stop()
		l.cleaning = false
	}
	l.region.Unmap()
	l.region = nil
}

// Refs returns t's current reference count (for tests and diagnostics).
func (s *Store[P]) Refs(t token.Token) (int, error) {
	idx, gen := t.Index(), uint64(t.Generation())
	g := s.gate.EnterAny()
	if s.gate.Closed() {
		s.gate.Exit(g)
		return 0, arena.ErrClosed
	}
	if unissued(gen) || idx >= s.slots {
		s.gate.Exit(g)
		return 0, &tokenError{op: "Refs", t: t, kind: badIndex, slots: s.slots}
	}
	r := s.md(idx).ref.Load()
	s.gate.Exit(g)
	if r>>32 != gen || uint32(r) == 0 {
		return 0, &tokenError{op: "Refs", t: t, kind: staleKind(r, gen)}
	}
	return int(uint32(r)), nil
}

// Available returns how many messages can still be stored; exact when no
// operation is in flight.
func (s *Store[P]) Available() int { return s.a.Available() }

// Capacity returns how many messages the store holds at most.
func (s *Store[P]) Capacity() int { return s.a.Capacity() }

// Class returns the memory class of the store's arena.
func (s *Store[P]) Class() memclass.Class { return s.a.Class() }

// Stats returns the underlying arena's counters.
func (s *Store[P]) Stats() arena.Stats { return s.a.Stats() }

// Close releases the store's memory. Every later call returns an error
// matching arena.ErrClosed; a second Close too. Close is safe while other
// goroutines are inside store calls: it waits for running Put sections and
// for running View, Update and PutFunc callbacks (so none of them may call
// Close), and the calls it overtakes return arena.ErrClosed.
//
// Close edges, drain them and free what you hold before closing the store.
// If references are still outstanding, Close still closes, and returns an
// error matching ErrReferenced that says how many messages and references
// there were; each of those references can still be freed once, with Free
// returning nil (so draining an edge afterwards counts no FreeErrors).
func (s *Store[P]) Close() error {
	if !s.gate.Close() { // marks closed, waits for the running sections
		return arena.ErrClosed
	}
	s.waitWriters() // PutFunc fills
	// Waits for running View and Update callbacks, the last readers of the
	// metadata besides lateFree.
	aerr := s.a.Close()
	l := &s.late
	l.mu.Lock()
	defer l.mu.Unlock()
	st := s.a.Stats() // final: no arena operation can run any more
	msgs, refs, first := s.outstanding(int64(st.Allocs - st.Frees))
	l.counted = true
	if refs == 0 {
		l.unmap()
		return aerr
	}
	l.refs = refs
	l.cleanup = runtime.AddCleanup(s, unmapRegion, l.region)
	l.cleaning = true
	return errors.Join(&referencedError{msgs: msgs, refs: refs, first: first}, aerr)
}

func unmapRegion(r *memclass.Region) { r.Unmap() }

// outstanding counts the messages that hold references, and their
// references, and names up to three of them. bound is how many slots the
// arena had allocated at Close, at least the number of messages with
// references (a slot is allocated before it is published and freed after
// its count reached zero): the scan stops when it has found that many, so
// a store closed in the right order does not scan at all. It reads only
// the metadata of slots the arena ever handed out (arenalink.Touched): the
// rest is zero, and reading it would commit it.
func (s *Store[P]) outstanding(bound int64) (msgs, refs int64, first []token.Token) {
	arenalink.Touched(s.core, func(lo, hi uint32) {
		for idx := lo; idx < hi && msgs < bound; idx++ {
			r := s.md(idx).ref.Load()
			if n := uint32(r); n != 0 {
				msgs++
				refs += int64(n)
				if len(first) < 3 {
					first = append(first, token.New(idx, uint32(r>>32)))
				}
			}
		}
	})
	return msgs, refs, first
}

// HeaderStore is implemented by every Store.
var _ HeaderStore = (*Store[struct{}])(nil)

// tabled is implemented by every Store: an edge on one reads headers
// through the store's metaTable instead of HeaderStore.Header.
type tabled interface{ table() *metaTable }

var _ tabled = (*Store[struct{}])(nil)

// referencedError is Close's report of the references still outstanding.
type referencedError struct {
	msgs, refs int64
	first      []token.Token
}

func (e *referencedError) Error() string {
	b := fmt.Appendf(nil, "message: Store.Close: %d message(s) still held %d reference(s)", e.msgs, e.refs)
	for i, t := range e.first {
		if i == 0 {
			b = append(b, " ("...)
		} else {
			b = append(b, ", "...)
		}
		b = append(b, t.String()...)
	}
	if int64(len(e.first)) < e.msgs {
		b = append(b, ", ..."...)
	}
	if len(e.first) > 0 {
		b = append(b, ')')
	}
	b = append(b, "; the store is closed, and freeing each of them once returns nil"...)
	return string(b)
}

func (e *referencedError) Unwrap() error { return ErrReferenced }
