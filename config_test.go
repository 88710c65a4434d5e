package smolvm

import (
	"errors"
	"strings"
	"testing"
)

func TestConfigDefaults(t *testing.T) {
	c, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(c.Name, "vm-") || len(c.Name) != 11 || !ValidName(c.Name) {
		t.Errorf("generated name %q", c.Name)
	}
	if c.VCPUs != DefaultVCPUs || c.MemoryMiB != DefaultMemoryMiB || c.DiskMode != DiskIsolated || c.Image != DefaultImage {
		t.Errorf("defaults: %+v", c)
	}
	if c2, _ := (Config{Rootfs: "/r.ext4"}).withDefaults(); c2.Image != "" {
		t.Errorf("image default applied beside a rootfs: %q", c2.Image)
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"one char name", Config{Name: "a"}, true},
		{"64 chars", Config{Name: "a" + strings.Repeat("b", 62) + "c"}, true},
		{"65 chars", Config{Name: "a" + strings.Repeat("b", 63) + "c"}, false},
		{"upper case", Config{Name: "Abc"}, false},
		{"ends with dash", Config{Name: "abc-"}, false},
		{"starts with underscore", Config{Name: "_abc"}, false},
		{"inner dash and underscore", Config{Name: "a-b_c"}, true},
		{"memory at minimum", Config{MemoryMiB: MinMemoryMiB}, true},
		{"memory below minimum", Config{MemoryMiB: MinMemoryMiB - 1}, false},
		{"negative cpus", Config{VCPUs: -1}, false},
		{"too many cpus", Config{VCPUs: MaxVCPUs + 1}, false},
		{"unknown disk mode", Config{DiskMode: "cow"}, false},
		{"shared with disk size", Config{DiskMode: DiskShared, DiskSizeMiB: 100}, false},
		{"negative disk size", Config{DiskSizeMiB: -1}, false},
		{"env key with dash", Config{Env: map[string]string{"A-B": "x"}}, false},
		{"env value with newline and quotes", Config{Env: map[string]string{"A_B": "x\n'\"$"}}, true},
		{"boot args with newline", Config{BootArgs: "a\nb"}, false},
		{"jailer, backend chosen later", Config{Jailer: &Jailer{UID: 1000, GID: 1000}}, true},
		{"jailer with firecracker", Config{Backend: "firecracker", Jailer: &Jailer{}}, true},
		{"jailer with qemu", Config{Backend: "qemu", Jailer: &Jailer{}}, false},
		{"jailer negative uid", Config{Jailer: &Jailer{UID: -1}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cfg.withDefaults()
			if (err == nil) != tt.ok {
				t.Fatalf("got %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is not ErrInvalid", err)
			}
		})
	}
}

func TestEnvListSorted(t *testing.T) {
	got := strings.Join(envList(map[string]string{"B": "2", "A": "1", "C": "x=y"}), " ")
	if got != "A=1 B=2 C=x=y" {
		t.Fatalf("envList = %q", got)
	}
}
