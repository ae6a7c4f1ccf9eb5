package arena_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/memclass"
	"github.com/cella-go/cella/token"
)

type clsCell [64]byte

func clsMapsCount(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte{'\n'})
}

// clsFailsClean runs a New that must fail (check judges its error) and
// reports mappings it leaves behind: after a warm-up call, three more calls
// each leaving more lines in /proc/self/maps than before is a leak (the
// runtime may map something of its own now and then, not every time).
func clsFailsClean(t *testing.T, what string, newFn func() (io.Closer, error), check func(error) bool) {
	t.Helper()
	a, err := newFn()
	if a != nil || !check(err) {
		if a != nil {
			a.Close()
		}
		t.Errorf("%s: New = %v, %v", what, a, err)
		return
	}
	grew := 0
	for range 3 {
		before := clsMapsCount(t)
		a, err := newFn()
		if a != nil {
			a.Close()
		}
		if clsMapsCount(t) > before {
			grew++
		}
		_ = err
	}
	if grew == 3 {
		t.Errorf("%s: every failed New left a mapping behind", what)
	}
}

func clsNew[T any](cfg arena.Config) func() (io.Closer, error) {
	return func() (io.Closer, error) {
		a, err := arena.New[T](cfg)
		if a == nil {
			return nil, err
		}
		return a, err
	}
}

func clsMeminfo(t *testing.T, key string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && k == key {
			if n, err := strconv.ParseInt(strings.Fields(v)[0], 10, 64); err == nil {
				return n
			}
		}
	}
	return -1
}

func clsOnline(t *testing.T) []int {
	t.Helper()
	n, err := memclass.OnlineNodes()
	if err != nil || len(n) == 0 {
		t.Fatalf("OnlineNodes: %v, %v", n, err)
	}
	return n
}

// TestClassAttackZeroIsHost: a Config without a Class is a Host arena.
func TestClassAttackZeroIsHost(t *testing.T) {
	a, err := arena.New[clsCell](arena.Config{Slots: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.Class() != memclass.Host() || a.Class().String() != "host" || a.Nodes() != nil {
		t.Fatalf("Class %q Nodes %v", a.Class(), a.Nodes())
	}
	res, err := a.Residency()
	if err != nil || res.Resident != 0 || res.Pages < 100*64/4096 {
		t.Fatalf("a fresh Host arena: Residency %+v, %v (New commits no memory)", res, err)
	}
}

// TestClassAttackEveryClass: each class this machine can honour makes an
// arena whose Class is the one asked for, whose pages are committed only
// when used (or at New, for Prefault and Locked), and whose Residency
// reports them on online nodes.
func TestClassAttackEveryClass(t *testing.T) {
	on := clsOnline(t)
	n0 := on[0]
	classes := []memclass.Class{
		memclass.Host(), memclass.Bind(n0), memclass.Prefer(n0), memclass.Interleave(), memclass.Interleave(on...),
		memclass.Local(), memclass.Host().Prefault(), memclass.Bind(n0).Prefault(), memclass.Bind(n0).WithTHP(),
		memclass.Local().Locked(), memclass.Interleave().Locked().Prefault(), memclass.Prefer(n0).WithTHP().BestEffort(),
		memclass.Bind(n0).WithHugeTLB().BestEffort(), memclass.Host().Locked().BestEffort(),
	}
	const slots = 4096 // 64 pages of payload
	for _, c := range classes {
		t.Run(c.String(), func(t *testing.T) {
			a, err := arena.New[clsCell](arena.Config{Slots: slots, Shards: 2, Class: c})
			if err != nil {
				if errors.Is(err, memclass.ErrUnsupported) && c.THP() {
					t.Skipf("THP: %v", err)
				}
				t.Fatalf("New(%s): %v", c, err)
			}
			defer a.Close()
			if a.Class() != c || a.Nodes() != nil || a.Capacity() != slots {
				t.Fatalf("Class %s Nodes %v Capacity %d", a.Class(), a.Nodes(), a.Capacity())
			}
			res, err := a.Residency()
			if err != nil {
				t.Fatal(err)
			}
			committed := c.IsPrefault() || c.IsLocked()
			if res.Pages*int(res.PageSize) < slots*64 {
				t.Fatalf("Residency covers %d pages of %d bytes for %d bytes of payload", res.Pages, res.PageSize, slots*64)
			}
			if committed && res.Resident != res.Pages {
				t.Fatalf("%s: %d of %d pages resident after New", c, res.Resident, res.Pages)
			}
			if !committed && res.Resident != 0 {
				t.Fatalf("%s: %d pages resident after New, which commits nothing", c, res.Resident)
			}
			toks := make([]token.Token, 0, slots)
			for i := range slots {
				var v clsCell
				v[0], v[63] = byte(i), byte(i>>8)
				tok, err := a.Store(v)
				if err != nil {
					t.Fatalf("Store %d: %v", i, err)
				}
				toks = append(toks, tok)
			}
			if _, err := a.Store(clsCell{}); !errors.Is(err, arena.ErrFull) {
				t.Fatalf("Store beyond capacity: %v", err)
			}
			for i, tok := range toks {
				v, err := a.Load(tok)
				if err != nil || v[0] != byte(i) || v[63] != byte(i>>8) {
					t.Fatalf("Load %d: %v", i, err)
				}
			}
			res, err = a.Residency()
			if err != nil {
				t.Fatal(err)
			}
			sum := 0
			for node, k := range res.PerNode {
				if !slices.Contains(on, node) {
					t.Fatalf("pages on node %d, not online", node)
				}
				sum += k
			}
			if wantMin := slots * 64 / int(res.PageSize); res.Resident < wantMin || sum != res.Resident {
				t.Fatalf("after filling: Residency %+v, want at least %d resident pages", res, wantMin)
			}
			if c.Kind() == memclass.KindBind && res.PerNode[n0] != res.Resident {
				t.Fatalf("bind(%d) arena has pages elsewhere: %v", n0, res.PerNode)
			}
			if c.IsLocked() && len(on) == 1 {
				for _, tok := range toks {
					if err := a.Free(tok); err != nil {
						t.Fatal(err)
					}
				}
				if n, err := a.Trim(); err != nil || n != 0 {
					t.Fatalf("Trim of a locked arena released %d bytes (%v): locked memory is never given back", n, err)
				}
				if res, err := a.Residency(); err != nil || res.Resident != res.Pages {
					t.Fatalf("locked arena after Trim: %+v, %v", res, err)
				}
			}
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			if a.Class() != c {
				t.Fatal("Class must still answer after Close")
			}
			if _, err := a.Residency(); !errors.Is(err, arena.ErrClosed) {
				t.Fatalf("Residency after Close: %v", err)
			}
		})
	}
}

// TestClassAttackNoSuchNode: a class naming a node that is not online (or
// cannot exist) makes New fail with ErrNoSuchNode and leave nothing mapped,
// also under BestEffort.
func TestClassAttackNoSuchNode(t *testing.T) {
	on := clsOnline(t)
	bad := 7
	for slices.Contains(on, bad) {
		bad++
	}
	for _, c := range []memclass.Class{
		memclass.Bind(bad), memclass.Prefer(bad), memclass.Interleave(0, bad), memclass.Bind(-1),
		memclass.Bind(memclass.MaxNodes + 3), memclass.Bind(bad).Locked().Prefault(), memclass.Interleave(bad).WithTHP().BestEffort(),
		memclass.Bind(bad).WithHugeTLB().BestEffort(),
	} {
		clsFailsClean(t, c.String(), clsNew[clsCell](arena.Config{Slots: 1 << 16, Class: c}),
			func(err error) bool { return errors.Is(err, memclass.ErrNoSuchNode) })
	}
}

// TestClassAttackProviderClasses: Device, PinnedHost and Shared without a
// provider are ErrUnsupported, with nothing mapped; with one, the payload
// comes from it and goes back to it at Close.
func TestClassAttackProviderClasses(t *testing.T) {
	kinds := []memclass.Kind{memclass.KindDevice, memclass.KindPinnedHost, memclass.KindShared}
	for _, k := range kinds {
		old, err := memclass.SetProvider(k, nil)
		if err != nil {
			t.Fatal(err)
		}
		if old != nil {
			defer memclass.SetProvider(k, old)
		}
	}
	for _, c := range []memclass.Class{memclass.Device(0), memclass.PinnedHost(), memclass.Shared(), memclass.Device(1).BestEffort(), memclass.Shared().Locked().BestEffort()} {
		clsFailsClean(t, c.String(), clsNew[clsCell](arena.Config{Slots: 1000, Class: c}),
			func(err error) bool { return errors.Is(err, memclass.ErrUnsupported) })
	}

	p := &clsProvider{}
	if _, err := memclass.SetProvider(memclass.KindDevice, p); err != nil {
		t.Fatal(err)
	}
	defer memclass.SetProvider(memclass.KindDevice, nil)
	a, err := arena.New[clsCell](arena.Config{Slots: 1000, Class: memclass.Device(2)})
	if err != nil {
		t.Fatal(err)
	}
	if a.Class() != memclass.Device(2) || p.maps != 1 || p.last != memclass.Device(2) || p.size < 1000*64 {
		t.Fatalf("Class %s, provider maps %d of %d bytes for %s", a.Class(), p.maps, p.size, p.last)
	}
	tok, err := a.Store(clsCell{1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := a.Load(tok); err != nil || v[2] != 3 {
		t.Fatal(err)
	}
	if err := a.Free(tok); err != nil {
		t.Fatal(err)
	}
	if n, err := a.Trim(); err != nil || n != 0 {
		t.Fatalf("Trim of provider memory: %d, %v", n, err)
	}
	if err := a.Close(); err != nil || p.unmaps != 1 {
		t.Fatalf("Close: %v; provider unmaps %d", err, p.unmaps)
	}
	if err := a.Close(); !errors.Is(err, arena.ErrClosed) || p.unmaps != 1 {
		t.Fatalf("second Close: %v; provider unmaps %d", err, p.unmaps)
	}
}

type clsProvider struct {
	maps, unmaps int
	size         uintptr
	last         memclass.Class
}

func (p *clsProvider) Map(c memclass.Class, size uintptr) (unsafe.Pointer, error) {
	p.maps++
	p.size, p.last = size, c
	return unix.MmapPtr(-1, 0, nil, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
}

func (p *clsProvider) Unmap(c memclass.Class, base unsafe.Pointer, size uintptr) error {
	p.unmaps++
	return unix.MunmapPtr(base, size)
}

// TestClassAttackHugeTLB: without reserved huge pages, Strict hugetlb is
// ErrNoHugePages (nothing mapped) and BestEffort works.
func TestClassAttackHugeTLB(t *testing.T) {
	if clsMeminfo(t, "HugePages_Free") != 0 {
		t.Skip("reserved huge pages are free here")
	}
	for _, c := range []memclass.Class{memclass.Host().WithHugeTLB(), memclass.Bind(0).WithHugeTLB(), memclass.PerNode().WithHugeTLB()} {
		clsFailsClean(t, c.String(), clsNew[clsCell](arena.Config{Slots: 1 << 14, Class: c}),
			func(err error) bool { return errors.Is(err, memclass.ErrNoHugePages) })
	}
	for _, c := range []memclass.Class{memclass.Host().WithHugeTLB().BestEffort(), memclass.PerNode().WithHugeTLB().BestEffort()} {
		a, err := arena.New[clsCell](arena.Config{Slots: 1 << 14, Class: c})
		if err != nil {
			t.Fatalf("New(%s): %v", c, err)
		}
		if a.Class() != c {
			t.Fatalf("Class = %s", a.Class())
		}
		if _, err := a.Store(clsCell{9}); err != nil {
			t.Fatal(err)
		}
		a.Close()
	}
}

// TestClassAttackLockedBeyondAvailable: a Locked arena larger than the
// machine's available memory is refused with a *MemlockError naming the
// bytes asked and available, before any page is touched, leaving nothing
// mapped.
func TestClassAttackLockedBeyondAvailable(t *testing.T) {
	avail := clsMeminfo(t, "MemAvailable")
	if avail <= 0 {
		t.Skip("no MemAvailable")
	}
	slots := int(avail*1024/4096) * 2
	if slots > arena.MaxSlots {
		t.Skip("too much memory here")
	}
	for _, c := range []memclass.Class{memclass.Host().Locked(), memclass.Bind(0).Locked().Prefault(), memclass.PerNode().Locked()} {
		clsFailsClean(t, c.String(), clsNew[[4096]byte](arena.Config{Slots: slots, Class: c}), func(err error) bool {
			var me *memclass.MemlockError
			if !errors.Is(err, memclass.ErrMemlock) || !errors.As(err, &me) {
				return false
			}
			return me.Total != 0 && uint64(me.Asked) >= uint64(slots)*4096 && me.Available < uint64(me.Asked) &&
				strings.Contains(err.Error(), strconv.FormatUint(uint64(me.Asked), 10))
		})
	}
}

const clsChildEnv = "CELLA_CLASS_ATTACK_MEMLOCK_CHILD"

// TestClassAttackMemlockRlimit runs, without CAP_IPC_LOCK (as user nobody
// when we are root), arenas against a low RLIMIT_MEMLOCK:
//   - a Locked arena beyond the limit fails with ErrMemlock naming
//     RLIMIT_MEMLOCK and the bytes, leaving nothing mapped;
//   - one within the limit is locked (every page resident);
//   - a Locked BestEffort arena must not fail because mlock is refused: "a
//     modifier the machine cannot honour is skipped and recorded". That
//     holds for Host/Bind classes, but arena.New locks its metadata with a
//     class that drops BestEffort for PerNode, hugetlb and provider classes
//     (metaClass), so those arenas fail with ErrMemlock.
func TestClassAttackMemlockRlimit(t *testing.T) {
	if os.Getenv(clsChildEnv) == "1" {
		clsMemlockChild(t)
		return
	}
	if os.Geteuid() != 0 {
		clsMemlockChild(t)
		return
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "cella-class-attack-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for d := filepath.Dir(dir); d != "/" && d != "."; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil || st.Mode().Perm()&0o001 == 0 {
			t.Skipf("%s is not searchable by other users", d)
		}
	}
	bin := filepath.Join(dir, "arena.test")
	src, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestClassAttackMemlockRlimit$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), clsChildEnv+"=1")
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	if strings.Contains(string(out), "--- SKIP: TestClassAttackMemlockRlimit") {
		t.Skipf("child skipped:\n%s", out)
	}
	if err != nil || !strings.Contains(string(out), "--- PASS: TestClassAttackMemlockRlimit") {
		t.Errorf("without CAP_IPC_LOCK (as user nobody) the child failed (%v):\n%s", err, out)
	}
}

func clsMemlockChild(t *testing.T) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &rl); err != nil {
		t.Fatal(err)
	}
	setLimit := func(n uint64) {
		t.Helper()
		if rl.Max != unix.RLIM_INFINITY && rl.Max < n {
			t.Skipf("hard RLIMIT_MEMLOCK %d is below %d", rl.Max, n)
		}
		if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &unix.Rlimit{Cur: n, Max: rl.Max}); err != nil {
			t.Fatal(err)
		}
	}
	// Probe: without CAP_IPC_LOCK a 2-page lock beyond a 1-page limit fails.
	setLimit(4096)
	probe, err := memclass.Map(memclass.Host().Locked(), 2<<20)
	if err == nil {
		probe.Unmap()
		t.Skip("mlock is not limited by RLIMIT_MEMLOCK here (CAP_IPC_LOCK?)")
	}

	const limit = 1 << 20
	setLimit(limit)
	// Beyond the limit: 4 MiB of payload.
	clsFailsClean(t, "locked beyond RLIMIT_MEMLOCK", clsNew[[4096]byte](arena.Config{Slots: 1024, Class: memclass.Host().Locked()}), func(err error) bool {
		var me *memclass.MemlockError
		ok := errors.Is(err, memclass.ErrMemlock) && errors.As(err, &me) && me.Limit == limit && me.Asked >= 4<<20 &&
			strings.Contains(err.Error(), "RLIMIT_MEMLOCK") && strings.Contains(err.Error(), strconv.FormatUint(uint64(me.Asked), 10))
		if !ok {
			t.Logf("error: %v (%+v)", err, me)
		}
		return ok
	})
	// Within it: 256 KiB, every page resident.
	a, err := arena.New[[4096]byte](arena.Config{Slots: 64, Class: memclass.Bind(0).Locked()})
	if err != nil {
		t.Fatalf("locked arena within RLIMIT_MEMLOCK: %v", err)
	}
	if res, err := a.Residency(); err != nil || res.Resident != res.Pages || res.Pages < 64 {
		t.Errorf("locked arena: Residency %+v, %v", res, err)
	}
	a.Close()

	// BestEffort: nothing may be locked at all.
	setLimit(0)
	if p, _ := memclass.SetProvider(memclass.KindShared, &clsProvider{}); p != nil {
		defer memclass.SetProvider(memclass.KindShared, p)
	} else {
		defer memclass.SetProvider(memclass.KindShared, nil)
	}
	for _, c := range []memclass.Class{
		memclass.Host().Locked().BestEffort(),
		memclass.Bind(0).Locked().Prefault().BestEffort(),
		memclass.PerNode().Locked().BestEffort(),
		memclass.Bind(0).WithHugeTLB().Locked().BestEffort(),
		memclass.Shared().Locked().BestEffort(),
	} {
		a, err := arena.New[[64]byte](arena.Config{Slots: 4096, Class: c})
		if err != nil {
			t.Errorf("New(%s) with RLIMIT_MEMLOCK 0: %v; a BestEffort class must skip and record the lock, not fail", c, err)
			continue
		}
		if a.Class() != c {
			t.Errorf("Class = %s, want %s", a.Class(), c)
		}
		if _, err := a.Store([64]byte{1}); err != nil {
			t.Errorf("Store in %s: %v", c, err)
		}
		a.Close()
	}
}

// TestClassAttackPerNode: a per-node arena on this machine's nodes covers
// its slots with one part per node, in order, keeps its exact capacity for
// any shard count and payload size, and reports its pages on online nodes.
func TestClassAttackPerNode(t *testing.T) {
	on := clsOnline(t)
	topo, err := memclass.SystemTopology()
	if err != nil {
		t.Fatal(err)
	}
	for _, slots := range []int{1, 2, 63, 1000, 4097} {
		for _, shards := range []int{0, 1, 3, 7} {
			t.Run(fmt.Sprintf("slots=%d/shards=%d", slots, shards), func(t *testing.T) {
				clsPerNode[[24]byte](t, slots, shards, on, topo)
				clsPerNode[[4096]byte](t, slots, shards, on, topo)
				clsPerNode[[3000]byte](t, slots, shards, on, topo)
				clsPerNode[byte](t, slots, shards, on, topo)
			})
		}
	}
}

// TestClassAttackPerNodeModifiers: per-node arenas with modifiers commit
// what they promise at New.
func TestClassAttackPerNodeModifiers(t *testing.T) {
	for _, c := range []memclass.Class{memclass.PerNode().Prefault(), memclass.PerNode().Locked(), memclass.PerNode().WithTHP().Prefault(), memclass.PerNode().WithHugeTLB().BestEffort().Prefault()} {
		a, err := arena.New[[24]byte](arena.Config{Slots: 10000, Class: c})
		if err != nil {
			t.Fatalf("New(%s): %v", c, err)
		}
		res, err := a.Residency()
		if err != nil || res.Resident != res.Pages || res.Pages*int(res.PageSize) < 10000*24 {
			t.Errorf("%s: Residency after New %+v, %v: every page must be committed", c, res, err)
		}
		if a.Class() != c || len(a.Nodes()) == 0 {
			t.Errorf("%s: Class %s Nodes %v", c, a.Class(), a.Nodes())
		}
		a.Close()
	}
}

func clsPerNode[T any](t *testing.T, slots, shards int, on []int, topo *memclass.Topology) {
	t.Helper()
	c := memclass.PerNode()
	a, err := arena.New[T](arena.Config{Slots: slots, Shards: shards, Class: c})
	if err != nil {
		t.Fatalf("New[%T](%d slots, %d shards): %v", *new(T), slots, shards, err)
	}
	defer a.Close()
	if a.Class() != c || a.Capacity() != slots || a.Available() != slots {
		t.Fatalf("Class %s Capacity %d Available %d", a.Class(), a.Capacity(), a.Available())
	}
	parts := a.Nodes()
	var end uint32
	nShards := 0
	for i, p := range parts {
		if p.First != end || p.End <= p.First || p.Shards < 1 || !slices.Contains(on, p.Node) || p.FirstShard != nShards {
			t.Fatalf("part %d = %+v (parts %+v)", i, p, parts)
		}
		end = p.End
		nShards += p.Shards
	}
	if int(end) != slots {
		t.Fatalf("parts %+v cover %d of %d slots", parts, end, slots)
	}
	if shards > 0 && len(on) == 1 && nShards != shards {
		t.Errorf("Shards = %d configured, the arena has %d", shards, nShards)
	}
	if shards == 0 && len(on) == 1 {
		n, _ := topo.Node(on[0])
		if nShards != max(len(n.CPUs), 1) {
			t.Errorf("default shards %d, node has %d CPUs", nShards, len(n.CPUs))
		}
	}
	for round := range 2 {
		toks := make([]token.Token, 0, slots)
		seen := map[uint32]bool{}
		for i := range slots {
			tok, p, err := a.Alloc()
			if err != nil {
				t.Fatalf("round %d: Alloc %d of %d: %v", round, i+1, slots, err)
			}
			if seen[tok.Index()] {
				t.Fatalf("slot %d handed out twice", tok.Index())
			}
			seen[tok.Index()] = true
			if unsafe.Sizeof(*p) > 0 {
				*(*byte)(unsafe.Pointer(p)) = 1
			}
			toks = append(toks, tok)
		}
		if _, _, err := a.Alloc(); !errors.Is(err, arena.ErrFull) {
			t.Fatalf("round %d: Alloc beyond %d: %v", round, slots, err)
		}
		res, err := a.Residency()
		if err != nil {
			t.Fatal(err)
		}
		for node := range res.PerNode {
			if !slices.Contains(on, node) {
				t.Fatalf("pages on node %d", node)
			}
		}
		if sz := unsafe.Sizeof(*new(T)); sz > 0 && res.Resident < int(uintptr(slots)*sz/res.PageSize) {
			t.Fatalf("Residency %+v after touching %d slots of %d bytes", res, slots, sz)
		}
		for _, tok := range toks {
			if err := a.Free(tok); err != nil {
				t.Fatal(err)
			}
		}
		if a.Available() != slots {
			t.Fatalf("Available %d after freeing all %d", a.Available(), slots)
		}
	}
}
