package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/smolvm/smolvm/internal/store"
	"github.com/smolvm/smolvm/internal/supervisor"
	"github.com/smolvm/smolvm/internal/vmm"
)

// SnapshotInfo describes a snapshot: a running VM's memory, device state
// and disk, frozen at one instant, from which clones start.
type SnapshotInfo struct {
	Name      string    `json:"name"`
	SourceVM  string    `json:"source_vm"`
	Dir       string    `json:"dir"`
	Backend   string    `json:"backend"`
	Image     string    `json:"image,omitempty"`
	VCPUs     int       `json:"vcpus"`
	MemoryMiB int       `json:"memory_mib"`
	DiskBytes int64     `json:"disk_bytes"` // bytes the snapshot's files occupy on the host
	Created   time.Time `json:"created"`
}

// snapshotManifest is a snapshot's own description, both in its row and
// as manifest.json in its directory.
type snapshotManifest struct {
	Version    int                 `json:"version"`
	Name       string              `json:"name"`
	SourceVM   string              `json:"source_vm"`
	Created    time.Time           `json:"created"`
	Backend    string              `json:"backend"`
	Record     record              `json:"record"`                // the source VM's record
	Spec       vmm.Spec            `json:"spec"`                  // the source VM's VMM spec, as launched
	Net        *supervisor.NetPlan `json:"net,omitempty"`         // the source VM's network plan (clones get the same NICs)
	Disk       string              `json:"disk,omitempty"`        // saved root disk, a file name in the snapshot dir ("": the image, shared read-only)
	DiskFormat string              `json:"disk_format,omitempty"` // its format: raw or qcow2
	DiskSize   int64               `json:"disk_size,omitempty"`   // its virtual size in bytes
	Initrd     string              `json:"initrd"`                // file name of the initramfs the guest booted from
}

// Files and directories inside a snapshot directory.
const (
	snapshotManifestFile = "manifest.json"
	snapshotVMMDir       = "vmm" // the backend's files (vmm.Snapshotter)
	snapshotInitrd       = "initrd.cpio"
	snapshotVersion      = 1
)

// Snapshot saves the running VM's memory, device state and root disk as
// the snapshot name (default ID-YYYYMMDD-HHMMSS); create clones of it with
// NewFromSnapshot. The guest is paused while its state is written and
// resumed after. A VM that is not running gives an ErrState error. On error
// nothing is left: no row, no directory.
func (vm *VM) Snapshot(ctx context.Context, name string) (SnapshotInfo, error) {
	if name == "" {
		name = vm.id + "-" + time.Now().UTC().Format("20060102-150405")
	}
	info, err := vm.h.snapshot(ctx, vm.id, name)
	if err != nil {
		return info, fmt.Errorf("snapshotting vm %s as %s: %w", vm.id, name, err)
	}
	return info, nil
}

func (h *host) snapshot(ctx context.Context, id, name string) (SnapshotInfo, error) {
	if !ValidName(name) {
		return SnapshotInfo{}, fmt.Errorf("%w snapshot name %q: use 1-64 of a-z 0-9 _ -, starting and ending with a letter or digit", ErrInvalid, name)
	}
	r, err := h.get(ctx, id)
	if err != nil {
		return SnapshotInfo{}, err
	}
	if r.Status != store.StatusRunning && r.Status != store.StatusPaused {
		return SnapshotInfo{}, fmt.Errorf("%w: vm %s is %s; a snapshot needs a running vm (start it first)", ErrState, id, r.Status)
	}
	var rec record
	if err := json.Unmarshal(r.Config, &rec); err != nil {
		return SnapshotInfo{}, fmt.Errorf("decoding vm %s config: %w", id, err)
	}
	var plan supervisor.Plan
	if err := json.Unmarshal(r.Spec, &plan); err != nil {
		return SnapshotInfo{}, fmt.Errorf("decoding vm %s launch plan: %w", id, err)
	}
	if err := snapshottable(rec); err != nil {
		return SnapshotInfo{}, err
	}
	if _, err := h.store.GetSnapshot(ctx, name); err == nil {
		return SnapshotInfo{}, fmt.Errorf("snapshot %s: %w", name, ErrExists)
	}
	dir := h.path("snapshots", name)
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return SnapshotInfo{}, err
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			return SnapshotInfo{}, fmt.Errorf("snapshot %s: %w: directory %s", name, ErrExists, dir)
		}
		return SnapshotInfo{}, err
	}
	m, err := h.writeSnapshot(ctx, r, rec, plan, name, dir)
	if err != nil {
		os.RemoveAll(dir)
		return SnapshotInfo{}, err
	}
	return h.snapshotInfo(m, dir), nil
}

// snapshottable refuses VMs whose clones could not be made faithfully.
func snapshottable(rec record) error {
	for _, d := range rec.Config.Drives {
		if !d.ReadOnly {
			return fmt.Errorf("%w: the vm has the writable drive %s, which clones would share; snapshots take read-only extra drives only", ErrInvalid, d.Path)
		}
	}
	// Networks need no check: each clone's supervisor sets up its own (on
	// a tap: a new lease, tap and MAC, which the guest takes on restore).
	return nil
}

// writeSnapshot fills dir (which it does not remove on error) and adds the
// row.
func (h *host) writeSnapshot(ctx context.Context, r store.VM, rec record, plan supervisor.Plan, name, dir string) (snapshotManifest, error) {
	m := snapshotManifest{
		Version: snapshotVersion, Name: name, SourceVM: r.ID, Created: time.Now().UTC(),
		Backend: plan.Backend, Record: rec, Spec: plan.VMM, Net: plan.Net, Initrd: snapshotInitrd,
	}
	if err := linkOrCopy(plan.VMM.Initrd, filepath.Join(dir, snapshotInitrd)); err != nil {
		return m, fmt.Errorf("keeping the initramfs: %w", err)
	}
	req := supervisor.SnapshotRequest{Dir: filepath.Join(dir, snapshotVMMDir)}
	if rec.DiskOwned {
		m.DiskFormat = rec.DiskFormat
		if m.DiskFormat == "" {
			m.DiskFormat = diskRaw
		}
		m.Disk = "disk." + m.DiskFormat
		req.Disks = []supervisor.DiskCopy{{Src: rec.Disk, Dst: filepath.Join(dir, m.Disk)}}
		size, err := diskVirtualSize(rec)
		if err != nil {
			return m, err
		}
		m.DiskSize = size
	}
	if err := supervisor.Snapshot(ctx, r.Dir, req); err != nil {
		if errors.Is(err, supervisor.ErrNotRunning) {
			return m, fmt.Errorf("%w: vm %s is not running (%v)", ErrState, r.ID, err)
		}
		return m, err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return m, err
	}
	if err := writeFileSync(filepath.Join(dir, snapshotManifestFile), b); err != nil {
		return m, fmt.Errorf("writing manifest: %w", err)
	}
	err = h.store.CreateSnapshot(ctx, store.Snapshot{Name: name, SourceVM: r.ID, Dir: dir, Manifest: b, CreatedAt: m.Created})
	if errors.Is(err, store.ErrExists) {
		return m, fmt.Errorf("snapshot %s: %w", name, ErrExists)
	}
	return m, err
}

// diskVirtualSize is the size the guest sees of the VM's root disk.
func diskVirtualSize(rec record) (int64, error) {
	if rec.DiskFormat == diskQcow2 {
		if rec.DiskBacking == nil {
			return 0, errors.New("qcow2 disk without a recorded backing file")
		}
		return rec.DiskBacking.Size, nil
	}
	fi, err := os.Stat(rec.Disk)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// linkOrCopy makes dst the same file as src: a hard link when both are on
// one filesystem, else a copy.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return writeFileSync(dst, b)
}

// writeFileSync writes a new file and syncs it, so that a full disk shows
// up here and not later.
func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

func (h *host) snapshotInfo(m snapshotManifest, dir string) SnapshotInfo {
	return SnapshotInfo{
		Name: m.Name, SourceVM: m.SourceVM, Dir: dir, Backend: m.Backend, Image: m.Record.Config.Image,
		VCPUs: m.Spec.VCPUs, MemoryMiB: m.Spec.MemoryMiB, DiskBytes: duBytes(dir), Created: m.Created,
	}
}

// duBytes is the space the files directly or indirectly in dir occupy.
func duBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

// Snapshots lists every snapshot, oldest first.
func Snapshots(ctx context.Context, opt ...Option) ([]SnapshotInfo, error) {
	h, err := openHost(ctx, opt)
	if err != nil {
		return nil, err
	}
	defer h.close()
	rows, err := h.store.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]SnapshotInfo, 0, len(rows))
	for _, r := range rows {
		m, err := decodeSnapshot(r)
		if err != nil {
			return nil, err
		}
		out = append(out, h.snapshotInfo(m, r.Dir))
	}
	return out, nil
}

func decodeSnapshot(r store.Snapshot) (snapshotManifest, error) {
	var m snapshotManifest
	if err := json.Unmarshal(r.Manifest, &m); err != nil {
		return m, fmt.Errorf("decoding snapshot %s: %w", r.Name, err)
	}
	if m.Version != snapshotVersion {
		return m, fmt.Errorf("snapshot %s has format version %d, want %d", r.Name, m.Version, snapshotVersion)
	}
	return m, nil
}

// RemoveSnapshot deletes a snapshot's row and files. It refuses (ErrState)
// while a VM's disk or a pool is built on it.
func RemoveSnapshot(ctx context.Context, name string, opt ...Option) error {
	h, err := openHost(ctx, opt)
	if err != nil {
		return err
	}
	defer h.close()
	if err := h.removeSnapshot(ctx, name); err != nil {
		return fmt.Errorf("removing snapshot %s: %w", name, err)
	}
	return nil
}

func (h *host) removeSnapshot(ctx context.Context, name string) error {
	r, err := h.store.GetSnapshot(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	if user, err := h.snapshotUser(ctx, r); err != nil || user != "" {
		if err != nil {
			return err
		}
		return fmt.Errorf("%w: %s is built on it; remove that first", ErrState, user)
	}
	if err := h.store.DeleteSnapshot(ctx, name); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return os.RemoveAll(r.Dir)
}

// snapshotUser names a VM whose disk overlays the snapshot's disk, or a
// pool that clones it ("" when none).
func (h *host) snapshotUser(ctx context.Context, sn store.Snapshot) (string, error) {
	vms, err := h.store.ListVMs(ctx)
	if err != nil {
		return "", err
	}
	for _, v := range vms {
		var rec record
		if json.Unmarshal(v.Config, &rec) == nil && rec.DiskBacking != nil &&
			filepath.Dir(rec.DiskBacking.Path) == sn.Dir {
			return "vm " + v.ID, nil
		}
	}
	pools, err := h.store.ListPools(ctx)
	if err != nil {
		return "", err
	}
	for _, p := range pools {
		var pc poolRecord
		if json.Unmarshal(p.Config, &pc) == nil && pc.Snapshot == sn.Name {
			return "pool " + p.Name, nil
		}
	}
	return "", nil
}
