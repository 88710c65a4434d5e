package qemu

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/smolvm/smolvm/internal/sparse"
)

// echoOnce writes msg on the agent channel and wants it echoed.
func echoOnce(t *testing.T, ctx context.Context, inst *Instance, msg string) {
	t.Helper()
	conn, err := inst.DialAgent(ctx)
	if err != nil {
		t.Fatalf("dial agent: %v", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	echo(t, conn, msg)
}

func echo(t *testing.T, conn net.Conn, msg string) {
	t.Helper()
	if _, err := conn.Write([]byte(msg + "\n")); err != nil {
		t.Fatalf("write: %v", err)
	}
	got, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || got != msg+"\n" {
		t.Fatalf("echo of %q = %q, %v", msg, got, err)
	}
}

// snapshotOf boots an echo VM, snapshots it into a new directory and
// returns the running original, the snapshot directory and the env.
func snapshotOf(t *testing.T) (*Instance, context.Context, string) {
	t.Helper()
	inst, ctx, _ := bootSleeping(t, "echo")
	echoOnce(t, ctx, inst, "before")
	snap := filepath.Join(t.TempDir(), "snap")
	if err := inst.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := inst.Snapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if err := inst.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	return inst, ctx, snap
}

func TestSnapshotRestoreLazyRAM(t *testing.T) {
	orig, ctx, snap := snapshotOf(t)
	m, err := readManifest(snap)
	if err != nil {
		t.Fatal(err)
	}
	if m.RAM != ramInFile || m.MemoryMiB != 256 {
		t.Fatalf("manifest %+v, want ram in file and 256 MiB", m)
	}
	var st = new(statSize)
	st.of(t, filepath.Join(snap, SnapshotMemFile))
	if st.size != 256<<20 || st.blocks*512 >= st.size {
		t.Errorf("mem file is %d bytes with %d allocated: want 256 MiB and sparse", st.size, st.blocks*512)
	}
	// The original goes on after its snapshot.
	echoOnce(t, ctx, orig, "original resumed")

	env := requireVM(t)
	for _, name := range []string{"clone-a", "clone-b"} {
		t.Run(name, func(t *testing.T) {
			dir := runDirFor(t)
			spec := testSpec(env, dir, "echo")
			inst, err := testBackend(t, dir).Restore(ctx, spec, snap)
			if err != nil {
				t.Fatal(err)
			}
			q := inst.(*Instance)
			defer func() { q.Kill(); <-q.Done() }()
			if s, err := q.Status(ctx); err != nil || s != "running" {
				t.Fatalf("status after restore = %q, %v", s, err)
			}
			if q.ramShared(ctx) {
				t.Error("a lazily restored guest's RAM should be a private file mapping")
			}
			echoOnce(t, ctx, q, "hello from "+name)
		})
	}
}

func TestRestoreBadSnapshot(t *testing.T) {
	_, ctx, snap := snapshotOf(t)
	env := requireVM(t)
	tests := []struct {
		name    string
		corrupt func(t *testing.T, dir string)
		want    string
	}{
		{"missing dir", func(t *testing.T, dir string) { os.RemoveAll(dir) }, "no such file"},
		{"no state", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, SnapshotStateFile)) }, "no such file"},
		{"short mem", func(t *testing.T, dir string) { os.Truncate(filepath.Join(dir, SnapshotMemFile), 4096) }, "mem is 4096 bytes"},
		{"garbage state", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, SnapshotStateFile), []byte(strings.Repeat("garbage\n", 100)), 0o644)
		}, "qemu"},
		{"bad manifest", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, SnapshotManifestFile), []byte("{"), 0o644)
		}, "decoding"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := filepath.Join(t.TempDir(), "snap")
			if err := copyDir(snap, bad); err != nil {
				t.Fatal(err)
			}
			tt.corrupt(t, bad)
			dir := runDirFor(t)
			_, err := testBackend(t, dir).Restore(ctx, testSpec(env, dir, "echo"), bad)
			if err == nil || !errors.Is(err, ErrBadSnapshot) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Restore = %v, want ErrBadSnapshot mentioning %q", err, tt.want)
			}
			if left := listDir(t, dir); left != "backend.log" {
				t.Errorf("run directory holds %q after a failed restore", left)
			}
			if pids := processesMentioning(dir); len(pids) > 0 {
				t.Errorf("processes %v still mention %s", pids, dir)
			}
		})
	}
}

type statSize struct{ size, blocks int64 }

func (s *statSize) of(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	s.size = fi.Size()
	s.blocks = sysBlocks(fi)
}

func copyDir(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		in, err := os.Open(filepath.Join(src, e.Name()))
		if err != nil {
			return err
		}
		out, err := os.Create(filepath.Join(dst, e.Name()))
		if err != nil {
			in.Close()
			return err
		}
		fi, _ := in.Stat()
		err = sparse.Copy(context.Background(), out, in, fi.Size())
		in.Close()
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func sysBlocks(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks
	}
	return 0
}
