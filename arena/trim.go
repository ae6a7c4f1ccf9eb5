package arena

import (
	"math/bits"
	"os"
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
// Trim takes every shard's whole freelist, one CAS each
// (shard.Set.Detach), marks the indices in a bitmap, finds the runs of
// consecutive free slots and releases every whole page inside each run with
// madvise(MADV_DONTNEED); then it puts the lists back. The lists are taken
// all at once because Free returns a slot to the freeing P's shard, so the
// slots of one page are often spread over several lists. While Trim holds
// them the shard set counts steals in progress, so an Alloc that finds
// nothing else looks again instead of reporting ErrFull: exactness holds.
// Close waits for a running Trim before it unmaps anything (trimMu), so Trim
// needs no gate section, and the syscalls run unpinned.
//
// Not released: slots parked in a P's one-slot cache, slots still held by a
// View or Update callback after Free, and payload pages shared with a live
// slot. Locked (mlock'd) and hugetlb arenas and provider memory release
// nothing: their pages are pinned or not the kernel's to take back.

// trimState serialises Trim calls and lets Close wait for one.
type trimState struct {
	mu sync.Mutex
}

// Trim returns to the OS the payload memory of free slots and reports how
// many bytes were resident and released. It is safe to call while other
// goroutines use the arena; an Alloc that would otherwise have found the
// arena full waits for it (it holds the free slots for the length of its
// madvise calls). After Close it returns ErrClosed.
func (c *core) Trim() (released int64, err error) {
	c.trim.mu.Lock()
	defer c.trim.mu.Unlock()
	if c.gate.Closed() {
		return 0, ErrClosed
	}
	if !c.trimmable() {
		return 0, nil
	}
	var touched uint32
	for sh := 0; sh < c.set.Len(); sh++ {
		_, frontier := c.set.Touched(sh)
		touched = max(touched, frontier)
	}
	type chain struct {
		shard       int
		first, last uint32
	}
	var (
		chains []chain
		free   = make([]uint64, (touched+63)/64) // bit i: slot i is in our hands
	)
	for sh := 0; sh < c.set.Len(); sh++ {
		first, ok := c.set.Detach(sh)
		if !ok {
			continue
		}
		last := first
		free[first/64] |= 1 << (first % 64)
		for {
			next, ok := c.set.Next(last)
			if !ok {
				break
			}
			free[next/64] |= 1 << (next % 64)
			last = next
		}
		chains = append(chains, chain{sh, first, last})
	}
	released = c.releaseRuns(free, uintptr(os.Getpagesize()))
	for _, ch := range chains {
		c.set.Reattach(ch.shard, ch.first, ch.last)
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

// releaseRuns releases the whole pages inside each run of consecutive set
// bits of free (slots in the caller's hands) and returns the bytes that were
// resident.
func (c *core) releaseRuns(free []uint64, page uintptr) (released int64) {
	var vec []byte
	n := uint32(len(free) * 64)
	for i := uint32(0); i < n; {
		w := free[i/64] >> (i % 64)
		if w == 0 {
			i = (i/64 + 1) * 64 // nothing more in this word
			continue
		}
		i += uint32(bits.TrailingZeros64(w)) // the run starts here
		j := i
		for j < n {
			w := ^free[j/64] >> (j % 64) // ones where slots are not free
			if w == 0 {
				j = (j/64 + 1) * 64
				continue
			}
			j += uint32(bits.TrailingZeros64(w))
			break
		}
		j = min(j, n) // the run is [i, j)
		lo := (uintptr(i)*c.stride + page - 1) &^ (page - 1)
		hi := uintptr(j) * c.stride &^ (page - 1)
		if hi > lo {
			released += c.release(lo, hi-lo, page, &vec)
		}
		i = j
	}
	return released
}

// release counts the resident pages of [off, off+n) of the payload region
// and gives the range back to the kernel.
func (c *core) release(off, n, page uintptr, scratch *[]byte) int64 {
	addr := unsafe.Add(c.base, off)
	pages := int(n / page)
	if cap(*scratch) < pages {
		*scratch = make([]byte, pages)
	}
	vec := (*scratch)[:pages]
	resident := 0
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(addr), n, uintptr(unsafe.Pointer(&vec[0]))); errno == 0 {
		for _, v := range vec {
			resident += int(v & 1)
		}
	}
	if err := unix.Madvise(unsafe.Slice((*byte)(addr), n), unix.MADV_DONTNEED); err != nil {
		return 0
	}
	return int64(resident) * int64(page)
}
