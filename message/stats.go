package message

// EdgeStats is a snapshot of an edge's counters and fill level. The
// counters are exact: each is updated under the edge's lock, or, for the
// lock-free sends and receives, derived from the ring's positions when
// the lock is next taken (fast.go). A SendBatch
// or RecvBatch counts like the Sends and Recvs of the tokens it moved,
// plus the one refusal that stopped a SendBatch (in Rejected or Invalid);
// a SendBatch that had to wait counts once in Waited.
type EdgeStats struct {
	Admitted   uint64 // sends that moved a reference in
	Rejected   uint64 // sends refused by policy (full, shed, expired, Size above MaxBytes), a closed edge or a done context
	Invalid    uint64 // sends refused for a bad token (nil, stale, foreign) or header (an unknown QoS)
	Evicted    uint64 // queued messages freed to make room (DropOldest, DeadlineQoS)
	Expired    uint64 // queued messages freed because their deadline passed
	Delivered  uint64 // receives that moved a reference out
	Late       uint64 // deliveries past their deadline (DegradeAllowed)
	Drained    uint64 // queued messages freed by Drain
	FreeErrors uint64 // HeaderStore.Free failures on tokens the edge owned
	Waited     uint64 // Block sends that found no room and waited for it (also one whose ctx was already done)

	Len       int       // queued tokens now
	Bytes     int64     // queued header bytes now
	HighWater int       // the most tokens ever queued at once
	Watermark Watermark // fill level now
}

// Stats returns a snapshot of the edge's counters.
func (e *Edge) Stats() EdgeStats {
	e.lock()
	defer e.unlock()
	s := e.st
	s.Invalid = e.invalid.Load()
	s.Len, s.Bytes = e.n, e.bytes
	s.Watermark = e.pol.level(e.n, e.bytes)
	return s
}
