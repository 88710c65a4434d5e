package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// startDetached starts argv as a background process and prints its id.
func startDetached(ctx context.Context, vm *smolvm.VM, argv []string, opts smolvm.RunOptions) error {
	if opts.Stdin != nil || opts.TTY != nil {
		return fmt.Errorf("exec -d: a background process has no stdin or terminal (drop -i and -t)")
	}
	p, err := vm.StartProcess(ctx, argv, smolvm.ProcessOptions{Env: opts.Env, Dir: opts.Dir, User: opts.User, Timeout: opts.Timeout})
	if err != nil {
		return err
	}
	fmt.Println(p.ID)
	return nil
}

func psCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "proc",
		Short: "Background processes in a VM (started with exec -d): ls, wait, kill, output, rm",
		Example: `  smolvm exec -d dev -- sh -c 'sleep 5; echo done'
  smolvm proc ls dev
  smolvm proc output -f dev p1
  smolvm proc wait dev p1
  smolvm proc kill dev p1 --signal TERM`,
	}
	cmd.AddCommand(psLsCmd(g), psWaitCmd(g), psKillCmd(g), psOutputCmd(g), psRmCmd(g))
	return cmd
}

func psLsCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls ID",
		Short: "List a VM's background processes",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachVM(cmd, g, args, func(vm *smolvm.VM) error {
				procs, err := vm.Processes(cmd.Context())
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(os.Stdout, procs)
				}
				tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tPID\tSTATUS\tSTARTED\tOUT/ERR BYTES\tCOMMAND")
				for _, p := range procs {
					fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d/%d\t%s\n", p.ID, p.PID, procStatus(p),
						p.Started.Format(time.TimeOnly), p.OutBytes, p.ErrBytes, strings.Join(p.Argv, " "))
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func procStatus(p smolvm.Process) string {
	switch {
	case p.Running:
		return "running"
	case p.Signal != "":
		return "killed by " + p.Signal
	default:
		return fmt.Sprintf("exited %d", p.ExitCode)
	}
}

// withProc opens the VM args[0] and calls fn with process id args[1].
func withProc(cmd *cobra.Command, g *globals, args []string, fn func(*smolvm.VM, string) error) error {
	vm, err := smolvm.Open(cmd.Context(), args[0], g.options()...)
	if err != nil {
		return err
	}
	defer vm.Close()
	return fn(vm, args[1])
}

func psWaitCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "wait ID PROC",
		Short: "Wait for a background process to exit; smolvm exits with its code",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withProc(cmd, g, args, func(vm *smolvm.VM, id string) error {
				p, err := vm.WaitProcess(cmd.Context(), id)
				if err != nil {
					return err
				}
				if p.ExitCode != 0 {
					return exitError{p.ExitCode}
				}
				return nil
			})
		},
	}
}

func psKillCmd(g *globals) *cobra.Command {
	var sig string
	cmd := &cobra.Command{
		Use:   "kill ID PROC",
		Short: "Send a signal (default TERM) to a background process's group",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			s := unix.SignalNum("SIG" + strings.TrimPrefix(strings.ToUpper(sig), "SIG"))
			if s == 0 {
				return fmt.Errorf("signal %q: unknown", sig)
			}
			return withProc(cmd, g, args, func(vm *smolvm.VM, id string) error {
				return vm.SignalProcess(cmd.Context(), id, syscall.Signal(s))
			})
		},
	}
	cmd.Flags().StringVarP(&sig, "signal", "s", "TERM", "signal name")
	return cmd
}

func psOutputCmd(g *globals) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:     "output ID PROC",
		Aliases: []string{"logs"},
		Short:   "Print what a background process wrote (the guest keeps the last 1 MiB of each stream)",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withProc(cmd, g, args, func(vm *smolvm.VM, id string) error {
				dropped, err := vm.ProcessOutput(cmd.Context(), id, follow, os.Stdout, os.Stderr)
				if err == nil && dropped > 0 {
					fmt.Fprintf(os.Stderr, "smolvm: %d earlier bytes were dropped from the buffer\n", dropped)
				}
				return err
			})
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until the process exits")
	return cmd
}

func psRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rm ID PROC",
		Short: "Kill a background process if it runs and forget it",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withProc(cmd, g, args, func(vm *smolvm.VM, id string) error {
				return vm.RemoveProcess(cmd.Context(), id)
			})
		},
	}
}
