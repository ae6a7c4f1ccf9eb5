package memclass

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestTopologyTwoNodes(t *testing.T) {
	topo, err := ReadTopology("testdata/topology/two")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(topo.NodeIDs(), []int{0, 1}) {
		t.Fatalf("nodes = %v", topo.NodeIDs())
	}
	n0, _ := topo.Node(0)
	n1, _ := topo.Node(1)
	if !slices.Equal(n0.CPUs, []int{0, 1, 2, 3, 8, 9, 10, 11}) || !slices.Equal(n1.CPUs, []int{4, 5, 6, 7, 12, 13, 14, 15}) {
		t.Fatalf("cpus: %v / %v", n0.CPUs, n1.CPUs)
	}
	if n0.MemTotal != 16<<30 || n0.MemFree != 8<<30 || n1.MemTotal != 32<<30 || n1.MemFree != 1<<30 {
		t.Fatalf("memory: %+v / %+v", n0, n1)
	}
	if topo.Distance(0, 0) != 10 || topo.Distance(0, 1) != 21 || topo.Distance(1, 0) != 21 || topo.Distance(1, 7) != -1 {
		t.Fatalf("distances: %v / %v", n0.Distances, n1.Distances)
	}
	if topo.NodeOfCPU(9) != 0 || topo.NodeOfCPU(12) != 1 || topo.NodeOfCPU(99) != -1 {
		t.Fatal("NodeOfCPU")
	}
	s := topo.String()
	for _, want := range []string{"2 NUMA node(s)", "node 0: cpus 0-3,8-11, memory 16 GiB (8 GiB free), distances 0:10 1:21", "node 1: cpus 4-7,12-15"} {
		if !strings.Contains(s, want) {
			t.Errorf("String() lacks %q:\n%s", want, s)
		}
	}
}

// Node 1 is offline: it is skipped, and distance columns follow the online
// order (0, 2, 3), not the node numbers.
func TestTopologyOfflineGap(t *testing.T) {
	topo, err := ReadTopology("testdata/topology/gaps")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(topo.NodeIDs(), []int{0, 2, 3}) {
		t.Fatalf("nodes = %v", topo.NodeIDs())
	}
	if _, ok := topo.Node(1); ok {
		t.Fatal("offline node 1 listed")
	}
	n2, _ := topo.Node(2)
	if len(n2.CPUs) != 0 || n2.MemTotal != 4<<30 {
		t.Fatalf("memory-only node 2: %+v", n2)
	}
	n3, _ := topo.Node(3)
	if !slices.Equal(n3.CPUs, []int{4, 5, 8}) {
		t.Fatalf("node 3 cpus %v", n3.CPUs)
	}
	if topo.Distance(0, 2) != 32 || topo.Distance(0, 3) != 17 || topo.Distance(3, 2) != 28 || topo.Distance(2, 2) != 10 {
		t.Fatalf("distances: %+v", topo.Nodes)
	}
	if topo.Distance(0, 1) != -1 {
		t.Fatal("distance to an offline node must be unknown")
	}
}

func TestTopologyErrors(t *testing.T) {
	if _, err := ReadTopology("testdata/topology/nonuma"); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("no online file: %v, want ErrUnsupported", err)
	}
	if _, err := ReadTopology("testdata/topology/badcpulist"); !errors.Is(err, ErrListSyntax) {
		t.Fatalf("bad cpulist: %v, want ErrListSyntax", err)
	}
	if _, err := ReadTopology("testdata/topology/missing"); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("missing root: %v", err)
	}
}

func TestSystemTopology(t *testing.T) {
	topo, err := SystemTopology()
	if err != nil {
		t.Fatal(err)
	}
	if len(topo.Nodes) == 0 || topo.NodeOfCPU(0) < 0 {
		t.Fatalf("topology: %s", topo)
	}
	online, err := OnlineNodes()
	if err != nil || !slices.Equal(online, topo.NodeIDs()) {
		t.Fatalf("OnlineNodes = %v, %v; topology has %v", online, err, topo.NodeIDs())
	}
	if topo.Cache.LineSize <= 0 {
		t.Fatalf("cache line %d", topo.Cache.LineSize)
	}
	t.Logf("\n%s", topo)
}
