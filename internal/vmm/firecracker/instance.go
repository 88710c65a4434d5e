package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/smolvm/smolvm/internal/agentproto"
	"github.com/smolvm/smolvm/internal/vmm"
)

// Instance is one running firecracker, owned by the process that launched
// it. Its methods are safe for concurrent use.
type Instance struct {
	id     string
	spec   vmm.Spec
	layout *layout
	opts   Options
	grace  time.Duration
	log    *slog.Logger
	api    *client

	// Set by run before anyone else sees the instance.
	pid  int
	proc *os.Process

	stopping atomic.Bool // Shutdown is killing it: SIGKILL is the expected end

	done chan struct{}
	err  error // written once before done is closed
}

var (
	_ vmm.Instance    = (*Instance)(nil)
	_ vmm.Pauser      = (*Instance)(nil)
	_ vmm.Snapshotter = (*Instance)(nil)
)

// PID is firecracker's process id.
func (i *Instance) PID() int { return i.pid }

// Accel is always "kvm".
func (i *Instance) Accel() string { return "kvm" }

// Done is closed when firecracker has exited.
func (i *Instance) Done() <-chan struct{} { return i.done }

// Err is firecracker's exit status once Done is closed: nil for exit 0
// (the guest rebooted or powered off) and after Shutdown, else how it ended.
func (i *Instance) Err() error {
	select {
	case <-i.done:
		return i.err
	default:
		return nil
	}
}

// exited records firecracker's end and removes its sockets and links (a
// failed launch removes the rest); called once, by the goroutine that waited.
func (i *Instance) exited(err error) {
	if err != nil && i.stopping.Load() && killedBySIGKILL(err) {
		err = nil
	}
	if err != nil {
		if msg := lastLine(filepath.Join(i.spec.Dir, vmmLog)); msg != "" {
			err = fmt.Errorf("firecracker exited: %w: %s", err, msg)
		} else {
			err = fmt.Errorf("firecracker exited: %w", err)
		}
	}
	i.err = err
	i.api.close()
	if cerr := i.layout.cleanup(false); cerr != nil {
		i.log.Warn("cleaning up", "err", cerr)
	}
	i.log.Info("firecracker exited", "pid", i.pid, "err", err)
	close(i.done)
}

func killedBySIGKILL(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// DialAgent connects to the guest agent over hybrid vsock: firecracker's
// unix socket, then "CONNECT <port>". The guest keeps one connection:
// callers dial once and multiplex over it.
func (i *Instance) DialAgent(ctx context.Context) (net.Conn, error) {
	select {
	case <-i.done:
		return nil, fmt.Errorf("dialing agent of vm %s: vm has exited", i.id)
	default:
	}
	c, err := DialVsock(ctx, i.layout.host(vsockSocket), agentproto.VsockPort)
	if err != nil {
		return nil, fmt.Errorf("dialing agent of vm %s: %w", i.id, err)
	}
	return c, nil
}

// Shutdown sends the guest Ctrl-Alt-Del, gives it the backend's short grace
// to reboot (which ends firecracker), then kills firecracker. It returns
// once firecracker has exited, or with an error when ctx ends first.
func (i *Instance) Shutdown(ctx context.Context) error {
	select {
	case <-i.done:
		return nil
	default:
	}
	gctx, cancel := context.WithTimeout(ctx, i.grace)
	defer cancel()
	if err := i.api.put(gctx, "/actions", action{ActionType: actionSendCtrlAltDel}); err != nil {
		// Refused (say, the guest is paused): waiting would not help.
		i.log.Debug("ctrl-alt-del", "err", err)
	} else {
		select {
		case <-i.done:
			return nil
		case <-gctx.Done():
		}
	}
	i.stopping.Store(true)
	if err := i.Kill(); err != nil {
		return fmt.Errorf("shutting down vm %s: %w", i.id, err)
	}
	select {
	case <-i.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("shutting down vm %s: killed, still waiting for it: %w", i.id, ctx.Err())
	}
}

// Kill ends firecracker with SIGKILL. Killing an exited one is not an error.
func (i *Instance) Kill() error {
	err := i.proc.Kill()
	if err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing firecracker of vm %s: %w", i.id, err)
	}
	return nil
}

// Pause stops the guest's vCPUs.
func (i *Instance) Pause(ctx context.Context) error {
	if err := i.api.patch(ctx, "/vm", vmState{State: statePaused}); err != nil {
		return fmt.Errorf("pausing vm %s: %w", i.id, err)
	}
	return nil
}

// Resume restarts the guest's vCPUs.
func (i *Instance) Resume(ctx context.Context) error {
	if err := i.api.patch(ctx, "/vm", vmState{State: stateResumed}); err != nil {
		return fmt.Errorf("resuming vm %s: %w", i.id, err)
	}
	return nil
}

// State asks firecracker for the machine's state: "Not started",
// "Running" or "Paused".
func (i *Instance) State(ctx context.Context) (string, error) {
	var info instanceInfo
	if err := i.api.get(ctx, "/", &info); err != nil {
		return "", fmt.Errorf("querying vm %s: %w", i.id, err)
	}
	return info.State, nil
}
