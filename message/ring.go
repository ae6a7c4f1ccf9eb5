package message

import "github.com/cella-go/cella/token"

// queued is what an edge keeps per token: the header fields its decisions
// need, cached so that receiving never reads the slot again.
type queued struct {
	tok      token.Token
	seq      uint64 // admission order across all lanes of one edge
	deadline int64
	size     uint32
	flags    Flags
}

// ring is a FIFO of queued entries in a power-of-two buffer. It grows by
// doubling up to limit entries (0 = unlimited), so an edge with a large cap
// that is rarely full does not pay for the cap up front. Once grown, pushes
// and pops never allocate.
type ring struct {
	buf   []queued
	head  int // index of the oldest entry
	n     int
	limit int
}

const ringInitial = 64

func (r *ring) len() int { return r.n }

// front returns the oldest entry; the ring must not be empty.
func (r *ring) front() *queued { return &r.buf[r.head] }

// push appends an entry and returns it for the caller to fill in. Entries
// are filled field by field, not copied as a struct: a struct copy compiles
// to 16-byte moves that stall on the 8-byte stores just made to the source.
func (r *ring) push() *queued {
	if r.n == len(r.buf) {
		r.grow()
	}
	q := &r.buf[(r.head+r.n)&(len(r.buf)-1)]
	r.n++
	return q
}

// insertBySeq puts q back in admission order: before the entries with a
// higher seq (the ring is in seq order). It shifts the entries after it;
// only a rare path uses it.
func (r *ring) insertBySeq(q *queued) {
	r.push()
	i := r.n - 1
	for ; i > 0 && r.at(i-1).seq > q.seq; i-- {
		*r.at(i) = *r.at(i - 1)
	}
	*r.at(i) = *q
}

// pop removes the oldest entry and returns it; the pointer is valid until
// the next push. Entries hold no Go pointers, so the slot is not cleared.
func (r *ring) pop() *queued {
	q := &r.buf[r.head]
	r.head = (r.head + 1) & (len(r.buf) - 1)
	r.n--
	return q
}

// at returns the i-th oldest entry.
func (r *ring) at(i int) *queued { return &r.buf[(r.head+i)&(len(r.buf)-1)] }

func (r *ring) grow() {
	size := 2 * len(r.buf)
	if size == 0 {
		size = ringInitial
		if r.limit > 0 && r.limit < size {
			size = ceilPow2(r.limit)
		}
	}
	nb := make([]queued, size)
	for i := 0; i < r.n; i++ {
		nb[i] = *r.at(i)
	}
	r.buf, r.head = nb, 0
}

// compact keeps, in order, the entries for which drop returns false.
// Entries for which it returns true are removed; drop sees each entry once.
func (r *ring) compact(drop func(*queued) bool) {
	kept := 0
	for i := 0; i < r.n; i++ {
		q := r.at(i)
		if drop(q) {
			continue
		}
		if kept != i {
			*r.at(kept) = *q
		}
		kept++
	}
	for i := kept; i < r.n; i++ {
		*r.at(i) = queued{}
	}
	r.n = kept
}

func ceilPow2(n int) int {
	p := 1
	for p < n {
		p <<= 1
	}
	return p
}
