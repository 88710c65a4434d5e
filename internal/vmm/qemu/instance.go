package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/smolvm/smolvm/internal/vmm"
)

// Instance is one running QEMU, owned by the process that launched it.
// Its methods are safe for concurrent use.
type Instance struct {
	id        string
	accel     string
	dir       string
	agentPath string
	log       *slog.Logger
	qmp       *qmpClient // set before Launch returns

	// Set by run before Launch can see the instance.
	pid  int
	proc *os.Process

	done chan struct{}
	err  error // written once before done is closed

	procExited chan struct{} // closed as soon as QEMU has been reaped
	eventsDone chan struct{} // closed when the monitor's events are all read
	mu         sync.Mutex    // guards reason
	reason     string        // from the last SHUTDOWN event
}

var (
	_ vmm.Instance = (*Instance)(nil)
	_ vmm.Pauser   = (*Instance)(nil)
)

// PID is QEMU's process id.
func (i *Instance) PID() int { return i.pid }

// Accel is "kvm" or "tcg".
func (i *Instance) Accel() string { return i.accel }

// Done is closed when QEMU has exited.
func (i *Instance) Done() <-chan struct{} { return i.done }

// Err is QEMU's exit status once Done is closed: nil for exit 0 (the guest
// powered off, or Shutdown), else the exit error with QEMU's last words.
func (i *Instance) Err() error {
	select {
	case <-i.done:
		return i.err
	default:
		return nil
	}
}

// exited records QEMU's end; called once, by the goroutine that waited.
func (i *Instance) exited(err error) {
	if err != nil {
		if msg := lastError(filepath.Join(i.dir, logFile)); msg != "" {
			err = fmt.Errorf("qemu exited: %w: %s", err, msg)
		} else {
			err = fmt.Errorf("qemu exited: %w", err)
		}
	}
	i.err = err
	for _, name := range []string{qmpSocket, agentSocket} {
		os.Remove(filepath.Join(i.dir, name))
	}
	i.log.Info("qemu exited", "pid", i.pid, "err", err)
	close(i.done)
}

// DialAgent connects to the guest agent's virtio-serial port. QEMU takes
// one connection at a time: callers dial once and multiplex over it.
func (i *Instance) DialAgent(ctx context.Context) (net.Conn, error) {
	select {
	case <-i.done:
		return nil, fmt.Errorf("dialing agent of vm %s: vm has exited", i.id)
	default:
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", i.agentPath)
	if err != nil {
		return nil, fmt.Errorf("dialing agent of vm %s: %w", i.id, err)
	}
	return c, nil
}

// Shutdown tells QEMU to quit at once (the guest is not asked) and waits
// for it to exit. If ctx ends first, QEMU is killed and the error says so.
func (i *Instance) Shutdown(ctx context.Context) error {
	select {
	case <-i.done:
		return nil
	default:
	}
	// QEMU may exit before its reply to quit is read: a closed monitor is
	// the expected outcome, so only Done is trusted.
	if err := i.qmp.Execute(ctx, "quit", nil, nil); err != nil && !errors.Is(err, ErrQMPClosed) {
		i.log.Debug("qmp quit", "err", err)
	}
	select {
	case <-i.done:
		return nil
	case <-ctx.Done():
		i.Kill()
		<-i.done
		return fmt.Errorf("shutting down vm %s: qemu did not quit, killed it: %w", i.id, ctx.Err())
	}
}

// Kill ends QEMU with SIGKILL. Killing an exited QEMU is not an error.
func (i *Instance) Kill() error {
	err := i.proc.Kill()
	if err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing qemu of vm %s: %w", i.id, err)
	}
	return nil
}

// Pause stops the guest's vCPUs (QMP "stop").
func (i *Instance) Pause(ctx context.Context) error {
	if err := i.Execute(ctx, "stop", nil, nil); err != nil {
		return fmt.Errorf("pausing vm %s: %w", i.id, err)
	}
	return nil
}

// Resume restarts the guest's vCPUs (QMP "cont").
func (i *Instance) Resume(ctx context.Context) error {
	if err := i.Execute(ctx, "cont", nil, nil); err != nil {
		return fmt.Errorf("resuming vm %s: %w", i.id, err)
	}
	return nil
}

// Status is QEMU's run state ("running", "paused", "shutdown", ...), from
// QMP query-status.
func (i *Instance) Status(ctx context.Context) (string, error) {
	var st struct {
		Status string `json:"status"`
	}
	if err := i.Execute(ctx, "query-status", nil, &st); err != nil {
		return "", fmt.Errorf("querying status of vm %s: %w", i.id, err)
	}
	return st.Status, nil
}

// Execute runs a QMP command with args (nil, or anything that marshals to a
// JSON object) and decodes its return value into out (nil to discard). A
// refusal by QEMU is a *QMPError.
func (i *Instance) Execute(ctx context.Context, cmd string, args, out any) error {
	return i.qmp.Execute(ctx, cmd, args, out)
}

// Version is the QEMU version the monitor announced ("7.2.22").
func (i *Instance) Version() string { return i.qmp.version }

// ShutdownReason is why QEMU's guest stopped, from the monitor's last
// SHUTDOWN event: "guest-shutdown" (the guest powered off), "guest-reset"
// (it rebooted or crashed: panic=-1 reboot=t and -no-reboot turn a guest
// kernel panic into a reset and QEMU's exit), "guest-panic", "host-qmp-quit"
// (Shutdown), or "" when QEMU exited without one (killed). Final once Done
// is closed.
func (i *Instance) ShutdownReason() string {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.reason
}

// logEvents logs QMP events and records the shutdown reason until the
// monitor connection ends.
func (i *Instance) logEvents() {
	defer close(i.eventsDone)
	for ev := range i.qmp.Events() {
		i.log.Info("qmp event", "event", ev.Name, "data", string(ev.Data))
		if ev.Name != "SHUTDOWN" {
			continue
		}
		var d struct {
			Reason string `json:"reason"`
		}
		if json.Unmarshal(ev.Data, &d) == nil {
			i.mu.Lock()
			i.reason = d.Reason
			i.mu.Unlock()
		}
	}
}
