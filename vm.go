package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/smolvm/smolvm/internal/image"
	"github.com/smolvm/smolvm/internal/store"
	"github.com/smolvm/smolvm/internal/supervisor"
)

// Status is a VM's lifecycle state.
type Status = store.Status

// VM statuses.
const (
	StatusCreated  = store.StatusCreated
	StatusStarting = store.StatusStarting
	StatusRunning  = store.StatusRunning
	StatusStopping = store.StatusStopping
	StatusStopped  = store.StatusStopped
	StatusError    = store.StatusError
)

// VM is a handle on one VM. Its methods are safe for concurrent use; the VM
// itself lives on after Close, owned by its supervisor.
type VM struct {
	h  *host
	id string
}

// record is what the SDK keeps in a VM's row: the user's configuration and
// what it resolved to at create time.
type record struct {
	Config      Config        `json:"config"`
	Kernel      image.Kernel  `json:"kernel"`
	Disk        string        `json:"disk"`                   // root disk file
	DiskOwned   bool          `json:"disk_owned"`             // the disk is this VM's own copy or overlay
	DiskFormat  string        `json:"disk_format,omitempty"`  // "raw" ("" in older rows) or "qcow2"
	DiskBacking *diskBacking  `json:"disk_backing,omitempty"` // the image under a qcow2 overlay
	ImageConfig *image.Config `json:"image_config,omitempty"`
}

// Info describes a VM.
type Info struct {
	ID            string    `json:"id"`
	Status        Status    `json:"status"`
	Backend       string    `json:"backend,omitempty"`
	Accel         string    `json:"accel,omitempty"`
	Config        Config    `json:"config"`
	Dir           string    `json:"dir"`
	Disk          string    `json:"disk"`
	Kernel        string    `json:"kernel"`
	ConsoleLog    string    `json:"console_log"`
	SupervisorPID int       `json:"supervisor_pid,omitempty"`
	VMMPID        int       `json:"vmm_pid,omitempty"`
	Error         string    `json:"error,omitempty"`
	Created       time.Time `json:"created"`
	Started       time.Time `json:"started,omitzero"`
	GuestReadyMs  int64     `json:"guest_ready_ms,omitempty"`
	Network       *NetInfo  `json:"network,omitempty"`
	SSH           string    `json:"ssh,omitempty"` // a ready ssh command line, when running (ssh.go)
}

// New creates a VM from cfg: it validates cfg, finds the kernel, builds the
// image when it is a built-in one not yet built, and gives the VM its root
// disk. The VM is not started. On error nothing it made is left.
func New(ctx context.Context, cfg Config, opt ...Option) (*VM, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	h, err := openHost(ctx, opt)
	if err != nil {
		return nil, err
	}
	vm, err := h.create(ctx, cfg)
	if err != nil {
		h.close()
		return nil, fmt.Errorf("creating vm %s: %w", cfg.Name, err)
	}
	return vm, nil
}

func (h *host) create(ctx context.Context, cfg Config) (*VM, error) {
	if _, err := h.store.GetVM(ctx, cfg.Name); err == nil {
		return nil, ErrExists
	}
	if err := checkFiles(cfg); err != nil {
		return nil, err
	}
	if len(filepath.Join(h.vmDir(cfg.Name), "qmp.sock")) > 100 {
		return nil, fmt.Errorf("%w data dir %s: too long for unix socket paths; choose a shorter --data-dir", ErrInvalid, h.dir)
	}
	kernel, err := image.FindKernel(ctx, image.KernelOptions{
		Path: cfg.Kernel, ModulesDir: cfg.KernelModules, CacheDir: h.path("kernels"),
		Progress: h.opts.progress, Logger: h.log, AllowFetch: true,
	})
	if err != nil {
		return nil, err
	}
	rec := record{Config: cfg, Kernel: kernel, Disk: cfg.Rootfs}
	if cfg.Rootfs == "" {
		img, err := h.ensureImage(ctx, cfg.Image)
		if err != nil {
			return nil, err
		}
		rec.Disk, rec.ImageConfig = img.Path, img.Config
	}
	dir := h.vmDir(cfg.Name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("%w: directory %s", ErrExists, dir)
		}
		return nil, err
	}
	if err := h.insert(ctx, dir, &rec); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &VM{h: h, id: cfg.Name}, nil
}

// insert makes the VM's disk and its row; on error it removes both.
func (h *host) insert(ctx context.Context, dir string, rec *record) error {
	if rec.Config.DiskMode == DiskIsolated {
		if err := makeIsolatedDisk(ctx, dir, rec); err != nil {
			return err
		}
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	err = h.store.CreateVM(ctx, store.VM{ID: rec.Config.Name, Status: store.StatusCreated, Dir: dir, Config: b})
	if errors.Is(err, store.ErrExists) {
		return ErrExists
	}
	return err
}

func (h *host) images() *image.Store { return image.NewStore(h.path("images"), h.log) }

// checkFiles checks that every file the config names exists.
func checkFiles(cfg Config) error {
	check := func(what, path string) error {
		if path == "" {
			return nil
		}
		fi, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("%w %s %s: %w", ErrInvalid, what, path, errors.Unwrap(err))
		}
		if fi.IsDir() {
			return fmt.Errorf("%w %s %s: is a directory", ErrInvalid, what, path)
		}
		return nil
	}
	if err := check("kernel", cfg.Kernel); err != nil {
		return err
	}
	if err := check("rootfs", cfg.Rootfs); err != nil {
		return err
	}
	for _, d := range cfg.Drives {
		if err := check("drive", d.Path); err != nil {
			return err
		}
	}
	return nil
}

// Open finds an existing VM by id.
func Open(ctx context.Context, id string, opt ...Option) (*VM, error) {
	h, err := openHost(ctx, opt)
	if err != nil {
		return nil, err
	}
	if _, err := h.get(ctx, id); err != nil {
		h.close()
		return nil, err
	}
	return &VM{h: h, id: id}, nil
}

// List describes every VM, oldest first.
func List(ctx context.Context, opt ...Option) ([]Info, error) {
	h, err := openHost(ctx, opt)
	if err != nil {
		return nil, err
	}
	defer h.close()
	rows, err := h.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Info, 0, len(rows))
	for _, r := range rows {
		out = append(out, h.info(h.reconcile(ctx, r)))
	}
	return out, nil
}

// get loads a VM's row, reconciled with what really runs.
func (h *host) get(ctx context.Context, id string) (store.VM, error) {
	r, err := h.row(ctx, id)
	if err != nil {
		return r, err
	}
	return h.reconcile(ctx, r), nil
}

// row reads a VM's row as it is, without asking whether its supervisor
// still runs.
func (h *host) row(ctx context.Context, id string) (store.VM, error) {
	r, err := h.store.GetVM(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return r, fmt.Errorf("vm %s: %w", id, ErrNotFound)
	}
	return r, err
}

func (h *host) info(r store.VM) Info {
	var rec record
	json.Unmarshal(r.Config, &rec)
	return Info{
		ID: r.ID, Status: r.Status, Backend: r.Backend, Config: rec.Config, Dir: r.Dir,
		Disk: rec.Disk, Kernel: rec.Kernel.Path, ConsoleLog: filepath.Join(r.Dir, supervisor.ConsoleFile),
		SupervisorPID: r.SupervisorPID, VMMPID: r.VMMPID, Error: r.Error,
		Created: r.CreatedAt, Started: r.StartedAt,
	}
}

func (h *host) close() error { return h.store.Close() }

// ID returns the VM's id.
func (vm *VM) ID() string { return vm.id }

// Close releases the handle; the VM keeps running.
func (vm *VM) Close() error { return vm.h.close() }

// Info describes the VM, with live details from its supervisor when running.
func (vm *VM) Info(ctx context.Context) (Info, error) {
	r, err := vm.h.get(ctx, vm.id)
	if err != nil {
		return Info{}, err
	}
	info := vm.h.info(r)
	info.Network = netInfo(ctx, r, info.Config)
	if r.Status == store.StatusRunning {
		if st, err := supervisor.GetStatus(ctx, r.Dir); err == nil {
			info.Accel, info.GuestReadyMs = st.Accel, st.GuestReadyMs
		}
		info.SSH = vm.sshLine(ctx)
	}
	return info, nil
}

func (vm *VM) record(r store.VM) (record, error) {
	var rec record
	if err := json.Unmarshal(r.Config, &rec); err != nil {
		return rec, fmt.Errorf("decoding vm %s config: %w", vm.id, err)
	}
	return rec, nil
}
