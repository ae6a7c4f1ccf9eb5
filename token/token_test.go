package token

import (
	"math"
	"testing"
)

func TestLayoutRoundTrip(t *testing.T) {
	cases := []struct{ idx, gen uint32 }{
		{0, 1}, {7, 3}, {math.MaxUint32, 1}, {0, math.MaxUint32}, {math.MaxUint32, math.MaxUint32}, {12345, 678},
	}
	for _, c := range cases {
		tok := New(c.idx, c.gen)
		if tok.Index() != c.idx || tok.Generation() != c.gen {
			t.Fatalf("New(%d,%d) = %#x -> (%d,%d)", c.idx, c.gen, uint64(tok), tok.Index(), tok.Generation())
		}
		if tok.IsNil() {
			t.Fatalf("New(%d,%d) is Nil", c.idx, c.gen)
		}
	}
	if got := New(5, 9); uint64(got) != 9<<32|5 {
		t.Fatalf("layout changed: %#x", uint64(got))
	}
}

func TestNil(t *testing.T) {
	if !Nil.IsNil() || Nil.Index() != 0 || Nil.Generation() != 0 {
		t.Fatal("Nil is not the zero token")
	}
	var zero Token
	if zero != Nil {
		t.Fatal("zero value differs from Nil")
	}
	if New(0, 0) != Nil {
		t.Fatal("index 0 generation 0 must be Nil")
	}
}

func TestString(t *testing.T) {
	if s := New(7, 3).String(); s != "7@3" {
		t.Fatalf("String = %q", s)
	}
	if s := Nil.String(); s != "nil" {
		t.Fatalf("Nil.String = %q", s)
	}
	if s := New(math.MaxUint32, math.MaxUint32).String(); s != "4294967295@4294967295" {
		t.Fatalf("String = %q", s)
	}
}

func FuzzRoundTrip(f *testing.F) {
	f.Add(uint32(0), uint32(1))
	f.Add(uint32(math.MaxUint32), uint32(math.MaxUint32))
	f.Fuzz(func(t *testing.T, idx, gen uint32) {
		tok := New(idx, gen)
		if tok.Index() != idx || tok.Generation() != gen {
			t.Fatalf("round trip (%d,%d)", idx, gen)
		}
		if tok.IsNil() != (idx == 0 && gen == 0) {
			t.Fatalf("IsNil wrong for (%d,%d)", idx, gen)
		}
	})
}
