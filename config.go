package smolvm

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
)

// DiskMode says how a VM's root disk relates to its image.
type DiskMode string

const (
	// DiskIsolated gives each VM its own writable copy of the image (the
	// default); nothing one VM writes is seen by another.
	DiskIsolated DiskMode = "isolated"
	// DiskShared boots every VM from the one image file, read-only, with a
	// writable layer in guest memory: writes are private and vanish at stop.
	DiskShared DiskMode = "shared"
)

// Limits and defaults.
const (
	DefaultVCPUs     = 1
	DefaultMemoryMiB = 512
	MinMemoryMiB     = 128
	MaxVCPUs         = 64
	DefaultImage     = "base"
)

// Config describes a VM. The zero value of each field takes its default.
type Config struct {
	Name          string            `json:"name,omitempty"`           // id; generated vm-<8 hex> when empty
	Image         string            `json:"image,omitempty"`          // image name (default "base"); ignored when Rootfs is set
	Rootfs        string            `json:"rootfs,omitempty"`         // path of an ext4 root filesystem image
	Kernel        string            `json:"kernel,omitempty"`         // guest kernel (bzImage or vmlinux); found automatically when empty
	KernelModules string            `json:"kernel_modules,omitempty"` // the kernel's lib/modules/VERSION dir, when it needs modules
	VCPUs         int               `json:"vcpus,omitempty"`
	MemoryMiB     int               `json:"memory_mib,omitempty"`
	DiskSizeMiB   int               `json:"disk_size_mib,omitempty"` // grow the isolated root disk to this size
	BootArgs      string            `json:"boot_args,omitempty"`     // extra kernel command line, after DefaultBootArgs
	DiskMode      DiskMode          `json:"disk_mode,omitempty"`
	RetainDisk    bool              `json:"retain_disk,omitempty"` // keep the root disk file on Delete
	Drives        []Drive           `json:"drives,omitempty"`      // extra block devices: /dev/vdb, /dev/vdc, ...
	Env           map[string]string `json:"env,omitempty"`         // environment of every command run in the VM
	Backend       string            `json:"backend,omitempty"`     // "qemu" or "firecracker"; chosen automatically when empty
	Jailer        *Jailer           `json:"jailer,omitempty"`      // Firecracker only: run it through its jailer

	// Network (see network.go). Net defaults to tap when this process is
	// root with CAP_NET_ADMIN, else user.
	Net         NetMode  `json:"net,omitempty"`           // none, user or tap
	Egress      string   `json:"egress,omitempty"`        // allow-all (default), deny-all or allowlist; tap only
	Allow       []string `json:"allow,omitempty"`         // allowlist entries: CIDR, address, domain, *.domain
	NetRateMbps int      `json:"net_rate_mbps,omitempty"` // per direction; 0 = unlimited; tap only
	AllowVMs    bool     `json:"allow_vms,omitempty"`     // may talk to other VMs that also allow it; tap only
	AllowHost   bool     `json:"allow_host,omitempty"`    // may reach every host address, not only DNS; tap only
	DNS         []string `json:"dns,omitempty"`           // upstreams of the VM's resolver (default the host's resolv.conf); tap only
}

// Jailer asks for Firecracker's jailer: firecracker runs chrooted, as UID
// and GID, in its own cgroup.
type Jailer struct {
	UID        int    `json:"uid"`
	GID        int    `json:"gid"`
	ChrootBase string `json:"chroot_base,omitempty"` // default /srv/jailer
}

// Drive is an extra block device.
type Drive struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

var (
	// Compiled on first use: package initialisation runs before the guest
	// agent's main too, where (under TCG) every millisecond of it is ~40.
	nameRE   = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9]([a-z0-9_-]{0,62}[a-z0-9])?$`) })
	envKeyRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`) })
)

// ValidName reports whether s is a valid VM name.
func ValidName(s string) bool { return nameRE().MatchString(s) }

// Validate checks c as New would, without touching anything: an error
// wraps ErrInvalid.
func (c Config) Validate() error {
	_, err := c.withDefaults()
	return err
}

// withDefaults returns c with defaults filled in, or an ErrInvalid error.
func (c Config) withDefaults() (Config, error) {
	if c.Name == "" {
		c.Name = newID()
	}
	if !ValidName(c.Name) {
		return c, fmt.Errorf("%w name %q: use 1-64 of a-z 0-9 _ -, starting and ending with a letter or digit", ErrInvalid, c.Name)
	}
	if c.VCPUs == 0 {
		c.VCPUs = DefaultVCPUs
	}
	if c.VCPUs < 1 || c.VCPUs > MaxVCPUs {
		return c, fmt.Errorf("%w vcpus %d: want 1 to %d", ErrInvalid, c.VCPUs, MaxVCPUs)
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = DefaultMemoryMiB
	}
	if c.MemoryMiB < MinMemoryMiB {
		return c, fmt.Errorf("%w memory %d MiB: the minimum is %d MiB", ErrInvalid, c.MemoryMiB, MinMemoryMiB)
	}
	if c.MemoryMiB > 1<<20 {
		return c, fmt.Errorf("%w memory %d MiB: more than 1 TiB", ErrInvalid, c.MemoryMiB)
	}
	if c.DiskSizeMiB < 0 || c.DiskSizeMiB > 16<<20 {
		return c, fmt.Errorf("%w disk size %d MiB", ErrInvalid, c.DiskSizeMiB)
	}
	switch c.DiskMode {
	case "":
		c.DiskMode = DiskIsolated
	case DiskIsolated, DiskShared:
	default:
		return c, fmt.Errorf("%w disk mode %q: want isolated or shared", ErrInvalid, c.DiskMode)
	}
	if c.DiskMode == DiskShared && c.DiskSizeMiB != 0 {
		return c, fmt.Errorf("%w: --disk-size needs disk mode isolated (a shared disk is read-only)", ErrInvalid)
	}
	if c.Rootfs == "" && c.Image == "" {
		c.Image = DefaultImage
	}
	if err := ValidateEnv(c.Env); err != nil {
		return c, err
	}
	if j := c.Jailer; j != nil {
		if c.Backend != "" && c.Backend != "firecracker" {
			return c, fmt.Errorf("%w: the jailer is Firecracker's; backend %s has none", ErrInvalid, c.Backend)
		}
		if j.UID < 0 || j.GID < 0 {
			return c, fmt.Errorf("%w jailer uid/gid %d/%d", ErrInvalid, j.UID, j.GID)
		}
	}
	if strings.ContainsAny(c.BootArgs, "\n\x00") {
		return c, fmt.Errorf("%w boot args: no newlines or NULs", ErrInvalid)
	}
	return c.netDefaults()
}

// envList returns env as sorted KEY=VALUE strings.
func envList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out
}

// ValidateEnv checks environment variable names.
func ValidateEnv(env map[string]string) error {
	for k := range env {
		if !envKeyRE().MatchString(k) {
			return fmt.Errorf("%w environment variable name %q", ErrInvalid, k)
		}
	}
	return nil
}

func newID() string {
	var b [4]byte
	rand.Read(b[:])
	return "vm-" + hex.EncodeToString(b[:])
}

func jsonUnmarshal(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decoding agent message: %w", err)
	}
	return nil
}
