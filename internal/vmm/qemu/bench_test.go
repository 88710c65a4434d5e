package qemu

import (
	"context"
	"testing"
	"time"
)

// BenchmarkBareBoot times Launch to guest power-off: the kernel boots, the
// initramfs prints the marker and powers off, QEMU exits. Sub-benchmarks
// compare TCG settings; the first is the backend's default. Reports
// launch-ms, the time Launch took to return (QEMU up, monitor answering).
//
//	SMOLVM_VM_TESTS=1 go test ./internal/vmm/qemu -run '^$' -bench BareBoot -benchtime 10x
func BenchmarkBareBoot(b *testing.B) {
	variants := []struct {
		name      string
		vcpus     int
		tcgCPU    string
		tcgThread string
	}{
		{"default", 1, "", ""},
		{"tcg-cpu=qemu64", 1, "qemu64", ""},
		{"smp2", 2, "", ""}, // QEMU 7.2's default for x86 is thread=multi
		{"smp2-thread=single", 2, "", "single"},
	}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			env := requireVM(b)
			var launch time.Duration
			for b.Loop() {
				dir := runDirFor(b)
				be := New(Options{})
				be.tcgCPU, be.tcgThread = v.tcgCPU, v.tcgThread
				spec := testSpec(env, dir, "poweroff")
				spec.VCPUs = v.vcpus
				ctx, cancel := context.WithTimeout(context.Background(), bootBound)
				start := time.Now()
				inst, err := be.launch(ctx, spec)
				if err != nil {
					cancel()
					b.Fatalf("launch: %v", err)
				}
				launch += time.Since(start)
				select {
				case <-inst.Done():
				case <-ctx.Done():
					inst.Kill()
					<-inst.Done()
					cancel()
					b.Fatalf("guest did not power off within %v", bootBound)
				}
				cancel()
				if err := inst.Err(); err != nil {
					b.Fatalf("qemu: %v", err)
				}
			}
			b.ReportMetric(float64(launch.Milliseconds())/float64(b.N), "launch-ms")
		})
	}
}
