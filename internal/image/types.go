package image

import (
	"errors"
	"time"
)

// ErrNotFound is returned when an image, kernel or cached artefact does not exist.
var ErrNotFound = errors.New("not found")

// Kernel is a guest kernel and, when it builds drivers as modules, the
// directory holding its modules (lib/modules/VERSION).
type Kernel struct {
	Path       string // bzImage or vmlinux
	Version    string // e.g. 6.1.0-57-cloud-amd64; "" when unknown
	ModulesDir string // "" when the kernel needs no modules
	Source     string // how it was found: "flag", "built", "host", "installed", "cache", "apt"
}

// Image is a root filesystem image ready to boot: an ext4 file.
type Image struct {
	Name    string    `json:"name"`
	Path    string    `json:"path"`
	Size    int64     `json:"size"`   // bytes of the ext4 file
	Digest  string    `json:"digest"` // sha256 of the build inputs (or the OCI manifest digest)
	Source  string    `json:"source"` // "builtin:tiny", "debootstrap:bookworm", "oci:REF", "dir:PATH", ...
	Created time.Time `json:"created"`
	Config  *Config   `json:"config,omitempty"` // defaults the image asks for, if any
}

// Config holds the defaults an image gives its VMs (from an OCI image config).
type Config struct {
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
}
