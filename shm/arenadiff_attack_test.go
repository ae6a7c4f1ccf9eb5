package shm

// Differential attack: shm.Arena against arena.Arena in one process. The
// package doc promises that Arena "is arena.Arena across processes: Alloc,
// Free, Load, LoadInto, Store, View, Update, AllocWait, with the same
// guarantees (exact ErrFull, stale tokens stale everywhere, no slot handed
// out twice) and the same sentinel errors". Every test here drives both
// with the same operations and compares the results (errors by sentinel,
// payloads against a model), or pins one documented promise directly.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/token"
)

// arenaDiffPay has an odd size with padding (alignment 8, 24 bytes).
type arenaDiffPay struct {
	A uint64
	B uint32
	C [5]uint16
	D byte
}

// arenaDiffOps is the method set both arenas share.
type arenaDiffOps[T any] interface {
	Alloc() (token.Token, *T, error)
	Store(T) (token.Token, error)
	Load(token.Token) (T, error)
	LoadInto(token.Token, *T) error
	View(token.Token, func(*T)) error
	Update(token.Token, func(*T)) error
	Free(token.Token) error
	AllocWait(context.Context) (token.Token, *T, error)
	StoreWait(context.Context, T) (token.Token, error)
	Capacity() int
	Available() int
	Close() error
}

var (
	_ arenaDiffOps[arenaDiffPay] = (*Arena[arenaDiffPay])(nil)
	_ arenaDiffOps[arenaDiffPay] = (*arena.Arena[arenaDiffPay])(nil)
)

// arenaDiffClass names the sentinel an error matches.
func arenaDiffClass(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrFull):
		return "Full"
	case errors.Is(err, ErrStale):
		return "Stale"
	case errors.Is(err, ErrBadToken):
		return "BadToken"
	case errors.Is(err, ErrClosed):
		return "Closed"
	case errors.Is(err, ErrNilFunc):
		return "NilFunc"
	case errors.Is(err, ErrNilPointer):
		return "NilPointer"
	case errors.Is(err, ErrInvalidConfig):
		return "InvalidConfig"
	case errors.Is(err, ErrPointerType):
		return "PointerType"
	case errors.Is(err, context.Canceled):
		return "Canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "DeadlineExceeded"
	}
	return "other(" + err.Error() + ")"
}

func arenaDiffRand(r *rand.Rand) arenaDiffPay {
	v := arenaDiffPay{A: r.Uint64(), B: r.Uint32(), D: byte(r.Uint32())}
	for i := range v.C {
		v.C[i] = uint16(r.Uint32())
	}
	if v == (arenaDiffPay{}) {
		v.A = 1
	}
	return v
}

// arenaDiffPanic runs fn and returns what it panicked with.
func arenaDiffPanic(fn func()) (p any) {
	defer func() { p = recover() }()
	fn()
	return nil
}

type arenaDiffEntry struct {
	s, a token.Token // the shm token and the arena token of one allocation
	v    arenaDiffPay
}

// arenaDiffRun is one differential run: shm handles hs (ops go to a random
// open one) against the reference ref, with a model of every live value.
type arenaDiffRun struct {
	t      *testing.T
	r      *rand.Rand
	hs     []*Arena[arenaDiffPay]
	open   []bool
	ref    *arena.Arena[arenaDiffPay]
	live   []arenaDiffEntry
	dead   []arenaDiffEntry
	step   int
	tag    string
	notes  map[string]int
	done   context.Context
	allocs uint64
	frees  uint64
}

func (d *arenaDiffRun) h() *Arena[arenaDiffPay] {
	for {
		i := d.r.IntN(len(d.hs))
		if d.open[i] {
			return d.hs[i]
		}
	}
}

func (d *arenaDiffRun) same(op string, es, ea error) bool {
	d.t.Helper()
	cs, ca := arenaDiffClass(es), arenaDiffClass(ea)
	if cs != ca {
		d.t.Fatalf("%s step %d %s: shm %s (%v), arena %s (%v)", d.tag, d.step, op, cs, es, ca, ea)
	}
	return es == nil
}

func (d *arenaDiffRun) pick() (int, bool) {
	if len(d.live) == 0 {
		return 0, false
	}
	return d.r.IntN(len(d.live)), true
}

func (d *arenaDiffRun) kill(i int) {
	d.dead = append(d.dead, d.live[i])
	d.live[i] = d.live[len(d.live)-1]
	d.live = d.live[:len(d.live)-1]
	if len(d.dead) > 64 {
		d.dead = d.dead[len(d.dead)-64:]
	}
}

func (d *arenaDiffRun) add(ts, ta token.Token, v arenaDiffPay) {
	for _, e := range d.live {
		if e.s.Index() == ts.Index() {
			d.t.Fatalf("%s step %d: shm handed out slot %d twice (%v and %v)", d.tag, d.step, ts.Index(), e.s, ts)
		}
	}
	d.live = append(d.live, arenaDiffEntry{ts, ta, v})
	d.allocs++
}

// check compares the counters of every open handle with the reference.
func (d *arenaDiffRun) check() {
	d.t.Helper()
	for i, h := range d.hs {
		if !d.open[i] {
			continue
		}
		if h.Capacity() != d.ref.Capacity() {
			d.t.Fatalf("%s step %d: Capacity shm %d, arena %d", d.tag, d.step, h.Capacity(), d.ref.Capacity())
		}
		if h.Available() != d.ref.Available() || h.Available() != h.Capacity()-len(d.live) {
			d.t.Fatalf("%s step %d: Available shm[%d] %d, arena %d, model %d", d.tag, d.step, i, h.Available(), d.ref.Available(), h.Capacity()-len(d.live))
		}
	}
	var sa, sf uint64
	for _, h := range d.hs {
		st := h.Stats()
		sa += st.Allocs
		sf += st.Frees
	}
	ra := d.ref.Stats()
	if sa != d.allocs || sf != d.frees || ra.Allocs != d.allocs || ra.Frees != d.frees {
		d.t.Fatalf("%s step %d: Stats allocs/frees shm %d/%d, arena %d/%d, model %d/%d", d.tag, d.step, sa, sf, ra.Allocs, ra.Frees, d.allocs, d.frees)
	}
}

// forged returns a pair of tokens no arena issued (or stale ones), of the
// given kind, and what both must say.
func (d *arenaDiffRun) forged() (ts, ta token.Token, what string) {
	capy := uint32(d.ref.Capacity())
	switch d.r.IntN(6) {
	case 0:
		return token.Nil, token.Nil, "Nil"
	case 1:
		idx := capy + uint32(d.r.IntN(3))
		if d.r.IntN(2) == 0 {
			idx = math.MaxUint32
		}
		g := 1 + d.r.Uint32N(1000)
		return token.New(idx, g), token.New(idx, g), "out of range"
	case 2:
		idx := d.r.Uint32N(capy)
		return token.New(idx, 0), token.New(idx, 0), "generation 0"
	case 3:
		if i, ok := d.pick(); ok {
			e := d.live[i]
			k := 1 + d.r.Uint32N(1000)
			gs, ga := e.s.Generation()+k, e.a.Generation()+k
			if gs == 0 || gs == math.MaxUint32 {
				gs = e.s.Generation() - 1
			}
			if ga == 0 || ga == math.MaxUint32 {
				ga = e.a.Generation() - 1
			}
			return token.New(e.s.Index(), gs), token.New(e.a.Index(), ga), "wrong generation"
		}
		fallthrough
	case 4:
		if len(d.dead) > 0 {
			e := d.dead[d.r.IntN(len(d.dead))]
			return e.s, e.a, "stale"
		}
		fallthrough
	default:
		idx := d.r.Uint32N(capy)
		return token.New(idx, math.MaxUint32), token.New(idx, math.MaxUint32), "generation 2^32-1"
	}
}

// forgedSame compares the two errors of an operation on forged tokens;
// generation 2^32-1 is ErrBadToken in arena (never issued) and may be
// ErrStale in shm (which issues it once, then retires the slot).
func (d *arenaDiffRun) forgedSame(what, op string, es, ea error) {
	d.t.Helper()
	if what == "generation 2^32-1" && errors.Is(ea, ErrBadToken) && errors.Is(es, ErrStale) {
		d.notes["generation 2^32-1: shm ErrStale, arena ErrBadToken"]++
		return
	}
	if es == nil || ea == nil {
		d.t.Fatalf("%s step %d: %s of a %s token succeeded: shm %v, arena %v", d.tag, d.step, op, what, es, ea)
	}
	d.same(op+" of a "+what+" token", es, ea)
}

func (d *arenaDiffRun) one() {
	t, r := d.t, d.r
	h := d.h()
	ref := d.ref
	switch op := r.IntN(22); op {
	case 0, 1: // Alloc
		ts, ps, es := h.Alloc()
		ta, pa, ea := ref.Alloc()
		if d.same("Alloc", es, ea) {
			if *ps != (arenaDiffPay{}) || *pa != (arenaDiffPay{}) {
				t.Fatalf("%s step %d: Alloc not zeroed: shm %+v arena %+v", d.tag, d.step, *ps, *pa)
			}
			v := arenaDiffRand(r)
			*ps, *pa = v, v
			d.add(ts, ta, v)
		}
	case 2, 3: // Store
		v := arenaDiffRand(r)
		ts, es := h.Store(v)
		ta, ea := ref.Store(v)
		if d.same("Store", es, ea) {
			d.add(ts, ta, v)
		}
	case 4: // Load
		if i, ok := d.pick(); ok {
			e := d.live[i]
			vs, es := h.Load(e.s)
			va, ea := ref.Load(e.a)
			d.same("Load", es, ea)
			if vs != e.v || va != e.v {
				t.Fatalf("%s step %d: Load %v: shm %+v arena %+v model %+v", d.tag, d.step, e.s, vs, va, e.v)
			}
		}
	case 5: // LoadInto, nil dst too
		if i, ok := d.pick(); ok {
			e := d.live[i]
			var ds, da arenaDiffPay
			d.same("LoadInto", h.LoadInto(e.s, &ds), ref.LoadInto(e.a, &da))
			if ds != e.v || da != e.v {
				t.Fatalf("%s step %d: LoadInto: shm %+v arena %+v model %+v", d.tag, d.step, ds, da, e.v)
			}
			d.same("LoadInto(nil)", h.LoadInto(e.s, nil), ref.LoadInto(e.a, nil))
		}
		ts, ta, what := d.forged()
		sent := arenaDiffPay{A: 0xdead}
		ds, da := sent, sent
		d.forgedSame(what, "LoadInto", h.LoadInto(ts, &ds), ref.LoadInto(ta, &da))
		if ds != sent || da != sent {
			t.Fatalf("%s step %d: failed LoadInto wrote dst: shm %+v arena %+v", d.tag, d.step, ds, da)
		}
		d.same("LoadInto(nil) of "+what, h.LoadInto(ts, nil), ref.LoadInto(ta, nil))
	case 6: // View, nil fn
		if i, ok := d.pick(); ok {
			e := d.live[i]
			var gs, ga arenaDiffPay
			d.same("View", h.View(e.s, func(p *arenaDiffPay) { gs = *p }), ref.View(e.a, func(p *arenaDiffPay) { ga = *p }))
			if gs != e.v || ga != e.v {
				t.Fatalf("%s step %d: View saw shm %+v arena %+v model %+v", d.tag, d.step, gs, ga, e.v)
			}
			d.same("View(nil)", h.View(e.s, nil), ref.View(e.a, nil))
			d.same("Update(nil)", h.Update(e.s, nil), ref.Update(e.a, nil))
		}
	case 7: // Update
		if i, ok := d.pick(); ok {
			e := &d.live[i]
			v := arenaDiffRand(r)
			var os, oa arenaDiffPay
			d.same("Update", h.Update(e.s, func(p *arenaDiffPay) { os = *p; *p = v }),
				ref.Update(e.a, func(p *arenaDiffPay) { oa = *p; *p = v }))
			if os != e.v || oa != e.v {
				t.Fatalf("%s step %d: Update saw shm %+v arena %+v model %+v", d.tag, d.step, os, oa, e.v)
			}
			e.v = v
		}
	case 8: // a callback that panics (View or Update); the slot stays usable
		if i, ok := d.pick(); ok {
			e := &d.live[i]
			v := arenaDiffRand(r)
			write := r.IntN(2) == 0
			var es, ea error
			ps := arenaDiffPanic(func() {
				if write {
					es = h.Update(e.s, func(p *arenaDiffPay) { *p = v; panic("boom-s") })
				} else {
					es = h.View(e.s, func(p *arenaDiffPay) { panic("boom-s") })
				}
			})
			pa := arenaDiffPanic(func() {
				if write {
					ea = ref.Update(e.a, func(p *arenaDiffPay) { *p = v; panic("boom-a") })
				} else {
					ea = ref.View(e.a, func(p *arenaDiffPay) { panic("boom-a") })
				}
			})
			if ps != "boom-s" || pa != "boom-a" {
				t.Fatalf("%s step %d: callback panic not propagated: shm %v (err %v) arena %v (err %v)", d.tag, d.step, ps, es, pa, ea)
			}
			if write {
				e.v = v
			}
			// Usable after the panic: an Update must not wait forever.
			done := make(chan error, 1)
			go func() { done <- h.Update(e.s, func(*arenaDiffPay) {}) }()
			select {
			case err := <-done:
				d.same("Update after a panicking callback", err, ref.Update(e.a, func(*arenaDiffPay) {}))
			case <-time.After(2 * time.Second):
				t.Fatalf("%s step %d: Update after a panicking callback hangs", d.tag, d.step)
			}
		}
	case 9, 10: // Free of the token inside its own View / Update callback
		if i, ok := d.pick(); ok {
			e := d.live[i]
			write := op == 10
			var ifs, ifa error
			var avS, avA int
			var fullS, fullA error
			boom := r.IntN(3) == 0 // and then the callback panics
			cs := func(*arenaDiffPay) {
				ifs = h.Free(e.s)
				avS = h.Available()
				if avS == 1 { // the only free slot is this held one: not allocatable yet
					_, _, fullS = h.Alloc()
				}
				if boom {
					panic("boom-s")
				}
			}
			ca := func(*arenaDiffPay) {
				ifa = ref.Free(e.a)
				avA = ref.Available()
				if avA == 1 {
					_, _, fullA = ref.Alloc()
				}
				if boom {
					panic("boom-a")
				}
			}
			var es, ea error
			ps := arenaDiffPanic(func() {
				if write {
					es = h.Update(e.s, cs)
				} else {
					es = h.View(e.s, cs)
				}
			})
			pa := arenaDiffPanic(func() {
				if write {
					ea = ref.Update(e.a, ca)
				} else {
					ea = ref.View(e.a, ca)
				}
			})
			if boom && (ps != "boom-s" || pa != "boom-a") || !boom && (ps != nil || pa != nil) {
				t.Fatalf("%s step %d: panics shm %v arena %v", d.tag, d.step, ps, pa)
			}
			if !boom {
				d.same("callback", es, ea)
			}
			d.same("Free inside own callback", ifs, ifa)
			if avS != avA {
				t.Fatalf("%s step %d: Available inside the callback after Free: shm %d arena %d", d.tag, d.step, avS, avA)
			}
			d.same("Alloc of the held freed slot inside its callback", fullS, fullA)
			if ifs == nil {
				d.frees++
				d.kill(i)
			}
			_, es = h.Load(e.s)
			_, ea = ref.Load(e.a)
			d.same("Load after Free in own callback", es, ea)
			if es == nil {
				t.Fatalf("%s step %d: token freed in its own callback still loads", d.tag, d.step)
			}
		}
	case 11, 12, 13: // Free
		if i, ok := d.pick(); ok {
			e := d.live[i]
			if d.same("Free", h.Free(e.s), ref.Free(e.a)) {
				d.frees++
				d.kill(i)
			}
			// double free, from any handle
			d.same("double Free", d.h().Free(e.s), ref.Free(e.a))
		}
	case 14: // operations on forged / stale tokens
		ts, ta, what := d.forged()
		switch r.IntN(5) {
		case 0:
			d.forgedSame(what, "Free", h.Free(ts), ref.Free(ta))
		case 1:
			_, es := h.Load(ts)
			_, ea := ref.Load(ta)
			d.forgedSame(what, "Load", es, ea)
		case 2:
			d.forgedSame(what, "View", h.View(ts, func(*arenaDiffPay) { t.Errorf("View of a %s token ran", what) }),
				ref.View(ta, func(*arenaDiffPay) { t.Errorf("arena View of a %s token ran", what) }))
		case 3:
			d.forgedSame(what, "Update", h.Update(ts, func(*arenaDiffPay) { t.Errorf("Update of a %s token ran", what) }),
				ref.Update(ta, func(*arenaDiffPay) { t.Errorf("arena Update of a %s token ran", what) }))
		case 4:
			d.same("View(nil) of "+what, h.View(ts, nil), ref.View(ta, nil))
		}
	case 15: // AllocWait / StoreWait with a done ctx: at once either way
		v := arenaDiffRand(r)
		var ts, ta token.Token
		var es, ea error
		if r.IntN(2) == 0 {
			var ps, pa *arenaDiffPay
			ts, ps, es = h.AllocWait(d.done)
			ta, pa, ea = ref.AllocWait(d.done)
			if es == nil && ea == nil {
				if *ps != (arenaDiffPay{}) || *pa != (arenaDiffPay{}) {
					t.Fatalf("%s step %d: AllocWait not zeroed", d.tag, d.step)
				}
				*ps, *pa = v, v
			}
		} else {
			ts, es = h.StoreWait(d.done, v)
			ta, ea = ref.StoreWait(d.done, v)
		}
		if d.same("AllocWait/StoreWait(done ctx)", es, ea) {
			d.add(ts, ta, v)
		}
	case 16: // AllocWait / StoreWait with a nil ctx, only on a non-full arena
		if ref.Available() == 0 {
			return
		}
		v := arenaDiffRand(r)
		var ts, ta token.Token
		var es, ea error
		if r.IntN(2) == 0 {
			var ps, pa *arenaDiffPay
			//lint:ignore SA1012 a nil context is what is tested
			ts, ps, es = h.AllocWait(nil)
			//lint:ignore SA1012 a nil context is what is tested
			ta, pa, ea = ref.AllocWait(nil)
			if es == nil && ea == nil {
				*ps, *pa = v, v
			}
		} else {
			//lint:ignore SA1012 a nil context is what is tested
			ts, es = h.StoreWait(nil, v)
			//lint:ignore SA1012 a nil context is what is tested
			ta, ea = ref.StoreWait(nil, v)
		}
		if d.same("AllocWait/StoreWait(nil ctx)", es, ea) {
			d.add(ts, ta, v)
		}
	case 17: // fill to exactly Capacity, from random handles, then ErrFull
		want := ref.Available()
		n := 0
		for {
			v := arenaDiffRand(r)
			ts, es := d.h().Store(v)
			ta, ea := ref.Store(v)
			if !d.same(fmt.Sprintf("Store #%d of a fill of %d", n, want), es, ea) {
				if !errors.Is(es, ErrFull) {
					t.Fatalf("%s step %d: fill ended with %v", d.tag, d.step, es)
				}
				break
			}
			d.add(ts, ta, v)
			n++
			if n > ref.Capacity()+1 {
				t.Fatalf("%s step %d: fill does not end", d.tag, d.step)
			}
		}
		if n != want {
			t.Fatalf("%s step %d: filled %d slots, Available said %d", d.tag, d.step, n, want)
		}
		for j, hh := range d.hs {
			if !d.open[j] {
				continue
			}
			_, _, es := hh.Alloc()
			_, _, ea := ref.Alloc()
			d.same("Alloc on a full arena", es, ea)
			_, _, es = hh.AllocWait(d.done)
			wantErr(t, es, context.Canceled, "shm AllocWait(done ctx) on a full arena")
		}
		_, ea := ref.StoreWait(d.done, arenaDiffPay{})
		wantErr(t, ea, context.Canceled, "arena StoreWait(done ctx) on a full arena")
	case 18: // free a random half
		for i := len(d.live) - 1; i >= 0; i-- {
			if r.IntN(2) == 0 {
				e := d.live[i]
				if d.same("Free (half)", d.h().Free(e.s), ref.Free(e.a)) {
					d.frees++
					d.kill(i)
				}
			}
		}
	case 19: // a token of one allocation used through every handle
		if i, ok := d.pick(); ok {
			e := d.live[i]
			for j, hh := range d.hs {
				if !d.open[j] {
					continue
				}
				v, err := hh.Load(e.s)
				if err != nil || v != e.v {
					t.Fatalf("%s step %d: handle %d Load %v: %+v %v, model %+v", d.tag, d.step, j, e.s, v, err, e.v)
				}
			}
		}
	case 20: // Adopt from a random handle changes nothing visible
		if i, ok := d.pick(); ok {
			if err := h.Adopt(d.live[i].s); err != nil {
				t.Fatalf("%s step %d: Adopt of a live token: %v", d.tag, d.step, err)
			}
		}
		if len(d.dead) > 0 {
			wantErr(t, h.Adopt(d.dead[len(d.dead)-1].s), ErrStale, "Adopt of a stale token")
		}
		wantErr(t, h.Adopt(token.Nil), ErrBadToken, "Adopt of Nil")
	case 21: // zeroed recycled slots: free one, allocate, must be zero
		if i, ok := d.pick(); ok {
			e := d.live[i]
			if d.same("Free", h.Free(e.s), ref.Free(e.a)) {
				d.frees++
				d.kill(i)
			}
			ts, ps, es := h.Alloc()
			ta, pa, ea := ref.Alloc()
			if d.same("Alloc after Free", es, ea) {
				if *ps != (arenaDiffPay{}) || *pa != (arenaDiffPay{}) {
					t.Fatalf("%s step %d: recycled slot %v not zeroed: %+v", d.tag, d.step, ts, *ps)
				}
				v := arenaDiffRand(r)
				*ps, *pa = v, v
				d.add(ts, ta, v)
			}
		}
	}
}

// afterClose checks every call on a closed shm handle and a closed arena.
func (d *arenaDiffRun) afterClose(h *Arena[arenaDiffPay]) {
	t, ref := d.t, d.ref
	var ts, ta token.Token = token.New(0, 1), token.New(0, 1)
	if i, ok := d.pick(); ok {
		ts, ta = d.live[i].s, d.live[i].a
	}
	fs, fa, _ := d.forged()
	ran := func(*arenaDiffPay) { t.Error("callback ran after Close") }
	_, _, es := h.Alloc()
	_, _, ea := ref.Alloc()
	d.same("Alloc after Close", es, ea)
	_, es = h.Store(arenaDiffPay{})
	_, ea = ref.Store(arenaDiffPay{})
	d.same("Store after Close", es, ea)
	_, es = h.Load(ts)
	_, ea = ref.Load(ta)
	d.same("Load after Close", es, ea)
	_, es = h.Load(fs)
	_, ea = ref.Load(fa)
	d.same("Load of a forged token after Close", es, ea)
	var x, y arenaDiffPay
	d.same("LoadInto after Close", h.LoadInto(ts, &x), ref.LoadInto(ta, &y))
	d.same("LoadInto(nil) after Close", h.LoadInto(ts, nil), ref.LoadInto(ta, nil))
	d.same("View after Close", h.View(ts, ran), ref.View(ta, ran))
	d.same("View(nil) after Close", h.View(ts, nil), ref.View(ta, nil))
	d.same("Update after Close", h.Update(ts, ran), ref.Update(ta, ran))
	d.same("Update(nil) after Close", h.Update(fs, nil), ref.Update(fa, nil))
	d.same("Free after Close", h.Free(ts), ref.Free(ta))
	d.same("Free(Nil) after Close", h.Free(token.Nil), ref.Free(token.Nil))
	d.same("Free(forged) after Close", h.Free(fs), ref.Free(fa))
	_, _, es = h.AllocWait(d.done)
	_, _, ea = ref.AllocWait(d.done)
	d.same("AllocWait(done) after Close", es, ea)
	within(t, 2*time.Second, "StoreWait(nil ctx) after Close", func() {
		//lint:ignore SA1012 a nil context is what is tested
		_, es = h.StoreWait(nil, arenaDiffPay{})
		//lint:ignore SA1012 a nil context is what is tested
		_, ea = ref.StoreWait(nil, arenaDiffPay{})
	})
	d.same("StoreWait(nil ctx) after Close", es, ea)
	within(t, 2*time.Second, "AllocWait(Background) after Close", func() {
		_, _, es = h.AllocWait(context.Background())
		_, _, ea = ref.AllocWait(context.Background())
	})
	d.same("AllocWait(Background) after Close", es, ea)
	d.same("second Close", h.Close(), ref.Close())
	wantErr(t, h.Adopt(ts), ErrClosed, "Adopt after Close")
	if _, err := h.Recover(); !errors.Is(err, ErrClosed) {
		t.Errorf("Recover after Close: %v, want ErrClosed", err)
	}
	if h.Capacity() != ref.Capacity() {
		t.Fatalf("Capacity after Close: shm %d arena %d", h.Capacity(), ref.Capacity())
	}
	if h.Available() != ref.Available() {
		t.Fatalf("Available after Close: shm %d arena %d", h.Available(), ref.Available())
	}
}

func arenaDiffNew(t *testing.T, handles, slots, shards int, seed uint64) *arenaDiffRun {
	hs := segment[arenaDiffPay](t, handles, Config{Slots: slots, Shards: shards, Dir: memDir(t)})
	ref, err := arena.New[arenaDiffPay](arena.Config{Slots: slots, Shards: shards})
	must(t, err, "arena.New")
	t.Cleanup(func() { _ = ref.Close() })
	done, cancel := context.WithCancel(context.Background())
	cancel()
	d := &arenaDiffRun{t: t, r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), hs: hs,
		open: make([]bool, len(hs)), ref: ref, tag: fmt.Sprintf("slots=%d shards=%d handles=%d seed=%d", slots, shards, handles, seed),
		notes: map[string]int{}, done: done}
	for i := range d.open {
		d.open[i] = true
	}
	return d
}

func (d *arenaDiffRun) ops(n int) {
	for range n {
		d.step++
		d.one()
		d.check()
	}
}

// TestArenaDiffRandom: one handle, random operations, the same results as
// arena.Arena; then Close and every call again.
func TestArenaDiffRandom(t *testing.T) {
	ops := 1500
	if raceEnabled {
		ops = 600
	}
	for _, c := range []struct{ slots, shards int }{{1, 1}, {7, 1}, {40, 1}, {40, 3}, {100, 8}, {5, 5}} {
		for seed := uint64(1); seed <= 2; seed++ {
			t.Run(fmt.Sprintf("slots%d_shards%d_seed%d", c.slots, c.shards, seed), func(t *testing.T) {
				d := arenaDiffNew(t, 1, c.slots, c.shards, seed*1000+uint64(c.slots))
				d.ops(ops)
				d.same("Close", d.hs[0].Close(), d.ref.Close())
				d.open[0] = false
				d.afterClose(d.hs[0])
				for k, n := range d.notes {
					t.Logf("documented difference seen %d times: %s", n, k)
				}
			})
		}
	}
}

// TestArenaDiffTwoHandles: two handles on one segment act as one arena:
// each operation goes to a random handle (tokens of one used through the
// other; fills that must take slots cached by the other), compared with
// one arena.Arena. Then one handle closes (its allocations stay, its
// caches go back) and the other goes on alone.
func TestArenaDiffTwoHandles(t *testing.T) {
	ops := 1200
	if raceEnabled {
		ops = 500
	}
	for _, c := range []struct{ slots, shards int }{{6, 1}, {33, 2}, {64, 16}} {
		for seed := uint64(1); seed <= 2; seed++ {
			t.Run(fmt.Sprintf("slots%d_shards%d_seed%d", c.slots, c.shards, seed), func(t *testing.T) {
				d := arenaDiffNew(t, 2, c.slots, c.shards, seed*7777+uint64(c.slots))
				d.ops(ops)
				closer := d.r.IntN(2)
				must(t, d.hs[closer].Close(), "Close one handle")
				d.open[closer] = false
				d.step++
				d.check()
				for _, e := range d.live {
					v, err := d.hs[1-closer].Load(e.s)
					if err != nil || v != e.v {
						t.Fatalf("after the other handle closed, Load %v: %+v %v, model %+v", e.s, v, err, e.v)
					}
				}
				d.ops(ops / 3)
				// the closed handle answers ErrClosed; compare with a closed arena
				// only at the very end
				must(t, d.hs[1-closer].Close(), "Close the other handle")
				must(t, d.ref.Close(), "arena Close")
				d.open[1-closer] = false
				d.afterClose(d.hs[closer])
				if _, err := os.Stat(d.hs[0].Path()); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("segment file after the last Close: %v", err)
				}
			})
		}
	}
}

// TestArenaDiffExactFullOtherHandleCaches: slots one handle freed sit in
// its way caches; the other handle still allocates exactly Capacity, then
// ErrFull, like one arena.Arena, round after round.
func TestArenaDiffExactFullOtherHandleCaches(t *testing.T) {
	const slots = 100
	for _, shards := range []int{1, 7} {
		hs := segment[arenaDiffPay](t, 3, Config{Slots: slots, Shards: shards, Dir: memDir(t)})
		ref, err := arena.New[arenaDiffPay](arena.Config{Slots: slots, Shards: shards})
		must(t, err, "arena.New")
		for round := range 12 {
			from, to := hs[round%3], hs[(round+1)%3]
			var ts, ta []token.Token
			for {
				a, ea := from.Store(arenaDiffPay{A: uint64(len(ts) + 1)})
				b, eb := ref.Store(arenaDiffPay{})
				if arenaDiffClass(ea) != arenaDiffClass(eb) {
					t.Fatalf("round %d Store #%d: shm %v arena %v", round, len(ts), ea, eb)
				}
				if ea != nil {
					break
				}
				ts, ta = append(ts, a), append(ta, b)
			}
			if len(ts) != slots {
				t.Fatalf("shards %d round %d: %d allocations, want %d", shards, round, len(ts), slots)
			}
			// free through the allocator (its caches fill), part through a third
			for i := range ts {
				who := from
				if i%5 == 4 {
					who = hs[(round+2)%3]
				}
				must(t, who.Free(ts[i]), "Free")
				must(t, ref.Free(ta[i]), "arena Free")
			}
			if to.Available() != slots || from.Available() != slots {
				t.Fatalf("shards %d round %d: Available %d / %d, want %d (cached %d)", shards, round, to.Available(), from.Available(), slots, cachedSlots(from))
			}
			n := 0
			var again []token.Token
			for {
				tok, _, err := to.Alloc()
				if err != nil {
					wantErr(t, err, ErrFull, "Alloc past capacity")
					break
				}
				again = append(again, tok)
				n++
			}
			if n != slots {
				t.Fatalf("shards %d round %d: the other handle allocated %d, want %d (cached in the freer: %d)", shards, round, n, slots, cachedSlots(from))
			}
			for _, tok := range again {
				must(t, from.Free(tok), "Free")
			}
		}
		must(t, ref.Close(), "arena Close")
	}
}

// TestArenaDiffCloseWhileOtherViews: a handle closes while the other
// handle's View and Update callbacks run on its allocations: Close does not
// wait for another process's callbacks, the callbacks see their values,
// the allocations stay, and a Free from inside a callback of the survivor
// recycles the slot once the callback returns.
func TestArenaDiffCloseWhileOtherViews(t *testing.T) {
	dir := memDir(t)
	hs := segment[arenaDiffPay](t, 2, Config{Slots: 4, Shards: 2, Dir: dir})
	a, b := hs[0], hs[1]
	t1, err := a.Store(arenaDiffPay{A: 1})
	must(t, err, "Store")
	t2, err := a.Store(arenaDiffPay{A: 2})
	must(t, err, "Store")
	release := make(chan struct{})
	started := make(chan struct{}, 2)
	var wg sync.WaitGroup
	var inView, inUpdate error
	var sawView, sawUpdate arenaDiffPay
	wg.Add(2)
	go func() {
		defer wg.Done()
		must(t, b.View(t1, func(p *arenaDiffPay) {
			started <- struct{}{}
			<-release
			sawView = *p
			inView = b.Free(t1)
		}), "View")
	}()
	go func() {
		defer wg.Done()
		must(t, b.Update(t2, func(p *arenaDiffPay) {
			started <- struct{}{}
			<-release
			sawUpdate = *p
			p.A = 22
			inUpdate = nil
		}), "Update")
	}()
	<-started
	<-started
	within(t, 2*time.Second, "Close of a handle while another handle's callbacks run", func() {
		must(t, a.Close(), "Close")
	})
	_, err = a.Load(t1)
	wantErr(t, err, ErrClosed, "Load on the closed handle")
	// Load of t2 through b waits for the Update; do it after release.
	close(release)
	wg.Wait()
	must(t, inView, "Free inside View after the allocator closed")
	must(t, inUpdate, "Update")
	if sawView.A != 1 || sawUpdate.A != 2 {
		t.Fatalf("callbacks saw %+v %+v", sawView, sawUpdate)
	}
	v, err := b.Load(t2)
	if err != nil || v.A != 22 {
		t.Fatalf("Load after the Update: %+v %v", v, err)
	}
	_, err = b.Load(t1)
	wantErr(t, err, ErrStale, "Load of the token freed in its View")
	if n := b.Available(); n != 3 {
		t.Fatalf("Available = %d, want 3", n)
	}
	var got []token.Token
	for {
		tok, p, err := b.Alloc()
		if err != nil {
			wantErr(t, err, ErrFull, "Alloc")
			break
		}
		if *p != (arenaDiffPay{}) {
			t.Fatalf("recycled slot %v not zeroed: %+v", tok, *p)
		}
		got = append(got, tok)
	}
	if len(got) != 3 {
		t.Fatalf("%d allocations, want 3", len(got))
	}

	// The reverse: a handle whose own callback runs waits for it in Close;
	// meanwhile the other frees the slot under it.
	c := attachTo[arenaDiffPay](t, dir, -1)
	must(t, b.Free(got[0]), "Free")
	t3, err := c.Store(arenaDiffPay{A: 3})
	must(t, err, "Store")
	inCb := make(chan struct{})
	rel := make(chan struct{})
	go func() {
		_ = c.View(t3, func(p *arenaDiffPay) {
			close(inCb)
			<-rel
			if p.A != 3 {
				t.Errorf("View saw %+v after the other handle freed it", *p)
			}
		})
	}()
	<-inCb
	must(t, b.Free(t3), "Free of a slot the other handle views")
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while its own View callback runs", err)
	case <-time.After(100 * time.Millisecond):
	}
	if _, _, err := b.Alloc(); !errors.Is(err, ErrFull) {
		t.Fatalf("Alloc of a slot still held by a callback: %v, want ErrFull", err)
	}
	close(rel)
	select {
	case err := <-closed:
		must(t, err, "Close")
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not return after its callback did")
	}
	tok, p, err := b.Alloc()
	must(t, err, "Alloc of the slot the callback released")
	if tok.Index() != t3.Index() || *p != (arenaDiffPay{}) {
		t.Fatalf("Alloc after release: %v %+v (want slot %d, zeroed)", tok, *p, t3.Index())
	}
}

// TestArenaDiffOwnership: allocations are owned by their allocator unless
// adopted; a closed handle's allocations belong to nobody and survive the
// death of any other process; a dead process's own and adopted ones are
// freed by recovery, and the report says so.
func TestArenaDiffOwnership(t *testing.T) {
	dir := memDir(t)
	hs := segment[arenaDiffPay](t, 2, Config{Slots: 8, Shards: 2, Dir: dir})
	a, b := hs[0], hs[1]
	t1, _ := a.Store(arenaDiffPay{A: 1})
	t2, _ := a.Store(arenaDiffPay{A: 2})
	t3, _ := a.Store(arenaDiffPay{A: 3})
	must(t, b.Adopt(t2), "Adopt")
	must(t, a.Close(), "Close")
	c := attachTo[arenaDiffPay](t, dir, -1)
	for _, tok := range []token.Token{t1, t2, t3} {
		if _, err := c.Load(tok); err != nil {
			t.Fatalf("allocation %v after its allocator closed: %v", tok, err)
		}
	}
	t4, _ := b.Store(arenaDiffPay{A: 4})
	must(t, b.Adopt(t3), "Adopt of an allocation of a closed handle")
	t5, _ := c.Store(arenaDiffPay{A: 5})
	must(t, c.Adopt(t5), "Adopt of one's own")
	wantErr(t, c.Adopt(token.New(100, 1)), ErrBadToken, "Adopt out of range")
	wantErr(t, c.Adopt(token.New(t1.Index(), 0)), ErrBadToken, "Adopt of generation 0")
	wantErr(t, c.Adopt(token.New(t1.Index(), t1.Generation()+1)), ErrStale, "Adopt of a wrong generation")
	die(b)
	rep, err := c.Recover()
	must(t, err, "Recover")
	if rep.Dead != 1 || rep.Reclaimed != 3 {
		t.Fatalf("Recovery %+v, want 1 dead, 3 reclaimed (t2, t3 adopted, t4 own)", rep)
	}
	for _, tok := range []token.Token{t2, t3, t4} {
		_, err := c.Load(tok)
		wantErr(t, err, ErrStale, "Load of an allocation of the dead process")
		wantErr(t, c.Adopt(tok), ErrStale, "Adopt of it")
	}
	for i, tok := range []token.Token{t1, t5} {
		if v, err := c.Load(tok); err != nil || v.A != []uint64{1, 5}[i] {
			t.Fatalf("surviving allocation %v: %+v %v", tok, v, err)
		}
	}
	if n := c.Available(); n != 6 {
		t.Fatalf("Available %d, want 6", n)
	}
	n := 0
	for {
		if _, _, err := c.Alloc(); err != nil {
			wantErr(t, err, ErrFull, "Alloc")
			break
		}
		n++
	}
	if n != 6 {
		t.Fatalf("%d allocations after the recovery, want 6", n)
	}
}

// Payload types for the config parity test.
type (
	arenaDiffOdd3   [3]byte
	arenaDiffAlign2 struct {
		A uint8
		B uint16
		C uint8
	}
	arenaDiffMixed struct {
		A uint8
		B uint64
		C [3]uint8
	}
	arenaDiffBig   [1 << 20]byte
	arenaDiffNoPtr struct {
		A [0]*int // a zero-length array of pointers holds no pointer
		B uint32
	}
	arenaDiffPtrs struct {
		A uint64
		B [2]struct{ S []byte }
	}
	arenaDiffUintptr struct{ P uintptr }
)

// arenaDiffCreateBoth runs shm.Create and arena.New on one config and
// compares their errors; it never lets a panic through.
func arenaDiffCreateBoth[T any](t *testing.T, name string, slots, shards int) (*Arena[T], *arena.Arena[T], error, error) {
	t.Helper()
	var s *Arena[T]
	var a *arena.Arena[T]
	var es, ea error
	if p := arenaDiffPanic(func() {
		s, es = Create[T]("cfg", Config{Slots: slots, Shards: shards, Dir: memDir(t), Watch: -1})
	}); p != nil {
		t.Fatalf("%s: shm.Create panicked: %v", name, p)
	}
	if p := arenaDiffPanic(func() { a, ea = arena.New[T](arena.Config{Slots: slots, Shards: shards}) }); p != nil {
		t.Fatalf("%s: arena.New panicked: %v", name, p)
	}
	if s != nil {
		t.Cleanup(func() { _ = s.Close() })
	}
	if a != nil {
		t.Cleanup(func() { _ = a.Close() })
	}
	return s, a, es, ea
}

// arenaDiffUse allocates every slot of both, stores, loads, frees and
// reallocates (zeroed), comparing.
func arenaDiffUse[T comparable](t *testing.T, name string, s *Arena[T], a *arena.Arena[T], mk func(int) T) {
	t.Helper()
	if s.Capacity() != a.Capacity() {
		t.Fatalf("%s: Capacity shm %d arena %d", name, s.Capacity(), a.Capacity())
	}
	var ts, ta []token.Token
	for i := 0; ; i++ {
		x, es := s.Store(mk(i))
		y, ea := a.Store(mk(i))
		if arenaDiffClass(es) != arenaDiffClass(ea) {
			t.Fatalf("%s: Store #%d: shm %v arena %v", name, i, es, ea)
		}
		if es != nil {
			wantErr(t, es, ErrFull, name+" Store past capacity")
			break
		}
		ts, ta = append(ts, x), append(ta, y)
	}
	if len(ts) != s.Capacity() {
		t.Fatalf("%s: %d stores, capacity %d", name, len(ts), s.Capacity())
	}
	dst := new(T)
	for i := range ts {
		vs, es := s.Load(ts[i])
		va, ea := a.Load(ta[i])
		if es != nil || ea != nil || vs != mk(i) || va != mk(i) {
			t.Fatalf("%s: Load #%d: %v %v", name, i, es, ea)
		}
		must(t, s.LoadInto(ts[i], dst), name+" LoadInto")
		if *dst != mk(i) {
			t.Fatalf("%s: LoadInto #%d differs", name, i)
		}
		must(t, s.Update(ts[i], func(p *T) { *p = mk(i + 1000) }), name+" Update")
		must(t, s.View(ts[i], func(p *T) {
			if *p != mk(i+1000) {
				t.Errorf("%s: View after Update differs", name)
			}
		}), name+" View")
		must(t, s.Free(ts[i]), name+" Free")
		must(t, a.Free(ta[i]), name+" arena Free")
	}
	var zero T
	for i := range ts {
		tok, p, err := s.Alloc()
		must(t, err, name+" Alloc after Free")
		if *p != zero {
			t.Fatalf("%s: recycled slot %v not zeroed", name, tok)
		}
		must(t, s.Free(tok), name+" Free")
		_ = i
	}
	if s.Available() != a.Available() {
		t.Fatalf("%s: Available shm %d arena %d", name, s.Available(), a.Available())
	}
}

// TestArenaDiffConfigParity: bad configs and odd payload types get the
// same sentinel from shm.Create and arena.New, never a panic; good odd
// types (zero-size, 1 MiB, alignment 1 and 2, mixed padding, a zero-length
// array of pointers) work the same.
func TestArenaDiffConfigParity(t *testing.T) {
	for _, c := range []struct {
		name          string
		slots, shards int
	}{
		{"Slots 0", 0, 1}, {"Slots -1", -1, 1}, {"Slots MinInt", math.MinInt, 0},
		{"Slots MaxSlots+1", MaxSlots + 1, 1}, {"Slots MaxInt", math.MaxInt, 1},
		{"Shards -1", 8, -1}, {"Shards MinInt", 8, math.MinInt}, {"Shards 1<<20", 8, 1 << 20},
		{"Shards MaxInt", 8, math.MaxInt},
	} {
		s, a, es, ea := arenaDiffCreateBoth[arenaDiffPay](t, c.name, c.slots, c.shards)
		if arenaDiffClass(es) != arenaDiffClass(ea) || es == nil {
			t.Errorf("%s: shm %v (%v), arena %v (%v)", c.name, arenaDiffClass(es), es, arenaDiffClass(ea), ea)
		}
		if s != nil || a != nil {
			t.Errorf("%s: a handle came back with the error", c.name)
		}
	}
	// Documented: shm.MaxShards (4096) is below arena.MaxShards.
	if MaxShards < arena.MaxShards {
		_, _, es, ea := arenaDiffCreateBoth[arenaDiffPay](t, "Shards shm.MaxShards+1", 8, MaxShards+1)
		wantErr(t, es, ErrInvalidConfig, "shm Shards MaxShards+1")
		t.Logf("documented difference: Shards %d: shm %v, arena %v (shm.MaxShards %d, arena.MaxShards %d)",
			MaxShards+1, arenaDiffClass(es), arenaDiffClass(ea), MaxShards, arena.MaxShards)
	}

	// Pointer types: both refuse with ErrPointerType (Attach too).
	for _, f := range []func() (string, error, error){
		func() (string, error, error) {
			_, _, es, ea := arenaDiffCreateBoth[arenaDiffPtrs](t, "ptrs", 2, 1)
			return "struct with [2]struct{[]byte}", es, ea
		},
		func() (string, error, error) {
			_, _, es, ea := arenaDiffCreateBoth[[2]func()](t, "funcs", 2, 1)
			return "[2]func()", es, ea
		},
		func() (string, error, error) {
			_, _, es, ea := arenaDiffCreateBoth[struct{ E error }](t, "iface", 2, 1)
			return "struct{error}", es, ea
		},
	} {
		name, es, ea := f()
		if !errors.Is(es, ErrPointerType) || !errors.Is(ea, ErrPointerType) {
			t.Errorf("%s: shm %v, arena %v, want ErrPointerType from both", name, es, ea)
		}
	}
	_, err := Attach[arenaDiffPtrs]("cfg", Config{Dir: memDir(t)})
	wantErr(t, err, ErrPointerType, "Attach of a pointer type")

	// Types without pointers that look like they might have them.
	for _, f := range []func(){
		func() {
			s, a, es, ea := arenaDiffCreateBoth[arenaDiffNoPtr](t, "[0]*int", 3, 2)
			if arenaDiffClass(es) != arenaDiffClass(ea) {
				t.Errorf("[0]*int field: shm %v arena %v", es, ea)
			} else if es == nil {
				arenaDiffUse(t, "[0]*int", s, a, func(i int) arenaDiffNoPtr { return arenaDiffNoPtr{B: uint32(i) + 1} })
			}
		},
		func() {
			s, a, es, ea := arenaDiffCreateBoth[arenaDiffUintptr](t, "uintptr", 3, 2)
			if arenaDiffClass(es) != arenaDiffClass(ea) {
				t.Errorf("uintptr: shm %v arena %v", es, ea)
			} else if es == nil {
				arenaDiffUse(t, "uintptr", s, a, func(i int) arenaDiffUintptr { return arenaDiffUintptr{uintptr(i) + 1} })
			}
		},
	} {
		f()
	}

	// Zero-size, odd alignment, mixed padding, 1 MiB.
	{
		s, a, es, ea := arenaDiffCreateBoth[struct{}](t, "zero-size", 5, 2)
		must(t, es, "shm zero-size")
		must(t, ea, "arena zero-size")
		arenaDiffUse(t, "zero-size", s, a, func(int) struct{} { return struct{}{} })
	}
	{
		s, a, es, ea := arenaDiffCreateBoth[arenaDiffOdd3](t, "[3]byte", 9, 4)
		must(t, es, "shm [3]byte")
		must(t, ea, "arena [3]byte")
		arenaDiffUse(t, "[3]byte", s, a, func(i int) arenaDiffOdd3 { return arenaDiffOdd3{byte(i), 7, byte(i + 1)} })
	}
	{
		s, a, es, ea := arenaDiffCreateBoth[arenaDiffAlign2](t, "align2", 9, 3)
		must(t, es, "shm align2")
		must(t, ea, "arena align2")
		arenaDiffUse(t, "align2", s, a, func(i int) arenaDiffAlign2 { return arenaDiffAlign2{uint8(i), uint16(i * 3), 9} })
	}
	{
		s, a, es, ea := arenaDiffCreateBoth[arenaDiffMixed](t, "mixed", 9, 9)
		must(t, es, "shm mixed")
		must(t, ea, "arena mixed")
		arenaDiffUse(t, "mixed", s, a, func(i int) arenaDiffMixed { return arenaDiffMixed{uint8(i), uint64(i) << 40, [3]uint8{1, 2, uint8(i)}} })
	}
	{
		s, a, es, ea := arenaDiffCreateBoth[arenaDiffBig](t, "1 MiB", 3, 2)
		must(t, es, "shm 1 MiB")
		must(t, ea, "arena 1 MiB")
		mk := func(i int) (v arenaDiffBig) {
			v[0], v[len(v)/2], v[len(v)-1] = byte(i+1), byte(i+2), byte(i+3)
			return v
		}
		arenaDiffUse(t, "1 MiB", s, a, mk)
	}
	// A geometry too large for the machine: arena says ErrInvalidConfig;
	// shm must at least fail cleanly, leave no file and not panic.
	{
		dir := memDir(t)
		var s *Arena[arenaDiffBig]
		var es error
		if p := arenaDiffPanic(func() {
			s, es = Create[arenaDiffBig]("huge", Config{Slots: 1 << 30, Shards: 1, Dir: dir, Watch: -1})
		}); p != nil {
			t.Fatalf("Create of 2^30 1-MiB slots panicked: %v", p)
		}
		_, ea := arena.New[arenaDiffBig](arena.Config{Slots: 1 << 30, Shards: 1})
		if s != nil {
			_ = s.Close()
			t.Fatalf("Create of 2^30 1-MiB slots (2^50 bytes) succeeded; arena.New says %v", ea)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("a failed Create left %v", ents)
		}
		if arenaDiffClass(es) != arenaDiffClass(ea) {
			t.Logf("difference: 2^30 slots of 1 MiB: shm %v; arena %v", es, ea)
		}
	}
}

// TestArenaDiffStoreWaitCloseFault: "Close while other goroutines are
// inside arena calls must not crash the process" (CONTRACT.md, package
// arena; shm promises the same guarantees). Store copies its value inside
// its section (alloc(&v): "a write after exit could fault"), but StoreWait
// is AllocWait followed by *p = v, outside any section: a Close in between
// unmaps the segment under the copy. The fault is turned into a panic
// (debug.SetPanicOnFault) so that the test reports it instead of dying.
func TestArenaDiffStoreWaitCloseFault(t *testing.T) {
	type big [4 << 20]byte
	v := new(big)
	for i := range v {
		v[i] = byte(i) | 1
	}
	deadline := time.Now().Add(2 * time.Second)
	var faults, closedFirst, stored, tries int
	var firstFault any
	// The delay of Close homes in on the moment StoreWait's Alloc ends:
	// longer after a Close that came first, shorter after a Store that won.
	delay := 300 * time.Microsecond
	jr := rand.New(rand.NewPCG(1, 2))
	for time.Now().Before(deadline) && faults == 0 {
		tries++
		dir := memDir(t)
		a, err := Create[big]("sw", Config{Slots: 1, Shards: 1, Dir: dir, Watch: -1})
		must(t, err, "Create")
		var wg sync.WaitGroup
		start := make(chan struct{})
		var fault any
		var serr error
		wg.Add(2)
		go func() {
			defer wg.Done()
			old := debug.SetPanicOnFault(true)
			defer debug.SetPanicOnFault(old)
			defer func() {
				if p := recover(); p != nil {
					fault = p
				}
			}()
			<-start
			_, serr = a.StoreWait(context.Background(), *v)
		}()
		d := delay + time.Duration(jr.Int64N(int64(delay/4)+1)) - delay/8
		go func() {
			defer wg.Done()
			<-start
			for t0 := time.Now(); time.Since(t0) < d; {
			}
			_ = a.Close()
		}()
		close(start)
		wg.Wait()
		switch {
		case fault != nil:
			faults++
			firstFault = fault
		case errors.Is(serr, ErrClosed):
			closedFirst++
			delay = delay*5/4 + time.Microsecond
		case serr == nil:
			stored++
			delay = delay * 4 / 5
		default:
			t.Fatalf("StoreWait racing Close: %v", serr)
		}
	}
	t.Logf("%d tries: %d faults, %d ErrClosed, %d stored", tries, faults, closedFirst, stored)
	if faults != 0 {
		t.Fatalf("StoreWait racing Close faulted on the unmapped segment: %v "+
			"(StoreWait writes *p = v after AllocWait's section ended, wait.go)", firstFault)
	}
}

// TestArenaDiffRetiredSlotLeavesCapacity: arena documents that "a slot
// whose generation would wrap is retired: it leaves Capacity and is never
// reused", and Available is "how many more slots could be allocated now";
// shm promises the same guarantees (exact ErrFull). After one slot of two
// is retired and every token is freed, arena has Capacity 1, Available 1,
// and one Alloc succeeds. (The generation is advanced by writing the state
// word, as TestGenerationWrap does: 2^32 frees take too long.)
func TestArenaDiffRetiredSlotLeavesCapacity(t *testing.T) {
	hs := segment[arenaDiffPay](t, 1, Config{Slots: 2, Shards: 1, Dir: memDir(t)})
	a := hs[0]
	tok, err := a.Store(arenaDiffPay{})
	must(t, err, "Store")
	filler, err := a.Store(arenaDiffPay{})
	must(t, err, "Store")
	st := a.state(tok.Index())
	s := atomic.LoadUint64(st)
	atomic.StoreUint64(st, s&^genMask|(genMask-1))
	must(t, a.Free(token.New(tok.Index(), genMask-1)), "Free at generation 2^32-2")
	last, err := a.Store(arenaDiffPay{A: 1})
	must(t, err, "Store")
	if last.Index() != tok.Index() || last.Generation() != genMask {
		t.Fatalf("slot came back as %v", last)
	}
	must(t, a.Free(last), "Free at generation 2^32-1 (retires the slot)")
	must(t, a.Free(filler), "Free")
	capy, avail := a.Capacity(), a.Available()
	n := 0
	for {
		tok, _, err := a.Alloc()
		if err != nil {
			wantErr(t, err, ErrFull, "Alloc")
			break
		}
		if tok.Index() == last.Index() {
			t.Fatalf("retired slot handed out again as %v", tok)
		}
		n++
	}
	if capy != n || avail != n {
		t.Fatalf("with one slot retired and nothing allocated: Capacity %d, Available %d, but only %d Alloc succeed "+
			"before ErrFull (arena: Capacity and Available drop by the retired slot)", capy, avail, n)
	}
}
