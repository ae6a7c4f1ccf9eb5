package memclass

import (
	"errors"
	"slices"
	"testing"
)

func TestParseCPUList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
	}{
		{"0-3,8-11\n", []int{0, 1, 2, 3, 8, 9, 10, 11}},
		{"0", []int{0}},
		{"0,2", []int{0, 2}},
		{"", nil},
		{"\n", nil},
		{" 5 , 1-2 ", []int{1, 2, 5}},
		{"0-7:2", []int{0, 2, 4, 6}},
		{"3,1-3", []int{1, 2, 3}},
	} {
		got, err := ParseCPUList(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseCPUList(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"a", "1-", "-1", "3-1", "1,,2", "0-4:0", "99999999999", "0-2000000"} {
		if _, err := ParseCPUList(bad); !errors.Is(err, ErrListSyntax) {
			t.Errorf("ParseCPUList(%q) err = %v, want ErrListSyntax", bad, err)
		}
	}
}

func TestFormatCPUListRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		in   []int
		want string
	}{
		{[]int{0, 1, 2, 3, 8, 9, 10, 11}, "0-3,8-11"},
		{[]int{1, 0}, "0,1"},
		{[]int{5}, "5"},
		{nil, ""},
		{[]int{0, 2, 3, 4, 4, 9, 10}, "0,2-4,9,10"},
	} {
		got := FormatCPUList(tc.in)
		if got != tc.want {
			t.Errorf("FormatCPUList(%v) = %q, want %q", tc.in, got, tc.want)
		}
		back, err := ParseCPUList(got)
		want := slices.Compact(slices.Sorted(slices.Values(tc.in)))
		if err != nil || !slices.Equal(back, want) {
			t.Errorf("round trip of %v: %v, %v", tc.in, back, err)
		}
	}
}
