package smolvm

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestPoolAcquireConcurrentlyAndRefill(t *testing.T) {
	ctx := context.Background()
	opts := testOpts(t)
	name := "t-pool-" + strings.TrimPrefix(newID(), "vm-")
	const size = 2
	info, err := CreatePool(ctx, PoolConfig{Name: name, Size: size, Config: Config{Image: "tiny", MemoryMiB: 256}}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := RemovePool(context.Background(), name, opts...); err != nil {
			t.Errorf("removing pool: %v", err)
		}
	})
	if info.Ready != size {
		t.Fatalf("pool created with %d ready, want %d", info.Ready, size)
	}
	// More takers than ready VMs: the extra ones get fresh clones.
	const takers = size + 1
	var mu sync.Mutex
	var vms []*VM
	var wg sync.WaitGroup
	for range takers {
		wg.Go(func() {
			vm, err := Acquire(ctx, name, opts...)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			vms = append(vms, vm)
			mu.Unlock()
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, vm := range vms {
		t.Cleanup(func() { vm.Delete(context.Background()); vm.Close() })
		if seen[vm.ID()] {
			t.Errorf("vm %s handed out twice", vm.ID())
		}
		seen[vm.ID()] = true
		if got := runOut(t, vm, "hostname"); got != vm.ID() {
			t.Errorf("acquired vm %s says hostname %q", vm.ID(), got)
		}
	}
	if len(vms) != takers {
		t.Fatalf("%d of %d acquires succeeded", len(vms), takers)
	}
	// The background refill brings the pool back to size. Bounded wait,
	// not a timing assertion: a loaded TCG host restores slowly.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		p := poolByName(t, name)
		if p.Ready == size {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool has %d ready, %d warming after 3 minutes; want %d ready", p.Ready, p.Warming, size)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The refilled members are new VMs, not ones handed out.
	vm, err := Acquire(ctx, name, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Delete(context.Background()); vm.Close() })
	if seen[vm.ID()] {
		t.Errorf("refilled pool handed out %s again", vm.ID())
	}
}

func poolByName(t *testing.T, name string) PoolInfo {
	t.Helper()
	pools, err := Pools(context.Background(), testOpts(t)...)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pools {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("pool %s not listed", name)
	return PoolInfo{}
}

func TestPoolOverMemoryLimitFails(t *testing.T) {
	ctx := context.Background()
	opts := testOpts(t)
	name := "t-pool-big-" + strings.TrimPrefix(newID(), "vm-")
	tests := []struct {
		name string
		pc   PoolConfig
	}{
		{"over an explicit limit", PoolConfig{Name: name, Size: 4, MaxMemoryMiB: 1024, Config: Config{Image: "tiny", MemoryMiB: 512}}},
		{"over the host's memory", PoolConfig{Name: name, Size: 1 << 12, Config: Config{Image: "tiny", MemoryMiB: 64 << 10}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := CreatePool(ctx, tt.pc, opts...)
			if !errors.Is(err, ErrPoolMemory) || !strings.Contains(err.Error(), "MiB") {
				t.Fatalf("CreatePool = %v, want ErrPoolMemory with the figures", err)
			}
			pools, err := Pools(ctx, opts...)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range pools {
				if p.Name == name {
					t.Errorf("pool %s exists after a refused create", name)
				}
			}
			assertNoSnapshot(t, "pool-"+name)
		})
	}
}
