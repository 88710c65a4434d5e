package agent

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestUserProcesses(t *testing.T) {
	// testdata/proc holds init (not counted), a kernel thread, a zombie, and
	// two live processes, one with ") Z" inside its command name.
	if n := userProcesses("testdata/proc"); n != 2 {
		t.Errorf("userProcesses = %d, want 2", n)
	}
	if n := userProcesses("testdata/nonexistent"); n != 0 {
		t.Errorf("userProcesses of a missing dir = %d, want 0", n)
	}
}

func TestModuleParams(t *testing.T) {
	const cmdline = "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 virtio-mmio.device=512@0xfeb00c00:11 " +
		"virtio_mmio.force_legacy=1 virtio_mmio virtio_mmio. overlay.redirect_dir=on smolvm.root=/dev/vda"
	tests := []struct{ name, want string }{
		{"virtio_mmio", "device=512@0xfeb00e00:12 device=512@0xfeb00c00:11 force_legacy=1"},
		{"overlay", "redirect_dir=on"},
		{"virtio_blk", ""},
	}
	for _, tt := range tests {
		if got := moduleParams(cmdline, tt.name); got != tt.want {
			t.Errorf("moduleParams(%s) = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"/lib/modules/virtio-rng.ko": "virtio_rng",
		"/lib/modules/overlay.ko":    "overlay",
		"vmw_vsock_virtio_transport": "vmw_vsock_virtio_transport",
	} {
		if got := moduleName(in); got != want {
			t.Errorf("moduleName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMountString(t *testing.T) {
	tests := []struct {
		m    Mount
		want string
	}{
		{Mount{Source: "proc", Target: "/proc", FSType: "proc", Flags: mntSecure}, "proc on /proc type proc (nosuid,nodev,noexec)"},
		{Mount{Source: "/dev/vda", Target: "/newroot", FSType: "ext4"}, "/dev/vda on /newroot type ext4"},
		{Mount{Source: "/dev/vda", Target: "/lower", FSType: "ext4", Flags: unix.MS_RDONLY, Data: "noload"}, "/dev/vda on /lower type ext4 (ro,noload)"},
	}
	for _, tt := range tests {
		if got := tt.m.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

func TestMountTables(t *testing.T) {
	// Every root mount has a target under / and mounts in order: a parent
	// before anything inside it.
	seen := map[string]bool{"/": true}
	for _, m := range rootMounts() {
		if !filepath.IsAbs(m.Target) {
			t.Errorf("%s: target not absolute", m)
		}
		for p := filepath.Dir(m.Target); p != "/"; p = filepath.Dir(p) {
			if inTable(p) && !seen[p] {
				t.Errorf("%s comes before the mount of its parent %s", m, p)
			}
		}
		seen[m.Target] = true
	}
	for _, d := range movedMounts {
		if !seen[d] {
			t.Errorf("moved mount %s is not in the root table (a root that lacks it could not get it back)", d)
		}
	}
}

func inTable(p string) bool {
	for _, m := range rootMounts() {
		if m.Target == p {
			return true
		}
	}
	return false
}

func TestVirtioDiscovery(t *testing.T) {
	sys, dev := "testdata/sys", "testdata/dev"
	if !hasVirtioDevice(sys, virtioIDConsole) {
		t.Error("console device not found")
	}
	if hasVirtioDevice(sys, virtioIDVsock) {
		t.Error("vsock device found where there is none")
	}
	if got, want := findVirtioPort(sys, dev, "smolvm.agent"), "testdata/dev/vport1p2"; got != want {
		t.Errorf("findVirtioPort = %q, want %q", got, want)
	}
	if got := findVirtioPort(sys, dev, "other"); got != "" {
		t.Errorf("findVirtioPort(other) = %q, want none", got)
	}
}

func TestLookupUser(t *testing.T) {
	tests := []struct {
		spec   string
		want   string // "uid gid groups home"
		errHas string
	}{
		{"alice", "1500 1500 [1500 2000] /home/alice", ""},
		{"alice:ops", "1500 2001 [2001 2000] /home/alice", ""},
		{"1500", "1500 1500 [1500 2000] /home/alice", ""},
		{"4321", "4321 4321 [4321] /", ""},
		{"4321:2000", "4321 2000 [2000] /", ""},
		{"0", "0 0 [0] /root", ""},
		{"nobody", "65534 65534 [65534] /nonexistent", ""},
		{"mallory", "", `user "mallory" not found`},
		{"alice:nope", "", `group "nope" not found`},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			u, err := lookupUser("testdata/root", tt.spec)
			if tt.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("err = %v, want %q", err, tt.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprintf("%d %d %v %s", u.UID, u.GID, u.Groups, u.Home); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
