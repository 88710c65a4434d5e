package supervisor

import (
	"log/slog"
	"time"

	"github.com/smolvm/smolvm/internal/vmm"
	"github.com/smolvm/smolvm/internal/vmm/firecracker"
)

// Plan is what a supervisor launches, saved in the VM's row by whoever
// starts the VM and read by the supervisor.
type Plan struct {
	Backend     string        `json:"backend"`
	VMM         vmm.Spec      `json:"vmm"`
	BootTimeout time.Duration `json:"boot_timeout"`      // how long to wait for the agent's hello
	Net         *NetPlan      `json:"net,omitempty"`     // the VM's network (nil: none)
	Restore     *RestorePlan  `json:"restore,omitempty"` // resume a snapshot instead of booting (snapshot.go)
	Jailer      *JailerPlan   `json:"jailer,omitempty"`  // run firecracker through its jailer
}

// JailerPlan asks for Firecracker's jailer: chroot, uid/gid drop, cgroups.
type JailerPlan struct {
	UID        int    `json:"uid"`
	GID        int    `json:"gid"`
	ChrootBase string `json:"chroot_base,omitempty"` // default /srv/jailer
}

// FirecrackerOptions are the Firecracker backend options p asks for.
func (p Plan) FirecrackerOptions(log *slog.Logger) firecracker.Options {
	o := firecracker.Options{Logger: log}
	if j := p.Jailer; j != nil {
		o.UseJailer, o.UID, o.GID, o.ChrootBase = true, j.UID, j.GID, j.ChrootBase
	}
	return o
}

// File names inside a VM's directory.
const (
	ControlSocket = "ctl.sock"       // the supervisor's API
	LogFile       = "supervisor.log" // the supervisor's own log
	ConsoleFile   = "console.log"    // the guest's serial console
)

// DefaultBootTimeout bounds the wait for the agent when the plan sets none.
// Generous, because a TCG guest on a loaded 2-core host boots slowly.
const DefaultBootTimeout = 120 * time.Second
