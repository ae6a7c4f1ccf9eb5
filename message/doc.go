// Package message is cella's message runtime: messages stored off-heap in an
// arena, token-only edges with caps and admission policies, two priority
// lanes, deadlines, zero-copy fan-out, and a small graph runner.
//
// # Pieces
//
//   - Header and Message: fixed-size, pointer-free metadata (trace, sequence,
//     creation time, deadline, QoS, flags, size) stored in the slot next to
//     the payload. Now is the clock of Created and Deadline.
//   - Store: messages in an arena.Arena, addressed by generation-checked
//     tokens and reference counted. ByteStore is a Store of variable-length
//     byte messages in fixed-capacity slots ([64]byte ... [65536]byte),
//     with Header.Size as the used length.
//   - Edge: a bounded MPMC queue of tokens with item and byte caps, a
//     watermark, an Admission mode, two QoS lanes and deadline expiry. It
//     reads headers (through HeaderStore), never payloads.
//   - Graph: sources, stages and sinks with N workers each, wired by edges,
//     with fan-out, graceful Stop and error propagation. Run rejects a
//     cycle (ErrGraphCycle) and an edge built on another store.
//
// # Batches, fan-out, receive loops and deadlines
//
//   - Edge.SendBatch and Edge.RecvBatch move many tokens under one lock
//     acquisition and one wake-up, with the admission, lanes, caps,
//     deadlines and Stats of Send and Recv token by token. A refused token
//     stops a SendBatch: the caller keeps it and the rest. Graph workers
//     use them when several tokens are ready.
//   - SendAll fans one message out to several edges (one Retain per extra
//     edge) and always consumes the caller's reference.
//   - Edge.All is a range-over-func receive loop that ends when the edge is
//     closed and empty or the context is done.
//   - Header.SetDeadline, DeadlineAt and DeadlineFromContext convert
//     deadlines from Go's clocks (time.Time, a context's deadline) to the
//     Now clock of Header.Deadline; Header.DeadlineTime converts back.
//
// # Ownership
//
// Every token a Store hands out carries references, and every reference has
// exactly one owner at a time:
//
//   - Put returns one reference, owned by the caller.
//   - A successful Send/TrySend moves one reference into the edge. A send
//     that returns any error leaves it with the caller.
//   - Recv/TryRecv move one reference from the edge to the receiver.
//   - What an edge evicts (DropOldest, DeadlineQoS) or expires, it frees.
//   - Fan-out: to put one token on k edges, Retain it k-1 times, then send
//     it on each edge; each refused send returns that share to the caller.
//     SendAll does all of this and frees the refused shares. The slot is
//     recycled when the last reference is freed.
//   - SendBatch moves the references of ts[:n] into the edge; the caller
//     keeps ts[n:]. RecvBatch moves dst[:n] out to the receiver.
//   - Close lets receivers drain an edge; tokens nobody drains stay owned by
//     the edge until Drain frees them. A Graph closes and drains its edges
//     when Run returns.
//   - Free drops one reference; one Free too many returns an error matching
//     arena.ErrStale and changes nothing.
//   - Closing order: close and drain the edges, free what you hold, then
//     Close the store. A Store.Close that finds references still
//     outstanding closes anyway and says so (ErrReferenced, with counts);
//     each of those references can still be freed once, Free returning
//     nil, so edges drained after their store was closed count no
//     FreeErrors. Every other call on a closed store returns
//     arena.ErrClosed.
//
// Following these rules, Store.Available returns to Store.Capacity once
// every holder is done, whatever mix of sends, receives, evictions,
// expiries, fan-outs and closes happened.
//
// # Invariants of an Edge
//
//   - Len never exceeds MaxItems and Bytes never exceeds MaxBytes (when set).
//   - A LatencyCritical message is received before any other queued
//     message; within each lane, order is admission order.
//   - A message past its deadline is never delivered, unless it carries
//     DegradeAllowed, in which case it is delivered and counted as late.
//   - Admitted = Delivered + Evicted + Expired + Drained + Len, at any quiet
//     moment.
//   - Sending and receiving allocate nothing. On an edge without byte caps
//     and not in DeadlineQoS mode, a BestEffort message without a deadline
//     is sent and received lock-free (a CAS on a ring) while no one waits
//     and nothing else is queued; every other case takes the edge's mutex
//     (fast.go). Waiting goroutines park on pooled waiters, in FIFO order,
//     and honour their context.
//
// # Errors
//
// Edges return ErrEdgeFull, ErrRejected, ErrExpired, ErrEdgeClosed and
// ErrBadPolicy; graphs ErrBadGraph, ErrGraphCycle and ErrNodeExited (a
// node function's panic comes back from Run as a *NodePanic panic, in the
// caller's goroutine); SendAll ErrNilEdge
// and ErrNilStore besides the edges' errors; stores return the arena's
// sentinels (arena.ErrFull, arena.ErrStale, arena.ErrBadToken,
// arena.ErrClosed, ...) and ErrReferenced. All are matched with errors.Is.
// An error that matches several sentinels reads with one "message:"
// prefix. A token that does not match a live message is reported as a
// "stale or foreign token": tokens carry no store identity, so a freed
// token and one from another store look alike. Bad input never panics and
// never loses a slot.
//
// # Safe to close
//
// A Store may be closed while other goroutines use it: every call returns
// a result or arena.ErrClosed, never a fault. Put writes the slot inside a
// section of the store's gate (a pinned stretch of code, no atomic write),
// PutFunc counts its fill on a per-P stripe, and Close waits for both, and
// for running View and Update callbacks, before it unmaps anything.
package message
