package message

import (
	"fmt"
	"unsafe"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// ByteArray lists the fixed slot sizes a ByteStore offers. Go cannot make an
// array length a type parameter, so the sizes are enumerated: pick the
// smallest that holds your largest message. Named types with one of these
// underlying types work too.
type ByteArray interface {
	~[64]byte | ~[128]byte | ~[256]byte | ~[512]byte | ~[1024]byte |
		~[2048]byte | ~[4096]byte | ~[8192]byte | ~[16384]byte | ~[65536]byte
}

// ByteStore is a Store of variable-length byte messages in fixed-capacity
// slots of type B. Header.Size is the used length: it is what edges count
// against byte caps, and what Bytes-style accessors return. Everything Store
// offers (Header, Retain, Free, Available, ...) is available through the
// embedded *Store[B], so a *ByteStore is also a HeaderStore. PutBytes and
// Write set Size to the message length (0 included); Put and PutFunc,
// promoted from Store, know no length and take Size 0 as the whole slot.
type ByteStore[B ByteArray] struct {
	*Store[B]
}

// table is Store.table, nil for a nil byte store too.
func (s *ByteStore[B]) table() *metaTable {
	if s == nil {
		return nil
	}
	return s.Store.table()
}

// NewByteStore creates a byte store of cfg.Slots slots of type B.
func NewByteStore[B ByteArray](cfg arena.Config) (*ByteStore[B], error) {
	s, err := NewStore[B](cfg)
	if err != nil {
		return nil, err
	}
	return &ByteStore[B]{s}, nil
}

// SlotSize returns the capacity of one slot in bytes.
func (s *ByteStore[B]) SlotSize() int {
	var b B
	return len(bytesOf(&b))
}

// bytesOf views a byte array of any listed size as a slice, without copying.
func bytesOf[B ByteArray](b *B) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(b)), unsafe.Sizeof(*b))
}

// PutBytes stores a copy of data (one copy, straight into the slot) and sets
// h.Size to len(data), 0 included: a byte message's size is its length.
// Data longer than the slot fails with ErrTooLarge.
func (s *ByteStore[B]) PutBytes(h Header, data []byte) (token.Token, error) {
	if len(data) > s.SlotSize() {
		return token.Nil, fmt.Errorf("%w: %d bytes, slots hold %d", ErrTooLarge, len(data), s.SlotSize())
	}
	return s.putBytes(h, data)
}

// Write builds a message in place: fill receives the whole slot and returns
// how many bytes it used, which becomes h.Size. Use it to read from a socket
// or encode straight into the slot, with no intermediate buffer. If fill
// returns an error, or a length outside the slot, the slot is freed. Like
// PutFunc's fill, fill runs under an exclusive hold that a concurrent Close
// waits for.
func (s *ByteStore[B]) Write(h Header, fill func(slot []byte) (int, error)) (token.Token, error) {
	if s.gate.Closed() {
		return token.Nil, arena.ErrClosed
	}
	if fill == nil {
		return token.Nil, fmt.Errorf("message: Write: %w", arena.ErrNilFunc)
	}
	return s.putFunc(h, func(m *Message[B]) error {
		buf := bytesOf(&m.Payload)
		n, err := fill(buf)
		if err != nil {
			return err
		}
		if n < 0 || n > len(buf) {
			return fmt.Errorf("%w: fill reported %d bytes, slots hold %d", ErrTooLarge, n, len(buf))
		}
		m.Header.Size = uint32(n)
		return nil
	})
}

// Read runs fn with the message's header and its used bytes (the first
// Header.Size bytes of the slot), without copying. fn must not keep data,
// and must not modify it: other holders of a fanned-out token may be
// reading it at the same time.
func (s *ByteStore[B]) Read(t token.Token, fn func(h Header, data []byte)) error {
	if s.gate.Closed() {
		return arena.ErrClosed
	}
	if fn == nil {
		return fmt.Errorf("message: Read: %w", arena.ErrNilFunc)
	}
	return s.View(t, func(m *Message[B]) {
		fn(m.Header, used(m))
	})
}

// AppendTo appends the message's used bytes to dst and returns the result:
// one copy, out of the slot.
func (s *ByteStore[B]) AppendTo(dst []byte, t token.Token) ([]byte, error) {
	err := s.View(t, func(m *Message[B]) {
		dst = append(dst, used(m)...)
	})
	return dst, err
}

// Rewrite runs fn with exclusive access to the whole slot and the used
// length; fn returns the new used length. Every holder of the token sees
// the change.
func (s *ByteStore[B]) Rewrite(t token.Token, fn func(slot []byte, used int) int) error {
	if s.gate.Closed() {
		return arena.ErrClosed
	}
	if fn == nil {
		return fmt.Errorf("message: Rewrite: %w", arena.ErrNilFunc)
	}
	bad := 0
	err := s.Update(t, func(m *Message[B]) {
		buf := bytesOf(&m.Payload)
		n := fn(buf, min(int(m.Header.Size), len(buf)))
		if n < 0 || n > len(buf) {
			bad = n
			return
		}
		m.Header.Size = uint32(n)
	})
	if err == nil && bad != 0 {
		err = fmt.Errorf("%w: Rewrite reported %d bytes, slots hold %d", ErrTooLarge, bad, s.SlotSize())
	}
	return err
}

// used returns the first Header.Size bytes of the payload, clamped to the
// slot so that a corrupt header cannot reach past it.
func used[B ByteArray](m *Message[B]) []byte {
	buf := bytesOf(&m.Payload)
	return buf[:min(int(m.Header.Size), len(buf))]
}
