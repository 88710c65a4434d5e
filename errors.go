package smolvm

import "errors"

// Sentinel errors, tested with errors.Is.
var (
	// ErrNotFound: no VM (or image) by that name.
	ErrNotFound = errors.New("not found")
	// ErrExists: a VM by that name exists already.
	ErrExists = errors.New("already exists")
	// ErrInvalid: the configuration or an argument is not acceptable.
	ErrInvalid = errors.New("invalid")
	// ErrState: the VM is not in a state that allows the operation
	// (exec on a stopped VM, start of a running one).
	ErrState = errors.New("wrong state")
)
