package image

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestKconfigParseLine(t *testing.T) {
	tests := []struct {
		line    string
		want    kconfigOption
		ok      bool
		wantErr bool
	}{
		{"CONFIG_VIRTIO_MMIO=y", kconfigOption{"VIRTIO_MMIO", "y"}, true, false},
		{"  CONFIG_NR_CPUS=64  ", kconfigOption{"NR_CPUS", "64"}, true, false},
		{`CONFIG_LOCALVERSION="-smolvm"`, kconfigOption{"LOCALVERSION", `"-smolvm"`}, true, false},
		{"# CONFIG_MODULES is not set", kconfigOption{"MODULES", "n"}, true, false},
		{"# CONFIG_ a comment that looks like one", kconfigOption{}, false, false},
		{"# --- Base ---", kconfigOption{}, false, false},
		{"", kconfigOption{}, false, false},
		{"VIRTIO_MMIO=y", kconfigOption{}, false, true},
		{"CONFIG_VIRTIO_MMIO", kconfigOption{}, false, true},
		{"CONFIG_VIRTIO_MMIO=", kconfigOption{}, false, true},
		{"CONFIG_BAD-NAME=y", kconfigOption{}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			got, ok, err := kconfigParseLine(tt.line)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want || ok != tt.ok {
				t.Fatalf("got %+v ok=%v, want %+v ok=%v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestKconfigParse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string // String() of each option
		wantErr string
	}{
		{"options and comments", "# head\nCONFIG_A=y\n\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\n",
			[]string{"CONFIG_A=y", "# CONFIG_B is not set", `CONFIG_C="x y"`}, ""},
		{"same value twice is kept once", "CONFIG_A=y\nCONFIG_A=y\n", []string{"CONFIG_A=y"}, ""},
		{"conflicting values", "CONFIG_A=y\n# CONFIG_A is not set\n", nil, "line 2: CONFIG_A set twice (y, then n)"},
		{"junk line", "CONFIG_A=y\nhello\n", nil, "line 2:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, err := kconfigParse(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, o := range opts {
				got = append(got, o.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestKconfigUnmet(t *testing.T) {
	parse := func(s string) []kconfigOption {
		o, err := kconfigParse(strings.NewReader(s))
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	tests := []struct {
		name        string
		want, final string
		unmet       []string
	}{
		{"all met", "CONFIG_A=y\n# CONFIG_B is not set\n", "CONFIG_A=y\nCONFIG_X=y\n", nil},
		{"dropped by kconfig", "CONFIG_A=y\nCONFIG_9P_FS=y\n", "CONFIG_A=y\n",
			[]string{"CONFIG_9P_FS=y (got # CONFIG_9P_FS is not set)"}},
		{"forced on", "# CONFIG_PCI is not set\n", "CONFIG_PCI=y\n",
			[]string{"# CONFIG_PCI is not set (got CONFIG_PCI=y)"}},
		{"module instead of built in", "CONFIG_EXT4_FS=y\n", "CONFIG_EXT4_FS=m\n",
			[]string{"CONFIG_EXT4_FS=y (got CONFIG_EXT4_FS=m)"}},
		{"explicitly unset counts as unset", "# CONFIG_B is not set\n", "# CONFIG_B is not set\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := kconfigUnmet(parse(tt.want), parse(tt.final))
			if !slices.Equal(got, tt.unmet) {
				t.Fatalf("got %q, want %q", got, tt.unmet)
			}
		})
	}
}

func TestKconfigHash(t *testing.T) {
	h := func(s string) string {
		o, err := kconfigParse(strings.NewReader(s))
		if err != nil {
			t.Fatal(err)
		}
		return kconfigHash(o)
	}
	base := h("CONFIG_A=y\nCONFIG_B=y\n")
	if got := h("# comment\nCONFIG_B=y\n\nCONFIG_A=y\n"); got != base {
		t.Errorf("order and comments changed the hash: %s vs %s", got, base)
	}
	if got := h("CONFIG_A=y\nCONFIG_B=m\n"); got == base {
		t.Errorf("a changed value kept the hash %s", got)
	}
	if len(base) != 12 {
		t.Errorf("hash %q is not 12 hex digits", base)
	}
}

// TestKconfigFragment checks the shipped fragment: it parses, turns
// modules off, and asks for every driver the guest boots with.
func TestKconfigFragment(t *testing.T) {
	frag, err := kconfigFragment("amd64")
	if err != nil {
		t.Fatal(err)
	}
	opts, err := kconfigParse(strings.NewReader(string(frag)))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, o := range opts {
		got[o.Name] = o.Value
	}
	for name, want := range map[string]string{
		"MODULES": "n", "VIRTIO_MMIO": "y", "VIRTIO_MMIO_CMDLINE_DEVICES": "y", "VIRTIO_BLK": "y",
		"VIRTIO_CONSOLE": "y", "VIRTIO_NET": "y", "HW_RANDOM_VIRTIO": "y", "VIRTIO_VSOCKETS": "y",
		"EXT4_FS": "y", "OVERLAY_FS": "y", "TMPFS": "y", "DEVTMPFS": "y", "PVH": "y", "ACPI": "y",
		"SERIAL_8250_CONSOLE": "y", "UNIX": "y", "INET": "y", "CGROUPS": "y", "NAMESPACES": "y",
	} {
		if got[name] != want {
			t.Errorf("fragment has CONFIG_%s=%q, want %q", name, got[name], want)
		}
	}
	if _, err := kconfigFragment("riscv64"); err == nil || !strings.Contains(err.Error(), "have: amd64") {
		t.Errorf("riscv64: err = %v, want one naming the supported architectures", err)
	}
}

func TestKernelBuildMissing(t *testing.T) {
	have := func(present ...string) (func(string) (string, error), func(string) error) {
		ok := func(n string) bool { return slices.Contains(present, n) }
		return func(n string) (string, error) {
				if ok(n) {
					return "/usr/bin/" + n, nil
				}
				return "", exec.ErrNotFound
			}, func(p string) error {
				if ok(p) {
					return nil
				}
				return os.ErrNotExist
			}
	}
	all := []string{"make", "gcc", "flex", "bison", "bc", "/usr/include/gelf.h", "/usr/include/openssl/ssl.h", "apt-get", "dpkg-deb", "xz"}
	tests := []struct {
		name    string
		present []string
		want    []string
	}{
		{"everything", all, nil},
		{"fresh host", []string{"apt-get", "dpkg-deb", "xz"}, []string{"build-essential", "flex", "bison", "bc", "libelf-dev", "libssl-dev"}},
		{"gcc only missing", slices.DeleteFunc(slices.Clone(all), func(s string) bool { return s == "gcc" }), []string{"build-essential"}},
		{"headers missing", all[:5], []string{"libelf-dev", "libssl-dev", "apt", "dpkg", "xz-utils"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			look, stat := have(tt.present...)
			if got := kernelBuildMissing(look, stat); !slices.Equal(got, tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestKernelParseSource(t *testing.T) {
	depends := "linux-source\n  Depends: linux-source-6.1\n"
	if got := kernelParseSourceDepends(depends); got != "linux-source-6.1" {
		t.Errorf("depends: got %q", got)
	}
	if got := kernelParseSourceDepends("linux-source\n  Depends: <linux-source-virtual>\n"); got != "" {
		t.Errorf("virtual package: got %q, want none", got)
	}
	show := "Package: linux-source-6.1\nVersion: 6.1.192-3\nSize: 139330232\n"
	if got := kernelParseField(show, "Version"); got != "6.1.192-3" {
		t.Errorf("version: got %q", got)
	}
}

func TestKernelBuildCompiles(t *testing.T) {
	tests := map[string]bool{
		"  CC      kernel/fork.o":                  true,
		"  AS      arch/x86/entry/entry_64.o":      true,
		"  HOSTCC  scripts/basic/fixdep":           true,
		"  LD      vmlinux.o":                      false,
		"make[1]: Entering directory '/tmp/x/out'": false,
		"  CC": false,
		"arch/x86/kernel/cpu/bugs.c:123: warning: x": false,
	}
	for line, want := range tests {
		if got := kernelBuildCompiles(line); got != want {
			t.Errorf("%q: got %v, want %v", line, got, want)
		}
	}
}

// TestFindKernelPrefersBuilt checks the built kernel's place in FindKernel's
// order: before the host's kernels, after an explicit path; the newest
// build wins and an entry without its bzImage is skipped.
func TestFindKernelPrefersBuilt(t *testing.T) {
	const v57 = "6.1.0-57-cloud-amd64"
	tr := kernelTestTree{root: t.TempDir(), rel: v57}
	tr.add(t, "boot/vmlinuz-"+v57, "lib/modules/"+v57, "k/"+v57+".bin")
	addBuilt := func(name, release string, built time.Time, files ...string) {
		dir := tr.path("cache/" + name)
		meta, _ := json.Marshal(BuiltKernel{Release: release, Built: built})
		kernelTestWrite(t, filepath.Join(dir, "kernel.json"), meta)
		for _, f := range files {
			kernelTestWrite(t, filepath.Join(dir, f), kernelTestBzImage(release))
		}
	}
	now := time.Now()
	addBuilt("smolvm-6.1.190-1-aaaaaaaaaaaa", "6.1.190-smolvm", now.Add(-time.Hour), "bzImage", "vmlinux")
	addBuilt("smolvm-6.1.192-3-bbbbbbbbbbbb", "6.1.192-smolvm", now, "bzImage", "vmlinux")
	addBuilt("smolvm-6.1.199-1-cccccccccccc", "6.1.199-smolvm", now.Add(time.Hour), "vmlinux") // no bzImage: unfinished
	cache := tr.path("cache")

	got, err := kernelFind(context.Background(), KernelOptions{CacheDir: cache}, tr.host())
	if err != nil {
		t.Fatal(err)
	}
	want := Kernel{Path: filepath.Join(cache, "smolvm-6.1.192-3-bbbbbbbbbbbb", "vmlinux"), Version: "6.1.192-smolvm", Source: "built"}
	if got != want {
		t.Fatalf("automatic: got %+v, want %+v", got, want)
	}
	// Without its vmlinux an entry boots its bzImage.
	os.Remove(filepath.Join(cache, "smolvm-6.1.192-3-bbbbbbbbbbbb", "vmlinux"))
	if got, err := kernelNewestBuilt(cache); err != nil || got.Path != filepath.Join(cache, "smolvm-6.1.192-3-bbbbbbbbbbbb", "bzImage") {
		t.Fatalf("no vmlinux: got %+v, %v; want the bzImage", got, err)
	}
	got, err = kernelFind(context.Background(), KernelOptions{CacheDir: cache, Path: tr.path("k/" + v57 + ".bin")}, tr.host())
	if err != nil || got.Source != "flag" {
		t.Fatalf("explicit path: got %+v, %v; want the flag's kernel", got, err)
	}
	if _, err := kernelNewestBuilt(t.TempDir()); err == nil || !strings.Contains(err.Error(), "smolvm kernel build") {
		t.Fatalf("empty cache: err = %v, want a hint to build one", err)
	}
	if ks, err := ListBuiltKernels(filepath.Join(t.TempDir(), "missing")); err != nil || len(ks) != 0 {
		t.Fatalf("missing cache dir: %v, %v", ks, err)
	}
}
