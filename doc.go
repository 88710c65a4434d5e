// Package smolvm creates, runs and throws away microVM sandboxes: fresh,
// fully isolated Linux machines that boot in well under a second on KVM and
// run commands over a guest agent with millisecond latency.
//
// A VM is created with [New], started with [VM.Start], commanded with
// [VM.Run] and removed with [VM.Delete]. Each started VM is owned by a small
// supervisor process, so it outlives the program that created it: [Open]
// finds it again by id and [List] lists them all. State lives in one SQLite
// database under the data directory (see [WithDataDir]).
package smolvm
