package arena

import (
	"fmt"
	"unsafe"

	"github.com/cella-go/cella/memclass"
	"github.com/cella-go/cella/shard"
)

// Per-node arenas (memclass.PerNode). The slots are split into one part per
// online NUMA node, laid out one after the other in a single region made by
// memclass.MapNodes, each part bound to its node. Each part has its own
// shards (by default one per CPU of the node). A goroutine allocates from a
// shard of the part on the node its thread is running on; its thread's node
// is looked up (memclass.CurrentCPU, ~20-50 ns) on the first allocation on a
// P, after every steal and every 1024 allocations, never per call. A Free
// returns the slot to a shard of the slot's own part, so memory stays on its
// node. Stealing takes from the same node's shards first and crosses nodes
// only when the whole node is empty, visiting the nearest nodes first.

// nodeLayout is how a per-node arena splits its slots.
type nodeLayout struct {
	nodes      []int    // node of each part
	partEnd    []uint32 // one past the last slot index of each part
	parts      []shard.Part
	sizes      []uintptr
	partOfNode map[int]int
	topo       *memclass.Topology
}

// refreshEvery is how many allocations a P makes between looks at which node
// its thread runs on (a power of two).
const refreshEvery = 1024

func planNodes(cfg Config, shards int, stride uintptr) (*nodeLayout, error) {
	topo, err := memclass.SystemTopology()
	if err != nil {
		return nil, fmt.Errorf("arena: class %s: reading the NUMA topology: %w", cfg.Class, err)
	}
	// Slots per node must end on a granule of the class (a page, or a huge
	// page) so that each node's part can be bound on its own.
	g := cfg.Class.Granule()
	per := g / gcd(g, stride) // slots per granule-aligned step
	n := len(topo.Nodes)
	share := (uint64(cfg.Slots) + uint64(n) - 1) / uint64(n)
	share = (share + uint64(per) - 1) / uint64(per) * uint64(per)

	l := &nodeLayout{partOfNode: map[int]int{}, topo: topo}
	left := uint64(cfg.Slots)
	for i, node := range topo.Nodes {
		if left == 0 {
			break
		}
		k := min(share, left)
		if i == n-1 {
			k = left
		}
		ns := len(node.CPUs)
		if cfg.Shards > 0 {
			ns = shards / n
			if i < shards%n {
				ns++
			}
		}
		l.partOfNode[node.ID] = len(l.parts)
		l.nodes = append(l.nodes, node.ID)
		l.parts = append(l.parts, shard.Part{Slots: uint32(k), Shards: max(ns, 1), Node: node.ID})
		l.sizes = append(l.sizes, max(uintptr(k)*stride, 1)) // a zero-size T still maps a page
		left -= k
		l.partEnd = append(l.partEnd, uint32(uint64(cfg.Slots)-left))
	}
	return l, nil
}

func gcd(a, b uintptr) uintptr {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// newSet builds the per-node shard set: thieves whose node is dry visit the
// other nodes nearest first (by the sysfs distance table).
func (l *nodeLayout) newSet(links unsafe.Pointer, stride uintptr) *shard.Set {
	s := shard.NewLayout(l.parts, links, stride)
	s.OrderParts(func(i, a, b int) bool {
		return l.topo.Distance(l.nodes[i], l.nodes[a]) < l.topo.Distance(l.nodes[i], l.nodes[b])
	})
	return s
}

// partOf returns the part slot idx belongs to (parts are few).
func (l *nodeLayout) partOf(idx uint32) int {
	for i, end := range l.partEnd {
		if idx < end {
			return i
		}
	}
	return len(l.partEnd) - 1
}

// nodeHome picks P p's home shard on the node its thread runs on now.
func (c *core) nodeHome(p int) int {
	_, node := memclass.CurrentCPU()
	part, ok := c.nodes.partOfNode[node]
	if !ok {
		part = p % c.set.Parts()
	}
	first, count, _ := c.set.PartShards(part)
	return first + p%count
}

// home returns the shard P p allocates from.
func (c *core) home(p int) int {
	if c.nodes == nil {
		return c.set.Of(p)
	}
	return c.nodeHomeCached(p)
}

// nodeHomeCached is home for a per-node arena: the P's cached choice,
// refreshed now and then.
func (c *core) nodeHomeCached(p int) int {
	pc := c.local(p)
	if pc == nil { // a P beyond the per-P table, or the purego build
		return c.set.Of(p)
	}
	if pc.home == 0 || pc.allocs%refreshEvery == 0 {
		pc.home = uint32(c.nodeHome(p)) + 1
	}
	return int(pc.home - 1)
}

// freeShard returns the shard a slot freed on P p goes back to: the freeing
// P's home, or for a per-node arena a shard of the slot's own node.
func (c *core) freeShard(p int, idx uint32) int {
	if c.nodes == nil {
		return c.set.Of(p)
	}
	first, count, _ := c.set.PartShards(c.nodes.partOf(idx))
	return first + p%count
}

// Nodes returns the NUMA node of each part of a per-node arena with the
// number of slots in it, in slot-index order; nil for other classes.
func (c *core) Nodes() []NodeSlots {
	if c.nodes == nil {
		return nil
	}
	out := make([]NodeSlots, len(c.nodes.nodes))
	var lo uint32
	for i, node := range c.nodes.nodes {
		first, count, _ := c.set.PartShards(i)
		out[i] = NodeSlots{Node: node, First: lo, End: c.nodes.partEnd[i], Shards: count, FirstShard: first}
		lo = c.nodes.partEnd[i]
	}
	return out
}

// NodeSlots describes one node's part of a per-node arena: slot indices
// [First, End) live on Node and are served by Shards shards.
type NodeSlots struct {
	Node               int
	First, End         uint32
	FirstShard, Shards int
}

// Residency reports where the arena's pages really are: resident pages per
// NUMA node, read from the kernel (move_pages, or /proc/self/numa_maps).
func (c *core) Residency() (memclass.Residency, error) {
	p, ok := c.gate.Enter()
	if !ok {
		return memclass.Residency{}, ErrClosed
	}
	c.gate.Exit(p) // the call below makes syscalls: not while pinned
	// Close could unmap between here and the query; move_pages and
	// numa_maps report unmapped pages as errors, never a fault. The query
	// reads the copy New made, which Unmap does not clear (reading *c.region
	// here would race with Close, and a pinned section is no
	// synchronisation the race detector sees).
	return c.regionRO.Residency()
}
