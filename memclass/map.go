package memclass

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Linux values used by the pipeline, spelled here so the package still
// builds (and refuses these modifiers) on other systems.
const (
	madvHugepage      = 14      // MADV_HUGEPAGE
	madvPopulateWrite = 23      // MADV_POPULATE_WRITE, Linux 5.14+
	mapHugetlb        = 0x40000 // MAP_HUGETLB
	baseMapFlags      = unix.MAP_PRIVATE | unix.MAP_ANONYMOUS
	protRW            = unix.PROT_READ | unix.PROT_WRITE
)

// Map maps size bytes (rounded up to whole pages, or whole huge pages for
// hugetlb) for class c and applies the class, in this order:
//
//  1. check every node the class names against the online list in sysfs
//     (ErrNoSuchNode), before any syscall;
//  2. mmap, anonymous and private, without MAP_POPULATE (MAP_HUGETLB for
//     WithHugeTLB; aligned to the huge page size for WithTHP);
//  3. mbind on the region (Bind, Prefer, Interleave, Local);
//  4. madvise(MADV_HUGEPAGE) for WithTHP;
//  5. for Locked, check the size against the physical memory available
//     (MemAvailable in /proc/meminfo): beyond it mlock would not fail but
//     wake the OOM killer (RLIMIT_MEMLOCK does not stop root), so Map fails
//     with a *MemlockError (ErrMemlock) before any page is touched;
//  6. madvise(MADV_POPULATE_WRITE), or a write to every page, for Prefault;
//  7. mlock for Locked;
//  8. get_mempolicy(MPOL_F_ADDR) to read the policy back: a policy that is
//     not the one asked for fails with ErrPolicy.
//
// Pages are never populated before the policy is in place, so they land where
// it says. Any failure unmaps whatever was mapped before Map returns.
//
// Host regions (no modifiers) skip steps 1, 3 and 8 and are mapped with
// MAP_NORESERVE, so reserving far more address space than the machine has
// costs nothing until pages are touched. Provider classes (Device,
// PinnedHost, Shared) go to the registered Provider, or fail with
// ErrUnsupported. PerNode fails with ErrUnsupported: map it with MapNode.
func Map(c Class, size uintptr) (*Region, error) {
	rounded, err := checkSize(c, size)
	if err != nil {
		return nil, err
	}
	switch {
	case c.kind.needsProvider():
		return mapProvided(c, rounded)
	case c.kind == KindPerNode:
		return nil, fmt.Errorf("%w: class %s has one region per node: use MapNode for each of OnlineNodes()",
			ErrUnsupported, c)
	}
	return mapClass(c, c, -1, rounded)
}

// MapNode maps node's share of a PerNode class: a region bound to node with
// mbind(MPOL_BIND), with c's modifiers, applied in Map's order. The region's
// Class is c and its Node is node. MapNode refuses any class but PerNode
// (ErrUnsupported) and nodes that are not online (ErrNoSuchNode).
func MapNode(c Class, node int, size uintptr) (*Region, error) {
	if !c.IsPerNode() {
		return nil, fmt.Errorf("%w: MapNode needs a PerNode class, got %s", ErrUnsupported, c)
	}
	rounded, err := checkSize(c, size)
	if err != nil {
		return nil, err
	}
	return mapClass(c, c.onNode(node), node, rounded)
}

func checkSize(c Class, size uintptr) (uintptr, error) {
	if size == 0 {
		return 0, fmt.Errorf("%w: zero-byte region for class %s", ErrMap, c)
	}
	rounded, ok := roundUp(size, PageSize)
	if !ok || rounded > 1<<56 {
		return 0, fmt.Errorf("%w: %d bytes for class %s overflows the address space", ErrMap, size, c)
	}
	return rounded, nil
}

// mapping carries the state of one Map call through the pipeline.
type mapping struct {
	r      *Region
	eff    Class // the class being applied
	strict bool
	thp    bool // MADV_HUGEPAGE still to apply
	noLock bool // Locked was given up (BestEffort) before mlock
}

// fail unmaps what was mapped and returns err.
func (m *mapping) fail(err error) (*Region, error) {
	if m.r.base != nil {
		_ = unix.MunmapPtr(m.r.base, m.r.size+m.r.guard)
		m.r.base = nil
	}
	return nil, err
}

// modifierFailed either returns err (strict) or records a fallback.
func (m *mapping) modifierFailed(modifier, instead string, err error) error {
	if m.strict {
		return err
	}
	m.r.fallbacks = append(m.r.fallbacks, Fallback{Modifier: modifier, Instead: instead, Err: err})
	return nil
}

func mapClass(asked, eff Class, node int, size uintptr) (*Region, error) {
	var want Policy
	var hasPolicy bool
	if eff.kind != KindHost || eff.flags&flagBadNode != 0 {
		online, err := OnlineNodes()
		if err != nil {
			return nil, fmt.Errorf("memclass: class %s: %w", asked, err)
		}
		want, hasPolicy, err = wantPolicy(eff, online)
		if err != nil {
			return nil, err
		}
	}
	m := &mapping{
		r:      &Region{class: asked, applied: eff, node: node, pageSize: PageSize},
		eff:    eff,
		strict: eff.IsStrict(),
		thp:    eff.THP(),
	}
	return m.run([]step{
		{"mmap", true, func() error { return m.mmap(size) }},
		{"mbind", hasPolicy, func() error { return m.mbind(want) }},
		{"madvise", true, func() error { return m.adviseTHP() }},
		{"memcheck", eff.IsLocked(), m.checkLockable},
		{"populate", eff.IsPrefault(), m.populate},
		{"mlock", eff.IsLocked(), m.lock},
		{"readback", hasPolicy, func() error { return m.readback(want) }},
	})
}

// step is one stage of applying a class; run false skips it.
type step struct {
	name string
	run  bool
	do   func() error
}

// run applies the steps in order; on the first failure it unmaps what was
// mapped and returns the error.
func (m *mapping) run(steps []step) (*Region, error) {
	for _, s := range steps {
		if !s.run {
			continue
		}
		err := s.do()
		if err == nil && testHookStep != nil {
			err = testHookStep(s.name, m.r.base, m.r.size)
		}
		if err != nil {
			return m.fail(err)
		}
	}
	return m.r, nil
}

// testHookStep, when set by a test, runs after each step of Map and can
// make it fail, to prove that every failure unmaps the region.
var testHookStep func(step string, base unsafe.Pointer, size uintptr) error

func (m *mapping) readback(want Policy) error {
	got, err := m.r.Policy()
	if err != nil {
		return fmt.Errorf("%w: class %s: reading the policy back: %w", ErrPolicy, m.r.class, err)
	}
	if !want.matches(got) {
		return fmt.Errorf("%w: class %s asked for %s, the kernel reports %s", ErrPolicy, m.r.class, want, got)
	}
	return nil
}

// mmap maps the region: hugetlb pages if asked (falling back under
// BestEffort), else base pages aligned for THP if asked.
func (m *mapping) mmap(size uintptr) error {
	flags := baseMapFlags
	if m.eff.HugeTLB() {
		hp := hugePageSize()
		hsize, ok := roundUp(size, hp)
		if !ok {
			return fmt.Errorf("%w: %d bytes in %d-byte huge pages overflows", ErrMap, size, hp)
		}
		// No MAP_NORESERVE: the kernel must reserve the pages now, so a
		// shortage fails here rather than as SIGBUS on first touch.
		base, err := unix.MmapPtr(-1, 0, nil, hsize, protRW, flags|mapHugetlb)
		if err == nil {
			m.r.base, m.r.size, m.r.pageSize = base, hsize, hp
			return nil
		}
		err = fmt.Errorf("%w: class %s: mmap(MAP_HUGETLB) of %d bytes: %v (HugePages_Free is %d; reserve pages with vm.nr_hugepages)",
			ErrNoHugePages, m.eff, hsize, err, meminfoValue("HugePages_Free"))
		if ferr := m.modifierFailed("hugetlb", "transparent huge pages", err); ferr != nil {
			return ferr
		}
		m.thp = true
	}
	if m.thp {
		return m.mmapAligned(size, hugePageSize())
	}
	base, err := unix.MmapPtr(-1, 0, nil, size+PageSize, protRW, flags|mapNoReserve)
	if err != nil {
		return fmt.Errorf("%w: %d bytes for class %s: %v", ErrMap, size, m.eff, err)
	}
	m.r.base, m.r.size, m.r.guard = base, size, PageSize
	return m.protectGuard()
}

// protectGuard makes the page after the region inaccessible. It keeps the
// kernel from merging two adjacent regions into one mapping (so smaps and
// numa_maps report each region alone), and turns a write past the end into
// a fault instead of silent corruption of a neighbour.
func (m *mapping) protectGuard() error {
	g := unsafe.Slice((*byte)(unsafe.Add(m.r.base, m.r.size)), m.r.guard)
	if err := unix.Mprotect(g, unix.PROT_NONE); err != nil {
		return fmt.Errorf("%w: class %s: guard page: %v", ErrMap, m.eff, err)
	}
	return nil
}

// mmapAligned maps size bytes starting on an align boundary, so that a THP
// region is made of whole huge pages: it reserves size+align and trims both
// ends.
func (m *mapping) mmapAligned(size, align uintptr) error {
	size, ok := roundUp(size, align)
	if !ok || size+align < size {
		return fmt.Errorf("%w: %d bytes aligned to %d overflows", ErrMap, size, align)
	}
	raw, err := unix.MmapPtr(-1, 0, nil, size+align+PageSize, protRW, baseMapFlags|mapNoReserve)
	if err != nil {
		return fmt.Errorf("%w: %d bytes for class %s: %v", ErrMap, size+align, m.eff, err)
	}
	start := uintptr(raw)
	aligned, _ := roundUp(start, align)
	if head := aligned - start; head > 0 {
		_ = unix.MunmapPtr(raw, head)
	}
	if tail := start + align - aligned; tail > 0 {
		_ = unix.MunmapPtr(unsafe.Add(raw, aligned-start+size+PageSize), tail)
	}
	m.r.base, m.r.size, m.r.guard = unsafe.Add(raw, aligned-start), size, PageSize
	return m.protectGuard()
}

func (m *mapping) mbind(want Policy) error {
	var mask *nodeMask
	if len(want.Nodes) > 0 {
		mask = new(nodeMask)
		for _, n := range want.Nodes {
			mask.set(n)
		}
	}
	if err := mbind(m.r.base, m.r.size, int(want.Mode), mask, 0); err != nil {
		if errors.Is(err, unix.ENOSYS) {
			return fmt.Errorf("%w: class %s: the kernel has no NUMA support (mbind: %v)", ErrUnsupported, m.eff, err)
		}
		return fmt.Errorf("%w: class %s: mbind(%s): %v", ErrPolicy, m.eff, want, err)
	}
	return nil
}

func (m *mapping) adviseTHP() error {
	if !m.thp {
		return nil
	}
	err := thpAvailable()
	if err == nil {
		err = unix.Madvise(unsafe.Slice((*byte)(m.r.base), m.r.size), madvHugepage)
		if err != nil {
			err = fmt.Errorf("%w: class %s: madvise(MADV_HUGEPAGE): %v", ErrUnsupported, m.eff, err)
		}
	}
	if err != nil {
		return m.modifierFailed("thp", "base pages", err)
	}
	return nil
}

func (m *mapping) populate() error {
	b := unsafe.Slice((*byte)(m.r.base), m.r.size)
	err := unix.Madvise(b, madvPopulateWrite)
	if errors.Is(err, unix.EINVAL) {
		// Kernel older than 5.14: write one byte of every page. The memory
		// is fresh and zero, so writing zero changes nothing but residency.
		for off := uintptr(0); off < m.r.size; off += m.r.pageSize {
			*(*byte)(unsafe.Add(m.r.base, off)) = 0
		}
		return nil
	}
	if err != nil {
		err = fmt.Errorf("%w: class %s: madvise(MADV_POPULATE_WRITE) of %d bytes: %v", ErrPopulate, m.eff, m.r.size, err)
		return m.modifierFailed("prefault", "pages committed on first touch", err)
	}
	return nil
}

// checkLockable refuses a Locked region larger than the physical memory
// available, before populate or mlock touch a page. Hugetlb pages are not
// checked: mmap(MAP_HUGETLB) has already reserved them from their own pool,
// which MemAvailable does not count. Under BestEffort the region stays
// pageable and the fallback is recorded.
func (m *mapping) checkLockable() error {
	if m.r.pageSize != PageSize {
		return nil
	}
	err := checkLockable(m.r.size)
	if err == nil {
		return nil
	}
	m.noLock = true
	return m.modifierFailed("locked", "pageable memory", fmt.Errorf("class %s: %w", m.eff, err))
}

func (m *mapping) lock() error {
	if m.noLock {
		return nil
	}
	err := unix.Mlock(unsafe.Slice((*byte)(m.r.base), m.r.size))
	if err == nil {
		return nil
	}
	merr := &MemlockError{Asked: m.r.size, Limit: memlockLimit(), Err: err}
	return m.modifierFailed("locked", "pageable memory", fmt.Errorf("class %s: %w", m.eff, merr))
}
