package shm

// Misuse: bad names, bad configs, pointer types, Attach with another T,
// Attach to files that are not (whole) segments, forged tokens, nil
// callbacks and destinations. Each gets its sentinel error, never a panic
// or a fault, and leaves the segment as it was.

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/cella-go/cella/token"
)

func TestBadNames(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{
		"", ".", "..", ".hidden", "a/b", "../up", "/abs", "a b", "tab\t", "new\nline",
		"é", "a*", "a:b", "a\x00b", strings.Repeat("x", 201),
	} {
		_, err := Create[pay](name, Config{Slots: 1, Dir: dir, Watch: -1})
		wantErr(t, err, ErrBadName, "Create "+name)
		_, err = Attach[pay](name, Config{Dir: dir, Watch: -1})
		wantErr(t, err, ErrBadName, "Attach "+name)
	}
	for _, name := range []string{"a", "A-z_0.9", "x..y", strings.Repeat("x", 200)} {
		a, err := Create[pay](name, Config{Slots: 1, Dir: dir, Watch: -1})
		must(t, err, "Create "+name)
		must(t, a.Close(), "Close")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("bad names left files: %v", ents)
	}
}

func TestBadConfig(t *testing.T) {
	dir := t.TempDir()
	for _, cfg := range []Config{
		{Slots: 0}, {Slots: -1}, {Slots: MaxSlots + 1}, {Slots: 1 << 62},
		{Slots: 8, Shards: -1}, {Slots: 8, Shards: MaxShards + 1},
	} {
		cfg.Dir, cfg.Watch = dir, -1
		_, err := Create[pay]("cfg", cfg)
		wantErr(t, err, ErrInvalidConfig, fmt.Sprintf("Create with %+v", cfg))
	}
	// A missing directory is an error, not a panic.
	_, err := Create[pay]("cfg", Config{Slots: 1, Dir: dir + "/missing", Watch: -1})
	if err == nil {
		t.Fatal("Create in a missing directory succeeded")
	}
	// More shards than slots is not an error: the shards shrink.
	a, err := Create[pay]("cfg", Config{Slots: 3, Shards: MaxShards, Dir: dir, Watch: -1})
	must(t, err, "Create with more shards than slots")
	defer a.Close()
	if a.shards != 3 {
		t.Fatalf("%d shards for 3 slots", a.shards)
	}
	// Attach ignores the geometry fields.
	b, err := Attach[pay]("cfg", Config{Slots: -5, Shards: -5, Dir: dir, Watch: -1})
	must(t, err, "Attach ignores Slots and Shards")
	must(t, b.Close(), "Close")
}

type withPtr struct {
	A uint64
	P *int
}

type nestedPtr struct {
	A [2]struct {
		B uint32
		S string
	}
}

func TestPointerTypes(t *testing.T) {
	dir := t.TempDir()
	checks := []func() error{
		func() error { _, err := Create[*int]("p", Config{Slots: 1, Dir: dir}); return err },
		func() error { _, err := Create[[]byte]("p", Config{Slots: 1, Dir: dir}); return err },
		func() error { _, err := Create[string]("p", Config{Slots: 1, Dir: dir}); return err },
		func() error { _, err := Create[map[int]int]("p", Config{Slots: 1, Dir: dir}); return err },
		func() error { _, err := Create[chan int]("p", Config{Slots: 1, Dir: dir}); return err },
		func() error { _, err := Create[func()]("p", Config{Slots: 1, Dir: dir}); return err },
		func() error { _, err := Create[any]("p", Config{Slots: 1, Dir: dir}); return err },
		func() error { _, err := Create[unsafe.Pointer]("p", Config{Slots: 1, Dir: dir}); return err },
		func() error { _, err := Create[withPtr]("p", Config{Slots: 1, Dir: dir}); return err },
		func() error { _, err := Create[nestedPtr]("p", Config{Slots: 1, Dir: dir}); return err },
		func() error { _, err := Create[[4]string]("p", Config{Slots: 1, Dir: dir}); return err },
		func() error { _, err := Attach[*int]("p", Config{Dir: dir}); return err },
		func() error { _, err := Attach[withPtr]("p", Config{Dir: dir}); return err },
	}
	for i, f := range checks {
		wantErr(t, f(), ErrPointerType, fmt.Sprint("pointer type #", i))
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("pointer types left files: %v", ents)
	}
}

// Types for TestAttachMismatch: two16 is what the segment is made for.
type (
	two16      struct{ A, B uint64 }
	two16Again struct{ A, B uint64 } // same shape, another name: matches
	renamed    struct{ A, C uint64 } // same size, a field renamed
	swapped    struct{ B, A uint64 } // same size, names at other offsets
	retyped    struct {
		A uint64
		B int64
	}
	split struct { // same size, other fields
		A    uint64
		B, C uint32
	}
	three   struct{ A, B, C uint64 }
	bytes16 [16]byte // same size, alignment 1
	words16 [2]uint64
)

func TestAttachMismatch(t *testing.T) {
	hs := segment[two16](t, 1, Config{Slots: 4})
	dir := dirOf(hs[0])
	tok, err := hs[0].Store(two16{1, 2})
	must(t, err, "Store")
	mismatch := []func() error{
		func() error { _, err := Attach[renamed](segName, Config{Dir: dir, Watch: -1}); return err },
		func() error { _, err := Attach[swapped](segName, Config{Dir: dir, Watch: -1}); return err },
		func() error { _, err := Attach[retyped](segName, Config{Dir: dir, Watch: -1}); return err },
		func() error { _, err := Attach[split](segName, Config{Dir: dir, Watch: -1}); return err },
		func() error { _, err := Attach[three](segName, Config{Dir: dir, Watch: -1}); return err },
		func() error { _, err := Attach[uint64](segName, Config{Dir: dir, Watch: -1}); return err },
		func() error { _, err := Attach[bytes16](segName, Config{Dir: dir, Watch: -1}); return err },
		func() error { _, err := Attach[words16](segName, Config{Dir: dir, Watch: -1}); return err },
		func() error { _, err := Attach[struct{}](segName, Config{Dir: dir, Watch: -1}); return err },
	}
	for i, f := range mismatch {
		err := f()
		if !errors.Is(err, ErrMismatch) {
			t.Fatalf("Attach with mismatching type #%d: %v", i, err)
		}
	}
	if st := hs[0].Stats(); st.Processes != 1 {
		t.Fatalf("failed Attaches left records taken: %+v", st)
	}
	b, err := Attach[two16Again](segName, Config{Dir: dir, Watch: -1})
	must(t, err, "Attach with an identical struct of another name")
	defer b.Close()
	if v, err := b.Load(tok); err != nil || v != (two16Again{1, 2}) {
		t.Fatalf("Load through the other type: %v %v", v, err)
	}
	// A layout version this build does not read.
	setHeader(t, hs[0].Path(), func(h *header) { h.layout++ })
	_, err = Attach[two16](segName, Config{Dir: dir, Watch: -1})
	wantErr(t, err, ErrMismatch, "Attach to another layout version")
}

// TestAttachCorrupt: Attach to a file that is not a whole segment (random
// bytes of any size, a segment cut short, a header whose offsets or
// geometry were altered) is ErrCorrupt, and to what a creator that died
// half-way leaves (an empty file, a zero header, ready not set) is
// ErrNotExist; never a fault. The check recomputes the
// geometry from the header's inputs, so it refuses any header whose
// offsets would reach past the file; an altered capacity that yields the
// same offsets (40 → 41 fits the same pages) is caught by the shard lines,
// which must partition exactly that many slots.
func TestAttachCorrupt(t *testing.T) {
	good := segment[pay](t, 1, Config{Slots: 40, Shards: 3})
	goodBytes, err := os.ReadFile(good[0].Path())
	must(t, err, "read segment")
	dir := t.TempDir()
	path := segFile(dir)
	attach := func() error {
		a, err := Attach[pay](segName, Config{Dir: dir, Watch: -1})
		if err == nil {
			_ = a.Close()
		}
		return err
	}
	write := func(b []byte) { must(t, os.WriteFile(path, b, 0o600), "write") }
	r := rand.NewChaCha8([32]byte{1, 2})
	random := func(n int) []byte {
		b := make([]byte, n)
		_, _ = r.Read(b)
		return b
	}

	wantErr(t, attach(), ErrNotExist, "Attach with no file")
	// What a creator that died half-way leaves: not a segment yet.
	write(nil)
	wantErr(t, attach(), ErrNotExist, "empty file")
	write(make([]byte, len(goodBytes)))
	wantErr(t, attach(), ErrNotExist, "sized file, header not written")
	for _, n := range []int{1, 100, headerSize - 1, headerSize, headerSize + 1, 3 * headerSize, len(goodBytes)} {
		write(random(n))
		wantErr(t, attach(), ErrCorrupt, "random bytes")
	}
	for _, n := range []int{8, 100, headerSize - 1, headerSize, headerSize + 100, len(goodBytes) / 2, len(goodBytes) - 1} {
		write(goodBytes[:n])
		wantErr(t, attach(), ErrCorrupt, "segment cut short")
	}
	// Right magic, rest random.
	for range 20 {
		b := random(len(goodBytes))
		copy(b, goodBytes[:8])
		write(b)
		if err := attach(); !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrMismatch) && !errors.Is(err, ErrNotExist) {
			t.Fatalf("right magic, random header: %v", err)
		}
	}
	// The segment itself, each field of its header altered.
	for _, c := range []struct {
		name string
		edit func(h *header)
		want error
	}{
		{"magic", func(h *header) { h.magic++ }, ErrCorrupt},
		{"ready", func(h *header) { h.ready = 0 }, ErrNotExist},
		{"ready=2", func(h *header) { h.ready = 2 }, ErrNotExist},
		{"capacity 0", func(h *header) { h.capacity = 0 }, ErrCorrupt},
		{"capacity+1000", func(h *header) { h.capacity += 1000 }, ErrCorrupt},
		// Small changes leave every offset where it was (the regions are
		// rounded up): only the shard lines tell the capacity was altered.
		{"capacity-1", func(h *header) { h.capacity-- }, ErrCorrupt},
		{"capacity-2", func(h *header) { h.capacity -= 2 }, ErrCorrupt},
		{"capacity+1", func(h *header) { h.capacity++ }, ErrCorrupt},
		{"capacity huge", func(h *header) { h.capacity = MaxSlots }, ErrCorrupt},
		{"capacity max", func(h *header) { h.capacity = 1<<32 - 1 }, ErrCorrupt},
		{"shards 0", func(h *header) { h.shards = 0 }, ErrCorrupt},
		{"shards>capacity", func(h *header) { h.shards = h.capacity + 1 }, ErrCorrupt},
		{"shards+1", func(h *header) { h.shards++ }, ErrCorrupt},
		{"shards huge", func(h *header) { h.shards = 1 << 31 }, ErrCorrupt},
		{"size", func(h *header) { h.size += pageSize }, ErrCorrupt},
		{"size huge", func(h *header) { h.size = 1 << 62 }, ErrCorrupt},
		{"recordsOff", func(h *header) { h.recordsOff += 8 }, ErrCorrupt},
		{"recordSize", func(h *header) { h.recordSize = 64 }, ErrCorrupt},
		{"shardsOff", func(h *header) { h.shardsOff = 1 << 40 }, ErrCorrupt},
		{"statesOff", func(h *header) { h.statesOff -= 64 }, ErrCorrupt},
		{"linksOff", func(h *header) { h.linksOff = 0 }, ErrCorrupt},
		{"payloadOff", func(h *header) { h.payloadOff += pageSize }, ErrCorrupt},
		{"payloadOff wraps", func(h *header) { h.payloadOff = ^uint64(0) }, ErrCorrupt},
		{"stride", func(h *header) { h.stride *= 2 }, ErrCorrupt},
		{"slotSize", func(h *header) { h.slotSize++ }, ErrMismatch},
		{"slotAlign", func(h *header) { h.slotAlign = 1 }, ErrMismatch},
		{"typeHash", func(h *header) { h.typeHash ^= 1 }, ErrMismatch},
		{"maxProcs", func(h *header) { h.maxProcs = 1 << 20 }, ErrMismatch},
		{"holds", func(h *header) { h.holds = 0 }, ErrMismatch},
	} {
		write(goodBytes)
		setHeader(t, path, c.edit)
		if err := attach(); !errors.Is(err, c.want) {
			t.Fatalf("header %s altered: %v, want %v", c.name, err, c.want)
		}
	}
	// Unaltered, the copy attaches (and recovers its dead records).
	write(goodBytes)
	must(t, attach(), "Attach to an unaltered copy")
}

// TestScribbledFreelistHeads: a peer that writes garbage into the shared
// freelist words (a shard head, a way cache or a frontier past the
// capacity) costs slots, never a fault, an index out of range or an Alloc
// that spins forever: pop and the ErrFull census read the words the same way.
func TestScribbledFreelistHeads(t *testing.T) {
	for _, c := range []struct {
		name  string
		write func(a *seg)
	}{
		{"shard head", func(a *seg) { atomic.StoreUint64(&a.shard(0).head, 7<<32|uint64(a.capacity)+5) }},
		{"way cache", func(a *seg) { atomic.StoreUint64(&a.rec.ways[3].cache, 9<<32|1<<31) }},
		{"frontier", func(a *seg) { atomic.StoreUint32(&a.shard(1).frontier, 1<<30) }},
		{"frontier below start", func(a *seg) { atomic.StoreUint32(&a.shard(1).frontier, 0) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := segment[pay](t, 1, Config{Slots: 8, Shards: 2})[0]
			var toks []token.Token
			for range 3 {
				tok, err := a.Store(pay{})
				must(t, err, "Store")
				toks = append(toks, tok)
			}
			c.write(a.seg)
			done := make(chan error, 1)
			go func() {
				for range 2 * a.Capacity() {
					tok, _, err := a.Alloc()
					if err != nil {
						done <- err
						return
					}
					if tok.Index() >= uint32(a.Capacity()) {
						done <- fmt.Errorf("Alloc handed out %v, capacity %d", tok, a.Capacity())
						return
					}
				}
				done <- errors.New("more allocations than slots")
			}()
			select {
			case err := <-done:
				wantErr(t, err, ErrFull, "Alloc after the scribble")
			case <-time.After(10 * time.Second):
				t.Fatal("Alloc spins on a scribbled freelist word")
			}
			for _, tok := range toks {
				must(t, a.Free(tok), "Free")
			}
		})
	}
}

// forged returns tokens no arena of capacity slots with the live token
// live issued: malformed ones (ErrBadToken) and well-formed ones that name
// no live allocation (ErrStale).
func forged(slots int, live token.Token) (bad, stale []token.Token) {
	bad = []token.Token{
		token.Nil,
		token.New(uint32(slots), 1),
		token.New(uint32(slots), live.Generation()),
		token.New(1<<32-1, 1),
		token.New(1<<32-1, 1<<32-1),
		token.New(live.Index()+1, 0), // generation 0 is never issued
		token.New(uint32(slots-1), 0),
		token.New(1<<31, 0),
	}
	stale = []token.Token{
		token.New(live.Index(), live.Generation()+1),
		token.New(live.Index(), live.Generation()+1000),
		token.New(live.Index(), 1<<32-1),
		token.New(live.Index()+1, 1), // a slot never allocated
		token.New(uint32(slots-1), 7),
	}
	return bad, stale
}

func TestForgedTokens(t *testing.T) {
	const slots = 8
	hs := segment[pay](t, 2, Config{Slots: slots, Shards: 2})
	live, err := hs[0].Store(patterned(1, 1))
	must(t, err, "Store")
	if live.Index()+1 >= slots {
		t.Fatalf("unexpected first index %v", live)
	}
	// Tokens of another segment: indices past this one's capacity are
	// malformed here; ones inside it name nothing live. (A foreign token
	// whose index and generation match a live one here cannot be told
	// apart: tokens carry no segment identity.)
	other := segment[pay](t, 1, Config{Slots: 64})
	var foreign []token.Token
	for range 20 {
		tok, err := other[0].Store(pay{})
		must(t, err, "Store in the other segment")
		foreign = append(foreign, tok)
	}
	bad, stale := forged(slots, live)
	for _, tok := range foreign {
		switch {
		case tok.Index() >= slots:
			bad = append(bad, tok)
		case tok.Index() != live.Index():
			stale = append(stale, tok)
		}
	}
	for _, h := range hs {
		for _, tc := range []struct {
			toks []token.Token
			want error
		}{{bad, ErrBadToken}, {stale, ErrStale}} {
			for _, tok := range tc.toks {
				var dst pay
				_, err := h.Load(tok)
				wantErr(t, err, tc.want, "Load "+tok.String())
				wantErr(t, h.LoadInto(tok, &dst), tc.want, "LoadInto "+tok.String())
				wantErr(t, h.View(tok, func(*pay) { t.Error("View ran") }), tc.want, "View "+tok.String())
				wantErr(t, h.Update(tok, func(*pay) { t.Error("Update ran") }), tc.want, "Update "+tok.String())
				wantErr(t, h.Free(tok), tc.want, "Free "+tok.String())
				wantErr(t, h.Adopt(tok), tc.want, "Adopt "+tok.String())
				if dst != (pay{}) {
					t.Fatal("LoadInto wrote on error")
				}
			}
		}
	}
	// Nothing changed: the live token is intact, no slot was lost or won.
	if v, err := hs[1].Load(live); err != nil || v != patterned(1, 1) {
		t.Fatalf("live token after forgeries: %v %v", v, err)
	}
	if n := hs[1].Available(); n != slots-1 {
		t.Fatalf("Available = %d after forgeries", n)
	}
	if got := len(allocAll(t, hs, slots)); got != slots-1 {
		t.Fatalf("%d allocations after forgeries, want %d", got, slots-1)
	}
}

func TestNilArguments(t *testing.T) {
	hs := segment[pay](t, 1, Config{Slots: 2})
	a := hs[0]
	tok, err := a.Store(pay{})
	must(t, err, "Store")
	wantErr(t, a.View(tok, nil), ErrNilFunc, "View(nil)")
	wantErr(t, a.Update(tok, nil), ErrNilFunc, "Update(nil)")
	wantErr(t, a.View(token.Nil, nil), ErrNilFunc, "View(Nil, nil)")
	wantErr(t, a.LoadInto(tok, nil), ErrNilPointer, "LoadInto(nil)")
	// The slot is not left held.
	within(t, 5*time.Second, "Update after nil arguments", func() {
		must(t, a.Update(tok, func(p *pay) { p.Seq = 1 }), "Update")
	})
}

// TestTooManyProcs: MaxProcs handles attach; one more is ErrTooManyProcs
// and takes nothing; once one closes, another attaches in its place.
func TestTooManyProcs(t *testing.T) {
	if testing.Short() {
		t.Skip("attaches MaxProcs handles")
	}
	hs := segment[uint64](t, MaxProcs, Config{Slots: 4})
	_, err := Attach[uint64](segName, Config{Dir: dirOf(hs[0]), Watch: -1})
	wantErr(t, err, ErrTooManyProcs, "Attach past MaxProcs")
	if st := hs[0].Stats(); st.Processes != MaxProcs {
		t.Fatalf("Processes = %d", st.Processes)
	}
	must(t, hs[17].Close(), "Close")
	c := attachTo[uint64](t, dirOf(hs[0]), -1)
	if c.me != 17 {
		t.Fatalf("the new handle took record %d, not the freed 17", c.me)
	}
}
