package message

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
)

func TestPolicyValidate(t *testing.T) {
	bad := []struct {
		name string
		p    Policy
		want string
	}{
		{"neg MaxItems", Policy{MaxItems: -1}, "MaxItems"},
		{"neg SoftItems", Policy{SoftItems: -1}, "SoftItems"},
		{"neg MaxBytes", Policy{MaxBytes: -5}, "MaxBytes"},
		{"neg SoftBytes", Policy{SoftBytes: -5}, "SoftBytes"},
		{"soft items above hard", Policy{MaxItems: 4, SoftItems: 5}, "SoftItems (5) is above MaxItems (4)"},
		{"soft bytes above hard", Policy{MaxBytes: 10, SoftBytes: 11}, "SoftBytes (11) is above MaxBytes (10)"},
		{"admission", Policy{MaxItems: 1, Admission: 9}, "Admission"},
	}
	for _, c := range bad {
		_, err := NewEdge(newFakeStore(), c.p)
		if !errors.Is(err, ErrBadPolicy) {
			t.Errorf("%s: err = %v, want ErrBadPolicy", c.name, err)
			continue
		}
		if !contains(err.Error(), c.want) {
			t.Errorf("%s: err %q does not name %q", c.name, err, c.want)
		}
	}
	if _, err := NewEdge(nil, Policy{MaxItems: 1}); !errors.Is(err, ErrBadPolicy) {
		t.Errorf("nil store: err = %v", err)
	}
	good := []Policy{{}, {MaxItems: 4, SoftItems: 4}, {SoftItems: 3}, {MaxBytes: 10, SoftBytes: 0, Admission: DeadlineQoS}}
	for _, p := range good {
		if _, err := NewEdge(newFakeStore(), p); err != nil {
			t.Errorf("NewEdge(%+v) = %v", p, err)
		}
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

type msg struct {
	qos     QoS
	size    uint32
	expires bool // deadline 1ms from now; the test waits for it to pass
}

func TestAdmissionTable(t *testing.T) {
	items := Policy{MaxItems: 4, SoftItems: 2}
	bytes := Policy{MaxBytes: 100, SoftBytes: 50}
	hardItems := Policy{MaxItems: 4}
	hardBytes := Policy{MaxBytes: 100}
	with := func(p Policy, a Admission) Policy { p.Admission = a; return p }
	be := func(size uint32) msg { return msg{qos: BestEffort, size: size} }
	bg := func(size uint32) msg { return msg{qos: Background, size: size} }
	lc := func(size uint32) msg { return msg{qos: LatencyCritical, size: size} }
	four := func(m msg) []msg { return []msg{m, m, m, m} }

	cases := []struct {
		name        string
		p           Policy
		pre         []msg
		in          msg
		wantErr     error // nil: admitted
		notErr      error // the error must not match this
		evicted     []int // indexes into pre
		expired     []int
		wantLen     int
		wantBytes   int64
		wantMark    Watermark
		wantMarkPre Watermark
	}{
		// By items, at the soft cap: every mode admits.
		{name: "items/Block/soft", p: with(items, Block), pre: []msg{be(1), be(1)}, in: be(1), wantLen: 3, wantBytes: 3, wantMarkPre: SoftReached, wantMark: SoftReached},
		{name: "items/DropNewest/soft", p: with(items, DropNewest), pre: []msg{be(1), be(1)}, in: be(1), wantLen: 3, wantBytes: 3, wantMarkPre: SoftReached, wantMark: SoftReached},
		{name: "items/DropOldest/soft", p: with(items, DropOldest), pre: []msg{be(1), be(1)}, in: be(1), wantLen: 3, wantBytes: 3, wantMarkPre: SoftReached, wantMark: SoftReached},
		{name: "items/DeadlineQoS/soft/BestEffort", p: with(items, DeadlineQoS), pre: []msg{be(1), be(1)}, in: be(1), wantLen: 3, wantBytes: 3, wantMarkPre: SoftReached, wantMark: SoftReached},
		{name: "items/DeadlineQoS/soft/Background shed", p: with(items, DeadlineQoS), pre: []msg{be(1), be(1)}, in: bg(1), wantErr: ErrRejected, notErr: ErrEdgeFull, wantLen: 2, wantBytes: 2, wantMarkPre: SoftReached, wantMark: SoftReached},
		{name: "items/DeadlineQoS/below soft/Background ok", p: with(items, DeadlineQoS), pre: []msg{be(1)}, in: bg(1), wantLen: 2, wantBytes: 2, wantMarkPre: BelowSoft, wantMark: SoftReached},
		// By items, at the hard cap.
		{name: "items/Block/hard", p: with(items, Block), pre: four(be(1)), in: be(1), wantErr: ErrEdgeFull, wantLen: 4, wantBytes: 4, wantMarkPre: HardReached, wantMark: HardReached},
		{name: "items/DropNewest/hard", p: with(items, DropNewest), pre: four(be(1)), in: be(1), wantErr: ErrEdgeFull, wantLen: 4, wantBytes: 4, wantMarkPre: HardReached, wantMark: HardReached},
		{name: "items/DropOldest/hard", p: with(items, DropOldest), pre: []msg{be(1), lc(2), be(3), be(4)}, in: be(5), evicted: []int{0}, wantLen: 4, wantBytes: 14, wantMarkPre: HardReached, wantMark: HardReached},
		{name: "items/DropOldest/hard/evicts LC if oldest", p: with(items, DropOldest), pre: []msg{lc(1), be(2), be(3), be(4)}, in: bg(5), evicted: []int{0}, wantLen: 4, wantBytes: 14, wantMarkPre: HardReached, wantMark: HardReached},
		{name: "items/DeadlineQoS/hard/lowest QoS first", p: with(hardItems, DeadlineQoS), pre: []msg{be(1), bg(2), be(3), bg(4)}, in: be(5), evicted: []int{1}, wantLen: 4, wantBytes: 13, wantMarkPre: HardReached, wantMark: HardReached},
		{name: "items/DeadlineQoS/hard/same QoS oldest", p: with(items, DeadlineQoS), pre: []msg{lc(1), be(2), be(3), lc(4)}, in: be(5), evicted: []int{1}, wantLen: 4, wantBytes: 13, wantMarkPre: HardReached, wantMark: HardReached},
		{name: "items/DeadlineQoS/hard/never evict higher", p: with(items, DeadlineQoS), pre: four(lc(1)), in: be(1), wantErr: ErrEdgeFull, wantLen: 4, wantBytes: 4, wantMarkPre: HardReached, wantMark: HardReached},
		{name: "items/DeadlineQoS/hard/LC evicts BE", p: with(items, DeadlineQoS), pre: []msg{lc(1), lc(2), be(3), lc(4)}, in: lc(5), evicted: []int{2}, wantLen: 4, wantBytes: 12, wantMarkPre: HardReached, wantMark: HardReached},
		{name: "items/DeadlineQoS/hard/expired first", p: with(items, DeadlineQoS), pre: []msg{bg(1), be(2), {qos: LatencyCritical, size: 3, expires: true}, be(4)}, in: be(5), expired: []int{2}, wantLen: 4, wantBytes: 12, wantMarkPre: HardReached, wantMark: HardReached},
		{name: "items/Block/hard/expired make room", p: with(items, Block), pre: []msg{be(1), {qos: BestEffort, size: 2, expires: true}, be(3), be(4)}, in: be(5), expired: []int{1}, wantLen: 4, wantBytes: 13, wantMarkPre: HardReached, wantMark: HardReached},

		// By bytes, at the soft cap.
		{name: "bytes/Block/soft", p: with(bytes, Block), pre: []msg{be(30), be(30)}, in: be(30), wantLen: 3, wantBytes: 90, wantMarkPre: SoftReached, wantMark: SoftReached},
		{name: "bytes/DropNewest/soft", p: with(bytes, DropNewest), pre: []msg{be(30), be(30)}, in: be(30), wantLen: 3, wantBytes: 90, wantMarkPre: SoftReached, wantMark: SoftReached},
		{name: "bytes/DropOldest/soft", p: with(bytes, DropOldest), pre: []msg{be(30), be(30)}, in: be(30), wantLen: 3, wantBytes: 90, wantMarkPre: SoftReached, wantMark: SoftReached},
		{name: "bytes/DeadlineQoS/soft/Background shed", p: with(bytes, DeadlineQoS), pre: []msg{be(30), be(30)}, in: bg(1), wantErr: ErrRejected, notErr: ErrEdgeFull, wantLen: 2, wantBytes: 60, wantMarkPre: SoftReached, wantMark: SoftReached},
		{name: "bytes/Block/exactly full", p: with(bytes, Block), pre: []msg{be(40), be(40)}, in: be(20), wantLen: 3, wantBytes: 100, wantMarkPre: SoftReached, wantMark: HardReached},
		// By bytes, at the hard cap.
		{name: "bytes/Block/hard", p: with(bytes, Block), pre: []msg{be(40), be(40)}, in: be(30), wantErr: ErrEdgeFull, wantLen: 2, wantBytes: 80, wantMarkPre: SoftReached, wantMark: SoftReached},
		{name: "bytes/DropNewest/hard", p: with(bytes, DropNewest), pre: []msg{be(40), be(40)}, in: be(30), wantErr: ErrEdgeFull, wantLen: 2, wantBytes: 80, wantMarkPre: SoftReached, wantMark: SoftReached},
		{name: "bytes/DropOldest/hard", p: with(bytes, DropOldest), pre: []msg{be(40), be(40), be(20)}, in: be(50), evicted: []int{0, 1}, wantLen: 2, wantBytes: 70, wantMarkPre: HardReached, wantMark: SoftReached},
		{name: "bytes/DeadlineQoS/hard", p: with(hardBytes, DeadlineQoS), pre: []msg{bg(40), be(40), bg(20)}, in: be(30), evicted: []int{0}, wantLen: 3, wantBytes: 90, wantMarkPre: HardReached, wantMark: BelowSoft},
		{name: "bytes/DeadlineQoS/hard/not enough lower", p: with(hardBytes, DeadlineQoS), pre: []msg{bg(10), lc(90)}, in: be(30), wantErr: ErrEdgeFull, wantLen: 2, wantBytes: 100, wantMarkPre: HardReached, wantMark: HardReached},
		{name: "bytes/any/too large", p: with(bytes, DropOldest), pre: []msg{be(1)}, in: be(101), wantErr: ErrRejected, notErr: ErrEdgeFull, wantLen: 1, wantBytes: 1, wantMarkPre: BelowSoft, wantMark: BelowSoft},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fs := newFakeStore()
			e, err := NewEdge(fs, c.p)
			if err != nil {
				t.Fatal(err)
			}
			pre := make([]token.Token, len(c.pre))
			waitExpiry := false
			for i, m := range c.pre {
				h := Header{QoS: m.qos, Size: m.size, Seq: uint64(i)}
				if m.expires {
					h.Deadline = Now() + int64(usShortLife)
					waitExpiry = true
				}
				pre[i] = fs.put(h)
				if err := e.TrySend(pre[i]); err != nil {
					t.Fatalf("prefill %d: %v", i, err)
				}
			}
			if waitExpiry {
				usOutlive()
			}
			if got := e.Watermark(); got != c.wantMarkPre {
				t.Errorf("watermark before = %v, want %v", got, c.wantMarkPre)
			}
			in := fs.put(Header{QoS: c.in.qos, Size: c.in.size, Seq: 99})
			err = e.TrySend(in)
			if c.wantErr == nil && err != nil {
				t.Fatalf("send: %v, want admitted", err)
			}
			if c.wantErr != nil && !errors.Is(err, c.wantErr) {
				t.Fatalf("send: %v, want %v", err, c.wantErr)
			}
			if c.notErr != nil && errors.Is(err, c.notErr) {
				t.Fatalf("send: %v must not match %v", err, c.notErr)
			}
			if err != nil {
				// Refused: the caller still owns its reference.
				if !fs.isLive(in) {
					t.Fatal("refused token was freed by the edge")
				}
				if c.p.Admission == Block && errors.Is(err, ErrEdgeFull) {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
					if err := e.Send(ctx, in); !errors.Is(err, context.DeadlineExceeded) {
						t.Fatalf("blocking Send = %v, want DeadlineExceeded", err)
					}
					cancel()
				}
				if err := fs.Free(in); err != nil {
					t.Fatal(err)
				}
			}
			st := e.Stats()
			if st.Len != c.wantLen || e.Len() != c.wantLen {
				t.Errorf("Len = %d, want %d", st.Len, c.wantLen)
			}
			if st.Bytes != c.wantBytes || e.Bytes() != c.wantBytes {
				t.Errorf("Bytes = %d, want %d", st.Bytes, c.wantBytes)
			}
			if st.Watermark != c.wantMark {
				t.Errorf("watermark = %v, want %v", st.Watermark, c.wantMark)
			}
			if int(st.Evicted) != len(c.evicted) || int(st.Expired) != len(c.expired) {
				t.Errorf("evicted %d expired %d, want %d and %d", st.Evicted, st.Expired, len(c.evicted), len(c.expired))
			}
			gone := map[int]bool{}
			for _, i := range append(append([]int{}, c.evicted...), c.expired...) {
				gone[i] = true
			}
			for i, tok := range pre {
				if fs.isLive(tok) == gone[i] {
					t.Errorf("prefill %d live = %v, want %v", i, fs.isLive(tok), !gone[i])
				}
			}
			// Whatever is left drains back to the store.
			if n := e.Drain(); n != c.wantLen {
				t.Errorf("Drain = %d, want %d", n, c.wantLen)
			}
			if n := fs.liveCount(); n != 0 {
				t.Errorf("%d tokens leaked", n)
			}
		})
	}
}
