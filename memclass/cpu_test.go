//go:build linux

package memclass

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// Pin the thread to each CPU in turn: CurrentCPU must report that CPU and
// the node sysfs puts it on, and agree with the getcpu syscall.
func TestCurrentCPU(t *testing.T) {
	topo, err := SystemTopology()
	if err != nil {
		t.Fatal(err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var orig unix.CPUSet
	if err := unix.SchedGetaffinity(0, &orig); err != nil {
		t.Fatal(err)
	}
	defer unix.SchedSetaffinity(0, &orig)
	for _, n := range topo.Nodes {
		for _, cpu := range n.CPUs {
			if !orig.IsSet(cpu) {
				continue
			}
			var one unix.CPUSet
			one.Set(cpu)
			if err := unix.SchedSetaffinity(0, &one); err != nil {
				t.Fatal(err)
			}
			c, node := CurrentCPU()
			sc, snode, err := getcpu()
			if err != nil {
				t.Fatal(err)
			}
			if c != cpu || node != n.ID || sc != cpu || snode != n.ID {
				t.Fatalf("pinned to cpu %d (node %d): CurrentCPU = %d/%d, getcpu = %d/%d (rdtscp %v)",
					cpu, n.ID, c, node, sc, snode, hasRDTSCP)
			}
		}
	}
	t.Logf("rdtscp=%v", hasRDTSCP)
}

func BenchmarkCurrentCPU(b *testing.B) {
	for i := 0; i < b.N; i++ {
		CurrentCPU()
	}
}
