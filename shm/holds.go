package shm

import "sync"

// holdTable hands out this process's hold entries (record.holds). A View or
// Update callback runs outside any section, for as long as the user likes,
// so its hold must be written down where recovery can see it: recovery
// recomputes each slot's readers and writer bit from the live entries.
// Close waits for every entry to come back.
type holdTable struct {
	mu     sync.Mutex
	cond   sync.Cond
	free   []uint16
	init   bool
	used   int
	closed bool
}

// get returns a free entry, waiting while all are in use; ErrClosed once
// the arena is closing.
func (h *holdTable) get() (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.init {
		h.init = true
		h.cond.L = &h.mu
		h.free = make([]uint16, holdsPerProc)
		for i := range h.free {
			h.free[i] = uint16(holdsPerProc - 1 - i)
		}
	}
	for len(h.free) == 0 && !h.closed {
		h.cond.Wait()
	}
	if h.closed {
		return 0, ErrClosed
	}
	e := h.free[len(h.free)-1]
	h.free = h.free[:len(h.free)-1]
	h.used++
	return int(e), nil
}

func (h *holdTable) put(e int) {
	h.mu.Lock()
	h.free = append(h.free, uint16(e))
	h.used--
	h.mu.Unlock()
	h.cond.Broadcast()
}

// drain refuses new entries and waits until every entry is back.
func (h *holdTable) drain() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	if h.cond.L == nil {
		h.cond.L = &h.mu
	}
	h.cond.Broadcast()
	for h.used > 0 {
		h.cond.Wait()
	}
}
