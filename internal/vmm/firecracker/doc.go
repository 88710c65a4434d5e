// Package firecracker launches and controls Firecracker microVMs through their
// HTTP API over a unix socket, with hybrid vsock for the agent.
package firecracker
