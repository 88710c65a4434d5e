package smolvm

import (
	"context"
	"fmt"
	"os"

	"github.com/smolvm/smolvm/internal/store"
)

// CleanupOptions choose what Cleanup removes.
type CleanupOptions struct {
	All    bool // remove every VM, running or not
	DryRun bool // only say what would be removed
}

// Cleanup removes what dead VMs left behind: every VM in the error state
// (its leftover processes, files and row) and VM directories no row owns.
// With All it removes every VM. It returns one line per thing removed (or,
// with DryRun, that would be).
func Cleanup(ctx context.Context, co CleanupOptions, opt ...Option) ([]string, error) {
	h, err := openHost(ctx, opt)
	if err != nil {
		return nil, err
	}
	defer h.close()
	rows, err := h.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	var done []string
	known := map[string]bool{}
	for _, r := range rows {
		known[r.ID] = true
		r = h.reconcile(ctx, r)
		if !co.All && r.Status != store.StatusError {
			continue
		}
		done = append(done, fmt.Sprintf("vm %s (%s)", r.ID, r.Status))
		if co.DryRun {
			continue
		}
		if err := h.remove(ctx, r.ID); err != nil {
			return done, fmt.Errorf("removing vm %s: %w", r.ID, err)
		}
	}
	entries, err := os.ReadDir(h.path("vms"))
	if err != nil {
		return done, err
	}
	for _, e := range entries {
		if known[e.Name()] {
			continue
		}
		dir := h.path("vms", e.Name())
		done = append(done, "orphan directory "+dir)
		if !co.DryRun {
			if err := os.RemoveAll(dir); err != nil {
				return done, err
			}
		}
	}
	swept, err := h.sweepNetwork(ctx, co.DryRun)
	return append(done, swept...), err
}
