package memclass_test

import (
	"errors"
	"fmt"

	"github.com/cella-go/cella/arena"
	"github.com/cella-go/cella/memclass"
)

// The classes, as they print. Each one is applied with real syscalls by
// memclass.Map (and arena.New) and read back.
func Example() {
	for _, c := range []memclass.Class{
		memclass.Host(),                            // no policy: first touch
		memclass.Bind(0),                           // pages only from node 0
		memclass.Prefer(0),                         // node 0 first
		memclass.Interleave(0),                     // round-robin over the nodes
		memclass.Local(),                           // the toucher's node
		memclass.PerNode(),                         // one part per node, each bound to it
		memclass.Host().WithTHP(),                  // transparent huge pages
		memclass.Bind(0).Prefault(),                // populated at New
		memclass.Host().WithHugeTLB().BestEffort(), // hugetlb if reserved, else recorded and skipped
	} {
		fmt.Println(c)
	}
	// Output:
	// host
	// bind(0)
	// prefer(0)
	// interleave(0)
	// local
	// pernode
	// host+thp
	// bind(0)+prefault
	// host+hugetlb+besteffort
}

// An arena bound to node 0, checked against what the kernel did; a node
// that does not exist is a clear error, before anything is mapped.
func Example_arena() {
	a, err := arena.New[[64]byte](arena.Config{Slots: 1 << 10, Class: memclass.Bind(0)})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer a.Close()
	fmt.Println(a.Class())

	_, err = arena.New[[64]byte](arena.Config{Slots: 1 << 10, Class: memclass.Bind(63)})
	fmt.Println(errors.Is(err, memclass.ErrNoSuchNode))
	// Output:
	// bind(0)
	// true
}
