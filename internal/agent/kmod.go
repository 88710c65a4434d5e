package agent

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// loadModules loads the kernel modules listed (one path a line, in load
// order) in the file at list, giving each the parameters the kernel command
// line sets for it ("virtio_mmio.device=..."), as modprobe would. A missing
// list means there is nothing to load; a module already loaded is fine; a
// module that fails is logged and skipped (whatever needed it fails later
// with a clearer error). It returns how many modules were loaded.
func loadModules(log *slog.Logger, list, cmdline string) (int, error) {
	f, err := os.Open(list)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading module list: %w", err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		path := strings.TrimSpace(sc.Text())
		if path == "" {
			continue
		}
		name := moduleName(path)
		params := moduleParams(cmdline, name)
		if err := loadModule(path, params); err != nil {
			log.Warn("skipping kernel module", "module", name, "err", err)
			continue
		}
		log.Debug("loaded kernel module", "module", name, "params", params)
		n++
	}
	return n, sc.Err()
}

func loadModule(path, params string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", path, err)
	}
	defer unix.Close(fd)
	err = unix.FinitModule(fd, params, 0)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("finit_module %s: %w", path, err)
	}
	return nil
}

// moduleName is a module file's canonical name: "virtio-rng.ko" → "virtio_rng".
func moduleName(path string) string {
	return strings.ReplaceAll(strings.TrimSuffix(filepath.Base(path), ".ko"), "-", "_")
}

// moduleParams collects "name.param=value" words of the kernel command line
// for module name, as "param=value ..." for finit_module.
func moduleParams(cmdline, name string) string {
	var out []string
	for _, w := range strings.Fields(cmdline) {
		mod, param, ok := strings.Cut(w, ".")
		if ok && param != "" && strings.ReplaceAll(mod, "-", "_") == name {
			out = append(out, param)
		}
	}
	return strings.Join(out, " ")
}
