package main

import (
	"log/slog"
	"os"
	"path/filepath"

	"github.com/smolvm/smolvm/internal/store"
	"github.com/smolvm/smolvm/internal/supervisor"
	"github.com/smolvm/smolvm/internal/vmm"
	"github.com/smolvm/smolvm/internal/vmm/backends"
	"github.com/smolvm/smolvm/internal/vmm/qemu"
	"github.com/spf13/cobra"
)

// superviseCmd is the hidden per-VM supervisor that `start` spawns.
func superviseCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "__supervise ID",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			st, err := store.Open(cmd.Context(), filepath.Join(g.dataDir, "smolvm.db"))
			if err != nil {
				return err
			}
			defer st.Close()
			ready := os.NewFile(3, "ready")
			return supervisor.Run(cmd.Context(), supervisor.Options{
				Store: st, ID: args[0], Ready: ready, Logger: log,
				Backend: func(p supervisor.Plan) (vmm.Backend, error) {
					return backends.New(p.Backend, backends.Options{
						QEMU:        qemu.Options{Logger: log},
						Firecracker: p.FirecrackerOptions(log),
					})
				},
			})
		},
	}
}
