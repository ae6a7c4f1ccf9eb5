//go:build !linux

package memclass

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Off Linux there are no NUMA syscalls: every placement class but Host
// reports ErrUnsupported.

func mbind(unsafe.Pointer, uintptr, int, *nodeMask, int) error { return unix.ENOSYS }

func getMempolicy(unsafe.Pointer, int) (int, nodeMask, error) { return 0, nodeMask{}, unix.ENOSYS }

func movePagesQuery([]uintptr, []int32) error { return unix.ENOSYS }

func getcpu() (int, int, error) { return -1, -1, unix.ENOSYS }

const mapNoReserve = 0

func sysinfoRAM() (total, free uint64, err error) { return 0, 0, unix.ENOSYS }
