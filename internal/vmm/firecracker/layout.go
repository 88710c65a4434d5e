package firecracker

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// Files of one VM, in its run directory (or, under the jailer, its jail root).
const (
	apiSocket   = "fc.sock"         // firecracker's API
	vsockSocket = "v.sock"          // hybrid vsock: host-initiated connections
	vmmLog      = "vmm.log"         // firecracker's (and the jailer's) stderr; in the run directory
	apiLog      = "firecracker.log" // firecracker's logger (PUT /logger)
	metricsFile = "metrics.json"    // firecracker's metrics (PUT /metrics), when enabled
)

// Files Snapshot writes into its directory and Restore reads.
const (
	SnapshotStateFile = "vmstate" // device and vCPU state
	SnapshotMemFile   = "memory"  // guest memory
)

// layout maps one VM's files between the host and firecracker's view, and
// remembers what it created so it can be removed.
//
// Without the jailer, firecracker runs in the run directory and is given
// paths relative to it for everything a snapshot records (drives, vsock), so
// a snapshot restores into another run directory: there, the same names are
// links to the new VM's files. Under the jailer, firecracker's root is the
// jail and every path it sees is absolute inside it; files are hard links.
type layout struct {
	dir     string // the run directory (the caller's)
	root    string // host directory firecracker's paths resolve in
	jailDir string // <chroot base>/<exec name>/<id>, removed at exit; "" without jailer
	uid     int    // owner for what firecracker must write (jailer)
	gid     int

	made      []string // created by us, removed if the launch fails
	transient []string // removed when firecracker exits too
}

func newLayout(dir string) *layout { return &layout{dir: dir, root: dir} }

func (l *layout) jailed() bool { return l.jailDir != "" }

// host returns the host path of name inside firecracker's root.
func (l *layout) host(name string) string { return filepath.Join(l.root, name) }

// vmmPath returns how firecracker must name the file name of its root.
func (l *layout) vmmPath(name string) string {
	if l.jailed() {
		return "/" + name
	}
	return name
}

// file makes src visible to firecracker and returns its path there: src
// itself without the jailer, else a hard link in the jail.
func (l *layout) file(src, name string, writable bool) (string, error) {
	if !l.jailed() {
		return src, nil
	}
	return l.stable(src, name, writable)
}

// stable makes src visible to firecracker under name (a symlink in the run
// directory, or a hard link in the jail) and returns the path to give it.
func (l *layout) stable(src, name string, writable bool) (string, error) {
	dst := l.host(name)
	if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("replacing %s: %w", dst, err)
	}
	if !l.jailed() {
		if err := os.Symlink(src, dst); err != nil {
			return "", fmt.Errorf("linking %s: %w", src, err)
		}
		l.temp(dst)
		return l.vmmPath(name), nil
	}
	if err := l.hardlink(src, dst, writable); err != nil {
		return "", err
	}
	l.temp(dst)
	if writable {
		if err := os.Chown(dst, l.uid, l.gid); err != nil {
			return "", fmt.Errorf("handing %s to uid %d: %w", src, l.uid, err)
		}
	}
	return l.vmmPath(name), nil
}

// hardlink links src into the jail; across file systems a read-only file
// is copied instead (a writable disk cannot be: writes would be lost).
func (l *layout) hardlink(src, dst string, writable bool) error {
	err := os.Link(src, dst)
	if err == nil {
		return nil
	}
	if !errors.Is(err, syscall.EXDEV) || writable {
		return fmt.Errorf("linking %s into the jail: %w (put the chroot base on the same file system)", src, err)
	}
	if err := copyFile(src, dst); err != nil {
		return fmt.Errorf("copying %s into the jail: %w", src, err)
	}
	return nil
}

// create makes an empty file name in firecracker's root, writable by it.
func (l *layout) create(name string) (string, error) {
	p := l.host(name)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		return "", err
	}
	f.Close()
	l.mark(p)
	if l.jailed() {
		if err := os.Chown(p, l.uid, l.gid); err != nil {
			return "", err
		}
	}
	return l.vmmPath(name), nil
}

// removeStale deletes a leftover socket firecracker would refuse to bind.
func (l *layout) removeStale(name string) error {
	if err := os.Remove(l.host(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	l.temp(l.host(name))
	return nil
}

// mark records a path to remove if the launch fails.
func (l *layout) mark(p string) { l.made = append(l.made, p) }

// temp records a path to remove when firecracker exits (or the launch fails).
func (l *layout) temp(p string) {
	l.made = append(l.made, p)
	l.transient = append(l.transient, p)
}

// cleanup removes what must not outlive firecracker; failed says the launch
// failed, so everything made goes.
func (l *layout) cleanup(failed bool) error {
	paths := l.transient
	if failed {
		paths = l.made
	}
	var errs []error
	for i := len(paths) - 1; i >= 0; i-- {
		if err := os.Remove(paths[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if l.jailed() {
		if !failed {
			l.saveJailLog()
		} else {
			os.Remove(filepath.Join(l.dir, apiLog)) // saved by an earlier cleanup
		}
		if err := os.RemoveAll(l.jailDir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// saveJailLog keeps firecracker's log from the jail in the run directory.
func (l *layout) saveJailLog() {
	src := l.host(apiLog)
	if _, err := os.Stat(src); err == nil {
		moveFile(src, filepath.Join(l.dir, apiLog))
	}
}

// moveFile renames src to dst, copying across file systems.
func moveFile(src, dst string) error {
	err := os.Rename(src, dst)
	if err == nil || !errors.Is(err, syscall.EXDEV) {
		return err
	}
	if err := copyFile(src, dst); err != nil {
		return err
	}
	return os.Remove(src)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(dst)
		return err
	}
	return out.Close()
}
