package qemu

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/smolvm/smolvm/internal/agentproto"
	"github.com/smolvm/smolvm/internal/vmm"
)

// Defaults applied when a Spec leaves a size at zero.
const (
	defaultVCPUs     = 1
	defaultMemoryMiB = 512
)

// The file descriptors QEMU inherits (ExtraFiles start at 3).
const (
	qmpFD   = 3
	agentFD = 4
)

// machine is what differs between host architectures.
type machine struct {
	binary  string // default binary name
	machine string // -M value
	console string // kernel console device
	tsc     bool   // x86: pass the host TSC frequency to the guest under TCG
}

var (
	machineX86 = machine{
		binary:  "qemu-system-x86_64",
		machine: "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on",
		console: "ttyS0",
		tsc:     true,
	}
	machineARM64 = machine{
		binary:  "qemu-system-aarch64",
		machine: "virt,gic-version=max",
		console: "ttyAMA0",
	}
)

// launchConfig is everything besides the Spec that shapes the command line.
type launchConfig struct {
	machine   machine
	accel     string    // "kvm" or "tcg"
	tcgCPU    string    // -cpu under TCG; "" leaves QEMU's default model
	tcgThread string    // "single" or "multi"; "" leaves QEMU's default (multi for x86 on x86)
	tscKHz    int       // host TSC frequency; 0 = unknown (x86 TCG only)
	ram       ramConfig // how guest RAM is backed (ram.go); zero: QEMU's default
}

// validate rejects specs QEMU would misread, with a one-line reason.
func validate(spec vmm.Spec) error {
	switch {
	case spec.Dir == "":
		return errors.New("spec has no run directory")
	case spec.Kernel == "":
		return errors.New("spec has no kernel")
	case spec.VCPUs < 0:
		return fmt.Errorf("vcpus must be positive, got %d", spec.VCPUs)
	case spec.MemoryMiB < 0:
		return fmt.Errorf("memory must be positive, got %d MiB", spec.MemoryMiB)
	}
	for i, d := range spec.Disks {
		if d.Path == "" {
			return fmt.Errorf("disk %d has no path", i)
		}
		if _, err := diskFormat(d); err != nil {
			return fmt.Errorf("disk %s: %w", d.Path, err)
		}
	}
	for i, n := range spec.Net {
		if err := validateNet(n); err != nil {
			return fmt.Errorf("network interface %d: %w", i, err)
		}
	}
	return nil
}

// validateNet checks one network interface: a known mode, a tap name for
// tap mode, a MAC QEMU will parse.
func validateNet(n vmm.NetIf) error {
	switch n.Mode {
	case "user":
	case "tap":
		if n.Tap == "" || len(n.Tap) > 15 || strings.ContainsAny(n.Tap, ", /") {
			return fmt.Errorf("tap name %q: want 1-15 characters, no comma, space or slash", n.Tap)
		}
	default:
		return fmt.Errorf("unknown mode %q (want user or tap)", n.Mode)
	}
	if n.MAC != "" {
		if hw, err := net.ParseMAC(n.MAC); err != nil || len(hw) != 6 {
			return fmt.Errorf("mac address %q: want six colon-separated hex bytes", n.MAC)
		}
	}
	if n.RxRateBps != 0 || n.TxRateBps != 0 {
		return errors.New("qemu has no per-interface rate limit (shape the tap on the host instead)")
	}
	return nil
}

func diskFormat(d vmm.Disk) (string, error) {
	switch d.Format {
	case "", "raw":
		return "raw", nil
	case "qcow2":
		return "qcow2", nil
	}
	return "", fmt.Errorf("unknown disk format %q (want raw or qcow2)", d.Format)
}

// args builds QEMU's argv (without the binary) for a validated spec. The QMP
// and agent sockets are inherited listening fds qmpFD and agentFD.
func args(spec vmm.Spec, cfg launchConfig) []string {
	vcpus, mem := spec.VCPUs, spec.MemoryMiB
	if vcpus == 0 {
		vcpus = defaultVCPUs
	}
	if mem == 0 {
		mem = defaultMemoryMiB
	}
	a := []string{
		"-M", cfg.machine.machine,
		"-accel", accelArg(cfg),
		"-cpu", cpuArg(cfg),
		"-m", strconv.Itoa(mem),
		"-smp", strconv.Itoa(vcpus),
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-kernel", spec.Kernel,
	}
	if spec.Initrd != "" {
		a = append(a, "-initrd", spec.Initrd)
	}
	a = append(a, "-append", cmdline(spec.Cmdline, cfg))
	if spec.ConsoleLog != "" {
		a = append(a,
			"-chardev", "file,id=console,path="+escape(spec.ConsoleLog)+",append=on",
			"-serial", "chardev:console")
	} else {
		a = append(a, "-serial", "null")
	}
	for i, d := range spec.Disks {
		a = append(a, diskArgs(i, d)...)
	}
	for i, n := range spec.Net {
		a = append(a, netArgs(i, n)...)
	}
	a = append(a, cfg.ram.args(mem)...)
	return append(a,
		"-chardev", fmt.Sprintf("socket,id=agent,fd=%d,server=on,wait=off", agentFD),
		"-device", "virtio-serial-device",
		"-device", "virtserialport,chardev=agent,name="+agentproto.PortName,
		"-chardev", fmt.Sprintf("socket,id=qmp,fd=%d,server=on,wait=off", qmpFD),
		"-mon", "chardev=qmp,mode=control",
	)
}

func accelArg(cfg launchConfig) string {
	if cfg.accel == "tcg" && cfg.tcgThread != "" {
		return "tcg,thread=" + cfg.tcgThread
	}
	return cfg.accel
}

// tcgCPUx86 is the guest CPU model under TCG on x86. "max" offers the
// x86-64-v2 features (SSE4.2, POPCNT) current distributions' userspace
// requires, unlike QEMU's default qemu64. ERMS and FSRM are turned off: with
// them the kernel copies memory with `rep movsb`, which TCG emulates a byte
// at a time; unpacking smolvm's ~18 MiB initramfs took ~0.3 s longer in the
// guest with them on (guest clock at power-off, 5 runs each, interleaved:
// 1.38-1.62 s with max, 1.10-1.19 s without).
const tcgCPUx86 = "max,erms=off,fsrm=off"

// cpuArg picks the guest CPU model.
func cpuArg(cfg launchConfig) string {
	switch {
	case cfg.accel == "kvm":
		return "host"
	case cfg.tcgCPU != "":
		return cfg.tcgCPU
	case cfg.machine.tsc: // x86
		return tcgCPUx86
	}
	return "max"
}

func diskArgs(i int, d vmm.Disk) []string {
	format, _ := diskFormat(d) // validated
	ro := "off"
	if d.ReadOnly {
		ro = "on"
	}
	id := "d" + strconv.Itoa(i)
	return []string{
		"-drive", "if=none,id=" + id + ",file=" + escape(d.Path) + ",format=" + format +
			",readonly=" + ro + ",cache=writeback,discard=unmap",
		"-device", "virtio-blk-device,drive=" + id,
	}
}

// NetdevID is the QEMU netdev id of the i-th interface of Spec.Net, which
// monitor commands such as hostfwd_add name.
func NetdevID(i int) string { return "n" + strconv.Itoa(i) }

// netArgs is one guest NIC: a netdev "n<i>" (QEMU's user-mode stack, or a
// tap the host made, opened by name with no scripts) and a virtio-net device
// on the microvm's virtio-mmio bus.
func netArgs(i int, n vmm.NetIf) []string {
	id := NetdevID(i)
	netdev := "user,id=" + id
	if n.Mode == "tap" {
		netdev = "tap,id=" + id + ",ifname=" + n.Tap + ",script=no,downscript=no"
	}
	dev := "virtio-net-device,netdev=" + id
	if n.MAC != "" {
		dev += ",mac=" + n.MAC
	}
	return []string{"-netdev", netdev, "-device", dev}
}

// cmdline appends the options the backend needs to the caller's kernel
// command line, leaving any the caller already set.
func cmdline(base string, cfg launchConfig) string {
	words := strings.Fields(base)
	have := map[string]bool{}
	for _, w := range words {
		k, _, _ := strings.Cut(w, "=")
		have[k] = true
	}
	add := func(k, v string) {
		if !have[k] {
			words = append(words, k+"="+v)
		}
	}
	add("console", cfg.machine.console)
	add("panic", "-1")
	add("reboot", "t")
	if cfg.accel == "tcg" && cfg.tscKHz > 0 && cfg.machine.tsc {
		// Without it the kernel's TSC calibration under TCG hangs ~1 boot in 3.
		add("tsc_early_khz", strconv.Itoa(cfg.tscKHz))
	}
	return strings.Join(words, " ")
}

// escape doubles commas, QEMU's option separator, inside a value.
func escape(s string) string { return strings.ReplaceAll(s, ",", ",,") }
