package memclass

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrMap is returned (wrapped with the size and the kernel's reason) when the
// kernel or a Provider refuses to map a region.
var ErrMap = errors.New("memclass: mmap failed")

// Region is a mapping made for one class. Its memory is off the Go heap: the
// garbage collector never scans it, so it must never hold Go pointers.
//
// A Region is not safe for concurrent Unmap; its read-only methods may be
// called from any goroutine while it is mapped.
type Region struct {
	base      unsafe.Pointer
	size      uintptr
	guard     uintptr  // inaccessible bytes mapped after the region (0 or one page)
	class     Class    // the class the caller asked for (PerNode for MapNode regions)
	applied   Class    // the class whose policy was applied (Bind(n) for MapNode)
	node      int      // the node of a MapNode region, else -1
	pageSize  uintptr  // backing page size: PageSize, or the hugetlb page size
	provider  Provider // non-nil for provider classes
	fallbacks []Fallback
	parts     []NodePart // MapNodes regions: each node's share
}

// PageSize is the base page size of the machine.
var PageSize = uintptr(os.Getpagesize())

// Base returns the first byte of the region.
func (r *Region) Base() unsafe.Pointer { return r.base }

// Len returns the size of the region in bytes (whole pages; whole huge pages
// for hugetlb regions).
func (r *Region) Len() uintptr { return r.size }

// Class returns the class the region was mapped for (for a region made by
// MapNode, the PerNode class).
func (r *Region) Class() Class { return r.class }

// Node returns the node a MapNode region is bound to, or -1 for regions made
// by Map.
func (r *Region) Node() int { return r.node }

// PageSize returns the size of the pages backing the region: the hugetlb page
// size for a hugetlb region, else the base page size (transparent huge pages
// are reported by HugePageBytes, since the kernel may split them at will).
func (r *Region) PageSize() uintptr { return r.pageSize }

// Fallbacks lists the modifiers a BestEffort class could not honour for this
// region, and what the region got instead. It is empty for a region that got
// everything its class asked for.
func (r *Region) Fallbacks() []Fallback { return append([]Fallback(nil), r.fallbacks...) }

// Unmap releases the region (munmap, which also drops any mlock, or the
// Provider's Unmap). It must not be touched afterwards. A second Unmap is a
// no-op.
func (r *Region) Unmap() error {
	if r.base == nil {
		return nil
	}
	var err error
	if r.provider != nil {
		err = r.provider.Unmap(r.class, r.base, r.size)
	} else {
		err = unix.MunmapPtr(r.base, r.size+r.guard)
	}
	if err != nil {
		return fmt.Errorf("memclass: unmap %d bytes of %s: %w", r.size, r.class, err)
	}
	r.base = nil
	return nil
}

// roundUp rounds n up to a multiple of align (a power of two); ok is false on
// overflow.
func roundUp(n, align uintptr) (v uintptr, ok bool) {
	v = (n + align - 1) &^ (align - 1)
	return v, v >= n
}
