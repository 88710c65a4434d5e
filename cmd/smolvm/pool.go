package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"text/tabwriter"

	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
)

func poolCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pool",
		Short: "Warm pools of ready VMs, handed out in milliseconds",
		Long: `A pool keeps --size VMs ready: clones of a snapshot of one VM booted with the
pool's configuration. Taking one (SDK: smolvm.Acquire) hands it over
atomically and refills the pool in the background.`,
	}
	cmd.AddCommand(poolCreateCmd(g), poolLsCmd(g), poolRmCmd(g), poolAcquireCmd(g))
	return cmd
}

func poolCreateCmd(g *globals) *cobra.Command {
	var pc smolvm.PoolConfig
	cmd := &cobra.Command{
		Use:     "create NAME --image IMG --size N [--memory MiB] [--cpus N]",
		Short:   "Create a pool and fill it (boots one VM, snapshots it, clones it --size times)",
		Example: "  smolvm pool create py --image base --size 4 --memory 512",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pc.Name = args[0]
			info, err := smolvm.CreatePool(cmd.Context(), pc, g.options()...)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d ready\n", info.Name, info.Ready)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&pc.Config.Image, "image", "", "image of the pool's VMs (default base)")
	f.IntVar(&pc.Size, "size", 2, "ready VMs to keep")
	f.IntVar(&pc.Config.MemoryMiB, "memory", smolvm.DefaultMemoryMiB, "memory per VM in MiB")
	f.IntVar(&pc.Config.VCPUs, "cpus", smolvm.DefaultVCPUs, "virtual CPUs per VM")
	f.IntVar(&pc.MaxMemoryMiB, "max-memory", 0, "guest memory all pools together may use, MiB (default: the host's available memory)")
	return cmd
}

func poolLsCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List pools",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pools, err := smolvm.Pools(cmd.Context(), g.options()...)
			if err != nil {
				return err
			}
			if asJSON {
				if pools == nil {
					pools = []smolvm.PoolInfo{}
				}
				return printJSON(cmd.OutOrStdout(), pools)
			}
			printPools(cmd.OutOrStdout(), pools)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printPools(w io.Writer, pools []smolvm.PoolInfo) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tIMAGE\tSIZE\tREADY\tWARMING\tMEMORY")
	for _, p := range pools {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d MiB\n", p.Name, p.Image, p.Size, p.Ready, p.Warming, p.MemoryMiB)
	}
	tw.Flush()
}

func poolRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"delete"},
		Short:   "Delete pools, their waiting VMs and their snapshot (VMs already handed out stay)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, names []string) error {
			for _, n := range names {
				if err := smolvm.RemovePool(cmd.Context(), n, g.options()...); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

func poolAcquireCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "acquire NAME",
		Short: "Take a ready VM from the pool and print its id (it is then yours to rm)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			vm, err := smolvm.Acquire(cmd.Context(), args[0], g.options()...)
			if err != nil {
				return err
			}
			defer vm.Close()
			fmt.Fprintln(cmd.OutOrStdout(), vm.ID())
			return nil
		},
	}
}

// poolRefillCmd is the hidden background refill that Acquire starts.
func poolRefillCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "__pool-refill NAME",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			opts := append(g.options(), smolvm.WithLogger(log), smolvm.WithProgress(nil))
			return smolvm.RefillPool(cmd.Context(), args[0], opts...)
		},
	}
}
