package message

import (
	"context"
	"errors"
	"fmt"
	"iter"

	"github.com/cella-go/cella/token"
)

// SendAll sends t to every edge in edges, zero-copy: the edges share the
// one message, each holding its own reference. It always consumes the
// caller's one reference to t, whatever happens:
//
//   - it Retains t once per edge beyond the first, then Sends to each edge
//     in order (a Block edge may wait for room, honouring ctx, before the
//     next edge is tried; the other modes never wait);
//   - each share an edge refuses is freed, and the refusal, wrapped with the
//     edge's position in edges, is joined into err (errors.Join), so
//     errors.Is finds every cause (ErrEdgeFull, ErrExpired, ctx.Err(), ...);
//   - sent is how many edges took t; sent == len(edges) exactly when err is
//     nil.
//
// With no edges there is nobody to give t to: SendAll frees t and returns
// 0 and the Free error (nil for a valid reference), like a fan-out to an
// empty set of subscribers. If a Retain fails (t is stale or foreign, or
// has too many references: ErrTooManyRefs), no edge is tried: every
// reference taken so far and the caller's are freed, and SendAll returns 0
// and the Retain error. A nil edge in edges refuses its share with
// ErrNilEdge. rs must be the store t and the edges belong to; a nil rs
// returns ErrNilStore and cannot free t (the one case where the caller keeps
// its reference).
//
// SendAll allocates nothing unless an edge refuses t.
//
// A panic of the store's Header, Retain or Free (or one an edge raises for
// its store: see HeaderStore) does not strand any share: SendAll frees what
// it still holds, tries the remaining edges as usual, and then re-raises
// the first such panic. If one of them calls runtime.Goexit, SendAll's
// goroutine ends there, and the shares it still holds are freed first.
func SendAll(ctx context.Context, rs RefStore, t token.Token, edges ...*Edge) (sent int, err error) {
	if nilStore(rs) {
		return 0, fmt.Errorf("%w: SendAll needs the store of the token", ErrNilStore)
	}
	f := fanOut{rs: rs, owed: shares{t, 1}}
	defer f.finish()
	sent, err = f.sendAll(ctx, edges)
	f.returned = true
	return sent, err
}

// fanOut is SendAll's state: owed counts the shares of t it holds (the
// caller's, then one per Retain, less those sent or freed).
type fanOut struct {
	rs       RefStore
	owed     shares
	returned bool
	sp       storePanic
}

// finish re-raises a store panic SendAll caught, or, when SendAll did not
// return (runtime.Goexit in a store method), frees the shares it held.
func (f *fanOut) finish() {
	if !f.returned {
		var quiet storePanic // dropped: the goroutine is ending
		_ = f.owed.freeAll(&quiet, f.rs)
		return
	}
	f.sp.raise()
}

func (f *fanOut) sendAll(ctx context.Context, edges []*Edge) (sent int, err error) {
	if len(edges) == 0 {
		if err := f.owed.free(&f.sp, f.rs); err != nil {
			return 0, withContext("SendAll to no edges: free", err)
		}
		return 0, nil
	}
	for i := 1; i < len(edges); i++ {
		if err := f.sp.retain(f.rs, f.owed.t); err != nil {
			// Free the shares taken and the caller's. When t itself is bad
			// these Frees fail for the reason Retain gave: nothing to add.
			_ = f.owed.freeAll(&f.sp, f.rs)
			return 0, withContext("SendAll: retain", err)
		}
		f.owed.n++
	}
	var errs []error
	for i, e := range edges {
		var serr error
		if e == nil {
			serr = ErrNilEdge
		} else if serr = f.sp.send(ctx, e, f.owed.t); serr == nil {
			f.owed.n--
			sent++
			continue
		}
		ferr := f.owed.free(&f.sp, f.rs)
		errs = append(errs, withContext(fmt.Sprintf("SendAll: edge %d of %d", i, len(edges)), serr))
		if ferr != nil {
			errs = append(errs, withContext(fmt.Sprintf("SendAll: free of the share edge %d refused", i), ferr))
		}
	}
	if errs != nil {
		return sent, errors.Join(errs...)
	}
	return sent, nil
}

// All returns an iterator over the tokens received from e: a receive loop
// for range-over-func.
//
//	for t := range edge.All(ctx) {
//		... // the loop body owns t: pass it on or Free it
//	}
//
// Each iteration receives one token with Recv (waiting for it, serving the
// LatencyCritical lane first) and yields it; the loop body owns every token
// it is given. The loop ends when the edge is closed and empty, or when
// ctx is done (check ctx.Err() to tell the two apart). Breaking out of the
// loop is fine and loses nothing: a token is received only when the body
// is about to get it, never ahead. A nil ctx waits like
// context.Background().
func (e *Edge) All(ctx context.Context) iter.Seq[token.Token] {
	return func(yield func(token.Token) bool) {
		for {
			// Recv looks at ctx only when it has to wait: an edge kept busy
			// would never end the loop.
			if ctx != nil && ctx.Err() != nil {
				return
			}
			t, err := e.Recv(ctx)
			if err != nil || !yield(t) {
				return
			}
		}
	}
}
