package arena

import (
	"sync/atomic"
	"unsafe"

	"github.com/cella-go/cella/internal/atomicx"
	"github.com/cella-go/cella/token"
)

// Load returns a copy of t's value. It never returns a value torn by a
// concurrent Update, and it writes nothing to shared memory: it reads the
// state word and the slot's version, copies, and reads both again, and
// copies again if an Update ran meanwhile (a seqlock; see slot.go). Values
// larger than bigValue bytes (and every value under the race detector) are
// copied under a reader hold instead, so that a long copy cannot be starved
// by Updates.
//
// The value is copied once into the named result. For T larger than 128 KiB
// the caller's own temporary for the result lives on the heap (a Go rule for
// large values); use LoadInto for such values.
func (a *Arena[T]) Load(t token.Token) (v T, err error) {
	// Bare returns only: a return of named values makes temporaries that
	// the compiler puts on the heap for a T beyond 128 KiB.
	if raceEnabled || unsafe.Sizeof(v) > bigValue {
		err = a.readHold(t, unsafe.Pointer(&v), unsafe.Sizeof(v), "Load")
		return
	}
	idx, gen, ok := a.check(t)
	if !ok {
		err = a.badToken("Load", t)
		return
	}
	if err = a.checkNested(idx, "Load", t); err != nil {
		return
	}
	st, ver := a.state(idx), a.version(idx)
	src := a.payload(idx)
	var bo atomicx.Backoff
	for {
		p := a.gate.EnterAny() // Gate.Enter spelled out, as in Alloc
		if a.gate.Closed() {
			a.gate.Exit(p)
			err = ErrClosed
			return
		}
		s := atomic.LoadUint64(st)
		if !valid(s, gen) {
			a.gate.Exit(p)
			clearBytes(unsafe.Pointer(&v), unsafe.Sizeof(v)) // a torn try may have filled it
			err = staleToken("Load", t)
			return
		}
		if s&writerBit == 0 {
			n := atomic.LoadUint32(ver)
			if unsafe.Sizeof(v) > typedCopyMax {
				copyBytes(unsafe.Pointer(&v), unsafe.Pointer(src), unsafe.Sizeof(v))
			} else {
				v = *src
			}
			loadFence()
			if atomic.LoadUint64(st)&^readerMask == s&^readerMask && atomic.LoadUint32(ver) == n {
				a.gate.Exit(p)
				return
			}
		}
		a.gate.Exit(p)
		bo.Wait() // a writer holds the slot, or wrote meanwhile: wait unpinned
	}
}

// loadBytes copies the first n bytes of t's value (n at most the value's
// size) to dst with Load's guarantees: never torn by a concurrent Update,
// nothing written to shared memory, under a reader hold under the race
// detector. It is Load's loop with a byte copy instead of a typed one, for
// arenalink.LoadHead (message.Store.Header copies the header and not the
// payload). If word is not nil it also returns *word, loaded after the
// slot's state was found valid and before it was found unchanged: a word
// that the slot's owner keeps beside it, read while the arena cannot be
// closed under it. On error dst holds nothing useful.
func (c *core) loadBytes(t token.Token, dst unsafe.Pointer, n uintptr, op string, word *uint64) (w uint64, err error) {
	if raceEnabled {
		return c.readHoldWord(t, dst, n, op, word)
	}
	idx, gen, ok := c.check(t)
	if !ok {
		return 0, c.badToken(op, t)
	}
	if err := c.checkNested(idx, op, t); err != nil {
		return 0, err
	}
	st, ver, src := c.state(idx), c.version(idx), c.slot(idx)
	var bo atomicx.Backoff
	for {
		p := c.gate.EnterAny() // Gate.Enter spelled out, as in Alloc
		if c.gate.Closed() {
			c.gate.Exit(p)
			return 0, ErrClosed
		}
		s := atomic.LoadUint64(st)
		if !valid(s, gen) {
			c.gate.Exit(p)
			return 0, staleToken(op, t)
		}
		if s&writerBit == 0 {
			v := atomic.LoadUint32(ver)
			if word != nil {
				w = atomic.LoadUint64(word)
			}
			copyBytes(dst, src, n)
			loadFence()
			if atomic.LoadUint64(st)&^readerMask == s&^readerMask && atomic.LoadUint32(ver) == v {
				c.gate.Exit(p)
				return w, nil
			}
		}
		c.gate.Exit(p)
		bo.Wait() // a writer holds the slot, or wrote meanwhile: wait unpinned
	}
}

// readHoldWord is readHold that also loads *word under the hold, if word
// is not nil (loadBytes under the race detector).
func (c *core) readHoldWord(t token.Token, dst unsafe.Pointer, n uintptr, op string, word *uint64) (w uint64, err error) {
	idx, err := c.lock(t, op, false)
	if err != nil {
		return 0, err
	}
	if word != nil {
		w = atomic.LoadUint64(word)
	}
	copyBytes(dst, c.slot(idx), n)
	c.unlockRead(idx)
	return w, nil
}

// LoadInto copies t's value into *dst, with Load's guarantees, and never
// allocates, whatever the size of T (a refusal allocates only its error,
// one small value naming the token). On error *dst is unchanged; a nil dst
// is an error (ErrNilPointer).
func (a *Arena[T]) LoadInto(t token.Token, dst *T) error {
	if dst == nil {
		return a.nilDst(t)
	}
	// Past typedCopyMax bytes one copy under a hold (two atomics) beats an
	// optimistic copy into a temporary and a second copy into *dst.
	if raceEnabled || unsafe.Sizeof(*dst) > typedCopyMax {
		return a.readHold(t, unsafe.Pointer(dst), unsafe.Sizeof(*dst), "LoadInto")
	}
	return a.loadSmall(t, dst)
}

// loadSmall is LoadInto for a small T: an optimistic Load into a
// temporary, so that a failed try leaves *dst alone.
func (a *Arena[T]) loadSmall(t token.Token, dst *T) error {
	v, err := a.Load(t)
	if err == nil {
		*dst = v
	}
	return err
}

// readHold copies n bytes of t's value to dst under a reader hold: the copy
// starts only once the hold is taken, so it cannot fail halfway and dst is
// untouched on error.
func (c *core) readHold(t token.Token, dst unsafe.Pointer, n uintptr, op string) error {
	_, err := c.readHoldWord(t, dst, n, op, nil)
	return err
}

// View runs fn with shared access to t's value. Other View calls on the slot
// may run at the same time; Update calls wait. fn must not keep the pointer.
// A panic in fn propagates after the slot is released.
//
// fn must not read or write the same token (Load, LoadInto, View, Update):
// once an Update waits for the slot, new readers wait for it, and the
// Update waits for fn, so a nested access deadlocks (and Close, which waits
// for fn, with it). Free of the token inside fn is fine (the slot is
// recycled when fn returns); other slots are fine. Builds with -tags
// cella_debug report a nested access as ErrNestedAccess instead.
func (a *Arena[T]) View(t token.Token, fn func(*T)) error {
	if fn == nil {
		return a.nilFunc("View", t)
	}
	idx, err := a.lock(t, "View", false)
	if err != nil {
		return err
	}
	if debugNested {
		a.noteHold(idx, false)
		defer a.dropHold(idx)
	}
	defer a.unlockRead(idx)
	fn(a.payload(idx))
	return nil
}

// Update runs fn with exclusive access to t's value: no View, Load or other
// Update on the slot runs at the same time. fn must not keep the pointer.
// A panic in fn propagates after the slot is released.
//
// fn must not read or write the same token (Load, LoadInto, View, Update):
// they wait for fn to end, and fn would wait for them. Free of the token
// inside fn is fine; other slots are fine. Builds with -tags cella_debug
// report a nested access as ErrNestedAccess instead of hanging.
func (a *Arena[T]) Update(t token.Token, fn func(*T)) error {
	if fn == nil {
		return a.nilFunc("Update", t)
	}
	idx, err := a.lock(t, "Update", true)
	if err != nil {
		return err
	}
	if debugNested {
		a.noteHold(idx, true)
		defer a.dropHold(idx)
	}
	defer a.unlockWriter(idx)
	fn(a.payload(idx))
	return nil
}

// canRead reports whether a reader may join: no writer holds or waits for the
// slot, and the reader count has room.
func canRead(s uint64) bool {
	return s&writerBit == 0 && s&readerMask != readerMask
}

// lock takes a reader (or the writer) hold on t's slot. A hold keeps the slot
// from being recycled and keeps Close from unmapping it, so the caller may
// touch the slot unpinned until unlock.
//
// A writer first sets the writer bit, which stops new readers, then waits
// for the readers already inside to leave. Waiting happens unpinned.
func (c *core) lock(t token.Token, op string, write bool) (uint32, error) {
	idx, gen, ok := c.check(t)
	if !ok {
		return 0, c.badToken(op, t)
	}
	if err := c.checkNested(idx, op, t); err != nil {
		return 0, err
	}
	st := c.state(idx)
	var bo atomicx.Backoff
	for try := 0; ; try++ {
		p := c.gate.EnterAny() // Gate.Enter spelled out, as in Alloc
		if c.gate.Closed() {
			c.gate.Exit(p)
			return 0, ErrClosed
		}
		if try == 0 && !write {
			// The usual state, a live slot with no holders, tried blind.
			if idle := uint64(gen)<<genShift | allocBit; blindCAS(st, idle, idle+1) {
				c.gate.Exit(p)
				return idx, nil
			}
		}
		s := atomic.LoadUint64(st)
		if !valid(s, gen) {
			c.gate.Exit(p)
			return 0, staleToken(op, t)
		}
		switch {
		case !write && canRead(s):
			if atomic.CompareAndSwapUint64(st, s, s+1) {
				c.gate.Exit(p)
				return idx, nil
			}
			c.gate.Exit(p)
			continue
		case write && s&writerBit == 0:
			if atomic.CompareAndSwapUint64(st, s, s|writerBit) {
				c.gate.Exit(p)
				if s&readerMask == 0 {
					return idx, nil // nobody was reading: nothing to wait for
				}
				return idx, c.drainReaders(idx, gen, t, op)
			}
			c.gate.Exit(p)
			continue
		}
		c.gate.Exit(p)
		bo.Wait()
	}
}

// drainReaders waits, holding the writer bit, until no reader is inside. If
// the slot is freed meanwhile it gives the writer bit back and reports stale.
func (c *core) drainReaders(idx, gen uint32, t token.Token, op string) error {
	st := c.state(idx)
	var bo atomicx.Backoff
	for {
		s := atomic.LoadUint64(st)
		if genOf(s) != gen || s&allocBit == 0 {
			c.unlock(idx, writerBit)
			return staleToken(op, t)
		}
		if s&readerMask == 0 {
			return nil
		}
		bo.Wait()
	}
}

// unlock drops a hold (1 for a reader, writerBit for the writer). Whoever
// drops the last hold on a freed slot recycles it.
//
// The drop itself needs no gate section: the hold being dropped is what
// keeps Close from unmapping (Close waits for every hold), and once it is
// dropped unlock touches the slot no more. Only a recycle, which writes a
// freelist, enters a section, and skips the write if Close has begun (the
// memory is going away; a retirement is still counted).
func (c *core) unlock(idx uint32, hold uint64) {
	if ns := atomic.AddUint64(c.state(idx), -hold); ns&(allocBit|holders) == 0 {
		c.recycleLate(idx, ns)
	}
}

// unlockRead is unlock(idx, 1), small enough to inline.
func (c *core) unlockRead(idx uint32) {
	if ns := atomic.AddUint64(c.state(idx), ^uint64(0)); ns&(allocBit|holders) == 0 {
		c.recycleLate(idx, ns)
	}
}

// recycleLate recycles a slot whose last hold unlock dropped outside a gate
// section.
func (c *core) recycleLate(idx uint32, state uint64) {
	p := c.gate.EnterAny()
	switch {
	case !c.gate.Closed():
		c.recycle(p, idx, state)
		c.gate.Exit(p)
		c.freed() // wake a waiter, if any (wait.go)
		return
	case genOf(state) == retiredGen:
		c.retired.Add(1)
	}
	c.gate.Exit(p)
}

// unlockWriter drops Update's writer hold. It first advances the slot's
// version, so that a Load that copied while the writer ran sees the change
// and copies again (slot.go). Only the writer writes the version, so a
// plain increment is enough; the atomic drop that follows publishes it.
func (c *core) unlockWriter(idx uint32) {
	ver := c.version(idx)
	if raceEnabled {
		atomic.AddUint32(ver, 1)
	} else {
		*ver++
	}
	c.unlock(idx, writerBit)
}
