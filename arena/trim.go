package arena

import (
	"os"
	"slices"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cella-go/cella/memclass"
)

// Trim: giving the memory of free slots back to the kernel.
//
// Only payload pages go back. A slot's metadata (its generation, freelist
// link and version) lives in a region of its own (slot.go) and stays, so a
// stale token stays stale; a released payload page reads as zeros when it
// is next touched, and Alloc zeroes a recycled slot anyway.
//
// Trim takes each shard's whole freelist with one CAS (shard.Set.Detach),
// sorts the indices, finds the runs of consecutive free slots and releases
// every whole page inside each run with madvise(MADV_DONTNEED); then it puts
// the list back. While it holds a list, the shard set counts a steal in
// progress, so an Alloc that finds nothing else looks again instead of
// reporting ErrFull: exactness holds. Close waits for a running Trim before
// it unmaps anything (trimMu), so Trim needs no gate section, and the
// syscalls run unpinned.
//
// Not released: slots parked in a P's one-slot cache, slots still held by a
// View or Update callback after Free, and payload pages shared with a live
// slot. Locked (mlock'd) and hugetlb arenas and provider memory release
// nothing: their pages are pinned or not the kernel's to take back.

// trimState serialises Trim calls and lets Close wait for one.
type trimState struct {
	mu  sync.Mutex
	idx []uint32 // scratch: one shard's free slots
	vec []byte   // scratch: mincore's answer
}

// Trim returns to the OS the payload memory of free slots and reports how
// many bytes were resident and released. It is safe to call while other
// goroutines use the arena; they may see it only as a short delay of an
// Alloc that would otherwise have found the arena full. After Close it
// returns ErrClosed.
func (c *core) Trim() (released int64, err error) {
	c.trim.mu.Lock()
	defer c.trim.mu.Unlock()
	if c.gate.Closed() {
		return 0, ErrClosed
	}
	if !c.trimmable() {
		return 0, nil
	}
	page := uintptr(os.Getpagesize())
	for sh := 0; sh < c.set.Len(); sh++ {
		if c.gate.Closed() {
			return released, ErrClosed
		}
		first, ok := c.set.Detach(sh)
		if !ok {
			continue
		}
		idx := append(c.trim.idx[:0], first)
		last := first
		for {
			next, ok := c.set.Next(last)
			if !ok {
				break
			}
			idx = append(idx, next)
			last = next
		}
		released += c.releaseRuns(idx, page)
		c.set.Reattach(sh, first, last)
		c.trim.idx = idx[:0]
	}
	if cap(c.trim.idx) > 1<<16 {
		c.trim.idx = nil // do not keep a burst's worth of scratch
	}
	return released, nil
}

// trimmable reports whether the kernel may take the arena's payload pages.
func (c *core) trimmable() bool {
	switch c.class.Kind() {
	case memclass.KindDevice, memclass.KindPinnedHost, memclass.KindShared:
		return false
	}
	return c.stride > 0 && !c.class.IsLocked() && !c.class.HugeTLB()
}

// releaseRuns releases the whole pages inside each run of consecutive
// indices of idx (free slots in the caller's hands) and returns the bytes
// that were resident.
func (c *core) releaseRuns(idx []uint32, page uintptr) (released int64) {
	slices.Sort(idx)
	for i := 0; i < len(idx); {
		j := i + 1
		for j < len(idx) && idx[j] == idx[j-1]+1 {
			j++
		}
		lo := (uintptr(idx[i])*c.stride + page - 1) &^ (page - 1)
		hi := (uintptr(idx[j-1]) + 1) * c.stride &^ (page - 1)
		if hi > lo {
			released += c.release(lo, hi-lo, page)
		}
		i = j
	}
	return released
}

// release counts the resident pages of [off, off+n) of the payload region
// and gives the range back to the kernel.
func (c *core) release(off, n, page uintptr) int64 {
	addr := unsafe.Add(c.base, off)
	pages := int(n / page)
	if cap(c.trim.vec) < pages {
		c.trim.vec = make([]byte, pages)
	}
	vec := c.trim.vec[:pages]
	resident := 0
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(addr), n, uintptr(unsafe.Pointer(&vec[0]))); errno == 0 {
		for _, v := range vec {
			resident += int(v & 1)
		}
	}
	if cap(c.trim.vec) > 1<<20 {
		c.trim.vec = nil
	}
	if err := unix.Madvise(unsafe.Slice((*byte)(addr), n), unix.MADV_DONTNEED); err != nil {
		return 0
	}
	return int64(resident) * int64(page)
}
