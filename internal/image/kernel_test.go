package image

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// kernelTestBzImage returns the start of a bzImage whose header points at
// the version string "VERSION (builder) #1 SMP".
func kernelTestBzImage(version string) []byte {
	img := make([]byte, 0x1000)
	copy(img[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(img[0x206:], 0x20f)
	const at = 0x800
	binary.LittleEndian.PutUint16(img[0x20E:], at-0x200)
	copy(img[at:], version+" (debian-kernel@lists.debian.org) #1 SMP\x00")
	return img
}

func kernelTestWrite(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestKernelReadVersion(t *testing.T) {
	valid := kernelTestBzImage("6.1.0-57-cloud-amd64")
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(valid)) }
	tests := []struct {
		name string
		data []byte
		want string // "" = ErrNoKernelVersion
	}{
		{"debian cloud kernel", valid, "6.1.0-57-cloud-amd64"},
		{"custom build", kernelTestBzImage("6.12.3+smolvm_1"), "6.12.3+smolvm_1"},
		{"too short", valid[:0x100], ""},
		{"no HdrS magic", mutate(func(b []byte) []byte { copy(b[0x202:], "ELF!"); return b }), ""},
		{"old boot protocol", mutate(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[0x206:], 0x105); return b }), ""},
		{"no version pointer", mutate(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[0x20E:], 0); return b }), ""},
		{"pointer past the end", mutate(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[0x20E:], 0xF000); return b }), ""},
		{"garbage at the pointer", mutate(func(b []byte) []byte { copy(b[0x800:], "\x01\x02junk"); return b }), ""},
		{"path separator in release", kernelTestBzImage("6.1/../../etc"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := kernelReadVersion(bytes.NewReader(tt.data))
			if tt.want == "" {
				if !errors.Is(err, ErrNoKernelVersion) {
					t.Fatalf("got %q, %v; want ErrNoKernelVersion", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// TestKernelVersionInstalled reads the version of the real kernels in /boot
// and checks it against their file names.
func TestKernelVersionInstalled(t *testing.T) {
	paths, _ := filepath.Glob("/boot/vmlinuz-*-cloud-*")
	if len(paths) == 0 {
		if storeTestGated() {
			t.Fatal("no /boot/vmlinuz-*-cloud-* but SMOLVM_VM_TESTS=1: run `apt-get install linux-image-cloud-amd64`")
		}
		t.Skip("no /boot/vmlinuz-*-cloud-* on this host (apt-get install linux-image-cloud-amd64)")
	}
	for _, p := range paths {
		got, err := KernelVersion(p)
		if want := strings.TrimPrefix(filepath.Base(p), "vmlinuz-"); err != nil || got != want {
			t.Errorf("KernelVersion(%s) = %q, %v; want %q", p, got, err, want)
		}
	}
	if _, err := KernelVersion("/nonexistent/vmlinuz"); err == nil || !strings.Contains(err.Error(), "/nonexistent/vmlinuz") {
		t.Errorf("KernelVersion of a missing file = %v, want an error naming it", err)
	}
}

func TestKernelCompareReleases(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"6.1.0-57-cloud-amd64", "6.1.0-9-cloud-amd64", 1},
		{"6.10.0-1-cloud-amd64", "6.9.0-30-cloud-amd64", 1},
		{"6.1.0-57-cloud-amd64", "6.1.0-57-cloud-amd64", 0},
		{"5.10.0-30-cloud-amd64", "6.1.0-1-cloud-amd64", -1},
		{"6.1.0", "6.1.0-1", -1},
	}
	for _, tt := range tests {
		got := kernelCompareReleases(tt.a, tt.b)
		if (got > 0) != (tt.want > 0) || (got < 0) != (tt.want < 0) {
			t.Errorf("compare(%s, %s) = %d, want sign of %d", tt.a, tt.b, got, tt.want)
		}
	}
}

// kernelTestTree is a fake host: boot/, lib/modules/, cache/.
type kernelTestTree struct {
	root string
	rel  string // uname -r
}

func (tr kernelTestTree) host() kernelHost {
	return kernelHost{
		bootDir:     filepath.Join(tr.root, "boot"),
		modulesRoot: filepath.Join(tr.root, "lib/modules"),
		release:     func() (string, error) { return tr.rel, nil },
		arch:        "amd64",
	}
}

func (tr kernelTestTree) path(rel string) string { return filepath.Join(tr.root, rel) }

// add creates the files named: a path under boot/ or cache/*/vmlinuz gets
// a fake bzImage of the version in its name; anything else is a directory.
func (tr kernelTestTree) add(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		full := tr.path(p)
		switch {
		case strings.HasPrefix(p, "boot/vmlinuz-"):
			kernelTestWrite(t, full, kernelTestBzImage(strings.TrimPrefix(p, "boot/vmlinuz-")))
		case strings.HasSuffix(p, "/vmlinuz"):
			kernelTestWrite(t, full, kernelTestBzImage(filepath.Base(filepath.Dir(p))))
		case strings.HasSuffix(p, ".bin"):
			kernelTestWrite(t, full, kernelTestBzImage(strings.TrimSuffix(filepath.Base(p), ".bin")))
		default:
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestFindKernel(t *testing.T) {
	const v57, v9 = "6.1.0-57-cloud-amd64", "6.1.0-9-cloud-amd64"
	tests := []struct {
		name    string
		files   []string
		rel     string
		opts    KernelOptions // paths relative to the tree; CacheDir "cache" unless set
		want    Kernel        // paths relative to the tree
		wantErr string
	}{
		{
			name:  "explicit path and modules",
			files: []string{"k/" + v57 + ".bin", "mods"},
			opts:  KernelOptions{Path: "k/" + v57 + ".bin", ModulesDir: "mods"},
			want:  Kernel{Path: "k/" + v57 + ".bin", Version: v57, ModulesDir: "mods", Source: "flag"},
		},
		{
			name:  "explicit path finds its installed modules by version",
			files: []string{"k/" + v57 + ".bin", "lib/modules/" + v57, "boot/vmlinuz-" + v9, "lib/modules/" + v9},
			opts:  KernelOptions{Path: "k/" + v57 + ".bin"},
			want:  Kernel{Path: "k/" + v57 + ".bin", Version: v57, ModulesDir: "lib/modules/" + v57, Source: "flag"},
		},
		{
			name:  "explicit path without installed modules",
			files: []string{"k/" + v57 + ".bin"},
			opts:  KernelOptions{Path: "k/" + v57 + ".bin"},
			want:  Kernel{Path: "k/" + v57 + ".bin", Version: v57, Source: "flag"},
		},
		{
			name:    "explicit path missing",
			opts:    KernelOptions{Path: "k/nope.bin"},
			wantErr: "k/nope.bin",
		},
		{
			name:    "explicit path is a directory",
			files:   []string{"k/dir"},
			opts:    KernelOptions{Path: "k/dir"},
			wantErr: "not a regular file",
		},
		{
			name:    "explicit modules missing",
			files:   []string{"k/" + v57 + ".bin"},
			opts:    KernelOptions{Path: "k/" + v57 + ".bin", ModulesDir: "nomods"},
			wantErr: "nomods",
		},
		{
			name:    "modules without a kernel",
			files:   []string{"mods"},
			opts:    KernelOptions{ModulesDir: "mods"},
			wantErr: "without a kernel",
		},
		{
			name:  "host running kernel",
			rel:   "6.12.0-1-amd64",
			files: []string{"boot/vmlinuz-6.12.0-1-amd64", "lib/modules/6.12.0-1-amd64", "boot/vmlinuz-" + v57, "lib/modules/" + v57},
			want:  Kernel{Path: "boot/vmlinuz-6.12.0-1-amd64", Version: "6.12.0-1-amd64", ModulesDir: "lib/modules/6.12.0-1-amd64", Source: "host"},
		},
		{
			name:  "host kernel without modules: newest installed cloud kernel",
			rel:   "6.12.0-1-amd64",
			files: []string{"boot/vmlinuz-6.12.0-1-amd64", "boot/vmlinuz-" + v9, "lib/modules/" + v9, "boot/vmlinuz-" + v57, "lib/modules/" + v57},
			want:  Kernel{Path: "boot/vmlinuz-" + v57, Version: v57, ModulesDir: "lib/modules/" + v57, Source: "installed"},
		},
		{
			name:  "cloud kernel without modules is skipped",
			rel:   "6.18.44-fc",
			files: []string{"boot/vmlinuz-" + v9, "lib/modules/" + v9, "boot/vmlinuz-" + v57},
			want:  Kernel{Path: "boot/vmlinuz-" + v9, Version: v9, ModulesDir: "lib/modules/" + v9, Source: "installed"},
		},
		{
			name:  "newest cached kernel",
			rel:   "6.18.44-fc",
			files: []string{"cache/" + v9 + "/vmlinuz", "cache/" + v9 + "/lib/modules/" + v9, "cache/" + v57 + "/vmlinuz", "cache/" + v57 + "/lib/modules/" + v57, "cache/.fetch-123/x"},
			want:  Kernel{Path: "cache/" + v57 + "/vmlinuz", Version: v57, ModulesDir: "cache/" + v57 + "/lib/modules/" + v57, Source: "cache"},
		},
		{
			name:    "nothing anywhere",
			rel:     "6.18.44-fc",
			files:   []string{"cache/" + v57 + "/lib"}, // an unfinished entry
			wantErr: "no guest kernel found: pass --kernel PATH, or run `apt-get install linux-image-cloud-amd64`",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := kernelTestTree{root: t.TempDir(), rel: tt.rel}
			if tr.rel == "" {
				tr.rel = "6.18.44-fc"
			}
			tr.add(t, tt.files...)
			opts := tt.opts
			for _, p := range []*string{&opts.Path, &opts.ModulesDir} {
				if *p != "" {
					*p = tr.path(*p)
				}
			}
			opts.CacheDir = tr.path("cache")
			got, err := kernelFind(context.Background(), opts, tr.host())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("kernelFind = %+v, %v; want error containing %q", got, err, tt.wantErr)
				}
				if strings.HasPrefix(tt.wantErr, "no guest kernel") && !errors.Is(err, ErrNotFound) {
					t.Errorf("error %v does not wrap ErrNotFound", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tt.want
			want.Path = tr.path(want.Path)
			if want.ModulesDir != "" {
				want.ModulesDir = tr.path(want.ModulesDir)
			}
			if got != want {
				t.Fatalf("kernelFind =\n %+v\nwant\n %+v", got, want)
			}
		})
	}
}

func TestListKernels(t *testing.T) {
	tr := kernelTestTree{root: t.TempDir()}
	tr.add(t, "cache/6.1.0-9-cloud-amd64/vmlinuz", "cache/6.1.0-57-cloud-amd64/vmlinuz",
		"cache/6.1.0-57-cloud-amd64/lib/modules/6.1.0-57-cloud-amd64", "cache/6.2.0-1-cloud-amd64/lib", "cache/.fetch-1/vmlinuz")
	ks, err := ListKernels(tr.path("cache"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, k := range ks {
		got = append(got, k.Version+" modules="+filepath.Base(k.ModulesDir))
	}
	want := "6.1.0-57-cloud-amd64 modules=6.1.0-57-cloud-amd64, 6.1.0-9-cloud-amd64 modules=."
	if strings.Join(got, ", ") != want {
		t.Errorf("ListKernels = %s\nwant %s", strings.Join(got, ", "), want)
	}
	if ks, err := ListKernels(tr.path("missing")); err != nil || len(ks) != 0 {
		t.Errorf("ListKernels(missing) = %v, %v; want none", ks, err)
	}
}

func TestKernelParseApt(t *testing.T) {
	depends := "linux-image-cloud-amd64\n  Depends: <linux-image-virtual>\n  Depends: linux-image-6.1.0-57-cloud-amd64\n"
	if got := kernelParseDepends(depends); got != "linux-image-6.1.0-57-cloud-amd64" {
		t.Errorf("kernelParseDepends = %q", got)
	}
	if got := kernelParseDepends("linux-image-cloud-amd64\n"); got != "" {
		t.Errorf("kernelParseDepends of no dependency = %q", got)
	}
	show := "Package: linux-image-6.1.0-57-cloud-amd64\nVersion: 6.1.192-3\nInstalled-Size: 94000\nSize: 69417136\n"
	if got := kernelParseSize(show); got != 69417136 {
		t.Errorf("kernelParseSize = %d", got)
	}
}

// TestFindKernelOnHost finds a real kernel the way the CLI does.
func TestFindKernelOnHost(t *testing.T) {
	if paths, _ := filepath.Glob("/boot/vmlinuz-*"); len(paths) == 0 {
		if storeTestGated() {
			t.Fatal("no kernel in /boot but SMOLVM_VM_TESTS=1: run `apt-get install linux-image-cloud-amd64`")
		}
		t.Skip("no kernel in /boot on this host")
	}
	k, err := FindKernel(context.Background(), KernelOptions{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := kernelReadableFile(k.Path); err != nil || k.Version == "" || kernelReadableDir(k.ModulesDir) != nil {
		t.Fatalf("FindKernel = %+v (%v)", k, err)
	}
	t.Logf("host kernel: %+v", k)
}

// TestKernelFetchApt downloads the distribution's cloud kernel into an
// empty cache, as FindKernel does on a host with no kernel installed.
func TestKernelFetchApt(t *testing.T) {
	if !storeTestGated() {
		t.Skip("fetching the cloud kernel downloads ~70 MB from the host's Debian mirror; set SMOLVM_VM_TESTS=1")
	}
	storeTestNeed(t, "apt-get", "apt-cache", "dpkg-deb")
	cache := filepath.Join(t.TempDir(), "kernels")
	empty := kernelTestTree{root: t.TempDir(), rel: "0.0.0-none"}
	var progress bytes.Buffer
	start := time.Now()
	k, err := kernelFind(context.Background(), KernelOptions{CacheDir: cache, AllowFetch: true, Progress: &progress}, empty.host())
	if err != nil {
		t.Fatalf("fetch: %v\nprogress:\n%s", err, progress.String())
	}
	t.Logf("fetched %+v in %v; progress:\n%s", k, time.Since(start).Round(time.Millisecond), progress.String())
	if k.Source != "apt" || k.Path != filepath.Join(cache, k.Version, "vmlinuz") {
		t.Errorf("kernel = %+v", k)
	}
	if v, err := KernelVersion(k.Path); err != nil || v != k.Version {
		t.Errorf("fetched vmlinuz reports version %q, %v; want %q", v, err, k.Version)
	}
	for _, f := range []string{"modules.dep", "modules.builtin", "kernel/drivers/block/virtio_blk.ko"} {
		if _, err := os.Stat(filepath.Join(k.ModulesDir, f)); err != nil {
			t.Errorf("fetched modules lack %s: %v", f, err)
		}
	}
	for _, e := range storeTestEntries(t, cache) {
		if e != k.Version && e != ".fetch.lock" {
			t.Errorf("fetch left %s in the cache", e)
		}
	}
	again, err := kernelFind(context.Background(), KernelOptions{CacheDir: cache}, empty.host())
	if err != nil || again.Source != "cache" || again.Path != k.Path {
		t.Errorf("after the fetch, kernelFind = %+v, %v; want the cached kernel", again, err)
	}
}

// TestKernelFetchCancelled stops a fetch once apt has written part of the
// package: the cache must hold no partial kernel and no temp dir.
func TestKernelFetchCancelled(t *testing.T) {
	if !storeTestGated() {
		t.Skip("starts a kernel download from the host's Debian mirror; set SMOLVM_VM_TESTS=1")
	}
	storeTestNeed(t, "apt-get", "apt-cache", "dpkg-deb")
	cache := filepath.Join(t.TempDir(), "kernels")
	empty := kernelTestTree{root: t.TempDir(), rel: "0.0.0-none"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sawBytes := make(chan int64, 1)
	go func() { // cancel as soon as download bytes land in the temp dir
		for ctx.Err() == nil {
			dirs, _ := filepath.Glob(filepath.Join(cache, ".fetch-*", "deb"))
			for _, d := range dirs {
				if n := kernelDirBytes(d); n > 0 {
					sawBytes <- n
					cancel()
					return
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	k, err := kernelFind(ctx, KernelOptions{CacheDir: cache, AllowFetch: true}, empty.host())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("kernelFind = %+v, %v; want context.Canceled", k, err)
	}
	select {
	case n := <-sawBytes:
		t.Logf("cancelled after %d bytes had arrived", n)
	default:
		t.Fatal("the fetch was cancelled before any download started")
	}
	for _, e := range storeTestEntries(t, cache) {
		if e != ".fetch.lock" {
			t.Errorf("cancelled fetch left %s in the cache", e)
		}
	}
}
