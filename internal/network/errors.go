package network

import "errors"

// Sentinel errors, matched with errors.Is.
var (
	// ErrInvalid is wrapped by errors about bad input (IDs, policies, ports).
	ErrInvalid = errors.New("invalid network argument")
	// ErrExists means the VM already has a network, or a link of its name exists.
	ErrExists = errors.New("already exists")
	// ErrNotFound means the VM or port has no network state here.
	ErrNotFound = errors.New("not found")
	// ErrExhausted means a pool (addresses, ports) has no free value left.
	ErrExhausted = errors.New("pool exhausted")
	// ErrLeaseTaken means a specific value asked for is leased to another VM.
	ErrLeaseTaken = errors.New("lease taken")
)
