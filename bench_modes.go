package smolvm

import (
	"context"
	"fmt"
	"time"
)

// Targets of the fast modes: their first command as a fraction of a cold
// boot's first command, measured in the same run.
const (
	BenchRestoreTarget = 0.2
	BenchPoolTarget    = 0.05
)

// BenchCompare sets a fast mode's time to a first command beside a cold
// boot's, measured alternately in the same run with the same configuration
// (user-mode networking, which clones can share).
type BenchCompare struct {
	Mode   string     `json:"mode"`
	Cold   BenchStats `json:"cold_ms"`  // New + Start + first Run
	Fast   BenchStats `json:"fast_ms"`  // NewFromSnapshot + first Run, or Acquire + first Run
	Ratio  float64    `json:"ratio"`    // Fast p50 / Cold p50
	Target float64    `json:"target"`   // the ratio to stay under
	Setup  float64    `json:"setup_ms"` // snapshot or pool creation, once, unmeasured above
}

// compareMode measures b.opts.VMs pairs of (cold boot → first command,
// fast mode → first command), alternating so that drift hits both alike.
func (b *bencher) compareMode(ctx context.Context) (*BenchCompare, error) {
	cfg := Config{Image: b.opts.Image, Kernel: b.opts.Kernel, Net: NetUser}
	if b.opts.Net != "" && b.opts.Net != NetTap {
		cfg.Net = b.opts.Net
	}
	cmp := &BenchCompare{Mode: b.opts.Mode, Target: BenchRestoreTarget}
	t0 := time.Now()
	var fast func(ctx context.Context, i int) (float64, error)
	switch b.opts.Mode {
	case BenchRestore:
		snap, cleanup, err := b.benchSnapshot(ctx, cfg)
		if err != nil {
			return nil, err
		}
		defer cleanup()
		fast = func(ctx context.Context, i int) (float64, error) {
			return b.timeFirstCommand(ctx, func() (*VM, error) {
				return NewFromSnapshot(ctx, snap, fmt.Sprintf("bench-%s-r%d", b.tag, i), b.opt...)
			})
		}
	case BenchPool:
		cmp.Target = BenchPoolTarget
		pool := "bench-" + b.tag
		if _, err := CreatePool(ctx, PoolConfig{Name: pool, Size: 1, Config: cfg}, b.opt...); err != nil {
			return nil, err
		}
		defer RemovePool(context.WithoutCancel(ctx), pool, b.opt...)
		fast = func(ctx context.Context, i int) (float64, error) {
			if err := b.waitPoolReady(ctx, pool); err != nil {
				return 0, err
			}
			return b.timeFirstCommand(ctx, func() (*VM, error) { return Acquire(ctx, pool, b.opt...) })
		}
	}
	cmp.Setup = benchMs(time.Since(t0))
	var cold, quick []float64
	for i := range b.opts.VMs {
		c, err := b.timeFirstCommand(ctx, func() (*VM, error) {
			vm, err := New(ctx, Config{Name: fmt.Sprintf("bench-%s-c%d", b.tag, i), Image: cfg.Image, Kernel: cfg.Kernel, Net: cfg.Net}, b.opt...)
			if err != nil {
				return nil, err
			}
			if err := vm.Start(ctx); err != nil {
				vm.Delete(context.WithoutCancel(ctx))
				vm.Close()
				return nil, err
			}
			return vm, nil
		})
		if err != nil {
			return nil, fmt.Errorf("cold vm %d: %w", i, err)
		}
		f, err := fast(ctx, i)
		if err != nil {
			return nil, fmt.Errorf("%s vm %d: %w", b.opts.Mode, i, err)
		}
		cold, quick = append(cold, c), append(quick, f)
		b.progress("%s %d/%d: cold boot → first command %.0f ms, %s → first command %.1f ms", b.opts.Mode, i+1, b.opts.VMs, c, b.opts.Mode, f)
	}
	cmp.Cold, cmp.Fast = benchSummarise(cold), benchSummarise(quick)
	if cmp.Cold.P50 > 0 {
		cmp.Ratio = cmp.Fast.P50 / cmp.Cold.P50
	}
	return cmp, nil
}

// timeFirstCommand times get (which returns a running VM) and a first
// Run of true in it, then deletes the VM (unmeasured).
func (b *bencher) timeFirstCommand(ctx context.Context, get func() (*VM, error)) (float64, error) {
	t0 := time.Now()
	vm, err := get()
	if err != nil {
		return 0, err
	}
	defer vm.Close()
	defer vm.Delete(context.WithoutCancel(ctx))
	res, err := vm.Run(ctx, []string{"true"}, RunOptions{})
	if err != nil {
		return 0, err
	}
	if res.ExitCode != 0 {
		return 0, fmt.Errorf("true exited %d in the guest", res.ExitCode)
	}
	return benchMs(time.Since(t0)), nil
}

// benchSnapshot boots a VM of cfg, snapshots it and deletes it; cleanup
// removes the snapshot.
func (b *bencher) benchSnapshot(ctx context.Context, cfg Config) (string, func(), error) {
	cfg.Name = "bench-" + b.tag + "-base"
	vm, err := New(ctx, cfg, b.opt...)
	if err != nil {
		return "", nil, err
	}
	defer vm.Close()
	defer vm.Delete(context.WithoutCancel(ctx))
	if err := vm.Start(ctx); err != nil {
		return "", nil, err
	}
	snap, err := vm.Snapshot(ctx, "bench-"+b.tag)
	if err != nil {
		return "", nil, err
	}
	return snap.Name, func() { RemoveSnapshot(context.WithoutCancel(ctx), snap.Name, b.opt...) }, nil
}

// waitPoolReady waits until the pool has a ready VM again (its background
// refill), so that each acquire measures a warm pool.
func (b *bencher) waitPoolReady(ctx context.Context, pool string) error {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		info, err := b.h.poolInfo(ctx, pool)
		if err != nil {
			return err
		}
		if info.Ready > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pool %s did not refill within 5 minutes", pool)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
