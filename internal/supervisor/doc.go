// Package supervisor is the per-VM process that owns the VMM, the agent connection
// and cleanup, and serves clients over a unix socket; it outlives its creator.
package supervisor
