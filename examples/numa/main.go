// Command numa prints the machine's NUMA topology, maps regions with several
// memory classes, touches every page from this process, and prints where the
// pages really landed, as the kernel reports it.
//
//	go run ./examples/numa
package main

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"github.com/cella-go/cella/memclass"
)

const regionBytes = 8 << 20

func main() {
	topo, err := memclass.SystemTopology()
	if err != nil {
		fmt.Fprintln(os.Stderr, "topology:", err)
		os.Exit(1)
	}
	fmt.Print(topo)
	cpu, node := memclass.CurrentCPU()
	fmt.Printf("this thread runs on cpu %d, node %d\n\n", cpu, node)

	ids := topo.NodeIDs()
	last := ids[len(ids)-1]
	classes := []memclass.Class{
		memclass.Host(),
		memclass.Bind(last),
		memclass.Prefer(ids[0]),
		memclass.Interleave(),
		memclass.Local(),
		memclass.Bind(ids[0]).WithTHP().Prefault(),
		memclass.Host().WithHugeTLB().BestEffort(),
		memclass.Bind(ids[0]).Locked(),
		memclass.Bind(last + 4), // not online: ErrNoSuchNode before any syscall
		memclass.Device(0),      // no Provider registered: ErrUnsupported
	}
	for _, c := range classes {
		show(c, -1)
	}
	for _, n := range ids {
		show(memclass.PerNode(), n)
	}
}

// show maps one region, writes every page and reports placement.
func show(c memclass.Class, node int) {
	name := c.String()
	var r *memclass.Region
	var err error
	if c.IsPerNode() {
		name = fmt.Sprintf("%s node %d", c, node)
		r, err = memclass.MapNode(c, node, regionBytes)
	} else {
		r, err = memclass.Map(c, regionBytes)
	}
	if err != nil {
		kind := "error"
		for _, s := range []error{memclass.ErrNoSuchNode, memclass.ErrUnsupported, memclass.ErrMemlock} {
			if errors.Is(err, s) {
				kind = "refused as expected"
			}
		}
		fmt.Printf("%-34s %s: %v\n", name, kind, err)
		return
	}
	defer r.Unmap()
	for off := uintptr(0); off < r.Len(); off += r.PageSize() {
		*(*byte)(unsafe.Add(r.Base(), off)) = 1
	}
	pol, perr := r.Policy()
	res, rerr := r.Residency()
	huge, herr := r.HugePageBytes()
	if err := errors.Join(perr, rerr, herr); err != nil {
		fmt.Printf("%-34s readback failed: %v\n", name, err)
		return
	}
	fmt.Printf("%-34s policy %-14s %d pages of %d KiB resident, per node %v, %d KiB in huge pages\n",
		name, pol, res.Resident, res.PageSize>>10, res.PerNode, huge>>10)
	for _, f := range r.Fallbacks() {
		fmt.Printf("%-34s   fallback: %s\n", "", f)
	}
}
