package smolvm

import (
	"os"
	"strings"
	"testing"
)

func TestVMSpecCmdline(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"defaults", Config{Name: "a1"},
			"smolvm.root=/dev/vda smolvm.hostname=a1 quiet cryptomgr.notests init_on_alloc=0"},
		{"shared disk is read-only under an overlay", Config{Name: "a1", DiskMode: DiskShared},
			"smolvm.root=/dev/vda smolvm.hostname=a1 quiet cryptomgr.notests init_on_alloc=0 smolvm.rootro=1"},
		// The user's words come last, so the kernel takes them over ours.
		{"boot args override", Config{Name: "a1", BootArgs: "cryptomgr.notests=0 loglevel=7"},
			"smolvm.root=/dev/vda smolvm.hostname=a1 quiet cryptomgr.notests init_on_alloc=0 cryptomgr.notests=0 loglevel=7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := vmSpec("/d", record{Config: tt.cfg}, "/i").Cmdline
			if got != tt.want {
				t.Errorf("cmdline = %q\nwant      %q", got, tt.want)
			}
			if !strings.HasSuffix(got, tt.cfg.BootArgs) {
				t.Errorf("boot args %q are not last in %q", tt.cfg.BootArgs, got)
			}
		})
	}
}

// TestBenchScriptKernelArgs keeps scripts/bench-foundation's second bare
// baseline booting with the parameters smolvm gives its guests.
func TestBenchScriptKernelArgs(t *testing.T) {
	b, err := os.ReadFile("scripts/bench-foundation")
	if err != nil {
		t.Fatal(err)
	}
	want := "smolvm_args='" + strings.TrimPrefix(guestKernelArgs, "quiet ") + "'"
	if !strings.Contains(string(b), want) {
		t.Errorf("scripts/bench-foundation does not set %s", want)
	}
}
