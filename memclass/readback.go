package memclass

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Policy reads back the memory policy the kernel holds for the region, with
// get_mempolicy(MPOL_F_ADDR) on its first byte. A Host region reports
// ModeDefault.
func (r *Region) Policy() (Policy, error) {
	if r.base == nil {
		return Policy{}, ErrUnmapped
	}
	if r.provider != nil {
		return Policy{}, fmt.Errorf("%w: class %s: provider memory has no kernel policy", ErrUnsupported, r.class)
	}
	mode, mask, err := getMempolicy(r.base, mpolFAddr)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) {
			return Policy{}, fmt.Errorf("%w: get_mempolicy: %v", ErrUnsupported, err)
		}
		return Policy{}, fmt.Errorf("memclass: get_mempolicy(MPOL_F_ADDR): %w", err)
	}
	return Policy{Mode: Mode(mode &^ mpolModeFlags & mpolModeNumber), Nodes: mask.nodes()}, nil
}

// Residency says where a region's pages are.
type Residency struct {
	PageSize uintptr     // the unit of the counts below
	Pages    int         // pages in the region
	Resident int         // pages present in memory
	PerNode  map[int]int // resident pages per NUMA node
}

// movePagesBatch bounds the arrays of one move_pages call.
const movePagesBatch = 4096

// Residency asks the kernel which node holds each page of the region, with
// move_pages(2) given no target nodes (a query: nothing moves). Pages that
// were never touched are counted in Pages but not in Resident. The count is
// in base pages (hugetlb pages for a hugetlb region). On a kernel without
// move_pages it reads /proc/self/numa_maps instead, whose counts cover the
// whole mapping that holds the region.
func (r *Region) Residency() (Residency, error) {
	if r.base == nil {
		return Residency{}, ErrUnmapped
	}
	if r.provider != nil {
		return Residency{}, fmt.Errorf("%w: class %s: provider memory has no NUMA residency", ErrUnsupported, r.class)
	}
	res := Residency{PageSize: r.pageSize, Pages: int(r.size / r.pageSize), PerNode: map[int]int{}}
	pages := make([]uintptr, 0, movePagesBatch)
	status := make([]int32, movePagesBatch)
	flush := func() error {
		if err := movePagesQuery(pages, status[:len(pages)]); err != nil {
			return err
		}
		for _, s := range status[:len(pages)] {
			if s >= 0 {
				res.Resident++
				res.PerNode[int(s)]++
			}
		}
		pages = pages[:0]
		return nil
	}
	for off := uintptr(0); off < r.size; off += r.pageSize {
		pages = append(pages, uintptr(r.base)+off)
		if len(pages) == movePagesBatch {
			if err := flush(); err != nil {
				return r.residencyFallback(res, err)
			}
		}
	}
	if err := flush(); err != nil {
		return r.residencyFallback(res, err)
	}
	return res, nil
}

func (r *Region) residencyFallback(res Residency, err error) (Residency, error) {
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM) {
		return res, fmt.Errorf("memclass: move_pages query: %w", err)
	}
	b, rerr := os.ReadFile("/proc/self/numa_maps")
	if rerr != nil {
		return res, fmt.Errorf("memclass: move_pages: %v; numa_maps: %w", err, rerr)
	}
	perNode, pageSize, ok := parseNumaMaps(b, uintptr(r.base))
	if !ok {
		return res, fmt.Errorf("%w: move_pages: %v, and numa_maps has no line for %#x", ErrUnsupported, err, uintptr(r.base))
	}
	res.PageSize, res.Pages, res.Resident, res.PerNode = pageSize, int(r.size/pageSize), 0, perNode
	for _, n := range perNode {
		res.Resident += n
	}
	return res, nil
}

// PagesPerNode returns how many of the region's resident pages each NUMA node
// holds (see Residency).
func (r *Region) PagesPerNode() (map[int]int, error) {
	res, err := r.Residency()
	return res.PerNode, err
}

// parseNumaMaps finds the numa_maps line of the mapping starting at addr and
// returns its per-node page counts ("N1=512") and page size
// ("kernelpagesize_kB=4").
func parseNumaMaps(b []byte, addr uintptr) (perNode map[int]int, pageSize uintptr, ok bool) {
	want := strconv.FormatUint(uint64(addr), 16)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] != want {
			continue
		}
		perNode, pageSize = map[int]int{}, PageSize
		for _, kv := range f[1:] {
			k, v, found := strings.Cut(kv, "=")
			if !found {
				continue
			}
			n, err := strconv.Atoi(v)
			if err != nil {
				continue
			}
			switch {
			case k == "kernelpagesize_kB":
				pageSize = uintptr(n) * 1024
			case len(k) > 1 && k[0] == 'N':
				if id, err := strconv.Atoi(k[1:]); err == nil {
					perNode[id] = n
				}
			}
		}
		return perNode, pageSize, true
	}
	return nil, 0, false
}

// HugePageBytes returns how many bytes of the region are backed by huge
// pages right now: the AnonHugePages (transparent) plus Private_Hugetlb and
// Shared_Hugetlb (explicit) of the mappings in /proc/self/smaps that overlap
// the region. The kernel may merge the region with an adjacent mapping of
// identical flags, in which case the neighbour's huge pages are counted too.
func (r *Region) HugePageBytes() (int64, error) {
	if r.base == nil {
		return 0, ErrUnmapped
	}
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return 0, fmt.Errorf("memclass: read smaps: %w", err)
	}
	return smapsHugeBytes(b, uintptr(r.base), uintptr(unsafe.Add(r.base, r.size))), nil
}

// smapsHugeBytes sums the huge page fields of the smaps entries that overlap
// [lo, hi).
func smapsHugeBytes(b []byte, lo, hi uintptr) int64 {
	var total int64
	in := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if start, end, isHeader := smapsHeader(line); isHeader {
			in = start < hi && end > lo
			continue
		}
		if !in {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "AnonHugePages" && k != "Private_Hugetlb" && k != "Shared_Hugetlb") {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
			total += kb * 1024
		}
	}
	return total
}

// smapsHeader parses "7f00...-7f00... rw-p ..." lines.
func smapsHeader(line string) (start, end uintptr, ok bool) {
	rng, _, found := strings.Cut(line, " ")
	if !found {
		return 0, 0, false
	}
	a, z, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	s, err1 := strconv.ParseUint(a, 16, 64)
	e, err2 := strconv.ParseUint(z, 16, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return uintptr(s), uintptr(e), true
}
