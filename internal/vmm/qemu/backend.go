package qemu

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"

	"github.com/smolvm/smolvm/internal/vmm"
)

// Options configure a Backend. The zero value is usable.
type Options struct {
	// Binary is the QEMU system emulator to run, a path or a name looked up
	// on PATH. Default: qemu-system-x86_64 (qemu-system-aarch64 on arm64).
	Binary string
	// Accel forces "kvm" or "tcg"; empty picks KVM where it is usable
	// (see Backend.Accel), else TCG.
	Accel string
	// Logger receives start and exit records; nil discards them.
	Logger *slog.Logger
}

// Backend launches QEMU microVMs. It holds no per-VM state and is safe for
// concurrent use.
type Backend struct {
	binary  string
	accel   string
	machine machine
	log     *slog.Logger

	// Knobs for benchmarks; the defaults are the measured best.
	tcgCPU    string
	tcgThread string

	// Host facts, injectable for tests.
	kvmDevice string // "/dev/kvm"
	procRoot  string // "/" : where sys/ and proc/ are read from
}

var _ vmm.Backend = (*Backend)(nil)

// New returns a QEMU backend configured by opts.
func New(opts Options) *Backend {
	m := machineX86
	if runtime.GOARCH == "arm64" {
		m = machineARM64
	}
	b := &Backend{
		binary:    opts.Binary,
		accel:     opts.Accel,
		machine:   m,
		log:       opts.Logger,
		kvmDevice: "/dev/kvm",
		procRoot:  "/",
	}
	if b.binary == "" {
		b.binary = m.binary
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	return b
}

// Name returns "qemu".
func (b *Backend) Name() string { return "qemu" }

// Check reports whether QEMU can run here: the binary must be present and
// answer --version. Without /dev/kvm it still works, under TCG. The error
// wraps vmm.ErrUnavailable and names what to install.
func (b *Backend) Check(ctx context.Context) error {
	if err := b.validAccel(); err != nil {
		return fmt.Errorf("%w: %w", vmm.ErrUnavailable, err)
	}
	// Finding the binary is enough: running it (Version) costs tens of
	// milliseconds, and Check runs on every VM start.
	if _, err := exec.LookPath(b.binary); err != nil {
		return fmt.Errorf("%w: finding %s: %w (install it: apt-get install %s)", vmm.ErrUnavailable, b.binary, err, b.aptPackage())
	}
	if b.accel == "kvm" && !kvmUsable(b.kvmDevice, b.procRoot) {
		return fmt.Errorf("%w: kvm requested but %s cannot be opened read-write or the cpu lacks vmx/svm", vmm.ErrUnavailable, b.kvmDevice)
	}
	return nil
}

func (b *Backend) validAccel() error {
	switch b.accel {
	case "", "kvm", "tcg":
		return nil
	}
	return fmt.Errorf("unknown accelerator %q (want kvm or tcg)", b.accel)
}

func (b *Backend) aptPackage() string {
	if b.machine.binary == machineARM64.binary {
		return "qemu-system-arm"
	}
	return "qemu-system-x86"
}

var versionRE = regexp.MustCompile(`QEMU emulator version (\d+\.\d+(?:\.\d+)?)`)

// Version runs the binary with --version and returns QEMU's version ("7.2.22").
func (b *Backend) Version(ctx context.Context) (string, error) {
	path, err := exec.LookPath(b.binary)
	if err != nil {
		return "", fmt.Errorf("finding %s: %w", b.binary, err)
	}
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("running %s --version: %w", path, err)
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		line, _, _ := bytes.Cut(out, []byte("\n"))
		return "", fmt.Errorf("running %s --version: unexpected output %q", path, line)
	}
	return string(m[1]), nil
}

// Accel names the accelerator VMs launched now would use: "kvm" when
// /dev/kvm opens read-write and the CPU has vmx/svm (or Options.Accel forced
// it), else "tcg".
func (b *Backend) Accel() string {
	if b.accel != "" {
		return b.accel
	}
	if kvmUsable(b.kvmDevice, b.procRoot) {
		return "kvm"
	}
	return "tcg"
}

// kvmUsable says whether QEMU can use KVM: the device must open read-write
// and, on x86, the CPU must advertise hardware virtualisation (vmx or svm).
// The second test matters on hosts whose /dev/kvm is a paravirtual KVM
// (kvm-pvm) that runs only specially built guests: QEMU aborts there with
// "failed to set MSR".
func kvmUsable(dev, root string) bool {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	if runtime.GOARCH != "amd64" {
		return true
	}
	return vmm.CPUHasVirt(filepath.Join(root, "proc/cpuinfo"))
}

// hostTSCKHz returns the host's TSC frequency in kHz, from the kernel's
// tsc_freq_khz when it exports one, else from /proc/cpuinfo's "cpu MHz";
// 0 when neither is readable.
func hostTSCKHz(root string) int {
	b, err := os.ReadFile(filepath.Join(root, "sys/devices/system/cpu/cpu0/tsc_freq_khz"))
	if err == nil {
		if khz, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && khz > 0 {
			return khz
		}
	}
	f, err := os.Open(filepath.Join(root, "proc/cpuinfo"))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz <= 0 {
			return 0
		}
		return int(mhz * 1000)
	}
	return 0
}
