package message

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// Review of SendBatch's fast prefix (sendFastPrefix, metaTable.fastInfoN,
// fastRing.trySendTokens): SendBatch must behave exactly as before, i.e.
// like a Send of each token in order, stopping at the first refusal.

type sprPayload = [64]byte

func sprNewStore(t testing.TB, slots int) *Store[sprPayload] {
	t.Helper()
	s, err := NewStore[sprPayload](arena.Config{Slots: slots})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// sprHidden hides the store's metaTable from an edge: an edge over it has
// e.meta == nil, so its SendBatch takes only the staged path (the code of
// the parent commit), with check reading headers through Header.
type sprHidden struct{ s *Store[sprPayload] }

func (h sprHidden) Header(t token.Token) (Header, error) { return h.s.Header(t) }
func (h sprHidden) Free(t token.Token) error             { return h.s.Free(t) }

type sprKind uint8

const (
	kFast           sprKind = iota // BestEffort, no deadline
	kFast0                         // QoS 0, no deadline
	kFastDegrade                   // BestEffort, DegradeAllowed, no deadline
	kNil                           // token.Nil
	kStale                         // freed
	kReused                        // freed and its slot put again
	kBadIndex                      // index out of range
	kUnissued                      // generation 0 or MaxUint32
	kLC                            // LatencyCritical
	kBG                            // Background
	kDeadline                      // a deadline an hour away
	kExpired                       // a deadline that has passed
	kExpiredDegrade                // passed, DegradeAllowed
	kBadQoS                        // QoS 9
	kBig                           // Size 5000 (above MaxBytes when set)
	sprKinds
)

var sprKindNames = [...]string{"Fast", "Fast0", "FastDegrade", "Nil", "Stale", "Reused", "BadIndex", "Unissued",
	"LC", "BG", "Deadline", "Expired", "ExpiredDegrade", "BadQoS", "Big"}

func (k sprKind) String() string { return sprKindNames[k] }

func (k sprKind) live() bool {
	switch k {
	case kNil, kStale, kReused, kBadIndex, kUnissued:
		return false
	}
	return true
}

// sprErrSig lists the sentinels err matches.
func sprErrSig(err error) string {
	if err == nil {
		return "nil"
	}
	var b strings.Builder
	for _, x := range []struct {
		name string
		e    error
	}{
		{"Rejected", ErrRejected}, {"Full", ErrEdgeFull}, {"Expired", ErrExpired}, {"EdgeClosed", ErrEdgeClosed},
		{"Stale", arena.ErrStale}, {"BadToken", arena.ErrBadToken}, {"StoreClosed", arena.ErrClosed},
		{"Canceled", context.Canceled}, {"DeadlineExceeded", context.DeadlineExceeded},
	} {
		if errors.Is(err, x.e) {
			b.WriteString(x.name + ",")
		}
	}
	if b.Len() == 0 {
		return "other(" + err.Error() + ")"
	}
	return b.String()
}

type sprCase struct {
	p         Policy
	warm      int  // sends and receives of one token before, moving the ring's positions
	prefillLC bool // a LatencyCritical token first: the edge is in slow mode
	prefill   int  // fast tokens queued before the batch
	closeEdge bool
	cancelled bool // a done ctx (Block: a send that must wait fails at once)
	nilCtx    bool
	kinds     []sprKind
}

func (c *sprCase) String() string {
	ks := make([]string, len(c.kinds))
	for i, k := range c.kinds {
		ks[i] = k.String()
	}
	return fmt.Sprintf("policy %+v warm %d prefillLC %v prefill %d close %v cancelled %v nilCtx %v kinds(%d) %v",
		c.p, c.warm, c.prefillLC, c.prefill, c.closeEdge, c.cancelled, c.nilCtx, len(c.kinds), ks)
}

// sprTokens makes the tokens of a case in s: every live one holds refs
// references (one per edge it will be offered to). junk collects tokens the
// case must free once at the end.
func sprTokens(t testing.TB, s *Store[sprPayload], r *rand.Rand, kinds []sprKind, refs int, junk *[]token.Token) []token.Token {
	t.Helper()
	ts := make([]token.Token, len(kinds))
	put := func(h Header) token.Token {
		tok, err := s.Put(h, sprPayload{})
		if err != nil {
			t.Fatalf("Put: %v", err)
		}
		return tok
	}
	for i, k := range kinds {
		size := uint32(r.IntN(100))
		var tok token.Token
		switch k {
		case kFast:
			tok = put(Header{QoS: BestEffort, Size: size, Seq: uint64(i)})
		case kFast0:
			tok = put(Header{Size: size, Seq: uint64(i)})
		case kFastDegrade:
			tok = put(Header{QoS: BestEffort, Flags: DegradeAllowed, Size: size})
		case kNil:
			tok = token.Nil
		case kStale:
			tok = put(Header{})
			if err := s.Free(tok); err != nil {
				t.Fatal(err)
			}
		case kReused:
			tok = put(Header{})
			if err := s.Free(tok); err != nil {
				t.Fatal(err)
			}
			*junk = append(*junk, put(Header{}))
		case kBadIndex:
			tok = token.New(1<<30+uint32(r.IntN(100)), 7)
		case kUnissued:
			if r.IntN(2) == 0 {
				tok = token.New(uint32(r.IntN(4)), 0)
				if tok.IsNil() {
					tok = token.New(1, 0)
				}
			} else {
				tok = token.New(uint32(r.IntN(4)), math.MaxUint32)
			}
		case kLC:
			tok = put(Header{QoS: LatencyCritical, Size: size})
		case kBG:
			tok = put(Header{QoS: Background, Size: size})
		case kDeadline:
			tok = put(Header{QoS: BestEffort, Deadline: DeadlineIn(time.Hour), Size: size})
		case kExpired:
			tok = put(Header{QoS: BestEffort, Deadline: Now() - 1, Size: size})
		case kExpiredDegrade:
			tok = put(Header{Deadline: Now() - 1, Flags: DegradeAllowed, Size: size})
		case kBadQoS:
			tok = put(Header{QoS: 9, Size: size})
		case kBig:
			tok = put(Header{Size: 5000})
		}
		if k.live() {
			for j := 1; j < refs; j++ {
				if err := s.Retain(tok); err != nil {
					t.Fatal(err)
				}
			}
		}
		ts[i] = tok
	}
	return ts
}

type sprOutcome struct {
	n     int
	err   error
	in    int
	st    EdgeStats
	recvd []token.Token
}

// sprRun plays c on a new edge over hs with the given send (batch or
// loop) and returns the outcome; it frees the edge's share of every token
// (received, or refused) so that the store ends where it began.
func sprRun(t testing.TB, s *Store[sprPayload], hs HeaderStore, c *sprCase, warmTok token.Token, pre []token.Token,
	ts []token.Token, send func(e *Edge, ctx context.Context, ts []token.Token) (int, int, error)) sprOutcome {
	t.Helper()
	e := mustEdge(t, hs, c.p)
	bg := context.Background()
	for i := 0; i < c.warm; i++ {
		if err := e.Send(bg, warmTok); err != nil {
			t.Fatalf("warm Send: %v", err)
		}
		if got, ok := e.TryRecv(); !ok || got != warmTok {
			t.Fatalf("warm TryRecv: %v %v", got, ok)
		}
	}
	for _, p := range pre {
		if err := e.Send(bg, p); err != nil {
			t.Fatalf("prefill Send: %v (%s)", err, c)
		}
	}
	if c.closeEdge {
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
	}
	ctx := bg
	if c.cancelled {
		cctx, cancel := context.WithCancel(bg)
		cancel()
		ctx = cctx
	}
	if c.nilCtx {
		ctx = nil
	}
	var o sprOutcome
	o.n, o.in, o.err = send(e, ctx, ts)
	o.st = e.Stats()
	for {
		tok, ok := e.TryRecv()
		if !ok {
			break
		}
		o.recvd = append(o.recvd, tok)
	}
	if e.Len() != 0 {
		t.Fatalf("Len %d after draining", e.Len())
	}
	// The edge's share: received ones are ours now, refused live ones
	// stayed ours; evicted ones the edge freed.
	for _, tok := range o.recvd {
		if err := s.Free(tok); err != nil {
			t.Fatalf("Free of received %v: %v (%s)", tok, err, c)
		}
	}
	if o.n >= 0 && o.n <= len(ts) {
		for i := o.n; i < len(ts); i++ {
			if c.kinds[i].live() {
				if err := s.Free(ts[i]); err != nil {
					t.Fatalf("Free of refused %v: %v (%s)", ts[i], err, c)
				}
			}
		}
	}
	return o
}

func sprBatchSend(e *Edge, ctx context.Context, ts []token.Token) (int, int, error) {
	in := 5 // sendBatchCatching adds to *in
	n, fp, err := e.sendBatchCatching(ctx, ts, &in)
	if fp != nil {
		panic(fp)
	}
	return n, in - 5, err
}

func sprPublicBatchSend(e *Edge, ctx context.Context, ts []token.Token) (int, int, error) {
	n, err := e.SendBatch(ctx, ts)
	return n, n, err
}

func sprLoopSend(e *Edge, ctx context.Context, ts []token.Token) (int, int, error) {
	for i, tok := range ts {
		if err := e.Send(ctx, tok); err != nil {
			return i, i, err
		}
	}
	return len(ts), len(ts), nil
}

// sprCheckCase runs c through SendBatch (with the fast prefix), a loop of
// Sends, and the staged path alone (an edge that cannot see the metaTable),
// and compares everything observable.
func sprCheckCase(t *testing.T, s *Store[sprPayload], r *rand.Rand, c *sprCase) string {
	t.Helper()
	avail := s.Available()
	var junk []token.Token
	const refs = 4
	warmTok, err := s.Put(Header{}, sprPayload{})
	if err != nil {
		t.Fatal(err)
	}
	var preKinds []sprKind
	if c.prefillLC {
		preKinds = append(preKinds, kLC)
	}
	for i := 0; i < c.prefill; i++ {
		preKinds = append(preKinds, kFast)
	}
	pre := sprTokens(t, s, r, preKinds, refs, &junk)
	ts := sprTokens(t, s, r, c.kinds, refs, &junk)

	batch := sprRun(t, s, s, c, warmTok, pre, ts, sprBatchSend)
	public := sprRun(t, s, s, c, warmTok, pre, ts, sprPublicBatchSend)
	loop := sprRun(t, s, s, c, warmTok, pre, ts, sprLoopSend)
	staged := sprRun(t, s, sprHidden{s}, c, warmTok, pre, ts, sprPublicBatchSend)

	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("%s\n%s", fmt.Sprintf(format, args...), c)
	}
	if batch.in != batch.n {
		fail("sendBatchCatching: *in grew by %d, n = %d", batch.in, batch.n)
	}
	for _, o := range []struct {
		name string
		o    sprOutcome
	}{{"SendBatch", public}, {"Send loop", loop}, {"staged SendBatch", staged}} {
		if o.o.n != batch.n {
			fail("n: sendBatchCatching %d (%v), %s %d (%v)", batch.n, batch.err, o.name, o.o.n, o.o.err)
		}
		if sprErrSig(o.o.err) != sprErrSig(batch.err) {
			fail("err: sendBatchCatching %v [%s], %s %v [%s]", batch.err, sprErrSig(batch.err), o.name, o.o.err, sprErrSig(o.o.err))
		}
		if o.name != "staged SendBatch" && (o.o.err == nil) == (batch.err == nil) && o.o.err != nil && o.o.err.Error() != batch.err.Error() {
			fail("err text: sendBatchCatching %q, %s %q", batch.err, o.name, o.o.err)
		}
		if o.o.st != batch.st {
			fail("Stats:\n sendBatchCatching %+v\n %s %+v", batch.st, o.name, o.o.st)
		}
		if fmt.Sprint(o.o.recvd) != fmt.Sprint(batch.recvd) {
			fail("received:\n sendBatchCatching %v\n %s %v", batch.recvd, o.name, o.o.recvd)
		}
	}
	// Absolute checks that do not depend on the other paths.
	if batch.err == nil && batch.n != len(ts) {
		fail("nil error with n %d of %d", batch.n, len(ts))
	}
	if batch.err != nil && batch.n >= len(ts) {
		fail("error %v with n %d of %d", batch.err, batch.n, len(ts))
	}
	if want := uint64(c.warm + len(pre) + batch.n); batch.st.Admitted != want {
		fail("Admitted %d, want %d", batch.st.Admitted, want)
	}
	if batch.err != nil && batch.st.Rejected+batch.st.Invalid != 1 {
		fail("one refusal (%v): Rejected %d Invalid %d", batch.err, batch.st.Rejected, batch.st.Invalid)
	}
	if batch.err == nil && batch.st.Rejected+batch.st.Invalid != 0 {
		fail("no refusal: Rejected %d Invalid %d", batch.st.Rejected, batch.st.Invalid)
	}
	if c.p.MaxItems > 0 && batch.st.HighWater > c.p.MaxItems {
		fail("HighWater %d above MaxItems %d", batch.st.HighWater, c.p.MaxItems)
	}
	if batch.st.FreeErrors != 0 {
		fail("FreeErrors %d", batch.st.FreeErrors)
	}

	// The caller's own references (refs-4 = 0 extra here) and the warm token.
	for _, tok := range junk {
		if err := s.Free(tok); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Free(warmTok); err != nil {
		t.Fatal(err)
	}
	if got := s.Available(); got != avail {
		fail("store: %d slots available after the case, %d before (a token lost or freed twice)", got, avail)
	}
	bucket := "n=0"
	switch {
	case batch.n > 32:
		bucket = "n>32"
	case batch.n > 16:
		bucket = "16<n<=32"
	case batch.n > 0:
		bucket = "0<n<=16"
	}
	return bucket + " " + sprErrSig(batch.err)
}

var sprPolicies = []Policy{
	{MaxItems: 1, Admission: Block},
	{MaxItems: 2, Admission: Block},
	{MaxItems: 3, Admission: DropNewest},
	{MaxItems: 16, Admission: DropOldest},
	{MaxItems: 17, Admission: Block},
	{MaxItems: 0, Admission: Block},
	{MaxItems: 300, Admission: DropNewest},
	{MaxItems: 0, Admission: DropOldest},
	{MaxItems: 4, SoftItems: 2, Admission: DropNewest},
	{MaxItems: 32, Admission: DropNewest},
	{MaxItems: 33, Admission: DropOldest},
	{MaxItems: 15, Admission: DropNewest},
	{MaxItems: 8, MaxBytes: 1000, Admission: DropNewest}, // no fast ring
	{MaxItems: 8, SoftItems: 4, Admission: DeadlineQoS},  // no fast ring
}

// Every kind of token at every position of a batch of fast tokens, on
// every policy, compared across the paths.
func TestSendPrefixReviewEveryKindEveryPosition(t *testing.T) {
	s := sprNewStore(t, 4096)
	r := rand.New(rand.NewPCG(1, 2))
	for _, p := range sprPolicies {
		for _, length := range []int{1, 15, 16, 17, 33, 40} {
			for k := kFast; k < sprKinds; k++ {
				for pos := 0; pos < length; pos++ {
					edge := pos <= 1 || pos == 15 || pos == 16 || pos == 31 || pos == 32 || pos == length-1
					if !edge && (length > 17 && pos%5 != 0 || raceEnabled) {
						continue
					}
					kinds := make([]sprKind, length)
					for i := range kinds {
						kinds[i] = sprKind(r.IntN(3)) // kFast, kFast0, kFastDegrade
					}
					kinds[pos] = k
					c := &sprCase{p: p, kinds: kinds, cancelled: p.Admission == Block && p.MaxItems > 0}
					sprCheckCase(t, s, r, c)
				}
			}
		}
	}
}

// Random cases: batches mixing every kind, edges in every state (ring
// positions moved, prefilled, in slow mode, closed), done, nil and live
// contexts.
func TestSendPrefixReviewRandomDifferential(t *testing.T) {
	s := sprNewStore(t, 4096)
	r := rand.New(rand.NewPCG(3, 4))
	cases := 3000
	if testing.Short() || raceEnabled {
		cases = 800
	}
	seen := map[string]int{}
	for i := 0; i < cases; i++ {
		p := sprPolicies[r.IntN(len(sprPolicies))]
		if r.IntN(3) == 0 {
			p = Policy{MaxItems: []int{1, 2, 3, 4, 5, 15, 16, 17, 31, 32, 33, 64, 255, 256, 257, 0}[r.IntN(16)],
				Admission: []Admission{Block, DropNewest, DropOldest}[r.IntN(3)]}
		}
		c := &sprCase{p: p, warm: []int{0, 0, 1, 7, 15, 16, 200, 255, 300}[r.IntN(9)]}
		c.prefillLC = r.IntN(6) == 0
		if r.IntN(2) == 0 {
			c.prefill = r.IntN(40)
		}
		room := c.p.MaxItems
		if room > 0 {
			if c.prefillLC {
				room--
			}
			c.prefill = min(c.prefill, room)
		}
		c.closeEdge = r.IntN(15) == 0
		length := 1 + r.IntN(70)
		if r.IntN(4) == 0 {
			length = 1 + r.IntN(300)
		}
		c.kinds = make([]sprKind, length)
		bad := []int{1, 4, 20, 60}[r.IntN(4)] // percent of other kinds
		for j := range c.kinds {
			if r.IntN(100) < bad {
				c.kinds[j] = sprKind(3 + r.IntN(int(sprKinds)-3))
			} else {
				c.kinds[j] = sprKind(r.IntN(3))
			}
		}
		// A Block edge that would have to wait needs a done context (no
		// receiver here); one with room for everything may run with a
		// live or nil one.
		fitsAll := c.p.MaxItems == 0 || c.p.MaxItems >= length+c.prefill+1
		switch {
		case c.p.Admission != Block:
			c.cancelled, c.nilCtx = r.IntN(2) == 0, r.IntN(4) == 0
		case fitsAll:
			c.cancelled, c.nilCtx = r.IntN(2) == 0, r.IntN(3) == 0
		default:
			c.cancelled = true
		}
		if c.nilCtx {
			c.cancelled = false
		}
		seen[sprCheckCase(t, s, r, c)]++
	}
	t.Logf("outcomes: %v", seen)
}

// Exact outcomes of a few batches, stated without reference to Send.
func TestSendPrefixReviewExactOutcomes(t *testing.T) {
	s := sprNewStore(t, 1024)
	done, cancel := context.WithCancel(context.Background())
	cancel()
	mk := func(n int, h Header) []token.Token {
		ts := make([]token.Token, n)
		for i := range ts {
			h.Seq = uint64(i)
			tok, err := s.Put(h, sprPayload{})
			if err != nil {
				t.Fatal(err)
			}
			ts[i] = tok
		}
		return ts
	}
	drain := func(e *Edge) []token.Token {
		var got []token.Token
		for {
			tok, ok := e.TryRecv()
			if !ok {
				return got
			}
			got = append(got, tok)
		}
	}
	free := func(ts []token.Token) {
		for _, tok := range ts {
			if err := s.Free(tok); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, c := range []struct {
		p       Policy
		n       int
		badAt   int // -1: none; else a freed token there
		wantN   int
		wantErr error
		wantHW  int
	}{
		{Policy{MaxItems: 17, Admission: DropNewest}, 40, -1, 17, ErrEdgeFull, 17},
		{Policy{MaxItems: 16, Admission: DropNewest}, 40, -1, 16, ErrEdgeFull, 16},
		{Policy{MaxItems: 1, Admission: DropNewest}, 3, -1, 1, ErrEdgeFull, 1},
		{Policy{MaxItems: 3, Admission: Block}, 40, -1, 3, context.Canceled, 3},
		{Policy{MaxItems: 300, Admission: DropNewest}, 290, -1, 290, nil, 290},
		{Policy{MaxItems: 300, Admission: DropNewest}, 310, -1, 300, ErrEdgeFull, 300},
		{Policy{}, 300, -1, 300, nil, 300},
		{Policy{}, 40, 16, 16, arena.ErrStale, 16},
		{Policy{}, 40, 15, 15, arena.ErrStale, 15},
		{Policy{}, 40, 0, 0, arena.ErrStale, 0},
		{Policy{}, 40, 32, 32, arena.ErrStale, 32},
		{Policy{MaxItems: 17}, 40, 16, 16, arena.ErrStale, 16},
		{Policy{MaxItems: 10, Admission: DropNewest}, 40, 16, 10, ErrEdgeFull, 10},
	} {
		e := mustEdge(t, s, c.p)
		ts := mk(c.n, Header{Size: 3})
		if c.badAt >= 0 {
			if err := s.Free(ts[c.badAt]); err != nil {
				t.Fatal(err)
			}
		}
		n, err := e.SendBatch(done, ts)
		if n != c.wantN || (c.wantErr == nil) != (err == nil) || (err != nil && !errors.Is(err, c.wantErr)) {
			t.Fatalf("%+v len %d bad at %d: SendBatch = %d, %v; want %d, %v", c.p, c.n, c.badAt, n, err, c.wantN, c.wantErr)
		}
		st := e.Stats()
		wantRej, wantInv := uint64(0), uint64(0)
		if errors.Is(c.wantErr, arena.ErrStale) {
			wantInv = 1
		} else if c.wantErr != nil {
			wantRej = 1
		}
		waited := uint64(0)
		if c.wantErr == context.Canceled {
			waited = 1
		}
		if st.Admitted != uint64(n) || st.Rejected != wantRej || st.Invalid != wantInv || st.HighWater != c.wantHW ||
			st.Len != n || st.Bytes != int64(3*n) || st.Waited != waited {
			t.Fatalf("%+v len %d bad at %d: Stats %+v; want Admitted=Len=HighWater %d/%d, Rejected %d, Invalid %d, Bytes %d, Waited %d",
				c.p, c.n, c.badAt, st, n, c.wantHW, wantRej, wantInv, 3*n, waited)
		}
		got := drain(e)
		if fmt.Sprint(got) != fmt.Sprint(ts[:n]) {
			t.Fatalf("%+v: received %v, want %v", c.p, got, ts[:n])
		}
		free(got)
		for i := n; i < len(ts); i++ {
			if i != c.badAt {
				free(ts[i : i+1])
			}
		}
	}
	if s.Available() != s.Capacity() {
		t.Fatalf("leak: %d of %d", s.Available(), s.Capacity())
	}
}

// A store closed before the send (its gate closed: fastInfoN returns 0)
// refuses the first token with arena.ErrClosed, counted Invalid, on every
// path; a batch sent while it closes gets in up to the refused token,
// exactly, in order.
func TestSendPrefixReviewStoreClosed(t *testing.T) {
	for _, p := range []Policy{{}, {MaxItems: 17}, {MaxItems: 2, Admission: DropNewest}, {MaxItems: 8, MaxBytes: 1 << 20}} {
		s, err := NewStore[sprPayload](arena.Config{Slots: 64})
		if err != nil {
			t.Fatal(err)
		}
		var ts []token.Token
		for i := 0; i < 20; i++ {
			tok, err := s.Put(Header{}, sprPayload{})
			if err != nil {
				t.Fatal(err)
			}
			ts = append(ts, tok)
		}
		e1, e2 := mustEdge(t, s, p), mustEdge(t, s, p)
		if err := s.Close(); !errors.Is(err, ErrReferenced) {
			t.Fatalf("Close: %v", err)
		}
		n, err := e1.SendBatch(context.Background(), ts)
		err2 := e2.Send(context.Background(), ts[0])
		if n != 0 || !errors.Is(err, arena.ErrClosed) || err2 == nil || err.Error() != err2.Error() {
			t.Fatalf("%+v: SendBatch on a closed store = %d, %v; Send: %v", p, n, err, err2)
		}
		st1, st2 := e1.Stats(), e2.Stats()
		if st1 != st2 || st1.Invalid != 1 || st1.Admitted != 0 || st1.Len != 0 {
			t.Fatalf("%+v: Stats %+v, Send's %+v", p, st1, st2)
		}
		for _, tok := range ts {
			if err := s.Free(tok); err != nil {
				t.Fatalf("Free after Close: %v", err)
			}
		}
	}

	// Closing while a sender sends batches and a receiver drains.
	interrupted := 0
	for round := 0; round < 20; round++ {
		s, err := NewStore[sprPayload](arena.Config{Slots: 4096})
		if err != nil {
			t.Fatal(err)
		}
		const total = 3000
		ts := make([]token.Token, total)
		for i := range ts {
			if ts[i], err = s.Put(Header{Seq: uint64(i)}, sprPayload{}); err != nil {
				t.Fatal(err)
			}
		}
		e := mustEdge(t, s, Policy{MaxItems: []int{0, 3, 17, 64}[round%4]})
		var recvd []token.Token
		recvDone := make(chan struct{})
		go func() {
			defer close(recvDone)
			buf := make([]token.Token, 1+round%20)
			for {
				n, err := e.RecvBatch(context.Background(), buf)
				if err != nil {
					return
				}
				recvd = append(recvd, buf[:n]...)
			}
		}()
		sent := 0
		var sendErr error
		started := make(chan struct{})
		sendDone := make(chan struct{})
		go func() {
			defer close(sendDone)
			close(started)
			for sent < total {
				n, err := e.SendBatch(context.Background(), ts[sent:min(total, sent+1+sent%40)])
				sent += n
				if err != nil {
					sendErr = err
					return
				}
			}
		}()
		<-started
		time.Sleep(time.Duration(round*20) * time.Microsecond)
		s.Close()
		<-sendDone
		e.Close()
		<-recvDone
		if sendErr != nil && !errors.Is(sendErr, arena.ErrClosed) {
			t.Fatalf("round %d: SendBatch: %v", round, sendErr)
		}
		if sendErr != nil {
			interrupted++
		}
		st := e.Stats()
		wantInv := uint64(0)
		if sendErr != nil {
			wantInv = 1
		}
		if st.Admitted != uint64(sent) || st.Delivered != uint64(sent) || st.Invalid != wantInv || st.Rejected != 0 {
			t.Fatalf("round %d: sent %d (%v): Stats %+v", round, sent, sendErr, st)
		}
		if fmt.Sprint(recvd) != fmt.Sprint(ts[:sent]) {
			t.Fatalf("round %d: received %d tokens, not the %d sent in order", round, len(recvd), sent)
		}
		for _, tok := range ts {
			if err := s.Free(tok); err != nil {
				t.Fatalf("Free after Close: %v", err)
			}
		}
	}
	if interrupted == 0 {
		t.Fatal("the store never closed under the sender: the test did not test anything")
	}
	t.Logf("%d of 20 rounds closed the store under the sender", interrupted)
}

// A receiver parked on an empty edge (slow mode): the batch hands it the
// first token and queues the rest, in order.
func TestSendPrefixReviewParkedReceiver(t *testing.T) {
	s := sprNewStore(t, 256)
	for _, c := range []struct {
		p Policy
		n int // the receiver takes one, the edge holds the rest
	}{{Policy{}, 40}, {Policy{MaxItems: 17}, 18}, {Policy{MaxItems: 16}, 17}, {Policy{MaxItems: 40, Admission: DropNewest}, 40}} {
		p := c.p
		e := mustEdge(t, s, p)
		got := make(chan token.Token, 1)
		go func() {
			tok, err := e.Recv(context.Background())
			if err != nil {
				t.Error(err)
			}
			got <- tok
		}()
		for e.recvq.linked.Load() == 0 {
			runtime.Gosched()
		}
		ts := make([]token.Token, c.n)
		for i := range ts {
			ts[i], _ = s.Put(Header{Seq: uint64(i)}, sprPayload{})
		}
		if n, err := e.SendBatch(context.Background(), ts); n != c.n || err != nil {
			t.Fatalf("SendBatch = %d, %v", n, err)
		}
		first := <-got
		rest := []token.Token{first}
		for {
			tok, ok := e.TryRecv()
			if !ok {
				break
			}
			rest = append(rest, tok)
		}
		if fmt.Sprint(rest) != fmt.Sprint(ts) {
			t.Fatalf("%+v: received %v, want %v", p, rest, ts)
		}
		st := e.Stats()
		if st.Admitted != uint64(c.n) || st.Delivered != uint64(c.n) || st.Len != 0 || st.Rejected+st.Invalid != 0 {
			t.Fatalf("%+v: Stats %+v", p, st)
		}
		for _, tok := range ts {
			s.Free(tok)
		}
	}
}

type sprTag struct {
	sender, seq int
	ordered     bool // not LatencyCritical: FIFO among the sender's ordered tokens
	bad         bool
}

// Several SendBatch senders and receivers: every token sent is received
// once (or evicted), each sender's tokens in order at each receiver, a
// refused bad token is exactly the one SendBatch names, and the Stats add
// up.
func sprStress(t *testing.T, procs int, p Policy, withBad, withLC bool) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
	const senders, receivers = 3, 2
	perSender := 30000
	if raceEnabled {
		perSender = 3000
	}
	s := sprNewStore(t, senders*perSender+64)
	r := rand.New(rand.NewPCG(uint64(procs), uint64(p.MaxItems)))
	tags := map[token.Token]sprTag{}
	lists := make([][]token.Token, senders)
	nBad := 0
	for i := range lists {
		for j := 0; j < perSender; j++ {
			var h Header
			ordered := true
			switch x := r.IntN(100); {
			case x < 8:
				h.QoS = Background
			case x < 14:
				h.Deadline = DeadlineIn(time.Hour)
			case x < 17 && withLC:
				h.QoS, ordered = LatencyCritical, false
			case x < 19 && withBad:
				tok, err := s.Put(h, sprPayload{})
				if err != nil {
					t.Fatal(err)
				}
				s.Free(tok)
				lists[i] = append(lists[i], tok)
				tags[tok] = sprTag{sender: i, seq: j, bad: true}
				nBad++
				continue
			case x < 50:
				h.QoS = BestEffort
			}
			h.Size = uint32(r.IntN(64))
			tok, err := s.Put(h, sprPayload{})
			if err != nil {
				t.Fatal(err)
			}
			if _, dup := tags[tok]; dup {
				// A stale token's slot was reused with a new generation:
				// tokens differ, so this cannot happen.
				t.Fatalf("duplicate token %v", tok)
			}
			tags[tok] = sprTag{sender: i, seq: j, ordered: ordered}
			lists[i] = append(lists[i], tok)
		}
	}
	e := mustEdge(t, s, p)
	ctx := context.Background()
	var wg sync.WaitGroup
	var badSeen, badWrong atomic.Int64
	var errs sync.Map
	for i := 0; i < senders; i++ {
		wg.Add(1)
		go func(ts []token.Token, seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 9))
			for len(ts) > 0 {
				b := ts[:min(len(ts), 1+r.IntN(40))]
				n, err := e.SendBatch(ctx, b)
				ts = ts[n:]
				switch {
				case err == nil:
				case errors.Is(err, ErrEdgeFull) && p.Admission == DropNewest:
					runtime.Gosched()
				case errors.Is(err, arena.ErrStale) || errors.Is(err, arena.ErrBadToken):
					badSeen.Add(1)
					if !tags[b[n]].bad {
						badWrong.Add(1)
					}
					ts = ts[1:]
				default:
					errs.Store(fmt.Sprint(err), true)
					return
				}
			}
		}(lists[i], uint64(i))
	}
	recvd := make([][]token.Token, receivers)
	var rwg sync.WaitGroup
	for i := 0; i < receivers; i++ {
		rwg.Add(1)
		go func(i int) {
			defer rwg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 7))
			buf := make([]token.Token, 32)
			for {
				if r.IntN(4) == 0 {
					tok, err := e.Recv(ctx)
					if err != nil {
						return
					}
					recvd[i] = append(recvd[i], tok)
					continue
				}
				n, err := e.RecvBatch(ctx, buf[:1+r.IntN(32)])
				if err != nil {
					return
				}
				recvd[i] = append(recvd[i], buf[:n]...)
			}
		}(i)
	}
	wg.Wait()
	e.Close()
	rwg.Wait()
	errs.Range(func(k, _ any) bool { t.Errorf("SendBatch: %v", k); return true })
	if badWrong.Load() != 0 {
		t.Fatalf("%d refusals named a good token", badWrong.Load())
	}
	if withBad && badSeen.Load() != int64(nBad) {
		t.Fatalf("%d bad tokens refused, %d in the batches", badSeen.Load(), nBad)
	}
	seen := map[token.Token]bool{}
	total := 0
	for ri, rs := range recvd {
		last := make([]int, senders)
		for i := range last {
			last[i] = -1
		}
		for _, tok := range rs {
			tag, ok := tags[tok]
			if !ok || tag.bad {
				t.Fatalf("received a token never sent: %v (%+v)", tok, tag)
			}
			if seen[tok] {
				t.Fatalf("token %v received twice", tok)
			}
			seen[tok] = true
			if tag.ordered {
				if tag.seq <= last[tag.sender] {
					t.Fatalf("receiver %d: sender %d's token %d after its token %d", ri, tag.sender, tag.seq, last[tag.sender])
				}
				last[tag.sender] = tag.seq
			}
			total++
		}
	}
	st := e.Stats()
	good := senders*perSender - nBad
	if st.Admitted != uint64(good) || st.Delivered != uint64(total) || st.Delivered+st.Evicted != st.Admitted ||
		st.Len != 0 || st.Invalid != uint64(nBad) || (p.MaxItems > 0 && st.HighWater > p.MaxItems) || st.FreeErrors != 0 {
		t.Fatalf("%+v: %d good tokens, %d received, %d bad: Stats %+v", p, good, total, nBad, st)
	}
	if p.Admission == Block && total != good {
		t.Fatalf("Block: %d received of %d", total, good)
	}
	for tok := range seen {
		if err := s.Free(tok); err != nil {
			t.Fatal(err)
		}
	}
	if s.Available() != s.Capacity() {
		t.Fatalf("leak: %d of %d", s.Available(), s.Capacity())
	}
}

func TestSendPrefixReviewStress(t *testing.T) {
	for _, procs := range []int{2, 4} {
		for _, c := range []struct {
			p               Policy
			withBad, withLC bool
		}{
			{Policy{MaxItems: 3}, true, true},
			{Policy{MaxItems: 17}, false, false},
			{Policy{MaxItems: 16}, true, false},
			{Policy{}, true, true},
			{Policy{MaxItems: 5, Admission: DropNewest}, true, false},
			{Policy{MaxItems: 16, Admission: DropOldest}, false, true},
		} {
			t.Run(fmt.Sprintf("procs%d/%+v/bad%v/lc%v", procs, c.p, c.withBad, c.withLC), func(t *testing.T) {
				sprStress(t, procs, c.p, c.withBad, c.withLC)
			})
		}
	}
}

// Senders sending batches while the edge closes: each gets in a prefix of
// what it sends, refused once with ErrEdgeClosed; receivers get exactly
// those prefixes, in order.
func TestSendPrefixReviewCloseWhileSending(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	interrupted := 0
	for round := 0; round < 12; round++ {
		const senders, perSender = 3, 6000
		s := sprNewStore(t, senders*perSender+8)
		lists := make([][]token.Token, senders)
		tags := map[token.Token]sprTag{}
		for i := range lists {
			for j := 0; j < perSender; j++ {
				h := Header{}
				if j%11 == 5 {
					h.QoS = Background // staged path, same FIFO lane
				}
				tok, err := s.Put(h, sprPayload{})
				if err != nil {
					t.Fatal(err)
				}
				lists[i] = append(lists[i], tok)
				tags[tok] = sprTag{sender: i, seq: j, ordered: true}
			}
		}
		e := mustEdge(t, s, Policy{MaxItems: []int{0, 4, 17}[round%3], Admission: Block})
		accepted := make([]int, senders)
		closedErrs := make([]int, senders)
		var wg sync.WaitGroup
		for i := 0; i < senders; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				ts := lists[i]
				for len(ts) > 0 {
					n, err := e.SendBatch(context.Background(), ts[:min(len(ts), 1+len(ts)%37)])
					accepted[i] += n
					ts = ts[n:]
					if err != nil {
						if !errors.Is(err, ErrEdgeClosed) {
							t.Errorf("SendBatch: %v", err)
						}
						closedErrs[i]++
						return
					}
				}
			}(i)
		}
		var recvd []token.Token
		rdone := make(chan struct{})
		go func() {
			defer close(rdone)
			buf := make([]token.Token, 16)
			for {
				n, err := e.RecvBatch(context.Background(), buf)
				if err != nil {
					return
				}
				recvd = append(recvd, buf[:n]...)
			}
		}()
		time.Sleep(time.Duration(round*50) * time.Microsecond)
		e.Close()
		wg.Wait()
		<-rdone
		last := make([]int, senders)
		for i := range last {
			last[i] = -1
		}
		for _, tok := range recvd {
			tag := tags[tok]
			if tag.seq != last[tag.sender]+1 {
				t.Fatalf("round %d: sender %d's token %d after %d", round, tag.sender, tag.seq, last[tag.sender])
			}
			last[tag.sender] = tag.seq
		}
		rejected := 0
		for i := range lists {
			if last[i]+1 != accepted[i] {
				t.Fatalf("round %d: sender %d had %d tokens accepted, %d received", round, i, accepted[i], last[i]+1)
			}
			rejected += closedErrs[i]
		}
		if rejected > 0 {
			interrupted++
		}
		st := e.Stats()
		if st.Admitted != uint64(len(recvd)) || st.Delivered != uint64(len(recvd)) || st.Rejected != uint64(rejected) || st.Len != 0 {
			t.Fatalf("round %d: %d received, %d refusals: Stats %+v", round, len(recvd), rejected, st)
		}
		for _, ts := range lists {
			for _, tok := range ts {
				s.Free(tok)
			}
		}
	}
	if interrupted == 0 {
		t.Fatal("Close never interrupted a sender: the test did not test anything")
	}
	t.Logf("%d of 12 rounds closed the edge under a sender", interrupted)
}

// A Graph whose stage emits in batches (flush: sendBatchCatching with the
// worker's counter): every token reaches both sinks once, in order with one
// worker per node, and nothing leaks.
func TestSendPrefixReviewGraph(t *testing.T) {
	for _, p := range []Policy{{MaxItems: 3}, {MaxItems: 17}, {}} {
		s := sprNewStore(t, 256)
		e1 := mustEdge(t, s, Policy{MaxItems: 16})
		e2, e3 := mustEdge(t, s, p), mustEdge(t, s, Policy{MaxItems: 2})
		const n = 3000
		g := NewGraph(s)
		g.Source("src", 1, func(ctx context.Context, out *Emitter) error {
			for i := 1; i <= n; i++ {
				h := Header{Seq: uint64(i)}
				if i%13 == 0 {
					h.QoS = Background
				}
				if i%17 == 0 {
					h.Deadline = DeadlineIn(time.Hour)
				}
				// PutWait: with an unbounded edge the 256 slots can all be
				// queued behind a slow sink (Put then fails with ErrFull).
				tok, err := s.PutWait(ctx, h, sprPayload{})
				if err != nil {
					return err
				}
				if err := out.Emit(tok); err != nil {
					return err
				}
			}
			return nil
		}, e1)
		g.Stage("pass", 1, e1, func(ctx context.Context, tok token.Token, out *Emitter) error {
			return out.Emit(tok)
		}, e2, e3)
		sink := func(last *uint64, count *int) SinkFunc {
			return func(ctx context.Context, tok token.Token) error {
				h, err := s.Header(tok)
				if err != nil {
					return err
				}
				if h.Seq != *last+1 {
					return fmt.Errorf("seq %d after %d", h.Seq, *last)
				}
				*last = h.Seq
				*count++
				return nil
			}
		}
		var lastA, lastB uint64
		var countA, countB int
		g.Sink("a", 1, e2, sink(&lastA, &countA))
		g.Sink("b", 1, e3, sink(&lastB, &countB))
		if err := g.Run(context.Background()); err != nil {
			t.Fatalf("%+v: %v", p, err)
		}
		if countA != n || countB != n {
			t.Fatalf("%+v: sinks got %d and %d of %d", p, countA, countB, n)
		}
		for _, e := range []*Edge{e1, e2, e3} {
			if st := e.Stats(); st.Admitted != n || st.Delivered != n || st.Rejected+st.Invalid != 0 {
				t.Fatalf("%+v: Stats %+v", p, st)
			}
		}
		if s.Available() != s.Capacity() {
			t.Fatalf("%+v: leak: %d of %d", p, s.Available(), s.Capacity())
		}
	}
}
