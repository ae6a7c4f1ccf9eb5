//go:build !amd64 || purego

package clock

// haveTSC: this build has no counter to read; Now and Stamp are Mono.
const haveTSC = false

func readTSC() uint64        { return 0 }
func readTSCOrdered() uint64 { return 0 }
