//go:build linux

// Command guestinit is /init of the two-node qemu guest that
// scripts/numa-vm/run.sh boots. As PID 1 it mounts /proc, /sys and /dev, runs
// the test binary of every package under /tests in name order, prints a
// marker line per package and a final
//
//	CELLA-VM: RESULT pass=N fail=M
//
// on the serial console, then powers the guest off.
//
// Each package is a directory /tests/NN-name holding its test binary "test"
// and, if the package has one, its testdata directory. The binary runs with
// that directory as its working directory, as under go test, with
// CELLA_NUMA_VM=1 and the arguments the kernel passed after "--". Adding a
// package to the guest run means adding its directory (run.sh does that for
// each entry of CELLA_VM_PACKAGES).
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

const testsDir = "/tests"

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "guestinit: must run as PID 1 inside the test guest")
		os.Exit(2)
	}
	setup()
	pass, fail := runAll(os.Args[1:])
	fmt.Printf("CELLA-VM: RESULT pass=%d fail=%d\n", pass, fail)
	powerOff()
}

// setup mounts the pseudo file systems the tests read and points stdio at
// the console.
func setup() {
	for _, m := range []struct{ src, dir, fs string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"tmpfs", "/tmp", "tmpfs"},
	} {
		_ = os.MkdirAll(m.dir, 0o755)
		if err := unix.Mount(m.src, m.dir, m.fs, 0, ""); err != nil {
			fmt.Printf("CELLA-VM: mount %s: %v\n", m.dir, err)
		}
	}
	if f, err := os.OpenFile("/dev/console", os.O_RDWR, 0); err == nil {
		for fd := 0; fd <= 2; fd++ {
			_ = unix.Dup2(int(f.Fd()), fd)
		}
	}
}

func runAll(args []string) (pass, fail int) {
	entries, err := os.ReadDir(testsDir)
	if err != nil {
		fmt.Printf("CELLA-VM: no test binaries: %v\n", err)
		return 0, 1
	}
	var pkgs []string
	for _, e := range entries {
		if e.IsDir() {
			pkgs = append(pkgs, filepath.Join(testsDir, e.Name()))
		}
	}
	slices.Sort(pkgs)
	if len(pkgs) == 0 {
		fmt.Printf("CELLA-VM: %s holds no package\n", testsDir)
		return 0, 1
	}
	for _, dir := range pkgs {
		name := filepath.Base(dir)
		bin := filepath.Join(dir, "test")
		fmt.Printf("CELLA-VM: RUN %s %v\n", name, args)
		start := time.Now()
		cmd := exec.Command(bin, append([]string{"-test.v"}, args...)...)
		cmd.Dir = dir
		cmd.Env = []string{"CELLA_NUMA_VM=1", "HOME=/tmp", "TMPDIR=/tmp", "PATH=/"}
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
		err := cmd.Run()
		took := time.Since(start).Round(time.Millisecond)
		if err != nil {
			fail++
			fmt.Printf("CELLA-VM: FAIL %s (%v): %v\n", name, took, err)
			continue
		}
		pass++
		fmt.Printf("CELLA-VM: PASS %s (%v)\n", name, took)
	}
	return pass, fail
}

func powerOff() {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Printf("CELLA-VM: power off: %v\n", err)
	}
	// qemu runs with -no-reboot, so a restart ends it too.
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	select {}
}
