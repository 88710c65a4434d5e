package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/smolvm/smolvm/internal/sparse"

	"github.com/smolvm/smolvm/internal/vmm"
)

// Files inside a snapshot directory that Snapshot writes.
const (
	SnapshotStateFile    = "state"     // QEMU's migration stream: device state, and RAM when not saved apart
	SnapshotMemFile      = "mem"       // guest RAM as a raw, sparse file (when the RAM was a shared memfd)
	SnapshotManifestFile = "qemu.json" // snapshotManifest
)

// RAM layouts a snapshot may have.
const (
	ramInFile   = "file"   // RAM in SnapshotMemFile; a restore maps it lazily
	ramInStream = "stream" // RAM inside the migration stream; a restore reads it all
)

// snapshotManifest describes a snapshot directory to Restore.
type snapshotManifest struct {
	Version   int    `json:"version"`
	QEMU      string `json:"qemu"`
	MemoryMiB int    `json:"memory_mib"`
	RAM       string `json:"ram"` // ramInFile or ramInStream
}

const snapshotVersion = 1

// pollInterval is how often a migration's progress is asked for. QEMU
// announces the end of an incoming migration only by a state change, and
// the events of this monitor are read by logEvents, so progress is polled.
const pollInterval = 2 * time.Millisecond

var _ vmm.Snapshotter = (*Instance)(nil)

// Snapshot writes the paused guest's device state and memory into dir,
// creating it. The guest must be paused (Pause) and stays paused; disks
// are the caller's to copy, and are consistent on the host once Snapshot
// returns (QEMU has flushed them). When the guest's RAM is a shared memfd
// (every VM Launch starts) the RAM goes to SnapshotMemFile as a sparse raw
// file and the migration stream holds only device state; otherwise (a VM
// itself restored from a snapshot) the RAM is in the stream.
func (i *Instance) Snapshot(ctx context.Context, dir string) error {
	if err := i.snapshot(ctx, dir); err != nil {
		return fmt.Errorf("snapshotting vm %s: %w", i.id, err)
	}
	return nil
}

func (i *Instance) snapshot(ctx context.Context, dir string) error {
	st, err := i.Status(ctx)
	if err != nil {
		return err
	}
	if st != "paused" {
		return fmt.Errorf("the guest is %s: pause it first", st)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var mem struct {
		Base int64 `json:"base-memory"`
	}
	if err := i.Execute(ctx, "query-memory-size-summary", nil, &mem); err != nil {
		return err
	}
	shared := i.ramShared(ctx)
	if err := i.setMigration(ctx, shared); err != nil {
		return err
	}
	state := filepath.Join(dir, SnapshotStateFile)
	if err := i.Execute(ctx, "migrate", map[string]any{"uri": "exec:cat > " + shellQuote(state)}, nil); err != nil {
		return fmt.Errorf("starting migration to %s: %w", state, err)
	}
	if err := i.waitMigration(ctx); err != nil {
		return fmt.Errorf("saving device state to %s: %w", state, err)
	}
	m := snapshotManifest{Version: snapshotVersion, QEMU: i.Version(), MemoryMiB: int(mem.Base >> 20), RAM: ramInStream}
	if shared {
		if err := i.saveRAM(ctx, filepath.Join(dir, SnapshotMemFile), mem.Base); err != nil {
			return fmt.Errorf("saving guest memory: %w", err)
		}
		m.RAM = ramInFile
	}
	return writeManifest(filepath.Join(dir, SnapshotManifestFile), m)
}

// ramShared says whether guest RAM is the shared memfd backend.
func (i *Instance) ramShared(ctx context.Context) bool {
	var share bool
	err := i.Execute(ctx, "qom-get", map[string]any{"path": "/objects/" + ramObjectID, "property": "share"}, &share)
	return err == nil && share
}

// setMigration sets the migration capabilities and parameters a snapshot
// (or its restore) needs: RAM in a shared backend left out of the stream
// when ignoreShared, and no bandwidth cap (the default is 128 MiB/s).
func (i *Instance) setMigration(ctx context.Context, ignoreShared bool) error {
	caps := []map[string]any{{"capability": "x-ignore-shared", "state": ignoreShared}}
	if err := i.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}, nil); err != nil {
		return fmt.Errorf("setting migration capabilities: %w", err)
	}
	if err := i.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil); err != nil {
		return fmt.Errorf("setting migration parameters: %w", err)
	}
	return nil
}

// waitMigration polls an outgoing migration until it ends.
func (i *Instance) waitMigration(ctx context.Context) error {
	for {
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := i.Execute(ctx, "query-migrate", nil, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			if st.ErrorDesc == "" {
				st.ErrorDesc = "migration " + st.Status
			}
			return errors.New(st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			i.Execute(context.WithoutCancel(ctx), "migrate_cancel", nil, nil)
			return ctx.Err()
		case <-i.done:
			return errors.New("qemu exited")
		case <-time.After(pollInterval):
		}
	}
}

// saveRAM copies guest RAM (size bytes) from QEMU's memfd to path as a
// sparse file: pages never touched, or all zero, become holes.
func (i *Instance) saveRAM(ctx context.Context, path string, size int64) (err error) {
	src, err := i.openRAM(size)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := dst.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	if err := sparse.Copy(ctx, dst, src, size); err != nil {
		return err
	}
	return dst.Sync()
}

// openRAM opens QEMU's guest RAM memfd through /proc/PID/fd.
func (i *Instance) openRAM(size int64) (*os.File, error) {
	fdDir := "/proc/" + strconv.Itoa(i.pid) + "/fd"
	ents, err := os.ReadDir(fdDir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil || !strings.HasPrefix(link, "/memfd:memory-backend-memfd") {
			continue
		}
		f, err := os.Open(filepath.Join(fdDir, e.Name()))
		if err != nil {
			return nil, err
		}
		if fi, err := f.Stat(); err == nil && fi.Size() == size {
			return f, nil
		}
		f.Close()
	}
	return nil, fmt.Errorf("no guest memory memfd of %d bytes among qemu's open files", size)
}

func writeManifest(path string, m snapshotManifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// shellQuote quotes s for /bin/sh, which runs QEMU's exec: migrations.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
