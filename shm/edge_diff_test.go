package shm

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

// FuzzEdgeDiff drives a shared edge and a message.Edge with the same policy
// through the same operations and requires the same answers: the same
// errors, the same tokens in the same order, the same lengths, bytes and
// counters. The shared edge promises message.Edge's semantics; this checks
// it for every admission mode, lane and cap the fuzzer reaches.
func FuzzEdgeDiff(f *testing.F) {
	f.Add([]byte{0, 3, 0, 0, 0, 1, 0, 2, 1, 0, 1, 1, 2, 2, 2})
	f.Add([]byte{2, 2, 1, 40, 0, 0x13, 0, 0x21, 0, 0x31, 1, 0, 1, 1, 1, 2, 2, 2, 2})
	f.Add([]byte{3, 3, 2, 0, 0, 0x10, 0, 0x20, 0, 0x30, 1, 0, 1, 0, 1, 0, 0, 0x30, 1, 0, 2, 3, 2})
	f.Add([]byte{1, 1, 0, 0, 0, 0, 4, 0, 4, 0, 6, 7, 1, 0, 2, 8, 0, 5, 0})
	f.Fuzz(func(t *testing.T, prog []byte) {
		if len(prog) < 4 || len(prog) > 400 {
			return
		}
		pol := message.Policy{
			Admission: message.Admission(prog[0] % 4),
			MaxItems:  int(prog[1]%6) + 1,
			SoftItems: int(prog[2] % 4),
			MaxBytes:  int64(prog[3]) % 80,
		}
		if pol.SoftItems > pol.MaxItems {
			pol.SoftItems = pol.MaxItems
		}
		if pol.MaxBytes > 0 && pol.MaxBytes < 8 {
			pol.MaxBytes = 0
		}
		runEdgeDiff(t, pol, prog[4:])
	})
}

func TestEdgeDiffModes(t *testing.T) {
	// Mostly puts, sends and receives, so that the edge fills and every
	// mode has to decide; now and then the rest.
	rng := rand.New(rand.NewPCG(7, 11))
	ops := []byte{0, 0, 0, 1, 1, 1, 1, 8, 2, 2, 3, 4, 5, 6, 7}
	var prog []byte
	for range 2000 {
		prog = append(prog, ops[rng.IntN(len(ops))], byte(rng.Uint32()))
	}
	for adm := range 4 {
		for _, pol := range []message.Policy{
			{MaxItems: 3},
			{MaxItems: 4, SoftItems: 2},
			{MaxItems: 5, MaxBytes: 48, SoftBytes: 20},
			{MaxBytes: 40},
		} {
			pol.Admission = message.Admission(adm)
			t.Run(fmt.Sprintf("%v/%d-%d-%d-%d", pol.Admission, pol.MaxItems, pol.SoftItems, pol.MaxBytes, pol.SoftBytes),
				func(t *testing.T) { runEdgeDiff(t, pol, prog) })
		}
	}
}

func runEdgeDiff(t *testing.T, pol message.Policy, prog []byte) {
	const slots = 12
	ref, err := message.NewStore[tick](arena.Config{Slots: slots, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	refEdge, err := message.NewEdge(ref, pol)
	if err != nil {
		t.Fatal(err)
	}
	s, err := CreateStore[tick]("diff", StoreConfig{Slots: slots, Shards: 1, Dir: t.TempDir(), Watch: -1,
		Edges: []message.Policy{pol}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	e := s.Edge(0)
	type pair struct {
		id       uint64
		ref, got token.Token
	}
	var held []pair
	byRef := map[token.Token]uint64{}
	byGot := map[token.Token]uint64{}
	next := uint64(1)
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	fail := func(step int, format string, args ...any) {
		t.Helper()
		t.Fatalf("policy %+v, step %d: %s", pol, step, fmt.Sprintf(format, args...))
	}
	for step := 0; step+1 < len(prog); step += 2 {
		op, arg := prog[step]%9, prog[step+1]
		switch op {
		case 0: // Put
			h := message.Header{Seq: next, QoS: message.QoS(arg & 3), Size: uint32(arg>>2&7) * 6}
			switch arg >> 5 & 3 {
			case 1:
				h.Deadline = message.Now() - 1e9
			case 2:
				h.Deadline = message.Now() + 3600e9
			}
			if arg&0x80 != 0 {
				h.Flags |= message.DegradeAllowed
			}
			rt, err1 := ref.Put(h, tick{Seq: next})
			gt, err2 := s.Put(h, tick{Seq: next})
			if class(err1) != class(err2) {
				fail(step, "Put: %v vs %v", err1, err2)
			}
			if err1 == nil {
				held = append(held, pair{next, rt, gt})
				byRef[rt], byGot[gt] = next, next
				next++
			}
		case 1, 8: // TrySend, or SendBatch of up to 3 with a done context
			if len(held) == 0 {
				continue
			}
			if op == 1 {
				i := int(arg) % len(held)
				err1 := refEdge.TrySend(held[i].ref)
				err2 := e.TrySend(held[i].got)
				if class(err1) != class(err2) {
					fail(step, "TrySend %d: %v vs %v", held[i].id, err1, err2)
				}
				if err1 == nil {
					held = append(held[:i], held[i+1:]...)
				}
				continue
			}
			k := min(int(arg)%3+1, len(held))
			rs, gs := make([]token.Token, k), make([]token.Token, k)
			for j := range k {
				rs[j], gs[j] = held[j].ref, held[j].got
			}
			n1, err1 := refEdge.SendBatch(canceled, rs)
			n2, err2 := e.SendBatch(canceled, gs)
			if n1 != n2 || class(err1) != class(err2) {
				fail(step, "SendBatch %d: %d %v vs %d %v", k, n1, err1, n2, err2)
			}
			held = held[n1:]
		case 2: // TryRecv
			rt, ok1 := refEdge.TryRecv()
			gt, ok2 := e.TryRecv()
			if ok1 != ok2 || ok1 && byRef[rt] != byGot[gt] {
				fail(step, "TryRecv: %v %d vs %v %d", ok1, byRef[rt], ok2, byGot[gt])
			}
			if ok1 {
				held = append(held, pair{byRef[rt], rt, gt})
			}
		case 3: // RecvBatch with a done context: takes what is there
			k := int(arg)%4 + 1
			rs, gs := make([]token.Token, k), make([]token.Token, k)
			n1, err1 := refEdge.RecvBatch(canceled, rs)
			n2, err2 := e.RecvBatch(canceled, gs)
			if n1 != n2 || class(err1) != class(err2) {
				fail(step, "RecvBatch %d: %d %v vs %d %v", k, n1, err1, n2, err2)
			}
			for j := range n1 {
				if byRef[rs[j]] != byGot[gs[j]] {
					fail(step, "RecvBatch item %d: %d vs %d", j, byRef[rs[j]], byGot[gs[j]])
				}
				held = append(held, pair{byRef[rs[j]], rs[j], gs[j]})
			}
		case 4, 5: // Free
			if len(held) == 0 {
				continue
			}
			i := int(arg) % len(held)
			err1 := ref.Free(held[i].ref)
			err2 := s.Free(held[i].got)
			if class(err1) != class(err2) {
				fail(step, "Free %d: %v vs %v", held[i].id, err1, err2)
			}
			held = append(held[:i], held[i+1:]...)
		case 6: // Retain
			if len(held) == 0 {
				continue
			}
			i := int(arg) % len(held)
			err1 := ref.Retain(held[i].ref)
			err2 := s.Retain(held[i].got)
			if class(err1) != class(err2) {
				fail(step, "Retain: %v vs %v", err1, err2)
			}
			if err1 == nil {
				held = append(held, held[i])
			}
		case 7: // Drain or Close, rarely
			if arg%8 == 0 {
				if n1, n2 := refEdge.Drain(), e.Drain(); n1 != n2 {
					fail(step, "Drain: %d vs %d", n1, n2)
				}
			} else if arg == 1 {
				if err1, err2 := refEdge.Close(), e.Close(); class(err1) != class(err2) {
					fail(step, "Close: %v vs %v", err1, err2)
				}
			}
		}
		if refEdge.Len() != e.Len() || refEdge.Bytes() != e.Bytes() || ref.Available() != s.Available() {
			fail(step, "after op %d: len %d/%d bytes %d/%d available %d/%d", op, refEdge.Len(), e.Len(),
				refEdge.Bytes(), e.Bytes(), ref.Available(), s.Available())
		}
	}
	rs, gs := refEdge.Stats(), e.Stats()
	rs.Invalid, gs.Invalid = 0, 0 // message counts a few header errors differently (none reached here)
	if rs != gs {
		t.Fatalf("policy %+v: stats differ:\nmessage %+v\nshm     %+v", pol, rs, gs)
	}
}

// class names the sentinels an error matches, for comparing errors from
// the two implementations.
func class(err error) string {
	if err == nil {
		return "nil"
	}
	var c string
	for _, s := range []error{message.ErrEdgeFull, message.ErrRejected, message.ErrExpired, message.ErrEdgeClosed,
		message.ErrTooManyRefs, ErrStale, ErrBadToken, ErrFull, ErrClosed, context.Canceled} {
		if errors.Is(err, s) {
			c += s.Error() + ";"
		}
	}
	if c == "" {
		return "other: " + err.Error()
	}
	return c
}
