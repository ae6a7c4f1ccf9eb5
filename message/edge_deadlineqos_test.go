package message

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
)

// TestDeadlineQoSBackgroundWithoutSoftCap: on a DeadlineQoS edge with a
// hard cap and no soft cap, a Background message arriving at the hard cap
// competes like any other: it takes the room of an expired message, or
// evicts an older Background message. Only a soft cap that is set sheds
// Background outright. (Found by FuzzEdgeModel: the edge used to shed
// Background at any hard cap.)
func TestDeadlineQoSBackgroundWithoutSoftCap(t *testing.T) {
	t.Run("expired message frees room", func(t *testing.T) {
		fs := newFakeStore()
		e, err := NewEdge(fs, Policy{MaxItems: 2, Admission: DeadlineQoS})
		if err != nil {
			t.Fatal(err)
		}
		old := fs.put(Header{QoS: Background, Deadline: Now() + int64(usShortLife)})
		keep := fs.put(Header{QoS: BestEffort})
		if err := e.TrySend(old); err != nil {
			t.Fatal(err)
		}
		if err := e.TrySend(keep); err != nil {
			t.Fatal(err)
		}
		usOutlive() // old expires
		in := fs.put(Header{QoS: Background})
		if err := e.TrySend(in); err != nil {
			t.Errorf("Background send with an expired message queued and no soft cap = %v; "+
				"docs: expired messages are freed first, and no soft cap is set", err)
		}
		if st := e.Stats(); st.Expired != 1 {
			t.Errorf("Expired = %d, want 1", st.Expired)
		}
		e.Close()
		e.Drain()
	})
	t.Run("background evicts older background", func(t *testing.T) {
		fs := newFakeStore()
		e, err := NewEdge(fs, Policy{MaxItems: 2, Admission: DeadlineQoS})
		if err != nil {
			t.Fatal(err)
		}
		a, b := fs.put(Header{QoS: Background}), fs.put(Header{QoS: Background})
		if err := e.TrySend(a); err != nil {
			t.Fatal(err)
		}
		if err := e.TrySend(b); err != nil {
			t.Fatal(err)
		}
		in := fs.put(Header{QoS: Background})
		err = e.TrySend(in)
		if err != nil {
			t.Errorf("Background send at the hard cap, older Background queued, no soft cap = %v "+
				"(ErrEdgeFull: %v); docs: evict the oldest message of equal or lower QoS", err, errors.Is(err, ErrEdgeFull))
		}
		if st := e.Stats(); st.Evicted != 1 {
			t.Errorf("Evicted = %d, want 1", st.Evicted)
		}
		e.Close()
		e.Drain()
	})
}

// TestBlockedSenderGetsRoomOfExpired: a Block sender parked on a full edge
// takes the room of a queued message when it expires, without a receiver
// (Send and SendBatch), and the expired message is freed and counted.
func TestBlockedSenderGetsRoomOfExpired(t *testing.T) {
	for _, batch := range []bool{false, true} {
		s := newStore[payload](t, 8)
		e := mustEdge(t, s, Policy{MaxItems: 1, Admission: Block})
		var h Header
		h.SetDeadline(time.Now().Add(20 * time.Millisecond))
		old, err := s.Put(h, payload{A: 1})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Send(context.Background(), old); err != nil {
			t.Fatal(err)
		}
		tok, err := s.Put(Header{}, payload{A: 2})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		start := time.Now()
		if batch {
			_, err = e.SendBatch(ctx, []token.Token{tok})
		} else {
			err = e.Send(ctx, tok)
		}
		cancel()
		if err != nil {
			t.Fatalf("batch %v: the parked send = %v after %v; want nil once the queued message expired", batch, err, time.Since(start))
		}
		if st := e.Stats(); st.Expired != 1 || st.Waited != 1 {
			t.Errorf("batch %v: Stats %+v, want Expired 1 and Waited 1", batch, st)
		}
		got, err := e.Recv(context.Background())
		if err != nil || got != tok {
			t.Fatalf("batch %v: Recv = %v, %v; want the new message", batch, got, err)
		}
		s.Free(got)
		if s.Available() != s.Capacity() {
			t.Errorf("batch %v: the expired message was not freed", batch)
		}
	}
}

// TestDeadlineQoSSoftCapFreesExpiredFirst: DeadlineQoS "first frees expired
// messages", so messages that expired do not count towards the soft cap
// that sheds Background: a Background send at the soft cap gets in when
// expired messages make up the difference, and is still shed when the live
// ones alone reach it. Sends and batches alike.
func TestDeadlineQoSSoftCapFreesExpiredFirst(t *testing.T) {
	for _, batch := range []bool{false, true} {
		fs := newFakeStore()
		e, err := NewEdge(fs, Policy{MaxItems: 8, SoftItems: 2, Admission: DeadlineQoS})
		if err != nil {
			t.Fatal(err)
		}
		send := func(tok token.Token) error {
			if batch {
				_, err := e.SendBatch(context.Background(), []token.Token{tok})
				return err
			}
			return e.TrySend(tok)
		}
		live := fs.put(Header{QoS: BestEffort})
		dying := fs.put(Header{QoS: BestEffort, Deadline: Now() + int64(usShortLife)})
		for _, tok := range []token.Token{live, dying} {
			if err := send(tok); err != nil {
				t.Fatal(err)
			}
		}
		usOutlive() // dying expires: one live message, below the soft cap
		if err := send(fs.put(Header{QoS: Background})); err != nil {
			t.Errorf("batch %v: Background send with 1 live and 1 expired message at soft cap 2 = %v; "+
				"want it admitted (expired messages are freed first)", batch, err)
		}
		// Now 2 live messages: at the soft cap, Background is shed.
		err = send(fs.put(Header{QoS: Background}))
		if !errors.Is(err, ErrRejected) {
			t.Errorf("batch %v: Background send with 2 live messages at soft cap 2 = %v, want ErrRejected", batch, err)
		}
		if st := e.Stats(); st.Expired != 1 || st.Admitted != 3 || st.Rejected != 1 || st.Len != 2 {
			t.Errorf("batch %v: Stats = %+v, want Expired 1, Admitted 3, Rejected 1, Len 2", batch, st)
		}
		e.Close()
		e.Drain()
	}
}
