package image

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// rootfsTiny is the "tiny" recipe: the host's static busybox with a link
// per applet and a minimal /etc. It builds in about a second.
type rootfsTiny struct {
	busybox string // the static busybox binary to copy, normally /bin/busybox
}

// rootfsTinyFiles is the minimal /etc of a tiny image.
var rootfsTinyFiles = map[string]string{
	"etc/passwd":      "root:x:0:0:root:/root:/bin/sh\n",
	"etc/group":       "root:x:0:\n",
	"etc/hostname":    "smolvm\n",
	"etc/resolv.conf": "",
}

// rootfsTinyDirs are created empty, with these modes.
var rootfsTinyDirs = []struct {
	path string
	mode os.FileMode
}{
	{"bin", 0o755}, {"sbin", 0o755}, {"usr/bin", 0o755}, {"usr/sbin", 0o755},
	{"etc", 0o755}, {"root", 0o700}, {"tmp", 0o1777}, {"proc", 0o555},
	{"sys", 0o555}, {"dev", 0o755}, {"run", 0o755},
}

func (r rootfsTiny) inputs() (rootfsInputs, error) {
	sum, err := rootfsTinyCheckBusybox(r.busybox)
	if err != nil {
		return rootfsInputs{}, err
	}
	return rootfsInputs{Recipe: "tiny", Version: rootfsRecipeVersion, Busybox: sum, Source: "builtin:tiny"}, nil
}

// rootfsTinyCheckBusybox makes sure path is a statically linked busybox
// and returns its sha256.
func rootfsTinyCheckBusybox(path string) (string, error) {
	const fix = "run `apt-get install busybox-static`"
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("busybox not found at %s: %s", path, fix)
	}
	if err != nil {
		return "", fmt.Errorf("read busybox: %w", err)
	}
	defer f.Close()
	exe, err := elf.NewFile(f)
	if err != nil {
		return "", fmt.Errorf("busybox %s is not an ELF binary: %s", path, fix)
	}
	for _, prog := range exe.Progs {
		if prog.Type == elf.PT_INTERP {
			return "", fmt.Errorf("busybox %s is dynamically linked and cannot run alone in a VM: %s", path, fix)
		}
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, 1<<40)); err != nil {
		return "", fmt.Errorf("read busybox: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (r rootfsTiny) build(ctx context.Context, _ rootfsInputs, dst string, p *progressReporter) error {
	staging := filepath.Join(filepath.Dir(dst), "staging")
	p.Phase("staging busybox", 0)
	if err := r.stage(ctx, staging); err != nil {
		return err
	}
	p.Phase("making ext4", 0)
	return MakeExt4(ctx, staging, dst, 0)
}

// stage lays out the tiny root file system in dir.
func (r rootfsTiny) stage(ctx context.Context, dir string) error {
	for _, d := range rootfsTinyDirs {
		path := filepath.Join(dir, d.path)
		if err := os.MkdirAll(path, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(path, d.mode); err != nil { // MkdirAll obeys umask
			return err
		}
	}
	for name, content := range rootfsTinyFiles {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	if err := rootfsCopyFile(r.busybox, filepath.Join(dir, "bin/busybox"), 0o755); err != nil {
		return fmt.Errorf("copy busybox: %w", err)
	}
	return r.linkApplets(ctx, dir)
}

// linkApplets makes a symlink to /bin/busybox for each applet the binary
// lists (busybox --list-full prints paths such as "usr/bin/awk").
func (r rootfsTiny) linkApplets(ctx context.Context, dir string) error {
	out, err := storeToolOutput(ctx, storeTool{Name: r.busybox, Args: []string{"--list-full"}})
	if err != nil {
		return fmt.Errorf("list busybox applets: %w", err)
	}
	n := 0
	for line := range strings.Lines(out) {
		rel := filepath.Clean(strings.TrimSpace(line))
		if rel == "." || rel == "bin/busybox" || !filepath.IsLocal(rel) {
			continue
		}
		link := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/bin/busybox", link); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("link busybox applet: %w", err)
		}
		n++
	}
	if _, err := os.Lstat(filepath.Join(dir, "bin/sh")); err != nil {
		return fmt.Errorf("busybox %s lists no sh applet (%d applets)", r.busybox, n)
	}
	return nil
}

// rootfsCopyFile copies the regular file src to the new file dst.
func rootfsCopyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
