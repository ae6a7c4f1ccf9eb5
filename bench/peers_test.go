package bench

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// The peers must be correct, or the comparison means nothing. These tests
// run under -race in CI.

// indexed reports whether an implementation's handles are slot indices
// (or tokens whose low 32 bits are the index) below the capacity.
func indexed(name string) bool {
	switch name {
	case nameMutex, nameChan, nameTreiber, nameCella:
		return true
	}
	return false
}

func TestPeersExhaustAndRefill(t *testing.T) {
	const capacity = 257
	for _, im := range impls[P64]() {
		if !indexed(im.name) {
			continue
		}
		t.Run(im.name, func(t *testing.T) {
			p := im.make(capacity)
			defer p.close()
			for round := 0; round < 3; round++ {
				seen := make(map[uint32]bool)
				var hs []uint64
				var ps []*P64
				for i := 0; i < capacity; i++ {
					h, q, ok := p.get()
					if !ok {
						t.Fatalf("round %d: empty after %d gets, capacity %d", round, i, capacity)
					}
					idx := uint32(h)
					if seen[idx] {
						t.Fatalf("round %d: slot %d handed out twice", round, idx)
					}
					seen[idx] = true
					if first(q) != 0 {
						t.Fatalf("round %d: slot %d not zeroed", round, idx)
					}
					stamp(q, uint64(i)+1)
					hs = append(hs, h)
					ps = append(ps, q)
				}
				if _, _, ok := p.get(); ok {
					t.Fatalf("round %d: get succeeded past capacity", round)
				}
				for i, h := range hs {
					if first(ps[i]) != uint64(i)+1 {
						t.Fatalf("round %d: slot %d overwritten while held", round, uint32(h))
					}
					p.put(h, ps[i])
				}
			}
		})
	}
}

// TestPeersNoDoubleHandout hammers every implementation from many
// goroutines. Each holder marks the slot as its own (an ownership word per
// index for the index-based pools) and stamps the payload with a value only
// it uses, then checks both before giving the object back.
func TestPeersNoDoubleHandout(t *testing.T) {
	const capacity = 64
	goroutines := 4 * runtime.GOMAXPROCS(0)
	if goroutines < 8 {
		goroutines = 8
	}
	iters := 20000
	if testing.Short() || raceEnabled {
		iters = 3000
	}
	for _, im := range impls[P64]() {
		t.Run(im.name, func(t *testing.T) {
			p := im.make(capacity)
			defer p.close()
			owner := make([]atomic.Int32, capacity)
			var failed atomic.Bool
			var wg sync.WaitGroup
			for g := 1; g <= goroutines; g++ {
				wg.Add(1)
				go func(g int) {
					defer wg.Done()
					l := p.local()
					type held struct {
						h uint64
						p *P64
						v uint64
					}
					var mine []held
					for i := 0; i < iters && !failed.Load(); i++ {
						// Hold up to 3 objects at once, so frees interleave
						// with other goroutines' allocations.
						if len(mine) < 3 {
							h, q, ok := l.get()
							if ok {
								if first(q) != 0 {
									t.Errorf("%s: object not zeroed on get", im.name)
									failed.Store(true)
								}
								if indexed(im.name) && !owner[uint32(h)].CompareAndSwap(0, int32(g)) {
									t.Errorf("%s: slot %d handed out while held by goroutine %d",
										im.name, uint32(h), owner[uint32(h)].Load())
									failed.Store(true)
								}
								v := uint64(g)<<32 | uint64(i) | 1
								stamp(q, v)
								mine = append(mine, held{h, q, v})
								continue
							} else if !indexed(im.name) {
								t.Errorf("%s: get failed", im.name)
								failed.Store(true)
							}
						}
						if len(mine) == 0 {
							runtime.Gosched()
							continue
						}
						x := mine[0]
						mine = mine[1:]
						if first(x.p) != x.v {
							t.Errorf("%s: object overwritten while held", im.name)
							failed.Store(true)
						}
						if indexed(im.name) && !owner[uint32(x.h)].CompareAndSwap(int32(g), 0) {
							t.Errorf("%s: ownership of slot %d lost", im.name, uint32(x.h))
							failed.Store(true)
						}
						l.put(x.h, x.p)
					}
					for _, x := range mine {
						if indexed(im.name) {
							owner[uint32(x.h)].Store(0)
						}
						l.put(x.h, x.p)
					}
				}(g)
			}
			wg.Wait()
			if !indexed(im.name) {
				return
			}
			// Every slot must be back: capacity gets succeed, one more fails.
			for i := 0; i < capacity; i++ {
				if _, _, ok := p.get(); !ok {
					t.Fatalf("%s: only %d of %d slots came back", im.name, i, capacity)
				}
			}
			if _, _, ok := p.get(); ok {
				t.Fatalf("%s: more slots than capacity", im.name)
			}
		})
	}
}

// TestTreiberABA interleaves pops and pushes of the same few slots so that a
// head value repeats often: without the tag a stale CAS would corrupt the
// stack and hand one slot to two holders, or lose one.
func TestTreiberABA(t *testing.T) {
	const capacity = 3
	s := newTreiberPool[P16](capacity)
	var inUse [capacity]atomic.Int32
	iters := 200000
	if testing.Short() || raceEnabled {
		iters = 20000
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < iters; i++ {
				// Pop two, push the first back while still holding the
				// second: the head returns to a value it had before with a
				// different slot below it, the ABA pattern.
				a, okA := s.pop()
				b, okB := s.pop()
				if okA && inUse[a].Add(1) != 1 {
					t.Errorf("slot %d popped twice", a)
					return
				}
				if okB && inUse[b].Add(1) != 1 {
					t.Errorf("slot %d popped twice", b)
					return
				}
				if okA {
					inUse[a].Add(-1)
					s.push(a)
				}
				if okB {
					inUse[b].Add(-1)
					s.push(b)
				}
			}
		}()
	}
	wg.Wait()
	n := 0 // bounded: a corrupted stack can hold a cycle
	for ; n <= capacity; n++ {
		if _, ok := s.pop(); !ok {
			break
		}
	}
	if n != capacity {
		t.Fatalf("stack holds %d slots after the run, want %d", n, capacity)
	}
}
