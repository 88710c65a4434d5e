package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/supervisor"
	"github.com/smolvm/smolvm/internal/vmtest"
)

// runOut runs a shell script in vm and returns its trimmed stdout,
// failing the test on a nonzero exit.
func runOut(t *testing.T, vm *VM, script string) string {
	t.Helper()
	res, err := vm.Run(context.Background(), Shell(script), RunOptions{Timeout: time.Minute})
	if err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("%s: exit %d: %s", script, res.ExitCode, res.Stderr)
	}
	return strings.TrimSpace(string(res.Stdout))
}

// testSnapshot snapshots vm under a unique name, removed when the test
// ends (after the clones, which t.Cleanup deletes first).
func testSnapshot(t *testing.T, vm *VM) SnapshotInfo {
	t.Helper()
	name := "t-" + strings.TrimPrefix(newID(), "vm-")
	info, err := vm.Snapshot(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := RemoveSnapshot(context.Background(), name, testOpts(t)...); err != nil {
			t.Errorf("removing snapshot: %v", err)
		}
	})
	return info
}

// cloneOf starts a clone of the snapshot, deleted when the test ends.
func cloneOf(t *testing.T, snapshot, name string) *VM {
	t.Helper()
	vm, err := NewFromSnapshot(context.Background(), snapshot, name, testOpts(t)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := vm.Delete(context.Background()); err != nil && !errors.Is(err, ErrNotFound) {
			t.Errorf("cleanup: %v", err)
		}
		vm.Close()
	})
	return vm
}

func TestPauseStopsTheGuest(t *testing.T) {
	vm := bootTiny(t, Config{Net: NetNone})
	ctx := context.Background()
	runOut(t, vm, "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/c; sleep 0.05; done' </dev/null >/dev/null 2>&1 &"+
		" while [ ! -e /tmp/c ]; do sleep 0.05; done")
	counter := func() int {
		n, err := strconv.Atoi(runOut(t, vm, "cat /tmp/c"))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// The loop runs: the counter moves between two reads half a second apart.
	c0 := counter()
	time.Sleep(500 * time.Millisecond)
	c1 := counter()
	if c1 <= c0 {
		t.Fatalf("counter did not advance while running: %d then %d", c0, c1)
	}
	if err := vm.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Run(ctx, []string{"true"}, RunOptions{}); !errors.Is(err, ErrState) {
		t.Errorf("Run on a paused vm = %v, want ErrState", err)
	}
	if err := vm.Pause(ctx); !errors.Is(err, ErrState) {
		t.Errorf("second Pause = %v, want ErrState", err)
	}
	const paused = 3 * time.Second // 60 iterations of the loop, were it running
	time.Sleep(paused)
	if err := vm.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	c2 := counter()
	// Between c1 and c2 the guest ran only for two exec round trips and
	// the pause's edges, never for the paused seconds.
	if moved, whilePaused := c2-c1, int(paused/(50*time.Millisecond)); moved >= whilePaused/2 {
		t.Errorf("counter moved %d (from %d to %d) across a %v pause: the guest kept running", moved, c1, c2, paused)
	}
	if c3 := counter(); c3 < c2 {
		t.Errorf("counter went back: %d then %d", c2, c3)
	}
	if err := vm.Resume(ctx); !errors.Is(err, ErrState) {
		t.Errorf("Resume of a running vm = %v, want ErrState", err)
	}
}

func TestSnapshotClonesAreSeparate(t *testing.T) {
	// User-mode networking: each clone gets the same NIC in its own VMM.
	orig := bootTiny(t, Config{Net: NetUser})
	runOut(t, orig, "echo from-origin > /root/mark && sync")
	snap := testSnapshot(t, orig)
	// The origin goes on after its snapshot.
	if got := runOut(t, orig, "cat /root/mark; hostname"); got != "from-origin\n"+orig.ID() {
		t.Errorf("origin after snapshot: %q", got)
	}
	// Let the snapshot's clock fall behind, so a clone must correct it.
	time.Sleep(11 * time.Second)
	a := cloneOf(t, snap.Name, "")
	b := cloneOf(t, snap.Name, "")
	for _, c := range []*VM{a, b} {
		if got := runOut(t, c, "hostname; echo $HOSTNAME; cat /root/mark"); got != c.ID()+"\n"+c.ID()+"\nfrom-origin" {
			t.Errorf("clone %s: hostname, HOSTNAME and mark: %q", c.ID(), got)
		}
		guest, err := strconv.ParseInt(runOut(t, c, "date +%s"), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Now().Unix() - guest; d < -3 || d > 3 {
			t.Errorf("clone %s: guest clock %d s off the host's after a restore of an 11 s old snapshot", c.ID(), d)
		}
	}
	runOut(t, a, "echo only-a > /root/a-only && sync")
	res, err := b.Run(context.Background(), Shell("test -e /root/a-only"), RunOptions{})
	if err != nil || res.ExitCode == 0 {
		t.Errorf("a file written in clone %s is visible in clone %s (exit %d, %v)", a.ID(), b.ID(), res.ExitCode, err)
	}
	if got := runOut(t, orig, "test -e /root/a-only && echo leaked || echo absent"); got != "absent" {
		t.Errorf("origin sees the clone's file: %q", got)
	}
	seedA, seedB := runOut(t, a, "head -c 16 /dev/urandom | od -An -tx1"), runOut(t, b, "head -c 16 /dev/urandom | od -An -tx1")
	if seedA == seedB {
		t.Errorf("clones drew the same random bytes %s", seedA)
	}
	// A snapshot with clones on it cannot go.
	if err := RemoveSnapshot(context.Background(), snap.Name, testOpts(t)...); !errors.Is(err, ErrState) {
		t.Errorf("RemoveSnapshot with clones = %v, want ErrState", err)
	}
}

func TestSnapshotOfStoppedVMFails(t *testing.T) {
	ctx := context.Background()
	vm, err := New(ctx, Config{Image: "tiny"}, testOpts(t)...)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	defer vm.Delete(ctx)
	name := "t-stopped-" + strings.TrimPrefix(newID(), "vm-")
	_, err = vm.Snapshot(ctx, name)
	if !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "created") {
		t.Fatalf("Snapshot of a created vm = %v, want ErrState saying it is created", err)
	}
	assertNoSnapshot(t, name)
}

func assertNoSnapshot(t *testing.T, name string) {
	t.Helper()
	list, err := Snapshots(context.Background(), testOpts(t)...)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list {
		if s.Name == name {
			t.Errorf("snapshot %s has a row", name)
		}
	}
	if _, err := os.Stat(filepath.Join(vmtest.DataDir(t), "snapshots", name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("snapshot directory %s exists (%v)", name, err)
	}
}

func TestRestoreOfBadSnapshotLeavesNothing(t *testing.T) {
	orig := bootTiny(t, Config{Net: NetNone})
	tests := []struct {
		name    string
		damage  func(dir string) error
		wantErr error
		wantMsg string
	}{
		{"missing", nil, ErrNotFound, "not found"},
		{"garbage device state", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, "vmm", "state"), []byte(strings.Repeat("not a migration stream\n", 64)), 0o644)
		}, nil, "bad snapshot"},
		{"memory file gone", func(dir string) error { return os.Remove(filepath.Join(dir, "vmm", "mem")) }, nil, "bad snapshot"},
		{"disk gone", func(dir string) error { return os.Remove(filepath.Join(dir, "disk.qcow2")) }, nil, "incomplete"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			source := "no-such-snapshot"
			if tt.damage != nil {
				// Damage a copy: a second snapshot of the same origin.
				bad := testSnapshot(t, orig)
				if err := tt.damage(bad.Dir); err != nil {
					t.Fatal(err)
				}
				source = bad.Name
			}
			id := "t-clone-" + strings.TrimPrefix(newID(), "vm-")
			vm, err := NewFromSnapshot(context.Background(), source, id, testOpts(t)...)
			if err == nil {
				vm.Delete(context.Background())
				t.Fatal("NewFromSnapshot succeeded")
			}
			if (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("NewFromSnapshot = %v, want %v / %q", err, tt.wantErr, tt.wantMsg)
			}
			if _, err := Open(context.Background(), id, testOpts(t)...); !errors.Is(err, ErrNotFound) {
				t.Errorf("a row for %s is left: %v", id, err)
			}
			if _, err := os.Stat(filepath.Join(vmtest.DataDir(t), "vms", id)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("directory of %s is left (%v)", id, err)
			}
			if pids := processesNaming(id); len(pids) > 0 {
				t.Errorf("processes %v still name %s", pids, id)
			}
		})
	}
}

// processesNaming lists pids whose command line mentions s.
func processesNaming(s string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil && strings.Contains(string(b), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestSnapshotOnFullDiskLeavesNothing: a snapshot that runs out of space,
// while keeping the boot files or while saving the guest's memory, fails
// saying so, leaves no directory or row, and the VM runs on.
func TestSnapshotOnFullDiskLeavesNothing(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("mounting a small file system over the snapshot directory needs root")
	}
	vm := bootTiny(t, Config{Net: NetNone, MemoryMiB: 128})
	ctx := context.Background()
	r, err := vm.h.get(ctx, vm.ID())
	if err != nil {
		t.Fatal(err)
	}
	var plan supervisor.Plan
	if err := json.Unmarshal(r.Spec, &plan); err != nil {
		t.Fatal(err)
	}
	initrd, err := os.Stat(plan.VMM.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	snaps := filepath.Join(vmtest.DataDir(t), "snapshots")
	if err := os.MkdirAll(snaps, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		size    int64
		failsAt string
	}{
		{"keeping the boot files", 4 << 20, "keeping the initramfs"},
		{"saving the memory", initrd.Size() + 2<<20, "snapshot"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := syscall.Mount("tmpfs", snaps, "tmpfs", 0, fmt.Sprintf("size=%d", tt.size)); err != nil {
				t.Fatal(err)
			}
			defer syscall.Unmount(snaps, 0)
			name := "t-full-" + strings.TrimPrefix(newID(), "vm-")
			_, err := vm.Snapshot(ctx, name)
			if err == nil || !strings.Contains(err.Error(), "no space left") || !strings.Contains(err.Error(), tt.failsAt) {
				t.Fatalf("Snapshot on a full disk = %v, want one saying there is no space left, at %q", err, tt.failsAt)
			}
			t.Logf("the error: %v", err)
			assertNoSnapshot(t, name)
			if out := runOut(t, vm, "echo still here"); out != "still here" {
				t.Fatalf("after the failed snapshot: %q", out)
			}
			if info, err := vm.Info(ctx); err != nil || info.Status != StatusRunning {
				t.Fatalf("after the failed snapshot the vm is %v (%v)", info.Status, err)
			}
		})
	}
}
