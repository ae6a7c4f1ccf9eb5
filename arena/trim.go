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
// Payload pages and version pages go back; state words stay (slot.go). A
// state word holds the generation, so a stale token stays stale, and a free
// slot's freelist link. A released payload page reads as zeros when it is
// next touched (Alloc zeroes a recycled slot anyway); a released version
// page restarts the versions of slots nobody holds, and a version only has
// to stand still for the life of one allocation.
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
// many bytes of payload were resident and released (version pages, one
// per 1024 slots, go back too and are not counted). It is safe to call while other
// goroutines use the arena; an Alloc that would otherwise have found the
// arena full waits for it (it holds the free slots for the length of its
// madvise calls). After Close it returns ErrClosed.
//
// Not released: a slot parked in a P's one-slot cache of the last freed
// slot (at most one per P), a slot freed while a View or Update still held
// it until they return, and pages shared with a live slot.
func (c *core) Trim() (released int64, err error) {
	return c.TrimWith(nil)
}

// TrimWith is Trim for a layer that keeps per-slot memory of its own next
// to the arena (message.Store keeps reference counts): release, if not nil,
// is called for every run [first, end) of consecutive free slots that Trim
// releases (see Trim for the free slots it leaves alone) while it holds
// them, so no Alloc can hand one of them out meanwhile; it may give
// that memory back (for example with madvise), and must not call into the
// arena.
func (c *core) TrimWith(release func(first, end uint32)) (released int64, err error) {
	c.trim.mu.Lock()
	defer c.trim.mu.Unlock()
	if c.gate.Closed() {
		return 0, ErrClosed
	}
	if !c.trimmable() && release == nil {
		return 0, nil
	}
	type chain struct {
		shard       int
		first, last uint32
	}
	var chains []chain
	for sh := 0; sh < c.set.Len(); sh++ {
		if first, ok := c.set.Detach(sh); ok {
			chains = append(chains, chain{shard: sh, first: first})
		}
	}
	// The frontiers are read after the lists are ours: a slot on a list we
	// took was handed out (and its shard's frontier moved past it) before
	// it was freed onto that list. Read before, they could miss slots that
	// other goroutines took past them and freed onto a list we had not
	// detached yet. mark grows the bitmap all the same, so that no index
	// can ever fall outside it.
	var touched uint32
	for sh := 0; sh < c.set.Len(); sh++ {
		_, frontier := c.set.Touched(sh)
		touched = max(touched, frontier)
	}
	free := make([]uint64, (touched+63)/64) // bit i: slot i is in our hands
	mark := func(i uint32) {
		for int(i/64) >= len(free) {
			free = append(free, 0)
		}
		free[i/64] |= 1 << (i % 64)
	}
	for k := range chains {
		last := chains[k].first
		mark(last)
		for {
			next, ok := c.set.Next(last)
			if !ok {
				break
			}
			mark(next)
			last = next
		}
		chains[k].last = last
	}
	released = c.releaseRuns(free, uintptr(os.Getpagesize()), release)
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

// releaseRuns releases the whole payload and version pages inside each run
// of consecutive set bits of free (slots in the caller's hands), calls also
// (if set) for each run, and returns the payload bytes that were resident.
func (c *core) releaseRuns(free []uint64, page uintptr, also func(first, end uint32)) (released int64) {
	var vec []byte
	own := c.trimmable()
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
		if own {
			released += releaseRange(c.base, c.stride, i, j, page, &vec)
			releaseRange(c.versions, versionSize, i, j, page, &vec)
		}
		if also != nil {
			also(i, j)
		}
		i = j
	}
	return released
}

// releaseRange gives back the whole pages of the slots [i, j) of a region
// that holds stride bytes per slot from base, and returns how many bytes of
// them were resident.
func releaseRange(base unsafe.Pointer, stride uintptr, i, j uint32, page uintptr, scratch *[]byte) int64 {
	lo := (uintptr(i)*stride + page - 1) &^ (page - 1)
	hi := uintptr(j) * stride &^ (page - 1)
	if hi <= lo {
		return 0
	}
	addr, n := unsafe.Add(base, lo), hi-lo
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
