package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/smolvm/smolvm/internal/vmm"
)

// Defaults for a Spec that leaves sizes zero (the same as QEMU's).
const (
	defaultVCPUs     = 1
	defaultMemoryMiB = 512
	maxVCPUs         = 32 // the API's limit
)

// maxSocketPath is the longest unix socket path the kernel takes (sun_path
// is 108 bytes including the terminating NUL).
const maxSocketPath = 107

// Launch starts firecracker for spec, configures the machine over its API
// and starts the guest; the guest is booting when Launch returns. ctx
// bounds start-up only: the VMM outlives it. On error nothing Launch made
// is left behind (process, sockets, links, jail).
func (b *Backend) Launch(ctx context.Context, spec vmm.Spec) (vmm.Instance, error) {
	if spec.Kernel == "" {
		return nil, fmt.Errorf("launching firecracker for vm %s: spec has no kernel", spec.ID)
	}
	inst, err := b.launch(ctx, spec, func(ctx context.Context, inst *Instance) error {
		return inst.api.run(ctx, inst.bootRequests)
	})
	if err != nil {
		return nil, fmt.Errorf("launching firecracker for vm %s: %w", spec.ID, err)
	}
	return inst, nil
}

// launch validates spec, lays out the VM's files, starts firecracker, waits
// for its API and then lets setup configure it. Any failure unwinds all.
func (b *Backend) launch(ctx context.Context, spec vmm.Spec, setup func(context.Context, *Instance) error) (*Instance, error) {
	if err := validate(spec); err != nil {
		return nil, err
	}
	fcPath, err := b.Binary()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", vmm.ErrUnavailable, err)
	}
	l := newLayout(spec.Dir)
	inst, err := b.start(ctx, spec, fcPath, l)
	if err != nil {
		if cerr := l.cleanup(true); cerr != nil {
			b.log.Warn("cleaning up after failed launch", "vm", spec.ID, "err", cerr)
		}
		return nil, err
	}
	if err := inst.waitAPI(ctx); err != nil {
		return nil, inst.abort(err)
	}
	if err := setup(ctx, inst); err != nil {
		return nil, inst.abort(err)
	}
	inst.log.Info("firecracker started", "pid", inst.pid)
	return inst, nil
}

// validate rejects specs firecracker cannot run, with a one-line reason.
func validate(spec vmm.Spec) error {
	switch {
	case spec.ID == "":
		return errors.New("spec has no id")
	case spec.Dir == "":
		return errors.New("spec has no run directory")
	case !filepath.IsAbs(spec.Dir):
		return fmt.Errorf("run directory %q is not absolute", spec.Dir)
	case len(filepath.Join(spec.Dir, apiSocket)) > maxSocketPath:
		return fmt.Errorf("run directory %q is too long for a unix socket path (max %d bytes)", spec.Dir, maxSocketPath-len(apiSocket)-1)
	case spec.VCPUs < 0 || spec.VCPUs > maxVCPUs:
		return fmt.Errorf("vcpus must be 1-%d, got %d", maxVCPUs, spec.VCPUs)
	case spec.MemoryMiB < 0:
		return fmt.Errorf("memory must be positive, got %d MiB", spec.MemoryMiB)
	}
	if st, err := os.Stat(spec.Dir); err != nil || !st.IsDir() {
		return fmt.Errorf("run directory %s does not exist", spec.Dir)
	}
	for i, d := range spec.Disks {
		switch {
		case d.Path == "":
			return fmt.Errorf("disk %d has no path", i)
		case d.Format != "" && d.Format != "raw":
			return fmt.Errorf("disk %s: firecracker takes raw disks only, not %q", d.Path, d.Format)
		}
	}
	for i, n := range spec.Net {
		switch {
		case n.Mode != "tap":
			return fmt.Errorf("network interface %d: firecracker supports tap devices only, not %q", i, n.Mode)
		case n.Tap == "":
			return fmt.Errorf("network interface %d has no tap device", i)
		case n.RxRateBps < 0 || n.TxRateBps < 0:
			return fmt.Errorf("network interface %d: rates must not be negative", i)
		}
	}
	return nil
}

// start makes the VM's files and starts the firecracker process (through
// the jailer when asked). Everything it creates is recorded in l.
func (b *Backend) start(ctx context.Context, spec vmm.Spec, fcPath string, l *layout) (*Instance, error) {
	var cmd *exec.Cmd
	if b.opts.UseJailer {
		jailer, err := lookBinary(b.opts.JailerBinary, "jailer")
		if err != nil {
			return nil, fmt.Errorf("%w: %w", vmm.ErrUnavailable, err)
		}
		if err := b.setupJail(l, spec.ID, fcPath); err != nil {
			return nil, err
		}
		cmd = exec.Command(jailer, b.jailerArgs(spec.ID, fcPath)...)
	} else {
		if b.opts.NetNS != "" {
			return nil, errors.New("a network namespace needs the jailer (UseJailer)")
		}
		args := []string{"--api-sock", l.host(apiSocket)}
		if jailerID().MatchString(spec.ID) {
			args = append(args, "--id", spec.ID)
		}
		cmd = exec.Command(fcPath, args...)
		cmd.Dir = spec.Dir // relative paths in snapshots resolve here
	}
	for _, name := range []string{apiSocket, vsockSocket} {
		if err := l.removeStale(name); err != nil {
			return nil, fmt.Errorf("removing stale socket: %w", err)
		}
	}
	stdout, stderr, err := openOutputs(spec, l)
	if err != nil {
		return nil, err
	}
	defer stdout.Close()
	defer stderr.Close()
	// The guest's serial console is firecracker's stdout.
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}

	inst := &Instance{
		id:     spec.ID,
		spec:   spec,
		layout: l,
		grace:  b.opts.ShutdownGrace,
		opts:   b.opts,
		log:    b.log.With("vm", spec.ID, "vmm", "firecracker"),
		done:   make(chan struct{}),
	}
	inst.api = newClient(l.host(apiSocket))
	if err := inst.run(cmd); err != nil {
		return nil, fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	inst.log.Debug("firecracker process started", "pid", inst.pid, "cmd", strings.Join(cmd.Args, " "))
	return inst, nil
}

// openOutputs opens where firecracker's stdout (the guest console) and
// stderr go. Without a console log, stdout joins stderr in vmm.log.
func openOutputs(spec vmm.Spec, l *layout) (stdout, stderr *os.File, err error) {
	logPath := filepath.Join(spec.Dir, vmmLog)
	stderr, err = os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("opening vmm log: %w", err)
	}
	l.mark(logPath)
	if spec.ConsoleLog == "" {
		stdout, _ = os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND, 0)
		if stdout == nil {
			stdout = stderr
		}
		return stdout, stderr, nil
	}
	if _, err := os.Lstat(spec.ConsoleLog); errors.Is(err, os.ErrNotExist) {
		l.mark(spec.ConsoleLog)
	}
	stdout, err = os.OpenFile(spec.ConsoleLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		stderr.Close()
		return nil, nil, fmt.Errorf("opening console log: %w", err)
	}
	return stdout, stderr, nil
}

// run starts cmd with the calling OS thread locked, since Pdeathsig fires
// when the thread that forked exits, and starts the one goroutine that
// waits for the process.
func (i *Instance) run(cmd *exec.Cmd) error {
	runtime.LockOSThread()
	err := cmd.Start()
	runtime.UnlockOSThread()
	if err != nil {
		return err
	}
	i.pid, i.proc = cmd.Process.Pid, cmd.Process
	go func() { i.exited(cmd.Wait()) }()
	return nil
}

// waitAPI waits for firecracker's API socket to accept connections.
func (i *Instance) waitAPI(ctx context.Context) error {
	if err := waitSocket(ctx, i.layout.host(apiSocket), i.done); err != nil {
		return fmt.Errorf("waiting for the api socket: %w", err)
	}
	return nil
}

// abort ends a firecracker that did not come up and explains why,
// preferring firecracker's own last words.
func (i *Instance) abort(cause error) error {
	i.Kill()
	<-i.done
	msg := lastLine(filepath.Join(i.spec.Dir, vmmLog))
	if err := i.layout.cleanup(true); err != nil {
		i.log.Warn("cleaning up after failed launch", "err", err)
	}
	if msg != "" && !errors.As(cause, new(*APIError)) {
		return fmt.Errorf("%w (firecracker: %s)", cause, msg)
	}
	return cause
}

// lastLine returns the last non-empty line of the file at path (its last
// 64 KiB), or "".
func lastLine(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const tail = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size() > tail {
		f.Seek(st.Size()-tail, 0)
	}
	b := make([]byte, tail)
	n, _ := f.Read(b)
	lines := strings.Split(strings.TrimSpace(string(b[:n])), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
