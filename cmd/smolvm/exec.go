package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
)

// execFlags describe how to run one command.
type execFlags struct {
	env     []string
	dir     string
	user    string
	timeout float64
	stdin   bool
	tty     bool // a pseudo-terminal in the guest (shell.go)
	detach  bool // a background process (ps.go)
}

func (f *execFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringArrayVarP(&f.env, "exec-env", "e", nil, "environment variable K=V for this command (repeatable)")
	fl.StringVarP(&f.dir, "workdir", "w", "", "working directory in the guest")
	fl.StringVarP(&f.user, "user", "u", "", "run as this user (name, uid or uid:gid)")
	fl.Float64Var(&f.timeout, "timeout", 0, "kill the command after this many seconds")
	fl.BoolVarP(&f.stdin, "interactive", "i", false, "pass stdin to the command")
	fl.BoolVarP(&f.tty, "tty", "t", false, "run the command on a terminal (with -i: interactive, e.g. -it ID -- bash)")
	fl.BoolVarP(&f.detach, "detach", "d", false, "start the command in the background and print its id (see smolvm proc)")
}

func (f *execFlags) runOptions() (smolvm.RunOptions, error) {
	env, err := parseEnv(f.env)
	if err != nil {
		return smolvm.RunOptions{}, err
	}
	if f.timeout < 0 {
		return smolvm.RunOptions{}, fmt.Errorf("timeout %v: must not be negative", f.timeout)
	}
	opts := smolvm.RunOptions{
		Env: env, Dir: f.dir, User: f.user,
		Timeout: time.Duration(f.timeout * float64(time.Second)),
		Stdout:  os.Stdout, Stderr: os.Stderr,
	}
	if f.stdin {
		opts.Stdin = os.Stdin
	}
	return opts, nil
}

func execCmd(g *globals) *cobra.Command {
	var e execFlags
	cmd := &cobra.Command{
		Use:   "exec [flags] ID -- CMD [ARG...]",
		Short: "Run a command in a running VM; its output streams, smolvm exits with its code",
		Example: `  smolvm exec vm-1234abcd -- uname -a
  smolvm exec -e NAME=world vm-1234abcd -- sh -c 'echo hello $NAME'
  echo x | smolvm exec -i vm-1234abcd -- cat
  smolvm exec -it vm-1234abcd -- bash
  smolvm exec -d vm-1234abcd -- sh -c 'make test > /tmp/log 2>&1'`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := e.runOptions()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			vm, err := smolvm.Open(ctx, args[0], g.options()...)
			if err != nil {
				return err
			}
			defer vm.Close()
			if e.detach {
				return startDetached(ctx, vm, args[1:], opts)
			}
			if e.tty {
				restore, err := withTerminal(&opts)
				if err != nil {
					return err
				}
				defer restore()
			}
			return runAndExit(ctx, vm, args[1:], opts)
		},
	}
	e.register(cmd)
	return cmd
}

// runAndExit runs argv and turns a nonzero exit into smolvm's exit code.
func runAndExit(ctx context.Context, vm *smolvm.VM, argv []string, opts smolvm.RunOptions) error {
	res, err := vm.Run(ctx, argv, opts)
	if err != nil {
		return err
	}
	if res.TimedOut {
		fmt.Fprintf(os.Stderr, "smolvm: command timed out after %s and was killed\n", opts.Timeout)
	}
	if res.ExitCode != 0 {
		return exitError{res.ExitCode}
	}
	return nil
}
