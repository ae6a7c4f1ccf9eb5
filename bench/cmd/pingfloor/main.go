// Command pingfloor measures the floor under cella's cross-process
// latency on this machine: two processes ping-pong one 8-byte word in a
// shared mapping (a file under /dev/shm), both spinning, with nothing else
// on the path. Half the round trip is the one-way cost of moving one cache
// line between the two processes' cores; a message hop through package shm
// moves several such lines, so its polling latency cannot go below this.
//
//	go run ./bench/cmd/pingfloor            # 200000 round trips
//	go run ./bench/cmd/pingfloor -n 1000000
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	n := flag.Int("n", 200000, "round trips")
	child := flag.String("child", "", "internal: the echo process's segment file")
	flag.Parse()
	if *child != "" {
		if err := echo(*child, uint64(*n)); err != nil {
			fmt.Fprintln(os.Stderr, "pingfloor echo:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*n); err != nil {
		fmt.Fprintln(os.Stderr, "pingfloor:", err)
		os.Exit(1)
	}
}

// words maps the segment file: ping on the first cache line, pong on the
// third (apart, so that each side writes a line of its own).
func words(path string) (ping, pong *uint64, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	if err := f.Truncate(4096); err != nil {
		return nil, nil, err
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, err
	}
	base := unsafe.Pointer(unsafe.SliceData(mem))
	return (*uint64)(base), (*uint64)(unsafe.Add(base, 128)), nil
}

func echo(path string, n uint64) error {
	ping, pong, err := words(path)
	if err != nil {
		return err
	}
	for i := uint64(1); i <= n; i++ {
		for atomic.LoadUint64(ping) != i {
		}
		atomic.StoreUint64(pong, i)
	}
	return nil
}

func run(n int) error {
	path := filepath.Join("/dev/shm", "cella-pingfloor-"+strconv.Itoa(os.Getpid()))
	defer os.Remove(path)
	ping, pong, err := words(path)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, "-child", path, "-n", strconv.Itoa(n))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	rtts := make([]int64, 0, n)
	for i := uint64(1); i <= uint64(n); i++ {
		start := time.Now()
		atomic.StoreUint64(ping, i)
		for atomic.LoadUint64(pong) != i {
		}
		rtts = append(rtts, int64(time.Since(start)))
	}
	if err := cmd.Wait(); err != nil {
		return err
	}
	slices.Sort(rtts)
	fmt.Printf("one-way latency of one shared cache line between two spinning processes: p50 %d ns, p99 %d ns (%d round trips, half of each)\n",
		rtts[n/2]/2, rtts[n*99/100]/2, n)
	return nil
}
