//go:build linux

package memclass

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// fakeMeminfo writes a meminfo file and points Map's check at it for the
// rest of the test.
func fakeMeminfo(t *testing.T, text string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meminfo")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	old := meminfoPath
	meminfoPath = path
	t.Cleanup(func() { meminfoPath = old })
}

// recordSteps records the steps Map completes for the rest of the test.
func recordSteps(t *testing.T) *[]string {
	var steps []string
	testHookStep = func(s string, _ unsafe.Pointer, _ uintptr) error {
		steps = append(steps, s)
		return nil
	}
	t.Cleanup(func() { testHookStep = nil })
	return &steps
}

const (
	fakeTotalKB = 23 << 20 // a 23 GiB machine
	fakeAvailKB = 16 << 10 // with 16 MiB available
)

var fakeSmall = "MemTotal:       " + strconv.Itoa(fakeTotalKB) + " kB\n" +
	"MemFree:          100000 kB\n" +
	"MemAvailable:     " + strconv.Itoa(fakeAvailKB) + " kB\n" +
	"Hugepagesize:       2048 kB\n"

func TestReadPhysMem(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pm, err := readPhysMem(write("full", fakeSmall))
	if err != nil || pm.total != fakeTotalKB<<10 || pm.available != fakeAvailKB<<10 || !strings.HasSuffix(pm.source, "MemAvailable") {
		t.Fatalf("full meminfo: %+v, %v", pm, err)
	}
	// Before Linux 3.14 there is no MemAvailable: MemFree stands in.
	pm, err = readPhysMem(write("old", "MemTotal: 2048 kB\nMemFree: 1024 kB\n"))
	if err != nil || pm.total != 2<<20 || pm.available != 1<<20 || !strings.HasSuffix(pm.source, "MemFree") {
		t.Fatalf("meminfo without MemAvailable: %+v, %v", pm, err)
	}
	// Available is never reported above the total.
	pm, err = readPhysMem(write("odd", "MemTotal: 1024 kB\nMemAvailable: 4096 kB\n"))
	if err != nil || pm.available != pm.total {
		t.Fatalf("MemAvailable above MemTotal: %+v, %v", pm, err)
	}
	for _, bad := range []string{"", "MemTotal: x kB\nMemAvailable: 1 kB\n", "MemAvailable: 1 kB\n", "MemTotal: 1 kB\n", "MemTotal: -5 kB\nMemFree: 1 kB\n"} {
		if pm, err := readPhysMem(write("bad", bad)); err == nil {
			t.Errorf("readPhysMem(%q) = %+v, want an error", bad, pm)
		}
	}
	// No file: sysinfo(2) answers.
	pm, err = readPhysMem(filepath.Join(dir, "absent"))
	if err != nil || pm.total == 0 || pm.available > pm.total || !strings.Contains(pm.source, "sysinfo") {
		t.Fatalf("without a meminfo file: %+v, %v", pm, err)
	}
	// The real file parses and is sane.
	pm, err = readPhysMem(procMeminfo)
	if err != nil || pm.total == 0 || pm.available > pm.total {
		t.Fatalf("%s: %+v, %v", procMeminfo, pm, err)
	}
}

// A Locked request beyond MemAvailable fails with ErrMemlock before any page
// is populated or locked: as root, RLIMIT_MEMLOCK would not stop the mlock
// and the kernel would OOM-kill the process instead. The request here is
// small (64 MiB against a fake 16 MiB available), so that a broken check
// costs a 64 MiB lock, not the machine.
func TestLockedBeyondAvailableMemory(t *testing.T) {
	fakeMeminfo(t, fakeSmall)
	steps := recordSteps(t)
	const asked = 64 << 20
	r, err := Map(Host().Prefault().Locked(), asked)
	if r != nil || !errors.Is(err, ErrMemlock) {
		t.Fatalf("Map = %v, %v; want ErrMemlock", r, err)
	}
	if slices.Contains(*steps, "populate") || slices.Contains(*steps, "mlock") || slices.Contains(*steps, "memcheck") {
		t.Fatalf("steps completed: %v; nothing may be populated or locked", *steps)
	}
	var me *MemlockError
	if !errors.As(err, &me) || me.Asked != asked || me.Available != fakeAvailKB<<10 || me.Total != fakeTotalKB<<10 {
		t.Fatalf("MemlockError = %+v", me)
	}
	msg := err.Error()
	for _, want := range []string{strconv.Itoa(asked), strconv.Itoa(fakeAvailKB << 10), "64.0 MiB", "16.0 MiB", "MemAvailable", "host+locked+prefault"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q: %s", want, msg)
		}
	}
	t.Log(msg)

	// PerNode regions are checked the same way.
	r, err = MapNodes(PerNode().Locked(), []int{0}, []uintptr{asked})
	if r != nil || !errors.Is(err, ErrMemlock) {
		t.Fatalf("MapNodes = %v, %v; want ErrMemlock", r, err)
	}
}

// The 32 GiB request of the report, on a fake 23 GiB machine. The check
// is called alone: a Map of 32 GiB in a test would, were the check ever
// broken, lock 32 GiB as root and bring the OOM killer.
func TestLockedBeyondPhysicalMemory(t *testing.T) {
	fakeMeminfo(t, "MemTotal: "+strconv.Itoa(23<<20)+" kB\nMemAvailable: "+strconv.Itoa(22<<20)+" kB\n")
	err := checkLockable(32 << 30)
	var me *MemlockError
	if !errors.Is(err, ErrMemlock) || !errors.As(err, &me) || me.Total != 23<<30 || me.Available != 22<<30 {
		t.Fatalf("checkLockable(32 GiB) on 23 GiB = %v; want ErrMemlock", err)
	}
	if msg := err.Error(); !strings.Contains(msg, strconv.Itoa(32<<30)) || !strings.Contains(msg, "32.0 GiB") ||
		!strings.Contains(msg, strconv.Itoa(22<<30)) || !strings.Contains(msg, "22.0 GiB") {
		t.Fatalf("error does not name the request and the available bytes: %s", msg)
	}
	if err := checkLockable(22 << 30); err != nil {
		t.Fatalf("checkLockable(all of MemAvailable) = %v", err)
	}
}

// Under BestEffort the region is mapped pageable, and the fallback says why.
func TestLockedBeyondAvailableBestEffort(t *testing.T) {
	fakeMeminfo(t, fakeSmall)
	steps := recordSteps(t)
	r := mustMap(t, Host().Locked().BestEffort(), 64<<20)
	fb := r.Fallbacks()
	if len(fb) != 1 || fb[0].Modifier != "locked" || !errors.Is(fb[0].Err, ErrMemlock) {
		t.Fatalf("Fallbacks = %v", fb)
	}
	if res, err := r.Residency(); err != nil || res.Resident != 0 {
		t.Fatalf("a region given up as unlockable must not be faulted in: %+v, %v", res, err)
	}
	if !slices.Contains(*steps, "mlock") {
		t.Fatalf("steps %v", *steps) // the step runs, and does nothing
	}
}

// A request within MemAvailable is locked as before.
func TestLockedWithinAvailableMemory(t *testing.T) {
	fakeMeminfo(t, fakeSmall)
	r := mustMap(t, Host().Locked(), 1<<20)
	if res, err := r.Residency(); err != nil || res.Resident != res.Pages {
		t.Fatalf("a locked region must be resident: %+v, %v", res, err)
	}
	if fb := r.Fallbacks(); len(fb) != 0 {
		t.Fatalf("Fallbacks = %v", fb)
	}
}

// An unreadable meminfo (and sysinfo answering) still lets small requests
// through.
func TestLockedMeminfoUnreadable(t *testing.T) {
	old := meminfoPath
	meminfoPath = filepath.Join(t.TempDir(), "absent")
	t.Cleanup(func() { meminfoPath = old })
	r := mustMap(t, Host().Locked(), 1<<20)
	if res, err := r.Residency(); err != nil || res.Resident != res.Pages {
		t.Fatalf("a locked region must be resident: %+v, %v", res, err)
	}
}
