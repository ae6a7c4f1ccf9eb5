// Package memclass names where an arena's memory lives and maps regions that
// honour that choice.
//
// A Class is an immutable value. Its zero value is Host(): a plain anonymous,
// private mapping with no placement policy. Map reserves address space for a
// class without committing it: pages become resident only when they are first
// touched, so a huge arena costs nothing until its slots are used.
//
// Regions are mapped with MAP_NORESERVE so that reserving far more address space
// than the machine has memory does not trip the kernel's overcommit heuristic.
package memclass
