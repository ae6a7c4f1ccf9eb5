package memclass

import (
	"strconv"
	"strings"
)

// Kind says which placement a Class asks for. Modifiers (huge pages, locking,
// prefaulting, strictness) are orthogonal to the kind.
type Kind uint8

const (
	KindHost       Kind = iota // no policy: the kernel's default (first touch)
	KindBind                   // mbind MPOL_BIND to one node
	KindPrefer                 // mbind MPOL_PREFERRED for one node
	KindInterleave             // mbind MPOL_INTERLEAVE over a node set
	KindLocal                  // mbind MPOL_LOCAL: the node of the touching CPU
	KindPerNode                // one region per online node, each bound to it (see MapNode)
	KindDevice                 // device memory; needs a Provider
	KindPinnedHost             // page-locked host memory registered with a device; needs a Provider
	KindShared                 // memory shared between processes; needs a Provider
)

var kindNames = [...]string{
	KindHost:       "host",
	KindBind:       "bind",
	KindPrefer:     "prefer",
	KindInterleave: "interleave",
	KindLocal:      "local",
	KindPerNode:    "pernode",
	KindDevice:     "device",
	KindPinnedHost: "pinnedhost",
	KindShared:     "shared",
}

// String returns the lower-case name of the kind, for example "interleave".
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// needsProvider reports whether memory of this kind comes from a Provider.
func (k Kind) needsProvider() bool {
	return k == KindDevice || k == KindPinnedHost || k == KindShared
}

// flags are the modifiers of a class.
type flags uint8

const (
	flagTHP        flags = 1 << iota // madvise(MADV_HUGEPAGE)
	flagHugeTLB                      // mmap(MAP_HUGETLB)
	flagLocked                       // mlock
	flagPrefault                     // madvise(MADV_POPULATE_WRITE) or touch
	flagBestEffort                   // modifier failures are recorded, not returned
	flagBadNode                      // a constructor got a node that cannot exist
)

// Class is an immutable placement choice for an arena's memory: a Kind (where
// the pages live) plus modifiers (how they are backed and committed). Classes
// are values: every constructor and modifier returns a new Class, and two
// classes that ask for the same thing compare equal with ==. The zero value is
// Host().
type Class struct {
	kind  Kind
	flags flags
	node  int    // Bind, Prefer, Device: the node or device; with flagBadNode: the bad value
	nodes string // Interleave: node bit set, bit n of byte n/8; "" = every online node
}

// Host returns the class of plain anonymous private memory with no placement
// policy: pages land wherever the kernel's default policy puts them (usually
// the node of the CPU that first touches them). No NUMA syscall is made.
func Host() Class { return Class{kind: KindHost} }

// Bind returns the class of memory that must come from NUMA node n:
// mbind(MPOL_BIND) on the region, like libnuma's numa_alloc_onnode or a DPDK
// socket id. When the node runs out of memory the kernel reclaims or fails the
// fault rather than using another node.
func Bind(node int) Class { return singleNode(KindBind, node) }

// Prefer returns the class of memory that should come from NUMA node n but may
// spill to other nodes when n is full: mbind(MPOL_PREFERRED).
func Prefer(node int) Class { return singleNode(KindPrefer, node) }

// Interleave returns the class of memory whose pages are spread round-robin
// over the given nodes, page by page: mbind(MPOL_INTERLEAVE), like libnuma's
// numa_alloc_interleaved_subset. With no nodes, the pages are spread over every
// node online when the region is mapped (numa_alloc_interleaved). Nodes are
// checked against the online list before the syscall, because the kernel
// silently drops absent nodes from an interleave mask.
func Interleave(nodes ...int) Class {
	c := Class{kind: KindInterleave}
	var set []byte
	for _, n := range nodes {
		if n < 0 || n >= MaxNodes {
			return badNode(c, n)
		}
		for len(set) <= n/8 {
			set = append(set, 0)
		}
		set[n/8] |= 1 << (n % 8)
	}
	c.nodes = string(set)
	return c
}

// Local returns the class of memory placed on the node of the CPU that first
// touches each page, even if the process's own policy says otherwise:
// mbind(MPOL_LOCAL), like libnuma's numa_alloc_local.
func Local() Class { return Class{kind: KindLocal} }

// PerNode returns the class of an arena split by NUMA node: every online node
// gets its own region, bound to it with mbind(MPOL_BIND), and its own shards.
// Map refuses this class (one region cannot be on every node); callers map
// each node's part with MapNode and list the nodes with OnlineNodes.
func PerNode() Class { return Class{kind: KindPerNode} }

// Device returns the class of memory on device n (a GPU or NIC, say). It needs
// a Provider registered with SetProvider(KindDevice, p); without one, Map
// fails with ErrUnsupported.
func Device(n int) Class {
	if n < 0 {
		return badNode(Class{kind: KindDevice}, n)
	}
	return Class{kind: KindDevice, node: n}
}

// PinnedHost returns the class of page-locked host memory registered with a
// device for DMA (what CUDA calls pinned host memory). It needs a Provider
// registered with SetProvider(KindPinnedHost, p).
func PinnedHost() Class { return Class{kind: KindPinnedHost} }

// Shared returns the class of memory shared with other processes. It needs a
// Provider registered with SetProvider(KindShared, p).
func Shared() Class { return Class{kind: KindShared} }

// MaxNodes is the number of NUMA node ids a class can name (the kernel's
// MAX_NUMNODES on common distribution kernels).
const MaxNodes = 1024

func singleNode(k Kind, node int) Class {
	if node < 0 || node >= MaxNodes {
		return badNode(Class{kind: k}, node)
	}
	return Class{kind: k, node: node}
}

// badNode records a node that cannot exist; Map reports it as ErrNoSuchNode.
func badNode(c Class, n int) Class {
	c.flags |= flagBadNode
	c.nodes = ""
	c.node = n
	return c
}

// WithTHP asks for transparent huge pages: madvise(MADV_HUGEPAGE) on the
// region, which Map also aligns to the huge page size so that whole 2 MiB
// pages fit. The kernel may still use base pages when it cannot find free
// huge pages; Region.HugePageBytes tells what really happened.
func (c Class) WithTHP() Class { c.flags |= flagTHP; return c }

// WithHugeTLB asks for explicit huge pages from the kernel's reserved pool:
// mmap(MAP_HUGETLB), like DPDK's hugepage memory. The pool is set up by the
// administrator (vm.nr_hugepages); with no free reserved pages, Map fails with
// ErrNoHugePages, or under BestEffort falls back to transparent huge pages and
// records the fallback.
func (c Class) WithHugeTLB() Class { c.flags |= flagHugeTLB; return c }

// Locked asks for memory that is never swapped out: mlock on the region, which
// also faults every page in. It counts against RLIMIT_MEMLOCK unless the
// process has CAP_IPC_LOCK; beyond the limit Map fails with a *MemlockError.
// Map also refuses, with a *MemlockError and before any page is touched, a
// request larger than the physical memory available (MemAvailable in
// /proc/meminfo): the kernel would not fail that mlock but run the OOM
// killer, and root is not held back by RLIMIT_MEMLOCK.
func (c Class) Locked() Class { c.flags |= flagLocked; return c }

// Prefault asks for every page to be committed when the region is mapped
// rather than on first touch: madvise(MADV_POPULATE_WRITE), or a write to
// every page on kernels older than 5.14. Pages are faulted after mbind, so
// they land where the policy says.
func (c Class) Prefault() Class { c.flags |= flagPrefault; return c }

// Strict makes any modifier the kernel cannot honour an error (the default).
func (c Class) Strict() Class { c.flags &^= flagBestEffort; return c }

// BestEffort lets Map carry on when a modifier (huge pages, locking,
// prefaulting) cannot be honoured, recording each fallback in
// Region.Fallbacks. Placement is never best-effort: a node that does not exist
// or a policy the kernel refuses is always an error.
func (c Class) BestEffort() Class { c.flags |= flagBestEffort; return c }

// Kind returns the placement kind of c.
func (c Class) Kind() Kind { return c.kind }

// Node returns the node of a Bind or Prefer class, or the device number of a
// Device class, and -1 for every other class.
func (c Class) Node() int {
	switch c.kind {
	case KindBind, KindPrefer, KindDevice:
		return c.node
	}
	return -1
}

// Nodes returns the node set of c in ascending order: the node of a Bind or
// Prefer class, or the nodes of an Interleave class. It is nil for classes
// without nodes, and for Interleave() with no nodes (every online node).
func (c Class) Nodes() []int {
	if c.kind == KindDevice {
		return nil // a device number is not a node, even a bad one
	}
	if c.flags&flagBadNode != 0 {
		return []int{c.node}
	}
	switch c.kind {
	case KindBind, KindPrefer:
		return []int{c.node}
	case KindInterleave:
		var out []int
		for i := 0; i < len(c.nodes); i++ {
			for b := 0; b < 8; b++ {
				if c.nodes[i]&(1<<b) != 0 {
					out = append(out, i*8+b)
				}
			}
		}
		return out
	}
	return nil
}

// IsPerNode reports whether c is the per-node class, whose memory is mapped
// node by node with MapNode.
func (c Class) IsPerNode() bool { return c.kind == KindPerNode }

// THP reports whether c asks for transparent huge pages.
func (c Class) THP() bool { return c.flags&flagTHP != 0 }

// HugeTLB reports whether c asks for explicit hugetlb pages.
func (c Class) HugeTLB() bool { return c.flags&flagHugeTLB != 0 }

// IsLocked reports whether c asks for mlock'ed memory.
func (c Class) IsLocked() bool { return c.flags&flagLocked != 0 }

// IsPrefault reports whether c asks for pages to be committed at map time.
func (c Class) IsPrefault() bool { return c.flags&flagPrefault != 0 }

// IsStrict reports whether modifier failures are errors (true unless
// BestEffort was applied).
func (c Class) IsStrict() bool { return c.flags&flagBestEffort == 0 }

// String returns a short readable name that mirrors how the class is built,
// for example "host", "bind(1)", "interleave(0,1)+thp+locked" or
// "pernode+hugetlb+besteffort".
func (c Class) String() string {
	var b strings.Builder
	b.WriteString(c.kind.String())
	switch {
	case c.flags&flagBadNode != 0:
		b.WriteString("(" + strconv.Itoa(c.node) + "!)")
	case c.kind == KindBind || c.kind == KindPrefer || c.kind == KindDevice:
		b.WriteString("(" + strconv.Itoa(c.node) + ")")
	case c.kind == KindInterleave:
		ns := c.Nodes()
		if len(ns) == 0 {
			b.WriteString("(all)")
		} else {
			b.WriteString("(" + FormatCPUList(ns) + ")")
		}
	}
	for _, m := range [...]struct {
		f    flags
		name string
	}{{flagTHP, "thp"}, {flagHugeTLB, "hugetlb"}, {flagLocked, "locked"}, {flagPrefault, "prefault"}, {flagBestEffort, "besteffort"}} {
		if c.flags&m.f != 0 {
			b.WriteString("+" + m.name)
		}
	}
	return b.String()
}

// onNode returns the class that MapNode uses for one node of a per-node
// class: Bind(node) with c's modifiers.
func (c Class) onNode(node int) Class {
	b := Bind(node)
	b.flags |= c.flags &^ flagBadNode
	return b
}
