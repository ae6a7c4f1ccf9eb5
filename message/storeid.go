package message

import "reflect"

// storeIdentity returns what identifies the store behind hs: the *Store[P]
// itself for a *Store[P] or a *ByteStore[B] (which embeds one), hs for any
// other HeaderStore.
func storeIdentity(hs HeaderStore) any {
	if s, ok := hs.(interface{ storeSelf() any }); ok {
		return s.storeSelf()
	}
	return hs
}

// storeSelf returns s; ByteStore promotes it, so that an edge built on a
// ByteStore and a graph built on its embedded Store agree.
func (s *Store[P]) storeSelf() any { return s }

// sameStore compares two store identities without panicking on
// HeaderStore implementations whose dynamic type is not comparable (those
// it cannot tell apart, so it reports them the same).
func sameStore(a, b any) bool {
	ta, tb := reflect.TypeOf(a), reflect.TypeOf(b)
	if ta != tb {
		return false
	}
	if ta == nil || !ta.Comparable() {
		return true // both nil, or values that cannot be told apart
	}
	return a == b
}
