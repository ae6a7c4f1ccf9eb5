package arena

// Model-based fuzzing of the arena.
//
// A fuzz input decodes into an arena shape (Slots, Shards, first generation)
// and a sequence of operations, each tagged with one of fuzzWorkers
// goroutines. Operations are grouped into lockstep batches: the ops of one
// batch run at the same time, each on its own goroutine, and a batch only
// holds ops that commute (distinct goroutines, distinct target tokens, no
// Close next to anything else). After every batch the results are checked
// against a plain-map model: the same answers (payloads, token generations),
// the same errors (errors.Is), the same Available, Capacity and Stats.
//
// Run it with
//
//	go test -run '^$' -fuzz '^FuzzArenaModel$' -fuzztime 20s ./arena

import (
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
)

// fz is the fuzz payload: a few fields of different sizes, so that a torn or
// misplaced write shows up.
type fz struct {
	A uint64
	B [3]uint32
	C uint16
}

func fzPattern(v uint64) fz {
	return fz{
		A: v,
		B: [3]uint32{uint32(v*3 + 1), uint32(v>>7) ^ 0xdeadbeef, uint32(v) * 7},
		C: uint16(v ^ v>>16 ^ 0x5a5a),
	}
}

type fzOp uint8

const (
	fzAlloc fzOp = iota
	fzStore
	fzLoad
	fzView
	fzUpdate
	fzFree
	fzStale  // a freed token through one of Load, View, Update, Free
	fzForged // a forged token through one of Load, View, Update, Free
	fzClose
)

var fzOpNames = [...]string{"Alloc", "Store", "Load", "View", "Update", "Free", "Stale", "Forged", "Close"}

func (o fzOp) String() string { return fzOpNames[o] }

// fzMethod is the token method a Load/View/Update/Free/Stale/Forged op calls.
type fzMethod uint8

const (
	mLoad fzMethod = iota
	mView
	mUpdate
	mFree
)

var fzMethodNames = [...]string{"Load", "View", "Update", "Free"}

// fzWant is what the model expects of a token op.
type fzWant uint8

const (
	wantOK fzWant = iota
	wantStale
	wantBad
	wantClosed
	wantClosedOrBad // after Close, a malformed token may be rejected as either
)

const (
	fuzzWorkers = 4
	fuzzMaxOps  = 400
)

var fzSlotChoices = [...]int{1, 2, 3, 4, 5, 7, 8, 16, 33, 64}
var fzShardChoices = [...]int{0, 1, 2, 3, 4, 7, 16}

// fzModel is the plain-map model of an arena.
type fzModel struct {
	slots    int
	firstGen uint32
	closed   bool
	live     map[token.Token]uint64 // token → payload seed
	liveIdx  map[uint32]token.Token // slot index → its live token
	order    []token.Token          // live tokens, in a deterministic order
	stale    []token.Token
	nextGen  map[uint32]uint32 // generation the next Alloc of an index must carry
	retired  map[uint32]bool
	allocs   uint64
	frees    uint64
	failed   uint64
}

func (m *fzModel) capacity() int { return m.slots - len(m.retired) }

func (m *fzModel) available() int {
	if m.closed {
		return 0
	}
	return m.capacity() - len(m.live)
}

func (m *fzModel) add(t token.Token, v uint64) {
	m.live[t] = v
	m.liveIdx[t.Index()] = t
	m.order = append(m.order, t)
}

func (m *fzModel) remove(t token.Token) {
	delete(m.live, t)
	delete(m.liveIdx, t.Index())
	for i, x := range m.order {
		if x == t {
			m.order = append(m.order[:i], m.order[i+1:]...)
			break
		}
	}
	if len(m.stale) < 64 {
		m.stale = append(m.stale, t)
	} else {
		m.stale[int(t.Index()+t.Generation())%len(m.stale)] = t
	}
	idx, gen := t.Index(), t.Generation()
	if gen+1 == retiredGen {
		m.retired[idx] = true
	}
	m.nextGen[idx] = gen + 1
}

// classify says what a token op must return for t, given the model (which
// holds the state before the op's batch).
func (m *fzModel) classify(t token.Token) fzWant {
	malformed := t.IsNil() || t.Generation() == 0 || t.Generation() == retiredGen || int(t.Index()) >= m.slots
	switch {
	case m.closed && malformed:
		return wantClosedOrBad
	case m.closed:
		return wantClosed
	case malformed:
		return wantBad
	case m.liveTok(t):
		return wantOK
	default:
		return wantStale
	}
}

func (m *fzModel) liveTok(t token.Token) bool { _, ok := m.live[t]; return ok }

// fzStep is one planned op and, after it ran, its results.
type fzStep struct {
	op     fzOp
	method fzMethod
	gid    int
	tok    token.Token
	val    uint64 // seed stored by Alloc/Store/Update
	want   fzWant
	n      int // position in the input, for messages

	gotTok  token.Token
	gotErr  error
	gotVal  fz
	calls   int
	dirty   bool // Alloc returned a non-zero payload
	didExec bool
}

func (s *fzStep) String() string {
	switch s.op {
	case fzAlloc, fzStore, fzClose:
		return fmt.Sprintf("op %d g%d %v", s.n, s.gid, s.op)
	}
	return fmt.Sprintf("op %d g%d %v(%s %v)", s.n, s.gid, s.op, fzMethodNames[s.method], s.tok)
}

func (s *fzStep) exec(a *Arena[fz]) {
	s.didExec = true
	switch s.op {
	case fzAlloc:
		t, p, err := a.Alloc()
		s.gotTok, s.gotErr = t, err
		if err == nil {
			s.dirty = *p != fz{}
			*p = fzPattern(s.val)
		}
	case fzStore:
		s.gotTok, s.gotErr = a.Store(fzPattern(s.val))
	case fzClose:
		s.gotErr = a.Close()
	default:
		switch s.method {
		case mLoad:
			if s.val&1 == 0 {
				s.gotVal, s.gotErr = a.Load(s.tok)
				break
			}
			// LoadInto: on error the destination stays as it was.
			dst := fzPattern(^s.val)
			s.gotErr = a.LoadInto(s.tok, &dst)
			if s.gotErr == nil {
				s.gotVal = dst
			} else if dst != fzPattern(^s.val) {
				// Matches no expectation, so the batch check fails.
				s.gotErr = fmt.Errorf("LoadInto changed its destination on error (%v)", s.gotErr)
			}
		case mView:
			s.gotErr = a.View(s.tok, func(p *fz) { s.calls++; s.gotVal = *p })
		case mUpdate:
			s.gotErr = a.Update(s.tok, func(p *fz) { s.calls++; s.gotVal = *p; *p = fzPattern(s.val) })
		case mFree:
			s.gotErr = a.Free(s.tok)
		}
	}
}

// fzRun executes batches on fuzzWorkers persistent goroutines.
type fzRun struct {
	a    *Arena[fz]
	work [fuzzWorkers]chan *fzStep
	done chan struct{}
}

func newFzRun(a *Arena[fz]) *fzRun {
	r := &fzRun{a: a, done: make(chan struct{}, fuzzWorkers)}
	for i := range r.work {
		r.work[i] = make(chan *fzStep)
		go func(c chan *fzStep) {
			for s := range c {
				s.exec(a)
				r.done <- struct{}{}
			}
		}(r.work[i])
	}
	return r
}

func (r *fzRun) run(batch []*fzStep) {
	for _, s := range batch {
		r.work[s.gid] <- s
	}
	for range batch {
		<-r.done
	}
}

func (r *fzRun) stop() {
	for _, c := range r.work {
		close(c)
	}
}

// fuzzArenaModel is the body of FuzzArenaModel, also run on fixed inputs by
// TestArenaModelSeeds.
func fuzzArenaModel(t *testing.T, data []byte) {
	if len(data) < 3 {
		return
	}
	slots := fzSlotChoices[int(data[0])%len(fzSlotChoices)]
	shards := fzShardChoices[int(data[1])%len(fzShardChoices)]
	churnProcs := data[1]&0x80 != 0
	var firstGen uint32
	if data[2]%4 == 0 {
		// Near the wrap: every slot can be allocated 1..4 times, then retires.
		firstGen = retiredGen - 1 - uint32(data[2]>>2)%4
	}
	data = data[3:]
	if len(data) > 3*fuzzMaxOps {
		data = data[:3*fuzzMaxOps]
	}

	a, err := newArena[fz](Config{Slots: slots, Shards: shards}, firstGen)
	if err != nil {
		t.Fatalf("newArena(Slots=%d, Shards=%d): %v", slots, shards, err)
	}
	m := &fzModel{
		slots: slots, firstGen: a.firstGen,
		live: map[token.Token]uint64{}, liveIdx: map[uint32]token.Token{},
		nextGen: map[uint32]uint32{}, retired: map[uint32]bool{},
	}
	r := newFzRun(a)
	defer r.stop()
	if churnProcs {
		// GOMAXPROCS moves under the workers: P ids above the per-P
		// table, caches left behind on Ps that stop running, and thieves
		// draining them while their owners come and go.
		defer fzChurnProcs()()
	}
	defer func() {
		if !m.closed {
			a.Close()
		}
	}()

	var (
		batch   []*fzStep
		usedG   [fuzzWorkers]bool
		usedTok = map[token.Token]bool{}
		seq     uint64
		// A forged token on a real index could become valid if an Alloc
		// in the same batch took that slot at the forged generation, so
		// such forgeries never share a batch with allocations.
		batchAllocs, batchForged bool
		where                    = fmt.Sprintf("Slots=%d Shards=%d firstGen=%d", slots, shards, m.firstGen)
	)
	flush := func() {
		if len(batch) == 0 {
			return
		}
		pre := m.available()
		r.run(batch)
		fzCheckBatch(t, m, a, batch, pre, where)
		batch = batch[:0]
		usedG = [fuzzWorkers]bool{}
		clear(usedTok)
		batchAllocs, batchForged = false, false
	}

	for n := 0; n+3 <= len(data); n += 3 {
		b0, b1, b2 := data[n], data[n+1], data[n+2]
		seq++
		s := &fzStep{gid: int(b0>>4) & (fuzzWorkers - 1), n: n / 3, val: seq<<8 | uint64(b2)}
		join := b0&0x80 != 0
		switch k := b0 & 0x0f; {
		case k == 8 && b1&7 == 0:
			s.op = fzClose
		case k < 8:
			s.op = fzOp(k)
		default: // 8 (without the Close bits) .. 15: weight the common ops
			s.op = [...]fzOp{fzAlloc, fzAlloc, fzFree, fzLoad, fzStore, fzUpdate, fzView, fzFree}[k-8]
		}
		// A batch holds ops on distinct goroutines and distinct targets,
		// and Close runs alone.
		if !join || usedG[s.gid] || s.op == fzClose || (len(batch) > 0 && batch[0].op == fzClose) {
			flush()
		}
		if !fzPlan(m, s, b1, b2) {
			continue
		}
		if fzConflicts(m, s, usedTok, batchAllocs, batchForged) {
			flush()
			batchAllocs, batchForged = false, false
			if !fzPlan(m, s, b1, b2) { // replan against the new model
				continue
			}
		}
		usedG[s.gid] = true
		if s.tok != token.Nil {
			usedTok[s.tok] = true
			// A forged token that shares a live token's index must not
			// run next to that token's Free and a re-Alloc of the slot.
			if lt, ok := m.liveIdx[s.tok.Index()]; ok {
				usedTok[lt] = true
			}
		}
		switch {
		case s.op == fzAlloc || s.op == fzStore:
			batchAllocs = true
		case s.op == fzForged && int(s.tok.Index()) < slots:
			batchForged = true
		}
		batch = append(batch, s)
	}
	flush()

	// Drain: every live token freed, then the arena must be whole.
	if !m.closed {
		for _, tk := range append([]token.Token(nil), m.order...) {
			if err := a.Free(tk); err != nil {
				t.Fatalf("%s: drain Free(%v): %v", where, tk, err)
			}
			m.frees++
			m.remove(tk)
		}
		fzCheckState(t, m, a, where+" after drain")
		if a.Available() != a.Capacity() {
			t.Fatalf("%s: after drain Available()=%d, Capacity()=%d", where, a.Available(), a.Capacity())
		}
		if err := a.Close(); err != nil {
			t.Fatalf("%s: Close: %v", where, err)
		}
		m.closed = true
	}
	if err := a.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("%s: second Close = %v, want ErrClosed", where, err)
	}
	fzCheckState(t, m, a, where+" after Close")
}

// fzChurnProcs changes GOMAXPROCS every few hundred microseconds, through
// 1, 3, 8 and 64 Ps, until the returned function is called.
func fzChurnProcs() (stop func()) {
	prev := runtime.GOMAXPROCS(0)
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			case <-time.After(300 * time.Microsecond):
				runtime.GOMAXPROCS([...]int{1, 3, 8, 64}[i%4])
			}
		}
	}()
	return func() {
		close(done)
		<-exited
		runtime.GOMAXPROCS(prev)
	}
}

// fzConflicts reports whether s may not run in the same batch as the ops
// already planned: it would touch a token (or a live token's slot) they
// touch, or it is a forgery on a real index next to an allocation.
func fzConflicts(m *fzModel, s *fzStep, usedTok map[token.Token]bool, batchAllocs, batchForged bool) bool {
	if s.tok != token.Nil {
		if usedTok[s.tok] {
			return true
		}
		if lt, ok := m.liveIdx[s.tok.Index()]; ok && usedTok[lt] {
			return true
		}
	}
	inRange := s.op == fzForged && int(s.tok.Index()) < m.slots
	return (inRange && batchAllocs) || ((s.op == fzAlloc || s.op == fzStore) && batchForged)
}

// fzPlan fills in s's target and expectation against the model. It returns
// false if the op has nothing to act on.
func fzPlan(m *fzModel, s *fzStep, b1, b2 byte) bool {
	s.method = fzMethod(b2 % 4)
	pickLive := func() (token.Token, bool) {
		if len(m.order) == 0 {
			return token.Nil, false
		}
		return m.order[int(b1)%len(m.order)], true
	}
	switch s.op {
	case fzAlloc, fzStore, fzClose:
		s.tok = token.Nil
		return true
	case fzLoad, fzView, fzUpdate, fzFree:
		s.method = fzMethod(s.op - fzLoad)
		tk, ok := pickLive()
		if !ok {
			return false
		}
		s.tok = tk
	case fzStale:
		if len(m.stale) == 0 {
			return false
		}
		s.tok = m.stale[int(b1)%len(m.stale)]
	case fzForged:
		lt, haveLive := pickLive()
		switch (b2 >> 2) % 7 {
		case 0:
			s.tok = token.Nil
		case 1: // index out of range
			s.tok = token.New(uint32(m.slots)+uint32(b1), max(m.firstGen, 1))
		case 2: // generation 0
			s.tok = token.New(uint32(b1)%uint32(m.slots), 0)
		case 3: // the retired generation, which no token carries
			s.tok = token.New(uint32(b1)%uint32(m.slots), retiredGen)
		case 4: // a live token's slot with the next (future) generation
			if !haveLive || lt.Generation()+1 == retiredGen {
				return false
			}
			s.tok = token.New(lt.Index(), lt.Generation()+1)
		case 5: // a live token's slot with an older generation
			if !haveLive || lt.Generation() <= 3 {
				return false
			}
			s.tok = token.New(lt.Index(), lt.Generation()-1-uint32(b1)%3)
		case 6: // anything at all
			x := uint64(b1)*0x9e3779b97f4a7c15 ^ uint64(b2)<<40 ^ uint64(s.n)*0xbf58476d1ce4e5b9
			s.tok = token.Token(x)
			if s.tok.Generation()%2 == 0 { // half of them: a real index, so the state word is read
				s.tok = token.New(s.tok.Index()%uint32(m.slots), s.tok.Generation())
			}
		}
	}
	s.want = m.classify(s.tok)
	if s.op == fzForged && s.want == wantOK {
		return false // forged by chance into a live token
	}
	return true
}

func fzIsWant(err error, w fzWant) bool {
	switch w {
	case wantOK:
		return err == nil
	case wantStale:
		return errors.Is(err, ErrStale)
	case wantBad:
		return errors.Is(err, ErrBadToken)
	case wantClosed:
		return errors.Is(err, ErrClosed)
	case wantClosedOrBad:
		return errors.Is(err, ErrClosed) || errors.Is(err, ErrBadToken)
	}
	return false
}

var fzWantNames = [...]string{"nil", "ErrStale", "ErrBadToken", "ErrClosed", "ErrClosed or ErrBadToken"}

// fzCheckBatch checks a batch's results against the model and applies them.
// pre is the model's Available before the batch.
func fzCheckBatch(t *testing.T, m *fzModel, a *Arena[fz], batch []*fzStep, pre int, where string) {
	t.Helper()
	fail := func(s *fzStep, format string, args ...any) {
		t.Helper()
		t.Fatalf("%s: %v (batch of %d): %s", where, s, len(batch), fmt.Sprintf(format, args...))
	}
	// Token ops first (their Frees make room), then allocations.
	var freed, allocs, got int
	for _, s := range batch {
		if !s.didExec {
			fail(s, "did not run")
		}
		switch s.op {
		case fzAlloc, fzStore:
			continue
		case fzClose:
			if m.closed {
				if !errors.Is(s.gotErr, ErrClosed) {
					fail(s, "second Close = %v, want ErrClosed", s.gotErr)
				}
			} else if s.gotErr != nil {
				fail(s, "Close = %v", s.gotErr)
			}
			m.closed = true
			continue
		}
		if !fzIsWant(s.gotErr, s.want) {
			fail(s, "err = %v, want %s", s.gotErr, fzWantNames[s.want])
		}
		if s.want != wantOK {
			if s.calls != 0 {
				fail(s, "callback ran %d times for a rejected token", s.calls)
			}
			continue
		}
		if (s.method == mView || s.method == mUpdate) && s.calls != 1 {
			fail(s, "callback ran %d times, want 1", s.calls)
		}
		if s.method != mFree {
			if want := fzPattern(m.live[s.tok]); s.gotVal != want {
				fail(s, "value %+v, want %+v", s.gotVal, want)
			}
		}
		switch s.method {
		case mUpdate:
			m.live[s.tok] = s.val
		case mFree:
			m.frees++
			m.remove(s.tok)
			if !m.retired[s.tok.Index()] {
				freed++
			}
		}
	}
	for _, s := range batch {
		if s.op != fzAlloc && s.op != fzStore {
			continue
		}
		allocs++
		if m.closed {
			if !errors.Is(s.gotErr, ErrClosed) {
				fail(s, "after Close err = %v, want ErrClosed", s.gotErr)
			}
			continue
		}
		if errors.Is(s.gotErr, ErrFull) {
			m.failed++
			continue
		}
		if s.gotErr != nil {
			fail(s, "err = %v", s.gotErr)
		}
		got++
		tk := s.gotTok
		idx, gen := tk.Index(), tk.Generation()
		if int(idx) >= m.slots {
			fail(s, "token %v: index out of range", tk)
		}
		if other, ok := m.liveIdx[idx]; ok {
			fail(s, "token %v: slot handed out twice (live %v)", tk, other)
		}
		if m.retired[idx] {
			fail(s, "token %v: a retired slot was handed out", tk)
		}
		wantGen, used := m.nextGen[idx]
		if !used {
			wantGen = m.firstGen
		}
		if gen != wantGen {
			fail(s, "token %v: generation %d, want %d", tk, gen, wantGen)
		}
		if s.dirty {
			fail(s, "Alloc returned a slot that was not zeroed")
		}
		m.allocs++
		m.add(tk, s.val)
	}
	// ErrFull only when full: a lone Alloc must succeed when the model has
	// room, and a batch never gets more slots than there are.
	if allocs > 0 && !m.closed {
		if got > pre+freed {
			t.Fatalf("%s: batch at op %d: %d allocations succeeded with %d available + %d freed", where, batch[0].n, got, pre, freed)
		}
		if pre > 0 && got == 0 {
			t.Fatalf("%s: batch at op %d: all %d allocations got ErrFull with %d slots available", where, batch[0].n, allocs, pre)
		}
		if allocs == 1 && len(batch) == 1 && pre > 0 && got != 1 {
			t.Fatalf("%s: op %d: lone Alloc failed with %d available", where, batch[0].n, pre)
		}
	}
	fzCheckState(t, m, a, where)
}

// fzCheckState compares the arena's counters with the model.
func fzCheckState(t *testing.T, m *fzModel, a *Arena[fz], where string) {
	t.Helper()
	if got, want := a.Capacity(), m.capacity(); got != want {
		t.Fatalf("%s: Capacity() = %d, model %d", where, got, want)
	}
	if got, want := a.Available(), m.available(); got != want {
		t.Fatalf("%s: Available() = %d, model %d (live %d, retired %d, closed %v)", where, got, want, len(m.live), len(m.retired), m.closed)
	}
	st := a.Stats()
	if st.Allocs != m.allocs || st.Frees != m.frees || st.Failed != m.failed || st.Retired != uint64(len(m.retired)) {
		t.Fatalf("%s: Stats = %+v, model allocs %d frees %d failed %d retired %d", where, st, m.allocs, m.frees, m.failed, len(m.retired))
	}
	if st.Live != uint64(len(m.live)) || st.Steals > st.Allocs {
		t.Fatalf("%s: Stats = %+v, model live %d", where, st, len(m.live))
	}
}

// fzSeeds are hand-written inputs: each is the shape bytes then 3-byte ops.
// b0 = join<<7 | goroutine<<4 | op; see fuzzArenaModel.
func fzSeeds() [][]byte {
	op := func(join bool, g int, k byte, b1, b2 byte) []byte {
		b0 := byte(g<<4) | k
		if join {
			b0 |= 0x80
		}
		return []byte{b0, b1, b2}
	}
	cat := func(parts ...[]byte) []byte {
		var out []byte
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	var seeds [][]byte
	// 1 slot, 1 shard: fill, overflow, free, stale through every method, forged.
	seeds = append(seeds, cat([]byte{0, 1, 1},
		op(false, 0, 0, 0, 1), op(false, 1, 0, 0, 2), op(false, 2, 2, 0, 0), op(false, 3, 3, 0, 0),
		op(false, 0, 4, 0, 9), op(false, 1, 5, 0, 0), op(false, 2, 6, 0, 0), op(false, 3, 6, 0, 1),
		op(false, 0, 6, 0, 2), op(false, 1, 6, 0, 3), op(false, 2, 7, 3, 0), op(false, 3, 7, 3, 4),
		op(false, 0, 7, 3, 8), op(false, 1, 7, 3, 12), op(false, 2, 7, 3, 24), op(false, 3, 0, 0, 5)))
	// 8 slots over 3 shards, four goroutines in lockstep: allocate, then
	// touch everything concurrently, free concurrently, reallocate.
	s := []byte{6, 3, 2}
	for i := 0; i < 10; i++ {
		s = append(s, op(i%4 != 0, i%4, byte(i%2), 0, byte(i))...)
	}
	for i := 0; i < 8; i++ {
		s = append(s, op(i%4 != 0, i%4, 2+byte(i%3), byte(i), byte(i))...)
	}
	for i := 0; i < 8; i++ {
		s = append(s, op(i%4 != 0, i%4, 5, 0, 0)...)
	}
	for i := 0; i < 8; i++ {
		s = append(s, op(i%4 != 0, i%4, 6, byte(i), byte(i))...)
	}
	seeds = append(seeds, s)
	// Near the generation wrap (2 uses per slot), 4 slots, 2 shards: use
	// every slot until it retires, then ErrFull.
	s = []byte{3, 2, 4}
	for round := 0; round < 4; round++ {
		for i := 0; i < 5; i++ {
			s = append(s, op(false, i%4, 1, 0, byte(i))...)
		}
		for i := 0; i < 5; i++ {
			s = append(s, op(i%2 == 1, i%4, 5, 0, 0)...)
		}
	}
	seeds = append(seeds, s)
	// Close in the middle of use, then every op must say ErrClosed.
	seeds = append(seeds, cat([]byte{4, 0, 3},
		op(false, 0, 0, 0, 0), op(true, 1, 1, 0, 0), op(false, 2, 5, 0, 0),
		op(false, 3, 8, 0, 0), op(false, 0, 2, 0, 0), op(false, 1, 6, 0, 3), op(false, 2, 7, 0, 4),
		op(false, 3, 0, 0, 0), op(false, 0, 8, 8, 0)))
	// More shards than slots, with stealing.
	s = []byte{1, 6, 1}
	for i := 0; i < 6; i++ {
		s = append(s, op(i%2 == 1, i%4, 0, 0, byte(i))...)
		s = append(s, op(true, (i+2)%4, 3, byte(i), 0)...)
	}
	seeds = append(seeds, s)
	return seeds
}

func FuzzArenaModel(f *testing.F) {
	for _, s := range fzSeeds() {
		f.Add(s)
	}
	f.Fuzz(fuzzArenaModel)
}

// TestArenaModelSeeds runs the model on the seeds and on pseudo-random
// inputs, so the default test run covers the model even without -fuzz.
func TestArenaModelSeeds(t *testing.T) {
	for i, s := range fzSeeds() {
		t.Run(fmt.Sprint("seed", i), func(t *testing.T) { fuzzArenaModel(t, s) })
	}
	n := 300
	if testing.Short() {
		n = 60
	}
	x := uint64(0x243f6a8885a308d3)
	for i := 0; i < n; i++ {
		buf := make([]byte, 3+3*(20+i%150))
		for j := range buf {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			buf[j] = byte(x)
		}
		fuzzArenaModel(t, buf)
	}
}
