package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"

	"github.com/vishvananda/netns"
)

// nsRunner runs code with the calling thread inside one network namespace.
// Sockets and tap devices are created in the namespace of the thread that
// makes them and stay there, so listeners, dials and tap creation go
// through do. The zero nsRunner uses the process's own namespace.
type nsRunner struct {
	handle netns.NsHandle
	set    bool
}

func openNS(path string) (nsRunner, error) {
	if path == "" {
		return nsRunner{}, nil
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nsRunner{}, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	return nsRunner{handle: h, set: true}, nil
}

func (r nsRunner) close() error {
	if !r.set {
		return nil
	}
	return r.handle.Close()
}

// do runs f on a locked thread inside the namespace. If the thread cannot be
// switched back it stays locked, so Go retires it with the goroutine.
func (r nsRunner) do(f func() error) error {
	if !r.set {
		return f()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(r.handle); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace: %w", err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		return errors.Join(ferr, fmt.Errorf("return to network namespace: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// dial connects from inside the namespace.
func (r nsRunner) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := r.do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// writeSysctl writes value to /proc/sys/<key> in the namespace.
func (r nsRunner) writeSysctl(key, value string) error {
	return r.do(func() error {
		return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
	})
}
