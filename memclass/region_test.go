package memclass

import (
	"errors"
	"testing"
	"unsafe"
)

func TestMapTouchUnmap(t *testing.T) {
	r, err := Map(Host(), 3*PageSize+1)
	if err != nil {
		t.Fatal(err)
	}
	if r.Len() != 4*PageSize {
		t.Fatalf("Len = %d, want %d", r.Len(), 4*PageSize)
	}
	last := (*byte)(unsafe.Add(r.Base(), r.Len()-1))
	if *last != 0 {
		t.Fatal("fresh anonymous memory is not zero")
	}
	*last = 42
	if err := r.Unmap(); err != nil {
		t.Fatal(err)
	}
	if err := r.Unmap(); err != nil {
		t.Fatal("second Unmap must be a no-op:", err)
	}
}

func TestMapErrors(t *testing.T) {
	if _, err := Map(Host(), 0); !errors.Is(err, ErrMap) {
		t.Fatalf("zero size: %v", err)
	}
	if _, err := Map(Host(), ^uintptr(0)-10); !errors.Is(err, ErrMap) {
		t.Fatalf("absurd size: %v", err)
	}
	if _, err := Map(Host(), 1<<62); !errors.Is(err, ErrMap) {
		t.Fatalf("absurd size: %v", err)
	}
}
