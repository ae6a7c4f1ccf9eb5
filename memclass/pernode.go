package memclass

import (
	"fmt"
	"slices"
	"unsafe"
)

// NodePart is one node's share of a region made by MapNodes: the bytes
// [Offset, Offset+Len) of the region are bound to Node.
type NodePart struct {
	Node        int
	Offset, Len uintptr
}

// Granule returns the size that each node's share of a MapNodes region must
// be a multiple of: the huge page size when the class asks for transparent
// or hugetlb huge pages, else the base page size. An arena rounds each node's
// slot count so that its bytes end on a granule.
func (c Class) Granule() uintptr {
	if c.THP() || c.HugeTLB() {
		return hugePageSize()
	}
	return PageSize
}

// MapNodes maps one contiguous region for a PerNode class, made of one part
// per entry of nodes: part i is sizes[i] bytes, follows part i-1, and is bound
// to nodes[i] with mbind(MPOL_BIND). Every size but the last must be a
// multiple of c.Granule(); the last is rounded up. One contiguous region lets
// an arena find any slot with one multiplication, wherever its node.
//
// The steps are Map's: nodes are checked against the online list first
// (ErrNoSuchNode), then mmap, one mbind per part, madvise, the check of a
// Locked size against available physical memory, populate, mlock,
// and a get_mempolicy(MPOL_F_ADDR) readback of every part (ErrPolicy).
// Any failure unmaps the region.
func MapNodes(c Class, nodes []int, sizes []uintptr) (*Region, error) {
	if !c.IsPerNode() {
		return nil, fmt.Errorf("%w: MapNodes needs a PerNode class, got %s", ErrUnsupported, c)
	}
	if len(nodes) == 0 || len(nodes) != len(sizes) {
		return nil, fmt.Errorf("%w: MapNodes needs one size per node (%d nodes, %d sizes)", ErrMap, len(nodes), len(sizes))
	}
	online, err := OnlineNodes()
	if err != nil {
		return nil, fmt.Errorf("memclass: class %s: %w", c, err)
	}
	granule := c.Granule()
	parts := make([]NodePart, len(nodes))
	var total uintptr
	for i, n := range nodes {
		if !slices.Contains(online, n) {
			return nil, fmt.Errorf("%w: class %s names node %d; online nodes are %s",
				ErrNoSuchNode, c, n, FormatCPUList(online))
		}
		size := sizes[i]
		if i < len(nodes)-1 && size%granule != 0 {
			return nil, fmt.Errorf("%w: part %d (node %d) is %d bytes, not a multiple of %d", ErrMap, i, n, size, granule)
		}
		if i == len(nodes)-1 {
			var ok bool
			if size, ok = roundUp(size, granule); !ok {
				return nil, fmt.Errorf("%w: %d bytes overflows the address space", ErrMap, sizes[i])
			}
		}
		parts[i] = NodePart{Node: n, Offset: total, Len: size}
		if total+size < total {
			return nil, fmt.Errorf("%w: parts overflow the address space", ErrMap)
		}
		total += size
	}
	if _, err := checkSize(c, total); err != nil {
		return nil, err
	}
	eff := c.onNode(nodes[0]) // the modifiers; each part gets its own node below
	m := &mapping{
		r:      &Region{class: c, applied: eff, node: -1, pageSize: PageSize, parts: parts},
		eff:    eff,
		strict: eff.IsStrict(),
		thp:    eff.THP(),
	}
	return m.run([]step{
		{"mmap", true, func() error { return m.mmap(total) }},
		{"mbind", true, m.mbindParts},
		{"madvise", true, m.adviseTHP},
		{"memcheck", eff.IsLocked(), m.checkLockable},
		{"populate", eff.IsPrefault(), m.populate},
		{"mlock", eff.IsLocked(), m.lock},
		{"readback", true, m.readbackParts},
	})
}

func (m *mapping) mbindParts() error {
	for _, p := range m.r.parts {
		var mask nodeMask
		mask.set(p.Node)
		if err := mbind(unsafe.Add(m.r.base, p.Offset), p.Len, int(ModeBind), &mask, 0); err != nil {
			return fmt.Errorf("%w: class %s: mbind(bind:%d) of part at +%d: %v", ErrPolicy, m.r.class, p.Node, p.Offset, err)
		}
	}
	return nil
}

func (m *mapping) readbackParts() error {
	for _, p := range m.r.parts {
		want := Policy{Mode: ModeBind, Nodes: []int{p.Node}}
		mode, mask, err := getMempolicy(unsafe.Add(m.r.base, p.Offset), mpolFAddr)
		if err != nil {
			return fmt.Errorf("%w: class %s: reading back part at +%d: %v", ErrPolicy, m.r.class, p.Offset, err)
		}
		got := Policy{Mode: Mode(mode &^ mpolModeFlags & mpolModeNumber), Nodes: mask.nodes()}
		if !want.matches(got) {
			return fmt.Errorf("%w: class %s part at +%d asked for %s, the kernel reports %s", ErrPolicy, m.r.class, p.Offset, want, got)
		}
	}
	return nil
}

// Parts returns the node parts of a region made by MapNodes (nil otherwise).
func (r *Region) Parts() []NodePart { return slices.Clone(r.parts) }
