package memclass

import (
	"errors"
	"fmt"
)

// Sentinel errors. Map and the readback methods wrap them with context (the
// class, the sizes, the kernel's errno); match them with errors.Is.
var (
	// ErrNoSuchNode: the class names a NUMA node that is not online (checked
	// against /sys/devices/system/node/online before any syscall), or a node
	// number that cannot exist (negative, or >= MaxNodes).
	ErrNoSuchNode = errors.New("memclass: no such NUMA node")

	// ErrUnsupported: the class cannot be honoured here: a provider class with
	// no registered Provider, a kernel without NUMA or THP support, PerNode
	// passed to Map, and so on. Never answered by a silent fallback to host
	// memory.
	ErrUnsupported = errors.New("memclass: class not supported")

	// ErrNoHugePages: WithHugeTLB under Strict, and the kernel has no free
	// reserved hugetlb pages for the region (see vm.nr_hugepages).
	ErrNoHugePages = errors.New("memclass: no reserved hugetlb pages")

	// ErrMemlock: a Locked class could not be locked: mlock failed, or the
	// request is larger than the physical memory available, which Map checks
	// before it populates or locks anything. The error is a *MemlockError
	// that names the bytes asked for and the limit that refused them.
	ErrMemlock = errors.New("memclass: mlock failed")

	// ErrPolicy: the kernel refused the placement policy (mbind failed), or
	// the policy read back with get_mempolicy(MPOL_F_ADDR) is not the one
	// the class asked for.
	ErrPolicy = errors.New("memclass: placement policy not applied")

	// ErrPopulate: Prefault could not commit the region's pages.
	ErrPopulate = errors.New("memclass: prefault failed")

	// ErrUnmapped: a readback method was called on a region after Unmap.
	ErrUnmapped = errors.New("memclass: region is unmapped")
)

// MemlockError reports a Locked region that could not be locked. It matches
// ErrMemlock with errors.Is, and names the size asked for and what refused
// it: the process's RLIMIT_MEMLOCK (soft limit; Unlimited when there is
// none) when mlock failed, or, when Total is not zero, the machine's
// available physical memory, checked before anything was locked.
type MemlockError struct {
	Asked uintptr // bytes the class tried to lock
	Limit uint64  // RLIMIT_MEMLOCK soft limit in bytes

	// Available and Total are set when Map refused the request itself
	// because it exceeds the physical memory available (MemAvailable and
	// MemTotal in /proc/meminfo, named by Source): locking it would not fail
	// but wake the OOM killer, and RLIMIT_MEMLOCK does not stop a process
	// with CAP_IPC_LOCK. Total is 0 when the kernel refused the mlock.
	Available, Total uint64
	Source           string

	Err error // the kernel's errno (ENOMEM for the physical-memory check)
}

// Unlimited is the RLIMIT_MEMLOCK value that means no limit.
const Unlimited = ^uint64(0)

func (e *MemlockError) Error() string {
	if e.Total != 0 {
		return fmt.Sprintf("memclass: refusing to lock %d bytes (%s): only %d bytes (%s) of physical memory are available (%s; %d bytes total), "+
			"and locking more would invoke the OOM killer: %v",
			e.Asked, ibytes(uint64(e.Asked)), e.Available, ibytes(e.Available), e.Source, e.Total, e.Err)
	}
	lim := "unlimited"
	if e.Limit != Unlimited {
		lim = fmt.Sprintf("%d bytes (ulimit -l %d)", e.Limit, e.Limit/1024)
	}
	return fmt.Sprintf("memclass: mlock of %d bytes failed: RLIMIT_MEMLOCK is %s and the process lacks CAP_IPC_LOCK: %v",
		e.Asked, lim, e.Err)
}

// ibytes formats n in binary units, e.g. "32.0 GiB".
func ibytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// Is makes errors.Is(err, ErrMemlock) true.
func (e *MemlockError) Is(target error) bool { return target == ErrMemlock }

// Unwrap returns the kernel's errno.
func (e *MemlockError) Unwrap() error { return e.Err }

// Fallback records a modifier that a BestEffort class could not honour and
// what Map did instead.
type Fallback struct {
	Modifier string // "hugetlb", "thp", "locked" or "prefault"
	Instead  string // what the region got instead, e.g. "transparent huge pages"
	Err      error  // why the modifier failed
}

func (f Fallback) String() string {
	return fmt.Sprintf("%s -> %s: %v", f.Modifier, f.Instead, f.Err)
}
