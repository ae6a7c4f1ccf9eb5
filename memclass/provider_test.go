package memclass

import (
	"errors"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fakeProvider hands out anonymous memory and counts its calls.
type fakeProvider struct {
	maps, unmaps atomic.Int32
	last         Class
}

func (p *fakeProvider) Map(c Class, size uintptr) (unsafe.Pointer, error) {
	p.maps.Add(1)
	p.last = c
	return unix.MmapPtr(-1, 0, nil, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
}

func (p *fakeProvider) Unmap(c Class, base unsafe.Pointer, size uintptr) error {
	p.unmaps.Add(1)
	return unix.MunmapPtr(base, size)
}

func TestProviderClassesNeedAProvider(t *testing.T) {
	for _, c := range []Class{Device(0), PinnedHost(), Shared().Locked()} {
		r, err := Map(c, PageSize)
		if !errors.Is(err, ErrUnsupported) || r != nil {
			t.Errorf("Map(%s) without a provider: %v, %v; want ErrUnsupported", c, r, err)
		}
	}
}

func TestProviderClassesWithFake(t *testing.T) {
	p := &fakeProvider{}
	if _, err := SetProvider(KindDevice, p); err != nil {
		t.Fatal(err)
	}
	defer SetProvider(KindDevice, nil)
	if _, err := SetProvider(KindBind, p); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("SetProvider(bind): %v", err)
	}
	r, err := Map(Device(3), 3*PageSize+1)
	if err != nil {
		t.Fatal(err)
	}
	if p.maps.Load() != 1 || p.last != Device(3) || r.Len() != 4*PageSize || r.Class() != Device(3) {
		t.Fatalf("maps=%d last=%s len=%d", p.maps.Load(), p.last, r.Len())
	}
	*(*byte)(unsafe.Add(r.Base(), r.Len()-1)) = 7
	if _, err := r.Policy(); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Policy of provider memory: %v", err)
	}
	if err := r.Unmap(); err != nil || p.unmaps.Load() != 1 {
		t.Fatalf("Unmap: %v, unmaps=%d", err, p.unmaps.Load())
	}
	if err := r.Unmap(); err != nil || p.unmaps.Load() != 1 {
		t.Fatal("second Unmap must not reach the provider")
	}
	// Other provider kinds are still unregistered.
	if _, err := Map(Shared(), PageSize); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Shared with only a Device provider: %v", err)
	}
	old, _ := SetProvider(KindDevice, nil)
	if old != p {
		t.Fatal("SetProvider must return the provider it replaces")
	}
	if _, err := Map(Device(3), PageSize); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("after unregistering: %v", err)
	}
}
