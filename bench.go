package smolvm

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Bench modes: how the measured VMs come to be.
const (
	BenchCold    = "cold"    // created and booted from nothing
	BenchRestore = "restore" // restored from a snapshot (bench_modes.go)
	BenchPool    = "pool"    // taken from a warm pool (bench_modes.go)
)

// Bench teardowns: how a measured VM ends.
const (
	BenchTeardownStop = "stop" // graceful stop (guest powers off), then delete
	BenchTeardownKill = "kill" // delete while running (the VMM is killed)
)

// The phases a cold-mode VM goes through, in order.
const (
	PhaseCreate = "create" // New: config, kernel, image lookup, disk, row
	PhaseStart  = "start"  // Start: boot until the guest agent is ready
	PhaseExec1  = "exec1"  // first Run of `true`
	PhaseExec2  = "exec2"  // second Run of `true`
	PhaseStop   = "stop"   // graceful Stop (teardown stop only)
	PhaseDelete = "delete" // Delete: of the stopped VM, or of the running one (teardown kill)
	PhaseTotal  = "total"  // create through delete
)

// BenchOptions configure Bench.
type BenchOptions struct {
	VMs      int     `json:"vms"`           // measured VMs, one after another (default 5)
	Image    string  `json:"image"`         // default "tiny"
	Kernel   string  `json:"kernel"`        // default: found as New finds it
	Net      NetMode `json:"net,omitempty"` // the VMs' network (default: as New chooses; restore and pool compare on user)
	Mode     string  `json:"mode"`          // BenchCold (default), BenchRestore or BenchPool
	Teardown string  `json:"teardown"`      // BenchTeardownStop (default) or BenchTeardownKill
	Baseline bool    `json:"baseline"`      // also time a bare QEMU boot of the same kernel, and ssh where available
	DiskGiB  int     `json:"disk_gib"`      // also time creating a VM from a DiskGiB rootfs beside cp of it; 0 = skip
	// Progress receives one line per VM as the run goes; nil is quiet.
	Progress io.Writer `json:"-"`
}

// BenchReport is what Bench measured. Times are milliseconds.
type BenchReport struct {
	Host      BenchHost       `json:"host"`
	Options   BenchOptions    `json:"options"`
	Phases    []BenchPhase    `json:"phases"`
	Memory    BenchMemory     `json:"memory"`
	Baselines []BenchBaseline `json:"baselines,omitempty"`
	Disk      *BenchDisk      `json:"disk,omitempty"`
	Compare   *BenchCompare   `json:"compare,omitempty"` // restore or pool beside cold (bench_modes.go)
	VMs       []BenchVM       `json:"vms"`
}

// BenchHost says where and on what the figures were measured.
type BenchHost struct {
	CPUs          int       `json:"cpus"`
	CPUModel      string    `json:"cpu_model"`
	Backend       string    `json:"backend"`
	Accel         string    `json:"accel"` // kvm or tcg
	Kernel        string    `json:"kernel"`
	KernelVersion string    `json:"kernel_version"`
	KernelSource  string    `json:"kernel_source"` // built, installed, host, cache, flag, apt
	Image         string    `json:"image"`
	Started       time.Time `json:"started"`
}

// BenchPhase is one phase's statistics over the measured VMs.
type BenchPhase struct {
	Name string     `json:"name"`
	Ms   BenchStats `json:"ms"`
}

// BenchMemory is the host memory of an idle VM (after its two execs), KiB.
type BenchMemory struct {
	VMMRSS        BenchStats `json:"vmm_rss_kib"`
	VMMPss        BenchStats `json:"vmm_pss_kib"`
	SupervisorRSS BenchStats `json:"supervisor_rss_kib"`
	SupervisorPss BenchStats `json:"supervisor_pss_kib"`
}

// BenchBaseline is a reference measured in the same run, with the ratio of
// the compared phase's p50 to its p50. Stats is nil, and Note says why,
// when it could not be measured here.
type BenchBaseline struct {
	Name    string      `json:"name"`
	Ms      *BenchStats `json:"ms,omitempty"`
	Compare string      `json:"compare,omitempty"` // the phase it is set against
	Ratio   float64     `json:"ratio,omitempty"`   // phase p50 / baseline p50
	Note    string      `json:"note,omitempty"`
}

// BenchVM is one measured VM's samples.
type BenchVM struct {
	ID            string             `json:"id"`
	Ms            map[string]float64 `json:"ms"`
	VMMRSS        int64              `json:"vmm_rss_kib"`
	VMMPss        int64              `json:"vmm_pss_kib"`
	SupervisorRSS int64              `json:"supervisor_rss_kib"`
	SupervisorPss int64              `json:"supervisor_pss_kib"`
}

// Bench measures the life of VMs phase by phase (create, start, two
// execs, stop, delete), one VM after another so that they do not compete,
// after one unmeasured VM that builds whatever is cached (image,
// initramfs). With Baseline it times, interleaved with the VMs, a bare
// QEMU boot of the same kernel to an initramfs that prints and powers off,
// and ssh into a VM when this smolvm has an ssh command. Every VM it makes
// is deleted, also on error.
func Bench(ctx context.Context, opts BenchOptions, opt ...Option) (*BenchReport, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	h, err := openHost(ctx, opt)
	if err != nil {
		return nil, err
	}
	defer h.close()
	// Measured VMs report nothing: the TCG warning once per VM would bury
	// the figures. The warm-up VM keeps the caller's progress (image builds).
	quiet := append(slices.Clone(opt), WithProgress(nil))
	b := &bencher{opts: opts, warmOpt: opt, opt: quiet, h: h, tag: benchTag()}
	return b.run(ctx)
}

func (o BenchOptions) withDefaults() (BenchOptions, error) {
	if o.VMs == 0 {
		o.VMs = 5
	}
	if o.VMs < 1 {
		return o, fmt.Errorf("%w --vms %d: want at least 1", ErrInvalid, o.VMs)
	}
	if o.DiskGiB < 0 {
		return o, fmt.Errorf("%w --disk-gib %d: want 0 (skip) or more", ErrInvalid, o.DiskGiB)
	}
	if o.Image == "" {
		o.Image = "tiny"
	}
	switch o.Mode {
	case "":
		o.Mode = BenchCold
	case BenchCold:
	case BenchRestore, BenchPool:
	default:
		return o, fmt.Errorf("%w bench mode %q: want cold, restore or pool", ErrInvalid, o.Mode)
	}
	switch o.Teardown {
	case "":
		o.Teardown = BenchTeardownStop
	case BenchTeardownStop, BenchTeardownKill:
	default:
		return o, fmt.Errorf("%w teardown %q: want stop or kill", ErrInvalid, o.Teardown)
	}
	return o, nil
}

// bencher is one Bench run.
type bencher struct {
	opts    BenchOptions
	warmOpt []Option // for the warm-up VM
	opt     []Option // for measured VMs
	h       *host
	tag     string // names this run's VMs: bench-TAG-N
}

func benchTag() string {
	var b [3]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (b *bencher) progress(format string, args ...any) {
	if b.opts.Progress != nil {
		fmt.Fprintf(b.opts.Progress, format+"\n", args...)
	}
}

func (b *bencher) run(ctx context.Context) (*BenchReport, error) {
	rep := &BenchReport{Options: b.opts, Host: BenchHost{
		CPUs: runtime.NumCPU(), CPUModel: benchCPUModel(), Image: b.opts.Image, Started: time.Now().UTC(),
	}}
	b.progress("warming up (one unmeasured vm: builds the image and initramfs if needed)")
	if _, err := b.oneVM(ctx, "warm", b.warmOpt, &rep.Host); err != nil {
		return nil, fmt.Errorf("warm-up vm: %w", err)
	}
	var bare *benchBare
	if b.opts.Baseline {
		var err error
		if bare, err = b.newBare(ctx, rep.Host); err != nil {
			return nil, fmt.Errorf("bare boot baseline: %w", err)
		}
		defer bare.close()
	}
	for i := range b.opts.VMs {
		v, err := b.oneVM(ctx, fmt.Sprint(i), b.opt, nil)
		if err != nil {
			return nil, fmt.Errorf("vm %d: %w", i, err)
		}
		rep.VMs = append(rep.VMs, v)
		line := fmt.Sprintf("vm %d/%d: start %.0f ms, exec1 %.1f ms, delete %.1f ms, total %.0f ms", i+1, b.opts.VMs,
			v.Ms[PhaseStart], v.Ms[PhaseExec1], v.Ms[PhaseDelete], v.Ms[PhaseTotal])
		if bare != nil {
			ms, err := bare.boot(ctx)
			if err != nil {
				return nil, fmt.Errorf("bare boot %d: %w", i, err)
			}
			line += fmt.Sprintf("; bare boot %.0f ms", ms)
		}
		b.progress("%s", line)
	}
	b.summarise(rep)
	if b.opts.Mode != BenchCold {
		cmp, err := b.compareMode(ctx)
		if err != nil {
			return nil, fmt.Errorf("%s mode: %w", b.opts.Mode, err)
		}
		rep.Compare = cmp
	}
	if bare != nil {
		rep.Baselines = append(rep.Baselines, bare.baseline(rep))
		rep.Baselines = append(rep.Baselines, b.sshBaseline(ctx, rep))
	}
	if b.opts.DiskGiB > 0 {
		d, err := b.diskCompare(ctx)
		if err != nil {
			return nil, fmt.Errorf("disk comparison: %w", err)
		}
		rep.Disk = d
	}
	return rep, nil
}

// phases lists the phases this run measures, in order.
func (b *bencher) phases() []string {
	ps := []string{PhaseCreate, PhaseStart, PhaseExec1, PhaseExec2}
	if b.opts.Teardown == BenchTeardownStop {
		ps = append(ps, PhaseStop)
	}
	return append(ps, PhaseDelete, PhaseTotal)
}

func (b *bencher) summarise(rep *BenchReport) {
	for _, name := range b.phases() {
		var s []float64
		for _, v := range rep.VMs {
			s = append(s, v.Ms[name])
		}
		rep.Phases = append(rep.Phases, BenchPhase{Name: name, Ms: benchSummarise(s)})
	}
	var vr, vp, sr, sp []float64
	for _, v := range rep.VMs {
		vr, vp = append(vr, float64(v.VMMRSS)), append(vp, float64(v.VMMPss))
		sr, sp = append(sr, float64(v.SupervisorRSS)), append(sp, float64(v.SupervisorPss))
	}
	rep.Memory = BenchMemory{VMMRSS: benchSummarise(vr), VMMPss: benchSummarise(vp),
		SupervisorRSS: benchSummarise(sr), SupervisorPss: benchSummarise(sp)}
}

// Phase returns the statistics of the named phase (zero when not measured).
func (r *BenchReport) Phase(name string) BenchStats {
	for _, p := range r.Phases {
		if p.Name == name {
			return p.Ms
		}
	}
	return BenchStats{}
}

// oneVM takes one VM through its life, timing each phase. host, when not
// nil, is filled in from the VM (backend, accel, kernel).
func (b *bencher) oneVM(ctx context.Context, suffix string, opt []Option, host *BenchHost) (v BenchVM, err error) {
	v.ID = "bench-" + b.tag + "-" + suffix
	v.Ms = map[string]float64{}
	begin := time.Now()
	vm, err := New(ctx, Config{Name: v.ID, Image: b.opts.Image, Kernel: b.opts.Kernel, Net: b.opts.Net}, opt...)
	if err != nil {
		return v, err
	}
	defer vm.Close()
	deleted := false
	defer func() {
		if !deleted {
			vm.Delete(context.WithoutCancel(ctx))
		}
	}()
	lap := begin
	mark := func(phase string) {
		now := time.Now()
		v.Ms[phase] = benchMs(now.Sub(lap))
		lap = now
	}
	mark(PhaseCreate)
	if err := vm.Start(ctx); err != nil {
		return v, err
	}
	mark(PhaseStart)
	for _, phase := range []string{PhaseExec1, PhaseExec2} {
		res, err := vm.Run(ctx, []string{"true"}, RunOptions{})
		if err != nil {
			return v, err
		}
		if res.ExitCode != 0 {
			return v, fmt.Errorf("true exited %d in the guest", res.ExitCode)
		}
		mark(phase)
	}
	if err := b.sample(ctx, vm, &v, host); err != nil {
		return v, err
	}
	lap = time.Now() // sampling memory is not part of any phase
	if b.opts.Teardown == BenchTeardownStop {
		if err := vm.Stop(ctx); err != nil {
			return v, err
		}
		mark(PhaseStop)
	}
	deleted = true
	if err := vm.Delete(ctx); err != nil {
		return v, err
	}
	mark(PhaseDelete)
	var sum float64
	for _, ms := range v.Ms {
		sum += ms
	}
	v.Ms[PhaseTotal] = sum
	return v, nil
}

// sample reads the idle VM's memory and, for host, what it runs on.
func (b *bencher) sample(ctx context.Context, vm *VM, v *BenchVM, host *BenchHost) error {
	info, err := vm.Info(ctx)
	if err != nil {
		return err
	}
	vmm, err := benchReadProcMem("/proc", info.VMMPID)
	if err != nil {
		return fmt.Errorf("reading the vmm's memory: %w", err)
	}
	sup, err := benchReadProcMem("/proc", info.SupervisorPID)
	if err != nil {
		return fmt.Errorf("reading the supervisor's memory: %w", err)
	}
	v.VMMRSS, v.VMMPss, v.SupervisorRSS, v.SupervisorPss = vmm.RSS, vmm.Pss, sup.RSS, sup.Pss
	if host == nil {
		return nil
	}
	r, err := vm.h.get(ctx, vm.id)
	if err != nil {
		return err
	}
	rec, err := vm.record(r)
	if err != nil {
		return err
	}
	host.Backend, host.Accel = info.Backend, info.Accel
	host.Kernel, host.KernelVersion, host.KernelSource = rec.Kernel.Path, rec.Kernel.Version, rec.Kernel.Source
	return nil
}

// benchCPUModel is /proc/cpuinfo's first "model name" ("" if none).
func benchCPUModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, val, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(val)
		}
	}
	return ""
}
