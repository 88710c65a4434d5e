package smolvm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smolvm/smolvm/internal/image"
	"github.com/smolvm/smolvm/internal/vmtest"
)

// TestKernelBuildBoots builds smolvm's kernel (or finds it built) and boots
// the tiny image with it, chosen automatically: the guest runs the built
// release, loads no modules, and has the drivers the fragment asks for.
// Its data dir is its own, so the other VM tests keep the distribution's
// kernel.
func TestKernelBuildBoots(t *testing.T) {
	if os.Getenv("SMOLVM_KERNEL_BUILD") != "1" {
		t.Skip("builds a kernel from source, about 11 minutes on 2 cores, too long for every CI run: set SMOLVM_VM_TESTS=1 and SMOLVM_KERNEL_BUILD=1")
	}
	vmtest.Require(t, "make", "gcc", "flex", "bison", "bc")
	if missing := image.KernelBuildMissing(); len(missing) > 0 {
		t.Fatalf("SMOLVM_KERNEL_BUILD=1 but the build needs: apt-get install %s", strings.Join(missing, " "))
	}
	dataDir := filepath.Join(os.TempDir(), "smolvm-test-kernel")
	opts := []Option{WithDataDir(dataDir), WithExecutable(vmtest.Binary(t))}
	ctx := context.Background()
	k, err := BuildKernel(ctx, KernelBuildOptions{}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if k.Source != "built" || !strings.HasSuffix(k.Release, "-smolvm") || k.ModulesDir != "" {
		t.Fatalf("built kernel: %+v", k)
	}
	for _, f := range []string{k.Path, k.Vmlinux, filepath.Join(filepath.Dir(k.Path), "config")} {
		if fi, err := os.Stat(f); err != nil || fi.Size() == 0 {
			t.Fatalf("%s: %v", f, err)
		}
	}
	if again, err := BuildKernel(ctx, KernelBuildOptions{}, opts...); err != nil || !again.Cached || again.Path != k.Path {
		t.Fatalf("second build: %+v, %v; want the cached kernel", again, err)
	}

	vm, err := New(ctx, Config{Image: "tiny"}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	defer vm.Delete(context.Background())
	if info, _ := vm.Info(ctx); info.Kernel != k.Path {
		t.Fatalf("new vm boots %s, want the built kernel %s by default", info.Kernel, k.Path)
	}
	if err := vm.Start(ctx); err != nil {
		logs, _ := os.ReadFile(filepath.Join(dataDir, "vms", vm.ID(), "console.log"))
		t.Fatalf("%v\nconsole:\n%s", err, logs)
	}
	res, err := vm.Run(ctx, Shell(`uname -r; cat /proc/modules 2>/dev/null | wc -l; grep -c . /proc/filesystems >/dev/null; grep -w -e overlay -e ext4 -e 9p -e virtiofs /proc/filesystems | wc -l; ls /sys/bus/virtio/drivers`), RunOptions{})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("run: %+v, %v", res, err)
	}
	lines := strings.Split(strings.TrimSpace(string(res.Stdout)), "\n")
	if len(lines) < 3 || lines[0] != k.Release || lines[1] != "0" || lines[2] != "4" {
		t.Fatalf("guest says %q; want release %s, no modules, overlay+ext4+9p+virtiofs", lines, k.Release)
	}
	drivers := strings.Join(lines[3:], " ")
	for _, d := range []string{"virtio_blk", "virtio_console", "virtio_net", "virtio_rng", "vmw_vsock_virtio_transport"} {
		if !strings.Contains(drivers, d) {
			t.Errorf("guest has no %s driver (has: %s)", d, drivers)
		}
	}
}
