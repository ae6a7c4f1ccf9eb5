//go:build !purego

package clock

// haveTSC: this build can read the time-stamp counter (whether the kernel
// trusts it is decided at run time, see trusted).
const haveTSC = true

// readTSC returns the time-stamp counter (RDTSC). It is not ordered with
// the instructions around it: it may read the counter a little before
// earlier instructions finish, never after later ones have used its result.
func readTSC() uint64

// readTSCOrdered returns the time-stamp counter after every earlier
// instruction has completed (LFENCE; RDTSC), as the kernel's vDSO reads it.
func readTSCOrdered() uint64
