package memclass

import (
	"errors"
	"slices"
	"testing"
)

func TestHostIsZeroValue(t *testing.T) {
	var zero Class
	if zero != Host() {
		t.Fatal("zero Class must equal Host()")
	}
	if Host().String() != "host" {
		t.Fatalf("String = %q", Host().String())
	}
}

func TestClassString(t *testing.T) {
	for _, tc := range []struct {
		c    Class
		want string
	}{
		{Host(), "host"},
		{Bind(1), "bind(1)"},
		{Prefer(0), "prefer(0)"},
		{Interleave(0, 1), "interleave(0,1)"},
		{Interleave(3, 0, 1, 2, 8), "interleave(0-3,8)"},
		{Interleave(), "interleave(all)"},
		{Local(), "local"},
		{PerNode().WithHugeTLB().BestEffort(), "pernode+hugetlb+besteffort"},
		{Interleave(0, 1).WithTHP().Locked(), "interleave(0,1)+thp+locked"},
		{Bind(0).Prefault().BestEffort().Strict(), "bind(0)+prefault"},
		{Device(2), "device(2)"},
		{PinnedHost(), "pinnedhost"},
		{Shared(), "shared"},
		{Bind(-3), "bind(-3!)"},
		{Interleave(0, 5000), "interleave(5000!)"},
	} {
		if got := tc.c.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}

func TestClassValues(t *testing.T) {
	a := Interleave(1, 0)
	b := Interleave(0, 1, 1)
	if a != b {
		t.Fatal("the same node set must give equal classes")
	}
	c := a.WithTHP()
	if a.THP() || !c.THP() {
		t.Fatal("modifiers must return a new value and leave the receiver alone")
	}
	if !slices.Equal(c.Nodes(), []int{0, 1}) || c.Kind() != KindInterleave || c.Node() != -1 {
		t.Fatalf("Nodes = %v Kind = %v Node = %d", c.Nodes(), c.Kind(), c.Node())
	}
	if Bind(3).Node() != 3 || !slices.Equal(Bind(3).Nodes(), []int{3}) {
		t.Fatal("Bind(3) node")
	}
	if !PerNode().IsPerNode() || Bind(0).IsPerNode() {
		t.Fatal("IsPerNode")
	}
	if !Host().IsStrict() || Host().BestEffort().IsStrict() {
		t.Fatal("strict is the default")
	}
	l := Host().Locked().Prefault().WithHugeTLB()
	if !l.IsLocked() || !l.IsPrefault() || !l.HugeTLB() || l.THP() {
		t.Fatal("modifier predicates")
	}
}

func TestBadNodesAreErrorsNotPanics(t *testing.T) {
	for _, c := range []Class{Bind(-1), Prefer(1 << 40), Interleave(0, -2), Bind(MaxNodes), Device(-1)} {
		r, err := Map(c, PageSize)
		if !errors.Is(err, ErrNoSuchNode) {
			t.Errorf("%s: err = %v, want ErrNoSuchNode", c, err)
		}
		if r != nil {
			t.Errorf("%s: got a region with an error", c)
		}
	}
}
