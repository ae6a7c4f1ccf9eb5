package memclass

import (
	"fmt"
	"slices"
	"strconv"
)

// Mode is a kernel memory policy mode (the MPOL_* values of mbind(2)).
type Mode int

const (
	ModeDefault       Mode = 0 // MPOL_DEFAULT: no policy on the mapping
	ModePreferred     Mode = 1 // MPOL_PREFERRED
	ModeBind          Mode = 2 // MPOL_BIND
	ModeInterleave    Mode = 3 // MPOL_INTERLEAVE
	ModeLocal         Mode = 4 // MPOL_LOCAL
	ModePreferredMany Mode = 5 // MPOL_PREFERRED_MANY
)

// get_mempolicy flags and the mode-flag bits it may OR into the mode.
const (
	mpolFNode      = 1 << 0 // MPOL_F_NODE
	mpolFAddr      = 1 << 1 // MPOL_F_ADDR
	mpolModeFlags  = 1<<15 | 1<<14 | 1<<13
	mpolMFStrict   = 1 << 0 // MPOL_MF_STRICT
	mpolModeNumber = 0xff
)

func (m Mode) String() string {
	switch m {
	case ModeDefault:
		return "default"
	case ModePreferred:
		return "preferred"
	case ModeBind:
		return "bind"
	case ModeInterleave:
		return "interleave"
	case ModeLocal:
		return "local"
	case ModePreferredMany:
		return "preferred-many"
	}
	return "mode(" + strconv.Itoa(int(m)) + ")"
}

// Policy is a memory policy as the kernel reports it for a mapping.
type Policy struct {
	Mode  Mode
	Nodes []int // ascending; empty for default and local
}

func (p Policy) String() string {
	if len(p.Nodes) == 0 {
		return p.Mode.String()
	}
	return p.Mode.String() + ":" + FormatCPUList(p.Nodes)
}

// wantPolicy is the policy Map applies for class c, with node sets resolved
// against the online nodes. ok is false for classes that apply no policy.
func wantPolicy(c Class, online []int) (p Policy, ok bool, err error) {
	check := func(nodes []int) error {
		for _, n := range nodes {
			if !slices.Contains(online, n) {
				return fmt.Errorf("%w: class %s names node %d; online nodes are %s",
					ErrNoSuchNode, c, n, FormatCPUList(online))
			}
		}
		return nil
	}
	if c.flags&flagBadNode != 0 {
		return p, false, check([]int{c.node})
	}
	switch c.kind {
	case KindBind:
		return Policy{Mode: ModeBind, Nodes: c.Nodes()}, true, check(c.Nodes())
	case KindPrefer:
		return Policy{Mode: ModePreferred, Nodes: c.Nodes()}, true, check(c.Nodes())
	case KindInterleave:
		nodes := c.Nodes()
		if len(nodes) == 0 {
			nodes = online
		}
		return Policy{Mode: ModeInterleave, Nodes: nodes}, true, check(nodes)
	case KindLocal:
		return Policy{Mode: ModeLocal}, true, nil
	}
	return p, false, nil
}

// matches reports whether got (read back from the kernel) is the policy
// that want asked for. Kernels before 5.14 report MPOL_LOCAL as
// MPOL_PREFERRED with an empty node set.
func (want Policy) matches(got Policy) bool {
	if want.Mode == ModeLocal && got.Mode == ModePreferred && len(got.Nodes) == 0 {
		return true
	}
	if want.Mode == ModeLocal {
		return got.Mode == ModeLocal
	}
	return want.Mode == got.Mode && slices.Equal(want.Nodes, got.Nodes)
}
