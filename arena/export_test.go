package arena

// DebugNested exports debugNested to the external tests: builds with
// -tags cella_debug allocate on every callback (they track holds per
// goroutine), so the allocation tests skip there.
const DebugNested = debugNested
