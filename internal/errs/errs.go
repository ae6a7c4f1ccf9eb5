// Package errs holds the error shapes cella's packages share.
package errs

// multi is an error with its own text that matches several sentinels with
// errors.Is. fmt.Errorf("%w: %w", a, b) would repeat the package prefix of
// both.
type multi struct {
	msg  string
	errs []error
}

// Multi returns an error reading msg that matches every one of errs.
func Multi(msg string, errs ...error) error { return &multi{msg: msg, errs: errs} }

func (e *multi) Error() string   { return e.msg }
func (e *multi) Unwrap() []error { return e.errs }
