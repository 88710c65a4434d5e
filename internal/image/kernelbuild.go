package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// KernelBuildOptions configure BuildKernel.
type KernelBuildOptions struct {
	CacheDir string       // the kernel cache, e.g. <data>/kernels; required
	Jobs     int          // make -j; 0 = one per CPU
	Force    bool         // rebuild even when this source and config are cached
	Progress io.Writer    // phase and file-count display; nil = quiet
	Logger   *slog.Logger // nil = discard
}

// BuiltKernel is a kernel built by BuildKernel, as cached in
// CacheDir/smolvm-SOURCEVERSION-CONFIGHASH.
type BuiltKernel struct {
	Kernel        `json:"kernel,omitzero"`
	Release       string    `json:"release"`           // uname -r of the guest: 6.1.192-smolvm
	BzImage       string    `json:"bzimage,omitempty"` // the compressed kernel
	Vmlinux       string    `json:"vmlinux,omitempty"` // the uncompressed ELF kernel (PVH entry); Kernel.Path when present
	SourcePackage string    `json:"source_package"`    // linux-source-6.1
	SourceVersion string    `json:"source_version"`    // 6.1.192-3
	ConfigHash    string    `json:"config_hash"`       // see kconfigHash
	Built         time.Time `json:"built"`
	BuildSeconds  float64   `json:"build_seconds"`
	Cached        bool      `json:"-"` // BuildKernel found it built already
}

// kernelBuiltPrefix starts the cache entries of built kernels.
const kernelBuiltPrefix = "smolvm-"

// kernelBuildDeps maps what a kernel build runs or includes to the Debian
// package providing it. Headers are checked as files.
var kernelBuildDeps = []struct{ need, pkg string }{
	{"make", "build-essential"},
	{"gcc", "build-essential"},
	{"flex", "flex"},
	{"bison", "bison"},
	{"bc", "bc"},
	{"/usr/include/gelf.h", "libelf-dev"},
	{"/usr/include/openssl/ssl.h", "libssl-dev"},
	{"apt-get", "apt"},
	{"dpkg-deb", "dpkg"},
	{"xz", "xz-utils"},
}

// KernelBuildMissing returns the Debian packages a kernel build needs that
// this host lacks (empty when it has everything).
func KernelBuildMissing() []string {
	return kernelBuildMissing(exec.LookPath, func(p string) error { _, err := os.Stat(p); return err })
}

func kernelBuildMissing(lookPath func(string) (string, error), stat func(string) error) []string {
	var missing []string
	for _, d := range kernelBuildDeps {
		var err error
		if strings.HasPrefix(d.need, "/") {
			err = stat(d.need)
		} else {
			_, err = lookPath(d.need)
		}
		if err != nil && !slices.Contains(missing, d.pkg) {
			missing = append(missing, d.pkg)
		}
	}
	return missing
}

// BuildKernel builds the smolvm guest kernel from the distribution's kernel
// source package (fetched with apt-get download, never installed) and the
// configuration fragment in the repository, merged over allnoconfig: every
// driver built in, no modules. The result is cached by (source version,
// config hash); a cached kernel is returned at once unless opts.Force.
// Work happens in a scratch directory under CacheDir/build that is removed
// whatever happens; the entry appears by rename only when complete.
func BuildKernel(ctx context.Context, opts KernelBuildOptions) (_ BuiltKernel, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.CacheDir == "" {
		return BuiltKernel{}, errors.New("build kernel: no cache directory")
	}
	if opts.Jobs <= 0 {
		opts.Jobs = runtime.NumCPU()
	}
	frag, err := kconfigFragment(kernelDebianArch(runtime.GOARCH))
	if err != nil {
		return BuiltKernel{}, fmt.Errorf("build kernel: %w", err)
	}
	want, err := kconfigParse(strings.NewReader(string(frag)))
	if err != nil {
		return BuiltKernel{}, fmt.Errorf("build kernel: parsing the config fragment: %w", err)
	}
	if missing := KernelBuildMissing(); len(missing) > 0 {
		return BuiltKernel{}, fmt.Errorf("build kernel: missing build tools; run `apt-get install %s`", strings.Join(missing, " "))
	}
	p := newProgressReporter(opts.Progress)
	defer p.Done()
	p.Printf("finding the current %s", kernelSourceMeta)
	src, err := kernelResolveSource(ctx)
	if err != nil {
		return BuiltKernel{}, fmt.Errorf("build kernel: %w", err)
	}
	hash := kconfigHash(want)
	entry := filepath.Join(opts.CacheDir, kernelBuiltPrefix+src.Version+"-"+hash)
	if k, err := kernelLoadBuilt(entry); err == nil && !opts.Force {
		k.Cached = true
		return k, nil
	}
	if err := os.MkdirAll(filepath.Join(opts.CacheDir, "build"), 0o755); err != nil {
		return BuiltKernel{}, fmt.Errorf("build kernel: %w", err)
	}
	unlock, err := storeFlock(ctx, filepath.Join(opts.CacheDir, ".build.lock"), "kernel build", log)
	if err != nil {
		return BuiltKernel{}, err
	}
	defer unlock()
	if k, err := kernelLoadBuilt(entry); err == nil && !opts.Force {
		k.Cached = true // another process built it while we waited
		return k, nil
	}
	kernelCleanBuildDir(filepath.Join(opts.CacheDir, "build"), log)
	scratch, err := os.MkdirTemp(filepath.Join(opts.CacheDir, "build"), "linux-")
	if err != nil {
		return BuiltKernel{}, fmt.Errorf("build kernel: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(scratch); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	b := kernelBuild{src: src, scratch: scratch, frag: frag, want: want, jobs: opts.Jobs, p: p, log: log}
	k, err := b.run(ctx)
	if err != nil {
		return BuiltKernel{}, fmt.Errorf("build kernel from %s %s: %w", src.Package, src.Version, err)
	}
	k.ConfigHash = hash
	if err := kernelInstallBuilt(scratch, entry, &k); err != nil {
		return BuiltKernel{}, fmt.Errorf("build kernel: installing: %w", err)
	}
	p.Printf("kernel %s built in %s, installed in %s", k.Release, time.Duration(k.BuildSeconds*float64(time.Second)).Round(time.Second), entry)
	return kernelLoadBuilt(entry)
}

// kernelCleanBuildDir removes scratch directories of builds that were
// killed. The caller holds the build lock, so none is in use.
func kernelCleanBuildDir(dir string, log *slog.Logger) {
	stale, _ := filepath.Glob(filepath.Join(dir, "linux-*"))
	for _, d := range stale {
		if err := os.RemoveAll(d); err != nil {
			log.Warn("leaving stale kernel build dir", "dir", d, "err", err)
		}
	}
}

// kernelInstallBuilt copies the build's bzImage, vmlinux and .config into a
// new directory in scratch with kernel.json, then renames it to entry
// (replacing an older entry of the same name, for --force).
func kernelInstallBuilt(scratch, entry string, k *BuiltKernel) error {
	stage := filepath.Join(scratch, "install")
	if err := os.Mkdir(stage, 0o755); err != nil {
		return err
	}
	out := filepath.Join(scratch, "out")
	for src, dst := range map[string]string{
		filepath.Join(out, kernelBzImagePath()): "bzImage",
		filepath.Join(out, "vmlinux"):           "vmlinux",
		filepath.Join(out, ".config"):           "config",
	} {
		if err := os.Rename(src, filepath.Join(stage, dst)); err != nil {
			return err
		}
	}
	meta, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stage, "kernel.json"), append(meta, '\n'), 0o644); err != nil {
		return err
	}
	if _, err := os.Stat(entry); err == nil {
		old := filepath.Join(scratch, "old")
		if err := os.Rename(entry, old); err != nil {
			return err
		}
	}
	return os.Rename(stage, entry)
}

// kernelBzImagePath is where kbuild leaves the compressed kernel.
func kernelBzImagePath() string {
	if runtime.GOARCH == "arm64" {
		return "arch/arm64/boot/Image"
	}
	return "arch/x86/boot/bzImage"
}

// kernelLoadBuilt reads one built-kernel cache entry.
func kernelLoadBuilt(entry string) (BuiltKernel, error) {
	var k BuiltKernel
	b, err := os.ReadFile(filepath.Join(entry, "kernel.json"))
	if err != nil {
		return k, err
	}
	if err := json.Unmarshal(b, &k); err != nil {
		return k, fmt.Errorf("%s: %w", filepath.Join(entry, "kernel.json"), err)
	}
	k.BzImage, k.Vmlinux = filepath.Join(entry, "bzImage"), filepath.Join(entry, "vmlinux")
	if err := kernelReadableFile(k.BzImage); err != nil {
		return k, err
	}
	// VMs boot the ELF vmlinux through its PVH entry: no decompression,
	// which under TCG saves about 0.5 s a boot (docs/benchmarks.md), and
	// Firecracker takes it as it is.
	path := k.Vmlinux
	if kernelReadableFile(path) != nil {
		path = k.BzImage
	}
	k.Kernel = Kernel{Path: path, Version: k.Release, Source: "built"}
	return k, nil
}

// ListBuiltKernels returns the kernels BuildKernel installed in cacheDir,
// newest build first. A missing cacheDir holds none.
func ListBuiltKernels(cacheDir string) ([]BuiltKernel, error) {
	entries, err := filepath.Glob(filepath.Join(cacheDir, kernelBuiltPrefix+"*"))
	if err != nil {
		return nil, err
	}
	var out []BuiltKernel
	for _, e := range entries {
		if k, err := kernelLoadBuilt(e); err == nil {
			out = append(out, k)
		}
	}
	slices.SortFunc(out, func(a, b BuiltKernel) int { return b.Built.Compare(a.Built) })
	return out, nil
}

// kernelNewestBuilt is FindKernel's first automatic choice.
func kernelNewestBuilt(cacheDir string) (Kernel, error) {
	if cacheDir == "" {
		return Kernel{}, errors.New("no kernel cache dir")
	}
	ks, err := ListBuiltKernels(cacheDir)
	if err != nil {
		return Kernel{}, err
	}
	if len(ks) == 0 {
		return Kernel{}, fmt.Errorf("no smolvm-built kernel in %s (smolvm kernel build makes one)", cacheDir)
	}
	return ks[0].Kernel, nil
}
