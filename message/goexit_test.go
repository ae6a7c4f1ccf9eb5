package message

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/cella-go/cella/token"
)

// A user HeaderStore whose Free calls runtime.Goexit (t.FailNow in a test
// double does) ends the goroutine of the edge operation that freed, while
// it holds the edge's lock. The edge must come out of it whole and
// unlocked: other goroutines go on, parked ones are woken, nothing the
// edge held is lost. Before exitLocked, every test here hung.

// usShortLife is the deadline these tests give a message that must expire
// while queued: long enough that the send that queues it comes first even
// on a loaded machine under -race (1 ms was not), short for the test.
const usShortLife = 20 * time.Millisecond

// usOutlive sleeps until messages put usShortLife ago have expired.
func usOutlive() { time.Sleep(usShortLife + 5*time.Millisecond) }

// usGoexitFree makes the next Free (after really freeing) call
// runtime.Goexit; later Frees behave.
func usGoexitFree(s *usStore) {
	s.setFree(func(token.Token) error {
		s.setFree(nil)
		runtime.Goexit()
		return nil
	})
}

// usGoexits runs fn in a goroutine and reports whether it ended (by Goexit
// or by returning) within a second.
func usGoexits(t *testing.T, what string, fn func()) {
	t.Helper()
	if !usWithin(time.Second, fn) {
		t.Fatalf("%s: did not end", what)
	}
}

func usLiveIs(t *testing.T, what string, s *usStore, want int) {
	t.Helper()
	if got := s.liveCount(); got != want {
		t.Errorf("%s: the store holds %d live messages, want %d", what, got, want)
	}
}

func TestGoexitFreeOnEvict(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 2, Admission: DropOldest})
	for range 2 {
		if err := e.TrySend(s.put(Header{})); err != nil {
			t.Fatal(err)
		}
	}
	usGoexitFree(s)
	tok := s.put(Header{})
	usGoexits(t, "TrySend evicting", func() { e.TrySend(tok) })
	if !usUsable(t, "after Goexit in an eviction's Free", e, s) {
		return
	}
	usConserve(t, "evict", e)
	if st := e.Stats(); st.Evicted != 1 || st.FreeErrors != 1 {
		t.Errorf("Evicted %d FreeErrors %d, want 1 and 1", st.Evicted, st.FreeErrors)
	}
	// The sender ended before its token got in: it is still the sender's.
	usLiveIs(t, "evict", s, e.Len()+1)
	s.Free(tok)
}

func TestGoexitFreeOnReapKeepsTheRest(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 4, Admission: Block})
	for range 3 {
		if err := e.TrySend(usExpiring(s, usShortLife)); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.TrySend(s.put(Header{})); err != nil {
		t.Fatal(err)
	}
	usOutlive()
	usGoexitFree(s)
	tok := s.put(Header{})
	// The edge is full: the send reaps the three expired messages; the
	// first Free ends the goroutine with two of them not freed yet.
	usGoexits(t, "TrySend reaping", func() { e.TrySend(tok) })
	s.Free(tok)
	if !usUsable(t, "after Goexit in a reap's Free", e, s) {
		return
	}
	usConserve(t, "reap", e)
	// The two left are expired: the next receive frees them and delivers
	// the live one.
	got, ok := e.TryRecv()
	if !ok {
		t.Fatal("TryRecv: the live message is gone")
	}
	s.Free(got)
	if n := e.Drain(); n != 0 {
		t.Errorf("Drain freed %d, want 0 (the expired ones freed by the receive)", n)
	}
	usConserve(t, "reap, drained", e)
	if st := e.Stats(); st.Expired != 3 || st.FreeErrors != 1 {
		t.Errorf("Expired %d FreeErrors %d, want 3 and 1", st.Expired, st.FreeErrors)
	}
	usLiveIs(t, "reap", s, 0)
}

func TestGoexitFreeOnRecvBatchFreesTaken(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 8, Admission: Block})
	if err := e.TrySend(s.put(Header{})); err != nil {
		t.Fatal(err)
	}
	if err := e.TrySend(usExpiring(s, usShortLife)); err != nil {
		t.Fatal(err)
	}
	if err := e.TrySend(s.put(Header{})); err != nil {
		t.Fatal(err)
	}
	usOutlive()
	usGoexitFree(s)
	// RecvBatch takes the first, meets the expired one and ends in its
	// Free: the first is freed for it.
	usGoexits(t, "RecvBatch", func() {
		var dst [4]token.Token
		e.RecvBatch(context.Background(), dst[:])
	})
	if !usUsable(t, "after Goexit in a receive's Free", e, s) {
		return
	}
	usConserve(t, "recv", e)
	usLiveIs(t, "recv", s, e.Len())
	if e.Len() != 1 {
		t.Errorf("Len %d, want 1 (the third message)", e.Len())
	}
	e.Drain()
	usLiveIs(t, "recv, drained", s, 0)
}

func TestGoexitFreeInDrainWakesSender(t *testing.T) {
	s := usNewStore()
	e := usEdge(t, s, Policy{MaxItems: 2, Admission: Block})
	for range 2 {
		if err := e.TrySend(s.put(Header{})); err != nil {
			t.Fatal(err)
		}
	}
	tok := s.put(Header{})
	sent := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		sent <- e.Send(ctx, tok)
	}()
	for e.Stats().Waited == 0 {
		time.Sleep(time.Millisecond)
	}
	usGoexitFree(s)
	usGoexits(t, "Drain", func() { e.Drain() })
	select {
	case err := <-sent:
		if err != nil {
			t.Errorf("the parked Send: %v, want nil (the Drain made room before it ended)", err)
		}
	case <-time.After(time.Second):
		t.Fatal("the parked sender was not woken: the edge is still locked or nobody woke it")
	}
	usConserve(t, "drain", e)
	e.Drain()
	usLiveIs(t, "drain", s, 0)
}
