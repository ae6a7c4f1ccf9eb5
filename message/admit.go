package message

import "math"

// admitLocked decides what happens to q, bound for lane. It returns true once
// q is queued, an error when the policy refuses it, and (false, nil) when
// the caller may wait for room (Block only).
func (e *Edge) admitLocked(q *queued, lane int) (bool, error) {
	p := &e.pol
	size := int64(q.size)
	if p.Admission == DeadlineQoS && lane == laneBackground && p.softReached(e.n, e.bytes) {
		// Expired messages do not count towards the soft cap either: free
		// them first (one comparison when none can have expired).
		if !e.reapExpiredLocked(Now()) || p.softReached(e.n, e.bytes) {
			return false, errShedBackground
		}
	}
	if p.fits(e.n, e.bytes, size) {
		e.enqueueLocked(q, lane)
		return true, nil
	}
	// At a hard cap. Expired messages are dead weight in every mode: free
	// them before waiting, refusing or evicting live ones.
	if e.reapExpiredLocked(Now()) && p.fits(e.n, e.bytes, size) {
		e.enqueueLocked(q, lane)
		return true, nil
	}
	switch p.Admission {
	case Block:
		return false, nil
	case DropNewest:
		return false, errFullDropNewest
	case DropOldest:
		// check() guaranteed size <= MaxBytes, so evicting everything fits.
		for !p.fits(e.n, e.bytes, size) && e.n > 0 {
			e.evictLocked(e.oldestLaneLocked())
		}
	case DeadlineQoS:
		if !e.canEvictForLocked(lane, size) {
			return false, errFullNoVictim
		}
		for l := laneBackground; l <= lane && !p.fits(e.n, e.bytes, size); l++ {
			for e.lanes[l].len() > 0 && !p.fits(e.n, e.bytes, size) {
				e.evictLocked(l)
			}
		}
	}
	e.enqueueLocked(q, lane)
	return true, nil
}

// canEvictForLocked reports whether evicting every message of lanes up to
// and including lane would make room for size bytes.
func (e *Edge) canEvictForLocked(lane int, size int64) bool {
	items, bytes := 0, int64(0)
	for l := laneBackground; l <= lane; l++ {
		items += e.lanes[l].len()
		bytes += e.laneBytes[l]
	}
	return e.pol.fits(e.n-items, e.bytes-bytes, size)
}

// oldestLaneLocked returns the non-empty lane whose head was admitted first.
func (e *Edge) oldestLaneLocked() int {
	best, bestSeq := -1, uint64(math.MaxUint64)
	for l := range e.lanes {
		if e.lanes[l].len() > 0 && e.lanes[l].front().seq < bestSeq {
			best, bestSeq = l, e.lanes[l].front().seq
		}
	}
	return best
}

func (e *Edge) evictLocked(lane int) {
	q := e.removeLocked(lane)
	e.st.Evicted++ // counted before the Free (exitLocked)
	e.freeLocked(q.tok)
}

// reapExpiredLocked frees every queued message that has expired (and may
// expire) and reports whether it freed any. It costs one comparison when no
// queued message can have expired yet.
func (e *Edge) reapExpiredLocked(now int64) bool {
	if now <= e.minDeadline {
		return false
	}
	before := e.n
	next := int64(math.MaxInt64)
	for l := range e.lanes {
		// Remove them first, then free them: the edge is whole at every
		// Free (exitLocked).
		reaped := e.reaped[:0]
		var bytes int64
		e.lanes[l].compact(func(q *queued) bool {
			if q.deadline == 0 || q.flags.Has(DegradeAllowed) {
				return false
			}
			if now > q.deadline {
				reaped = append(reaped, *q)
				bytes += int64(q.size)
				return true
			}
			if q.deadline < next {
				next = q.deadline
			}
			return false
		})
		e.reaped = reaped[:0]
		if len(reaped) == 0 {
			continue
		}
		e.n -= len(reaped)
		e.bytes -= bytes
		e.laneBytes[l] -= bytes
		e.st.Expired += uint64(len(reaped))
		e.reapLane = l
		for i := range reaped {
			e.reapLeft = reaped[i+1:]
			e.freeLocked(reaped[i].tok)
		}
		e.reapLeft = nil
	}
	e.minDeadline = next
	return e.n < before
}
