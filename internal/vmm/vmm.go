package vmm

import (
	"context"
	"errors"
	"net"
)

// Disk is one block device given to the guest, in order: the first is the
// root disk (/dev/vda), the next /dev/vdb and so on.
type Disk struct {
	Path     string
	ReadOnly bool
	Format   string // "raw" (default) or "qcow2"; backends that cannot take qcow2 refuse it
}

// Spec describes one VM to launch. Paths are absolute. The backend creates
// its sockets inside Dir, which the caller owns and removes.
type Spec struct {
	ID         string
	Dir        string // per-VM run directory: sockets, pid files (keep it short: sun_path is 108 bytes)
	Kernel     string
	Initrd     string
	Cmdline    string // kernel command line; the backend may append its own options
	VCPUs      int
	MemoryMiB  int
	Disks      []Disk
	ConsoleLog string // file the serial console is written to
	Net        []NetIf
}

// NetIf is one guest network interface.
type NetIf struct {
	Mode      string // "user" (VMM's own user-mode stack; QEMU only) or "tap"
	Tap       string // host tap device name, for "tap"
	MAC       string // guest MAC address, e.g. 06:00:ac:10:00:02
	RxRateBps int64  // bytes per second into the guest; 0 = unlimited
	TxRateBps int64  // bytes per second out of the guest; 0 = unlimited
}

// Backend starts VMMs of one kind.
type Backend interface {
	// Name is the backend's name as users type it ("qemu", "firecracker").
	Name() string
	// Check says whether the backend can run here, and if not, why and what
	// to install: nil means usable.
	Check(ctx context.Context) error
	// Launch starts a VMM for spec. ctx bounds start-up only: the VMM
	// outlives it. The VM is running (or booting) when Launch returns.
	Launch(ctx context.Context, spec Spec) (Instance, error)
}

// Instance is one running VMM, owned by the process that launched it.
// Its methods are safe for concurrent use.
type Instance interface {
	// PID is the VMM process's id.
	PID() int
	// Accel names the acceleration in use ("kvm", "tcg", ...).
	Accel() string
	// DialAgent connects to the guest agent's channel. The guest side keeps
	// one connection; callers dial once and multiplex over it.
	DialAgent(ctx context.Context) (net.Conn, error)
	// Shutdown asks the VMM to stop the guest now (no guest cooperation)
	// and waits for the process to exit or ctx to end.
	Shutdown(ctx context.Context) error
	// Kill ends the VMM process with SIGKILL.
	Kill() error
	// Done is closed when the VMM process has exited; Err then says how.
	Done() <-chan struct{}
	// Err is the VMM's exit status once Done is closed (nil for exit 0).
	Err() error
}

// Optional features are small interfaces found by type assertion.

// Pauser pauses and resumes a running guest's vCPUs.
type Pauser interface {
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
}

// Snapshotter writes a paused guest's memory and device state into dir
// (disks are the caller's to copy).
type Snapshotter interface {
	Snapshot(ctx context.Context, dir string) error
}

// Restorer is a Backend that can start a VMM from a snapshot directory that
// an Instance's Snapshot wrote; spec supplies the new VM's paths and sockets.
type Restorer interface {
	Restore(ctx context.Context, spec Spec, snapshotDir string) (Instance, error)
}

// ErrUnavailable is wrapped by Check when a backend cannot run on this host.
var ErrUnavailable = errors.New("backend unavailable")
