package smolvm

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smolvm/smolvm/internal/vmtest"
)

func TestBenchSummarise(t *testing.T) {
	tests := []struct {
		name    string
		samples []float64
		want    BenchStats
	}{
		{"none", nil, BenchStats{}},
		{"one", []float64{7}, BenchStats{N: 1, P50: 7, P95: 7, Mean: 7, Min: 7, Max: 7}},
		{"two: p50 is the lower", []float64{20, 10}, BenchStats{N: 2, P50: 10, P95: 20, Mean: 15, Min: 10, Max: 20}},
		{"four", []float64{4, 1, 3, 2}, BenchStats{N: 4, P50: 2, P95: 4, Mean: 2.5, Min: 1, Max: 4}},
		{"five, unsorted", []float64{5, 3, 1, 4, 2}, BenchStats{N: 5, P50: 3, P95: 5, Mean: 3, Min: 1, Max: 5}},
		{"twenty: p95 is the 19th", []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 100},
			BenchStats{N: 20, P50: 10, P95: 19, Mean: 14.5, Min: 1, Max: 100}},
		{"ties", []float64{2, 2, 2, 9}, BenchStats{N: 4, P50: 2, P95: 9, Mean: 3.75, Min: 2, Max: 9}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]float64(nil), tt.samples...)
			if got := benchSummarise(tt.samples); got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			for i := range in {
				if in[i] != tt.samples[i] {
					t.Fatalf("samples reordered: %v", tt.samples)
				}
			}
		})
	}
}

func TestBenchPercentile(t *testing.T) {
	sorted := []float64{10, 20, 30, 40, 50, 60, 70, 80, 90, 100}
	for p, want := range map[float64]float64{0: 10, 1: 10, 10: 10, 11: 20, 50: 50, 51: 60, 90: 90, 95: 100, 100: 100} {
		if got := benchPercentile(sorted, p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
}

func TestBenchOptions(t *testing.T) {
	tests := []struct {
		name    string
		in      BenchOptions
		want    BenchOptions
		wantErr error
		errHas  string
	}{
		{"defaults", BenchOptions{}, BenchOptions{VMs: 5, Image: "tiny", Mode: BenchCold, Teardown: BenchTeardownStop}, nil, ""},
		{"kill teardown", BenchOptions{VMs: 2, Teardown: "kill"}, BenchOptions{VMs: 2, Image: "tiny", Mode: BenchCold, Teardown: BenchTeardownKill}, nil, ""},
		{"restore", BenchOptions{Mode: "restore"}, BenchOptions{VMs: 5, Image: "tiny", Mode: BenchRestore, Teardown: BenchTeardownStop}, nil, ""},
		{"pool", BenchOptions{Mode: "pool"}, BenchOptions{VMs: 5, Image: "tiny", Mode: BenchPool, Teardown: BenchTeardownStop}, nil, ""},
		{"unknown mode", BenchOptions{Mode: "warm"}, BenchOptions{}, ErrInvalid, "want cold, restore or pool"},
		{"negative vms", BenchOptions{VMs: -1}, BenchOptions{}, ErrInvalid, "--vms -1"},
		{"unknown teardown", BenchOptions{Teardown: "nuke"}, BenchOptions{}, ErrInvalid, "teardown"},
		{"negative disk", BenchOptions{DiskGiB: -2}, BenchOptions{}, ErrInvalid, "--disk-gib"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.in.withDefaults()
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("err = %v, want %v containing %q", err, tt.wantErr, tt.errHas)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestBenchProcMem(t *testing.T) {
	root := t.TempDir()
	write := func(pid, name, body string) {
		os.MkdirAll(filepath.Join(root, pid), 0o755)
		os.WriteFile(filepath.Join(root, pid, name), []byte(body), 0o644)
	}
	write("10", "status", "Name:\tqemu\nVmPeak:\t  999 kB\nVmRSS:\t  296448 kB\nThreads:\t4\n")
	write("10", "smaps_rollup", "00400000-7fff [rollup]\nRss:  296448 kB\nPss:  281088 kB\nPss_Anon: 1 kB\n")
	write("11", "status", "Name:\tx\nVmRSS:\t12 MB\n")
	write("11", "smaps_rollup", "Pss: 1 kB\n")
	write("12", "status", "Name:\tkthread\n")
	got, err := benchReadProcMem(root, 10)
	if err != nil || got != (benchProcMem{RSS: 296448, Pss: 281088}) {
		t.Fatalf("pid 10: %+v, %v", got, err)
	}
	for pid, want := range map[int]string{11: "malformed VmRSS", 12: "no VmRSS", 13: "no such file"} {
		if _, err := benchReadProcMem(root, pid); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("pid %d: err = %v, want %q", pid, err, want)
		}
	}
	// The real thing: this process.
	self, err := benchReadProcMem("/proc", os.Getpid())
	if err != nil || self.RSS <= 0 || self.Pss <= 0 {
		t.Fatalf("self: %+v, %v", self, err)
	}
}

// TestBenchBareInitramfs checks the bare initramfs with cpio(1): the three
// entries, the init script, and busybox byte for byte.
func TestBenchBareInitramfs(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("reads the archive back with cpio(1), which is missing")
	}
	dir := t.TempDir()
	busybox := benchBusybox
	data, err := os.ReadFile(busybox)
	if err == nil {
		err = benchCheckStatic(data)
	}
	if err != nil {
		if vmtest.Enabled() {
			t.Fatalf("%s=1 but %s is not a static busybox (%v): apt-get install busybox-static", vmtest.EnvVar, busybox, err)
		}
		t.Skipf("needs a static %s (%v): apt-get install busybox-static", busybox, err)
	}
	archive := filepath.Join(dir, "bare.cpio")
	if err := benchWriteBareInitramfs(archive, busybox); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	os.Mkdir(out, 0o755)
	cmd := exec.Command("cpio", "-idm", "--quiet", "-F", archive)
	cmd.Dir = out
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v: %s", err, b)
	}
	init, _ := os.ReadFile(filepath.Join(out, "init"))
	if !strings.Contains(string(init), "echo "+benchBareMarker) || !strings.HasPrefix(string(init), "#!/bin/busybox sh\n") {
		t.Fatalf("init: %q", init)
	}
	got, _ := os.ReadFile(filepath.Join(out, "bin/busybox"))
	if !bytes.Equal(got, data) {
		t.Fatalf("busybox differs after the round trip (%d vs %d bytes)", len(got), len(data))
	}
	if fi, err := os.Stat(filepath.Join(out, "init")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("init mode: %v %v", fi, err)
	}
	// A dynamic binary is refused with the package to install.
	if err := benchWriteBareInitramfs(filepath.Join(dir, "x.cpio"), "/bin/sh"); err == nil || !strings.Contains(err.Error(), "busybox-static") {
		t.Fatalf("dynamic busybox: err = %v", err)
	}
}

// TestBenchCLI runs `smolvm bench --vms 2 --image tiny --json --baseline`
// with the built binary and checks the report's shape: every phase
// measured and positive, memory read, the bare boot baseline measured and
// the ssh one either measured or saying why not.
func TestBenchCLI(t *testing.T) {
	vmtest.Require(t)
	bin := vmtest.Binary(t)
	cmd := exec.Command(bin, "--data-dir", vmtest.DataDir(t), "bench", "--vms", "2", "--image", "tiny", "--json", "--baseline")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("smolvm bench: %v\n%s", err, stderr.Bytes())
	}
	var rep BenchReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("decoding the report: %v\n%s", err, out)
	}
	if len(rep.VMs) != 2 {
		t.Fatalf("%d vms in the report, want 2", len(rep.VMs))
	}
	want := []string{PhaseCreate, PhaseStart, PhaseExec1, PhaseExec2, PhaseStop, PhaseDelete, PhaseTotal}
	if len(rep.Phases) != len(want) {
		t.Fatalf("phases %+v, want %v", rep.Phases, want)
	}
	for i, p := range rep.Phases {
		if p.Name != want[i] || p.Ms.N != 2 || p.Ms.Min <= 0 || p.Ms.P50 < p.Ms.Min || p.Ms.Max < p.Ms.P95 {
			t.Errorf("phase %d: %+v", i, p)
		}
	}
	for _, v := range rep.VMs {
		for _, name := range want {
			if v.Ms[name] <= 0 {
				t.Errorf("vm %s: phase %s = %v", v.ID, name, v.Ms[name])
			}
		}
		if v.VMMRSS <= 0 || v.VMMPss <= 0 || v.SupervisorRSS <= 0 || v.SupervisorPss <= 0 || v.VMMPss > v.VMMRSS {
			t.Errorf("vm %s memory: %+v", v.ID, v)
		}
	}
	if rep.Host.Backend == "" || rep.Host.Accel == "" || rep.Host.Kernel == "" || rep.Host.CPUs <= 0 {
		t.Errorf("host: %+v", rep.Host)
	}
	if len(rep.Baselines) != 2 {
		t.Fatalf("baselines: %+v", rep.Baselines)
	}
	bare, ssh := rep.Baselines[0], rep.Baselines[1]
	if bare.Ms == nil || bare.Ms.N != 2 || bare.Ms.Min <= 0 || bare.Ratio <= 0 || bare.Compare != PhaseStart {
		t.Errorf("bare boot baseline: %+v", bare)
	}
	if ssh.Ms == nil && !strings.HasPrefix(ssh.Note, "not available") {
		t.Errorf("ssh baseline neither measured nor explained: %+v", ssh)
	}
	// Nothing left behind: every bench VM was deleted.
	ls, err := exec.Command(bin, "--data-dir", vmtest.DataDir(t), "ls", "--json").Output()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(ls, []byte(`"bench-`)) {
		t.Fatalf("bench vms left behind: %s", ls)
	}
	if m, _ := filepath.Glob(filepath.Join(vmtest.DataDir(t), "bench-*")); len(m) > 0 {
		t.Fatalf("bench scratch left behind: %v", m)
	}
}
