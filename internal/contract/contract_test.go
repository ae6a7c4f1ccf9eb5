// Package contract pins the public API of ../shared/CONTRACT.md: every name
// and signature the contract fixes is assigned here to a variable of exactly
// that type, so a rename or a changed signature fails to compile.
package contract

import (
	"context"
	"iter"
	"net"
	"os"
	"testing"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/memclass"
	"github.com/cella-go/cella/message"
	"github.com/cella-go/cella/shm"
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

	_                                                                                                       = shm.Config{Slots: 1, Shards: 0, Dir: "", Perm: 0, Watch: 0}
	_ func(string, shm.Config) (*shm.Arena[payload], error)                                                 = shm.Create[payload]
	_ func(string, shm.Config) (*shm.Arena[payload], error)                                                 = shm.Attach[payload]
	_ func(*shm.Arena[payload]) (token.Token, *payload, error)                                              = (*shm.Arena[payload]).Alloc
	_ func(*shm.Arena[payload], payload) (token.Token, error)                                               = (*shm.Arena[payload]).Store
	_ func(*shm.Arena[payload], token.Token) (payload, error)                                               = (*shm.Arena[payload]).Load
	_ func(*shm.Arena[payload], token.Token, *payload) error                                                = (*shm.Arena[payload]).LoadInto
	_ func(*shm.Arena[payload], token.Token, func(*payload)) error                                          = (*shm.Arena[payload]).View
	_ func(*shm.Arena[payload], token.Token, func(*payload)) error                                          = (*shm.Arena[payload]).Update
	_ func(*shm.Arena[payload], token.Token) error                                                          = (*shm.Arena[payload]).Free
	_ func(*shm.Arena[payload], token.Token) error                                                          = (*shm.Arena[payload]).Adopt
	_ func(*shm.Arena[payload], context.Context) (token.Token, *payload, error)                             = (*shm.Arena[payload]).AllocWait
	_ func(*shm.Arena[payload], context.Context, payload) (token.Token, error)                              = (*shm.Arena[payload]).StoreWait
	_ func(*shm.Arena[payload]) int                                                                         = (*shm.Arena[payload]).Capacity
	_ func(*shm.Arena[payload]) int                                                                         = (*shm.Arena[payload]).Available
	_ func(*shm.Arena[payload]) shm.Stats                                                                   = (*shm.Arena[payload]).Stats
	_ func(*shm.Arena[payload]) (shm.Recovery, error)                                                       = (*shm.Arena[payload]).Recover
	_ func(*shm.Arena[payload]) error                                                                       = (*shm.Arena[payload]).Close
	_ func(*shm.Arena[payload]) string                                                                      = (*shm.Arena[payload]).Path
	_                                                                                                       = shm.Recovery{Dead: 1, Reclaimed: 1, Holds: 1}
	_                                                                                                       = shm.StoreConfig{Slots: 1, Shards: 0, Edges: []message.Policy{}, Dir: "", Perm: 0, Watch: 0}
	_ func(string, shm.StoreConfig) (*shm.Store[payload], error)                                            = shm.CreateStore[payload]
	_ func(string, shm.StoreConfig) (*shm.Store[payload], error)                                            = shm.AttachStore[payload]
	_ func(*shm.Store[payload], message.Header, payload) (token.Token, error)                               = (*shm.Store[payload]).Put
	_ func(*shm.Store[payload], message.Header, func(*message.Message[payload]) error) (token.Token, error) = (*shm.Store[payload]).PutFunc
	_ func(*shm.Store[payload], message.Header) (token.Token, *message.Message[payload], error)             = (*shm.Store[payload]).Loan
	_ func(*shm.Store[payload], context.Context, message.Header, payload) (token.Token, error)              = (*shm.Store[payload]).PutWait
	_ func(*shm.Store[payload], context.Context) error                                                      = (*shm.Store[payload]).AwaitFree
	_ func(*shm.Store[payload], token.Token) (message.Header, error)                                        = (*shm.Store[payload]).Header
	_ func(*shm.Store[payload], token.Token, func(*message.Message[payload])) error                         = (*shm.Store[payload]).View
	_ func(*shm.Store[payload], token.Token, func(*message.Message[payload])) error                         = (*shm.Store[payload]).Update
	_ func(*shm.Store[payload], token.Token) error                                                          = (*shm.Store[payload]).Retain
	_ func(*shm.Store[payload], token.Token) error                                                          = (*shm.Store[payload]).Free
	_ func(*shm.Store[payload], token.Token) (int, int, error)                                              = (*shm.Store[payload]).Refs
	_ func(*shm.Store[payload], int) *shm.Edge                                                              = (*shm.Store[payload]).Edge
	_ func(*shm.Store[payload]) []*shm.Edge                                                                 = (*shm.Store[payload]).Edges
	_ func(*shm.Store[payload]) int                                                                         = (*shm.Store[payload]).Capacity
	_ func(*shm.Store[payload]) int                                                                         = (*shm.Store[payload]).Available
	_ func(*shm.Store[payload]) (shm.Recovery, error)                                                       = (*shm.Store[payload]).Recover
	_ func(*shm.Store[payload]) shm.Stats                                                                   = (*shm.Store[payload]).Stats
	_ func(*shm.Store[payload]) error                                                                       = (*shm.Store[payload]).Close
	_ func(*shm.Edge, context.Context, token.Token) error                                                   = (*shm.Edge).Send
	_ func(*shm.Edge, token.Token) error                                                                    = (*shm.Edge).TrySend
	_ func(*shm.Edge, context.Context, []token.Token) (int, error)                                          = (*shm.Edge).SendBatch
	_ func(*shm.Edge, context.Context) (token.Token, error)                                                 = (*shm.Edge).Recv
	_ func(*shm.Edge, context.Context, []token.Token) (int, error)                                          = (*shm.Edge).RecvBatch
	_ func(*shm.Edge) (token.Token, bool)                                                                   = (*shm.Edge).TryRecv
	_ func(*shm.Edge) error                                                                                 = (*shm.Edge).Close
	_ func(*shm.Edge) bool                                                                                  = (*shm.Edge).Closed
	_ func(*shm.Edge) int                                                                                   = (*shm.Edge).Drain
	_ func(*shm.Edge) int                                                                                   = (*shm.Edge).Len
	_ func(*shm.Edge) int64                                                                                 = (*shm.Edge).Bytes
	_ func(*shm.Edge) message.Watermark                                                                     = (*shm.Edge).Watermark
	_ func(*shm.Edge) message.EdgeStats                                                                     = (*shm.Edge).Stats
	_ func(*shm.Edge) message.Policy                                                                        = (*shm.Edge).Policy
	_ func(string, shm.Config) (*shm.Arena[payload], error)                                                 = shm.CreateMemfd[payload]
	_ func(*os.File, shm.Config) (*shm.Arena[payload], error)                                               = shm.AttachFile[payload]
	_ func(string, shm.StoreConfig) (*shm.Store[payload], error)                                            = shm.CreateStoreMemfd[payload]
	_ func(*os.File, shm.StoreConfig) (*shm.Store[payload], error)                                          = shm.AttachStoreFile[payload]
	_ func(*shm.Arena[payload]) (*os.File, error)                                                           = (*shm.Arena[payload]).File
	_ func(*shm.Store[payload]) (*os.File, error)                                                           = (*shm.Store[payload]).File
	_ func(*net.UnixConn, *os.File) error                                                                   = shm.SendFile
	_ func(*net.UnixConn) (*os.File, error)                                                                 = shm.RecvFile
	_                                                                                                       = []error{shm.ErrExists, shm.ErrNotExist, shm.ErrMismatch, shm.ErrCorrupt, shm.ErrTooManyProcs, shm.ErrBadName, shm.ErrNotHeld}
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
