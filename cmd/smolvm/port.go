package main

import (
	"fmt"
	"os"
	"strconv"
	"text/tabwriter"

	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
)

func portCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "port",
		Short: "Expose guest ports on the host, list and close them",
	}
	cmd.AddCommand(portExposeCmd(g), portLsCmd(g), portCloseCmd(g))
	return cmd
}

func portExposeCmd(g *globals) *cobra.Command {
	var o smolvm.ExposeOptions
	cmd := &cobra.Command{
		Use:   "expose ID GUEST_PORT",
		Short: "Forward a host port to a port of a running VM; prints ADDRESS:HOST_PORT",
		Example: `  smolvm port expose dev 8080                  # 127.0.0.1:<picked> -> 8080
  smolvm port expose dev 80 --host-port 8000 --address 0.0.0.0`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			guest, err := parsePort("guest port", args[1])
			if err != nil {
				return err
			}
			return eachVM(cmd, g, args[:1], func(vm *smolvm.VM) error {
				p, err := vm.ExposePort(cmd.Context(), guest, o)
				if err != nil {
					return err
				}
				fmt.Printf("%s:%d\n", p.Address, p.HostPort)
				return nil
			})
		},
	}
	cmd.Flags().IntVar(&o.HostPort, "host-port", 0, "host port (default: a free one in 20000-29999)")
	cmd.Flags().StringVar(&o.Address, "address", "127.0.0.1", "host address to listen on (0.0.0.0 = all)")
	return cmd
}

func portLsCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls ID",
		Short: "List a running VM's exposed ports",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachVM(cmd, g, args, func(vm *smolvm.VM) error {
				ports, err := vm.Ports(cmd.Context())
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(os.Stdout, ports)
				}
				tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ADDRESS\tHOST PORT\tGUEST PORT")
				for _, p := range ports {
					fmt.Fprintf(tw, "%s\t%d\t%d\n", p.Address, p.HostPort, p.GuestPort)
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func portCloseCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "close ID HOST_PORT",
		Short: "Stop forwarding a host port",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			host, err := parsePort("host port", args[1])
			if err != nil {
				return err
			}
			return eachVM(cmd, g, args[:1], func(vm *smolvm.VM) error {
				return vm.ClosePort(cmd.Context(), host)
			})
		},
	}
}

func parsePort(what, s string) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("%s %q: want a number from 1 to 65535", what, s)
	}
	return p, nil
}
