package smolvm

import (
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/smolvm/smolvm/internal/agentproto"
	"github.com/smolvm/smolvm/internal/image"
	"github.com/smolvm/smolvm/internal/store"
	"github.com/smolvm/smolvm/internal/supervisor"
	"github.com/smolvm/smolvm/internal/vmm"
	"github.com/smolvm/smolvm/internal/vmm/backends"
)

// Start boots the VM and returns once its guest agent is ready. The VM is
// then owned by its supervisor and outlives the caller.
func (vm *VM) Start(ctx context.Context) error {
	if err := vm.start(ctx); err != nil {
		return fmt.Errorf("starting vm %s: %w", vm.id, err)
	}
	return nil
}

func (vm *VM) start(ctx context.Context) error {
	h := vm.h
	var prev store.Status
	r, err := h.store.UpdateVM(ctx, vm.id, func(v *store.VM) error {
		switch v.Status {
		case store.StatusCreated, store.StatusStopped, store.StatusError:
		default:
			return fmt.Errorf("%w: it is %s", ErrState, v.Status)
		}
		prev = v.Status
		v.Status, v.Error = store.StatusStarting, ""
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	if prev == store.StatusError {
		prev = store.StatusStopped
	}
	if err := vm.launch(ctx, r); err != nil {
		// Back to where it was, with the reason kept for inspect.
		h.store.UpdateVM(context.WithoutCancel(ctx), vm.id, func(v *store.VM) error {
			v.Status, v.Error = prev, err.Error()
			v.SupervisorPID, v.VMMPID = 0, 0
			return nil
		})
		return err
	}
	return nil
}

// launch writes the VM's launch plan and spawns its supervisor.
func (vm *VM) launch(ctx context.Context, r store.VM) error {
	h := vm.h
	rec, err := vm.record(r)
	if err != nil {
		return err
	}
	if err := checkBacking(rec); err != nil {
		return err
	}
	if err := checkStatic(h.opts.exe); err != nil {
		return err
	}
	initrd, err := image.BuildInitramfs(ctx, h.path("initramfs"), h.opts.exe, rec.Kernel)
	if err != nil {
		return fmt.Errorf("building initramfs: %w", err)
	}
	be, reason, err := backends.Select(ctx, rec.Config.Backend, os.Getenv, backends.Options{})
	if err != nil {
		return err
	}
	backend := be.Name()
	if reason.Warning != "" && h.opts.progress != nil {
		fmt.Fprintln(h.opts.progress, "smolvm: warning:", reason.Warning)
	}
	spec := vmSpec(r.Dir, rec, initrd)
	if backend == "firecracker" {
		// Firecracker boots only an uncompressed ELF kernel.
		if spec.Kernel, err = h.vmlinux(rec.Kernel); err != nil {
			return err
		}
	}
	plan := supervisor.Plan{Backend: backend, VMM: spec, Net: h.netPlan(rec.Config), Jailer: jailerPlan(rec.Config)}
	if plan.Jailer != nil && backend != "firecracker" {
		return fmt.Errorf("%w: the jailer needs the firecracker backend, and %s was chosen", ErrInvalid, backend)
	}
	b, err := json.Marshal(plan)
	if err != nil {
		return err
	}
	if _, err := h.store.UpdateVM(ctx, vm.id, func(v *store.VM) error {
		v.Spec, v.Backend = b, backend
		return nil
	}); err != nil {
		return err
	}
	os.Remove(filepath.Join(r.Dir, supervisor.ConsoleFile))
	args := []string{"__supervise", "--data-dir", h.dir, vm.id}
	_, err = supervisor.Spawn(ctx, h.opts.exe, args, r.Dir)
	return err
}

// jailerPlan is the supervisor's view of cfg.Jailer.
func jailerPlan(cfg Config) *supervisor.JailerPlan {
	if j := cfg.Jailer; j != nil {
		return &supervisor.JailerPlan{UID: j.UID, GID: j.GID, ChrootBase: j.ChrootBase}
	}
	return nil
}

// vmlinux returns an uncompressed ELF kernel for k, extracting it from the
// bzImage once and caching it.
func (h *host) vmlinux(k image.Kernel) (string, error) {
	if isELF(k.Path) {
		return k.Path, nil
	}
	fi, err := os.Stat(k.Path)
	if err != nil {
		return "", err
	}
	dst := h.path("kernels", fmt.Sprintf("vmlinux-%s-%d", k.Version, fi.Size()))
	if _, err := os.Stat(dst); err == nil {
		return dst, nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", err
	}
	if err := image.ExtractVmlinux(k.Path, dst); err != nil {
		return "", fmt.Errorf("extracting vmlinux for firecracker: %w", err)
	}
	return dst, nil
}

// checkStatic refuses a dynamically linked smolvm binary: it becomes the
// guest's /init, where there is no dynamic loader.
func checkStatic(exe string) error {
	f, err := elf.Open(exe)
	if err != nil {
		return fmt.Errorf("reading the smolvm binary %s: %w", exe, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%w: the smolvm binary %s is dynamically linked, but it must run as the guest's init: build it with CGO_ENABLED=0 (scripts/setup does)", ErrInvalid, exe)
		}
	}
	return nil
}

func isELF(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var magic [4]byte
	_, err = io.ReadFull(f, magic[:])
	return err == nil && string(magic[:]) == "\x7fELF"
}

// guestKernelArgs are the kernel parameters every guest boots with, ahead
// of Config.BootArgs (which can override them). They give a distribution
// kernel the start a kernel configured for microVMs (Firecracker's,
// smolvm's own) has by construction:
//   - cryptomgr.notests: no crypto self-tests at boot (220 ms of a 1.3 s
//     kernel start under TCG, a few ms on KVM);
//   - init_on_alloc=0: pages and slab objects are not zeroed twice, once
//     on allocation and once by whoever fills them (Debian turns this
//     hardening on; ~0.19 s of `smolvm run` under TCG, 6 alternating runs
//     each). It guards the guest kernel's memory against the guest's own
//     programs; memory a guest receives from the host is zeroed by the
//     host kernel whatever the guest does, so the sandbox's boundary is
//     unchanged.
const guestKernelArgs = "quiet cryptomgr.notests init_on_alloc=0"

// DefaultBootArgs returns the kernel parameters smolvm gives every guest;
// Config.BootArgs follows them on the command line, so it can override
// any of them.
func DefaultBootArgs() string { return guestKernelArgs }

// vmSpec is the VMM's view of the VM.
func vmSpec(dir string, rec record, initrd string) vmm.Spec {
	cfg := rec.Config
	cmdline := append([]string{
		agentproto.ParamRoot + "=/dev/vda",
		agentproto.ParamHostname + "=" + cfg.Name,
	}, strings.Fields(guestKernelArgs)...)
	root := vmm.Disk{Path: rec.Disk, Format: rec.DiskFormat}
	if cfg.DiskMode == DiskShared {
		root.ReadOnly = true
		cmdline = append(cmdline, agentproto.ParamRootRO+"=1")
	}
	if cfg.BootArgs != "" {
		cmdline = append(cmdline, cfg.BootArgs)
	}
	disks := []vmm.Disk{root}
	for _, d := range cfg.Drives {
		disks = append(disks, vmm.Disk{Path: d.Path, ReadOnly: d.ReadOnly})
	}
	return vmm.Spec{
		ID: cfg.Name, Dir: dir, Kernel: rec.Kernel.Path, Initrd: initrd,
		Cmdline: strings.Join(cmdline, " "), VCPUs: cfg.VCPUs, MemoryMiB: cfg.MemoryMiB,
		Disks: disks, ConsoleLog: filepath.Join(dir, supervisor.ConsoleFile),
	}
}

// Stop shuts the guest down cleanly (escalating to a kill if it does not
// stop in time) and waits until it has. Stopping a VM that is not running
// does nothing.
func (vm *VM) Stop(ctx context.Context) error {
	r, err := vm.h.get(ctx, vm.id)
	if err != nil {
		return err
	}
	if r.Status == store.StatusPaused {
		vm.Resume(ctx) // a paused guest cannot power itself off; a failure leaves the stop to escalate
	}
	if r.Status != store.StatusRunning && r.Status != store.StatusStopping && r.Status != store.StatusPaused {
		return nil
	}
	if err := supervisor.Stop(ctx, r.Dir, false); err != nil && !errors.Is(err, supervisor.ErrNotRunning) {
		return fmt.Errorf("stopping vm %s: %w", vm.id, err)
	}
	return nil
}

// Delete removes the VM: a running one is killed at once (its disk is being
// thrown away), then its files and its row go. With RetainDisk its root disk
// is kept and its path logged.
func (vm *VM) Delete(ctx context.Context) error {
	if err := vm.h.remove(ctx, vm.id); err != nil {
		return fmt.Errorf("deleting vm %s: %w", vm.id, err)
	}
	return nil
}

func (h *host) remove(ctx context.Context, id string) error {
	r, err := h.get(ctx, id)
	if err != nil {
		return err
	}
	switch r.Status {
	case store.StatusRunning, store.StatusStopping, store.StatusStarting, store.StatusPaused:
		if err := supervisor.Stop(ctx, r.Dir, true); err != nil && !errors.Is(err, supervisor.ErrNotRunning) {
			return err
		}
	}
	killLeftovers(r)
	var rec record
	json.Unmarshal(r.Config, &rec)
	if err := h.removeNetLeftovers(ctx, r, rec.Config); err != nil {
		return err
	}
	if rec.Config.RetainDisk && rec.DiskOwned {
		kept := h.path("retained", id+".ext4")
		if err := os.MkdirAll(filepath.Dir(kept), 0o755); err != nil {
			return err
		}
		if err := os.Rename(rec.Disk, kept); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("keeping disk: %w", err)
		}
		h.log.Info("kept disk", "vm", id, "path", kept)
	}
	if err := os.RemoveAll(r.Dir); err != nil {
		return err
	}
	if err := h.store.DeleteVM(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return nil
}
