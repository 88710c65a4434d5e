package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// Virtio device ids, as /sys/bus/virtio/devices/*/device shows them.
const (
	virtioIDConsole = 0x03
	virtioIDVsock   = 0x13
)

// hasVirtioDevice says whether the guest has a virtio device of type id
// (any type when id is -1).
func hasVirtioDevice(sys string, id int) bool {
	files, _ := filepath.Glob(filepath.Join(sys, "bus/virtio/devices/*/device"))
	want := fmt.Sprintf("0x%04x", id)
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && (id == -1 || strings.TrimSpace(string(b)) == want) {
			return true
		}
	}
	return false
}

// findVirtioPort returns the device node of the virtio-serial port named
// name, or "" when there is none (yet: names arrive from the host shortly
// after the device appears).
func findVirtioPort(sys, dev, name string) string {
	files, _ := filepath.Glob(filepath.Join(sys, "class/virtio-ports/*/name"))
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(b)) == name {
			return filepath.Join(dev, filepath.Base(filepath.Dir(f)))
		}
	}
	return ""
}

// waitVirtioPort polls for the named port until it and its device node
// exist, or ctx ends.
func waitVirtioPort(ctx context.Context, name string) (string, error) {
	for {
		if p := findVirtioPort("/sys", "/dev", name); p != "" {
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for virtio-serial port %q: %w", name, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// openPort opens a virtio-serial port through Go's poller (non-blocking),
// so that closing it unblocks a write waiting for an absent host.
func openPort(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY, 0)
}

// servePort serves the host over a virtio-serial port, again after each
// disconnection: writing the hello blocks until the host is connected, and
// reads see end-of-file once it hangs up.
func (b *boot) servePort(path string, cfg Config) {
	for {
		f, err := openPort(path)
		if err != nil {
			b.log.Error("opening agent port", "port", path, "err", err)
			time.Sleep(time.Second)
			continue
		}
		b.log.Debug("serving on virtio-serial port", "port", path)
		err = Serve(context.Background(), f, cfg)
		f.Close()
		b.log.Debug("host disconnected", "port", path, "err", err)
	}
}

// serveVsock listens on the agent's vsock port and serves every
// connection, concurrently, for as long as the guest runs. It returns only
// when it cannot listen or accept.
func (b *boot) serveVsock(cfg Config) error {
	fd, err := listenVsock(agentproto.VsockPort)
	if err != nil {
		return err
	}
	b.log.Debug("listening on vsock", "port", agentproto.VsockPort)
	return b.acceptLoop(fd, cfg)
}

// listenVsock returns a listening vsock socket on port, any CID.
func listenVsock(port uint32) (int, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("creating vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("binding vsock port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("listening on vsock port %d: %w", port, err)
	}
	return fd, nil
}

// acceptLoop accepts connections on the listening socket fd (blocking)
// and serves each in its own goroutine, so a stale connection never holds
// up a new host. It closes fd and returns when accepting fails.
func (b *boot) acceptLoop(fd int, cfg Config) error {
	defer unix.Close(fd)
	for {
		nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
			continue
		}
		if err != nil {
			return fmt.Errorf("accepting agent connections: %w", err)
		}
		go func() {
			conn := os.NewFile(uintptr(nfd), "agent-conn")
			defer conn.Close()
			err := Serve(context.Background(), conn, cfg)
			b.log.Debug("agent connection ended", "err", err)
		}()
	}
}

// serveForever finds the agent channel and serves the host on it; it never
// returns. A virtio-serial port named agentproto.PortName is preferred;
// otherwise vsock.
func (b *boot) serveForever(cfg Config) {
	warned := false
	for {
		if hasVirtioDevice("/sys", virtioIDConsole) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			path, err := waitVirtioPort(ctx, agentproto.PortName)
			cancel()
			if err == nil {
				b.log.Info("agent channel ready", "port", path)
				b.servePort(path, cfg)
			}
			b.log.Debug("no agent port", "err", err)
		}
		if hasVirtioDevice("/sys", virtioIDVsock) {
			b.log.Info("agent channel ready", "vsock_port", agentproto.VsockPort)
			err := b.serveVsock(cfg)
			b.log.Error("vsock channel failed", "err", err)
		}
		if !warned {
			b.log.Error("no agent channel: no virtio-serial port named " + agentproto.PortName + " and no vsock device; retrying")
			warned = true
		}
		time.Sleep(time.Second)
	}
}
