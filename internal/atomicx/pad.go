package atomicx

// CacheLine is the stride at which cella separates words that different cores
// write. Most x86 cores have 64-byte lines, but the adjacent-line prefetcher
// pulls lines in pairs, so two hot words 64 bytes apart still fight over the
// same pair. 128 bytes is what sync.Pool pads its per-P data to, for the same
// reason.
const CacheLine = 128

// Pad is one cache-line stride of unused bytes. Put it between (or after)
// fields that different cores write so that each sits alone on its line.
type Pad [CacheLine]byte
