package message

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/cella-go/cella/token"
)

var errFakeStale = errors.New("fake: stale token")

// fakeStore is a map-based HeaderStore for edge tests: it needs no arena,
// counts references, and records every token freed down to zero.
type fakeStore struct {
	mu    sync.Mutex
	next  uint32
	live  map[token.Token]*fakeEntry
	freed map[token.Token]int // token -> number of final frees (must stay <= 1)
	frees int
}

type fakeEntry struct {
	h    Header
	refs int
}

func newFakeStore() *fakeStore {
	return &fakeStore{live: map[token.Token]*fakeEntry{}, freed: map[token.Token]int{}}
}

func (s *fakeStore) put(h Header) token.Token {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	return s.putLocked(token.New(s.next, 1), h)
}

// putHigh is put with the top bit of the token's index set (an index of
// 2^31 or more), as a store of more than 2^31 slots, or a HeaderStore of
// another kind, may hand out.
func (s *fakeStore) putHigh(h Header) token.Token {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	return s.putLocked(token.New(s.next|1<<31, 1), h)
}

func (s *fakeStore) putLocked(t token.Token, h Header) token.Token {
	if h.Created == 0 {
		h.Created = Now()
	}
	s.live[t] = &fakeEntry{h: h, refs: 1}
	return t
}

func (s *fakeStore) Header(t token.Token) (Header, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.live[t]
	if !ok {
		return Header{}, fmt.Errorf("header %v: %w", t, errFakeStale)
	}
	return e.h, nil
}

func (s *fakeStore) Retain(t token.Token) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.live[t]
	if !ok {
		return errFakeStale
	}
	e.refs++
	return nil
}

func (s *fakeStore) Free(t token.Token) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.live[t]
	if !ok {
		return fmt.Errorf("free %v: %w", t, errFakeStale)
	}
	s.frees++
	e.refs--
	if e.refs == 0 {
		delete(s.live, t)
		s.freed[t]++
	}
	return nil
}

func (s *fakeStore) liveCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.live)
}

func (s *fakeStore) isLive(t token.Token) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.live[t]
	return ok
}

func (s *fakeStore) header(t testing.TB, tok token.Token) Header {
	t.Helper()
	h, err := s.Header(tok)
	if err != nil {
		t.Fatalf("Header(%v): %v", tok, err)
	}
	return h
}
