package vmtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// EnvVar turns the VM tier on; the README's test command and .ci/run set it.
const EnvVar = "SMOLVM_VM_TESTS"

// Enabled reports whether VM tests should run.
func Enabled() bool { return os.Getenv(EnvVar) == "1" }

// Require skips t unless the VM tier is on, and fails it when the tier is
// on but something a VM needs is missing (CI installs all of it).
func Require(t testing.TB, tools ...string) {
	t.Helper()
	if !Enabled() {
		t.Skipf("boots real VMs: set %s=1 (the README's test command does)", EnvVar)
	}
	for _, tool := range append([]string{"qemu-system-x86_64", "mkfs.ext4"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s=1 but %s is missing: run scripts/setup", EnvVar, tool)
		}
	}
}

var build struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

// Binary builds cmd/smolvm (static, as shipped) once per test process and
// returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		dir, err := os.MkdirTemp("", "smolvm-bin")
		if err != nil {
			build.err = err
			return
		}
		build.path = filepath.Join(dir, "smolvm")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", build.path, "./cmd/smolvm")
		cmd.Dir = moduleRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		build.out, build.err = cmd.CombinedOutput()
	})
	if build.err != nil {
		t.Fatalf("building smolvm: %v\n%s", build.err, build.out)
	}
	return build.path
}

// moduleRoot is the repository root, found from this file's location.
func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// DataDir returns the data directory VM tests share within and across test
// runs ($SMOLVM_TEST_DATA_DIR, default /tmp/smolvm-test), so images and
// kernels are built once. Tests must delete the VMs they make.
func DataDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("SMOLVM_TEST_DATA_DIR")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "smolvm-test")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
