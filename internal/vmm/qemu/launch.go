package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/smolvm/smolvm/internal/vmm"
)

// Files QEMU's run directory holds.
const (
	qmpSocket   = "qmp.sock"
	agentSocket = "agent.sock"
	logFile     = "qemu.log" // QEMU's own stdout and stderr
)

// maxSocketPath is the longest unix socket path the kernel takes (sun_path
// is 108 bytes including the terminating NUL).
const maxSocketPath = 107

// Launch starts QEMU for spec and returns once QEMU has set the machine up
// and answered on its monitor; the guest is then booting. ctx bounds
// start-up only. If QEMU cannot start, the error carries QEMU's own one-line
// reason and nothing Launch made is left behind.
func (b *Backend) Launch(ctx context.Context, spec vmm.Spec) (vmm.Instance, error) {
	return b.launch(ctx, spec)
}

func (b *Backend) launch(ctx context.Context, spec vmm.Spec) (*Instance, error) {
	if err := validate(spec); err != nil {
		return nil, fmt.Errorf("launching qemu: %w", err)
	}
	if err := b.validAccel(); err != nil {
		return nil, fmt.Errorf("launching qemu: %w", err)
	}
	path, err := exec.LookPath(b.binary)
	if err != nil {
		return nil, fmt.Errorf("launching qemu: %w: %w (install it: apt-get install %s)", vmm.ErrUnavailable, err, b.aptPackage())
	}
	cfg := b.config()
	r := &runDir{dir: spec.Dir}
	inst, err := b.start(ctx, path, spec, cfg, r)
	if err != nil {
		r.cleanup()
		return nil, err
	}
	return inst, nil
}

func (b *Backend) config() launchConfig {
	cfg := launchConfig{machine: b.machine, accel: b.Accel(), tcgCPU: b.tcgCPU, tcgThread: b.tcgThread,
		ram: ramConfig{shared: true}}
	if cfg.accel == "tcg" && cfg.machine.tsc {
		cfg.tscKHz = hostTSCKHz(b.procRoot)
	}
	return cfg
}

// start makes the sockets and log, starts QEMU and waits for its monitor.
// Everything it creates is recorded in r for cleanup on error.
func (b *Backend) start(ctx context.Context, path string, spec vmm.Spec, cfg launchConfig, r *runDir) (*Instance, error) {
	qmpL, err := r.listen(qmpSocket)
	if err != nil {
		return nil, fmt.Errorf("launching qemu: %w", err)
	}
	agentL, err := r.listen(agentSocket)
	if err != nil {
		return nil, fmt.Errorf("launching qemu: %w", err)
	}
	logf, err := r.create(logFile)
	if err != nil {
		return nil, fmt.Errorf("launching qemu: %w", err)
	}
	defer logf.Close()
	if spec.ConsoleLog != "" {
		if _, err := os.Lstat(spec.ConsoleLog); errors.Is(err, os.ErrNotExist) {
			r.made = append(r.made, spec.ConsoleLog) // QEMU creates it
		}
	}

	argv := args(spec, cfg)
	cmd := exec.Command(path, argv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{qmpL, agentL} // fds 3 and 4: qmpFD, agentFD
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}

	inst := &Instance{
		id:        spec.ID,
		accel:     cfg.accel,
		dir:       spec.Dir,
		agentPath: filepath.Join(spec.Dir, agentSocket),
		log:       b.log.With("vm", spec.ID, "vmm", "qemu"),
		done:      make(chan struct{}),

		procExited: make(chan struct{}),
		eventsDone: make(chan struct{}),
	}
	if err := inst.run(cmd); err != nil {
		return nil, fmt.Errorf("launching qemu: starting %s: %w", path, err)
	}
	// QEMU holds the listening sockets now; ours would keep them alive
	// after QEMU exits.
	r.closeListeners()
	inst.log.Info("qemu started", "pid", inst.pid, "accel", cfg.accel, "cmd", commandLine(path, argv))

	q, err := connectQMP(ctx, filepath.Join(spec.Dir, qmpSocket), inst.procExited)
	if err != nil {
		return nil, inst.abortStart(ctx, err, filepath.Join(spec.Dir, logFile))
	}
	inst.qmp = q
	go inst.logEvents()
	return inst, nil
}

// connectQMP dials QEMU's monitor and completes the handshake. QEMU answers
// only once its machine is built, so a greeting means start-up succeeded,
// and an early end of the connection means QEMU exited.
func connectQMP(ctx context.Context, path string, exited <-chan struct{}) (*qmpClient, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connecting to qmp: %w", err)
	}
	return dialQMP(ctx, conn)
}

// abortStart ends a QEMU that did not come up and explains why, preferring
// QEMU's own last words over the monitor error. QEMU writes its error
// before it exits and its sockets close, so the log is complete here.
func (i *Instance) abortStart(ctx context.Context, cause error, logPath string) error {
	close(i.eventsDone) // no monitor, no events
	i.Kill()            // a no-op when QEMU already exited
	<-i.done
	if ctx.Err() != nil {
		return fmt.Errorf("launching qemu: %w", ctx.Err())
	}
	if msg := lastError(logPath); msg != "" {
		return fmt.Errorf("qemu: %s", msg)
	}
	return fmt.Errorf("launching qemu: %w", cause)
}

// run starts cmd from a goroutine locked to its OS thread, which then waits
// for the process. Pdeathsig fires when the thread that forked the child
// exits, not the process; holding the thread for QEMU's lifetime means QEMU
// dies exactly when the launching process does.
func (i *Instance) run(cmd *exec.Cmd) error {
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		i.pid = cmd.Process.Pid
		i.proc = cmd.Process
		started <- nil
		err := cmd.Wait()
		close(i.procExited)
		// QEMU's exit closes the monitor; let its last events (SHUTDOWN
		// and its reason) be recorded before Done closes.
		<-i.eventsDone
		i.exited(err)
	}()
	return <-started
}

// lastError returns the last non-empty line QEMU wrote, without the
// "qemu-system-x86_64: " prefix and the echo of the offending option.
func lastError(logPath string) string {
	b, err := os.ReadFile(logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	line := strings.TrimSpace(lines[len(lines)-1])
	if line == "" {
		return ""
	}
	if prog, rest, ok := strings.Cut(line, ": "); ok && strings.HasPrefix(prog, "qemu-system-") {
		line = rest
	}
	if strings.HasPrefix(line, "-") {
		if _, rest, ok := strings.Cut(line, ": "); ok {
			line = rest
		}
	}
	return line
}

// commandLine renders argv for a log line a person can paste into a shell.
func commandLine(path string, argv []string) string {
	var sb strings.Builder
	sb.WriteString(path)
	for _, a := range argv {
		sb.WriteByte(' ')
		if strings.ContainsAny(a, " \t\"'$\\;&|<>()*?") {
			sb.WriteString("'" + strings.ReplaceAll(a, "'", `'\''`) + "'")
		} else {
			sb.WriteString(a)
		}
	}
	return sb.String()
}
