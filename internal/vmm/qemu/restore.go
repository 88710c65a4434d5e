package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/smolvm/smolvm/internal/vmm"
)

// ErrBadSnapshot is wrapped by Restore when the snapshot directory is
// missing, incomplete or unreadable by QEMU.
var ErrBadSnapshot = errors.New("bad snapshot")

var _ vmm.Restorer = (*Backend)(nil)

// Restore starts a QEMU for spec that resumes the guest a Snapshot wrote
// into snapshotDir. spec gives the new VM its run directory, disks (in the
// snapshot's order, holding the disk state of the moment of the snapshot),
// console and network; its kernel, initrd, command line, vCPUs and memory
// must be the snapshotted VM's (QEMU rebuilds the same machine and loads
// the device state into it). A snapshot whose RAM was saved apart is
// mapped copy-on-write: pages are read as the guest touches them. The guest
// runs when Restore returns. On error nothing Restore made is left behind,
// and the error wraps ErrBadSnapshot when the snapshot is at fault.
func (b *Backend) Restore(ctx context.Context, spec vmm.Spec, snapshotDir string) (vmm.Instance, error) {
	inst, err := b.restore(ctx, spec, snapshotDir)
	if err != nil {
		return nil, fmt.Errorf("restoring vm %s from %s: %w", spec.ID, snapshotDir, err)
	}
	return inst, nil
}

func (b *Backend) restore(ctx context.Context, spec vmm.Spec, dir string) (*Instance, error) {
	m, err := readManifest(dir)
	if err != nil {
		return nil, err
	}
	if spec.MemoryMiB == 0 {
		spec.MemoryMiB = m.MemoryMiB
	}
	if spec.MemoryMiB != m.MemoryMiB {
		return nil, fmt.Errorf("the snapshot has %d MiB of memory, the spec %d MiB", m.MemoryMiB, spec.MemoryMiB)
	}
	if err := validate(spec); err != nil {
		return nil, err
	}
	if err := b.validAccel(); err != nil {
		return nil, err
	}
	path, err := exec.LookPath(b.binary)
	if err != nil {
		return nil, fmt.Errorf("%w: %w (install it: apt-get install %s)", vmm.ErrUnavailable, err, b.aptPackage())
	}
	cfg := b.config()
	cfg.ram = ramConfig{incoming: true, shared: true}
	if m.RAM == ramInFile {
		cfg.ram = ramConfig{incoming: true, file: filepath.Join(dir, SnapshotMemFile)}
	}
	r := &runDir{dir: spec.Dir}
	inst, err := b.start(ctx, path, spec, cfg, r)
	if err != nil {
		r.cleanup()
		return nil, err
	}
	if err := inst.incoming(ctx, dir, m); err != nil {
		msg := lastError(filepath.Join(spec.Dir, logFile))
		inst.Kill()
		<-inst.Done()
		r.cleanup()
		if msg != "" {
			return nil, fmt.Errorf("%w: qemu: %s", ErrBadSnapshot, msg)
		}
		return nil, err
	}
	return inst, nil
}

// readManifest reads and checks a snapshot directory's manifest and files.
func readManifest(dir string) (snapshotManifest, error) {
	var m snapshotManifest
	b, err := os.ReadFile(filepath.Join(dir, SnapshotManifestFile))
	if err != nil {
		return m, fmt.Errorf("%w: %w", ErrBadSnapshot, err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%w: decoding %s: %w", ErrBadSnapshot, SnapshotManifestFile, err)
	}
	if m.Version != snapshotVersion {
		return m, fmt.Errorf("%w: format version %d, want %d", ErrBadSnapshot, m.Version, snapshotVersion)
	}
	if m.MemoryMiB <= 0 || (m.RAM != ramInFile && m.RAM != ramInStream) {
		return m, fmt.Errorf("%w: manifest says memory %d MiB, ram %q", ErrBadSnapshot, m.MemoryMiB, m.RAM)
	}
	fi, err := os.Stat(filepath.Join(dir, SnapshotStateFile))
	if err != nil {
		return m, fmt.Errorf("%w: %w", ErrBadSnapshot, err)
	}
	if fi.Size() == 0 {
		return m, fmt.Errorf("%w: %s is empty", ErrBadSnapshot, SnapshotStateFile)
	}
	if m.RAM == ramInFile {
		fi, err := os.Stat(filepath.Join(dir, SnapshotMemFile))
		if err != nil {
			return m, fmt.Errorf("%w: %w", ErrBadSnapshot, err)
		}
		if fi.Size() != int64(m.MemoryMiB)<<20 {
			return m, fmt.Errorf("%w: %s is %d bytes, want %d", ErrBadSnapshot, SnapshotMemFile, fi.Size(), int64(m.MemoryMiB)<<20)
		}
	}
	return m, nil
}

// incoming loads the snapshot's migration stream into a QEMU started with
// -incoming defer and waits until the guest runs. QEMU exits when the
// stream does not fit the machine.
func (i *Instance) incoming(ctx context.Context, dir string, m snapshotManifest) error {
	if err := i.setMigration(ctx, m.RAM == ramInFile); err != nil {
		return err
	}
	uri := "exec:cat " + shellQuote(filepath.Join(dir, SnapshotStateFile))
	if err := i.Execute(ctx, "migrate-incoming", map[string]any{"uri": uri}, nil); err != nil {
		return fmt.Errorf("loading device state: %w", err)
	}
	for {
		st, err := i.Status(ctx)
		if err != nil {
			select {
			case <-i.procExited:
				return fmt.Errorf("%w: qemu exited while loading it", ErrBadSnapshot)
			default:
				return err
			}
		}
		switch st {
		case "running":
			return nil
		case "paused":
			// The snapshot was taken of a paused guest, and QEMU keeps the
			// source's run state: resume once the load has completed.
			var mig struct {
				Status string `json:"status"`
			}
			if err := i.Execute(ctx, "query-migrate", nil, &mig); err != nil {
				return err
			}
			if mig.Status == "completed" {
				return i.Resume(ctx)
			}
		case "inmigrate", "prelaunch", "restore-vm", "finish-migrate":
		default:
			return fmt.Errorf("%w: guest is %s after loading it", ErrBadSnapshot, st)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-i.procExited:
			return fmt.Errorf("%w: qemu exited while loading it", ErrBadSnapshot)
		case <-time.After(pollInterval):
		}
	}
}
