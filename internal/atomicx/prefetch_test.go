package atomicx

import (
	"testing"
	"unsafe"
)

// TestPrefetchWriteChangesNothing: the hints (for writing and for
// reading) leave memory as they found it, at every offset of a line and at
// both ends of a buffer.
func TestPrefetchWriteChangesNothing(t *testing.T) {
	buf := make([]byte, 4*CacheLine)
	for i := range buf {
		buf[i] = byte(i)
	}
	for off := range buf {
		PrefetchWrite(unsafe.Pointer(&buf[off]))
		Prefetch(unsafe.Pointer(&buf[off]))
	}
	for i, b := range buf {
		if b != byte(i) {
			t.Fatalf("byte %d is %d after prefetches, want %d", i, b, byte(i))
		}
	}
}
