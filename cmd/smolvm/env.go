package main

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"

	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
)

func envCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "env",
		Short: "Set, unset and list the environment every later command in a VM sees",
		Long: `Variables set here are seen by every later exec, shell, background process
and ssh session in the VM, over the VM's --env and under a command's own -e.
They live in the running guest: a restart forgets them (--env stays).`,
	}
	cmd.AddCommand(envSetCmd(g), envUnsetCmd(g), envLsCmd(g))
	return cmd
}

func envSetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "set ID KEY=VALUE...",
		Short:   "Set variables (values are kept exactly: quotes, newlines, $)",
		Example: `  smolvm env set dev GREETING='hello "world"' DEBUG=1`,
		Args:    cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			vars, err := parseEnv(args[1:])
			if err != nil {
				return err
			}
			return eachVM(cmd, g, args[:1], func(vm *smolvm.VM) error { return vm.SetEnv(cmd.Context(), vars) })
		},
	}
}

func envUnsetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "unset ID KEY...",
		Short: "Unset variables (also ones from the VM's --env or its image)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachVM(cmd, g, args[:1], func(vm *smolvm.VM) error { return vm.UnsetEnv(cmd.Context(), args[1:]...) })
		},
	}
}

func envLsCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls ID",
		Short: "List the variables commands get beyond the defaults (PATH, HOME...)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachVM(cmd, g, args, func(vm *smolvm.VM) error {
				env, err := vm.ListEnv(cmd.Context())
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(os.Stdout, env)
				}
				for _, k := range slices.Sorted(maps.Keys(env)) {
					fmt.Printf("%s=%s\n", k, shellQuote(env[k]))
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// shellQuote quotes v when it holds anything a shell would interpret.
func shellQuote(v string) string {
	for _, c := range v {
		if !(c == '_' || c == '-' || c == '.' || c == '/' || c == ':' || c == ',' ||
			c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return strconv.Quote(v)
		}
	}
	return v
}
