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
// New maps one anonymous region of Slots × stride bytes with memclass.Map.
// Nothing is committed until a slot is used. Each slot is a 16-byte header
// and the payload:
//
//	+--------------+-------------+----------+------------------------+
//	| state uint64 | link uint32 | (unused) | payload T ...          |
//	+--------------+-------------+----------+------------------------+
//	0              8             12         16                  stride
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
// a slot twice. Recycled slots are zeroed by Alloc.
//
// Each arena starts its generations at a random base, so a token from another
// arena fails the generation check with high probability; a token can't name
// memory outside the arena, because its index is checked against Slots first.
//
// # Hot-path budget
//
// In the default build, Alloc is: pin to the P (no atomic), one load of the
// closed flag, then — when the P's one-slot cache holds a freed slot, which
// it does in any alloc/free loop — one CAS on that slot's state word to claim
// it, a plain clear of the cache word, a plain increment of a per-P counter,
// unpin. Free is: pin, one CAS on the state word, a plain store of the slot
// into the P's cache if it is empty (else one CAS to push onto the shard's
// freelist), a plain per-P increment, unpin. So an Alloc+Free pair is two
// locked instructions, both on the slot's own line. When the cache is empty,
// Alloc pops the shard's freelist with one CAS (or advances its frontier)
// and claims the slot with one plain store of the state word. Load takes
// and drops a hold with one CAS and one atomic add on the state word, and
// copies the value once, straight into its result; View and Update do the
// same around the callback. Nothing on these paths allocates; ErrFull and
// ErrClosed are returned bare so that back-pressure does not allocate either.
//
// The per-P cache stays reachable by every other P (see cache.go): a slot
// is claimed from a cache only by a CAS of its state word from the exact
// free state the cache recorded, and Alloc scans every cache before it
// reports ErrFull, so "full" still means full, with no wait on the cache's
// owner and no stop-the-world.
//
// A dry shard steals (a batch of 32) under a shared steal word that counts
// steals in progress and completed; an Alloc that found every shard empty
// while slots were in a thief's hands looks again instead of reporting
// ErrFull. That word is written only by steals, never on the fast path.
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
// pinned), waits for View and Update callbacks still running to return, waits
// one more grace period, and unmaps. No call can fault on unmapped memory.
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
