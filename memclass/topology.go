package memclass

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// SysNodeRoot is where Linux describes NUMA nodes.
const SysNodeRoot = "/sys/devices/system/node"

// Topology describes the machine's NUMA nodes as sysfs shows them, plus the
// CPU's cache geometry.
type Topology struct {
	Nodes []Node // online nodes, ascending by ID
	Cache Cache  // from CPUID (github.com/klauspost/cpuid/v2), not from sysfs
}

// Node is one online NUMA node.
type Node struct {
	ID        int
	CPUs      []int       // nodeN/cpulist; empty for a memory-only node
	MemTotal  uint64      // bytes, from nodeN/meminfo
	MemFree   uint64      // bytes, from nodeN/meminfo
	Distances map[int]int // nodeN/distance: relative access cost to each online node (10 = local)
}

// ReadTopology reads the node tree under root (normally SysNodeRoot; tests
// pass a fake tree). Only online nodes are listed: a machine may have gaps
// ("0,2" online). A root without an online file means a kernel built without
// NUMA; ReadTopology then reports ErrUnsupported and SystemTopology
// synthesises one node.
func ReadTopology(root string) (*Topology, error) {
	online, err := readOnline(root)
	if err != nil {
		return nil, err
	}
	t := &Topology{Cache: Caches()}
	for _, id := range online {
		n, err := readNode(root, id, online)
		if err != nil {
			return nil, err
		}
		t.Nodes = append(t.Nodes, n)
	}
	return t, nil
}

// SystemTopology reads this machine's topology. On a kernel without NUMA
// support it reports one node 0 holding every online CPU.
func SystemTopology() (*Topology, error) {
	t, err := ReadTopology(SysNodeRoot)
	if err == nil || !errors.Is(err, ErrUnsupported) {
		return t, err
	}
	cpus, cerr := readList("/sys/devices/system/cpu/online")
	if cerr != nil {
		return nil, fmt.Errorf("%w; and no cpu list either: %v", err, cerr)
	}
	return &Topology{
		Nodes: []Node{{ID: 0, CPUs: cpus, Distances: map[int]int{0: 10}}},
		Cache: Caches(),
	}, nil
}

// OnlineNodes returns the NUMA nodes that are online now, from
// /sys/devices/system/node/online ([0] on a kernel without NUMA).
func OnlineNodes() ([]int, error) {
	n, err := readOnline(SysNodeRoot)
	if errors.Is(err, ErrUnsupported) {
		return []int{0}, nil
	}
	return n, err
}

// Node returns the node with the given ID, if it is online.
func (t *Topology) Node(id int) (Node, bool) {
	for _, n := range t.Nodes {
		if n.ID == id {
			return n, true
		}
	}
	return Node{}, false
}

// NodeIDs returns the IDs of the online nodes, ascending.
func (t *Topology) NodeIDs() []int {
	ids := make([]int, len(t.Nodes))
	for i, n := range t.Nodes {
		ids[i] = n.ID
	}
	return ids
}

// NodeOfCPU returns the node that holds cpu, or -1 if no online node lists it.
func (t *Topology) NodeOfCPU(cpu int) int {
	for _, n := range t.Nodes {
		for _, c := range n.CPUs {
			if c == cpu {
				return n.ID
			}
		}
	}
	return -1
}

// Distance returns the distance from node a to node b (10 for a node to
// itself on ACPI machines), or -1 if either is unknown.
func (t *Topology) Distance(a, b int) int {
	n, ok := t.Node(a)
	if !ok {
		return -1
	}
	if d, ok := n.Distances[b]; ok {
		return d
	}
	return -1
}

// String summarises the topology on a few lines.
func (t *Topology) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d NUMA node(s); cache line %d B, L1d %s, L2 %s, L3 %s\n",
		len(t.Nodes), t.Cache.LineSize, sizeString(int64(t.Cache.L1D)), sizeString(int64(t.Cache.L2)), sizeString(int64(t.Cache.L3)))
	for _, n := range t.Nodes {
		fmt.Fprintf(&b, "node %d: cpus %s, memory %s (%s free), distances",
			n.ID, FormatCPUList(n.CPUs), sizeString(int64(n.MemTotal)), sizeString(int64(n.MemFree)))
		for _, o := range t.Nodes {
			fmt.Fprintf(&b, " %d:%d", o.ID, n.Distances[o.ID])
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func sizeString(v int64) string {
	switch {
	case v < 0:
		return "unknown"
	case v >= 1<<30 && v%(1<<30) == 0:
		return strconv.FormatInt(v>>30, 10) + " GiB"
	case v >= 1<<20:
		return strconv.FormatInt(v>>20, 10) + " MiB"
	case v >= 1<<10:
		return strconv.FormatInt(v>>10, 10) + " KiB"
	}
	return strconv.FormatInt(v, 10) + " B"
}

func readOnline(root string) ([]int, error) {
	nodes, err := readList(filepath.Join(root, "online"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no NUMA node list at %s: %v", ErrUnsupported, root, err)
	}
	if err != nil {
		return nil, err
	}
	if len(nodes) == 0 {
		return nil, fmt.Errorf("memclass: %s/online lists no node", root)
	}
	return nodes, nil
}

func readList(path string) ([]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("memclass: read %s: %w", path, err)
	}
	v, err := ParseCPUList(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}

func readNode(root string, id int, online []int) (Node, error) {
	dir := filepath.Join(root, "node"+strconv.Itoa(id))
	n := Node{ID: id, Distances: map[int]int{}}
	cpus, err := readList(filepath.Join(dir, "cpulist"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return n, err
	}
	n.CPUs = cpus
	if b, err := os.ReadFile(filepath.Join(dir, "meminfo")); err == nil {
		n.MemTotal, n.MemFree = parseNodeMeminfo(b)
	}
	b, err := os.ReadFile(filepath.Join(dir, "distance"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return n, fmt.Errorf("memclass: read node %d distances: %w", id, err)
	}
	// The kernel writes one distance per online node, in online order.
	for i, f := range strings.Fields(string(b)) {
		d, err := strconv.Atoi(f)
		if err != nil || d < 0 {
			return n, fmt.Errorf("memclass: node %d distance %q: %w", id, f, ErrListSyntax)
		}
		if i < len(online) {
			n.Distances[online[i]] = d
		}
	}
	return n, nil
}

// parseNodeMeminfo reads MemTotal and MemFree from a nodeN/meminfo file,
// whose lines look like "Node 0 MemTotal:       16384000 kB".
func parseNodeMeminfo(b []byte) (total, free uint64) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[0] != "Node" {
			continue
		}
		v, err := strconv.ParseUint(f[3], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 4 && f[4] == "kB" {
			v *= 1024
		}
		switch f[2] {
		case "MemTotal:":
			total = v
		case "MemFree:":
			free = v
		}
	}
	return total, free
}
