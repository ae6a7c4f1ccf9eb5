package memclass

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrMap is returned (wrapped with the size and the kernel's reason) when the
// kernel refuses to map a region.
var ErrMap = errors.New("memclass: mmap failed")

// Region is an anonymous mapping made for one class. Its memory is off the Go
// heap: the garbage collector never scans it, so it must never hold Go
// pointers.
type Region struct {
	base  unsafe.Pointer
	size  uintptr
	class Class
}

// PageSize is the base page size of the machine.
var PageSize = uintptr(os.Getpagesize())

// Map reserves size bytes (rounded up to whole pages) for class c. Nothing is
// committed: pages become resident when first touched.
func Map(c Class, size uintptr) (*Region, error) {
	if size == 0 {
		return nil, fmt.Errorf("%w: zero-byte region", ErrMap)
	}
	rounded := (size + PageSize - 1) &^ (PageSize - 1)
	if rounded < size { // overflow
		return nil, fmt.Errorf("%w: %d bytes overflows the address space", ErrMap, size)
	}
	base, err := unix.MmapPtr(-1, 0, nil, rounded,
		unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("%w: %d bytes for class %s: %v", ErrMap, rounded, c, err)
	}
	return &Region{base: base, size: rounded, class: c}, nil
}

// Base returns the first byte of the region.
func (r *Region) Base() unsafe.Pointer { return r.base }

// Len returns the size of the region in bytes (whole pages).
func (r *Region) Len() uintptr { return r.size }

// Class returns the class the region was mapped for.
func (r *Region) Class() Class { return r.class }

// Unmap releases the region. It must not be touched afterwards. A second
// Unmap is a no-op.
func (r *Region) Unmap() error {
	if r.base == nil {
		return nil
	}
	err := unix.MunmapPtr(r.base, r.size)
	if err != nil {
		return fmt.Errorf("memclass: munmap %d bytes: %w", r.size, err)
	}
	r.base = nil
	return nil
}
