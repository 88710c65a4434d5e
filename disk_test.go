package smolvm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smolvm/smolvm/internal/vmtest"
)

// requireTool skips without tool, or fails when the VM tier is on (CI
// installs it).
func requireTool(t *testing.T, tool, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		if vmtest.Enabled() {
			t.Fatalf("%s=1 but %s is missing: apt-get install %s", vmtest.EnvVar, tool, pkg)
		}
		t.Skipf("checks the overlay with %s, which is missing: apt-get install %s", tool, pkg)
	}
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestQcow2Overlay checks the hand-written overlay with QEMU's own tools:
// qemu-img check finds it consistent, info reads the backing file and
// size, it reads as the backing file, and a write lands in the overlay
// only.
func TestQcow2Overlay(t *testing.T) {
	requireTool(t, "qemu-img", "qemu-utils")
	requireTool(t, "qemu-io", "qemu-utils")
	tests := []struct {
		name string
		size int64
	}{
		{"one MiB", 1 << 20},
		{"just over one L2 table", 512<<20 + 4096},
		{"2 GiB", 2 << 30},
		{"not a cluster multiple", 10<<20 + 512},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			backing := filepath.Join(dir, "image, with comma.ext4")
			f, err := os.Create(backing)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt(bytes.Repeat([]byte{0x5a}, 4096), 0)
			f.WriteAt(bytes.Repeat([]byte{0xc3}, 4096), tt.size-4096)
			f.Truncate(tt.size)
			f.Close()
			overlay := filepath.Join(dir, "rootfs.qcow2")
			if err := writeQcow2Overlay(overlay, backing, tt.size); err != nil {
				t.Fatal(err)
			}
			runTool(t, "qemu-img", "check", "-f", "qcow2", overlay)
			var info struct {
				VirtualSize   int64  `json:"virtual-size"`
				Format        string `json:"format"`
				Backing       string `json:"backing-filename"`
				BackingFormat string `json:"backing-filename-format"`
			}
			if err := json.Unmarshal([]byte(runTool(t, "qemu-img", "info", "--output=json", overlay)), &info); err != nil {
				t.Fatal(err)
			}
			if info.VirtualSize != tt.size || info.Format != "qcow2" || info.Backing != backing || info.BackingFormat != "raw" {
				t.Fatalf("qemu-img info: %+v", info)
			}
			runTool(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", overlay, backing)
			// Write through the overlay: it changes, the image does not.
			runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", overlay)
			runTool(t, "qemu-img", "check", "-f", "qcow2", overlay)
			if out := runTool(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0x11 0 64k", overlay); strings.Contains(out, "Pattern verification failed") {
				t.Fatalf("overlay does not read back its write: %s", out)
			}
			if out := runTool(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0x5a 0 4k", backing); strings.Contains(out, "Pattern verification failed") {
				t.Fatalf("write through the overlay reached the image: %s", out)
			}
		})
	}
}

func TestQcow2OverlayBadInput(t *testing.T) {
	dir := t.TempDir()
	exists := filepath.Join(dir, "exists")
	os.WriteFile(exists, []byte("x"), 0o644)
	tests := []struct {
		name, path, backing string
		size                int64
		want                string
	}{
		{"relative backing", filepath.Join(dir, "a"), "image.ext4", 1 << 20, "absolute path"},
		{"zero size", filepath.Join(dir, "b"), "/x.ext4", 0, "positive multiple of 512"},
		{"odd size", filepath.Join(dir, "c"), "/x.ext4", 1000, "positive multiple of 512"},
		{"too big", filepath.Join(dir, "d"), "/x.ext4", 5 << 40, "over 4 TiB"},
		{"existing file", exists, "/x.ext4", 1 << 20, "exists"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := writeQcow2Overlay(tt.path, tt.backing, tt.size)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
			if tt.path != exists {
				if _, err := os.Stat(tt.path); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("left %s behind", tt.path)
				}
			}
		})
	}
	if b, _ := os.ReadFile(exists); string(b) != "x" {
		t.Fatalf("existing file overwritten: %q", b)
	}
}

func TestDiskWantsOverlay(t *testing.T) {
	tests := []struct {
		name         string
		backend, env string
		grow, retain bool
		firecracker  bool
		want         bool
	}{
		{"auto, no firecracker here", "", "", false, false, false, true},
		{"auto, firecracker may be chosen", "", "", false, false, true, false},
		{"qemu asked for", "qemu", "", false, false, true, true},
		{"qemu from the environment", "", "QEMU", false, false, true, true},
		{"flag beats the environment", "firecracker", "qemu", false, false, false, false},
		{"firecracker asked for", "firecracker", "", false, false, false, false},
		{"growing needs a raw copy", "qemu", "", true, false, false, false},
		{"a retained disk must stand alone", "qemu", "", false, true, false, false},
		{"unknown backend", "cloud-hypervisor", "", false, false, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := diskWantsOverlay(tt.backend, tt.env, tt.grow, tt.retain, func() bool { return tt.firecracker })
			if got != tt.want {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCheckBacking(t *testing.T) {
	dir := t.TempDir()
	image := filepath.Join(dir, "image.ext4")
	os.WriteFile(image, make([]byte, 8192), 0o644)
	fi, _ := os.Stat(image)
	b := backingOf(image, fi)
	rec := record{DiskBacking: &b}
	if err := checkBacking(rec); err != nil {
		t.Fatalf("unchanged image: %v", err)
	}
	if err := checkBacking(record{}); err != nil {
		t.Fatalf("raw disk: %v", err)
	}
	// Replaced by a rebuild: same size, new file.
	os.WriteFile(image+".new", make([]byte, 8192), 0o644)
	os.Chtimes(image+".new", fi.ModTime(), fi.ModTime())
	os.Rename(image+".new", image)
	if err := checkBacking(rec); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "changed") {
		t.Fatalf("replaced image: err = %v, want ErrState saying it changed", err)
	}
	os.Remove(image)
	if err := checkBacking(rec); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "gone") {
		t.Fatalf("removed image: err = %v, want ErrState saying it is gone", err)
	}
}

// TestMakeIsolatedDisk checks both paths on real files: the overlay keeps
// the image's size and points at it; a grown disk is a raw copy.
func TestMakeIsolatedDisk(t *testing.T) {
	requireTool(t, "resize2fs", "e2fsprogs")
	requireTool(t, "mkfs.ext4", "e2fsprogs")
	dir := t.TempDir()
	image := filepath.Join(dir, "image.ext4")
	runTool(t, "mkfs.ext4", "-q", "-F", image, "16M")
	ctx := context.Background()

	over := filepath.Join(dir, "over")
	os.Mkdir(over, 0o755)
	rec := record{Config: Config{Backend: "qemu"}, Disk: image}
	if err := makeIsolatedDisk(ctx, over, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.DiskFormat != diskQcow2 || rec.Disk != filepath.Join(over, "rootfs.qcow2") || !rec.DiskOwned ||
		rec.DiskBacking == nil || rec.DiskBacking.Path != image || rec.DiskBacking.Size != 16<<20 {
		t.Fatalf("overlay record: %+v backing %+v", rec, rec.DiskBacking)
	}

	grown := filepath.Join(dir, "grown")
	os.Mkdir(grown, 0o755)
	rec = record{Config: Config{Backend: "qemu", DiskSizeMiB: 32}, Disk: image}
	if err := makeIsolatedDisk(ctx, grown, &rec); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(rec.Disk)
	if rec.DiskFormat != diskRaw || rec.DiskBacking != nil || err != nil || fi.Size() != 32<<20 {
		t.Fatalf("grown record: %+v, stat %v", rec, err)
	}
	runTool(t, "e2fsck", "-fn", rec.Disk)
}
