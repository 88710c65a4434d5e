package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
)

func benchCmd(g *globals) *cobra.Command {
	var opts smolvm.BenchOptions
	var asJSON, perVM bool
	cmd := &cobra.Command{
		Use:   "bench [--vms N] [--image NAME] [--mode cold|restore|pool] [--baseline] [--json]",
		Short: "Measure VM create, boot, exec, stop and delete, beside baselines from the same run",
		Long: `Takes --vms VMs, one after another, through create, start (boot until the
agent is ready), two execs of true, stop and delete, after one unmeasured
VM that builds what is cached. Prints p50/p95/mean/min/max per phase and the
host memory (VmRSS and Pss) of the VMM and supervisor of an idle VM.

--baseline also times, interleaved with the VMs, a bare QEMU boot of the
same kernel to an initramfs that prints and powers off, and ssh into a VM
when this smolvm has an ssh command; each prints with its ratio.
--disk-gib N times creating a VM from an N GiB rootfs beside cp of it.

Modes: cold (from nothing); restore and pool also time, alternately with a
cold boot of the same configuration, a clone from a snapshot (restore) or a
VM taken from a warm pool (pool) up to its first command, and print the
ratio to the cold boot's.`,
		Example: `  smolvm bench --vms 10 --baseline
  smolvm bench --vms 10 --teardown kill --json > bench.json
  smolvm bench --vms 5 --disk-gib 2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.VMs < 1 {
				return fmt.Errorf("--vms %d: want at least 1", opts.VMs)
			}
			if !asJSON || perVM {
				opts.Progress = cmd.ErrOrStderr()
			}
			rep, err := smolvm.Bench(cmd.Context(), opts, g.options()...)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), rep)
			}
			return printBench(cmd.OutOrStdout(), rep, perVM)
		},
	}
	f := cmd.Flags()
	f.IntVar(&opts.VMs, "vms", 5, "VMs to measure, one after another")
	f.StringVar(&opts.Image, "image", "tiny", "image the VMs boot")
	f.StringVar(&opts.Kernel, "kernel", "", "guest kernel (default: found as create finds it)")
	f.StringVar((*string)(&opts.Net), "net", "", "network of the VMs: none, user or tap (default: as create chooses)")
	f.StringVar(&opts.Mode, "mode", smolvm.BenchCold, "cold; restore or pool: also time clone/acquire → first command beside cold boot → first command")
	f.StringVar(&opts.Teardown, "teardown", smolvm.BenchTeardownStop, "stop: graceful stop then delete; kill: delete the running VM")
	f.BoolVar(&opts.Baseline, "baseline", false, "also measure a bare QEMU boot (and ssh, when available) in the same run")
	f.IntVar(&opts.DiskGiB, "disk-gib", 0, "also time create from a rootfs of this many GiB beside cp of it (0: skip)")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	f.BoolVar(&perVM, "per-vm", false, "print each VM's figures too")
	return cmd
}

// printBench writes the report as text.
func printBench(w io.Writer, rep *smolvm.BenchReport, perVM bool) error {
	h := rep.Host
	fmt.Fprintf(w, "host: %d cpus, %s; backend %s (%s)\n", h.CPUs, h.CPUModel, h.Backend, strings.ToUpper(h.Accel))
	fmt.Fprintf(w, "kernel: %s (%s, %s); image %s; mode %s, teardown %s; %d vms\n\n",
		h.Kernel, h.KernelVersion, h.KernelSource, h.Image, rep.Options.Mode, rep.Options.Teardown, rep.Options.VMs)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase (ms)\tp50\tp95\tmean\tmin\tmax\t")
	for _, p := range rep.Phases {
		fmt.Fprintf(tw, "%s\t%s\t\n", p.Name, statsCells(p.Ms, "%.1f"))
	}
	m := rep.Memory
	fmt.Fprintln(tw, "\t\t\t\t\t\t")
	fmt.Fprintln(tw, "idle vm memory (MiB)\tp50\tp95\tmean\tmin\tmax\t")
	for _, r := range []struct {
		name string
		s    smolvm.BenchStats
	}{{"vmm rss", m.VMMRSS}, {"vmm pss", m.VMMPss}, {"supervisor rss", m.SupervisorRSS}, {"supervisor pss", m.SupervisorPss}} {
		fmt.Fprintf(tw, "%s\t%s\t\n", r.name, statsCells(kibToMiB(r.s), "%.1f"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(rep.Baselines) > 0 {
		fmt.Fprintln(w)
	}
	for _, b := range rep.Baselines {
		if b.Ms == nil {
			fmt.Fprintf(w, "%s baseline: %s\n", b.Name, b.Note)
			continue
		}
		fmt.Fprintf(w, "%s: p50 %.1f ms, p95 %.1f ms; %s p50 / this = %.2fx\n", b.Name, b.Ms.P50, b.Ms.P95, b.Compare, b.Ratio)
	}
	if c := rep.Compare; c != nil {
		fmt.Fprintf(w, "\n%s → first command: p50 %.1f ms, p95 %.1f ms; cold boot → first command (same config, same run): p50 %.0f ms, p95 %.0f ms\n",
			c.Mode, c.Fast.P50, c.Fast.P95, c.Cold.P50, c.Cold.P95)
		fmt.Fprintf(w, "%s / cold = %.3fx (target ≤ %.2fx); setup (snapshot or pool) %.0f ms, once\n", c.Mode, c.Ratio, c.Target, c.Setup)
	}
	if d := rep.Disk; d != nil {
		fmt.Fprintf(w, "\ndisk: create from a %d GiB rootfs (%s) p50 %.1f ms vs cp of it p50 %.0f ms: %.4fx\n",
			d.ImageBytes>>30, d.DiskFormat, d.CreateMs.P50, d.CopyMs.P50, d.Ratio)
	}
	if perVM {
		fmt.Fprintln(w)
		for _, v := range rep.VMs {
			var parts []string
			for _, p := range rep.Phases {
				parts = append(parts, fmt.Sprintf("%s %.1f", p.Name, v.Ms[p.Name]))
			}
			fmt.Fprintf(w, "%s: %s ms; vmm rss %d KiB pss %d KiB; supervisor rss %d KiB pss %d KiB\n",
				v.ID, strings.Join(parts, ", "), v.VMMRSS, v.VMMPss, v.SupervisorRSS, v.SupervisorPss)
		}
	}
	return nil
}

func statsCells(s smolvm.BenchStats, format string) string {
	var cells []string
	for _, v := range []float64{s.P50, s.P95, s.Mean, s.Min, s.Max} {
		cells = append(cells, fmt.Sprintf(format, v))
	}
	return strings.Join(cells, "\t")
}

func kibToMiB(s smolvm.BenchStats) smolvm.BenchStats {
	for _, v := range []*float64{&s.P50, &s.P95, &s.Mean, &s.Min, &s.Max} {
		*v /= 1024
	}
	return s
}
