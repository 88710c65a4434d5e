package smolvm

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/smolvm/smolvm/internal/vmm"
	"github.com/smolvm/smolvm/internal/vmm/qemu"
)

// benchBareMarker is what the bare initramfs's init prints before it powers
// off; a boot counts only if the console shows it.
const benchBareMarker = "BARE-BOOT-OK"

// benchBareBound bounds one bare boot.
const benchBareBound = 2 * time.Minute

// benchBusybox is the static busybox the bare initramfs is made of.
const benchBusybox = "/bin/busybox"

// benchBare boots the VMs' kernel on the QEMU backend, with the same
// machine, CPU, memory and command line options as a smolvm VM, to an
// initramfs of busybox whose init prints a marker and powers off: the cost
// of booting that kernel at all, without smolvm's agent, disk or
// supervisor.
type benchBare struct {
	dir    string // scratch: the initramfs and one run dir per boot
	initrd string
	host   BenchHost
	note   string // set when this run cannot measure it
	ms     []float64
	n      int
}

func (b *bencher) newBare(ctx context.Context, host BenchHost) (*benchBare, error) {
	if host.Backend != "qemu" {
		return &benchBare{note: "the bare boot runs on QEMU; these VMs ran on " + host.Backend}, nil
	}
	dir, err := os.MkdirTemp(b.h.dir, "bench-")
	if err != nil {
		return nil, err
	}
	bb := &benchBare{dir: dir, initrd: filepath.Join(dir, "bare.cpio"), host: host}
	if err := benchWriteBareInitramfs(bb.initrd, benchBusybox); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if _, err := bb.boot(ctx); err != nil { // warm-up, unmeasured
		os.RemoveAll(dir)
		return nil, err
	}
	bb.ms = nil
	return bb, nil
}

// boot times one bare boot: QEMU started to QEMU exited after the guest
// powered off.
func (bb *benchBare) boot(ctx context.Context) (float64, error) {
	if bb.note != "" {
		return 0, nil
	}
	bb.n++
	dir := filepath.Join(bb.dir, fmt.Sprint(bb.n))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	spec := vmm.Spec{
		ID: "bench-bare", Dir: dir, Kernel: bb.host.Kernel, Initrd: bb.initrd, Cmdline: guestKernelArgs, // as smolvm boots its guests: only the machinery differs
		VCPUs: DefaultVCPUs, MemoryMiB: DefaultMemoryMiB, ConsoleLog: filepath.Join(dir, "console.log"),
	}
	ctx, cancel := context.WithTimeout(ctx, benchBareBound)
	defer cancel()
	start := time.Now()
	inst, err := qemu.New(qemu.Options{}).Launch(ctx, spec)
	if err != nil {
		return 0, err
	}
	select {
	case <-inst.Done():
	case <-ctx.Done():
		inst.Kill()
		<-inst.Done()
		return 0, fmt.Errorf("the bare guest did not power off within %v: %w", benchBareBound, ctx.Err())
	}
	ms := benchMs(time.Since(start))
	if err := inst.Err(); err != nil {
		return 0, fmt.Errorf("qemu: %w", err)
	}
	if out, _ := os.ReadFile(spec.ConsoleLog); !bytes.Contains(out, []byte(benchBareMarker)) {
		return 0, fmt.Errorf("the bare guest powered off without printing %s; console: %q", benchBareMarker, benchTail(out, 300))
	}
	bb.ms = append(bb.ms, ms)
	return ms, nil
}

func (bb *benchBare) baseline(rep *BenchReport) BenchBaseline {
	bl := BenchBaseline{Name: "bare qemu boot to init + poweroff", Compare: PhaseStart, Note: bb.note}
	if bb.note != "" || len(bb.ms) == 0 {
		return bl
	}
	s := benchSummarise(bb.ms)
	bl.Ms = &s
	bl.Ratio = rep.Phase(PhaseStart).P50 / s.P50
	return bl
}

func (bb *benchBare) close() {
	if bb.dir != "" {
		os.RemoveAll(bb.dir)
	}
}

// benchWriteBareInitramfs writes a newc cpio holding busybox and an init
// script that prints the marker and powers off.
func benchWriteBareInitramfs(path, busybox string) error {
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("reading busybox (apt-get install busybox-static): %w", err)
	}
	if err := benchCheckStatic(bin); err != nil {
		return fmt.Errorf("%s: %w (apt-get install busybox-static)", busybox, err)
	}
	init := "#!/bin/busybox sh\n/bin/busybox echo " + benchBareMarker + "\n/bin/busybox poweroff -f\n"
	var buf bytes.Buffer
	w := benchCPIO{w: &buf}
	w.add("bin", fs.ModeDir|0o755, nil)
	w.add("bin/busybox", 0o755, bin)
	w.add("init", 0o755, []byte(init))
	w.add("TRAILER!!!", 0, nil)
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// benchCheckStatic fails unless bin is an ELF executable without an
// interpreter (a dynamic busybox cannot run alone in an initramfs).
func benchCheckStatic(bin []byte) error {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("dynamically linked")
		}
	}
	return nil
}

// benchCPIO writes newc ("070701") cpio entries.
type benchCPIO struct {
	w   *bytes.Buffer
	ino int
}

func (c *benchCPIO) add(name string, mode fs.FileMode, data []byte) {
	c.ino++
	m := uint32(mode.Perm())
	switch {
	case mode.IsDir():
		m |= 0o040000
	case name != "TRAILER!!!":
		m |= 0o100000
	}
	nlink := 1
	if mode.IsDir() {
		nlink = 2
	}
	fmt.Fprintf(c.w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, m, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	c.w.WriteString(name)
	c.w.WriteByte(0)
	c.pad()
	c.w.Write(data)
	c.pad()
}

func (c *benchCPIO) pad() {
	for c.w.Len()%4 != 0 {
		c.w.WriteByte(0)
	}
}

// sshBaseline times OpenSSH's `ssh VM true` (the command line VM.SSH
// gives, against the agent's SSH server) into a running VM, beside the
// warm agent exec.
func (b *bencher) sshBaseline(ctx context.Context, rep *BenchReport) BenchBaseline {
	bl := BenchBaseline{Name: "ssh VM true (OpenSSH)", Compare: PhaseExec2}
	if _, err := exec.LookPath("ssh"); err != nil {
		bl.Note = "not available (no ssh client: apt-get install openssh-client)"
		return bl
	}
	id := "bench-" + b.tag + "-ssh"
	vm, err := New(ctx, Config{Name: id, Image: b.opts.Image, Kernel: b.opts.Kernel, Net: b.opts.Net}, b.opt...)
	if err != nil {
		bl.Note = "not available: " + err.Error()
		return bl
	}
	defer vm.Close()
	defer vm.Delete(context.WithoutCancel(ctx))
	if err := vm.Start(ctx); err != nil {
		bl.Note = "not available: " + err.Error()
		return bl
	}
	info, err := vm.SSH(ctx, SSHOptions{})
	if err != nil {
		bl.Note = "not available: " + err.Error()
		return bl
	}
	argv := append(slices.Clone(info.Command), "true")
	var ms []float64
	for range b.opts.VMs + 1 {
		start := time.Now()
		out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			bl.Note = fmt.Sprintf("not available: %s: %v: %s", strings.Join(argv, " "), err, benchTail(out, 200))
			return bl
		}
		ms = append(ms, benchMs(time.Since(start)))
	}
	s := benchSummarise(ms[1:]) // the first one also makes the guest read its keys
	bl.Ms = &s
	bl.Ratio = rep.Phase(PhaseExec2).P50 / s.P50
	return bl
}

func benchTail(b []byte, n int) string {
	s := strings.TrimSpace(string(b))
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}
