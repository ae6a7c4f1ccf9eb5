package memclass

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// thpEnabledPath is the kernel's switch for transparent huge pages.
const thpEnabledPath = "/sys/kernel/mm/transparent_hugepage/enabled"

// hugePageSize is the default huge page size (Hugepagesize in /proc/meminfo),
// 2 MiB when the kernel does not say.
var hugePageSize = sync.OnceValue(func() uintptr {
	if kb := meminfoValue("Hugepagesize"); kb > 0 {
		return uintptr(kb) * 1024
	}
	return 2 << 20
})

// procMeminfo is where Linux reports the machine's memory.
const procMeminfo = "/proc/meminfo"

// meminfoPath is the meminfo file Map checks Locked requests against:
// procMeminfo, or a fake file in tests.
var meminfoPath = procMeminfo

// meminfoValue returns the number on the /proc/meminfo line for key (in the
// file's unit: kB for sizes, pages for HugePages_*), or -1.
func meminfoValue(key string) int64 {
	b, err := os.ReadFile(procMeminfo)
	if err != nil {
		return -1
	}
	return meminfoField(b, key)
}

// meminfoField returns the number on the line for key in the text of a
// meminfo file, or -1.
func meminfoField(b []byte, key string) int64 {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != key {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			return -1
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || n < 0 {
			return -1
		}
		return n
	}
	return -1
}

// physMem is the machine's physical memory in bytes, and where the figures
// came from (for error messages).
type physMem struct {
	total, available uint64
	source           string
}

// readPhysMem reads MemTotal and MemAvailable (kB) from the meminfo file at
// path (normally procMeminfo; tests pass a fake file). A kernel older than
// 3.14 has no MemAvailable: MemFree stands in for it. Without a readable
// file, sysinfo(2) gives total and free RAM.
func readPhysMem(path string) (physMem, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		total, free, serr := sysinfoRAM()
		if serr != nil {
			return physMem{}, fmt.Errorf("memclass: reading %s: %v; sysinfo: %v", path, err, serr)
		}
		return physMem{total: total, available: free, source: "sysinfo(2) totalram and freeram"}, nil
	}
	total := meminfoField(b, "MemTotal")
	avail, key := meminfoField(b, "MemAvailable"), "MemAvailable"
	if avail < 0 {
		avail, key = meminfoField(b, "MemFree"), "MemFree"
	}
	if total <= 0 || avail < 0 {
		return physMem{}, fmt.Errorf("memclass: %s has no MemTotal and MemAvailable (or MemFree) in kB", path)
	}
	pm := physMem{total: uint64(total) << 10, available: uint64(avail) << 10, source: path + " " + key}
	pm.available = min(pm.available, pm.total)
	return pm, nil
}

// checkLockable refuses, before anything is locked or populated, a Locked
// request for more bytes than the machine has available. mlock faults every
// page in and never lets one go: beyond MemAvailable the kernel does not
// return an error but runs the OOM killer, and a process with CAP_IPC_LOCK
// (root) is not stopped by RLIMIT_MEMLOCK first.
func checkLockable(size uintptr) error {
	pm, err := readPhysMem(meminfoPath)
	if err != nil {
		// Nothing known about the machine's memory: leave it to mlock.
		return nil
	}
	if uint64(size) <= pm.available {
		return nil
	}
	return &MemlockError{Asked: size, Limit: memlockLimit(), Available: pm.available, Total: pm.total,
		Source: pm.source, Err: unix.ENOMEM}
}

// thpAvailable reports why MADV_HUGEPAGE cannot give huge pages, or nil.
// The modes "always" and "madvise" both honour MADV_HUGEPAGE.
func thpAvailable() error {
	b, err := os.ReadFile(thpEnabledPath)
	if err != nil {
		return fmt.Errorf("%w: transparent huge pages: %v", ErrUnsupported, err)
	}
	if strings.Contains(string(b), "[never]") {
		return fmt.Errorf("%w: transparent huge pages are disabled (%s is %q)",
			ErrUnsupported, thpEnabledPath, strings.TrimSpace(string(b)))
	}
	return nil
}

// memlockLimit returns the soft RLIMIT_MEMLOCK in bytes (Unlimited for none).
func memlockLimit() uint64 {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &rl); err != nil {
		return Unlimited
	}
	if rl.Cur == unix.RLIM_INFINITY {
		return Unlimited
	}
	return uint64(rl.Cur)
}
