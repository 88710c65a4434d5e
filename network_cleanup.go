package smolvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/smolvm/smolvm/internal/network"
	"github.com/smolvm/smolvm/internal/store"
	"github.com/smolvm/smolvm/internal/supervisor"
)

// openNetwork starts a network.Manager for cleaning up (it never resolves
// names: no upstreams are read) under the network lock, which serialises
// it with every supervisor's Setup. close releases both.
func (h *host) openNetwork(ctx context.Context) (m *network.Manager, close func(), err error) {
	unlock, err := supervisor.LockNetwork(h.netLockPath())
	if err != nil {
		return nil, nil, err
	}
	m, err = network.New(ctx, network.Config{
		Leases: supervisor.NetLeases(h.store), ResolvConf: "/dev/null", Logger: h.log,
	})
	if err != nil {
		unlock()
		return nil, nil, fmt.Errorf("opening network: %w", err)
	}
	return m, func() { m.Close(); unlock() }, nil
}

// removeNetLeftovers tears down the tap-mode network of a VM whose
// supervisor died without doing it (status error). The kernel objects are
// found by name; the leases go with the row anyway.
func (h *host) removeNetLeftovers(ctx context.Context, r store.VM, cfg Config) error {
	if cfg.Net != NetTap || r.Status != store.StatusError || !netPrivileged() {
		return nil
	}
	m, closeNet, err := h.openNetwork(ctx)
	if err != nil {
		return err
	}
	defer closeNet()
	return m.Teardown(ctx, r.ID)
}

// sweepNetwork removes taps, nftables objects and leases that no live VM
// owns (a supervisor killed, then its row removed, or state lost). A VM
// owns its network while its row says starting, running or stopping and
// its supervisor is alive. It returns one line per VM swept.
func (h *host) sweepNetwork(ctx context.Context, dryRun bool) ([]string, error) {
	if !netPrivileged() || dryRun {
		return nil, nil // nothing smolvm could have made here; a dry run touches no kernel state
	}
	m, closeNet, err := h.openNetwork(ctx)
	if err != nil {
		return nil, err
	}
	defer closeNet()
	var errs []error
	owned := func(id string) bool {
		r, err := h.store.GetVM(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			// Not ours; but another data dir's live supervisor may own it
			// (the kernel's taps and table are shared by the whole host).
			return supervisedAnywhere(id)
		}
		if err != nil {
			errs = append(errs, err)
			return true // unsure: keep
		}
		switch h.reconcile(ctx, r).Status {
		case store.StatusStarting, store.StatusRunning, store.StatusStopping:
			return true
		}
		return false
	}
	ids, err := m.Sweep(ctx, owned)
	var done []string
	for _, id := range ids {
		done = append(done, "network of vm "+id)
	}
	return done, errors.Join(append(errs, err)...)
}

// supervisedAnywhere reports whether a live smolvm supervisor, of any data
// dir, supervises a VM called id.
func supervisedAnywhere(id string) bool {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte("__supervise\x00")) {
			continue
		}
		args := bytes.Split(bytes.TrimRight(b, "\x00"), []byte{0})
		if string(args[len(args)-1]) == id {
			return true
		}
	}
	return false
}
