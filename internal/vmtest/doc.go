// Package vmtest holds helpers for tests that boot real VMs: prerequisites,
// the test binary's data dir, and the gate that turns the VM tier on.
package vmtest
