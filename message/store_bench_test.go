package message

import (
	"testing"

	"github.com/cella-go/cella/arena"
)

// Short micro-benchmarks of the store's own paths (the suite in bench/
// measures hops end to end). Header.Created is set so that Put's cost is not
// dominated by the clock read.

func benchStore(b *testing.B) *Store[payload] {
	s, err := NewStore[payload](arena.Config{Slots: 1024, Shards: 1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

func BenchmarkStorePutFree(b *testing.B) {
	s := benchStore(b)
	h := Header{Created: 1, Size: 64}
	for b.Loop() {
		t, err := s.Put(h, payload{A: 1})
		if err != nil {
			b.Fatal(err)
		}
		s.Free(t)
	}
}

func BenchmarkStoreRetainFree(b *testing.B) {
	s := benchStore(b)
	t, _ := s.Put(Header{Created: 1}, payload{})
	for b.Loop() {
		s.Retain(t)
		s.Free(t)
	}
}

func BenchmarkStoreHeader(b *testing.B) {
	s := benchStore(b)
	t, _ := s.Put(Header{Created: 1}, payload{})
	for b.Loop() {
		if _, err := s.Header(t); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkStoreView(b *testing.B) {
	s := benchStore(b)
	t, _ := s.Put(Header{Created: 1}, payload{A: 1})
	var acc uint64
	read := func(m *Message[payload]) { acc += m.Payload.A }
	for b.Loop() {
		if err := s.View(t, read); err != nil {
			b.Fatal(err)
		}
	}
	if acc == 0 {
		b.Fatal("View never ran")
	}
}

func BenchmarkStorePutFuncFree(b *testing.B) {
	s := benchStore(b)
	h := Header{Created: 1, Size: 64}
	fill := func(m *Message[payload]) error { m.Payload.A = 1; return nil }
	for b.Loop() {
		t, err := s.PutFunc(h, fill)
		if err != nil {
			b.Fatal(err)
		}
		s.Free(t)
	}
}
