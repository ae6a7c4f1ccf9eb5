//go:build linux

package memclass

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

const mlockChildEnv = "CELLA_MEMCLASS_MLOCK_CHILD"

// TestMlock locks a region within RLIMIT_MEMLOCK and checks the error beyond
// it. Root has CAP_IPC_LOCK and is never limited, so as root the limit half
// reruns this test binary as user nobody (uid 65534).
func TestMlock(t *testing.T) {
	if os.Getenv(mlockChildEnv) == "1" {
		mlockWithinAndBeyond(t)
		return
	}
	r := mustMap(t, Bind(0).Locked(), 64*PageSize)
	if res, err := r.Residency(); err != nil || res.Resident != 64 {
		t.Fatalf("a locked region must be resident: %+v, %v", res, err)
	}
	if os.Geteuid() != 0 {
		mlockWithinAndBeyond(t)
		return
	}
	bin := copyExecutable(t)
	cmd := exec.Command(bin, "-test.run=^TestMlock$", "-test.v")
	cmd.Env = append(os.Environ(), mlockChildEnv+"=1")
	cmd.Dir = filepath.Dir(bin)
	// What setpriv --reuid=nobody does: the child runs as user nobody, with
	// no capabilities, so RLIMIT_MEMLOCK applies to it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	t.Logf("as user nobody:\n%s", out)
	if err != nil || !strings.Contains(string(out), "--- PASS: TestMlock") {
		t.Fatalf("child failed: %v", err)
	}
}

// mlockWithinAndBeyond runs without CAP_IPC_LOCK. It lowers its own soft
// limit (always allowed) so the numbers are known.
func mlockWithinAndBeyond(t *testing.T) {
	const limit = 2 << 20
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Max != unix.RLIM_INFINITY && rl.Max < limit {
		t.Skipf("hard RLIMIT_MEMLOCK %d is below the %d bytes this test needs", rl.Max, limit)
	}
	rl.Cur = limit
	if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &rl); err != nil {
		t.Fatal(err)
	}
	within := mustMap(t, Host().Locked(), 1<<20)
	if res, err := within.Residency(); err != nil || res.Resident != res.Pages {
		t.Fatalf("locked region within the limit: %+v, %v", res, err)
	}

	const asked = 4 << 20
	r, err := Map(Host().Locked(), asked)
	if r != nil || !errors.Is(err, ErrMemlock) {
		t.Fatalf("mlock beyond the limit: %v, %v; want ErrMemlock", r, err)
	}
	var me *MemlockError
	if !errors.As(err, &me) || me.Asked != asked || me.Limit != limit {
		t.Fatalf("MemlockError = %+v", me)
	}
	msg := err.Error()
	if !strings.Contains(msg, strconv.Itoa(asked)) || !strings.Contains(msg, strconv.Itoa(limit)) {
		t.Fatalf("error must name the bytes asked and the limit: %s", msg)
	}
	t.Log(msg)

	be := mustMap(t, Host().Locked().BestEffort(), asked)
	if fb := be.Fallbacks(); len(fb) != 1 || fb[0].Modifier != "locked" || !errors.Is(fb[0].Err, ErrMemlock) {
		t.Fatalf("best-effort Fallbacks = %v", fb)
	}
}

// copyExecutable copies the test binary into a directory another user can
// enter (go test builds it in a private one).
func copyExecutable(t *testing.T) string {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "cella-mlock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "memclass.test")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}
