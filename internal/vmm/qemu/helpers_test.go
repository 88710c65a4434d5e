package qemu

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/vmm"
)

// marker is what the test init prints once userspace runs.
const marker = "SMOLVM-TEST-MARKER"

// vmTestsEnv gates the tests and benchmarks that boot real VMs.
const vmTestsEnv = "SMOLVM_VM_TESTS"

// vmEnv is what a VM test needs from the host.
type vmEnv struct {
	kernel string
	initrd string
}

// requireVM skips unless SMOLVM_VM_TESTS=1, and then fails (not skips) when
// QEMU, a kernel or busybox is missing. It builds the test initramfs.
func requireVM(tb testing.TB) vmEnv {
	tb.Helper()
	if os.Getenv(vmTestsEnv) != "1" {
		tb.Skipf("boots real VMs under QEMU: set %s=1 to run", vmTestsEnv)
	}
	if err := New(Options{}).Check(context.Background()); err != nil {
		tb.Fatalf("%s=1 but qemu is unusable: %v", vmTestsEnv, err)
	}
	kernel := newestKernel(tb)
	version := strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-")
	initrd := filepath.Join(tb.TempDir(), "initramfs.cpio")
	if err := buildInitramfs(initrd, "/lib/modules/"+version); err != nil {
		tb.Fatalf("building test initramfs: %v", err)
	}
	return vmEnv{kernel: kernel, initrd: initrd}
}

// newestKernel returns the most recently modified /boot/vmlinuz-*.
func newestKernel(tb testing.TB) string {
	tb.Helper()
	paths, _ := filepath.Glob("/boot/vmlinuz-*")
	if len(paths) == 0 {
		tb.Fatalf("%s=1 but there is no /boot/vmlinuz-* (apt-get install linux-image-cloud-amd64)", vmTestsEnv)
	}
	mtime := func(p string) time.Time {
		fi, err := os.Stat(p)
		if err != nil {
			return time.Time{}
		}
		return fi.ModTime()
	}
	sort.Slice(paths, func(i, j int) bool { return mtime(paths[i]).After(mtime(paths[j])) })
	return paths[0]
}

// buildInitramfs writes a newc cpio with static busybox, testdata/init.sh
// as /init and the virtio console modules of moddir under /m.
func buildInitramfs(out, moddir string) error {
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("reading busybox (apt-get install busybox-static): %w", err)
	}
	initScript, err := os.ReadFile("testdata/init.sh")
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	w := &cpioWriter{w: f}
	for _, d := range []string{"bin", "dev", "proc", "sys", "m"} {
		w.dir(d)
	}
	w.node("dev/console", 0o020600, 5, 1)
	w.file("bin/busybox", 0o755, busybox)
	w.file("init", 0o755, initScript)
	for _, m := range []string{"virtio/virtio_ring", "virtio/virtio", "virtio/virtio_mmio", "char/virtio_console"} {
		b, err := os.ReadFile(filepath.Join(moddir, "kernel/drivers", m+".ko"))
		if err != nil {
			return fmt.Errorf("reading module: %w", err)
		}
		w.file("m/"+filepath.Base(m)+".ko", 0o644, b)
	}
	w.trailer()
	return w.err
}

// cpioWriter writes the "newc" cpio format the kernel unpacks.
type cpioWriter struct {
	w   io.Writer
	ino int
	n   int64
	err error
}

func (c *cpioWriter) dir(name string)                      { c.entry(name, 0o040755, 0, 0, nil) }
func (c *cpioWriter) file(name string, perm int, b []byte) { c.entry(name, 0o100000|perm, 0, 0, b) }
func (c *cpioWriter) node(name string, mode, major, minor int) {
	c.entry(name, mode, major, minor, nil)
}
func (c *cpioWriter) trailer() { c.entry("TRAILER!!!", 0, 0, 0, nil) }

func (c *cpioWriter) entry(name string, mode, rmajor, rminor int, data []byte) {
	c.ino++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rmajor, rminor, len(name)+1, 0)
	c.write([]byte(hdr + name + "\x00"))
	c.pad()
	c.write(data)
	c.pad()
}

func (c *cpioWriter) pad() {
	if r := c.n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.n += int64(n)
	c.err = err
}

// runDirFor makes a short run directory (t.TempDir can pass sun_path's
// limit), removed after the test unless it failed.
func runDirFor(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "sq")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("kept run directory %s", dir)
			for _, name := range []string{"backend.log", logFile, "console.log"} {
				if b, err := os.ReadFile(filepath.Join(dir, name)); err == nil {
					tb.Logf("--- %s:\n%s", name, lastBytes(b, 4000))
				}
			}
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

func lastBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// testBackend returns a backend logging to backend.log in dir.
func testBackend(tb testing.TB, dir string) *Backend {
	tb.Helper()
	f, err := os.Create(filepath.Join(dir, "backend.log"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
	return New(Options{Logger: slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug}))})
}

// testSpec is a small VM booting the test initramfs in mode.
func testSpec(env vmEnv, dir, mode string) vmm.Spec {
	return vmm.Spec{
		ID:         filepath.Base(dir),
		Dir:        dir,
		Kernel:     env.kernel,
		Initrd:     env.initrd,
		Cmdline:    "quiet smolvmtest=" + mode,
		VCPUs:      1,
		MemoryMiB:  256,
		ConsoleLog: filepath.Join(dir, "console.log"),
	}
}

// waitConsole waits until the console log contains s, QEMU exits or ctx
// ends. It polls the file: test code, where a file watch is not worth it.
func waitConsole(ctx context.Context, inst *Instance, path, s string) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if b, _ := os.ReadFile(path); bytes.Contains(b, []byte(s)) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %q on the console: %w", s, ctx.Err())
		case <-inst.Done():
			if b, _ := os.ReadFile(path); bytes.Contains(b, []byte(s)) {
				return nil
			}
			return fmt.Errorf("qemu exited (%v) before %q appeared on the console", inst.Err(), s)
		case <-tick.C:
		}
	}
}
