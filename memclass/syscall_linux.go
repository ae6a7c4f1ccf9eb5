//go:build linux

package memclass

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Thin wrappers over the NUMA syscalls that golang.org/x/sys/unix does not
// wrap. Each takes the region's address directly: the policy belongs to the
// mapping, never to the calling OS thread (set_mempolicy is never used, since
// goroutines move between threads).

// mbind sets the memory policy of [addr, addr+size).
func mbind(addr unsafe.Pointer, size uintptr, mode int, mask *nodeMask, flags int) error {
	var e unix.Errno
	if mask == nil {
		_, _, e = unix.Syscall6(unix.SYS_MBIND, uintptr(addr), size, uintptr(mode), 0, 0, uintptr(flags))
	} else {
		_, _, e = unix.Syscall6(unix.SYS_MBIND, uintptr(addr), size, uintptr(mode),
			uintptr(unsafe.Pointer(mask)), maskMaxNode, uintptr(flags))
	}
	if e != 0 {
		return e
	}
	return nil
}

// getMempolicy reads the policy of the mapping that holds addr
// (MPOL_F_ADDR), or with MPOL_F_NODE|MPOL_F_ADDR the node of the page at addr.
func getMempolicy(addr unsafe.Pointer, flags int) (mode int, mask nodeMask, err error) {
	var m int32
	_, _, e := unix.Syscall6(unix.SYS_GET_MEMPOLICY, uintptr(unsafe.Pointer(&m)),
		uintptr(unsafe.Pointer(&mask)), maskMaxNode, uintptr(addr), uintptr(flags), 0)
	if e != 0 {
		return 0, mask, e
	}
	return int(m), mask, nil
}

// movePagesQuery asks which node holds each page (nodes == NULL: query only,
// nothing moves). status[i] is a node id, or a negative errno such as -ENOENT
// for a page that is not resident.
func movePagesQuery(pages []uintptr, status []int32) error {
	if len(pages) == 0 {
		return nil
	}
	_, _, e := unix.Syscall6(unix.SYS_MOVE_PAGES, 0, uintptr(len(pages)),
		uintptr(unsafe.Pointer(&pages[0])), 0, uintptr(unsafe.Pointer(&status[0])), 0)
	if e != 0 {
		return e
	}
	return nil
}

// getcpu returns the CPU and NUMA node the calling thread runs on.
func getcpu() (cpu, node int, err error) {
	var c, n uint32
	_, _, e := unix.RawSyscall(unix.SYS_GETCPU, uintptr(unsafe.Pointer(&c)), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 {
		return -1, -1, e
	}
	return int(c), int(n), nil
}

// mapNoReserve keeps a large reservation from tripping the overcommit check.
const mapNoReserve = unix.MAP_NORESERVE

// sysinfoRAM returns total and free RAM in bytes from sysinfo(2).
func sysinfoRAM() (total, free uint64, err error) {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0, 0, err
	}
	unit := uint64(si.Unit)
	if unit == 0 {
		unit = 1
	}
	return uint64(si.Totalram) * unit, uint64(si.Freeram) * unit, nil
}
