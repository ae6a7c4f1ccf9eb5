//go:build !amd64

package message

// tso: see tso_amd64.go. Elsewhere storeRelease is an atomic store.
const tso = false
