package smolvm

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"syscall"
	"time"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// DefaultMaxOutput bounds what Run collects of each of stdout and stderr
// when RunOptions gives no writer for it.
const DefaultMaxOutput = 16 << 20

// RunOptions tune one command.
type RunOptions struct {
	Env     map[string]string // added to the VM's environment
	Dir     string            // working directory in the guest (default /)
	User    string            // user name, uid or uid:gid (default root)
	Timeout time.Duration     // kill the command's process group after this long
	Stdin   io.Reader         // the command's stdin (default: empty)
	// Stdout and Stderr, when set, receive the output as it is produced
	// instead of Result collecting it.
	Stdout, Stderr io.Writer
	// MaxOutput bounds the bytes Result keeps of each stream (default
	// DefaultMaxOutput); the rest is read and dropped, and Truncated set.
	MaxOutput int
	// TTY, when set, runs the command on a pseudo-terminal (see shell.go).
	TTY *TTY
	// LoginShell runs the user's login shell instead of a command (argv
	// must then be empty).
	LoginShell bool
}

// Result is how a command ended.
type Result struct {
	ExitCode  int    // 128+n when killed by signal n
	Signal    string // the signal that killed it, if any
	TimedOut  bool   // killed because RunOptions.Timeout passed
	Stdout    []byte
	Stderr    []byte
	Truncated bool // output beyond MaxOutput was dropped
}

// Shell returns the argv that runs script with the guest's /bin/sh.
func Shell(script string) []string { return []string{"/bin/sh", "-c", script} }

// Run runs argv in the VM and waits for it to end. Several Runs may go on
// at once, from one process or many. A nonzero exit is not an error: see
// Result.ExitCode. Cancelling ctx kills the command.
func (vm *VM) Run(ctx context.Context, argv []string, opts RunOptions) (Result, error) {
	res, err := vm.run(ctx, argv, opts)
	if err != nil {
		return res, fmt.Errorf("running %q in vm %s: %w", argv, vm.id, err)
	}
	return res, nil
}

func (vm *VM) run(ctx context.Context, argv []string, opts RunOptions) (Result, error) {
	if len(argv) == 0 && !opts.LoginShell {
		return Result{}, fmt.Errorf("%w: empty command", ErrInvalid)
	}
	if err := ValidateEnv(opts.Env); err != nil {
		return Result{}, err
	}
	r, err := vm.runningRow(ctx)
	if err != nil {
		return Result{}, err
	}
	rec, err := vm.record(r)
	if err != nil {
		return Result{}, err
	}
	conn, err := vm.agentConn(ctx, r)
	if err != nil {
		return Result{}, err
	}
	defer conn.Close()
	// The VM's env goes under what SetEnv set, the call's over it.
	req := agentproto.ExecRequest{
		Argv: argv, BaseEnv: envList(rec.Config.Env), Env: envList(opts.Env), Dir: opts.Dir, User: opts.User,
		TimeoutMs: opts.Timeout.Milliseconds(), Stdin: opts.Stdin != nil, LoginShell: opts.LoginShell,
	}
	opts.TTY.apply(&req)
	if ic := rec.ImageConfig; ic != nil {
		req.BaseEnv = append(append([]string{}, ic.Env...), req.BaseEnv...)
		req.Dir = cmp.Or(req.Dir, ic.WorkingDir)
		req.User = cmp.Or(req.User, ic.User)
	}
	return exchange(ctx, agentproto.NewConn(conn), req, opts)
}

// exchange runs one exec over an agent stream. It asks for no pid: the
// first reply is output, the exit status or an error, so a short command
// costs one frame from the guest. A signal sent before the process runs
// waits in the stream and reaches it once it does.
func exchange(ctx context.Context, c *agentproto.Conn, req agentproto.ExecRequest, opts RunOptions) (Result, error) {
	stop := context.AfterFunc(ctx, func() {
		c.WriteJSON(agentproto.FrameSignal, agentproto.Signal{Signal: int(syscall.SIGKILL)})
		c.Close()
	})
	defer stop()
	if err := c.WriteJSON(agentproto.FrameRequest, agentproto.Request{Op: agentproto.OpExec, Exec: &req}); err != nil {
		if ctx.Err() != nil {
			return Result{}, ctx.Err()
		}
		return Result{}, err
	}
	defer opts.TTY.forwardResizes(c)()
	if opts.Stdin != nil {
		go pumpStdin(c, opts.Stdin)
	}
	max := opts.MaxOutput
	if max <= 0 {
		max = DefaultMaxOutput
	}
	var res Result
	out := sink{w: opts.Stdout, max: max, truncated: &res.Truncated}
	errw := sink{w: opts.Stderr, max: max, truncated: &res.Truncated}
	buf := make([]byte, 64<<10) // grown to the largest frame seen
	for {
		t, p, err := c.ReadFrame(buf)
		if err != nil {
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			return res, fmt.Errorf("reading output: %w", err)
		}
		if cap(p) > cap(buf) {
			buf = p[:cap(p)]
		}
		switch t {
		case agentproto.FrameStdout:
			if err := out.write(p); err != nil {
				return res, fmt.Errorf("writing stdout: %w", err)
			}
		case agentproto.FrameStderr:
			if err := errw.write(p); err != nil {
				return res, fmt.Errorf("writing stderr: %w", err)
			}
		case agentproto.FrameExit:
			var st agentproto.ExitStatus
			if err := jsonUnmarshal(p, &st); err != nil {
				return res, err
			}
			res.ExitCode, res.Signal, res.TimedOut = st.Code, st.Signal, st.TimedOut
			res.Stdout, res.Stderr = out.buf.Bytes(), errw.buf.Bytes()
			return res, nil
		case agentproto.FrameError:
			var e agentproto.Error
			jsonUnmarshal(p, &e)
			return res, &e
		}
	}
}

// pumpStdin sends r to the process's stdin, then the end of input.
func pumpStdin(c *agentproto.Conn, r io.Reader) {
	buf := make([]byte, 256<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if c.WriteFrame(agentproto.FrameStdin, buf[:n]) != nil {
				return
			}
		}
		if err != nil {
			break
		}
	}
	c.WriteFrame(agentproto.FrameStdinClose, nil)
}

// sink sends output to a writer, or keeps up to max bytes of it.
type sink struct {
	w         io.Writer
	buf       bytes.Buffer
	max       int
	truncated *bool
}

func (s *sink) write(p []byte) error {
	if s.w != nil {
		_, err := s.w.Write(p)
		return err
	}
	if room := s.max - s.buf.Len(); len(p) > room {
		p = p[:max(room, 0)]
		*s.truncated = true
	}
	s.buf.Write(p)
	return nil
}
