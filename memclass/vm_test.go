//go:build linux

package memclass

import (
	"errors"
	"os"
	"runtime"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// The tests in this file need a machine with two NUMA nodes. They run when
// CELLA_NUMA_VM=1, which scripts/numa-vm/run.sh sets inside a two-node qemu
// guest; anywhere else they skip. Under CELLA_NUMA_VM=1 a machine with fewer
// than two nodes is a failure, not a skip.

const vmEnv = "CELLA_NUMA_VM"

func needTwoNodes(t *testing.T) *Topology {
	t.Helper()
	if os.Getenv(vmEnv) != "1" {
		t.Skip("two-node test: runs inside the qemu guest of scripts/numa-vm (set " + vmEnv + "=1 on a real two-node machine)")
	}
	topo, err := SystemTopology()
	if err != nil {
		t.Fatal(err)
	}
	if len(topo.Nodes) < 2 {
		t.Fatalf("%s=1 but the machine has %d node(s):\n%s", vmEnv, len(topo.Nodes), topo)
	}
	return topo
}

func TestVMTopologySeesTwoNodes(t *testing.T) {
	topo := needTwoNodes(t)
	t.Logf("\n%s", topo)
	if !slices.Equal(topo.NodeIDs(), []int{0, 1}) {
		t.Fatalf("nodes = %v, want [0 1]", topo.NodeIDs())
	}
	for _, n := range topo.Nodes {
		if len(n.CPUs) == 0 || n.MemTotal == 0 {
			t.Fatalf("node %d: cpus %v memory %d", n.ID, n.CPUs, n.MemTotal)
		}
	}
	if topo.Distance(0, 0) != 10 || topo.Distance(0, 1) <= 10 {
		t.Fatalf("distances: %v", topo.Nodes[0].Distances)
	}
}

func TestVMBindNode1(t *testing.T) {
	needTwoNodes(t)
	const pages = 2048
	for _, c := range []Class{Bind(1).Prefault(), Bind(1)} {
		r := mustMap(t, c, pages*PageSize)
		if !c.IsPrefault() {
			touch(r, pages) // first touch from whichever CPU this runs on
		}
		per, err := r.PagesPerNode()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: pages per node %v", c, per)
		if !mapsEqual(per, map[int]int{1: pages}) {
			t.Fatalf("%s: pages per node %v, want all %d on node 1", c, per, pages)
		}
	}
}

func TestVMInterleaveSplits(t *testing.T) {
	needTwoNodes(t)
	if b, err := os.ReadFile(thpEnabledPath); err == nil {
		t.Logf("THP mode: %s", b)
	}
	const pages = 4096 // 16 MiB: eight 2 MiB huge pages
	for _, tc := range []struct {
		c     Class
		exact bool // aligned huge pages alternate exactly
	}{
		{Interleave(0, 1).Prefault(), false},
		{Interleave().Prefault(), false},
		{Interleave(0, 1).WithTHP().Prefault(), true},
	} {
		r := mustMap(t, tc.c, pages*PageSize)
		pol, err := r.Policy()
		if err != nil || pol.Mode != ModeInterleave || !slices.Equal(pol.Nodes, []int{0, 1}) {
			t.Fatalf("%s: policy %s, %v", tc.c, pol, err)
		}
		per, err := r.PagesPerNode()
		if err != nil {
			t.Fatal(err)
		}
		huge, _ := r.HugePageBytes()
		t.Logf("%s: pages per node %v (%d KiB in huge pages)", tc.c, per, huge>>10)
		// Interleaving goes page by page, or huge page by huge page where
		// THP backs the region, so the split is even to within a few
		// huge pages.
		if per[0]+per[1] != pages || per[0] < pages/4 || per[1] < pages/4 {
			t.Fatalf("%s: pages per node %v, want about %d on each", tc.c, per, pages/2)
		}
		if tc.exact && (per[0] != pages/2 || per[1] != pages/2) {
			t.Fatalf("%s: pages per node %v, want exactly %d on each", tc.c, per, pages/2)
		}
	}
}

func TestVMPreferAndPerNode(t *testing.T) {
	topo := needTwoNodes(t)
	r := mustMap(t, Prefer(1).Prefault(), 512*PageSize)
	if per, err := r.PagesPerNode(); err != nil || per[1] != 512 {
		t.Fatalf("prefer(1): %v, %v", per, err)
	}
	c := PerNode().WithTHP().Prefault()
	for _, n := range topo.NodeIDs() {
		r, err := MapNode(c, n, 4<<20)
		if err != nil {
			t.Fatal(err)
		}
		per, err := r.PagesPerNode()
		huge, _ := r.HugePageBytes()
		t.Logf("%s node %d: pages per node %v, %d KiB in huge pages", c, n, per, huge>>10)
		if err != nil || per[n] != int(r.Len()/PageSize) || len(per) != 1 {
			t.Fatalf("MapNode(%s, %d): pages per node %v, %v", c, n, per, err)
		}
		if err := r.Unmap(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestVMLocalFollowsCPU(t *testing.T) {
	topo := needTwoNodes(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var orig unix.CPUSet
	if err := unix.SchedGetaffinity(0, &orig); err != nil {
		t.Fatal(err)
	}
	defer unix.SchedSetaffinity(0, &orig)
	for _, n := range topo.Nodes {
		var one unix.CPUSet
		one.Set(n.CPUs[0])
		if err := unix.SchedSetaffinity(0, &one); err != nil {
			t.Fatal(err)
		}
		if _, node := CurrentCPU(); node != n.ID {
			t.Fatalf("pinned to cpu %d: CurrentCPU node %d, want %d", n.CPUs[0], node, n.ID)
		}
		r := mustMap(t, Local(), 64*PageSize)
		touch(r, 64)
		per, err := r.PagesPerNode()
		if err != nil || per[n.ID] != 64 {
			t.Fatalf("local, touched from node %d: %v, %v", n.ID, per, err)
		}
	}
}

func TestVMNoSuchNode(t *testing.T) {
	needTwoNodes(t)
	for _, c := range []Class{Bind(5), Interleave(0, 1, 5)} {
		if _, err := Map(c, PageSize); !errors.Is(err, ErrNoSuchNode) {
			t.Fatalf("Map(%s): %v, want ErrNoSuchNode", c, err)
		}
	}
}
