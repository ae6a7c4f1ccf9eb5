// Package shm puts cella's arena and message store in shared memory, so
// that several processes allocate, read and pass the same slots, zero-copy.
// A token is a slot index and a generation, not a pointer: it means the
// same thing in every process that maps the segment.
//
//	// process A
//	s, _ := shm.CreateStore[Quote]("feed", shm.StoreConfig{
//		Slots: 1 << 16,
//		Edges: []message.Policy{{MaxItems: 4096}},
//	})
//	t, _ := s.Put(message.Header{}, Quote{Bid: 101})
//	_ = s.Edge(0).Send(ctx, t)
//
//	// process B
//	s, _ := shm.AttachStore[Quote]("feed", shm.StoreConfig{})
//	t, _ := s.Edge(0).Recv(ctx)
//	_ = s.View(t, func(m *message.Message[Quote]) { use(m.Payload) })
//	_ = s.Free(t)
//
// Arena (Create, Attach) is arena.Arena across processes: Alloc, Free,
// Load, LoadInto, Store, View, Update, AllocWait, with the same guarantees
// (exact ErrFull, stale tokens stale everywhere, no slot handed out twice)
// and the same sentinel errors. Store (CreateStore, AttachStore) is
// message.Store plus a fixed set of edges in the same segment, with
// message.Edge's lanes, caps, admission modes and counters, and Tokens
// over every process's messages. Neither has Trim: a slot's state word
// sits on the first line of the slot, so only the inner pages of slots
// larger than two pages could go back to the OS (by punching holes in the
// file), and taking a free slot out of every process's reach while its
// pages go is not built.
//
// # The segment
//
// A segment is a file under /dev/shm (Config.Dir), named "cella.<name>",
// sized once at Create and mapped MAP_SHARED by every process; or, with
// CreateMemfd and CreateStoreMemfd, an anonymous memory file sealed against
// resizing, handed to other processes as a file (File, then
// exec.Cmd.ExtraFiles or SendFile/RecvFile over a unix socket; they attach
// with AttachFile or AttachStoreFile) and freed by the kernel with its last
// user. tmpfs commits pages as they are touched. The layout, all offsets,
// never Go pointers:
//
//	header    magic, layout version, payload size, alignment and type
//	          fingerprint, capacity, region offsets, the recovery word,
//	          the count of slots retired at the generation wrap
//	records   one per attached process (at most MaxProcs): liveness,
//	          per-way section counters and way caches, hold entries
//	shards    freelist heads (tagged Treiber stacks) and frontiers
//	[Store]   a reference table per record, edge control blocks
//	slots     each on cache lines of its own (stride: 16 + sizeof(T)
//	          rounded up to 64 bytes): the 8-byte state word (generation,
//	          live, writer, pending, retired, owner, readers), the 4-byte
//	          freelist link and, in a Store, the 4-byte reference count,
//	          then the payload
//	[Store]   each edge's rings, one per lane
//
// A slot's words share its first cache line with the start of its payload
// (a message's header): a process that takes over a slot another process
// freed or wrote pulls that one line, not one from each of three arrays
// as well. The price is memory: a slot takes at least 64 bytes.
//
// Attach recomputes the layout from the header's own numbers and refuses a
// segment whose offsets, size, type (fields, offsets, size, alignment) or
// layout version differ (ErrMismatch, ErrCorrupt), before it uses any of it.
// Each process keeps what it learnt at Attach (ring sizes, policies) in its
// own memory, so a peer that scribbles on the header later cannot make it
// index outside the mapping.
//
// # Operations
//
// Every operation that changes shared words runs inside a section: a count
// on this process's record, opened before and closed after. A slot is
// taken from this process's cache for its P (a chain of slots it freed,
// 32 of which move to the home shard at a time, or a shard's whole freelist
// it took in one step), else the home shard, else any shard, else any
// process's cache. A chain on its way between a cache and a shard sits in
// its way's moving word meanwhile, so every free slot is always in a
// freelist, a cache or a moving word; ErrFull means two censuses in a row
// saw all of them empty and unchanged. Load copies under a reader count
// inside its section; View and Update write a hold entry into the record
// before taking their reader count or writer bit, and run the callback
// outside any section.
//
// # Ownership
//
// An Arena allocation is owned by the process that allocated it (Adopt
// moves it): if that process dies, the allocation is freed. A Store message
// is reference-counted, and each reference is owned by a process (its
// reference table) or by an edge (a queued entry). Put and Retain add one
// to this process; Send moves one into an edge; Recv moves one out to the
// receiving process; Free drops one of this process's. A process cannot
// Free or Send a reference it does not hold (ErrNotHeld): tokens travel
// between processes through edges, which is what keeps the ownership
// exact.
//
// # Crash model and recovery
//
// Any process may die at any instruction. Each holds an OFD lock on one
// byte of the segment file for its record; the kernel drops it when the
// process dies, so death is detected without PIDs (which get reused).
//
// A survivor recovers: it raises the header's recovering word (with its
// record), waits until no live process has a section open (operations that
// see the word raised close theirs and wait on it, a futex), and rebuilds
// everything that a half-done operation could have left inconsistent:
//
//   - allocations owned by dead processes are freed; Store references are
//     recounted from the live reference tables and the queued entries, and
//     a message nobody references any more is freed;
//   - every slot's reader count and writer bit are recomputed from the live
//     processes' hold entries, so the holds of the dead vanish;
//   - every freelist is rebuilt from the state words (a slot popped or
//     freed half-way is found again), minus the slots in live caches;
//   - each edge's lock is cleared, a compaction of expired entries that
//     its process left half-done is finished from its journal (which
//     always says which entries are queued: none twice, none freed), the
//     counts are recomputed from its rings, and the counters rebalanced
//     (Admitted = Delivered + Evicted + Expired + Drained + Len: entries a
//     dead process moved out without counting them count as drained);
//   - the waiters a dead process had parked on edges are uncounted (each
//     record keeps its part of every edge's waiter counts), so later sends
//     do not wake nobody with a syscall each;
//   - the dead records are cleared and their locks released for new
//     processes.
//
// The rebuild is idempotent: if the recovering process dies too, the next
// waiter that notices (its record's lock is free) takes over and runs it
// again. No lock is ever held across processes outside a section, so no
// survivor waits on a dead one for longer than it takes to notice.
//
// Recovery runs when: Attach finds a dead process; the watcher goroutine
// (Config.Watch, every 100ms by default) sees one; an operation has waited
// on a slot or an edge lock for 20ms; or the program calls Recover. A
// survivor that wants the cleanup at a known moment calls Recover itself
// and gets a Recovery report.
//
// Close detaches this process: an Arena's remaining allocations stay
// (owned by nobody), a Store's remaining references are dropped (Close then
// reports message.ErrReferenced). The last process to close removes the
// file; a file whose processes all died is found by the next Create of the
// name and replaced.
//
// # Limits
//
//   - MaxProcs (64) processes at once; holdsPerProc (4096) View/Update
//     callbacks running at once per process.
//   - A blocked receiver or sender sleeps in FUTEX_WAIT on its OS thread
//     (after polling for 20us): many blocked goroutines hold many threads.
//   - Senders waiting for room on a full Block edge are not served in FIFO
//     order as message.Edge serves them: they are all woken and race.
//   - /dev/shm files cannot be sealed: a process that truncates a segment
//     under its peers makes them fault (SIGBUS) when they touch the lost
//     pages. cella never truncates; where other code might, use a memfd
//     segment (CreateMemfd), which nobody can resize. Container runtimes
//     often give /dev/shm only 64 MiB (docker run --shm-size raises it).
package shm
