package memclass_test

import (
	"bufio"
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cella-go/cella/memclass"
)

// ---- helpers ----

// mapsLines returns the lines of /proc/self/maps.
func mapsLines(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// mapping returns the /proc/self/maps line of the mapping that starts at addr.
func mappingAt(t *testing.T, addr uintptr) (line string, ok bool) {
	t.Helper()
	want := strconv.FormatUint(uint64(addr), 16) + "-"
	for _, l := range mapsLines(t) {
		if strings.HasPrefix(l, want) {
			return l, true
		}
	}
	return "", false
}

// mappingsIn returns the lines of /proc/self/maps that overlap [lo, hi).
func mappingsIn(t *testing.T, lo, hi uintptr) []string {
	t.Helper()
	var in []string
	for _, l := range mapsLines(t) {
		rng, _, _ := strings.Cut(l, " ")
		a, z, _ := strings.Cut(rng, "-")
		s, err1 := strconv.ParseUint(a, 16, 64)
		e, err2 := strconv.ParseUint(z, 16, 64)
		if err1 == nil && err2 == nil && uintptr(s) < hi && uintptr(e) > lo {
			in = append(in, l)
		}
	}
	return in
}

func meminfo(t *testing.T, key string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && k == key {
			f := strings.Fields(v)
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return -1
}

func online(t *testing.T) []int {
	t.Helper()
	n, err := memclass.OnlineNodes()
	if err != nil || len(n) == 0 {
		t.Fatalf("OnlineNodes: %v, %v", n, err)
	}
	return n
}

// absentNode returns a node id < MaxNodes that is not online.
func absentNode(t *testing.T) int {
	on := online(t)
	for n := 7; n < memclass.MaxNodes; n++ {
		if !slices.Contains(on, n) {
			return n
		}
	}
	t.Skip("every node id is online")
	return -1
}

// ---- classes as values ----

// TestAttackClassValues: the zero value is Host(), classes built the same way
// are ==, String is readable and distinct for classes that ask for different
// things, and modifiers return new values without changing the receiver.
func TestAttackClassValues(t *testing.T) {
	var zero memclass.Class
	if zero != memclass.Host() || zero.String() != "host" || zero.Kind() != memclass.KindHost {
		t.Fatalf("zero Class = %q, want host", zero)
	}
	if zero.Node() != -1 || zero.Nodes() != nil || !zero.IsStrict() || zero.IsLocked() || zero.IsPrefault() || zero.THP() || zero.HugeTLB() || zero.IsPerNode() {
		t.Fatal("zero Class must ask for nothing")
	}
	if memclass.Host().Strict() != memclass.Host() || memclass.Bind(0).BestEffort().Strict() != memclass.Bind(0) {
		t.Fatal("Strict must undo BestEffort")
	}
	if memclass.Interleave(1, 0, 1) != memclass.Interleave(0, 1) {
		t.Fatal("Interleave(1,0,1) and Interleave(0,1) ask for the same thing")
	}
	if memclass.Bind(3).WithTHP().Prefault() != memclass.Bind(3).Prefault().WithTHP() {
		t.Fatal("modifier order must not matter")
	}
	base := memclass.Bind(2)
	_ = base.Locked().WithTHP().BestEffort()
	if base != memclass.Bind(2) || base.IsLocked() {
		t.Fatal("modifiers changed the receiver")
	}

	classes := []memclass.Class{
		memclass.Host(), memclass.Bind(0), memclass.Bind(1), memclass.Bind(10), memclass.Prefer(0), memclass.Prefer(1),
		memclass.Interleave(), memclass.Interleave(0), memclass.Interleave(1), memclass.Interleave(0, 1), memclass.Interleave(0, 2),
		memclass.Interleave(0, 1, 2, 3), memclass.Interleave(8), memclass.Interleave(1023),
		memclass.Local(), memclass.PerNode(), memclass.Device(0), memclass.Device(1), memclass.PinnedHost(), memclass.Shared(),
		memclass.Host().WithTHP(), memclass.Host().WithHugeTLB(), memclass.Host().Locked(), memclass.Host().Prefault(),
		memclass.Host().BestEffort(), memclass.Bind(0).WithTHP().Locked(), memclass.Bind(0).Locked().WithTHP().Prefault(),
		memclass.PerNode().WithHugeTLB().BestEffort(), memclass.Interleave(0, 1).WithTHP().Prefault(),
		memclass.Bind(-1), memclass.Bind(memclass.MaxNodes), memclass.Prefer(-1), memclass.Interleave(-1), memclass.Device(-1),
	}
	seen := map[string]memclass.Class{}
	for _, c := range classes {
		s := c.String()
		if s == "" || strings.ContainsAny(s, " \n\t") {
			t.Errorf("String of %#v = %q: not short and readable", c, s)
		}
		if prev, dup := seen[s]; dup && prev != c {
			t.Errorf("two different classes print as %q", s)
		}
		seen[s] = c
	}
	for _, c := range classes {
		for _, d := range classes {
			if (c == d) != (c.String() == d.String()) {
				t.Errorf("%q == %q is %v but their strings say otherwise", c, d, c == d)
			}
		}
	}
	want := map[memclass.Class]string{
		memclass.Interleave(0, 1).WithTHP().Prefault(): "interleave(0,1)+thp+prefault",
		memclass.Interleave(0, 1).WithTHP().Locked():   "interleave(0,1)+thp+locked",
		memclass.PerNode().WithHugeTLB().BestEffort():  "pernode+hugetlb+besteffort",
		memclass.Bind(1):      "bind(1)",
		memclass.Host():       "host",
		memclass.Interleave(): "interleave(all)",
		memclass.Interleave(0, 1, 2, 3, 8).BestEffort():    "interleave(0-3,8)+besteffort",
		memclass.Prefer(3).Locked().Prefault().WithTHP():   "prefer(3)+thp+locked+prefault",
		memclass.Device(2).Locked():                        "device(2)+locked",
		memclass.Local().WithHugeTLB().Strict().Prefault(): "local+hugetlb+prefault",
	}
	for c, s := range want {
		if c.String() != s {
			t.Errorf("String = %q, want %q", c.String(), s)
		}
	}
	if got := memclass.Interleave(3, 1, 2).Nodes(); !slices.Equal(got, []int{1, 2, 3}) {
		t.Errorf("Interleave(3,1,2).Nodes() = %v", got)
	}
	if memclass.Interleave().Nodes() != nil || memclass.Local().Nodes() != nil || memclass.Host().Nodes() != nil {
		t.Error("Nodes must be nil for classes without nodes and for Interleave()")
	}
	if memclass.Bind(5).Node() != 5 || memclass.Prefer(6).Node() != 6 || memclass.Device(7).Node() != 7 || memclass.Interleave(1).Node() != -1 {
		t.Error("Node() wrong")
	}
}

// TestAttackDeviceNumberKept: Device(n) names device n; Node returns "the
// device number of a Device class", and two classes compare equal only when
// they ask for the same thing. A device number that does not fit in 32 bits
// is silently truncated: Device(1<<32) is Device(0), and Device(1<<31) a
// negative device that is not flagged as bad.
func TestAttackDeviceNumberKept(t *testing.T) {
	if strconv.IntSize < 64 {
		t.Skip("32-bit int")
	}
	big := 1 << 32
	if memclass.Device(big) == memclass.Device(0) {
		t.Errorf("Device(1<<32) == Device(0) (String %q): a different device number was truncated to 0", memclass.Device(big))
	}
	if n := memclass.Device(big).Node(); n != big {
		t.Errorf("Device(1<<32).Node() = %d, want %d", n, big)
	}
	if n := memclass.Device(1 << 31).Node(); n < 0 {
		t.Errorf("Device(1<<31).Node() = %d: a positive device number became negative (String %q)", n, memclass.Device(1<<31))
	}
}

// TestAttackDeviceBadNodeNodes: Nodes is "nil for classes without nodes";
// a Device class has none (its number is a device, reported by Node), yet
// Device(-1).Nodes() reports a node.
func TestAttackDeviceBadNodeNodes(t *testing.T) {
	if got := memclass.Device(3).Nodes(); got != nil {
		t.Fatalf("Device(3).Nodes() = %v, want nil", got)
	}
	if got := memclass.Device(-1).Nodes(); got != nil {
		t.Errorf("Device(-1).Nodes() = %v, want nil like every Device class (a device is not a NUMA node)", got)
	}
}

// ---- mapping every class ----

type mapCase struct {
	c        memclass.Class
	mode     memclass.Mode
	resident bool // all pages resident right after Map
}

// TestAttackMapEveryClass maps each class this machine can honour, reads its
// policy, residency and huge pages back, checks the guard page, touches
// every page, and unmaps twice.
func TestAttackMapEveryClass(t *testing.T) {
	on := online(t)
	n0 := on[0]
	hugeFree := meminfo(t, "HugePages_Free")
	cases := []mapCase{
		{memclass.Host(), memclass.ModeDefault, false},
		{memclass.Bind(n0), memclass.ModeBind, false},
		{memclass.Prefer(n0), memclass.ModePreferred, false},
		{memclass.Interleave(), memclass.ModeInterleave, false},
		{memclass.Interleave(n0), memclass.ModeInterleave, false},
		{memclass.Local(), memclass.ModeLocal, false},
		{memclass.Host().Prefault(), memclass.ModeDefault, true},
		{memclass.Bind(n0).Prefault(), memclass.ModeBind, true},
		{memclass.Bind(n0).WithTHP(), memclass.ModeBind, false},
		{memclass.Interleave(n0).WithTHP().Prefault(), memclass.ModeInterleave, true},
		{memclass.Local().Locked(), memclass.ModeLocal, true},
		{memclass.Prefer(n0).Locked().Prefault(), memclass.ModePreferred, true},
		{memclass.Host().WithTHP().BestEffort(), memclass.ModeDefault, false},
		{memclass.Bind(n0).WithHugeTLB().BestEffort(), memclass.ModeBind, false},
	}
	for _, tc := range cases {
		t.Run(tc.c.String(), func(t *testing.T) {
			const asked = 256<<10 + 1
			r, err := memclass.Map(tc.c, asked)
			if err != nil {
				if errors.Is(err, memclass.ErrUnsupported) && tc.c.THP() {
					t.Skipf("THP unsupported here: %v", err)
				}
				t.Fatalf("Map(%s): %v", tc.c, err)
			}
			defer r.Unmap()
			ps := memclass.PageSize
			if r.Len() < asked || r.Len()%r.PageSize() != 0 || r.PageSize() < ps {
				t.Fatalf("Len %d PageSize %d for %d bytes", r.Len(), r.PageSize(), asked)
			}
			if r.Class() != tc.c || r.Node() != -1 || r.Parts() != nil {
				t.Fatalf("Class %s Node %d Parts %v", r.Class(), r.Node(), r.Parts())
			}
			if uintptr(r.Base())%r.PageSize() != 0 {
				t.Fatalf("base %p not page aligned", r.Base())
			}
			if tc.c.THP() && uintptr(r.Base())%(2<<20) != 0 && meminfo(t, "Hugepagesize") == 2048 {
				t.Errorf("THP region at %p is not aligned to the huge page size", r.Base())
			}
			fb := r.Fallbacks()
			if tc.c.HugeTLB() {
				if hugeFree <= 0 {
					if len(fb) != 1 || fb[0].Modifier != "hugetlb" || !errors.Is(fb[0].Err, memclass.ErrNoHugePages) {
						t.Fatalf("best-effort hugetlb without huge pages: Fallbacks = %v", fb)
					}
					if r.PageSize() != ps {
						t.Fatalf("fallback region PageSize = %d, want %d", r.PageSize(), ps)
					}
				}
			} else if len(fb) != 0 {
				t.Fatalf("Fallbacks = %v for a class this machine honours", fb)
			}

			pol, err := r.Policy()
			if err != nil {
				t.Fatalf("Policy: %v", err)
			}
			if pol.Mode != tc.mode && !(tc.mode == memclass.ModeLocal && pol.Mode == memclass.ModePreferred && len(pol.Nodes) == 0) {
				t.Fatalf("Policy = %s, want mode %s", pol, tc.mode)
			}
			switch tc.c.Kind() {
			case memclass.KindBind, memclass.KindPrefer:
				if !slices.Equal(pol.Nodes, []int{n0}) {
					t.Fatalf("Policy nodes = %v", pol.Nodes)
				}
			case memclass.KindInterleave:
				want := tc.c.Nodes()
				if want == nil {
					want = on
				}
				if !slices.Equal(pol.Nodes, want) {
					t.Fatalf("Interleave policy nodes = %v, want %v", pol.Nodes, want)
				}
			}

			res, err := r.Residency()
			if err != nil {
				t.Fatalf("Residency: %v", err)
			}
			if res.PageSize != r.PageSize() || res.Pages != int(r.Len()/r.PageSize()) {
				t.Fatalf("Residency %+v for Len %d", res, r.Len())
			}
			if tc.resident && res.Resident != res.Pages {
				t.Fatalf("%s: %d of %d pages resident after Map", tc.c, res.Resident, res.Pages)
			}
			if !tc.resident && res.Resident != 0 {
				t.Fatalf("%s: %d pages resident before any touch (Map must not populate)", tc.c, res.Resident)
			}
			// The guard page: one inaccessible page right after the region.
			if line, ok := mappingAt(t, uintptr(r.Base())+r.Len()); !ok || !strings.Contains(line, " ---p ") {
				t.Errorf("no inaccessible guard page after the region: %q", line)
			}
			// Touch every page and read residency again.
			for off := uintptr(0); off < r.Len(); off += ps {
				*(*byte)(unsafe.Add(r.Base(), off)) = byte(off)
			}
			res, err = r.Residency()
			if err != nil {
				t.Fatal(err)
			}
			sum := 0
			for node, k := range res.PerNode {
				if !slices.Contains(on, node) {
					t.Fatalf("pages on node %d, which is not online", node)
				}
				sum += k
			}
			if res.Resident != res.Pages || sum != res.Resident {
				t.Fatalf("after touching every page: %+v", res)
			}
			ppn, err := r.PagesPerNode()
			if err != nil || len(ppn) != len(res.PerNode) {
				t.Fatalf("PagesPerNode = %v, %v; Residency.PerNode = %v", ppn, err, res.PerNode)
			}
			hb, err := r.HugePageBytes()
			if err != nil || hb < 0 || hb > int64(r.Len()) {
				t.Fatalf("HugePageBytes = %d, %v for a %d-byte region", hb, err, r.Len())
			}
			if !tc.c.THP() && !tc.c.HugeTLB() && hb != 0 && strings.Contains(readFile(t, "/sys/kernel/mm/transparent_hugepage/enabled"), "[madvise]") {
				t.Errorf("HugePageBytes = %d for a region that never asked for huge pages (THP mode madvise)", hb)
			}

			lo, hi := uintptr(r.Base()), uintptr(r.Base())+r.Len()
			ours := mappingsIn(t, lo, hi+ps)
			if err := r.Unmap(); err != nil {
				t.Fatal(err)
			}
			// The range may be mapped again at once by someone else (the
			// runtime, the race detector): what must be gone is our own
			// mappings, line for line.
			for _, l := range mappingsIn(t, lo, hi+ps) {
				if slices.Contains(ours, l) {
					t.Fatalf("region (or its guard page) still mapped after Unmap: %q", l)
				}
			}
			if err := r.Unmap(); err != nil {
				t.Fatalf("second Unmap: %v", err)
			}
			if _, err := r.Policy(); !errors.Is(err, memclass.ErrUnmapped) {
				t.Fatalf("Policy after Unmap: %v", err)
			}
			if _, err := r.Residency(); !errors.Is(err, memclass.ErrUnmapped) {
				t.Fatalf("Residency after Unmap: %v", err)
			}
			if _, err := r.PagesPerNode(); !errors.Is(err, memclass.ErrUnmapped) {
				t.Fatalf("PagesPerNode after Unmap: %v", err)
			}
			if _, err := r.HugePageBytes(); !errors.Is(err, memclass.ErrUnmapped) {
				t.Fatalf("HugePageBytes after Unmap: %v", err)
			}
		})
	}
}

func readFile(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return string(b)
}

// TestAttackNoSuchNode: a node that is not online, or cannot exist, is
// ErrNoSuchNode before any syscall (nothing is left mapped), whatever the
// modifiers; placement is never best-effort.
func TestAttackNoSuchNode(t *testing.T) {
	bad := absentNode(t)
	classes := []memclass.Class{
		memclass.Bind(bad), memclass.Prefer(bad), memclass.Interleave(0, bad), memclass.Interleave(bad),
		memclass.Bind(-1), memclass.Bind(memclass.MaxNodes), memclass.Prefer(1 << 40), memclass.Interleave(-3),
		memclass.Bind(bad).WithTHP().BestEffort(), memclass.Bind(bad).Locked().Prefault(),
		memclass.Interleave(0, bad).BestEffort(), memclass.Bind(bad).WithHugeTLB().BestEffort(),
	}
	for _, c := range classes {
		before := len(mapsLines(t))
		r, err := memclass.Map(c, 1<<20)
		after := len(mapsLines(t))
		if r != nil || !errors.Is(err, memclass.ErrNoSuchNode) {
			if r != nil {
				r.Unmap()
			}
			t.Errorf("Map(%s) = %v, %v; want ErrNoSuchNode", c, r, err)
			continue
		}
		if after != before {
			t.Errorf("Map(%s) failed but /proc/self/maps went from %d to %d lines", c, before, after)
		}
	}
	if r, err := memclass.MapNode(memclass.PerNode(), bad, 1<<20); r != nil || !errors.Is(err, memclass.ErrNoSuchNode) {
		t.Errorf("MapNode(pernode, %d) = %v, %v", bad, r, err)
	}
	if r, err := memclass.MapNode(memclass.PerNode(), -1, 1<<20); r != nil || !errors.Is(err, memclass.ErrNoSuchNode) {
		t.Errorf("MapNode(pernode, -1) = %v, %v", r, err)
	}
	if r, err := memclass.MapNodes(memclass.PerNode(), []int{0, bad}, []uintptr{memclass.PageSize, memclass.PageSize}); r != nil || !errors.Is(err, memclass.ErrNoSuchNode) {
		t.Errorf("MapNodes(pernode, [0 %d]) = %v, %v", bad, r, err)
	}
}

// TestAttackProvidersUnsupported: without a provider, Device, PinnedHost and
// Shared fail with ErrUnsupported and never fall back to host memory; PerNode
// is refused by Map.
func TestAttackProvidersUnsupported(t *testing.T) {
	for _, k := range []memclass.Kind{memclass.KindDevice, memclass.KindPinnedHost, memclass.KindShared} {
		old, err := memclass.SetProvider(k, nil)
		if err != nil {
			t.Fatal(err)
		}
		if old != nil {
			defer memclass.SetProvider(k, old)
		}
	}
	for _, c := range []memclass.Class{memclass.Device(0), memclass.Device(5).BestEffort(), memclass.PinnedHost().Locked().BestEffort(), memclass.Shared().Prefault(), memclass.PerNode(), memclass.PerNode().BestEffort()} {
		r, err := memclass.Map(c, 1<<16)
		if r != nil || !errors.Is(err, memclass.ErrUnsupported) {
			t.Errorf("Map(%s) = %v, %v; want ErrUnsupported", c, r, err)
		}
	}
	for _, k := range []memclass.Kind{memclass.KindHost, memclass.KindBind, memclass.KindPerNode, memclass.Kind(200)} {
		if _, err := memclass.SetProvider(k, &anonProvider{}); !errors.Is(err, memclass.ErrUnsupported) {
			t.Errorf("SetProvider(%s): %v, want ErrUnsupported", k, err)
		}
	}
	if r, err := memclass.MapNode(memclass.Bind(0), 0, 4096); r != nil || !errors.Is(err, memclass.ErrUnsupported) {
		t.Errorf("MapNode(bind(0)) = %v, %v", r, err)
	}
	if r, err := memclass.MapNodes(memclass.Host(), []int{0}, []uintptr{4096}); r != nil || !errors.Is(err, memclass.ErrUnsupported) {
		t.Errorf("MapNodes(host) = %v, %v", r, err)
	}
}

type anonProvider struct{ maps, unmaps atomic.Int32 }

func (p *anonProvider) Map(c memclass.Class, size uintptr) (unsafe.Pointer, error) {
	p.maps.Add(1)
	return unix.MmapPtr(-1, 0, nil, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
}

func (p *anonProvider) Unmap(c memclass.Class, base unsafe.Pointer, size uintptr) error {
	p.unmaps.Add(1)
	return unix.MunmapPtr(base, size)
}

// TestAttackProviderRegionPageSize: PageSize is "the size of the pages
// backing the region: the hugetlb page size for a hugetlb region, else the
// base page size". A region made by a Provider reports 0, so the obvious
// loop `for off := 0; off < r.Len(); off += r.PageSize()` (examples/numa
// does exactly this) never ends.
func TestAttackProviderRegionPageSize(t *testing.T) {
	p := &anonProvider{}
	old, err := memclass.SetProvider(memclass.KindPinnedHost, p)
	if err != nil {
		t.Fatal(err)
	}
	defer memclass.SetProvider(memclass.KindPinnedHost, old)
	r, err := memclass.Map(memclass.PinnedHost(), 3*memclass.PageSize+1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Unmap()
	if r.Len() != 4*memclass.PageSize || r.Class() != memclass.PinnedHost() || r.Node() != -1 {
		t.Fatalf("Len %d Class %s Node %d", r.Len(), r.Class(), r.Node())
	}
	if r.PageSize() != memclass.PageSize {
		t.Errorf("PageSize() of a provider region = %d, want the base page size %d", r.PageSize(), memclass.PageSize)
	}
	if err := r.Unmap(); err != nil || r.Unmap() != nil || p.unmaps.Load() != 1 {
		t.Fatalf("Unmap twice: %v, provider unmaps %d", err, p.unmaps.Load())
	}
}

// TestAttackHugeTLBStrict: WithHugeTLB under Strict with no free reserved
// pages is ErrNoHugePages and leaves nothing mapped.
func TestAttackHugeTLBStrict(t *testing.T) {
	if meminfo(t, "HugePages_Free") != 0 {
		t.Skip("this machine has free reserved huge pages")
	}
	for _, c := range []memclass.Class{memclass.Host().WithHugeTLB(), memclass.Bind(0).WithHugeTLB().Prefault(), memclass.Local().WithHugeTLB().Locked()} {
		before := len(mapsLines(t))
		r, err := memclass.Map(c, 1<<20)
		after := len(mapsLines(t))
		if r != nil || !errors.Is(err, memclass.ErrNoHugePages) {
			t.Errorf("Map(%s) = %v, %v; want ErrNoHugePages", c, r, err)
		}
		if before != after {
			t.Errorf("failed Map(%s) changed /proc/self/maps from %d to %d lines", c, before, after)
		}
	}
	r, err := memclass.MapNodes(memclass.PerNode().WithHugeTLB(), []int{0}, []uintptr{1 << 20})
	if r != nil || !errors.Is(err, memclass.ErrNoHugePages) {
		t.Errorf("MapNodes(pernode+hugetlb) = %v, %v; want ErrNoHugePages", r, err)
	}
}

// TestAttackMapNodesOneNode: MapNodes on the online nodes gives contiguous
// parts, each bound to its node and read back.
func TestAttackMapNodesOneNode(t *testing.T) {
	n0 := online(t)[0]
	ps := memclass.PageSize
	r, err := memclass.MapNodes(memclass.PerNode().Prefault(), []int{n0, n0}, []uintptr{2 * ps, 3*ps + 5})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Unmap()
	parts := r.Parts()
	want := []memclass.NodePart{{Node: n0, Offset: 0, Len: 2 * ps}, {Node: n0, Offset: 2 * ps, Len: 4 * ps}}
	if !slices.Equal(parts, want) || r.Len() != 6*ps || r.Class() != memclass.PerNode().Prefault() || r.Node() != -1 {
		t.Fatalf("parts %v len %d class %s node %d", parts, r.Len(), r.Class(), r.Node())
	}
	pol, err := r.Policy()
	if err != nil || pol.Mode != memclass.ModeBind || !slices.Equal(pol.Nodes, []int{n0}) {
		t.Fatalf("Policy = %s, %v", pol, err)
	}
	res, err := r.Residency()
	if err != nil || res.Resident != 6 || res.PerNode[n0] != 6 {
		t.Fatalf("Residency = %+v, %v", res, err)
	}
	if _, err := memclass.MapNodes(memclass.PerNode(), []int{n0, n0}, []uintptr{ps + 1, ps}); !errors.Is(err, memclass.ErrMap) {
		t.Errorf("a middle part that is not a multiple of the granule: %v", err)
	}
	if _, err := memclass.MapNodes(memclass.PerNode(), []int{n0}, nil); err == nil {
		t.Error("MapNodes with no sizes must fail")
	}
	if _, err := memclass.MapNodes(memclass.PerNode(), nil, nil); err == nil {
		t.Error("MapNodes with no nodes must fail")
	}
	if g := memclass.PerNode().WithTHP().Granule(); g < ps || g%ps != 0 {
		t.Errorf("Granule = %d", g)
	}
	if memclass.PerNode().Granule() != ps || memclass.Bind(0).Granule() != ps {
		t.Error("Granule of a base-page class must be the page size")
	}

	rn, err := memclass.MapNode(memclass.PerNode().Locked(), n0, ps+1)
	if err != nil {
		t.Fatal(err)
	}
	defer rn.Unmap()
	if rn.Node() != n0 || rn.Class() != memclass.PerNode().Locked() || rn.Len() != 2*ps {
		t.Fatalf("MapNode: node %d class %s len %d", rn.Node(), rn.Class(), rn.Len())
	}
	if pol, err := rn.Policy(); err != nil || pol.Mode != memclass.ModeBind || !slices.Equal(pol.Nodes, []int{n0}) {
		t.Fatalf("MapNode policy %s, %v", pol, err)
	}
	if res, err := rn.Residency(); err != nil || res.Resident != 2 {
		t.Fatalf("locked MapNode residency %+v, %v", res, err)
	}
}

// TestAttackMapSizes: zero bytes and overflowing sizes are errors, never a
// panic or a mapping.
func TestAttackMapSizes(t *testing.T) {
	for _, c := range []memclass.Class{memclass.Host(), memclass.Bind(0), memclass.Host().WithTHP(), memclass.Host().WithHugeTLB().BestEffort()} {
		for _, sz := range []uintptr{0, ^uintptr(0), ^uintptr(0) - memclass.PageSize, 1 << 62} {
			r, err := memclass.Map(c, sz)
			if err == nil || r != nil {
				if r != nil {
					r.Unmap()
				}
				t.Errorf("Map(%s, %d) succeeded", c, sz)
			}
		}
	}
}

// TestAttackTopologyMatchesMachine: the system topology agrees with the
// online list, CurrentCPU and the distance table.
func TestAttackTopologyMatchesMachine(t *testing.T) {
	topo, err := memclass.SystemTopology()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(topo.NodeIDs(), online(t)) {
		t.Fatalf("NodeIDs %v, online %v", topo.NodeIDs(), online(t))
	}
	for _, n := range topo.Nodes {
		if d := topo.Distance(n.ID, n.ID); d != 10 {
			t.Errorf("Distance(%d,%d) = %d", n.ID, n.ID, d)
		}
		if n.MemTotal == 0 || n.MemFree > n.MemTotal {
			t.Errorf("node %d memory %d/%d", n.ID, n.MemFree, n.MemTotal)
		}
	}
	if topo.Distance(0, memclass.MaxNodes+5) != -1 || topo.NodeOfCPU(1<<20) != -1 {
		t.Error("unknown nodes and CPUs must give -1")
	}
	for range 20 {
		cpu, node := memclass.CurrentCPU()
		if got := topo.NodeOfCPU(cpu); got != node && got != -1 {
			// The thread may move between the two reads; retry once.
			cpu, node = memclass.CurrentCPU()
			if got := topo.NodeOfCPU(cpu); got != node {
				t.Fatalf("CurrentCPU = (%d,%d) but NodeOfCPU(%d) = %d", cpu, node, cpu, got)
			}
		}
	}
	if !strings.Contains(topo.String(), "node ") {
		t.Errorf("String = %q", topo.String())
	}
}

// TestAttackCPUListRoundTrip: FormatCPUList writes what ParseCPUList reads
// back, for random sets.
func TestAttackCPUListRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		var ids []int
		for range r.IntN(20) {
			ids = append(ids, r.IntN(40))
		}
		s := memclass.FormatCPUList(ids)
		got, err := memclass.ParseCPUList(s)
		want := slices.Compact(slices.Sorted(slices.Values(ids)))
		if err != nil || !slices.Equal(got, want) || (len(want) == 0 && got != nil) {
			t.Fatalf("ids %v -> %q -> %v, %v", ids, s, got, err)
		}
	}
	for _, bad := range []string{"a", "1-", "-1", "3-1", "0,,1", "1-2-3", "0-3:0", "99999999999"} {
		if _, err := memclass.ParseCPUList(bad); !errors.Is(err, memclass.ErrListSyntax) {
			t.Errorf("ParseCPUList(%q): %v", bad, err)
		}
	}
	if s := memclass.FormatCPUList([]int{0, 1}); s != "0,1" {
		t.Errorf("FormatCPUList(0,1) = %q", s)
	}
	if s := memclass.FormatCPUList([]int{11, 8, 0, 1, 2, 3, 9, 10}); s != "0-3,8-11" {
		t.Errorf("FormatCPUList = %q", s)
	}
}
