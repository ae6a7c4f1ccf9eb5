package memclass

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// ErrListSyntax is returned (wrapped with the offending text) by ParseCPUList
// for text that is not a kernel list.
var ErrListSyntax = errors.New("memclass: malformed cpu/node list")

// maxListValue bounds the numbers ParseCPUList accepts, so that a corrupt
// file cannot make it allocate without bound.
const maxListValue = 1 << 20

// ParseCPUList parses the kernel's list format used by cpulist, online and
// possible files in sysfs: comma-separated numbers and inclusive ranges, for
// example "0-3,8-11" or "0,2". Ranges may carry a stride ("0-7:2" is
// 0,2,4,6). Surrounding white space and an empty list are accepted. The
// result is sorted and free of duplicates.
func ParseCPUList(s string) ([]int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	seen := map[int]bool{}
	var out []int
	add := func(v int) {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		stride := 1
		if i := strings.IndexByte(part, ':'); i >= 0 {
			st, err := listNumber(part[i+1:], s)
			if err != nil {
				return nil, err
			}
			if st == 0 {
				return nil, fmt.Errorf("%w: zero stride in %q", ErrListSyntax, s)
			}
			stride, part = st, part[:i]
		}
		lo, hi := part, part
		if i := strings.IndexByte(part, '-'); i >= 0 {
			lo, hi = part[:i], part[i+1:]
		}
		a, err := listNumber(lo, s)
		if err != nil {
			return nil, err
		}
		b, err := listNumber(hi, s)
		if err != nil {
			return nil, err
		}
		if b < a {
			return nil, fmt.Errorf("%w: descending range %q in %q", ErrListSyntax, part, s)
		}
		for v := a; v <= b; v += stride {
			add(v)
		}
	}
	slices.Sort(out)
	return out, nil
}

func listNumber(t, whole string) (int, error) {
	v, err := strconv.Atoi(strings.TrimSpace(t))
	if err != nil || v < 0 || v > maxListValue {
		return 0, fmt.Errorf("%w: %q in %q", ErrListSyntax, t, whole)
	}
	return v, nil
}

// FormatCPUList writes ids (any order, duplicates allowed) in the kernel's list
// format. Runs of three or more consecutive ids become ranges ("0-3,8-11");
// shorter runs stay as single ids ("0,1"). ParseCPUList reads it back.
func FormatCPUList(ids []int) string {
	v := append([]int(nil), ids...)
	slices.Sort(v)
	var b strings.Builder
	for i := 0; i < len(v); {
		j := i
		for j+1 < len(v) && v[j+1] <= v[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if v[j]-v[i] >= 2 {
			b.WriteString(strconv.Itoa(v[i]) + "-" + strconv.Itoa(v[j]))
		} else {
			b.WriteString(strconv.Itoa(v[i]))
			if v[j] != v[i] {
				b.WriteString("," + strconv.Itoa(v[j]))
			}
		}
		i = j + 1
	}
	return b.String()
}
