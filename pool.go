package smolvm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/smolvm/smolvm/internal/store"
)

// A warm pool keeps Size VMs ready to hand out. Its VMs are clones of one
// snapshot, taken at pool creation of a VM booted with the pool's
// configuration, so a refill costs a restore rather than a boot.
//
// Refill runs in the background, in a short-lived process: whoever takes a
// VM (Acquire) starts `smolvm __pool-refill NAME` detached, which clones
// until the pool is full again and exits. No daemon is needed, and several
// refillers at once cannot overfill a pool: each reserves a member row in
// a transaction that counts the members first.

// PoolConfig describes a warm pool.
type PoolConfig struct {
	Name string `json:"name"`
	// Config is the configuration of the pool's VMs (its Name is ignored;
	// its Net defaults as for New, and each member gets its own network).
	Config Config `json:"config"`
	// Size is how many ready VMs the pool keeps.
	Size int `json:"size"`
	// MaxMemoryMiB bounds the guest memory of all pools' VMs together;
	// 0 means the host's available memory (MemAvailable) at creation.
	MaxMemoryMiB int `json:"max_memory_mib,omitempty"`
}

// PoolInfo describes a pool.
type PoolInfo struct {
	Name      string    `json:"name"`
	Image     string    `json:"image"`
	Size      int       `json:"size"`
	Ready     int       `json:"ready"`
	Warming   int       `json:"warming"` // members being made
	MemoryMiB int       `json:"memory_mib"`
	Snapshot  string    `json:"snapshot"`
	Created   time.Time `json:"created"`
}

// poolRecord is what a pool's row keeps.
type poolRecord struct {
	Config   Config `json:"config"`
	Snapshot string `json:"snapshot"` // the snapshot members are cloned from
}

// ErrPoolMemory is wrapped when a pool would need more memory than allowed.
var ErrPoolMemory = errors.New("not enough memory for the pool")

// CreatePool creates a pool, boots one VM of its configuration, snapshots
// it, and fills the pool from the snapshot before it returns. A pool whose
// VMs would need more memory than allowed fails with ErrPoolMemory. On
// error nothing is left: no pool, VM or snapshot.
func CreatePool(ctx context.Context, pc PoolConfig, opt ...Option) (PoolInfo, error) {
	h, err := openHost(ctx, opt)
	if err != nil {
		return PoolInfo{}, err
	}
	defer h.close()
	info, err := h.createPool(ctx, pc)
	if err != nil {
		return info, fmt.Errorf("creating pool %s: %w", pc.Name, err)
	}
	return info, nil
}

func (h *host) createPool(ctx context.Context, pc PoolConfig) (PoolInfo, error) {
	if !ValidName(pc.Name) {
		return PoolInfo{}, fmt.Errorf("%w pool name %q", ErrInvalid, pc.Name)
	}
	if pc.Size < 1 {
		return PoolInfo{}, fmt.Errorf("%w size %d: want at least 1", ErrInvalid, pc.Size)
	}
	cfg := pc.Config
	cfg.Name = "pool-base-" + strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
	cfg, err := cfg.withDefaults()
	if err != nil {
		return PoolInfo{}, err
	}
	limit := pc.MaxMemoryMiB
	if limit == 0 {
		if limit, err = memAvailableMiB("/proc/meminfo"); err != nil {
			return PoolInfo{}, err
		}
	}
	rec := poolRecord{Config: cfg, Snapshot: "pool-" + pc.Name}
	b, err := json.Marshal(rec)
	if err != nil {
		return PoolInfo{}, err
	}
	row := store.Pool{Name: pc.Name, Config: b, Size: pc.Size}
	err = h.store.CreatePool(ctx, row, func(others []store.Pool) error {
		return checkPoolMemory(pc.Name, pc.Size, cfg.MemoryMiB, limit, others)
	})
	if errors.Is(err, store.ErrExists) {
		return PoolInfo{}, fmt.Errorf("pool %s: %w", pc.Name, ErrExists)
	}
	if err != nil {
		return PoolInfo{}, err
	}
	if err := h.preparePool(ctx, pc.Name, rec); err != nil {
		if rerr := h.removePool(context.WithoutCancel(ctx), pc.Name); rerr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", rerr))
		}
		return PoolInfo{}, err
	}
	return h.poolInfo(ctx, pc.Name)
}

// checkPoolMemory refuses a pool whose VMs, with every other pool's, would
// need more guest memory than limit MiB.
func checkPoolMemory(name string, size, memMiB, limit int, others []store.Pool) error {
	used := 0
	for _, o := range others {
		var r poolRecord
		if json.Unmarshal(o.Config, &r) == nil {
			used += o.Size * r.Config.MemoryMiB
		}
	}
	want := size * memMiB
	if used+want > limit {
		return fmt.Errorf("%w: %d vms × %d MiB = %d MiB, but only %d MiB is left for pools (limit %d MiB, other pools %d MiB): use a smaller --size or --memory",
			ErrPoolMemory, size, memMiB, want, max(limit-used, 0), limit, used)
	}
	return nil
}

// memAvailableMiB reads MemAvailable from a meminfo file.
func memAvailableMiB(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != "MemAvailable" {
			continue
		}
		kib, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		if err != nil {
			return 0, fmt.Errorf("reading %s: MemAvailable %q", path, v)
		}
		return kib >> 10, nil
	}
	return 0, fmt.Errorf("reading %s: no MemAvailable", path)
}

// preparePool boots the pool's base VM, snapshots it, deletes it, and
// fills the pool.
func (h *host) preparePool(ctx context.Context, name string, rec poolRecord) error {
	base, err := h.create(ctx, rec.Config)
	if err != nil {
		return fmt.Errorf("creating the base vm: %w", err)
	}
	defer h.remove(context.WithoutCancel(ctx), base.id)
	if err := base.Start(ctx); err != nil {
		return err
	}
	if _, err := h.snapshot(ctx, base.id, rec.Snapshot); err != nil {
		return fmt.Errorf("snapshotting the base vm: %w", err)
	}
	if err := h.remove(ctx, base.id); err != nil {
		return err
	}
	return h.refill(ctx, name)
}

// refill clones the pool's snapshot until the pool has Size members.
func (h *host) refill(ctx context.Context, name string) error {
	p, err := h.store.GetPool(ctx, name)
	if err != nil {
		return err
	}
	var rec poolRecord
	if err := json.Unmarshal(p.Config, &rec); err != nil {
		return fmt.Errorf("decoding pool %s: %w", name, err)
	}
	for {
		id := newID()
		err := h.store.ReservePoolSlot(ctx, name, id)
		if errors.Is(err, store.ErrPoolFull) || errors.Is(err, store.ErrNotFound) {
			return nil // full, or removed meanwhile
		}
		if err != nil {
			return err
		}
		vm, err := h.clone(ctx, rec.Snapshot, id)
		if err != nil {
			h.store.DropPoolMember(context.WithoutCancel(ctx), id)
			return err
		}
		// One command before it counts as ready: a restored guest's first
		// exec pays for faulting in the agent's pages and, under TCG,
		// translating its code again; the taker should not.
		if _, err := vm.Run(ctx, []string{"true"}, RunOptions{}); err != nil {
			h.store.DropPoolMember(context.WithoutCancel(ctx), id)
			h.remove(context.WithoutCancel(ctx), id)
			return fmt.Errorf("warming pool member %s: %w", id, err)
		}
		if err := h.store.MarkPoolReady(ctx, id); err != nil {
			// The pool went while the clone started: it is nobody's.
			h.remove(context.WithoutCancel(ctx), id)
			if errors.Is(err, store.ErrNotFound) {
				return nil
			}
			return err
		}
		h.log.Info("pool member ready", "pool", name, "vm", id)
	}
}

// RefillPool fills the pool up to its size and returns; `smolvm
// __pool-refill` runs it in the background after an Acquire.
func RefillPool(ctx context.Context, name string, opt ...Option) error {
	h, err := openHost(ctx, opt)
	if err != nil {
		return err
	}
	defer h.close()
	if err := h.refill(ctx, name); err != nil {
		return fmt.Errorf("refilling pool %s: %w", name, err)
	}
	return nil
}

// Acquire hands out a ready VM of the pool: it becomes the caller's, an
// ordinary running VM to use and Delete. No VM is handed out twice, even
// to callers in different processes. The pool is refilled in the
// background. When no VM is ready, one is cloned from the pool's snapshot
// at once (slower, still no boot).
func Acquire(ctx context.Context, pool string, opt ...Option) (*VM, error) {
	h, err := openHost(ctx, opt)
	if err != nil {
		return nil, err
	}
	vm, err := h.acquire(ctx, pool)
	if err != nil {
		h.close()
		return nil, fmt.Errorf("acquiring a vm from pool %s: %w", pool, err)
	}
	return vm, nil
}

func (h *host) acquire(ctx context.Context, pool string) (*VM, error) {
	p, err := h.store.GetPool(ctx, pool)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("pool %s: %w", pool, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	defer h.spawnRefill(pool)
	for {
		id, err := h.store.TakeReady(ctx, pool)
		if errors.Is(err, store.ErrPoolEmpty) {
			var rec poolRecord
			if err := json.Unmarshal(p.Config, &rec); err != nil {
				return nil, err
			}
			return h.clone(ctx, rec.Snapshot, newID())
		}
		if err != nil {
			return nil, err
		}
		r, err := h.get(ctx, id)
		if err == nil && r.Status == store.StatusRunning {
			return &VM{h: h, id: id}, nil
		}
		// A member that died while waiting is thrown away.
		h.log.Warn("dropping dead pool member", "pool", pool, "vm", id, "status", r.Status, "err", err)
		h.remove(ctx, id)
	}
}

// spawnRefill starts `smolvm __pool-refill` detached; its output goes to
// pools/NAME.log in the data directory.
func (h *host) spawnRefill(pool string) {
	if err := os.MkdirAll(h.path("pools"), 0o755); err != nil {
		h.log.Error("refilling pool", "pool", pool, "err", err)
		return
	}
	logf, err := os.OpenFile(h.path("pools", pool+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		h.log.Error("refilling pool", "pool", pool, "err", err)
		return
	}
	defer logf.Close()
	cmd := exec.Command(h.opts.exe, "__pool-refill", "--data-dir", h.dir, pool)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		h.log.Error("refilling pool", "pool", pool, "err", err)
		return
	}
	go cmd.Wait() // reap it if this process outlives it
}

// Pools describes every pool by name.
func Pools(ctx context.Context, opt ...Option) ([]PoolInfo, error) {
	h, err := openHost(ctx, opt)
	if err != nil {
		return nil, err
	}
	defer h.close()
	rows, err := h.store.ListPools(ctx)
	if err != nil {
		return nil, err
	}
	var out []PoolInfo
	for _, r := range rows {
		info, err := h.poolInfo(ctx, r.Name)
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

func (h *host) poolInfo(ctx context.Context, name string) (PoolInfo, error) {
	p, err := h.store.GetPool(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return PoolInfo{}, fmt.Errorf("pool %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return PoolInfo{}, err
	}
	var rec poolRecord
	json.Unmarshal(p.Config, &rec)
	members, err := h.store.PoolMembers(ctx, name)
	if err != nil {
		return PoolInfo{}, err
	}
	info := PoolInfo{Name: name, Image: rec.Config.Image, Size: p.Size, MemoryMiB: rec.Config.MemoryMiB,
		Snapshot: rec.Snapshot, Created: p.CreatedAt}
	for _, m := range members {
		if m.Ready {
			info.Ready++
		} else {
			info.Warming++
		}
	}
	return info, nil
}

// RemovePool deletes the pool, its waiting VMs and its snapshot. VMs
// already handed out are not touched.
func RemovePool(ctx context.Context, name string, opt ...Option) error {
	h, err := openHost(ctx, opt)
	if err != nil {
		return err
	}
	defer h.close()
	if err := h.removePool(ctx, name); err != nil {
		return fmt.Errorf("removing pool %s: %w", name, err)
	}
	return nil
}

func (h *host) removePool(ctx context.Context, name string) error {
	p, err := h.store.GetPool(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("pool %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return err
	}
	members, err := h.store.PoolMembers(ctx, name)
	if err != nil {
		return err
	}
	// The row goes first: refillers then stop reserving.
	if err := h.store.DeletePool(ctx, name); err != nil {
		return err
	}
	var errs []error
	for _, m := range members {
		if err := h.remove(ctx, m.VMID); err != nil && !errors.Is(err, ErrNotFound) {
			errs = append(errs, err)
		}
	}
	var rec poolRecord
	if json.Unmarshal(p.Config, &rec) == nil && rec.Snapshot != "" {
		err := h.removeSnapshot(ctx, rec.Snapshot)
		switch {
		case errors.Is(err, ErrState):
			// VMs handed out earlier still stand on it; it goes with `snapshot rm` later.
			h.log.Warn("keeping the pool's snapshot", "snapshot", rec.Snapshot, "reason", err)
		case err != nil && !errors.Is(err, ErrNotFound):
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
