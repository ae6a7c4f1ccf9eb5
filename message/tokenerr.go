package message

import (
	"fmt"

	"github.com/cella-go/cella/arena"
)

var errNilToken = fmt.Errorf("message: send: %w: the Nil token", arena.ErrBadToken)
