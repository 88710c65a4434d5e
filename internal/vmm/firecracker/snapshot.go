package firecracker

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	"github.com/smolvm/smolvm/internal/vmm"
)

// Snapshot writes the paused guest's full memory (SnapshotMemFile) and
// device state (SnapshotStateFile) into dir, creating it. The guest must be
// paused (Pause); disks are the caller's to copy.
func (i *Instance) Snapshot(ctx context.Context, dir string) error {
	if err := i.snapshot(ctx, dir); err != nil {
		return fmt.Errorf("snapshotting vm %s: %w", i.id, err)
	}
	return nil
}

func (i *Instance) snapshot(ctx context.Context, dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	files := []string{SnapshotStateFile, SnapshotMemFile}
	state, mem := filepath.Join(dir, files[0]), filepath.Join(dir, files[1])
	if i.layout.jailed() {
		// The jailed firecracker can write only inside its jail.
		state, mem = i.layout.vmmPath(files[0]), i.layout.vmmPath(files[1])
	}
	err = i.api.put(ctx, "/snapshot/create", snapshotCreate{SnapshotType: "Full", SnapshotPath: state, MemFilePath: mem})
	if err != nil {
		return err
	}
	if i.layout.jailed() {
		for _, f := range files {
			if err := moveFile(i.layout.host(f), filepath.Join(dir, f)); err != nil {
				return fmt.Errorf("moving %s out of the jail: %w", f, err)
			}
		}
	}
	return nil
}

// Restore starts a fresh firecracker for spec and loads the snapshot a
// Snapshot wrote into snapshotDir. spec gives the new VM its run directory,
// disks (in the snapshot's order), tap devices and console; its kernel,
// sizes and command line are the snapshot's. The guest runs when Restore
// returns. On error nothing Restore made is left behind.
func (b *Backend) Restore(ctx context.Context, spec vmm.Spec, snapshotDir string) (vmm.Instance, error) {
	inst, err := b.restore(ctx, spec, snapshotDir)
	if err != nil {
		return nil, fmt.Errorf("restoring vm %s from %s: %w", spec.ID, snapshotDir, err)
	}
	return inst, nil
}

func (b *Backend) restore(ctx context.Context, spec vmm.Spec, snapshotDir string) (*Instance, error) {
	for _, f := range []string{SnapshotStateFile, SnapshotMemFile} {
		if _, err := os.Stat(filepath.Join(snapshotDir, f)); err != nil {
			return nil, fmt.Errorf("not a snapshot: %w", err)
		}
	}
	return b.launch(ctx, spec, func(ctx context.Context, inst *Instance) error {
		return inst.api.run(ctx, func() ([]request, error) { return inst.restoreRequests(snapshotDir) })
	})
}

// restoreRequests load the snapshot with the spec's tap devices and vsock
// socket, then set the spec's rate limits (which a load cannot) before the
// guest resumes.
func (i *Instance) restoreRequests(snapshotDir string) ([]request, error) {
	reqs, err := i.preludeRequests()
	if err != nil {
		return nil, err
	}
	state, err := i.layout.file(filepath.Join(snapshotDir, SnapshotStateFile), SnapshotStateFile, false)
	if err != nil {
		return nil, err
	}
	mem, err := i.layout.file(filepath.Join(snapshotDir, SnapshotMemFile), SnapshotMemFile, false)
	if err != nil {
		return nil, err
	}
	// The snapshot names its drives as this layout does (disk0, ...):
	// link them to this VM's disks before the load opens them.
	if _, err := i.driveRequests(); err != nil {
		return nil, err
	}
	load := snapshotLoad{
		SnapshotPath:  state,
		MemBackend:    memBackend{BackendType: "File", BackendPath: mem},
		VsockOverride: &vsockOverride{UDSPath: i.layout.vmmPath(vsockSocket)},
	}
	var limits []request
	for n, nic := range i.spec.Net {
		load.NetworkOverrides = append(load.NetworkOverrides, networkOverride{IfaceID: ifaceID(n), HostDevName: nic.Tap})
		if nic.RxRateBps > 0 || nic.TxRateBps > 0 {
			limits = append(limits, request{http.MethodPatch, "/network-interfaces/" + ifaceID(n), partialNetworkInterface{
				IfaceID:       ifaceID(n),
				RxRateLimiter: bandwidth(nic.RxRateBps),
				TxRateLimiter: bandwidth(nic.TxRateBps),
			}})
		}
	}
	load.ResumeVM = len(limits) == 0
	reqs = append(reqs, request{http.MethodPut, "/snapshot/load", load})
	if len(limits) > 0 {
		reqs = append(reqs, limits...)
		reqs = append(reqs, request{http.MethodPatch, "/vm", vmState{State: stateResumed}})
	}
	return reqs, nil
}
