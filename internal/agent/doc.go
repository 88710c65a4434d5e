// Package agent is the guest side of smolvm: it runs as PID 1 from the initramfs,
// prepares the machine, pivots into the root disk and serves the host's requests.
package agent
