// Package shard hands out slot indices from per-P shards. It knows nothing of
// the memory behind the indices: the arena owns that and lends the shard set
// one link word per slot.
//
// # Shards
//
// A Set splits the indices [0, slots) into contiguous ranges, one per shard.
// Each shard hands out indices two ways:
//
//   - its freelist: a Treiber stack of recycled indices whose head packs a
//     32-bit tag with index+1 in one 64-bit word. Every successful push or pop
//     bumps the tag, so a CAS that read an old head fails even if the same
//     index is back on top (the ABA problem). The tag can only fool a CAS if
//     exactly 2^32 operations happen on one shard between the load and the
//     CAS of one pop, while that goroutine is stalled.
//   - its frontier: the next never-used index of its range. Indices above the
//     frontier have never been touched, so New costs nothing per slot and a
//     huge arena commits memory only as it is used.
//
// # Which shard
//
// A goroutine uses the shard of the P it runs on (Pin returns the P id, with
// runtime.procPin as sync.Pool does; the purego build picks a random stripe).
// P ids beyond the shard count wrap around, so raising GOMAXPROCS after New is
// safe.
//
// Pop tries the home freelist, then, once the home shard has handed out a
// budget of never-used slots (SetFreshFirst; the arena gives 256 KiB of
// slots), recycles: it takes the whole freelist of another shard of its
// own part (its own NUMA node), looking first at the one it took from last
// and at no more than a few others per call (a load of each head; two CASes
// and one link read for the take, whatever the list's length). Only then
// does it use the home frontier, and after that
// it steals: it visits the other shards in turn and takes a batch from the
// first that has anything, freelist first, then frontier. From a shard of
// its own part that steal takes the whole freelist with one CAS on the
// victim's head, keeps the top 2×StealBatch (the slots freed last, hot in
// the caches), makes them its own list with one CAS on its head and gives
// the rest back with one more; across parts it takes StealBatch slots, and
// from a frontier StealBatch too. One slot is returned and the rest go onto
// the home freelist, so the next allocations are local again.
//
// Recycling before the frontier is what keeps a producer/consumer pair on
// two Ps (the consumer's frees land on its own shard, see Push) within the
// slots in flight and the budget: with the frontier first, the producer
// took every never-used slot of its range before it reused one, and the
// memory in use grew towards Capacity. The budget lets a freed slot's
// lines leave the core that freed them before they are written again
// (reusing them at once cost a 64-byte pipeline a tenth of its speed).
// Its lists stay short (what was freed since the last take), which is why
// it may take them whole.
//
// # When Pop says empty
//
// One pass over the shards cannot prove them empty: it looks at them one
// after the other, and a free slot can move from a shard it has not reached
// to one it has passed (a home Pop on the first, a Push on the second), so
// every look sees an empty shard while a slot is free at every instant. So a
// Pop that finds nothing looks at every shard again and compares: the sum of
// the freelist tags it read (every push and pop bumps a head's tag, so equal
// sums mean no empty list received anything in between), and a word that
// counts steals in progress and done (a thief carries its batch between two
// shards, where no look sees it). If nothing changed, there was an instant
// between the two passes at which every shard was empty and no thief held a
// batch: Pop reports empty (ok false, src not Busy), and that is exact. If
// something changed it looks once more, and then reports Busy: slots were
// moving, one may be free, and the caller backs off and asks again.
//
// The check costs the writers nothing: Push and the home Pop do exactly the
// one CAS they always did. A counter bumped by pushes onto empty freelists
// would have spared the second pass, but at the price of a locked add on a
// shared word in Push right after each Pop that empties the home list. The
// second pass costs only Pops that find nothing, which are the rare ones
// (the arena is full or nearly so).
//
// Push puts a freed index on the freeing goroutine's home shard, not on the
// shard the index came from. The slot's cache lines are hot on this core,
// and a producer/consumer pair on two Ps then costs the producer one
// recycle (two CAS) each time it has used up what the consumer freed,
// instead of one contended CAS on the producer's head per free.
//
// # Links, and handing lists out
//
// A free slot's link (index+1 of the next one, 0 at the end) is a uint32 in
// memory the caller lends: the arena gives the low half of each slot's
// state word and a flag bit (SetLinkFlag) that the Set ORs into every link
// it writes, so the arena can tell a linked free slot from a freed one that
// callbacks still hold. Detach takes a shard's whole list for a caller that
// works on the free slots themselves (the arena's Trim) and Reattach gives
// it back; in between, the Set counts a steal in progress, so Pop reports
// Busy rather than empty.
//
// # Gate
//
// A Gate makes it safe to unmap memory while other goroutines may still be
// calling in; see its documentation.
package shard
