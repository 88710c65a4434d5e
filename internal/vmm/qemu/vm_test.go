package qemu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// bootBound is how long a boot may take before the test calls it a hang.
// It bounds waiting; it is not a performance assertion.
const bootBound = 60 * time.Second

func TestBootToMarkerAndPowerOff(t *testing.T) {
	env := requireVM(t)
	dir := runDirFor(t)
	b := testBackend(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), bootBound)
	defer cancel()

	inst, err := b.launch(ctx, testSpec(env, dir, "poweroff"))
	if err != nil {
		t.Fatalf("launch: %v", err)
	}
	defer inst.Kill()
	if inst.Accel() != b.Accel() {
		t.Errorf("Accel() = %q, backend says %q", inst.Accel(), b.Accel())
	}
	select {
	case <-inst.Done():
	case <-ctx.Done():
		t.Fatalf("guest did not power off within %v", bootBound)
	}
	if err := inst.Err(); err != nil {
		t.Errorf("Err() = %v, want nil after the guest powered off", err)
	}
	console, _ := os.ReadFile(filepath.Join(dir, "console.log"))
	if !strings.Contains(string(console), marker) {
		t.Errorf("console log lacks %q", marker)
	}
	for _, name := range []string{qmpSocket, agentSocket} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after exit (stat: %v)", name, err)
		}
	}
}
