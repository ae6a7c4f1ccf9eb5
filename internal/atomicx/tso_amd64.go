package atomicx

// tso is true where the hardware keeps stores in program order and never
// moves a store ahead of an earlier load (x86-TSO): there a plain store
// publishes like a release store (StoreRelease64).
const tso = true
