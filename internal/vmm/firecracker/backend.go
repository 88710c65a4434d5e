package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/vmm"
)

// Options configure a Backend. The zero value runs "firecracker" from PATH
// without the jailer.
type Options struct {
	// Binary is the firecracker executable, a path or a name looked up on
	// PATH. Default: "firecracker".
	Binary string
	// JailerBinary is the jailer executable (path or name). Default: "jailer".
	JailerBinary string
	// UseJailer starts firecracker through the jailer: chroot, uid/gid drop,
	// cgroups and optionally a network namespace.
	UseJailer bool
	// UID and GID the jailed firecracker runs as (jailer only).
	UID, GID int
	// ChrootBase is the jailer's --chroot-base-dir. Default: /srv/jailer.
	ChrootBase string
	// NetNS is the network namespace firecracker joins, a path or a name
	// under /var/run/netns (jailer only).
	NetNS string
	// CgroupVersion (1 or 2) and Cgroups ("cpu.max=50000 100000" style
	// file=value pairs) are passed to the jailer; empty means none.
	CgroupVersion int
	Cgroups       []string
	// Metrics makes firecracker flush its metrics, one JSON line a minute,
	// to metrics.json in the VM's directory.
	Metrics bool
	// ShutdownGrace is how long Shutdown lets the guest react to
	// Ctrl-Alt-Del before SIGKILL. Default: 500ms.
	ShutdownGrace time.Duration
	// Logger receives launch and exit records; nil discards them.
	Logger *slog.Logger
	// KVMDevice is the KVM device node. Default: /dev/kvm.
	KVMDevice string
}

// Backend launches Firecracker microVMs. It holds no per-VM state and is
// safe for concurrent use.
type Backend struct {
	opts Options
	log  *slog.Logger
}

var (
	_ vmm.Backend  = (*Backend)(nil)
	_ vmm.Restorer = (*Backend)(nil)
)

// New returns a Firecracker backend configured by opts.
func New(opts Options) *Backend {
	if opts.Binary == "" {
		opts.Binary = "firecracker"
	}
	if opts.JailerBinary == "" {
		opts.JailerBinary = "jailer"
	}
	if opts.ChrootBase == "" {
		opts.ChrootBase = "/srv/jailer"
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = 500 * time.Millisecond
	}
	if opts.KVMDevice == "" {
		opts.KVMDevice = "/dev/kvm"
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Backend{opts: opts, log: log}
}

// Name returns "firecracker".
func (b *Backend) Name() string { return "firecracker" }

// Check reports whether Firecracker can run here: the KVM device must open
// read-write and answer the KVM API, and the binaries must be found. The
// error wraps vmm.ErrUnavailable and says what to fix.
func (b *Backend) Check(ctx context.Context) error {
	var problems []string
	if err := CheckKVM(b.opts.KVMDevice); err != nil {
		problems = append(problems, err.Error())
	}
	if _, err := b.Binary(); err != nil {
		problems = append(problems, err.Error())
	}
	if b.opts.UseJailer {
		if _, err := lookBinary(b.opts.JailerBinary, "jailer"); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", vmm.ErrUnavailable, strings.Join(problems, "; "))
	}
	return nil
}

// Binary returns the path of the firecracker executable Launch would run.
func (b *Backend) Binary() (string, error) {
	return lookBinary(b.opts.Binary, "firecracker")
}

func lookBinary(name, what string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s binary not found (%s): download a Firecracker release (firecracker-microvm/firecracker on GitHub) and put %s on PATH or pass its path", what, name, what)
	}
	return p, nil
}

// kvmAPIVersion is the only KVM API version Linux has ever shipped.
const kvmAPIVersion = 12

// CheckKVM says whether dev (normally /dev/kvm) is a usable KVM device: it
// must open read-write and report the stable KVM API. nil means usable.
func CheckKVM(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("no %s: enable hardware virtualisation (VT-x/AMD-V, or nested virtualisation for a cloud VM) and load kvm_intel or kvm_amd", dev)
		case errors.Is(err, os.ErrPermission):
			return fmt.Errorf("%s is not accessible read-write: add this user to the kvm group (usermod -aG kvm $USER) or run as root", dev)
		}
		return fmt.Errorf("opening %s: %w", dev, err)
	}
	defer f.Close()
	const kvmGetAPIVersion = 0xAE00 // _IO(KVMIO, 0x00)
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil {
		return fmt.Errorf("%s does not answer KVM_GET_API_VERSION: %w", dev, err)
	}
	if v != kvmAPIVersion {
		return fmt.Errorf("%s reports KVM API %d, want %d", dev, v, kvmAPIVersion)
	}
	if runtime.GOARCH == "amd64" && !vmm.CPUHasVirt("/proc/cpuinfo") {
		return fmt.Errorf("%s opens but the CPU shows no vmx/svm flag: hardware virtualisation is not available here (for a cloud VM, turn on nested virtualisation)", dev)
	}
	return nil
}
