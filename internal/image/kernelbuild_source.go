package image

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// kernelSourceMeta is the Debian metapackage depending on the current
// kernel source package (linux-source-6.1), which ships the source as a
// tarball under /usr/src.
const kernelSourceMeta = "linux-source"

// kernelSource is the distribution kernel source package a build uses.
type kernelSource struct {
	Package string // linux-source-6.1
	Version string // the package version: 6.1.192-3
	Size    int64  // bytes of the .deb; 0 when apt does not say
}

// kernelResolveSource asks apt which versioned linux-source package is
// current and what version and size it has, without downloading it.
func kernelResolveSource(ctx context.Context) (kernelSource, error) {
	out, err := storeToolOutput(ctx, storeTool{Name: "apt-cache", Args: []string{"depends", kernelSourceMeta}})
	if err != nil {
		return kernelSource{}, fmt.Errorf("resolve %s (run `apt-get update` if apt has no package lists): %w", kernelSourceMeta, err)
	}
	pkg := kernelParseSourceDepends(out)
	if pkg == "" {
		return kernelSource{}, fmt.Errorf("resolve %s: apt names no linux-source-VERSION package it depends on (run `apt-get update`?)", kernelSourceMeta)
	}
	show, err := storeToolOutput(ctx, storeTool{Name: "apt-cache", Args: []string{"show", "--no-all-versions", pkg}})
	if err != nil {
		return kernelSource{}, fmt.Errorf("resolve %s: %w", pkg, err)
	}
	src := kernelSource{Package: pkg, Version: kernelParseField(show, "Version"), Size: kernelParseSize(show)}
	if src.Version == "" {
		return kernelSource{}, fmt.Errorf("resolve %s: apt-cache show gives no Version", pkg)
	}
	return src, nil
}

// kernelParseSourceDepends picks "linux-source-X.Y" from apt-cache depends
// output.
func kernelParseSourceDepends(out string) string {
	for line := range strings.Lines(out) {
		dep, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends: ")
		dep = strings.TrimSpace(dep)
		if ok && strings.HasPrefix(dep, kernelSourceMeta+"-") && !strings.ContainsAny(dep, "<> ") {
			return dep
		}
	}
	return ""
}

// kernelParseField reads the first "Name: value" field of apt-cache show
// output.
func kernelParseField(out, name string) string {
	for line := range strings.Lines(out) {
		if v, ok := strings.CutPrefix(line, name+": "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// kernelFetchSource downloads src into scratch and unpacks its tarball
// there; it returns the kernel source tree's directory.
func kernelFetchSource(ctx context.Context, scratch string, src kernelSource, p *progressReporter) (string, error) {
	debDir := filepath.Join(scratch, "deb")
	if err := os.Mkdir(debDir, 0o755); err != nil {
		return "", err
	}
	p.BytesPhase("downloading "+src.Package+" "+src.Version, src.Size)
	stop := kernelWatchDownload(debDir, p)
	err := storeRunTool(ctx, storeTool{Name: "apt-get", Args: []string{"-q", "download", src.Package + "=" + src.Version}, Dir: debDir})
	stop()
	if err != nil {
		return "", err
	}
	debs, _ := filepath.Glob(filepath.Join(debDir, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download left %d .deb files in %s, want 1", len(debs), debDir)
	}
	pkgRoot := filepath.Join(scratch, "pkg")
	p.Phase("unpacking "+filepath.Base(debs[0]), 0)
	if err := storeRunTool(ctx, storeTool{Name: "dpkg-deb", Args: []string{"-x", debs[0], pkgRoot}}); err != nil {
		return "", err
	}
	os.Remove(debs[0])
	tarballs, _ := filepath.Glob(filepath.Join(pkgRoot, "usr/src", "linux-source-*.tar.*"))
	if len(tarballs) != 1 {
		return "", fmt.Errorf("package %s has %d source tarballs under /usr/src, want 1", src.Package, len(tarballs))
	}
	tree := filepath.Join(scratch, "src")
	if err := os.Mkdir(tree, 0o755); err != nil {
		return "", err
	}
	p.Phase("unpacking the kernel source", 0)
	err = storeRunTool(ctx, storeTool{
		Name: "tar", Args: []string{"-xvf", tarballs[0], "-C", tree, "--strip-components=1"},
		OnLine: func(string) { p.Add(1) },
	})
	if err != nil {
		return "", err
	}
	os.RemoveAll(pkgRoot)
	if _, err := os.Stat(filepath.Join(tree, "scripts/kconfig/merge_config.sh")); err != nil {
		return "", fmt.Errorf("unpacked source is not a kernel tree: %w", err)
	}
	return tree, nil
}
