//go:build amd64 || 386

package arena

// loadFence keeps the payload loads of an optimistic Load before its second
// read of the state word and version. On x86 loads are not reordered with
// other loads, and the atomic loads that follow are compiler barriers, so
// nothing is needed.
func loadFence() {}
