// Package store keeps smolvm's state in one SQLite database (WAL): VMs and their
// status transitions, each a transaction, safe for concurrent processes.
package store
