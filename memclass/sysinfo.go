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

// meminfoValue returns the number on the /proc/meminfo line for key (in the
// file's unit: kB for sizes, pages for HugePages_*), or -1.
func meminfoValue(key string) int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return -1
	}
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
		if err != nil {
			return -1
		}
		return n
	}
	return -1
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
