package token_test

import (
	"fmt"

	"github.com/cella-go/cella/token"
)

func ExampleToken() {
	t := token.New(7, 3)
	fmt.Println(t, t.Index(), t.Generation(), t.IsNil(), token.Nil.IsNil())
	// Output: 7@3 7 3 false true
}
