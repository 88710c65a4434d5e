package smolvm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/smolvm/smolvm/internal/image"
	"github.com/smolvm/smolvm/internal/vmm/backends"
	"github.com/smolvm/smolvm/internal/vmm/firecracker"
	"golang.org/x/sys/unix"
)

// Check is one finding of Doctor.
type Check struct {
	Name   string `json:"name"`
	Status string `json:"status"` // "ok", "warn" or "fail"
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Doctor checks what smolvm needs on this host and says how to fix what is
// missing. A "fail" means VMs cannot run; a "warn" means something is slow
// or a feature is unavailable.
func Doctor(ctx context.Context, opt ...Option) []Check {
	var out []Check
	add := func(name, status, detail, fix string) {
		out = append(out, Check{Name: name, Status: status, Detail: detail, Fix: fix})
	}
	if err := firecracker.CheckKVM("/dev/kvm"); err == nil {
		add("kvm", "ok", "/dev/kvm is usable: hardware virtualisation", "")
	} else {
		add("kvm", "warn", err.Error()+": VMs run under QEMU software emulation (TCG), several times slower",
			"enable hardware virtualisation (VT-x/AMD-V; nested virtualisation on a cloud VM), load kvm_intel or kvm_amd, and give this user read-write access to /dev/kvm")
	}
	if path, err := exec.LookPath("qemu-system-x86_64"); err == nil {
		v, _ := exec.CommandContext(ctx, path, "--version").Output()
		add("qemu", "ok", strings.SplitN(string(v), "\n", 2)[0], "")
	}
	usable := false
	for _, b := range backends.Report(ctx, os.Getenv, backends.Options{}) {
		name := "backend " + b.Name
		switch {
		case b.Selected:
			usable = true
			detail := fmt.Sprintf("selected, with %s", b.Accel)
			if b.Warning != "" {
				add(name, "warn", detail+": "+b.Warning, b.Install)
			} else {
				add(name, "ok", detail, "")
			}
		case b.Usable:
			usable = true
			add(name, "ok", "usable ("+b.Accel+"), not selected", "")
		default:
			add(name, "warn", "unusable: "+b.Problem, b.Install)
		}
	}
	if _, _, err := backends.Select(ctx, "", os.Getenv, backends.Options{}); err != nil || !usable {
		add("backend", "fail", fmt.Sprintf("no backend can run VMs here: %v", err), "apt-get install qemu-system-x86")
	}
	for _, tool := range []struct{ bin, pkg, why string }{
		{"mkfs.ext4", "e2fsprogs", "building images"},
		{"resize2fs", "e2fsprogs", "--disk-size"},
		{"debugfs", "e2fsprogs", "inspecting images"},
		{"debootstrap", "debootstrap", "building the base image"},
		{"busybox", "busybox-static", "building the tiny image"},
	} {
		if path, err := exec.LookPath(tool.bin); err == nil {
			add(tool.bin, "ok", path, "")
		} else {
			add(tool.bin, "warn", fmt.Sprintf("%s not found: needed for %s", tool.bin, tool.why), "apt-get install "+tool.pkg)
		}
	}
	h, err := openHost(ctx, opt)
	if err != nil {
		add("data dir", "fail", err.Error(), "pass --data-dir to a directory you can write")
		return out
	}
	defer h.close()
	if unix.Access(h.dir, unix.W_OK) == nil {
		add("data dir", "ok", h.dir+" is writable", "")
	} else {
		add("data dir", "fail", h.dir+" is not writable", "pass --data-dir to a directory you can write, or run as root")
	}
	k, err := image.FindKernel(ctx, image.KernelOptions{CacheDir: h.path("kernels"), Logger: h.log})
	switch {
	case err == nil && k.Source == "built":
		add("kernel", "ok", fmt.Sprintf("%s (built by smolvm)", k.Path), "")
	case err == nil:
		// Not a problem, but the fastest setup is one command away.
		add("kernel", "ok", fmt.Sprintf("%s (%s); a kernel smolvm builds boots guests and starts their processes about twice as fast under emulation (docs/benchmarks.md)", k.Path, k.Source),
			"optional: smolvm kernel build (once, ~12 min on 2 cores); new VMs then use it")
	default:
		add("kernel", "warn", err.Error(), "smolvm fetches the distribution's cloud kernel with apt on first use; or pass --kernel PATH")
	}
	return out
}
