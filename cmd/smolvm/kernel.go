package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
)

func kernelCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kernel",
		Short: "Build and list smolvm's own guest kernels",
	}
	cmd.AddCommand(kernelBuildCmd(g), kernelLsCmd(g))
	return cmd
}

func kernelBuildCmd(g *globals) *cobra.Command {
	var opts smolvm.KernelBuildOptions
	cmd := &cobra.Command{
		Use:   "build [--force] [--jobs N]",
		Short: "Build a minimal guest kernel (all drivers built in) from the distribution's kernel source",
		Long: `Fetches the distribution's kernel source package with apt (apt-get download
linux-source-X.Y; nothing is installed), configures it as allnoconfig plus
smolvm's fragment (virtio-mmio, block, console, net, rng, vsock, ext4,
overlayfs, 9p, virtiofs, cgroups, namespaces, PVH, ACPI, 8250 serial) and
builds bzImage and vmlinux. The result goes to <data>/kernels/smolvm-VERSION-
CONFIGHASH and becomes the default kernel of new VMs. Expect minutes: about
11 on 2 cores. Needs: apt-get install build-essential flex bison bc libelf-dev libssl-dev`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			k, err := smolvm.BuildKernel(cmd.Context(), opts, g.options()...)
			if err != nil {
				return err
			}
			if k.Cached {
				fmt.Fprintf(cmd.ErrOrStderr(), "already built (use --force to rebuild)\n")
			}
			fmt.Fprintln(cmd.OutOrStdout(), k.Path)
			return nil
		},
	}
	cmd.Flags().BoolVar(&opts.Force, "force", false, "rebuild even if this source version and config are built")
	cmd.Flags().IntVarP(&opts.Jobs, "jobs", "j", 0, "parallel compile jobs (default: one per CPU)")
	return cmd
}

func kernelLsCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the kernels smolvm built, newest (the default) first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ks, err := smolvm.BuiltKernels(cmd.Context(), g.options()...)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), ks)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "RELEASE\tSOURCE\tCONFIG\tBUILT\tTOOK\tPATH")
			for _, k := range ks {
				fmt.Fprintf(tw, "%s\t%s %s\t%s\t%s\t%s\t%s\n", k.Release, k.SourcePackage, k.SourceVersion, k.ConfigHash,
					k.Built.Local().Format(time.DateTime), time.Duration(k.BuildSeconds*float64(time.Second)).Round(time.Second), k.Path)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
