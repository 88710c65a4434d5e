package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// KernelOptions say where FindKernel may look for a guest kernel.
type KernelOptions struct {
	Path       string       // explicit kernel (bzImage or vmlinux); must exist
	ModulesDir string       // its modules (lib/modules/VERSION); optional, only with Path
	CacheDir   string       // fetched kernels, e.g. <data>/kernels; "" = none
	Progress   io.Writer    // fetch progress; nil = quiet
	Logger     *slog.Logger // nil = discard
	AllowFetch bool         // fetch the distribution's cloud kernel with apt when none is found
}

// kernelHost is where FindKernel looks on the host; tests point it at a
// fake tree.
type kernelHost struct {
	bootDir     string                 // /boot
	modulesRoot string                 // /lib/modules
	release     func() (string, error) // uname -r
	arch        string                 // Debian architecture: amd64, arm64
}

func kernelDefaultHost() kernelHost {
	return kernelHost{bootDir: "/boot", modulesRoot: "/lib/modules", release: kernelUname, arch: kernelDebianArch(runtime.GOARCH)}
}

func kernelUname() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", err
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// kernelDebianArch maps GOARCH to Debian's architecture names.
func kernelDebianArch(goarch string) string {
	if goarch == "386" {
		return "i386"
	}
	return goarch // amd64, arm64 and most others agree
}

// FindKernel returns the guest kernel to boot, trying in order: opts.Path
// (its modules from opts.ModulesDir, else /lib/modules/VERSION when the
// bzImage names a VERSION installed there, else none); the newest kernel
// `smolvm kernel build` installed in opts.CacheDir (no modules: everything
// the guest needs is built in); the host's running
// kernel from /boot with its modules; the newest installed distribution
// cloud kernel (/boot/vmlinuz-*-cloud-*); the newest kernel cached in
// opts.CacheDir; and, with opts.AllowFetch, the distribution's cloud kernel
// fetched with apt into opts.CacheDir. Failing all, the error wraps
// ErrNotFound and says what to do.
func FindKernel(ctx context.Context, opts KernelOptions) (Kernel, error) {
	return kernelFind(ctx, opts, kernelDefaultHost())
}

func kernelFind(ctx context.Context, opts KernelOptions, h kernelHost) (Kernel, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Path != "" {
		return kernelFromPath(opts.Path, opts.ModulesDir, h)
	}
	if opts.ModulesDir != "" {
		return Kernel{}, fmt.Errorf("kernel modules %s given without a kernel: pass the kernel path too", opts.ModulesDir)
	}
	finders := []struct {
		source string
		find   func() (Kernel, error)
	}{
		{"built", func() (Kernel, error) { return kernelNewestBuilt(opts.CacheDir) }},
		{"host", h.running},
		{"installed", h.newestCloud},
		{"cache", func() (Kernel, error) { return kernelNewestCached(opts.CacheDir) }},
	}
	for _, f := range finders {
		k, err := f.find()
		if err == nil {
			log.Debug("guest kernel found", "source", k.Source, "path", k.Path, "version", k.Version)
			return k, nil
		}
		log.Debug("no guest kernel here", "source", f.source, "reason", err)
	}
	if opts.AllowFetch && opts.CacheDir != "" {
		return kernelFetch(ctx, opts.CacheDir, h.arch, newProgressReporter(opts.Progress), log)
	}
	hint := fmt.Sprintf("no guest kernel found: pass --kernel PATH, or run `apt-get install %s`", kernelMetaPackage(h.arch))
	if opts.CacheDir != "" {
		hint += ", or allow smolvm to fetch it into " + opts.CacheDir
	}
	return Kernel{}, fmt.Errorf("%s: %w", hint, ErrNotFound)
}

// kernelFromPath describes an explicitly chosen kernel.
func kernelFromPath(path, modulesDir string, h kernelHost) (Kernel, error) {
	if err := kernelReadableFile(path); err != nil {
		return Kernel{}, fmt.Errorf("kernel %s: %w", path, err)
	}
	k := Kernel{Path: path, ModulesDir: modulesDir, Source: "flag"}
	k.Version, _ = KernelVersion(path) // a vmlinux has none: fine
	if modulesDir != "" {
		if err := kernelReadableDir(modulesDir); err != nil {
			return Kernel{}, fmt.Errorf("kernel modules %s: %w", modulesDir, err)
		}
		return k, nil
	}
	if k.Version != "" {
		if dir := filepath.Join(h.modulesRoot, k.Version); kernelReadableDir(dir) == nil {
			k.ModulesDir = dir
		}
	}
	return k, nil
}

// running is the host's own kernel, when /boot has it with its modules.
func (h kernelHost) running() (Kernel, error) {
	rel, err := h.release()
	if err != nil {
		return Kernel{}, err
	}
	return h.installed(rel, "host")
}

// newestCloud is the newest /boot/vmlinuz-*-cloud-* with its modules.
func (h kernelHost) newestCloud() (Kernel, error) {
	paths, _ := filepath.Glob(filepath.Join(h.bootDir, "vmlinuz-*-cloud-*"))
	var releases []string
	for _, p := range paths {
		releases = append(releases, strings.TrimPrefix(filepath.Base(p), "vmlinuz-"))
	}
	slices.SortFunc(releases, func(a, b string) int { return kernelCompareReleases(b, a) })
	var errs []error
	for _, rel := range releases {
		k, err := h.installed(rel, "installed")
		if err == nil {
			return k, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return Kernel{}, fmt.Errorf("no %s/vmlinuz-*-cloud-*", h.bootDir)
	}
	return Kernel{}, errors.Join(errs...)
}

// installed is /boot/vmlinuz-REL with /lib/modules/REL, if both are readable.
func (h kernelHost) installed(rel, source string) (Kernel, error) {
	k := Kernel{
		Path:       filepath.Join(h.bootDir, "vmlinuz-"+rel),
		Version:    rel,
		ModulesDir: filepath.Join(h.modulesRoot, rel),
		Source:     source,
	}
	if err := kernelReadableFile(k.Path); err != nil {
		return Kernel{}, err
	}
	if err := kernelReadableDir(k.ModulesDir); err != nil {
		return Kernel{}, err
	}
	return k, nil
}

// kernelReadableFile checks that path is a regular file this process can
// read (Ubuntu makes /boot/vmlinuz-* readable by root only).
func kernelReadableFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	return nil
}

func kernelReadableDir(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", path)
	}
	return nil
}

// ListKernels returns the kernels fetched into cacheDir, newest first. A
// missing cacheDir holds none.
func ListKernels(cacheDir string) ([]Kernel, error) {
	entries, err := os.ReadDir(cacheDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list kernels: %w", err)
	}
	var out []Kernel
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		k, err := kernelCached(cacheDir, e.Name())
		if err != nil {
			continue // not a finished kernel entry
		}
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b Kernel) int { return kernelCompareReleases(b.Version, a.Version) })
	return out, nil
}

// kernelCached describes cacheDir/VERSION: vmlinuz and lib/modules/VERSION.
func kernelCached(cacheDir, version string) (Kernel, error) {
	dir := filepath.Join(cacheDir, version)
	k := Kernel{Path: filepath.Join(dir, "vmlinuz"), Version: version, Source: "cache"}
	if err := kernelReadableFile(k.Path); err != nil {
		return Kernel{}, err
	}
	if mods := filepath.Join(dir, "lib/modules", version); kernelReadableDir(mods) == nil {
		k.ModulesDir = mods
	}
	return k, nil
}

func kernelNewestCached(cacheDir string) (Kernel, error) {
	if cacheDir == "" {
		return Kernel{}, errors.New("no kernel cache dir")
	}
	ks, err := ListKernels(cacheDir)
	if err != nil {
		return Kernel{}, err
	}
	if len(ks) == 0 {
		return Kernel{}, fmt.Errorf("no kernels in %s", cacheDir)
	}
	return ks[0], nil
}
