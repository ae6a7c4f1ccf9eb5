package memclass

// nodeMask is a kernel nodemask_t big enough for MaxNodes nodes.
type nodeMask [MaxNodes / 64]uint64

// maskMaxNode is the maxnode argument for a nodeMask: the kernel reads
// maxnode-1 bits.
const maskMaxNode = MaxNodes + 1

func (m *nodeMask) set(n int)      { m[n/64] |= 1 << (n % 64) }
func (m *nodeMask) has(n int) bool { return m[n/64]&(1<<(n%64)) != 0 }

func (m *nodeMask) nodes() []int {
	var out []int
	for n := 0; n < MaxNodes; n++ {
		if m.has(n) {
			out = append(out, n)
		}
	}
	return out
}
