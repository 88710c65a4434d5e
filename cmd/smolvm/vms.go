package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
)

// eachVM opens each id in turn and calls fn, stopping at the first error.
func eachVM(cmd *cobra.Command, g *globals, ids []string, fn func(*smolvm.VM) error) error {
	var errs []error
	for _, id := range ids {
		vm, err := smolvm.Open(cmd.Context(), id, g.options()...)
		if err == nil {
			err = fn(vm)
			vm.Close()
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func startCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "start ID...",
		Short: "Boot created or stopped VMs",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, ids []string) error {
			return eachVM(cmd, g, ids, func(vm *smolvm.VM) error { return vm.Start(cmd.Context()) })
		},
	}
}

func stopCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "stop ID...",
		Short: "Shut VMs down cleanly (their disks stay)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, ids []string) error {
			return eachVM(cmd, g, ids, func(vm *smolvm.VM) error { return vm.Stop(cmd.Context()) })
		},
	}
}

func rmCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "rm ID...",
		Aliases: []string{"delete"},
		Short:   "Delete VMs (running ones are killed) and everything they own",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, ids []string) error {
			return eachVM(cmd, g, ids, func(vm *smolvm.VM) error { return vm.Delete(cmd.Context()) })
		},
	}
	// docker rm needs -f for a running container; rm here always stops
	// the VM first, so the flag is taken and changes nothing.
	cmd.Flags().BoolP("force", "f", false, "accepted for docker compatibility: running VMs are always killed")
	return cmd
}

func lsCmd(g *globals) *cobra.Command {
	var status string
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list", "ps"},
		Short:   "List VMs",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			all, err := smolvm.List(cmd.Context(), g.options()...)
			if err != nil {
				return err
			}
			vms := make([]smolvm.Info, 0, len(all))
			for _, v := range all {
				if status == "" || string(v.Status) == status {
					vms = append(vms, v)
				}
			}
			if asJSON {
				return printJSON(os.Stdout, vms)
			}
			printVMs(os.Stdout, vms)
			return nil
		},
	}
	cmd.Flags().StringVar(&status, "status", "", "only VMs in this status (created, running, stopped, error)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printVMs(w io.Writer, vms []smolvm.Info) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tBACKEND\tCPUS\tMEMORY\tIMAGE\tCREATED")
	for _, v := range vms {
		img := v.Config.Image
		if v.Config.Rootfs != "" {
			img = v.Config.Rootfs
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d MiB\t%s\t%s ago\n", v.ID, v.Status, v.Backend,
			v.Config.VCPUs, v.Config.MemoryMiB, img, time.Since(v.Created).Round(time.Second))
	}
	tw.Flush()
}

func inspectCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect ID",
		Short: "Show a VM's status, processes, backend, config, disk and log",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, ids []string) error {
			return eachVM(cmd, g, ids, func(vm *smolvm.VM) error {
				info, err := vm.Info(cmd.Context())
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(os.Stdout, info)
				}
				printInfo(os.Stdout, info)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printInfo(w io.Writer, v smolvm.Info) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k string, val any) { fmt.Fprintf(tw, "%s:\t%v\n", k, val) }
	row("ID", v.ID)
	row("Status", v.Status)
	if v.Error != "" {
		row("Error", v.Error)
	}
	row("Backend", fmt.Sprintf("%s %s", v.Backend, v.Accel))
	row("Supervisor PID", v.SupervisorPID)
	row("VMM PID", v.VMMPID)
	row("CPUs", v.Config.VCPUs)
	row("Memory", fmt.Sprintf("%d MiB", v.Config.MemoryMiB))
	row("Image", v.Config.Image)
	row("Disk", fmt.Sprintf("%s (%s)", v.Disk, v.Config.DiskMode))
	row("Kernel", v.Kernel)
	if n := v.Network; n != nil {
		row("Network", netSummary(n))
		for _, p := range n.Ports {
			row("Port", p)
		}
	}
	row("Console log", v.ConsoleLog)
	if v.SSH != "" {
		row("SSH", v.SSH)
	}
	row("Created", v.Created.Format(time.RFC3339))
	if !v.Started.IsZero() {
		row("Started", v.Started.Format(time.RFC3339))
	}
	tw.Flush()
}

func logsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "logs ID",
		Short: "Print a VM's serial console log",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, ids []string) error {
			return eachVM(cmd, g, ids, func(vm *smolvm.VM) error {
				info, err := vm.Info(cmd.Context())
				if err != nil {
					return err
				}
				f, err := os.Open(info.ConsoleLog)
				if errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("vm %s has no console log yet (never started)", info.ID)
				}
				if err != nil {
					return err
				}
				defer f.Close()
				_, err = io.Copy(os.Stdout, f)
				return err
			})
		},
	}
}

func cleanupCmd(g *globals) *cobra.Command {
	var co smolvm.CleanupOptions
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove what dead VMs left behind (with --all: every VM)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			done, err := smolvm.Cleanup(cmd.Context(), co, g.options()...)
			verb := "removed"
			if co.DryRun {
				verb = "would remove"
			}
			for _, d := range done {
				fmt.Println(verb, d)
			}
			if len(done) == 0 && err == nil {
				fmt.Println("nothing to clean up")
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&co.All, "all", false, "remove every VM, running or not")
	cmd.Flags().BoolVar(&co.DryRun, "dry-run", false, "only say what would be removed")
	return cmd
}
