// Package firecracker launches and controls Firecracker microVMs through their
// HTTP API over a unix socket (optionally under the jailer), with hybrid vsock
// for the agent, pause/resume and snapshot create/load.
package firecracker
