package smolvm

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"syscall"
	"time"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// Process describes a background process started with StartProcess.
type Process struct {
	ID       string    `json:"id"`
	PID      int       `json:"pid"`
	Argv     []string  `json:"argv"`
	User     string    `json:"user,omitempty"`
	Running  bool      `json:"running"`
	ExitCode int       `json:"exit_code"`        // valid once it is no longer running
	Signal   string    `json:"signal,omitempty"` // the signal that killed it, if any
	TimedOut bool      `json:"timed_out,omitempty"`
	Started  time.Time `json:"started"`
	Exited   time.Time `json:"exited,omitzero"`
	OutBytes int64     `json:"out_bytes"` // stdout bytes written so far
	ErrBytes int64     `json:"err_bytes"`
}

func processFrom(p agentproto.ProcInfo) Process {
	out := Process{ID: p.ID, PID: p.PID, Argv: p.Argv, User: p.User, Running: p.Running,
		Started: p.Started, Exited: p.Exited, OutBytes: p.OutBytes, ErrBytes: p.ErrBytes}
	if p.Exit != nil {
		out.ExitCode, out.Signal, out.TimedOut = p.Exit.Code, p.Exit.Signal, p.Exit.TimedOut
	}
	return out
}

// ProcessOptions tune StartProcess. Env, Dir, User and Timeout are as for
// Run; stdin is /dev/null.
type ProcessOptions struct {
	Env     map[string]string
	Dir     string
	User    string
	Timeout time.Duration
	// BufferBytes bounds the output the guest keeps of each of stdout and
	// stderr (default 1 MiB, at most 64 MiB); older output is dropped.
	BufferBytes int
}

// StartProcess starts argv in the background: it runs in the guest until
// it exits, whatever happens to the caller; its output is kept in the
// guest, bounded, for ProcessOutput.
func (vm *VM) StartProcess(ctx context.Context, argv []string, opts ProcessOptions) (Process, error) {
	if len(argv) == 0 {
		return Process{}, fmt.Errorf("%w: empty command", ErrInvalid)
	}
	if err := ValidateEnv(opts.Env); err != nil {
		return Process{}, err
	}
	r, err := vm.h.get(ctx, vm.id)
	if err != nil {
		return Process{}, err
	}
	rec, err := vm.record(r)
	if err != nil {
		return Process{}, err
	}
	x := &agentproto.ExecRequest{Argv: argv, BaseEnv: envList(rec.Config.Env), Env: envList(opts.Env),
		Dir: opts.Dir, User: opts.User, TimeoutMs: opts.Timeout.Milliseconds()}
	if ic := rec.ImageConfig; ic != nil {
		x.BaseEnv = append(append([]string{}, ic.Env...), x.BaseEnv...)
		x.Dir, x.User = cmp.Or(x.Dir, ic.WorkingDir), cmp.Or(x.User, ic.User)
	}
	resp, err := vm.agentCall(ctx, agentproto.Request{Op: agentproto.OpProcStart, Exec: x,
		Proc: &agentproto.ProcRequest{BufferBytes: opts.BufferBytes}})
	if err != nil {
		return Process{}, fmt.Errorf("starting %q in the background in vm %s: %w", argv, vm.id, err)
	}
	if resp.Proc == nil {
		return Process{}, fmt.Errorf("starting %q in vm %s: no answer", argv, vm.id)
	}
	return processFrom(*resp.Proc), nil
}

// Processes lists the VM's background processes, oldest first.
func (vm *VM) Processes(ctx context.Context) ([]Process, error) {
	resp, err := vm.agentCall(ctx, agentproto.Request{Op: agentproto.OpProcList})
	if err != nil {
		return nil, fmt.Errorf("listing processes in vm %s: %w", vm.id, err)
	}
	out := make([]Process, 0, len(resp.Procs))
	for _, p := range resp.Procs {
		out = append(out, processFrom(p))
	}
	return out, nil
}

func (vm *VM) procCall(ctx context.Context, op string, req agentproto.ProcRequest) (agentproto.Response, error) {
	resp, err := vm.agentCall(ctx, agentproto.Request{Op: op, Proc: &req})
	if err != nil {
		return resp, fmt.Errorf("%s %s in vm %s: %w", op, req.ID, vm.id, err)
	}
	return resp, nil
}

// WaitProcess waits until the background process id has exited (or ctx
// ends) and describes it.
func (vm *VM) WaitProcess(ctx context.Context, id string) (Process, error) {
	resp, err := vm.procCall(ctx, agentproto.OpProcWait, agentproto.ProcRequest{ID: id})
	if err != nil {
		return Process{}, err
	}
	return processFrom(*resp.Proc), nil
}

// SignalProcess sends sig to the background process id's process group.
func (vm *VM) SignalProcess(ctx context.Context, id string, sig syscall.Signal) error {
	_, err := vm.procCall(ctx, agentproto.OpProcSignal, agentproto.ProcRequest{ID: id, Signal: int(sig)})
	return err
}

// RemoveProcess kills the background process id if it still runs and
// forgets it and its output.
func (vm *VM) RemoveProcess(ctx context.Context, id string) error {
	_, err := vm.procCall(ctx, agentproto.OpProcRemove, agentproto.ProcRequest{ID: id})
	return err
}

// ProcessOutput writes what the guest kept of the background process id's
// output to stdout and stderr; with follow it then streams new output
// until the process exits. It returns how many bytes had already been
// dropped from the buffers.
func (vm *VM) ProcessOutput(ctx context.Context, id string, follow bool, stdout, stderr io.Writer) (dropped int64, err error) {
	c, done, err := vm.agentStream(ctx, agentproto.Request{Op: agentproto.OpProcOutput, Proc: &agentproto.ProcRequest{ID: id, Follow: follow}})
	if err != nil {
		return 0, err
	}
	defer done()
	wrap := func(err error) error { return fmt.Errorf("reading output of %s in vm %s: %w", id, vm.id, err) }
	if _, err := readResponse(ctx, c); err != nil {
		return 0, wrap(err)
	}
	buf := make([]byte, agentproto.MaxFrame)
	for {
		t, p, err := c.ReadFrame(buf)
		if err != nil {
			return 0, wrap(streamErr(ctx, err))
		}
		switch t {
		case agentproto.FrameStdout:
			if _, err := stdout.Write(p); err != nil {
				return 0, wrap(err)
			}
		case agentproto.FrameStderr:
			if _, err := stderr.Write(p); err != nil {
				return 0, wrap(err)
			}
		case agentproto.FrameDone:
			var d agentproto.Done
			jsonUnmarshal(p, &d)
			return d.Dropped, nil
		case agentproto.FrameError:
			var e agentproto.Error
			jsonUnmarshal(p, &e)
			return 0, wrap(newGuestError(e.Message))
		}
	}
}
