// Package atomicx holds the small concurrency helpers the rest of cella is
// built from: cache-line padding that explains its own size, a backoff for
// waiting on a word another goroutine will change, release stores that
// are plain stores where the hardware orders them (x86-TSO), an asymmetric
// process-wide barrier (membarrier) for rare slow paths, the race
// detector's build flag, and a prefetch-for-write hint.
package atomicx
