package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// kmodBootModules lists the modules the guest agent needs to boot on a
// microvm (QEMU microvm or Firecracker, both virtio-mmio), in the order
// they are wanted; their dependencies are added ahead of them. Modules that
// are built into the kernel or absent are skipped. virtio_pci is left out:
// neither machine has a PCI bus.
func kmodBootModules() []string {
	return []string{
		"virtio_mmio",
		"virtio_blk",
		"virtio_console",
		"virtio_net",
		"virtio_rng",
		"vmw_vsock_virtio_transport",
		"overlay",
		"ext4",
	}
}

// kmodFile is one kernel module chosen for the initramfs.
type kmodFile struct {
	Name string   // canonical name: '-' replaced by '_', no extension
	Path string   // file under the modules directory
	Data []byte   // the uncompressed ELF object
	Deps []string // the modules it needs that are loaded before it (not built in)
}

// kmodName canonicalises a module name or file name: "virtio-rng.ko.xz"
// and "virtio_rng" both become "virtio_rng".
func kmodName(s string) string {
	s = filepath.Base(s)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, ext)
	}
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

// kmodIsModuleFile says whether a file name is a kernel module.
func kmodIsModuleFile(name string) bool {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}

// kmodIndex maps canonical module names to their files under dir/kernel.
func kmodIndex(dir string) (map[string]string, error) {
	idx := map[string]string{}
	root := filepath.Join(dir, "kernel")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && kmodIsModuleFile(d.Name()) {
			idx[kmodName(d.Name())] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("indexing kernel modules in %s: %w", root, err)
	}
	return idx, nil
}

// kmodBuiltin reads dir/modules.builtin (if present) into a set of
// canonical names of the modules compiled into the kernel.
func kmodBuiltin(dir string) (map[string]bool, error) {
	set := map[string]bool{}
	f, err := os.Open(filepath.Join(dir, "modules.builtin"))
	if errors.Is(err, fs.ErrNotExist) {
		return set, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading builtin module list: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			set[kmodName(line)] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading builtin module list: %w", err)
	}
	return set, nil
}

// kmodRead reads a module file, decompressing .ko.gz with the standard
// library and .ko.xz/.ko.zst with the host's xz or zstd tool.
func kmodRead(ctx context.Context, path string) ([]byte, error) {
	switch {
	case strings.HasSuffix(path, ".ko"):
		return os.ReadFile(path)
	case strings.HasSuffix(path, ".ko.gz"):
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("decompressing %s: %w", path, err)
		}
		return io.ReadAll(zr)
	}
	tool := "xz"
	if strings.HasSuffix(path, ".zst") {
		tool = "zstd"
	}
	if _, err := exec.LookPath(tool); err != nil {
		return nil, fmt.Errorf("decompressing %s: needs the %s tool on the host: %w", path, tool, err)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, tool, "-dc", path)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("decompressing %s: %w: %s", path, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// kmodDepends returns the module names in the depends= field of an ELF
// module's .modinfo section.
func kmodDepends(data []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("parsing module ELF: %w", err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("module has no .modinfo section")
	}
	info, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("reading .modinfo: %w", err)
	}
	var deps []string
	for _, field := range bytes.Split(info, []byte{0}) {
		v, ok := bytes.CutPrefix(field, []byte("depends="))
		if !ok {
			continue
		}
		for _, d := range strings.Split(string(v), ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, kmodName(d))
			}
		}
	}
	return deps, nil
}

// kmodResolve finds the wanted modules under dir and their dependencies
// (read from each module's .modinfo, recursively) and returns them in an
// order the kernel can load them: every module after its dependencies.
// Modules that are built in or absent are skipped.
func kmodResolve(ctx context.Context, dir string, wanted []string) ([]kmodFile, error) {
	idx, err := kmodIndex(dir)
	if err != nil {
		return nil, err
	}
	builtin, err := kmodBuiltin(dir)
	if err != nil {
		return nil, err
	}
	r := kmodResolver{ctx: ctx, idx: idx, builtin: builtin, state: map[string]int{}}
	for _, name := range wanted {
		if err := r.visit(kmodName(name), nil); err != nil {
			return nil, err
		}
	}
	return r.order, nil
}

// kmodResolver is a depth-first topological sort over module dependencies.
type kmodResolver struct {
	ctx     context.Context
	idx     map[string]string
	builtin map[string]bool
	state   map[string]int // 1: being visited, 2: done
	order   []kmodFile
}

// loads says whether name is a module file to load: part of this kernel's
// modules and not built in.
func (r *kmodResolver) loads(name string) bool {
	_, ok := r.idx[name]
	return ok && !r.builtin[name]
}

func (r *kmodResolver) visit(name string, chain []string) error {
	switch r.state[name] {
	case 1:
		return fmt.Errorf("kernel module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
	case 2:
		return nil
	}
	if !r.loads(name) {
		r.state[name] = 2 // built in, or not part of this kernel: nothing to load
		return nil
	}
	if err := r.ctx.Err(); err != nil {
		return err
	}
	r.state[name] = 1
	path := r.idx[name]
	data, err := kmodRead(r.ctx, path)
	if err != nil {
		return fmt.Errorf("reading kernel module %s: %w", name, err)
	}
	deps, err := kmodDepends(data)
	if err != nil {
		return fmt.Errorf("reading kernel module %s (%s): %w", name, path, err)
	}
	var loaded []string
	for _, d := range deps {
		if err := r.visit(d, append(chain, name)); err != nil {
			return err
		}
		if r.loads(d) {
			loaded = append(loaded, d)
		}
	}
	r.state[name] = 2
	r.order = append(r.order, kmodFile{Name: name, Path: path, Data: data, Deps: loaded})
	return nil
}
