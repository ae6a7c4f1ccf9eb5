package memclass

import (
	"github.com/klauspost/cpuid/v2"
)

// Cache is the CPU's cache geometry as CPUID reports it. Sizes are in bytes,
// -1 when the CPU does not say.
type Cache struct {
	LineSize int // 0 if undetectable
	L1D      int
	L1I      int
	L2       int
	L3       int
}

// Caches returns the cache geometry of the CPU this process runs on.
func Caches() Cache {
	c := cpuid.CPU.Cache
	return Cache{LineSize: cpuid.CPU.CacheLine, L1D: c.L1D, L1I: c.L1I, L2: c.L2, L3: c.L3}
}

// hasRDTSCP is fixed at start-up: CPUID is slow under a hypervisor.
var hasRDTSCP = cpuid.CPU.Supports(cpuid.RDTSCP)

// CurrentCPU returns the CPU and NUMA node the calling goroutine's thread is
// running on at this instant (it may move right after). On x86 with RDTSCP it
// reads IA32_TSC_AUX, where Linux stores node<<12 | cpu (about 22 ns);
// elsewhere it asks the getcpu syscall (about 180 ns). It is meant for slow
// paths such as refilling a per-node cache, never for every allocation.
func CurrentCPU() (cpu, node int) {
	if hasRDTSCP {
		aux := cpuid.CPU.Ia32TscAux()
		return int(aux & 0xfff), int(aux >> 12)
	}
	c, n, err := getcpu()
	if err != nil {
		return 0, 0
	}
	return c, n
}
