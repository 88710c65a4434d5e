package qemu

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
)

// runDir tracks what Launch creates in the VM's run directory, so a failed
// start can remove exactly that and nothing else.
type runDir struct {
	dir       string
	made      []string   // paths to remove on failure
	listeners []*os.File // listening sockets still open in this process
}

// listen creates a listening unix socket named name in the run directory
// and returns it as a file for QEMU to inherit.
func (r *runDir) listen(name string) (*os.File, error) {
	path := filepath.Join(r.dir, name)
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("socket path %s is %d bytes, over the limit of %d: use a shorter run directory", path, len(path), maxSocketPath)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		if errors.Is(err, os.ErrExist) || errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("socket %s already exists: is a VM running in %s?", path, r.dir)
		}
		return nil, fmt.Errorf("creating socket: %w", err)
	}
	r.made = append(r.made, path)
	l.SetUnlinkOnClose(false)
	f, err := l.File() // a dup, blocking, without close-on-exec once passed
	l.Close()
	if err != nil {
		return nil, fmt.Errorf("creating socket %s: %w", path, err)
	}
	r.listeners = append(r.listeners, f)
	return f, nil
}

// create makes (or truncates) a file named name in the run directory.
func (r *runDir) create(name string) (*os.File, error) {
	path := filepath.Join(r.dir, name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", name, err)
	}
	r.made = append(r.made, path)
	return f, nil
}

func (r *runDir) closeListeners() {
	for _, f := range r.listeners {
		f.Close()
	}
	r.listeners = nil
}

// cleanup closes and removes everything r made.
func (r *runDir) cleanup() {
	r.closeListeners()
	for _, p := range r.made {
		os.Remove(p)
	}
}
