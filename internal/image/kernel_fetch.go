package image

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// kernelMetaPackage is the Debian metapackage that depends on the current
// cloud kernel for arch.
func kernelMetaPackage(arch string) string { return "linux-image-cloud-" + arch }

// kernelFetchPoll is how often the download bar looks at the partial file.
const kernelFetchPoll = 250 * time.Millisecond

// kernelFetch downloads the distribution's current cloud kernel package with
// apt (no installation: apt-get download, dpkg-deb -x) and keeps its vmlinuz
// and modules as cacheDir/VERSION/{vmlinuz,lib/modules/VERSION}. Work
// happens in a temp dir under cacheDir renamed into place at the end; on
// failure or cancellation nothing is left.
func kernelFetch(ctx context.Context, cacheDir, arch string, p *progressReporter, log *slog.Logger) (k Kernel, err error) {
	defer p.Done()
	if arch != "amd64" && arch != "arm64" {
		return Kernel{}, fmt.Errorf("fetch kernel: Debian has no cloud kernel for %s: pass --kernel PATH: %w", arch, ErrNotFound)
	}
	for _, tool := range []string{"apt-cache", "apt-get", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			return Kernel{}, fmt.Errorf("fetch kernel: %s not found (fetching needs a Debian-like host): pass --kernel PATH: %w", tool, ErrNotFound)
		}
	}
	meta := kernelMetaPackage(arch)
	p.Printf("finding the current %s", meta)
	pkg, size, err := kernelResolvePackage(ctx, meta)
	if err != nil {
		return Kernel{}, err
	}
	version := strings.TrimPrefix(pkg, "linux-image-")
	if !kernelPlausibleVersion(version) {
		return Kernel{}, fmt.Errorf("fetch kernel: package %s does not name a kernel release", pkg)
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return Kernel{}, fmt.Errorf("fetch kernel: %w", err)
	}
	unlock, err := storeFlock(ctx, filepath.Join(cacheDir, ".fetch.lock"), "kernel fetch", log)
	if err != nil {
		return Kernel{}, err
	}
	defer unlock()
	if k, err := kernelCached(cacheDir, version); err == nil {
		return k, nil // another process fetched it while we waited
	}
	kernelCleanStale(cacheDir, log)
	tmp, err := os.MkdirTemp(cacheDir, ".fetch-")
	if err != nil {
		return Kernel{}, fmt.Errorf("fetch kernel: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(tmp); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	log.Info("fetching guest kernel", "package", pkg, "bytes", size)
	stage, err := kernelDownloadAndStage(ctx, tmp, pkg, version, size, p, log)
	if err != nil {
		return Kernel{}, fmt.Errorf("fetch kernel %s: %w", pkg, err)
	}
	if err := os.Rename(stage, filepath.Join(cacheDir, version)); err != nil {
		return Kernel{}, fmt.Errorf("fetch kernel %s: %w", pkg, err)
	}
	k, err = kernelCached(cacheDir, version)
	if err != nil {
		return Kernel{}, fmt.Errorf("fetch kernel %s: %w", pkg, err)
	}
	k.Source = "apt"
	p.Printf("kernel %s cached in %s", version, filepath.Join(cacheDir, version))
	return k, nil
}

// kernelResolvePackage asks apt which versioned kernel package meta depends
// on ("linux-image-6.1.0-57-cloud-amd64") and how big its .deb is (0 when
// apt does not say).
func kernelResolvePackage(ctx context.Context, meta string) (pkg string, size int64, err error) {
	out, err := storeToolOutput(ctx, storeTool{Name: "apt-cache", Args: []string{"depends", meta}})
	if err != nil {
		return "", 0, fmt.Errorf("resolve %s (run `apt-get update` if apt has no package lists): %w", meta, err)
	}
	pkg = kernelParseDepends(out)
	if pkg == "" {
		return "", 0, fmt.Errorf("resolve %s: apt names no kernel package it depends on (run `apt-get update`?)", meta)
	}
	show, err := storeToolOutput(ctx, storeTool{Name: "apt-cache", Args: []string{"show", "--no-all-versions", pkg}})
	if err == nil {
		size = kernelParseSize(show)
	}
	return pkg, size, nil
}

// kernelParseDepends picks the first "Depends: linux-image-…" of
// apt-cache depends output (virtual packages in <> are skipped).
func kernelParseDepends(out string) string {
	for line := range strings.Lines(out) {
		dep, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends: ")
		if ok && strings.HasPrefix(dep, "linux-image-") {
			return strings.TrimSpace(dep)
		}
	}
	return ""
}

// kernelParseSize reads the "Size:" field of apt-cache show output.
func kernelParseSize(out string) int64 {
	for line := range strings.Lines(out) {
		if v, ok := strings.CutPrefix(line, "Size: "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// kernelDownloadAndStage downloads pkg into tmp, unpacks it, and lays out
// tmp/VERSION as the cache entry: vmlinuz and lib/modules/VERSION. It
// returns that directory.
func kernelDownloadAndStage(ctx context.Context, tmp, pkg, version string, size int64, p *progressReporter, log *slog.Logger) (string, error) {
	debDir := filepath.Join(tmp, "deb")
	if err := os.Mkdir(debDir, 0o755); err != nil {
		return "", err
	}
	p.BytesPhase("downloading "+pkg, size)
	stop := kernelWatchDownload(debDir, p)
	err := storeRunTool(ctx, storeTool{Name: "apt-get", Args: []string{"-q", "download", pkg}, Dir: debDir})
	stop()
	if err != nil {
		return "", err
	}
	debs, _ := filepath.Glob(filepath.Join(debDir, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download left %d .deb files in %s, want 1", len(debs), debDir)
	}
	p.Phase("unpacking "+filepath.Base(debs[0]), 0)
	root := filepath.Join(tmp, "root")
	if err := storeRunTool(ctx, storeTool{Name: "dpkg-deb", Args: []string{"-x", debs[0], root}}); err != nil {
		return "", err
	}
	return kernelStage(ctx, tmp, root, version, log)
}

// kernelStage moves the kernel and modules out of the unpacked package at
// root into tmp/VERSION and indexes the modules with depmod, as the
// package's postinst would.
func kernelStage(ctx context.Context, tmp, root, version string, log *slog.Logger) (string, error) {
	stage := filepath.Join(tmp, version)
	vmlinuz := filepath.Join(root, "boot", "vmlinuz-"+version)
	mods := filepath.Join(root, "lib/modules", version)
	if _, err := os.Stat(mods); errors.Is(err, os.ErrNotExist) {
		mods = filepath.Join(root, "usr/lib/modules", version) // merged-/usr packages
	}
	if err := kernelReadableFile(vmlinuz); err != nil {
		return "", fmt.Errorf("package has no kernel: %w", err)
	}
	if err := kernelReadableDir(mods); err != nil {
		return "", fmt.Errorf("package has no modules: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(stage, "lib/modules"), 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(vmlinuz, filepath.Join(stage, "vmlinuz")); err != nil {
		return "", err
	}
	if err := os.Rename(mods, filepath.Join(stage, "lib/modules", version)); err != nil {
		return "", err
	}
	if _, err := exec.LookPath("depmod"); err == nil {
		if err := storeRunTool(ctx, storeTool{Name: "depmod", Args: []string{"-b", stage, version}}); err != nil {
			return "", err
		}
	} else {
		log.Warn("depmod not found: cached kernel modules have no modules.dep", "version", version)
	}
	return stage, nil
}

// kernelWatchDownload moves p's bar with the size of what apt has written
// to dir so far (apt-get download writes there directly), until stop.
func kernelWatchDownload(dir string, p *progressReporter) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(kernelFetchPoll)
		defer tick.Stop()
		for {
			select {
			case <-done:
				p.Set(kernelDirBytes(dir))
				return
			case <-tick.C:
				p.Set(kernelDirBytes(dir))
			}
		}
	}()
	return func() { close(done); <-finished }
}

func kernelDirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// kernelCleanStale removes temp dirs of fetches that were killed. The
// caller holds the fetch lock, so none is in use.
func kernelCleanStale(cacheDir string, log *slog.Logger) {
	stale, _ := filepath.Glob(filepath.Join(cacheDir, ".fetch-*"))
	for _, dir := range stale {
		if err := os.RemoveAll(dir); err != nil {
			log.Warn("leaving stale kernel fetch dir", "dir", dir, "err", err)
		}
	}
}
