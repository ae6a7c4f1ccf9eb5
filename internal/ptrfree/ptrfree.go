// Package ptrfree tells whether a type may live in memory the garbage
// collector does not scan: an mmap'd arena, or a segment shared with other
// processes. Such a type must hold no Go pointer anywhere: no pointer,
// slice, string, map, channel, func, interface or unsafe.Pointer, however
// deeply nested in structs and arrays.
package ptrfree

import (
	"fmt"
	"reflect"
)

// Path returns the path to the first pointer-holding part of t, written from
// name (for example "main.Msg.Tags (slice)"), and true; or "", false when t
// holds no Go pointer.
func Path(t reflect.Type, name string) (string, bool) {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return "", false
	case reflect.Array:
		return Path(t.Elem(), name+"[]")
	case reflect.Struct:
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if p, ok := Path(f.Type, name+"."+f.Name); ok {
				return p, true
			}
		}
		return "", false
	default: // Pointer, UnsafePointer, Slice, String, Map, Chan, Func, Interface
		return fmt.Sprintf("%s (%s)", name, t.Kind()), true
	}
}
