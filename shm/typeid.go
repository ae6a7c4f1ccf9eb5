package shm

import (
	"hash/fnv"
	"reflect"
	"strconv"
)

// fingerprint hashes the shape of t: kinds, sizes, alignments, field names
// and offsets, recursively. Two programs that declare the same struct (even
// in differently named packages) get the same fingerprint; a reordered,
// renamed, resized or retyped field changes it.
func fingerprint(t reflect.Type) uint64 {
	h := fnv.New64a()
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		h.Write([]byte(t.Kind().String()))
		h.Write(strconv.AppendUint(nil, uint64(t.Size()), 10))
		h.Write([]byte{'/'})
		h.Write(strconv.AppendUint(nil, uint64(t.Align()), 10))
		switch t.Kind() {
		case reflect.Array:
			h.Write([]byte{'['})
			h.Write(strconv.AppendUint(nil, uint64(t.Len()), 10))
			h.Write([]byte{']'})
			walk(t.Elem())
		case reflect.Struct:
			h.Write([]byte{'{'})
			for i := 0; i < t.NumField(); i++ {
				f := t.Field(i)
				h.Write([]byte(f.Name))
				h.Write([]byte{'@'})
				h.Write(strconv.AppendUint(nil, uint64(f.Offset), 10))
				h.Write([]byte{':'})
				walk(f.Type)
				h.Write([]byte{';'})
			}
			h.Write([]byte{'}'})
		}
	}
	walk(t)
	return h.Sum64()
}
