package memclass

import (
	"errors"
	"slices"
	"testing"
	"unsafe"
)

func TestMapNodesSingleNode(t *testing.T) {
	g := PerNode().Granule()
	r, err := MapNodes(PerNode(), []int{0, 0}, []uintptr{4 * g, 3*g + 5})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Unmap()
	parts := r.Parts()
	if len(parts) != 2 || parts[0].Offset != 0 || parts[1].Offset != 4*g || parts[1].Len != 4*g || r.Len() != 8*g {
		t.Fatalf("parts %+v, len %d", parts, r.Len())
	}
	for _, p := range parts {
		mode, mask, err := getMempolicy(unsafe.Add(r.Base(), p.Offset), mpolFAddr)
		if err != nil {
			t.Fatal(err)
		}
		if Mode(mode&^mpolModeFlags&mpolModeNumber) != ModeBind || !slices.Equal(mask.nodes(), []int{0}) {
			t.Fatalf("part %+v policy mode %d nodes %v", p, mode, mask.nodes())
		}
	}
	*(*byte)(unsafe.Add(r.Base(), r.Len()-1)) = 1
	res, err := r.Residency()
	if err != nil {
		t.Fatal(err)
	}
	if res.PerNode[0] < 1 {
		t.Fatalf("residency %+v", res)
	}
}

func TestMapNodesErrors(t *testing.T) {
	g := PerNode().Granule()
	if _, err := MapNodes(Host(), []int{0}, []uintptr{g}); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("non-PerNode class: %v", err)
	}
	if _, err := MapNodes(PerNode(), []int{0, 5}, []uintptr{g, g}); !errors.Is(err, ErrNoSuchNode) {
		t.Fatalf("node 5: %v", err)
	}
	if _, err := MapNodes(PerNode(), []int{0, 0}, []uintptr{g + 1, g}); !errors.Is(err, ErrMap) {
		t.Fatalf("unaligned part: %v", err)
	}
	if _, err := MapNodes(PerNode(), []int{0}, nil); !errors.Is(err, ErrMap) {
		t.Fatalf("size count: %v", err)
	}
	if g2 := PerNode().WithTHP().Granule(); g2 < g {
		t.Fatalf("THP granule %d < page %d", g2, g)
	}
}
