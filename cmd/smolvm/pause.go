package main

import (
	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
)

func pauseCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "pause ID...",
		Short: "Stop running VMs' vCPUs (memory and processes stay as they are)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, ids []string) error {
			return eachVM(cmd, g, ids, func(vm *smolvm.VM) error { return vm.Pause(cmd.Context()) })
		},
	}
}

func resumeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "resume ID...",
		Short: "Restart paused VMs",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, ids []string) error {
			return eachVM(cmd, g, ids, func(vm *smolvm.VM) error { return vm.Resume(cmd.Context()) })
		},
	}
}
