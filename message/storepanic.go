package message

// Store panics in the middle of bookkeeping.
//
// Callers that hand references to user code (a RefStore's methods, an
// edge's send, which may raise its store's panic) and must not strand or
// double-free a share when that code panics catch the panic in a
// storePanic, finish their bookkeeping, and re-raise it with raise. A
// runtime.Goexit cannot be caught: those callers count the shares they
// hold and uncount each before the call that frees it, so that the
// cleanup that runs as the goroutine ends frees exactly the rest.

import (
	"context"

	"github.com/cella-go/cella/token"
)

// storePanic keeps the first panic of a store method (or of an edge's
// send, which may raise its store's) that a caller caught so that it could
// first finish freeing or sending what it holds; raise re-raises it.
type storePanic struct{ v any }

func (p *storePanic) free(hs HeaderStore, t token.Token) (err error) {
	defer p.catch(&err)
	return hs.Free(t)
}

func (p *storePanic) retain(rs RefStore, t token.Token) (err error) {
	defer p.catch(&err)
	return rs.Retain(t)
}

// send is e.Send that keeps a panic instead of raising it: err == nil
// exactly when t got in (a panic of the store's Header comes before that).
func (p *storePanic) send(ctx context.Context, e *Edge, t token.Token) (err error) {
	if e.trySendPlain(t) { // a *Store's metadata: nothing here can panic
		return nil
	}
	defer p.catch(&err)
	fp, err := e.sendCatching(ctx, t, true, false)
	p.keep(fp)
	return err
}

// sendBatch is SendBatch that keeps a panic instead of raising it. *in
// counts the tokens of ts that got in, as they get in; after a panic of
// the store's Header (which comes before a chunk is admitted), n is what
// got in before it.
func (p *storePanic) sendBatch(ctx context.Context, e *Edge, ts []token.Token, in *int) (n int, err error) {
	start := *in
	defer func() {
		if r := recover(); r != nil {
			p.keep(r)
			n, err = *in-start, errStorePanicked
		}
	}()
	n, fp, err := e.sendBatchCatching(ctx, ts, in)
	p.keep(fp)
	return n, err
}

// check is e.check.
func (p *storePanic) check(e *Edge, t token.Token, q *queued) (err error) {
	defer p.catch(&err)
	_, err = e.check(t, q)
	return err
}

// keep records v, a panic an edge returned (sendCatching), unless one is
// kept already.
func (p *storePanic) keep(v any) {
	if v != nil && p.v == nil {
		p.v = v
	}
}

func (p *storePanic) catch(err *error) {
	if r := recover(); r != nil {
		p.keep(r)
		*err = errStorePanicked
	}
}

// drain empties e with Drain, which raises a panic of the store's Free
// after draining (or, for one held back, before): it drains again then.
func (p *storePanic) drain(e *Edge) {
	for range 3 {
		if !p.drainOnce(e) {
			return
		}
	}
}

func (p *storePanic) drainOnce(e *Edge) (panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			p.keep(r)
			panicked = true
		}
	}()
	e.Drain()
	return false
}

func (p *storePanic) raise() {
	if p.v != nil {
		panic(p.v)
	}
}

// shares counts the references to one token a caller holds while it hands
// them out (sends them, or frees them). Each is uncounted before the Free
// that drops it, so that when a Free never returns (runtime.Goexit), the
// cleanup that runs as the goroutine ends frees exactly the rest.
type shares struct {
	t token.Token
	n int
}

// free drops one share through hs.
func (s *shares) free(sp *storePanic, hs HeaderStore) error {
	s.n--
	return sp.free(hs, s.t)
}

// freeAll drops every share left and returns the last Free's error.
func (s *shares) freeAll(sp *storePanic, hs HeaderStore) (err error) {
	for s.n > 0 {
		err = s.free(sp, hs)
	}
	return err
}
