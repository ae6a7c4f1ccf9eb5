package token

import "strconv"

// Token is an opaque handle to one allocation of one slot. See the package
// documentation for its bit layout.
type Token uint64

// Nil is the zero Token. No arena ever issues it.
const Nil Token = 0

const indexBits = 32

// New packs a slot index and a generation into a Token. Arenas use it; users
// normally only receive tokens.
func New(index, generation uint32) Token {
	return Token(uint64(generation)<<indexBits | uint64(index))
}

// Index returns the slot index inside the token's arena.
func (t Token) Index() uint32 { return uint32(t) }

// Generation returns the slot's generation when the token was issued.
func (t Token) Generation() uint32 { return uint32(t >> indexBits) }

// IsNil reports whether t is the Nil token.
func (t Token) IsNil() bool { return t == Nil }

// String returns "index@generation", for example "7@3", or "nil".
func (t Token) String() string {
	if t == Nil {
		return "nil"
	}
	var buf [24]byte
	b := strconv.AppendUint(buf[:0], uint64(t.Index()), 10)
	b = append(b, '@')
	b = strconv.AppendUint(b, uint64(t.Generation()), 10)
	return string(b)
}
