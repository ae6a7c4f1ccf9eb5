//go:build !cella_debug

package arena

import "github.com/cella-go/cella/token"

// Nested access to one slot (a View, Update, Load or LoadInto of a token
// from inside a View or Update callback on the same slot, by the same
// goroutine) can deadlock: an Update waits for the outer View to end, and
// the inner read waits for the Update. The default build does not look for
// it; build with -tags cella_debug to have it reported as ErrNestedAccess
// (nested_debug.go). These hooks compile to nothing here.

// debugNested says whether this build reports nested access.
const debugNested = false

func (c *core) checkNested(uint32, string, token.Token) error { return nil }
func (c *core) noteHold(uint32, bool)                         {}
func (c *core) dropHold(uint32)                               {}
