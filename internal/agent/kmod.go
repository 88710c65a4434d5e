package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// moduleDevices maps driver modules to the virtio device type they drive
// (the ids /sys/bus/virtio/devices/*/device shows). A driver whose device
// the machine lacks is not loaded, nor are the modules only it needs: each
// costs tens of milliseconds under software emulation.
var moduleDevices = map[string]int{
	"virtio_net":                 0x01,
	"virtio_blk":                 0x02,
	"virtio_console":             0x03,
	"virtio_rng":                 0x04,
	"vmw_vsock_virtio_transport": 0x13,
}

// moduleParamGate names modules loaded only when a kernel command line
// parameter is "1": overlay serves only a read-only root.
var moduleParamGate = map[string]string{
	"overlay": agentproto.ParamRootRO,
}

// kmodEntry is one module of the initramfs's list.
type kmodEntry struct {
	path string
	name string
	deps []string
}

// loadModules loads the kernel modules listed in the file at list (see
// agentproto.InitramfsModuleList), giving each the parameters the kernel
// command line sets for it ("virtio_mmio.device=..."), as modprobe would.
// Modules nothing else depends on and that drive no virtio device
// (virtio_mmio; overlay only for a read-only root) load first, with their
// dependencies; then the drivers of the virtio devices present under sys
// (all of them if none can be seen). A missing list means there is nothing
// to load; a module already loaded is fine; a module that fails is logged
// and skipped (whatever needed it fails later with a clearer error). It
// returns how many modules were loaded.
func loadModules(log *slog.Logger, list, cmdline, sys string) (int, error) {
	entries, err := readModuleList(list)
	if err != nil {
		return 0, err
	}
	always, drivers := splitRoots(rootModules(entries), agentproto.ParseCmdline(cmdline))
	done := map[string]bool{}
	n := loadEntries(log, moduleClosure(entries, always, done), cmdline, done)
	if hasVirtioDevice(sys, -1) {
		var present []string
		for _, d := range drivers {
			if hasVirtioDevice(sys, moduleDevices[d]) {
				present = append(present, d)
			} else {
				log.Debug("no device for kernel module; not loading it", "module", d)
			}
		}
		drivers = present
	}
	n += loadEntries(log, moduleClosure(entries, drivers, done), cmdline, done)
	return n, nil
}

// splitRoots sorts root modules into those always loaded and the drivers
// of virtio devices, leaving out those whose moduleParamGate is not set.
func splitRoots(roots []string, params map[string]string) (always, drivers []string) {
	for _, r := range roots {
		if p, ok := moduleParamGate[r]; ok && params[p] != "1" {
			continue
		}
		if _, ok := moduleDevices[r]; ok {
			drivers = append(drivers, r)
		} else {
			always = append(always, r)
		}
	}
	return always, drivers
}

func loadEntries(log *slog.Logger, es []kmodEntry, cmdline string, done map[string]bool) int {
	n := 0
	for _, e := range es {
		done[e.name] = true
		params := moduleParams(cmdline, e.name)
		if err := loadModule(e.path, params); err != nil {
			log.Warn("skipping kernel module", "module", e.name, "err", err)
			continue
		}
		log.Debug("loaded kernel module", "module", e.name, "params", params)
		n++
	}
	return n
}

// readModuleList reads the list: a module's path, then the names of the
// listed modules it depends on (see agentproto.InitramfsModuleList).
func readModuleList(list string) ([]kmodEntry, error) {
	data, err := os.ReadFile(list)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading module list: %w", err)
	}
	var out []kmodEntry
	for _, line := range strings.Split(string(data), "\n") {
		path, deps, _ := strings.Cut(strings.TrimSpace(line), " ")
		if path == "" {
			continue
		}
		e := kmodEntry{path: path, name: moduleName(path)}
		for _, d := range strings.Split(deps, ",") {
			if d != "" {
				e.deps = append(e.deps, d)
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// rootModules lists, in order, the modules no other listed module needs.
func rootModules(entries []kmodEntry) []string {
	needed := map[string]bool{}
	for _, e := range entries {
		for _, d := range e.deps {
			needed[d] = true
		}
	}
	var roots []string
	for _, e := range entries {
		if !needed[e.name] {
			roots = append(roots, e.name)
		}
	}
	return roots
}

// moduleClosure returns, in list order, the entries that roots need
// (themselves included), leaving out those in done.
func moduleClosure(entries []kmodEntry, roots []string, done map[string]bool) []kmodEntry {
	byName := map[string]kmodEntry{}
	for _, e := range entries {
		byName[e.name] = e
	}
	want := map[string]bool{}
	var visit func(string)
	visit = func(name string) {
		if want[name] || done[name] {
			return
		}
		want[name] = true
		for _, d := range byName[name].deps {
			visit(d)
		}
	}
	for _, r := range roots {
		visit(r)
	}
	var out []kmodEntry
	for _, e := range entries {
		if want[e.name] {
			out = append(out, e)
		}
	}
	return out
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
