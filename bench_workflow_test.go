package smolvm

import (
	"context"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/vmtest"
)

// BenchmarkExecVsSSH measures, in one run on one VM: `exec true` through
// the agent beside `ssh VM true` with OpenSSH (p50/p95 of alternating
// samples, so drift hits both alike; $SMOLVM_BENCH_SAMPLES of each, 100
// by default, which leaves five samples above the p95 rather than two),
// then file upload and download beside the raw channel rate (dd through
// exec stdin/stdout), each moving $SMOLVM_BENCH_BYTES (default 1 GiB). The
// guest kernel is the one New finds unless $SMOLVM_BENCH_KERNEL names one
// (such as the vmlinux that `smolvm kernel build` installs). Run it once:
//
//	SMOLVM_VM_TESTS=1 go test -run '^$' -bench ExecVsSSH -benchtime 1x -timeout 60m .
func BenchmarkExecVsSSH(b *testing.B) {
	vmtest.Require(b, "ssh")
	samples := envInt(b, "SMOLVM_BENCH_SAMPLES", 100)
	size := int64(envInt(b, "SMOLVM_BENCH_BYTES", 1<<30))
	ctx := context.Background()
	kernel := os.Getenv("SMOLVM_BENCH_KERNEL")
	vm, err := New(ctx, Config{Image: "tiny", Net: NetNone, MemoryMiB: 3072, Kernel: kernel},
		WithDataDir(vmtest.DataDir(b)), WithExecutable(vmtest.Binary(b)))
	if err != nil {
		b.Fatal(err)
	}
	defer vm.Close()
	defer vm.Delete(context.Background())
	if err := vm.Start(ctx); err != nil {
		b.Fatal(err)
	}
	info, err := vm.SSH(ctx, SSHOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if kernel == "" {
		vi, _ := vm.Info(ctx)
		kernel = "the default, " + vi.Kernel
	}
	b.Logf("guest kernel %s", kernel)
	sshTrue := append(append([]string{}, info.Command[1:]...), "-o", "BatchMode=yes", "true")
	for i := 0; i < b.N; i++ {
		var agent, ssh []time.Duration
		for j := 0; j < samples; j++ {
			t0 := time.Now()
			if res, err := vm.Run(ctx, []string{"true"}, RunOptions{}); err != nil || res.ExitCode != 0 {
				b.Fatalf("exec true: %v %+v", err, res)
			}
			agent = append(agent, time.Since(t0))
			t0 = time.Now()
			if out, err := exec.Command("ssh", sshTrue...).CombinedOutput(); err != nil {
				b.Fatalf("ssh true: %v %s", err, out)
			}
			ssh = append(ssh, time.Since(t0))
		}
		a50, a95 := percentiles(agent)
		s50, s95 := percentiles(ssh)
		b.ReportMetric(ms(a50), "exec-p50-ms")
		b.ReportMetric(ms(a95), "exec-p95-ms")
		b.ReportMetric(ms(s50), "ssh-p50-ms")
		b.ReportMetric(ms(s95), "ssh-p95-ms")
		b.ReportMetric(float64(a50)/float64(s50), "exec/ssh-p50")
		b.Logf("exec true via agent: p50 %.1f ms p95 %.1f ms; ssh true via OpenSSH: p50 %.1f ms p95 %.1f ms; ratio p50 %.3f (%d samples each)",
			ms(a50), ms(a95), ms(s50), ms(s95), float64(a50)/float64(s50), samples)
		throughput(b, ctx, vm, size)
	}
}

// throughput moves size bytes each way as a file and as raw exec streams.
func throughput(b *testing.B, ctx context.Context, vm *VM, size int64) {
	count := strconv.FormatInt(size>>20, 10)
	steps := []struct {
		name string
		run  func() (int64, error)
	}{
		{"raw-down", func() (int64, error) {
			var n countWriter
			_, err := vm.Run(ctx, []string{"dd", "if=/dev/zero", "bs=1M", "count=" + count, "status=none"}, RunOptions{Stdout: &n})
			return n.n, err
		}},
		{"upload", func() (int64, error) {
			return vm.WriteFileFrom(ctx, "/tmp/bench.bin", io.LimitReader(zeros{}, size), 0o644)
		}},
		{"download", func() (int64, error) {
			return vm.ReadFileTo(ctx, "/tmp/bench.bin", io.Discard)
		}},
		{"raw-up", func() (int64, error) {
			vm.Remove(ctx, "/tmp/bench.bin") // room for nothing: dd discards
			_, err := vm.Run(ctx, []string{"dd", "of=/dev/null", "bs=1M", "status=none"}, RunOptions{Stdin: io.LimitReader(zeros{}, size)})
			return size, err
		}},
	}
	for _, s := range steps {
		t0 := time.Now()
		n, err := s.run()
		d := time.Since(t0)
		if err != nil || n != size {
			b.Fatalf("%s: %d bytes, %v", s.name, n, err)
		}
		mbs := float64(n) / 1e6 / d.Seconds()
		b.ReportMetric(mbs, s.name+"-MB/s")
		b.Logf("%-8s %d MiB in %.1f s: %.1f MB/s", s.name, n>>20, d.Seconds(), mbs)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func percentiles(d []time.Duration) (p50, p95 time.Duration) {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)*50/100], s[min(len(s)-1, len(s)*95/100)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}
