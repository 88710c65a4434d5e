package firecracker

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// jailerID is what the jailer accepts as --id (and firecracker as --id).
var jailerID = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`) })

// setupJail prepares the jail root for VM id and points l at it. The jailer
// creates the same directories itself and accepts them existing.
func (b *Backend) setupJail(l *layout, id, fcPath string) error {
	if !jailerID().MatchString(id) {
		return fmt.Errorf("vm id %q cannot name a jail: want 1-64 letters, digits or dashes", id)
	}
	jailDir := filepath.Join(b.opts.ChrootBase, filepath.Base(fcPath), id)
	root := filepath.Join(jailDir, "root")
	if len(filepath.Join(root, vsockSocket)) > maxSocketPath {
		return fmt.Errorf("jail root %s is too long for unix socket paths: use a shorter chroot base", root)
	}
	if _, err := os.Stat(jailDir); err == nil {
		return fmt.Errorf("jail %s already exists: is vm %s running?", jailDir, id)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fmt.Errorf("making jail: %w", err)
	}
	// Ours from here on: cleanup removes it.
	l.jailDir, l.root = jailDir, root
	l.uid, l.gid = b.opts.UID, b.opts.GID
	// firecracker, as uid, creates its sockets (and snapshots) in its root.
	if err := os.Chown(root, l.uid, l.gid); err != nil {
		return fmt.Errorf("making jail: %w", err)
	}
	return nil
}

// jailerArgs builds the jailer's argv (without the binary) that execs
// firecracker at fcPath inside the jail, its API socket at /fc.sock.
func (b *Backend) jailerArgs(id, fcPath string) []string {
	a := []string{
		"--id", id,
		"--exec-file", fcPath,
		"--uid", strconv.Itoa(b.opts.UID),
		"--gid", strconv.Itoa(b.opts.GID),
		"--chroot-base-dir", b.opts.ChrootBase,
	}
	if ns := netnsPath(b.opts.NetNS); ns != "" {
		a = append(a, "--netns", ns)
	}
	if b.opts.CgroupVersion != 0 {
		a = append(a, "--cgroup-version", strconv.Itoa(b.opts.CgroupVersion))
	}
	for _, c := range b.opts.Cgroups {
		a = append(a, "--cgroup", c)
	}
	return append(a, "--", "--api-sock", "/"+apiSocket)
}

// netnsPath turns a namespace name into its path under /var/run/netns.
func netnsPath(ns string) string {
	if ns == "" || strings.HasPrefix(ns, "/") {
		return ns
	}
	return filepath.Join("/var/run/netns", ns)
}
