package token_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/cella-go/cella/token"
)

// TestAttackTokenLayout checks the documented bit layout (generation in the
// high 32 bits, index in the low 32), the accessors and String on random and
// extreme values.
func TestAttackTokenLayout(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	vals := []uint32{0, 1, 2, 7, 1 << 31, math.MaxUint32 - 1, math.MaxUint32}
	for range 2000 {
		vals = append(vals, r.Uint32())
	}
	for i, idx := range vals {
		gen := vals[(i*7+3)%len(vals)]
		tok := token.New(idx, gen)
		if uint64(tok) != uint64(gen)<<32|uint64(idx) {
			t.Fatalf("New(%d,%d) = %#x, layout says gen<<32|idx", idx, gen, uint64(tok))
		}
		if tok.Index() != idx || tok.Generation() != gen {
			t.Fatalf("round trip of (%d,%d): (%d,%d)", idx, gen, tok.Index(), tok.Generation())
		}
		if token.Token(uint64(tok)).Index() != idx {
			t.Fatal("conversion through uint64 changed the token")
		}
		nilWant := idx == 0 && gen == 0
		if tok.IsNil() != nilWant || (tok == token.Nil) != nilWant {
			t.Fatalf("IsNil(%d,%d) = %v", idx, gen, tok.IsNil())
		}
		s := tok.String()
		if nilWant {
			if s != "nil" {
				t.Fatalf("Nil.String() = %q", s)
			}
			continue
		}
		want := fmt.Sprintf("%d@%d", idx, gen)
		if s != want {
			t.Fatalf("String(%d,%d) = %q, want %q", idx, gen, s, want)
		}
		// String is readable back: index@generation.
		a, b, ok := strings.Cut(s, "@")
		ai, err1 := strconv.ParseUint(a, 10, 32)
		bi, err2 := strconv.ParseUint(b, 10, 32)
		if !ok || err1 != nil || err2 != nil || token.New(uint32(ai), uint32(bi)) != tok {
			t.Fatalf("String %q does not round trip", s)
		}
	}
	if token.Nil != 0 || token.Token(0).String() != "nil" || !token.Token(0).IsNil() {
		t.Fatal("Nil must be the zero Token")
	}
	// Tokens with generation 0 but a non-zero index are not Nil.
	if token.New(1, 0).IsNil() || token.New(0, 1).IsNil() {
		t.Fatal("only 0@0 is Nil")
	}
}
