// Package memclass names where an arena's memory lives and maps regions that
// really honour that choice: every class is a syscall whose effect is read
// back, not a label.
//
// # Classes
//
// A Class is an immutable, comparable value: a placement kind plus
// modifiers. Its zero value is Host(). The names follow libnuma and DPDK:
//
//	Host()            no policy; the kernel's default (first touch)
//	Bind(n)           mbind(MPOL_BIND, {n})        numa_alloc_onnode; a DPDK socket id
//	Prefer(n)         mbind(MPOL_PREFERRED, {n})   n first, other nodes when n is full
//	Interleave(ns...) mbind(MPOL_INTERLEAVE, ns)   numa_alloc_interleaved(_subset); none = all online
//	Local()           mbind(MPOL_LOCAL)            numa_alloc_local
//	PerNode()         one region per online node, each MPOL_BIND to it (see below)
//	Device(n), PinnedHost(), Shared()   memory from a registered Provider
//
// Modifiers return a new Class:
//
//	.WithTHP()     madvise(MADV_HUGEPAGE) on a region aligned to the huge page size
//	.WithHugeTLB() mmap(MAP_HUGETLB) from the reserved pool (vm.nr_hugepages), as DPDK does
//	.Prefault()    madvise(MADV_POPULATE_WRITE) (a write per page before Linux 5.14)
//	.Locked()      mlock (counts against RLIMIT_MEMLOCK without CAP_IPC_LOCK; never more than MemAvailable)
//	.Strict()      a modifier the kernel cannot honour is an error (the default)
//	.BestEffort()  such a modifier is skipped and recorded in Region.Fallbacks
//
// String shows how a class was built, e.g. "interleave(0,1)+thp+prefault".
//
// # Mapping
//
// Map applies a class in an order that cannot leak pages onto the wrong node:
// nodes are checked against /sys/devices/system/node/online before any
// syscall (the kernel silently drops absent nodes from an interleave mask);
// then mmap without populating; mbind on the region (never set_mempolicy,
// which binds an OS thread, not a goroutine's memory); madvise; for Locked,
// a check of the size against the physical memory available (beyond
// MemAvailable an mlock does not fail, it wakes the OOM killer, and root is
// not held back by RLIMIT_MEMLOCK); populate; mlock; and finally get_mempolicy(MPOL_F_ADDR) reads the policy back and Map
// fails with ErrPolicy if it is not the one asked for. Every failure unmaps
// the region before Map returns. Each region is followed by one inaccessible
// guard page, so that adjacent regions never merge into one kernel mapping and
// a write past the end faults.
//
// # Reading it back
//
// A Region answers where its memory really is: Policy (get_mempolicy),
// Residency and PagesPerNode (move_pages with no target nodes, a pure query;
// /proc/self/numa_maps on kernels without it), HugePageBytes (AnonHugePages
// and hugetlb pages of its mapping in /proc/self/smaps), PageSize and
// Fallbacks.
//
// # Per-node arenas
//
// PerNode() is the class of an arena that keeps one part per NUMA node. Map
// refuses it, because one policy cannot cover every node. MapNodes maps one
// contiguous region made of one part per node, each bound to its node with
// MPOL_BIND and read back separately; each part but the last must be a
// multiple of Class.Granule (a page, or a huge page), so an arena sizes each
// node's share of slots to end on one. (MapNode maps one node's part as a
// region of its own.) The arena package builds per-node shards on top: a P
// allocates from a shard of the node CurrentCPU reports, and steals from its
// own node's shards before it crosses to another node. CurrentCPU reads
// RDTSCP's TSC_AUX (node<<12 | cpu, ~22 ns) or calls getcpu (~180 ns): call it
// on slow paths (a refill, a steal), never per allocation.
//
// # Providers
//
// Device, PinnedHost and Shared memory comes from a Provider registered with
// SetProvider. Without one, Map fails with ErrUnsupported: there is never a
// silent fallback to host memory.
//
// # Errors
//
// ErrNoSuchNode, ErrUnsupported, ErrNoHugePages, ErrMemlock (a *MemlockError
// naming the bytes asked and RLIMIT_MEMLOCK, or the available memory), ErrPolicy, ErrPopulate, ErrMap
// and ErrUnmapped are wrapped with the class and the kernel's errno; match
// them with errors.Is.
//
// # Topology
//
// ReadTopology parses a sysfs node tree (an injectable root, for tests on fake
// trees): online nodes, their cpulists ("0-3,8-11"), memory and distances.
// Cache line and cache sizes come from CPUID (github.com/klauspost/cpuid/v2).
//
// Memory mapped here is off the Go heap: the garbage collector never scans it,
// so it must never hold Go pointers. Host regions are mapped with
// MAP_NORESERVE, so reserving far more address space than the machine has
// costs nothing until pages are touched.
//
// The two-node behaviour is tested in a qemu guest with two emulated NUMA
// nodes: see scripts/numa-vm/run.sh and vm_test.go.
package memclass
