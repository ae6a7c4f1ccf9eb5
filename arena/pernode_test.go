package arena_test

import (
	"os"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/memclass"
)

// On any machine: a per-node arena has one part per online node, its exact
// capacity, and its pages on the part's node.
func TestPerNodeArena(t *testing.T) {
	nodes, err := memclass.OnlineNodes()
	require.NoError(t, err)
	a, err := arena.New[[64]byte](arena.Config{Slots: 5000, Class: memclass.PerNode()})
	require.NoError(t, err)
	defer a.Close()
	parts := a.Nodes()
	require.NotEmpty(t, parts)
	require.LessOrEqual(t, len(parts), len(nodes))
	var slots uint32
	for i, p := range parts {
		require.Equal(t, slots, p.First, "parts follow each other")
		require.Greater(t, p.End, p.First)
		require.GreaterOrEqual(t, p.Shards, 1)
		if i > 0 {
			require.Equal(t, parts[i-1].FirstShard+parts[i-1].Shards, p.FirstShard)
		}
		slots = p.End
	}
	require.EqualValues(t, 5000, slots)
	require.Equal(t, memclass.PerNode(), a.Class())

	n := 0
	for {
		_, buf, err := a.Alloc()
		if err != nil {
			require.ErrorIs(t, err, arena.ErrFull)
			break
		}
		buf[0] = 1
		n++
	}
	require.Equal(t, 5000, n)
	res, err := a.Residency()
	require.NoError(t, err)
	total := 0
	for node, pages := range res.PerNode {
		require.Contains(t, nodes, node)
		total += pages
	}
	require.Greater(t, total, 0)
	require.NoError(t, a.Close())
	_, err = a.Residency()
	require.ErrorIs(t, err, arena.ErrClosed)
}

// In the two-node guest (scripts/numa-vm, CELLA_NUMA_VM=1): a goroutine on a
// CPU of node 0 allocates node 0's slots first, crosses to node 1 only when
// node 0 is empty, and each node's pages are on that node.
func TestPerNodeArenaTwoNodesVM(t *testing.T) {
	if os.Getenv("CELLA_NUMA_VM") != "1" {
		t.Skip("needs the two-node guest: scripts/numa-vm/run.sh")
	}
	topo, err := memclass.SystemTopology()
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(topo.Nodes), 2, "the guest must have two nodes")

	a, err := arena.New[[4096 - 16]byte](arena.Config{Slots: 512, Class: memclass.PerNode()})
	require.NoError(t, err)
	defer a.Close()
	parts := a.Nodes()
	require.Len(t, parts, 2)

	for _, want := range []int{0, 1} {
		cpu := topo.Nodes[want].CPUs[0]
		runOnCPU(t, cpu, func() {
			// Take this node's part: every index must come from it.
			p := parts[want]
			for i := p.First; i < p.End; i++ {
				tok, buf, err := a.Alloc()
				require.NoError(t, err)
				require.True(t, tok.Index() >= p.First && tok.Index() < p.End,
					"on node %d, alloc %d got slot %d outside [%d,%d)", want, i-p.First, tok.Index(), p.First, p.End)
				buf[0] = byte(want + 1) // commit the page
			}
		})
	}
	res, err := a.Residency()
	require.NoError(t, err)
	t.Logf("pages per node: %v", res.PerNode)
	require.Greater(t, res.PerNode[0], 0)
	require.Greater(t, res.PerNode[1], 0)
	// 512 slots of 4 KiB = 256 pages per node; allow the partial pages at
	// the part boundaries.
	require.InDelta(t, res.PerNode[0], res.PerNode[1], 4)

	// Now everything is taken: free node 1's part, and a goroutine on node 0
	// must steal across (Steals grows) to get them.
	b, err := arena.New[[64]byte](arena.Config{Slots: 2048, Class: memclass.PerNode()})
	require.NoError(t, err)
	defer b.Close()
	bp := b.Nodes()
	runOnCPU(t, topo.Nodes[0].CPUs[0], func() {
		n0 := int(bp[0].End - bp[0].First)
		for i := 0; i < n0; i++ {
			tok, _, err := b.Alloc()
			require.NoError(t, err)
			require.Less(t, tok.Index(), bp[0].End, "crossed to node 1 before node 0 ran dry")
		}
		before := b.Stats().Steals
		tok, _, err := b.Alloc()
		require.NoError(t, err)
		require.GreaterOrEqual(t, tok.Index(), bp[1].First, "node 0 is dry: the next slot comes from node 1")
		require.Greater(t, b.Stats().Steals, before)
	})
}

// runOnCPU runs fn on a goroutine locked to a thread pinned to cpu.
func runOnCPU(t *testing.T, cpu int, fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var set unix.CPUSet
		set.Set(cpu)
		require.NoError(t, unix.SchedSetaffinity(0, &set))
		fn()
	}()
	<-done
}
