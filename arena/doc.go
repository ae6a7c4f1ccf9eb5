// Package arena is cella's allocator: a fixed-capacity store of T values in
// off-heap memory, sharded per P, handed out as generation-checked tokens.
//
//	a, _ := arena.New[Order](arena.Config{Slots: 1 << 20})
//	tok, _ := a.Store(Order{ID: 7})
//	o, _ := a.Load(tok)
//	a.Free(tok)
//	_, err := a.Load(tok) // errors.Is(err, arena.ErrStale)
//
// # Memory layout
//
// New maps two anonymous regions with memclass.Map: the payloads, Slots ×
// sizeof(T) bytes in the arena's class, packed at T's own size; and the
// metadata, in two page-aligned parts, the state words (8 bytes per slot)
// and the versions (4 bytes per slot), plus the freelist links (4 bytes per
// slot) for arenas too large to keep them in the state words:
//
//	payloads: | T slot 0 | T slot 1 | T slot 2 | ...
//	states:   | gen | alloc | writer | linked | readers or freelist link |  (uint64 per slot)
//	versions: | uint32 per slot, advanced by Update (Load's seqlock)
//
// Nothing is committed until a slot is used. Keeping them apart lets Trim
// hand the payload and version pages of free slots back to the kernel while
// their state words (generation: stale detection; freelist link) stay, and
// packs the state words densely for the scans of Close, Tokens and Trim.
// After a burst of 64-byte slots is 99% freed, Trim leaves 8 bytes per slot
// and the live slots resident.
//
// The payload type must hold no Go pointers (New checks it with reflect): the
// garbage collector never scans this memory, which is the point — millions of
// live values cost a GC cycle nothing.
//
// # Slot lifecycle
//
// The state word packs generation (32 bits), an allocated bit, a writer bit
// and a 30-bit reader count (see slot.go). Tokens carry the index and the
// generation they were issued with.
//
//	never used ──Alloc──▶ allocated(gen g) ──Free──▶ free(gen g+1) ──Alloc──▶ allocated(gen g+1) …
//	                         │  View: readers+1 … readers-1
//	                         │  Update: writer bit, waits for readers to leave
//
// Free clears the allocated bit and advances the generation in one CAS, so
// every copy of the token is stale from that instant. If a View or Update
// callback still holds the slot, the slot goes back to a freelist when the
// last holder leaves, not before. A slot whose generation would wrap is
// retired: it leaves Capacity and is never reused, so a token can never match
// a slot twice. Recycled slots are zeroed by Alloc (unless Config.NoZero:
// message.Store's Put writes the whole slot anyway).
//
// Each arena starts its generations at a random base, so a token from another
// arena fails the generation check with high probability; a token can't name
// memory outside the arena, because its index is checked against Slots first.
//
// # Hot-path budget
//
// Locked instructions (CAS, XADD, XCHG) are what an allocator pays for on
// a machine with expensive atomics (about 5-10 ns each on this project's
// build machines; sync.Pool's fast path has none). The budget, in the
// default build:
//
//   - Alloc from the P's cache: pin (no atomic), one load of the closed
//     flag, the cache word cleared with a plain store, the P's steal word
//     read with a plain load, the slot claimed with a plain store of its
//     state word, a plain per-P counter, unpin. No locked instruction (see
//     cache.go for why thieves cannot take the same slot).
//   - Free: pin, one CAS on the state word (it checks the generation,
//     advances it, sees holders, and lets one of two racing Frees win), the
//     slot parked in the P's cache with plain stores, unpin. One locked
//     instruction, so an Alloc+Free pair has one. The CAS is first tried
//     blind, expecting a live slot with no holders (blindCAS in slot.go):
//     no load before it, so a line another core wrote last is fetched
//     once, for writing, not twice.
//   - Alloc with an empty cache: one CAS to pop the shard's freelist (or
//     advance its frontier) and a plain store to claim the slot.
//   - Load: pin, read the state word and the slot's version, copy, read
//     both again (a seqlock), unpin. No write to shared memory, no locked
//     instruction; it copies again only if an Update ran meanwhile. Values
//     over 4 KiB (and every value under the race detector) are copied under
//     a reader hold instead (two locked instructions), so Updates cannot
//     starve a long copy.
//   - View: one CAS to take a reader hold (pinned; tried blind first, as
//     Free's), the callback, one XADD to drop it (unpinned: the hold is
//     what keeps Close waiting). Update:
//     one CAS to set the writer bit, the callback, a plain version bump,
//     one XADD to drop the bit. sync.RWMutex pays one XADD each way.
//   - LoadInto: Load into a temporary and one copy out for values up to
//     256 bytes; one copy under a reader hold above.
//
// Nothing on these paths allocates, whatever the size of T (values over
// 4 KiB are cleared and copied through byte views, because a typed
// temporary of more than 128 KiB would be put on the heap); ErrFull and
// ErrClosed are returned bare so that back-pressure does not allocate
// either.
//
// A dry shard that has handed out 256 KiB of never-used slots (at least
// 64; freshBudget) first recycles: it takes the whole freelist of another
// shard of its node (two CASes) before it uses more never-used slots of its
// own, so a producer/consumer stream keeps reusing the slots in flight
// instead of committing the arena. Past its frontier it steals (the top 64 of the
// victim's freelist on its own node, in three CASes whatever the list's
// length; else a batch of 32). Both count on a shared steal word (steals
// in progress and completed); that word is written only by steals, never
// on the fast path.
// An Alloc that finds every shard and every cache empty decides ErrFull
// with a double collect (see cache.go), and looks again, instead of
// reporting ErrFull, while slots were moving.
//
// # NUMA
//
// With memclass.PerNode, the slots are split into one part per node (one
// region, each part bound to its node) with shards of its own; see Nodes,
// Residency and pernode.go. Per-node arenas do not use the per-P cache, so
// a freed slot always goes back to a shard of its own node.
//
// # Close
//
// Every call that touches the memory runs inside a shard.Gate section (a
// pinned stretch of code). Close marks the gate closed, waits one grace
// period (a brief stop-the-world, which cannot complete while a goroutine is
// pinned), waits for a running Trim and for View and Update callbacks still
// running to return, waits one more grace period, and unmaps. No call can
// fault on unmapped memory.
//
// # Waiting for a slot, iterating live slots
//
// AllocWait and StoreWait park a caller that finds the arena full in a FIFO
// of waiters (a mutex and one channel per waiter, made only when it waits).
// Every operation that makes a slot free again loads one counter of waiters
// after its gate section ends, and takes the slow path (wake the first waiter)
// only when it is non-zero; the waiter side pays for the memory ordering with
// one membarrier(2) per wait. See wait.go for the lost wake-up argument.
// Tokens reads state words a chunk at a time inside gate sections, only in
// the part of each shard ever handed out, and yields unpinned (tokens.go).
//
// # Stats
//
// Counters are per P, in off-heap memory, and incremented without atomics by
// the goroutine pinned to that P; Stats sums them. Available is Capacity less
// (Allocs − Frees), so no hot counter is shared by all Ps.
package arena
