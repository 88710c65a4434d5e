package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/smolvm/smolvm/internal/store"
	"github.com/smolvm/smolvm/internal/supervisor"
)

// NewFromSnapshot creates a VM named name (generated when empty) from the
// snapshot and starts it where the snapshot left off: the guest resumes
// with the snapshot's memory and processes, gets the host's clock, fresh
// randomness, its own hostname (name) and, on a tap network, its own
// address lease, tap and MAC (its supervisor sets the network up as for a
// fresh VM, and the guest renumbers its NIC), and writes to its own disk
// (an overlay over the snapshot's, so clones never see each other's
// writes). Services listening on all addresses in the snapshot answer on
// the clone's address; connections the snapshot held are lost.
// The VM is running when NewFromSnapshot returns. A missing or corrupt
// snapshot gives an error and leaves nothing behind: no row, no
// directory, no process.
func NewFromSnapshot(ctx context.Context, snapshot, name string, opt ...Option) (*VM, error) {
	h, err := openHost(ctx, opt)
	if err != nil {
		return nil, err
	}
	if name == "" {
		name = newID()
	}
	vm, err := h.clone(ctx, snapshot, name)
	if err != nil {
		h.close()
		return nil, fmt.Errorf("creating vm %s from snapshot %s: %w", name, snapshot, err)
	}
	return vm, nil
}

func (h *host) clone(ctx context.Context, snapshot, name string) (*VM, error) {
	if !ValidName(name) {
		return nil, fmt.Errorf("%w name %q: use 1-64 of a-z 0-9 _ -, starting and ending with a letter or digit", ErrInvalid, name)
	}
	sn, err := h.store.GetSnapshot(ctx, snapshot)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("snapshot %s: %w", snapshot, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	m, err := decodeSnapshot(sn)
	if err != nil {
		return nil, err
	}
	if err := checkSnapshotFiles(sn.Dir, m); err != nil {
		return nil, err
	}
	if _, err := h.store.GetVM(ctx, name); err == nil {
		return nil, ErrExists
	}
	dir := h.vmDir(name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("%w: directory %s", ErrExists, dir)
		}
		return nil, err
	}
	rec, err := cloneRecord(ctx, m, sn.Dir, dir, name)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	b, err := json.Marshal(rec)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := h.store.CreateVM(ctx, store.VM{ID: name, Status: store.StatusCreated, Dir: dir, Config: b}); err != nil {
		os.RemoveAll(dir)
		if errors.Is(err, store.ErrExists) {
			return nil, ErrExists
		}
		return nil, err
	}
	vm := &VM{h: h, id: name}
	if err := vm.restore(ctx, m, sn.Dir, rec); err != nil {
		// Nothing half-made: the row, the directory and any process go.
		if rerr := h.remove(context.WithoutCancel(ctx), name); rerr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", rerr))
		}
		return nil, err
	}
	return vm, nil
}

// checkSnapshotFiles fails when the snapshot's directory lacks what a
// clone needs (the backend checks its own files when it restores).
func checkSnapshotFiles(dir string, m snapshotManifest) error {
	need := []string{snapshotManifestFile, m.Initrd, snapshotVMMDir}
	if m.Disk != "" {
		need = append(need, m.Disk)
	}
	for _, f := range need {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return fmt.Errorf("snapshot %s is incomplete: %w", m.Name, err)
		}
	}
	if _, err := os.Stat(m.Spec.Kernel); err != nil {
		return fmt.Errorf("snapshot %s: its kernel is gone: %w", m.Name, err)
	}
	return checkBacking(m.Record)
}

// cloneRecord is the clone's record: the source's, renamed, with its own
// root disk over the snapshot's.
func cloneRecord(ctx context.Context, m snapshotManifest, snapDir, dir, name string) (record, error) {
	rec := m.Record
	rec.Config.Name = name
	if m.Disk == "" {
		return rec, nil // the image itself, read-only: nothing to give the clone
	}
	saved := filepath.Join(snapDir, m.Disk)
	fi, err := os.Stat(saved)
	if err != nil {
		return rec, err
	}
	if m.Backend == "firecracker" {
		disk := filepath.Join(dir, "rootfs.ext4")
		if err := cloneDisk(ctx, saved, disk, 0); err != nil {
			return rec, err
		}
		rec.Disk, rec.DiskFormat, rec.DiskOwned, rec.DiskBacking = disk, diskRaw, true, nil
		return rec, nil
	}
	disk := filepath.Join(dir, "rootfs.qcow2")
	if err := writeQcow2OverlayOf(disk, saved, m.DiskFormat, m.DiskSize); err != nil {
		return rec, fmt.Errorf("creating disk overlay: %w", err)
	}
	b := backingOf(saved, fi)
	rec.Disk, rec.DiskFormat, rec.DiskOwned, rec.DiskBacking = disk, diskQcow2, true, &b
	return rec, nil
}

// restore writes the clone's restore plan and spawns its supervisor.
func (vm *VM) restore(ctx context.Context, m snapshotManifest, snapDir string, rec record) error {
	r, err := vm.h.get(ctx, vm.id)
	if err != nil {
		return err
	}
	spec := m.Spec
	spec.ID, spec.Dir = vm.id, r.Dir
	spec.Initrd = filepath.Join(snapDir, m.Initrd)
	spec.ConsoleLog = filepath.Join(r.Dir, supervisor.ConsoleFile)
	spec.Disks = append(spec.Disks[:0:0], spec.Disks...)
	spec.Disks[0].Path, spec.Disks[0].Format = rec.Disk, rec.DiskFormat
	plan := supervisor.Plan{Backend: m.Backend, VMM: spec, Net: m.Net, Jailer: jailerPlan(rec.Config),
		Restore: &supervisor.RestorePlan{Snapshot: filepath.Join(snapDir, snapshotVMMDir), Hostname: vm.id}}
	b, err := json.Marshal(plan)
	if err != nil {
		return err
	}
	if _, err := vm.h.store.UpdateVM(ctx, vm.id, func(v *store.VM) error {
		v.Spec, v.Backend, v.Status = b, m.Backend, store.StatusStarting
		return nil
	}); err != nil {
		return err
	}
	args := []string{"__supervise", "--data-dir", vm.h.dir, vm.id}
	_, err = supervisor.Spawn(ctx, vm.h.opts.exe, args, r.Dir)
	return err
}
