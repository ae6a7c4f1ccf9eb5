//go:build linux

package memclass

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"unsafe"
)

// These tests run on any Linux machine with node 0 online, single-node or
// not. The two-node checks live in vm_test.go.

func mustMap(t *testing.T, c Class, size uintptr) *Region {
	t.Helper()
	r, err := Map(c, size)
	if err != nil {
		t.Fatalf("Map(%s, %d): %v", c, size, err)
	}
	t.Cleanup(func() { _ = r.Unmap() })
	return r
}

func touch(r *Region, pages int) {
	for i := 0; i < pages; i++ {
		*(*byte)(unsafe.Add(r.Base(), uintptr(i)*r.PageSize())) = 1
	}
}

func TestPolicyReadbackNode0(t *testing.T) {
	for _, tc := range []struct {
		c    Class
		want Policy
	}{
		{Bind(0), Policy{Mode: ModeBind, Nodes: []int{0}}},
		{Prefer(0), Policy{Mode: ModePreferred, Nodes: []int{0}}},
		{Interleave(0), Policy{Mode: ModeInterleave, Nodes: []int{0}}},
		{Local(), Policy{Mode: ModeLocal}},
		{Host(), Policy{Mode: ModeDefault}},
	} {
		t.Run(tc.c.String(), func(t *testing.T) {
			r := mustMap(t, tc.c.Prefault(), 256*PageSize)
			got, err := r.Policy()
			if err != nil {
				t.Fatal(err)
			}
			if !tc.want.matches(got) {
				t.Fatalf("Policy = %s, want %s", got, tc.want)
			}
			res, err := r.Residency()
			if err != nil {
				t.Fatal(err)
			}
			if res.Pages != 256 || res.Resident != 256 {
				t.Fatalf("prefaulted region: %+v", res)
			}
			if tc.c.Kind() != KindHost && tc.c.Kind() != KindLocal && res.PerNode[0] != 256 {
				t.Fatalf("pages per node = %v, want all 256 on node 0", res.PerNode)
			}
		})
	}
}

func TestInterleaveAllResolvesOnlineNodes(t *testing.T) {
	online, err := OnlineNodes()
	if err != nil {
		t.Fatal(err)
	}
	r := mustMap(t, Interleave(), 16*PageSize)
	got, err := r.Policy()
	if err != nil {
		t.Fatal(err)
	}
	if got.Mode != ModeInterleave || !slices.Equal(got.Nodes, online) {
		t.Fatalf("Policy = %s, want interleave over %v", got, online)
	}
}

func TestPageNodeQuery(t *testing.T) {
	r := mustMap(t, Bind(0), 64*PageSize)
	res, err := r.Residency()
	if err != nil {
		t.Fatal(err)
	}
	if res.Pages != 64 || res.Resident != 0 || len(res.PerNode) != 0 {
		t.Fatalf("untouched region: %+v", res)
	}
	touch(r, 5)
	per, err := r.PagesPerNode()
	if err != nil {
		t.Fatal(err)
	}
	if !mapsEqual(per, map[int]int{0: 5}) {
		t.Fatalf("PagesPerNode = %v, want map[0:5]", per)
	}
}

// A region large enough to need several move_pages batches.
func TestPageNodeQueryBatches(t *testing.T) {
	n := movePagesBatch*2 + 3
	r := mustMap(t, Bind(0).Prefault(), uintptr(n)*PageSize)
	per, err := r.PagesPerNode()
	if err != nil {
		t.Fatal(err)
	}
	if per[0] != n {
		t.Fatalf("PagesPerNode = %v, want %d on node 0", per, n)
	}
}

func TestNoSuchNode(t *testing.T) {
	for _, c := range []Class{Bind(5), Prefer(5), Interleave(0, 5), Bind(5).Locked()} {
		if _, err := Map(c, PageSize); !errors.Is(err, ErrNoSuchNode) {
			t.Errorf("Map(%s): %v, want ErrNoSuchNode", c, err)
		} else if !strings.Contains(err.Error(), "5") {
			t.Errorf("error does not name the node: %v", err)
		}
	}
	if _, err := MapNode(PerNode(), 5, PageSize); !errors.Is(err, ErrNoSuchNode) {
		t.Errorf("MapNode(pernode, 5): %v, want ErrNoSuchNode", err)
	}
}

func TestMapNode(t *testing.T) {
	c := PerNode().Prefault()
	r, err := MapNode(c, 0, 32*PageSize)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Unmap()
	if r.Class() != c || r.Node() != 0 {
		t.Fatalf("Class = %s Node = %d", r.Class(), r.Node())
	}
	pol, err := r.Policy()
	if err != nil || pol.Mode != ModeBind || !slices.Equal(pol.Nodes, []int{0}) {
		t.Fatalf("Policy = %s, %v", pol, err)
	}
	per, err := r.PagesPerNode()
	if err != nil || per[0] != 32 {
		t.Fatalf("PagesPerNode = %v, %v", per, err)
	}
	if _, err := Map(PerNode(), PageSize); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Map(pernode): %v, want ErrUnsupported", err)
	}
	if _, err := MapNode(Bind(0), 0, PageSize); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("MapNode(bind): %v, want ErrUnsupported", err)
	}
}

func TestTHPBacksRegion(t *testing.T) {
	if err := thpAvailable(); err != nil {
		t.Skip("transparent huge pages unavailable:", err)
	}
	const size = 16 << 20
	r := mustMap(t, Host().WithTHP().Prefault(), size)
	if uintptr(r.Base())%hugePageSize() != 0 || r.Len() != size {
		t.Fatalf("THP region at %p len %d is not huge-page aligned", r.Base(), r.Len())
	}
	huge, err := r.HugePageBytes()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("AnonHugePages for a %d MiB THP region: %d MiB", size>>20, huge>>20)
	if huge < int64(hugePageSize()) {
		t.Fatalf("AnonHugePages = %d bytes: no huge page backs the region", huge)
	}
	if len(r.Fallbacks()) != 0 {
		t.Fatalf("fallbacks: %v", r.Fallbacks())
	}
	plain := mustMap(t, Host().Prefault(), 4*PageSize)
	if h, _ := plain.HugePageBytes(); h != 0 {
		t.Fatalf("a 4-page region reports %d huge bytes", h)
	}
}

func TestHugeTLB(t *testing.T) {
	free := meminfoValue("HugePages_Free")
	need := int64(1)
	if free >= need {
		r := mustMap(t, Host().WithHugeTLB().Prefault(), PageSize)
		if r.PageSize() != hugePageSize() || r.Len() != hugePageSize() {
			t.Fatalf("hugetlb region: page %d len %d", r.PageSize(), r.Len())
		}
		if h, err := r.HugePageBytes(); err != nil || h != int64(hugePageSize()) {
			t.Fatalf("HugePageBytes = %d, %v", h, err)
		}
		return
	}
	t.Logf("HugePages_Free = %d: checking the strict error and the best-effort fallback", free)
	_, err := Map(Host().WithHugeTLB(), hugePageSize())
	if !errors.Is(err, ErrNoHugePages) {
		t.Fatalf("strict hugetlb with no pages: %v, want ErrNoHugePages", err)
	}
	r := mustMap(t, Bind(0).WithHugeTLB().BestEffort().Prefault(), hugePageSize())
	fb := r.Fallbacks()
	if len(fb) != 1 || fb[0].Modifier != "hugetlb" || !errors.Is(fb[0].Err, ErrNoHugePages) {
		t.Fatalf("Fallbacks = %v, want one hugetlb fallback", fb)
	}
	if r.PageSize() != PageSize || uintptr(r.Base())%hugePageSize() != 0 {
		t.Fatalf("fallback region: page %d base %p", r.PageSize(), r.Base())
	}
	touch(r, int(r.Len()/PageSize))
}

// Every failure after mmap must leave no mapping behind.
func TestFailedMapUnmaps(t *testing.T) {
	defer func() { testHookStep = nil }()
	for _, step := range []string{"mmap", "mbind", "madvise", "memcheck", "populate", "mlock", "readback"} {
		var base unsafe.Pointer
		var size uintptr
		injected := fmt.Errorf("injected failure after %s", step)
		testHookStep = func(s string, b unsafe.Pointer, n uintptr) error {
			base, size = b, n
			if s == step {
				return injected
			}
			return nil
		}
		c := Bind(0).WithTHP().Prefault().Locked()
		r, err := Map(c, 4<<20)
		if !errors.Is(err, injected) || r != nil {
			t.Fatalf("step %s: Map = %v, %v", step, r, err)
		}
		if base == nil {
			t.Fatalf("step %s: hook never saw the region", step)
		}
		if mapped(t, uintptr(base), uintptr(base)+size+PageSize) {
			t.Fatalf("step %s: region %p+%d still mapped after the failure", step, base, size)
		}
	}
}

// mapped reports whether any mapping in /proc/self/maps overlaps [lo, hi).
func mapped(t *testing.T, lo, hi uintptr) bool {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if s, e, ok := smapsHeader(line); ok && s < hi && e > lo {
			return true
		}
	}
	return false
}

// Two regions of the same class side by side must stay two mappings, so that
// each one's huge page count is its own.
func TestRegionsDoNotMerge(t *testing.T) {
	if err := thpAvailable(); err != nil {
		t.Skip("transparent huge pages unavailable:", err)
	}
	const size = 4 << 20
	c := Host().WithTHP().Prefault()
	a, b := mustMap(t, c, size), mustMap(t, c, size)
	for _, r := range []*Region{a, b} {
		if h, err := r.HugePageBytes(); err != nil || h > size {
			t.Fatalf("region %p: %d huge bytes (more than its %d), %v", r.Base(), h, size, err)
		}
	}
}

func TestReadbackAfterUnmap(t *testing.T) {
	r, err := Map(Bind(0), PageSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Unmap(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Policy(); !errors.Is(err, ErrUnmapped) {
		t.Fatal(err)
	}
	if _, err := r.Residency(); !errors.Is(err, ErrUnmapped) {
		t.Fatal(err)
	}
	if _, err := r.HugePageBytes(); !errors.Is(err, ErrUnmapped) {
		t.Fatal(err)
	}
}

func mapsEqual(a, b map[int]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
