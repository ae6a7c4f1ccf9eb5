// Package bench puts cella beside the allocators a Go program uses today,
// with `go test -bench`. It has no API: everything is in its benchmarks and
// in the report command.
//
// # Implementations
//
// Each lives in its own small file and is written the way Go users write it:
//
//   - cella: an arena.Arena (peer_cella.go); its pair loops call Alloc and
//     Free directly.
//   - syncpool: sync.Pool Get + type assertion + reset, Put.
//   - mutex: a preallocated []T and a slice of free indices behind one
//     sync.Mutex.
//   - chan: a preallocated []T and a buffered channel of free indices.
//   - treiber: ONE shared lock-free stack of free indices over a preallocated
//     []T; its 64-bit head packs a 32-bit ABA tag and a 32-bit index, links
//     are a []uint32. This is the single-global-freelist design that cella's
//     per-P shards replace.
//   - heap: new(T) every time; "free" drops the object into a per-goroutine
//     ring of 8 MiB worth of objects, so the GC always has a live set to mark
//     and garbage to sweep, and its cost is in the figure.
//   - For message hops, Go channels: pool handles sent over a buffered
//     channel, and chan-value, the payload itself sent by value; against
//     cella-edge, a message.Store token sent over a message.Edge.
//   - Between processes (ipc_test.go): a shm.Store and its edge in a
//     segment under /dev/shm, against a unix stream socket and a pipe
//     carrying the same bytes; the other process is this test binary,
//     re-executed.
//
// Every get returns a zeroed object, as cella's Alloc does. Payloads are
// pointer-free byte arrays of 16 B, 64 B, 1 KiB and 16 KiB; every benchmark
// writes the first and last word of each object it gets, so nothing can be
// optimised away. peers_test.go checks the peers under -race: no object is
// handed out twice, none is lost, the Treiber stack survives the ABA pattern.
//
// # Benchmarks
//
// Names are benchstat-friendly key=value paths (impl, payload, goroutines,
// live, ...). Every benchmark calls b.ReportAllocs.
//
//   - Pair: Alloc+Free on one goroutine, all payloads.
//   - PairParallel: the pair under RunParallel at goroutines = 1, 2, 4, ...
//     up to GOMAXPROCS (GOMAXPROCS is set to the goroutine count, so each
//     goroutine has a P), then 4x oversubscribed (SetParallelism(4)).
//   - StoreLoadFree: copy in, copy out, free (cella: Store, Load, Free).
//   - View, Update: shared and exclusive access to live objects, against a
//     per-object sync.RWMutex and an unsynchronised access (the floor).
//   - CrossP: one goroutine allocates, another frees: the remote-free path.
//   - Burst: take the whole capacity, give it all back; one goroutine
//     draining cella must steal from the other shards (steals/op).
//   - Hop: one message per send between two goroutines (Go channel, or
//     message.Edge for cella-edge).
//   - GC: one op is one forced runtime.GC() with 1M or 4M (16M with
//     -cella.big) live 64-byte messages in cella or on the heap, and with an
//     empty heap; also STW pause per cycle, live heap and RSS.
//   - GCChurn: with the same live sets, replace one message per op; reports
//     the GC's share of CPU and GC cycles per million ops.
//   - NewClose: New and Close of 2^27 and 2^30 64-byte slots; time and RSS
//     growth (lazy capacity).
//   - Machine: the machine's own costs, one goroutine: an uncontended locked
//     instruction on a private word (op=locked-xadd, locked-cas,
//     locked-xchg; op=plain-add as the baseline) and shard.Pin+Unpin
//     (op=procpin): they are why ratios against sync.Pool move between
//     machines. Then what sets the floor under the message ratios: one
//     read of the clock Put stamps Created with (op=clock-stamp), and one
//     cache line passed between two goroutines' cores and back
//     (op=line-roundtrip, two Ps). The report prints them in its header.
//
// The pair loops are methods of each concrete implementation, so no one
// pays for interface dispatch there. The other workloads drive every
// implementation through the small pool interface (about 1-2 ns per call,
// the same for all), except where cella's own API is the point (Store,
// Load, View, Update).
//
// # Rerunning
//
// The whole suite, with benchstat and a results page, in about five
// minutes on two cores:
//
//	go run ./bench/cmd/report
//
// It writes bench/results/<machine>.md (medians, ratios against sync.Pool,
// the GC headline, benchstat output), <machine>.svg (ns/op against
// goroutines, per implementation) and <machine>.txt (raw output, to compare
// two machines or two commits with benchstat). Flags: -count, -benchtime,
// -big (16M live messages), -skip-gc, -skip-suite, -out, -machine.
//
// By hand:
//
//	go test -run '^$' -bench 'Pair' -count 10 ./bench/ | tee new.txt
//	benchstat -col /impl new.txt
//	go test -run '^$' -bench '^BenchmarkGC$/impl=cella/live=4M' -benchtime 10x ./bench/
//	go test -race -run . ./bench/   # the peers' correctness tests
//
// The floor under the cross-process latency figures (one shared word
// ping-ponged by two spinning processes; half the round trip is one cache
// line moving between their cores):
//
//	go run ./bench/cmd/pingfloor
//
// Run each GC case in its own process (as the report command does) when the
// RSS figure matters: a process that has held 4M heap objects keeps some of
// that memory.
package bench
