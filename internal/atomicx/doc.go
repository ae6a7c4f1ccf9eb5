// Package atomicx holds the small concurrency helpers the rest of cella is
// built from: cache-line padding that explains its own size, a backoff for
// waiting on a word another goroutine will change, and a counter that is
// spread over padded stripes so that no single word is hot.
package atomicx
