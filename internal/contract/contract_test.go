// Package contract pins the public API of ../shared/CONTRACT.md: every name
// and signature the contract fixes is assigned here to a variable of exactly
// that type, so a rename or a changed signature fails to compile.
package contract

import (
	"context"
	"iter"
	"testing"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/memclass"
	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/token"
)

type payload struct{ A, B uint64 }

var (
	_ token.Token              = token.Nil
	_ func(token.Token) uint32 = token.Token.Index
	_ func(token.Token) uint32 = token.Token.Generation
	_ func(token.Token) bool   = token.Token.IsNil
	_ func(token.Token) string = token.Token.String

	_ func() memclass.Class                             = memclass.Host
	_ func(memclass.Class) string                       = memclass.Class.String
	_                                                   = arena.Config{Slots: 1, Shards: 0, Class: memclass.Host()}
	_ func(arena.Config) (*arena.Arena[payload], error) = arena.New[payload]

	_ func(*arena.Arena[payload]) (token.Token, *payload, error)     = (*arena.Arena[payload]).Alloc
	_ func(*arena.Arena[payload], payload) (token.Token, error)      = (*arena.Arena[payload]).Store
	_ func(*arena.Arena[payload], token.Token) (payload, error)      = (*arena.Arena[payload]).Load
	_ func(*arena.Arena[payload], token.Token, func(*payload)) error = (*arena.Arena[payload]).View
	_ func(*arena.Arena[payload], token.Token, func(*payload)) error = (*arena.Arena[payload]).Update
	_ func(*arena.Arena[payload], token.Token) error                 = (*arena.Arena[payload]).Free
	_ func(*arena.Arena[payload]) int                                = (*arena.Arena[payload]).Capacity
	_ func(*arena.Arena[payload]) int                                = (*arena.Arena[payload]).Available
	_ func(*arena.Arena[payload]) memclass.Class                     = (*arena.Arena[payload]).Class
	_ func(*arena.Arena[payload]) arena.Stats                        = (*arena.Arena[payload]).Stats
	_ func(*arena.Arena[payload]) error                              = (*arena.Arena[payload]).Close
	_                                                                = []error{arena.ErrFull, arena.ErrStale, arena.ErrBadToken, arena.ErrClosed, arena.ErrInvalidConfig, arena.ErrPointerType}

	_                                                     = message.Header{Trace: 1, Seq: 1, Created: 1, Deadline: 1, QoS: message.LatencyCritical, Flags: message.FirstInBatch | message.LastInBatch | message.DegradeAllowed, Size: 1}
	_ func() int64                                        = message.Now
	_                                                     = message.Message[payload]{Header: message.Header{}, Payload: payload{}}
	_ func(arena.Config) (*message.Store[payload], error) = message.NewStore[payload]

	_ func(*message.Store[payload], message.Header, payload) (token.Token, error)       = (*message.Store[payload]).Put
	_ func(*message.Store[payload], token.Token) (message.Header, error)                = (*message.Store[payload]).Header
	_ func(*message.Store[payload], token.Token, func(*message.Message[payload])) error = (*message.Store[payload]).View
	_ func(*message.Store[payload], token.Token, func(*message.Message[payload])) error = (*message.Store[payload]).Update
	_ func(*message.Store[payload], token.Token) error                                  = (*message.Store[payload]).Retain
	_ func(*message.Store[payload], token.Token) error                                  = (*message.Store[payload]).Free
	_ func(*message.Store[payload]) int                                                 = (*message.Store[payload]).Available
	_ func(*message.Store[payload]) int                                                 = (*message.Store[payload]).Capacity
	_ func(*message.Store[payload]) error                                               = (*message.Store[payload]).Close
	_ message.HeaderStore                                                               = (*message.Store[payload])(nil)
	_                                                                                   = message.Policy{MaxItems: 1, SoftItems: 1, MaxBytes: 1, SoftBytes: 1, Admission: message.DeadlineQoS}
	_ func(message.HeaderStore, message.Policy) (*message.Edge, error)                  = message.NewEdge
	_ func(*message.Edge, context.Context, token.Token) error                           = (*message.Edge).Send
	_ func(*message.Edge, token.Token) error                                            = (*message.Edge).TrySend
	_ func(*message.Edge, context.Context) (token.Token, error)                         = (*message.Edge).Recv
	_ func(*message.Edge) (token.Token, bool)                                           = (*message.Edge).TryRecv
	_ func(*message.Edge) error                                                         = (*message.Edge).Close
	_ func(*message.Edge) int                                                           = (*message.Edge).Len
	_ func(*message.Edge) int64                                                         = (*message.Edge).Bytes
	_ func(*message.Edge) message.EdgeStats                                             = (*message.Edge).Stats
	_                                                                                   = []message.Admission{message.Block, message.DropNewest, message.DropOldest, message.DeadlineQoS}
	_                                                                                   = []message.QoS{message.Background, message.BestEffort, message.LatencyCritical}
)

// The Additions section of the contract.
var (
	_ func(*arena.Arena[payload], context.Context) (token.Token, *payload, error) = (*arena.Arena[payload]).AllocWait
	_ func(*arena.Arena[payload], context.Context, payload) (token.Token, error)  = (*arena.Arena[payload]).StoreWait
	_ func(*arena.Arena[payload], token.Token, *payload) error                    = (*arena.Arena[payload]).LoadInto
	_ func(*arena.Arena[payload]) iter.Seq[token.Token]                           = (*arena.Arena[payload]).Tokens
	_ func(*arena.Arena[payload]) (int64, error)                                  = (*arena.Arena[payload]).Trim

	_ func(*message.Store[payload], context.Context, message.Header, payload) (token.Token, error) = (*message.Store[payload]).PutWait
	_ func(*message.Store[payload]) iter.Seq[token.Token]                                          = (*message.Store[payload]).Tokens
	_ func(*message.Store[payload]) (int64, error)                                                 = (*message.Store[payload]).Trim
	_ func(*message.Edge, context.Context, []token.Token) (int, error)                             = (*message.Edge).SendBatch
	_ func(*message.Edge, context.Context, []token.Token) (int, error)                             = (*message.Edge).RecvBatch
	_ func(*message.Edge, context.Context) iter.Seq[token.Token]                                   = (*message.Edge).All
	_ func(context.Context, message.RefStore, token.Token, ...*message.Edge) (int, error)          = message.SendAll
)

// The values the contract fixes.
func TestContractValues(t *testing.T) {
	if token.Nil != 0 || message.Background != 1 || message.BestEffort != 2 || message.LatencyCritical != 3 {
		t.Fatal("token.Nil or QoS values changed")
	}
	if message.FirstInBatch != 1<<0 || message.LastInBatch != 1<<1 || message.DegradeAllowed != 1<<2 {
		t.Fatal("Flags values changed")
	}
	if message.Block != 0 || message.DropNewest != 1 || message.DropOldest != 2 || message.DeadlineQoS != 3 {
		t.Fatal("Admission values changed")
	}
	var c memclass.Class
	if c != memclass.Host() {
		t.Fatal("the zero Class must be Host()")
	}
	var st arena.Stats
	_ = []uint64{st.Allocs, st.Frees, st.Steals}
	var es message.EdgeStats
	_ = []uint64{es.Admitted, es.Rejected, es.Evicted, es.Expired}
}
