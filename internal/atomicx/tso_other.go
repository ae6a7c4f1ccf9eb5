//go:build !amd64

package atomicx

// tso: see tso_amd64.go. Elsewhere StoreRelease64 is an atomic store.
const tso = false
