// IPC: two processes share one message store. This process creates the
// segment and produces quotes; it starts a consumer process (itself,
// re-executed) that attaches by name, receives each quote's token through a
// shared edge, reads the quote in place (no copy, no socket) and frees it.
// Then a second consumer is killed with SIGKILL in the middle of the stream,
// and the producer's Recover reclaims everything the dead process held.
//
//	go run ./examples/ipc
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/shm"
	"github.com/cella-go/cella/token"
)

// Quote is the payload: pointer-free, the same type in both processes.
type Quote struct {
	Symbol [8]byte
	Bid    int64
	Ask    int64
}

const quotes = 200_000

func main() {
	if len(os.Args) == 3 && os.Args[1] == "consume" {
		consume(os.Args[2])
		return
	}
	name := "ipc-demo-" + strconv.Itoa(os.Getpid())
	s, err := shm.CreateStore[Quote](name, shm.StoreConfig{
		Slots: 4096,
		Edges: []message.Policy{{MaxItems: 1024}}, // Block: the producer waits when the consumer lags
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("segment %s: %d message slots, 1 edge\n", s.Path(), s.Capacity())

	// Round 1: a consumer that runs to the end.
	cmd := startConsumer(name)
	start := time.Now()
	produce(s, quotes)
	if err := s.Edge(0).Close(); err != nil { // the consumer drains, then stops
		log.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		log.Fatalf("consumer: %v", err)
	}
	el := time.Since(start)
	fmt.Printf("round 1: %d quotes producer -> consumer in %v (%.0f ns per quote, Put+Send+Recv+View+Free)\n",
		quotes, el.Round(time.Millisecond), float64(el.Nanoseconds())/quotes)
	fmt.Printf("round 1: free slots %d of %d\n", s.Available(), s.Capacity())

	// Round 2: the consumer is killed with SIGKILL while it holds messages.
	if err := s.Close(); err != nil { // the last process to close removes the segment
		log.Fatal(err)
	}
	name += "-2"
	if s, err = shm.CreateStore[Quote](name, shm.StoreConfig{Slots: 4096, Edges: []message.Policy{{MaxItems: 1024}},
		Watch: -1}); err != nil {
		log.Fatal(err)
	}
	cmd = startConsumer(name)
	go func() {
		time.Sleep(20 * time.Millisecond)
		_ = cmd.Process.Kill()
	}()
	sent := produceUntilStuck(s)
	_ = cmd.Wait()
	fmt.Printf("round 2: consumer killed after the producer sent %d quotes; free slots before recovery: %d\n",
		sent, s.Available())
	rep, err := s.Recover()
	if err != nil {
		log.Fatal(err)
	}
	drained := s.Edge(0).Drain()
	fmt.Printf("round 2: recovered %d dead process, %d messages it held freed, %d queued ones drained; free slots %d of %d\n",
		rep.Dead, rep.Reclaimed, drained, s.Available(), s.Capacity())
	if err := s.Close(); err != nil {
		log.Fatal(err)
	}
	if _, err := os.Stat(s.Path()); errors.Is(err, os.ErrNotExist) {
		fmt.Println("segments removed: nothing left in", shm.DefaultDir)
	}
}

func startConsumer(name string) *exec.Cmd {
	exe, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	cmd := exec.Command(exe, "consume", name)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	return cmd
}

func produce(s *shm.Store[Quote], n int) {
	ctx := context.Background()
	for i := 1; i <= n; i++ {
		t, err := s.PutWait(ctx, message.Header{Seq: uint64(i)}, Quote{Symbol: [8]byte{'A', 'C', 'M', 'E'}, Bid: int64(i), Ask: int64(i) + 2})
		if err != nil {
			log.Fatal(err)
		}
		if err := s.Edge(0).Send(ctx, t); err != nil {
			log.Fatal(err)
		}
	}
}

// produceUntilStuck sends until the edge stays full for 200ms (its
// consumer is gone) and returns how many it sent.
func produceUntilStuck(s *shm.Store[Quote]) int {
	for i := 1; ; i++ {
		t, err := s.Put(message.Header{Seq: uint64(i)}, Quote{Bid: int64(i)})
		if err != nil {
			log.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err = s.Edge(0).Send(ctx, t)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			_ = s.Free(t)
			return i - 1
		}
		if err != nil {
			log.Fatal(err)
		}
	}
}

func consume(name string) {
	s, err := shm.AttachStore[Quote](name, shm.StoreConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	var n, spread int64
	// Keep the last 64 quotes (a moving window, say): held references are
	// what a crash would leave behind.
	var window []token.Token
	for {
		t, err := s.Edge(0).Recv(ctx)
		if errors.Is(err, message.ErrEdgeClosed) {
			break
		}
		if err != nil {
			log.Fatal(err)
		}
		if err := s.View(t, func(m *message.Message[Quote]) {
			if m.Payload.Bid != int64(m.Header.Seq) {
				log.Fatalf("quote %d carries bid %d", m.Header.Seq, m.Payload.Bid)
			}
			spread += m.Payload.Ask - m.Payload.Bid
		}); err != nil {
			log.Fatal(err)
		}
		if window = append(window, t); len(window) > 64 {
			if err := s.Free(window[0]); err != nil {
				log.Fatal(err)
			}
			window = window[1:]
		}
		n++
	}
	for _, t := range window {
		if err := s.Free(t); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Printf("consumer %d: %d quotes received and checked, mean spread %.1f\n", os.Getpid(), n, float64(spread)/float64(n))
}
