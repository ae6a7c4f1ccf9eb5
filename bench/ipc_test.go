package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/shm"
	"github.com/cella-go/cella/token"
	"golang.org/x/sys/unix"
)

// Cross-process benchmarks: a message from one process to another through
// a shared cella Store and edge, beside a unix socket and a pipe carrying
// the same bytes, in the same run. The other process is this test binary,
// re-executed with ipcRoleEnv set (see TestMain).
//
// Throughput: a producer process sends b.N messages of 64 B, 4 KiB or
// 1 MiB; this process receives them and checks the first and last word of
// each. With cella the producer builds each message in its slot (Loan,
// stamping the first and last word, as a zero-copy producer does) and the
// consumer reads it in place; over a socket or pipe the producer writes all
// the bytes and the consumer reads all of them, which is what those
// transports cost.
//
// Latency: ping-pong of one 64 B message; the one-way latency is half the
// round trip, reported as ns/hop-p50 and ns/hop-p99. "parked" receivers sleep in
// Recv (a futex wait) between messages; "spinning" ones poll TryRecv.

const (
	ipcRoleEnv = "CELLA_BENCH_IPC"
	ipcArgEnv  = "CELLA_BENCH_IPC_ARG"
)

func TestMain(m *testing.M) {
	if role := os.Getenv(ipcRoleEnv); role != "" {
		if path := os.Getenv("CELLA_BENCH_CHILD_CPUPROFILE"); path != "" {
			f, err := os.Create(path)
			if err == nil && pprof.StartCPUProfile(f) == nil {
				defer pprof.StopCPUProfile()
			}
		}
		if err := ipcChild(role, os.Getenv(ipcArgEnv)); err != nil {
			fmt.Fprintln(os.Stderr, "ipc child:", err)
			os.Exit(1)
		}
		pprof.StopCPUProfile()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type (
	ipc64  [64]byte
	ipc4K  [4 << 10]byte
	ipc1M  [1 << 20]byte
	ipcArg struct {
		name, dir string
		n         int
	}
)

func (a ipcArg) String() string { return a.name + "," + a.dir + "," + strconv.Itoa(a.n) }

func parseIPCArg(s string) (a ipcArg, err error) {
	var n string
	for i, part := range splitComma(s) {
		switch i {
		case 0:
			a.name = part
		case 1:
			a.dir = part
		case 2:
			n = part
		}
	}
	a.n, err = strconv.Atoi(n)
	return a, err
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return out
}

func ipcChild(role, arg string) error {
	a, err := parseIPCArg(arg)
	if err != nil {
		return err
	}
	switch role {
	case "shm-64":
		return shmProduce[ipc64](a)
	case "shm-4K":
		return shmProduce[ipc4K](a)
	case "shm-1M":
		return shmProduce[ipc1M](a)
	case "fd":
		return fdProduce(a)
	case "shm-echo-parked", "shm-echo-spin":
		return shmEcho(a, role == "shm-echo-spin")
	case "fd-echo":
		return fdEcho(a)
	}
	return fmt.Errorf("unknown role %q", role)
}

func startIPC(b *testing.B, role string, a ipcArg, files ...*os.File) *exec.Cmd {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), ipcRoleEnv+"="+role, ipcArgEnv+"="+a.String())
	cmd.ExtraFiles = files
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the benchmark
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	return cmd
}

// ipcStamp writes the first and last 8 bytes of p; check reads them.
func ipcStamp(p []byte, v uint64) {
	binary.LittleEndian.PutUint64(p, v)
	binary.LittleEndian.PutUint64(p[len(p)-8:], ^v)
}

func ipcCheck(p []byte, v uint64) bool {
	return binary.LittleEndian.Uint64(p) == v && binary.LittleEndian.Uint64(p[len(p)-8:]) == ^v
}

func bytesOf[P any](p *P) []byte { return unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p)) }

// shmProduce sends message 0 (ready) and then a.n stamped messages, in
// batches of up to ipcBatch (as the socket producer batches through a
// bufio.Writer).
func shmProduce[P any](a ipcArg) error {
	s, err := shm.AttachStore[P](a.name, shm.StoreConfig{Dir: a.dir, Watch: -1})
	if err != nil {
		return err
	}
	defer s.Close()
	ctx := context.Background()
	e := s.Edge(0)
	batch := make([]token.Token, 0, ipcBatch)
	flush := func() error {
		_, err := e.SendBatch(ctx, batch)
		batch = batch[:0]
		return err
	}
	for i := 0; i <= a.n; i++ {
		t, m, err := s.Loan(message.Header{Seq: uint64(i)})
		for errors.Is(err, shm.ErrFull) {
			if err := flush(); err != nil {
				return err
			}
			if err := s.AwaitFree(ctx); err != nil {
				return err
			}
			t, m, err = s.Loan(message.Header{Seq: uint64(i)})
		}
		if err != nil {
			return err
		}
		ipcStamp(bytesOf(&m.Payload), uint64(i))
		if batch = append(batch, t); len(batch) == cap(batch) || i == 0 || i == a.n {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// ipcBatch is how many messages the cella producer sends at once.
const ipcBatch = 16

// ipcName returns a segment name of its own under /dev/shm (tmpfs, where a
// user's segments live), removed when the benchmark ends.
func ipcName(b *testing.B, what string) string {
	name := fmt.Sprintf("bench-%s-%d-%d", what, os.Getpid(), time.Now().UnixNano())
	b.Cleanup(func() { _ = os.Remove(shm.DefaultDir + "/cella." + name) })
	return name
}

// fdProduce writes a ready byte then a.n stamped messages of a.name's size
// (the size travels in the name field) on fd 3.
func fdProduce(a ipcArg) error {
	size, err := strconv.Atoi(a.name)
	if err != nil {
		return err
	}
	f := os.NewFile(3, "ipc")
	buf := make([]byte, size)
	w := io.Writer(f)
	var bw *bufio.Writer
	if size < 4096 {
		bw = bufio.NewWriterSize(f, 64<<10) // what a careful user does for small messages
		w = bw
	}
	if _, err := f.Write([]byte{1}); err != nil {
		return err
	}
	for i := 1; i <= a.n; i++ {
		ipcStamp(buf, uint64(i))
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
	if bw != nil {
		return bw.Flush()
	}
	return nil
}

func BenchmarkIPC(b *testing.B) {
	b.Run("64B", func(b *testing.B) { benchIPCSize[ipc64](b, 1024) })
	b.Run("4KiB", func(b *testing.B) { benchIPCSize[ipc4K](b, 1024) })
	b.Run("1MiB", func(b *testing.B) { benchIPCSize[ipc1M](b, 256) }) // sparse: each message touches two pages
}

func benchIPCSize[P any](b *testing.B, slots int) {
	var zero P
	size := int(unsafe.Sizeof(zero))
	role := map[int]string{64: "shm-64", 4 << 10: "shm-4K", 1 << 20: "shm-1M"}[size]
	b.Run("impl=cella", func(b *testing.B) {
		b.SetBytes(int64(size))
		b.ReportAllocs()
		name := ipcName(b, "ipc")
		s, err := shm.CreateStore[P](name, shm.StoreConfig{Slots: slots, Watch: -1,
			Edges: []message.Policy{{MaxItems: slots / 2}}})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		cmd := startIPC(b, role, ipcArg{name, "", b.N})
		defer cmd.Wait()
		ctx := context.Background()
		e := s.Edge(0)
		buf := make([]token.Token, 64)
		want := uint64(0)
		for want <= uint64(b.N) {
			k, err := e.RecvBatch(ctx, buf)
			if err != nil {
				b.Fatal(err)
			}
			for _, t := range buf[:k] {
				var ok bool
				if err := s.View(t, func(m *message.Message[P]) { ok = ipcCheck(bytesOf(&m.Payload), want) }); err != nil || !ok {
					b.Fatalf("message %d: %v, intact %v", want, err, ok)
				}
				if err := s.Free(t); err != nil {
					b.Fatal(err)
				}
				if want == 0 {
					b.ResetTimer() // message 0 says the producer is attached and running
				}
				want++
			}
		}
	})
	for _, kind := range []string{"unix", "pipe"} {
		b.Run("impl="+kind, func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			r, w := ipcFDs(b, kind)
			cmd := startIPC(b, "fd", ipcArg{strconv.Itoa(size), "", b.N}, w)
			w.Close()
			defer r.Close()
			defer cmd.Wait()
			br := bufio.NewReaderSize(r, 64<<10)
			one := make([]byte, 1)
			if _, err := io.ReadFull(br, one); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			buf := make([]byte, size)
			for i := 1; i <= b.N; i++ {
				if _, err := io.ReadFull(br, buf); err != nil {
					b.Fatal(err)
				}
				if !ipcCheck(buf, uint64(i)) {
					b.Fatalf("message %d corrupt", i)
				}
			}
		})
	}
}

// ipcFDs returns the reading end (ours) and the writing end (the child's)
// of a unix stream socket or a pipe.
func ipcFDs(b *testing.B, kind string) (r, w *os.File) {
	if kind == "pipe" {
		r, w, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		return r, w
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	return os.NewFile(uintptr(fds[0]), "unix-r"), os.NewFile(uintptr(fds[1]), "unix-w")
}

// shmEcho receives on edge 0 and sends the same token back on edge 1
// until the edge is closed.
func shmEcho(a ipcArg, spin bool) error {
	s, err := shm.AttachStore[ipc64](a.name, shm.StoreConfig{Dir: a.dir, Watch: -1})
	if err != nil {
		return err
	}
	defer s.Close()
	ctx := context.Background()
	in, out := s.Edge(0), s.Edge(1)
	for {
		var t token.Token
		if spin {
			var ok bool
			for t, ok = in.TryRecv(); !ok; t, ok = in.TryRecv() {
				if in.Closed() {
					return nil
				}
			}
		} else {
			if t, err = in.Recv(ctx); err != nil {
				if err == message.ErrEdgeClosed {
					return nil
				}
				return err
			}
		}
		if !spin {
			// The one-way latency of the parked leg, on the clock both
			// processes share: the sender stamped the first word.
			now := monotonic()
			if err := s.Update(t, func(m *message.Message[ipc64]) {
				sent := int64(binary.LittleEndian.Uint64(m.Payload[:]))
				binary.LittleEndian.PutUint64(m.Payload[8:], uint64(now-sent))
			}); err != nil {
				return err
			}
		}
		if err := out.Send(ctx, t); err != nil {
			return err
		}
	}
}

// monotonic reads CLOCK_MONOTONIC, which every process on the machine
// shares (Go's own monotonic clock counts from each process's start).
func monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// fdEcho echoes 64-byte messages read on fd 3 to fd 4.
func fdEcho(ipcArg) error {
	in, out := os.NewFile(3, "in"), os.NewFile(4, "out")
	buf := make([]byte, 64)
	for {
		if _, err := io.ReadFull(in, buf); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		if _, err := out.Write(buf); err != nil {
			return err
		}
	}
}

// BenchmarkIPCLatency measures 64 B ping-pong; ns/op is the round trip.
// cella-parked, unix and pipe leave the echo process idle for parkGap
// before each ping, so that it is asleep in the kernel when the ping comes.
// cella-parked reports the one-way latency of that leg (stamped with
// CLOCK_MONOTONIC in both processes; the way back is caught by the
// sender's 20 µs poll); unix and pipe report half the round trip, both of
// whose legs wake a sleeping reader; cella-spinning, with no gap, reports
// half the round trip of two polling processes.
func BenchmarkIPCLatency(b *testing.B) {
	for _, mode := range []string{"parked", "spinning"} {
		b.Run("impl=cella-"+mode, func(b *testing.B) {
			b.ReportAllocs()
			name := ipcName(b, "lat")
			s, err := shm.CreateStore[ipc64](name, shm.StoreConfig{Slots: 16, Watch: -1,
				Edges: []message.Policy{{MaxItems: 4}, {MaxItems: 4}}})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			role := "shm-echo-parked"
			if mode == "spinning" {
				role = "shm-echo-spin"
			}
			cmd := startIPC(b, role, ipcArg{name, "", 0})
			ctx := context.Background()
			ping, pong := s.Edge(0), s.Edge(1)
			t, err := s.Put(message.Header{}, ipc64{})
			if err != nil {
				b.Fatal(err)
			}
			rtts := make([]int64, 0, b.N)
			roundTrip := func() {
				if err := ping.Send(ctx, t); err != nil {
					b.Fatal(err)
				}
				if mode == "spinning" {
					var ok bool
					for t, ok = pong.TryRecv(); !ok; t, ok = pong.TryRecv() {
					}
				} else if t, err = pong.Recv(ctx); err != nil {
					b.Fatal(err)
				}
			}
			roundTrip() // the echo process is attached
			var legs []int64
			b.ResetTimer()
			for range b.N {
				if mode == "parked" {
					b.StopTimer()
					time.Sleep(parkGap)
					if err := s.Update(t, func(m *message.Message[ipc64]) {
						binary.LittleEndian.PutUint64(m.Payload[:], uint64(monotonic()))
					}); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				start := time.Now()
				roundTrip()
				rtts = append(rtts, int64(time.Since(start)))
				if mode == "parked" {
					var leg int64
					_ = s.View(t, func(m *message.Message[ipc64]) { leg = int64(binary.LittleEndian.Uint64(m.Payload[8:])) })
					legs = append(legs, leg)
				}
			}
			b.StopTimer()
			_ = ping.Close()
			_ = cmd.Wait()
			_ = s.Free(t)
			if mode == "parked" {
				reportPercentiles(b, legs)
			} else {
				reportOneWay(b, rtts)
			}
		})
	}
	for _, kind := range []string{"unix", "pipe"} {
		b.Run("impl="+kind, func(b *testing.B) {
			b.ReportAllocs()
			var rd, wr *os.File // ours
			var cmd *exec.Cmd
			if kind == "unix" {
				fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
				if err != nil {
					b.Fatal(err)
				}
				mine, theirs := os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
				cmd = startIPC(b, "fd-echo", ipcArg{"", "", 0}, theirs, theirs)
				theirs.Close()
				rd, wr = mine, mine
			} else {
				toR, toW, err := os.Pipe()
				if err != nil {
					b.Fatal(err)
				}
				fromR, fromW, err := os.Pipe()
				if err != nil {
					b.Fatal(err)
				}
				cmd = startIPC(b, "fd-echo", ipcArg{"", "", 0}, toR, fromW)
				toR.Close()
				fromW.Close()
				rd, wr = fromR, toW
			}
			buf := make([]byte, 64)
			rtt := func() {
				if _, err := wr.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(rd, buf); err != nil {
					b.Fatal(err)
				}
			}
			rtt()
			rtts := make([]int64, 0, b.N)
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				time.Sleep(parkGap) // as for cella-parked: the echo process sleeps in read
				b.StartTimer()
				start := time.Now()
				rtt()
				rtts = append(rtts, int64(time.Since(start)))
			}
			b.StopTimer()
			wr.Close()
			rd.Close()
			_ = cmd.Wait()
			reportOneWay(b, rtts)
		})
	}
}

func reportOneWay(b *testing.B, rtts []int64) {
	if len(rtts) == 0 {
		return
	}
	slices.Sort(rtts)
	b.ReportMetric(float64(rtts[len(rtts)/2])/2, "ns/hop-p50")
	b.ReportMetric(float64(rtts[len(rtts)*99/100])/2, "ns/hop-p99")
}

// reportPercentiles reports measured one-way latencies as they are.
func reportPercentiles(b *testing.B, legs []int64) {
	if len(legs) == 0 {
		return
	}
	slices.Sort(legs)
	b.ReportMetric(float64(legs[len(legs)/2]), "ns/hop-p50")
	b.ReportMetric(float64(legs[len(legs)*99/100]), "ns/hop-p99")
}

// parkGap is how long the parked case leaves the receiver idle before each
// ping: beyond its 20 µs poll, so that it sleeps in FUTEX_WAIT.
const parkGap = 200 * time.Microsecond
