package smolvm

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/image"
	"github.com/smolvm/smolvm/internal/vmtest"
)

// TestDoctorKernelHint: doctor suggests building smolvm's kernel while
// VMs would boot another one, and says nothing more once one is built.
func TestDoctorKernelHint(t *testing.T) {
	kernelCheck := func(dataDir string) Check {
		t.Helper()
		for _, c := range Doctor(context.Background(), WithDataDir(dataDir)) {
			if c.Name == "kernel" {
				return c
			}
		}
		t.Fatal("doctor has no kernel check")
		return Check{}
	}
	dir := t.TempDir()
	c := kernelCheck(dir)
	if c.Status != "ok" {
		if vmtest.Enabled() { // scripts/setup installs one
			t.Fatalf("no guest kernel: %+v", c)
		}
		t.Skipf("no guest kernel on this host (%s): the hint goes with a found kernel", c.Detail)
	}
	if !strings.Contains(c.Fix, "smolvm kernel build") {
		t.Fatalf("with the distribution's kernel: %+v, want a hint to build smolvm's", c)
	}
	built := filepath.Join(dir, "kernels", "smolvm-6.1.192-3-bbbbbbbbbbbb")
	meta, _ := json.Marshal(image.BuiltKernel{Release: "6.1.192-smolvm", Built: time.Now()})
	for name, body := range map[string][]byte{"kernel.json": meta, "bzImage": []byte("x"), "vmlinux": []byte("x")} {
		if err := os.MkdirAll(built, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(built, name), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if c := kernelCheck(dir); c.Status != "ok" || c.Fix != "" || !strings.Contains(c.Detail, "built by smolvm") {
		t.Fatalf("with a built kernel: %+v", c)
	}
}
