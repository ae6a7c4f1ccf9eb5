package shm

import (
	"errors"
	"testing"
)

type msg struct {
	A, B uint64
	C    [48]byte
}

func TestSmoke(t *testing.T) {
	dir := t.TempDir()
	a, err := Create[msg]("smoke", Config{Slots: 100, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Attach[msg]("smoke", Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	tok, p, err := a.Alloc()
	if err != nil {
		t.Fatal(err)
	}
	p.A = 42
	v, err := b.Load(tok)
	if err != nil || v.A != 42 {
		t.Fatal(v, err)
	}
	if err := b.Free(tok); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Load(tok); !errors.Is(err, ErrStale) {
		t.Fatal(err)
	}
	var toks []uint64
	for {
		tk, _, err := b.Alloc()
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, uint64(tk))
	}
	if len(toks) != 100 || a.Available() != 0 {
		t.Fatal(len(toks), a.Available())
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Attach[msg]("smoke", Config{Dir: dir}); !errors.Is(err, ErrNotExist) {
		t.Fatal(err)
	}
}
