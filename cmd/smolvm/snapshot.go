package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
)

func snapshotCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot ID [NAME]",
		Short: "Save a running VM's memory and disk as a snapshot (default name ID-DATE-TIME); clone it with create --from-snapshot",
		Long: `Save a running VM's memory, device state and disk as a snapshot. The VM is
paused while it is written and resumed after. Start clones of it with
smolvm create --from-snapshot NAME [--count N].`,
		Example: `  smolvm snapshot dev warm
  smolvm create --from-snapshot warm --count 3
  smolvm snapshot ls
  smolvm snapshot rm warm`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 2 {
				name = args[1]
			}
			vm, err := smolvm.Open(cmd.Context(), args[0], g.options()...)
			if err != nil {
				return err
			}
			defer vm.Close()
			info, err := vm.Snapshot(cmd.Context(), name)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), info.Name)
			return nil
		},
	}
	cmd.AddCommand(snapshotLsCmd(g), snapshotRmCmd(g))
	return cmd
}

func snapshotLsCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List snapshots",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := smolvm.Snapshots(cmd.Context(), g.options()...)
			if err != nil {
				return err
			}
			if asJSON {
				if list == nil {
					list = []smolvm.SnapshotInfo{}
				}
				return printJSON(cmd.OutOrStdout(), list)
			}
			printSnapshots(cmd.OutOrStdout(), list)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printSnapshots(w io.Writer, list []smolvm.SnapshotInfo) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tFROM VM\tIMAGE\tCPUS\tMEMORY\tON DISK\tCREATED")
	for _, s := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d MiB\t%.1f MiB\t%s ago\n", s.Name, s.SourceVM, s.Image,
			s.VCPUs, s.MemoryMiB, float64(s.DiskBytes)/(1<<20), time.Since(s.Created).Round(time.Second))
	}
	tw.Flush()
}

func snapshotRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"delete"},
		Short:   "Delete snapshots (refused while a VM's disk or a pool is built on one)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, names []string) error {
			for _, n := range names {
				if err := smolvm.RemoveSnapshot(cmd.Context(), n, g.options()...); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

// createFromSnapshot is `create --from-snapshot NAME [--count N]`: it
// starts count clones and prints their ids. With a name and a count above
// one, clones are NAME-1, NAME-2, ... All or nothing: when one clone fails,
// the ones already made are deleted.
func createFromSnapshot(ctx context.Context, g *globals, snapshot, name string, count int, asJSON bool) (err error) {
	if count < 1 {
		return fmt.Errorf("--count %d: want at least 1", count)
	}
	var vms []*smolvm.VM
	defer func() {
		for _, vm := range vms {
			if err != nil {
				vm.Delete(context.WithoutCancel(ctx))
			}
			vm.Close()
		}
	}()
	for i := range count {
		id := name
		if name != "" && count > 1 {
			id = fmt.Sprintf("%s-%d", name, i+1)
		}
		vm, err := smolvm.NewFromSnapshot(ctx, snapshot, id, g.options()...)
		if err != nil {
			return err
		}
		vms = append(vms, vm)
	}
	if !asJSON {
		for _, vm := range vms {
			fmt.Println(vm.ID())
		}
		return nil
	}
	infos := make([]smolvm.Info, 0, len(vms))
	for _, vm := range vms {
		info, err := vm.Info(ctx)
		if err != nil {
			return err
		}
		infos = append(infos, info)
	}
	return printJSON(os.Stdout, infos)
}
