package memclass

import (
	"fmt"
	"os"
	"sync"
	"unsafe"
)

// Provider supplies memory for the classes the kernel alone cannot make:
// Device, PinnedHost and Shared. A GPU runtime, a DMA driver or a shared
// memory segment manager implements it and registers it with SetProvider.
//
// Map must return size bytes (size is already a whole number of pages) that
// stay valid until Unmap, and must honour c's modifiers or fail; memclass
// applies no NUMA policy, madvise or mlock to provider memory. The memory
// must be readable and writable by the CPU if an arena is to hold it.
type Provider interface {
	Map(c Class, size uintptr) (unsafe.Pointer, error)
	Unmap(c Class, base unsafe.Pointer, size uintptr) error
}

var providers struct {
	sync.RWMutex
	byKind map[Kind]Provider
}

// SetProvider registers p as the source of memory for classes of kind k
// (KindDevice, KindPinnedHost or KindShared) and returns the provider it
// replaces. A nil p removes the registration, after which Map fails for that
// kind with ErrUnsupported again. Regions already mapped keep the provider
// that made them.
func SetProvider(k Kind, p Provider) (Provider, error) {
	if !k.needsProvider() {
		return nil, fmt.Errorf("%w: kind %s does not take a provider", ErrUnsupported, k)
	}
	providers.Lock()
	defer providers.Unlock()
	old := providers.byKind[k]
	if p == nil {
		delete(providers.byKind, k)
		return old, nil
	}
	if providers.byKind == nil {
		providers.byKind = map[Kind]Provider{}
	}
	providers.byKind[k] = p
	return old, nil
}

func providerFor(k Kind) Provider {
	providers.RLock()
	defer providers.RUnlock()
	return providers.byKind[k]
}

// mapProvided maps a provider class. There is never a fallback to host memory.
func mapProvided(c Class, size uintptr) (*Region, error) {
	if c.flags&flagBadNode != 0 {
		return nil, fmt.Errorf("%w: class %s names device %d", ErrNoSuchNode, c, c.node)
	}
	p := providerFor(c.kind)
	if p == nil {
		return nil, fmt.Errorf("%w: class %s needs a Provider (SetProvider(Kind%s, p)) and none is registered",
			ErrUnsupported, c, providerKindName(c.kind))
	}
	base, err := p.Map(c, size)
	if err != nil {
		return nil, fmt.Errorf("%w: provider for %s could not map %d bytes: %w", ErrMap, c, size, err)
	}
	if base == nil {
		return nil, fmt.Errorf("%w: provider for %s returned a nil base for %d bytes", ErrMap, c, size)
	}
	return &Region{base: base, size: size, class: c, node: -1, provider: p, pageSize: uintptr(os.Getpagesize())}, nil
}

func providerKindName(k Kind) string {
	switch k {
	case KindDevice:
		return "Device"
	case KindPinnedHost:
		return "PinnedHost"
	}
	return "Shared"
}
