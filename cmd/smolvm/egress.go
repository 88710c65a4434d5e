package main

import (
	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
)

// netFlags are the network flags of create and run.
type netFlags struct {
	mode string
}

func (f *netFlags) register(cmd *cobra.Command, cfg *smolvm.Config) {
	fl := cmd.Flags()
	fl.StringVar(&f.mode, "net", "", "network: none, user (QEMU user-mode, rootless) or tap (default: tap as root with CAP_NET_ADMIN, else user)")
	fl.StringVar(&cfg.Egress, "egress", "", "egress policy (tap): allow-all (default), deny-all or allowlist")
	fl.StringArrayVar(&cfg.Allow, "allow", nil, "allowlist entry (repeatable): CIDR, address, domain or *.domain")
	fl.IntVar(&cfg.NetRateMbps, "net-rate", 0, "limit the VM's traffic each way to this many Mbit/s (tap; 0 = unlimited)")
	fl.BoolVar(&cfg.AllowVMs, "allow-vms", false, "let the VM talk to other VMs that also have --allow-vms (tap)")
	fl.BoolVar(&cfg.AllowHost, "allow-host", false, "let the VM reach every address of the host, not only its DNS resolver (tap)")
	fl.StringArrayVar(&cfg.DNS, "dns", nil, "upstream DNS server ADDR[:PORT] for the VM's resolver (repeatable; tap; default: the host's resolv.conf)")
}

// apply puts the flags that need conversion into cfg.
func (f *netFlags) apply(cfg *smolvm.Config) { cfg.Net = smolvm.NetMode(f.mode) }

func egressCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "egress",
		Short: "Change a VM's egress policy",
	}
	cmd.AddCommand(egressSetCmd(g))
	return cmd
}

func egressSetCmd(g *globals) *cobra.Command {
	var mode string
	var allow []string
	cmd := &cobra.Command{
		Use:   "set ID --egress allow-all|deny-all|allowlist [--allow ENTRY]...",
		Short: "Replace a VM's egress policy; a running VM gets it at once (new connections)",
		Example: `  smolvm egress set dev --egress allowlist --allow pypi.org --allow '*.pythonhosted.org'
  smolvm egress set dev --egress deny-all`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachVM(cmd, g, args, func(vm *smolvm.VM) error {
				return vm.SetEgress(cmd.Context(), mode, allow...)
			})
		},
	}
	cmd.Flags().StringVar(&mode, "egress", "", "allow-all, deny-all or allowlist")
	cmd.Flags().StringArrayVar(&allow, "allow", nil, "allowlist entry (repeatable): CIDR, address, domain or *.domain")
	cmd.MarkFlagRequired("egress")
	return cmd
}

// netSummary is inspect's one-line view of a VM's network.
func netSummary(n *smolvm.NetInfo) string {
	s := string(n.Mode)
	if n.GuestIP != "" {
		s += " " + n.GuestIP + " gw " + n.Gateway + " dns " + n.DNS
	}
	if n.Tap != "" {
		s += " tap " + n.Tap
	}
	if n.Egress != "" {
		s += " egress " + n.Egress
	}
	return s
}
