package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func shellCmd(g *globals) *cobra.Command {
	var e execFlags
	cmd := &cobra.Command{
		Use:   "shell [flags] ID",
		Short: "Open the guest user's login shell in a running VM (a terminal when stdin is one)",
		Example: `  smolvm shell dev
  smolvm shell -u alice dev
  echo 'uname -a' | smolvm shell dev`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := e.runOptions()
			if err != nil {
				return err
			}
			opts.Stdin, opts.LoginShell = os.Stdin, true
			ctx := cmd.Context()
			vm, err := smolvm.Open(ctx, args[0], g.options()...)
			if err != nil {
				return err
			}
			defer vm.Close()
			if isTerminal(os.Stdin) {
				restore, err := withTerminal(&opts)
				if err != nil {
					return err
				}
				defer restore()
			}
			return runAndExit(ctx, vm, nil, opts)
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVarP(&e.env, "exec-env", "e", nil, "environment variable K=V for the shell (repeatable)")
	fl.StringVarP(&e.dir, "workdir", "w", "", "working directory in the guest")
	fl.StringVarP(&e.user, "user", "u", "", "log in as this user (name, uid or uid:gid)")
	return cmd
}

// withTerminal asks for a guest terminal the size of ours, follows our
// resizes (SIGWINCH), and puts our terminal in raw mode when stdin is one,
// so that keys (Ctrl-C too) go to the guest as typed. restore undoes it.
func withTerminal(opts *smolvm.RunOptions) (restore func(), err error) {
	tty := &smolvm.TTY{}
	fd := int(os.Stdout.Fd())
	if !term.IsTerminal(fd) {
		fd = int(os.Stdin.Fd())
	}
	if cols, rows, err := term.GetSize(fd); err == nil {
		tty.Size = smolvm.WindowSize{Rows: uint16(rows), Cols: uint16(cols)}
	}
	resize := make(chan smolvm.WindowSize, 1)
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	go func() {
		for range winch {
			if cols, rows, err := term.GetSize(fd); err == nil {
				select {
				case <-resize: // keep only the latest size
				default:
				}
				resize <- smolvm.WindowSize{Rows: uint16(rows), Cols: uint16(cols)}
			}
		}
	}()
	tty.Resize = resize
	opts.TTY = tty
	var state *term.State
	if isTerminal(os.Stdin) {
		if state, err = term.MakeRaw(int(os.Stdin.Fd())); err != nil {
			signal.Stop(winch)
			return nil, fmt.Errorf("putting the terminal in raw mode: %w", err)
		}
	}
	return func() {
		signal.Stop(winch)
		if state != nil {
			term.Restore(int(os.Stdin.Fd()), state)
		}
	}, nil
}
