package shm

// Model-based fuzzing of the shared arena.
//
// FuzzShmModel decodes an input into a segment shape (slots, shards, 2 or
// 3 handles) and a sequence of operations, each through one handle. The
// handles stand for processes; besides the arena's methods an operation
// may Close a handle, kill the process behind it (die), Recover, or attach
// a new handle in a closed or dead one's place (Attach recovers after the
// dead at once). A plain model follows along: the live tokens with their
// values and owners, the last generation of each slot, the tokens freed or
// reclaimed, the dead not yet recovered. After every operation the answers
// must match the model exactly: values, token indices and generations,
// errors (errors.Is), Recover reports, Available, Stats.Processes and
// Stats.Recoveries.
//
// FuzzAttachHeader flips bytes of a real segment's header and attaches:
// the answer is a segment error or a handle that works, never a fault.
//
// Run them with
//
//	go test -run '^$' -fuzz '^FuzzShmModel$' -fuzztime 20s ./shm
//	go test -run '^$' -fuzz '^FuzzAttachHeader$' -fuzztime 20s ./shm

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
)

// fzPay is the fuzz payload: fields of several sizes derived from one
// value, so that a misplaced or torn write shows.
type fzPay struct {
	V uint64
	W [3]uint32
	H uint16
}

func fzVal(v uint64) fzPay {
	return fzPay{V: v, W: [3]uint32{uint32(v*3 + 1), uint32(v>>7) ^ 0xdeadbeef, uint32(v) * 7}, H: uint16(v ^ v>>16)}
}

const (
	fzStore = iota
	fzAlloc
	fzLoad
	fzLoadInto
	fzView
	fzUpdate
	fzFree
	fzStaleUse
	fzForged
	fzAdopt
	fzRecover
	fzClose
	fzDie
	fzReattach
	fzFreeInView
	fzNumOps
)

var fzNames = [fzNumOps]string{"Store", "Alloc", "Load", "LoadInto", "View", "Update", "Free", "StaleUse",
	"Forged", "Adopt", "Recover", "Close", "Die", "Reattach", "FreeInView"}

type fzLive struct {
	tok   token.Token
	val   uint64
	owner int // handle identity, or -1 after the owner closed
}

type fzHandle struct {
	a     *Arena[fzPay]
	id    int
	state int // fzOpen, fzClosed, fzDead
}

const (
	fzOpen = iota
	fzClosed
	fzDead
)

type fzModel struct {
	t          *testing.T
	dir        string
	slots      int
	live       []fzLive
	stale      []token.Token
	gen        map[uint32]uint32
	genBase    uint32 // a slot's first generation: random per segment
	hs         []fzHandle
	nextID     int
	dead       map[int]bool // identities dead and not yet recovered
	recoveries uint64
	step       int
	op         string
}

func (m *fzModel) fatalf(format string, args ...any) {
	m.t.Helper()
	m.t.Fatalf("step %d (%s): %s", m.step, m.op, fmt.Sprintf(format, args...))
}

func (m *fzModel) want(err, want error, what string) {
	m.t.Helper()
	if !errors.Is(err, want) {
		m.fatalf("%s: got %v, want %v", what, err, want)
	}
}

// handle returns the open handle nearest to slot i.
func (m *fzModel) handle(i int) *fzHandle {
	for k := range m.hs {
		h := &m.hs[(i+k)%len(m.hs)]
		if h.state == fzOpen {
			return h
		}
	}
	m.fatalf("no open handle")
	return nil
}

func (m *fzModel) open() int {
	n := 0
	for _, h := range m.hs {
		if h.state == fzOpen {
			n++
		}
	}
	return n
}

func (m *fzModel) retire(i int) {
	m.stale = append(m.stale, m.live[i].tok)
	if len(m.stale) > 32 {
		m.stale = m.stale[1:]
	}
	m.live = append(m.live[:i], m.live[i+1:]...)
}

// issued checks a new token against the model and records it.
func (m *fzModel) issued(tok token.Token, val uint64, owner int) {
	for _, l := range m.live {
		if l.tok.Index() == tok.Index() {
			m.fatalf("slot %d handed out as %v while %v is live", tok.Index(), tok, l.tok)
		}
	}
	want := m.gen[tok.Index()] + 1
	if m.gen[tok.Index()] == 0 {
		want = m.genBase
	}
	if int(tok.Index()) >= m.slots || tok.Generation() != want {
		m.fatalf("issued %v, want generation %d", tok, want)
	}
	m.gen[tok.Index()] = tok.Generation()
	m.live = append(m.live, fzLive{tok, val, owner})
}

// recovered applies a recovery to the model and returns what Recover
// should report.
func (m *fzModel) recovered() Recovery {
	if len(m.dead) == 0 {
		return Recovery{}
	}
	rep := Recovery{Dead: len(m.dead)}
	for i := 0; i < len(m.live); {
		if m.live[i].owner >= 0 && m.dead[m.live[i].owner] {
			rep.Reclaimed++ // a free: the next issue of the slot is gen+1
			m.retire(i)
			continue
		}
		i++
	}
	m.dead = map[int]bool{}
	m.recoveries++
	return rep
}

func (m *fzModel) attach(h *fzHandle) {
	a, err := Attach[fzPay](segName, Config{Dir: m.dir, Watch: -1})
	if err != nil {
		m.fatalf("Attach: %v", err)
	}
	m.recovered() // Attach recovers after the dead at once
	*h = fzHandle{a: a, id: m.nextID, state: fzOpen}
	m.nextID++
}

// check compares what every open handle says with the model.
func (m *fzModel) check() {
	m.t.Helper()
	procs := len(m.dead)
	for _, h := range m.hs {
		if h.state == fzOpen {
			procs++
		}
	}
	for i, h := range m.hs {
		if h.state != fzOpen {
			continue
		}
		if n := h.a.Available(); n != m.slots-len(m.live) {
			m.fatalf("handle %d: Available %d, model %d", i, n, m.slots-len(m.live))
		}
		st := h.a.Stats()
		if st.Processes != procs || st.Recoveries != m.recoveries {
			m.fatalf("handle %d: Stats %+v, model %d processes, %d recoveries", i, st, procs, m.recoveries)
		}
	}
}

func (m *fzModel) run(op, arg byte) {
	m.op = fzNames[op]
	h := m.handle(int(arg) % len(m.hs))
	a := h.a
	var pick fzLive
	pickAt := -1
	if len(m.live) > 0 {
		pickAt = int(arg/4) % len(m.live)
		pick = m.live[pickAt]
	}
	val := uint64(m.step)<<8 | uint64(arg)
	switch op {
	case fzStore, fzAlloc:
		var tok token.Token
		var err error
		if op == fzStore {
			tok, err = a.Store(fzVal(val))
		} else {
			var p *fzPay
			if tok, p, err = a.Alloc(); err == nil {
				if *p != (fzPay{}) {
					m.fatalf("Alloc of %v: not zeroed: %+v", tok, *p)
				}
				*p = fzVal(val)
			}
		}
		if len(m.live) == m.slots {
			m.want(err, ErrFull, "allocation with every slot live")
			return
		}
		if err != nil {
			m.fatalf("allocation with %d of %d live: %v", len(m.live), m.slots, err)
		}
		m.issued(tok, val, h.id)
	case fzLoad, fzLoadInto, fzView:
		if pickAt < 0 {
			return
		}
		var got fzPay
		var err error
		switch op {
		case fzLoad:
			got, err = a.Load(pick.tok)
		case fzLoadInto:
			err = a.LoadInto(pick.tok, &got)
		default:
			err = a.View(pick.tok, func(p *fzPay) { got = *p })
		}
		if err != nil || got != fzVal(pick.val) {
			m.fatalf("%v: %+v, %v; model %d", pick.tok, got, err, pick.val)
		}
	case fzUpdate:
		if pickAt < 0 {
			return
		}
		err := a.Update(pick.tok, func(p *fzPay) {
			if *p != fzVal(pick.val) {
				m.fatalf("Update of %v sees %+v, model %d", pick.tok, *p, pick.val)
			}
			*p = fzVal(val)
		})
		if err != nil {
			m.fatalf("Update %v: %v", pick.tok, err)
		}
		m.live[pickAt].val = val
	case fzFree:
		if pickAt < 0 {
			return
		}
		if err := a.Free(pick.tok); err != nil {
			m.fatalf("Free %v: %v", pick.tok, err)
		}
		m.retire(pickAt)
	case fzStaleUse:
		if len(m.stale) == 0 {
			return
		}
		m.use(a, m.stale[int(arg/4)%len(m.stale)], int(arg), ErrStale)
	case fzForged:
		bad := []token.Token{token.Nil, token.New(uint32(m.slots), 1), token.New(1<<32-1, 3), token.New(uint32(arg)%uint32(m.slots), 0)}
		m.use(a, bad[arg%4], int(arg/4), ErrBadToken)
		if pickAt >= 0 {
			m.use(a, token.New(pick.tok.Index(), pick.tok.Generation()+1+uint32(arg)), int(arg/4), ErrStale)
		}
	case fzAdopt:
		if pickAt < 0 {
			return
		}
		if err := a.Adopt(pick.tok); err != nil {
			m.fatalf("Adopt %v: %v", pick.tok, err)
		}
		m.live[pickAt].owner = h.id
	case fzRecover:
		want := m.recovered()
		rep, err := a.Recover()
		if err != nil || rep != want {
			m.fatalf("Recover: %+v, %v; model %+v", rep, err, want)
		}
	case fzClose:
		if m.open() < 2 {
			return
		}
		if err := a.Close(); err != nil {
			m.fatalf("Close: %v", err)
		}
		m.want(a.Close(), ErrClosed, "second Close")
		_, _, err := a.Alloc()
		m.want(err, ErrClosed, "Alloc after Close")
		for i := range m.live {
			if m.live[i].owner == h.id {
				m.live[i].owner = -1
			}
		}
		h.state = fzClosed
	case fzDie:
		if m.open() < 2 {
			return
		}
		die(a)
		m.dead[h.id] = true
		h.state = fzDead
	case fzReattach:
		for k := range m.hs {
			if r := &m.hs[(int(arg)+k)%len(m.hs)]; r.state != fzOpen {
				m.attach(r)
				return
			}
		}
	case fzFreeInView:
		if pickAt < 0 {
			return
		}
		freer := m.handle(int(arg/2) % len(m.hs)).a
		full := len(m.live) == m.slots
		err := a.View(pick.tok, func(p *fzPay) {
			if err := freer.Free(pick.tok); err != nil {
				m.fatalf("Free inside a View: %v", err)
			}
			_, err := freer.Load(pick.tok)
			m.want(err, ErrStale, "Load of a token freed inside a View")
			if full {
				_, _, err := a.Alloc()
				m.want(err, ErrFull, "Alloc while the only freed slot is still viewed")
			}
			if *p != fzVal(pick.val) {
				m.fatalf("the freed slot changed under the View")
			}
		})
		if err != nil {
			m.fatalf("View: %v", err)
		}
		m.retire(pickAt)
	}
}

// use calls one of the token methods (chosen by which) with tok and wants
// err.
func (m *fzModel) use(a *Arena[fzPay], tok token.Token, which int, want error) {
	m.t.Helper()
	var err error
	switch which % 6 {
	case 0:
		_, err = a.Load(tok)
	case 1:
		var dst fzPay
		err = a.LoadInto(tok, &dst)
		if dst != (fzPay{}) {
			m.fatalf("LoadInto %v wrote on error", tok)
		}
	case 2:
		err = a.View(tok, func(*fzPay) { m.fatalf("View of %v ran", tok) })
	case 3:
		err = a.Update(tok, func(*fzPay) { m.fatalf("Update of %v ran", tok) })
	case 4:
		err = a.Free(tok)
	case 5:
		err = a.Adopt(tok)
	}
	m.want(err, want, fmt.Sprintf("method %d with %v", which%6, tok))
}

const fzMaxOps = 150

// watchdog crashes the process with every goroutine's stack if the input
// is not done within d (the fuzzer then keeps the input as a crasher; a
// hang would otherwise only stall the workers). Call the function it
// returns when done.
func watchdog(d time.Duration) (stop func()) {
	tm := time.AfterFunc(d, func() {
		buf := make([]byte, 1<<20)
		panic(fmt.Sprintf("input still running after %v:\n%s", d, buf[:runtime.Stack(buf, true)]))
	})
	return func() { tm.Stop() }
}

func FuzzShmModel(f *testing.F) {
	f.Add([]byte{3, 1, 1, fzStore, 0, fzStore, 1, fzStore, 2, fzStore, 0, fzFree, 0, fzStaleUse, 1, fzStore, 1})
	f.Add([]byte{1, 0, 0, fzAlloc, 1, fzAlloc, 0, fzFreeInView, 0x41, fzAlloc, 1, fzLoad, 0})
	f.Add([]byte{5, 2, 1, fzStore, 0, fzStore, 0, fzStore, 1, fzAdopt, 5, fzDie, 0, fzStore, 1, fzRecover, 1,
		fzLoad, 1, fzReattach, 0, fzStore, 0, fzClose, 2, fzReattach, 2, fzStaleUse, 3})
	f.Add([]byte{7, 2, 0, fzStore, 0, fzStore, 1, fzDie, 1, fzReattach, 1, fzUpdate, 0, fzView, 4, fzForged, 9,
		fzForged, 10, fzForged, 11, fzFree, 0, fzFree, 0})
	f.Add([]byte{0, 0, 1, fzStore, 2, fzDie, 2, fzStore, 0, fzFreeInView, 3, fzStore, 1, fzRecover, 0, fzStaleUse, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 3 {
			return
		}
		defer watchdog(10 * time.Second)()
		m := &fzModel{
			t:     t,
			dir:   memDir(t),
			slots: 1 + int(data[0])%8,
			gen:   map[uint32]uint32{},
			dead:  map[int]bool{},
		}
		a, err := Create[fzPay](segName, Config{Slots: m.slots, Shards: 1 + int(data[1])%3, Dir: m.dir, Watch: -1})
		if err != nil {
			t.Fatal(err)
		}
		m.genBase = a.hdr.genBase
		m.hs = make([]fzHandle, 2+int(data[2])%2)
		m.hs[0] = fzHandle{a: a, id: 0}
		m.nextID = 1
		for i := 1; i < len(m.hs); i++ {
			m.attach(&m.hs[i])
		}
		defer func() {
			for _, h := range m.hs {
				if h.state == fzOpen {
					_ = h.a.Close()
				}
			}
		}()
		ops := data[3:]
		for i := 0; i+1 < len(ops) && i/2 < fzMaxOps; i += 2 {
			m.step = i / 2
			m.run(ops[i]%fzNumOps, ops[i+1])
			m.check()
		}
		// The last Close removes the file, whatever died on the way.
		m.op = "final Close"
		for i := range m.hs {
			if h := &m.hs[i]; h.state == fzOpen {
				if err := h.a.Close(); err != nil {
					m.fatalf("Close: %v", err)
				}
				h.state = fzClosed
			}
		}
		if _, err := os.Stat(segFile(m.dir)); !errors.Is(err, os.ErrNotExist) {
			m.fatalf("the segment file outlived its last handle: %v", err)
		}
	})
}

var (
	fzHeaderOnce sync.Once
	fzHeaderSeg  []byte
	fzHeaderToks []token.Token
)

// fzHeaderBase makes, once, a segment with a few allocations (one handle
// closed, so they outlive it; one still attached, so they die with it) and
// returns a snapshot of its bytes.
func fzHeaderBase(f *testing.F) {
	dir := f.TempDir()
	a, err := Create[fzPay](segName, Config{Slots: 6, Shards: 2, Dir: dir, Watch: -1})
	if err != nil {
		f.Fatal(err)
	}
	defer a.Close()
	b, err := Attach[fzPay](segName, Config{Dir: dir, Watch: -1})
	if err != nil {
		f.Fatal(err)
	}
	for i := range 4 {
		h := a
		if i%2 == 1 {
			h = b
		}
		tok, err := h.Store(fzVal(uint64(i)))
		if err != nil {
			f.Fatal(err)
		}
		fzHeaderToks = append(fzHeaderToks, tok)
	}
	if err := b.Close(); err != nil {
		f.Fatal(err)
	}
	if fzHeaderSeg, err = os.ReadFile(segFile(dir)); err != nil {
		f.Fatal(err)
	}
}

func FuzzAttachHeader(f *testing.F) {
	fzHeaderOnce.Do(func() { fzHeaderBase(f) })
	f.Add([]byte{})
	f.Add([]byte{0, 0, 1})                 // magic
	f.Add([]byte{8, 0, 1})                 // layout
	f.Add([]byte{12, 0, 1})                // ready
	f.Add([]byte{16, 0, 0x80})             // size
	f.Add([]byte{0x10, 1, 7, 0x20, 1, 3})  // geometry
	f.Add([]byte{0x00, 8, 1, 0x08, 8, 1})  // the recovery words
	f.Add([]byte{0x40, 0, 1, 0x50, 0, 99}) // type name
	f.Fuzz(func(t *testing.T, edits []byte) {
		defer watchdog(10 * time.Second)()
		seg := append([]byte(nil), fzHeaderSeg...)
		// Each edit is 3 bytes: offset (little-endian, within the header),
		// then a byte to XOR in.
		for i := 0; i+2 < len(edits) && i < 3*16; i += 3 {
			off := (int(edits[i]) | int(edits[i+1])<<8) % headerSize
			seg[off] ^= edits[i+2]
		}
		dir := memDir(t)
		if err := os.WriteFile(segFile(dir), seg, 0o600); err != nil {
			t.Fatal(err)
		}
		a, err := Attach[fzPay](segName, Config{Dir: dir, Watch: -1})
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrMismatch) && !errors.Is(err, ErrNotExist) {
				t.Fatalf("Attach to an altered header: %v", err)
			}
			return
		}
		// It attached: whatever the altered bytes meant, the handle works.
		for _, tok := range fzHeaderToks {
			if v, err := a.Load(tok); err == nil && v != fzVal(uint64(v.V)) {
				t.Fatalf("Load %v: %+v", tok, v)
			}
		}
		var toks []token.Token
		for range a.Capacity() + 1 {
			tok, err := a.Store(fzVal(7))
			if err != nil {
				if !errors.Is(err, ErrFull) {
					t.Fatalf("Store: %v", err)
				}
				break
			}
			toks = append(toks, tok)
		}
		for _, tok := range toks {
			if err := a.Update(tok, func(p *fzPay) { p.V++ }); err != nil {
				t.Fatalf("Update %v: %v", tok, err)
			}
			if err := a.Free(tok); err != nil {
				t.Fatalf("Free %v: %v", tok, err)
			}
		}
		if _, err := a.Recover(); err != nil {
			t.Fatalf("Recover: %v", err)
		}
		if err := a.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	})
}
