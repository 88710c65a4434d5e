package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
)

// createFlags are the flags that describe a VM, shared by create and run.
type createFlags struct {
	cfg    smolvm.Config
	env    []string
	drives []string
	mode   string
	net    netFlags
	jailer bool
	jail   smolvm.Jailer
}

func (f *createFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.cfg.Name, "name", "", "VM name (default vm-<8 hex>)")
	fl.StringVar(&f.cfg.Image, "image", "", "image: base (default), tiny, a name from `smolvm image ls`, or an OCI ref (pulled on first use)")
	fl.StringVar(&f.cfg.Rootfs, "rootfs", "", "boot this ext4 root filesystem file instead of an image")
	fl.StringVar(&f.cfg.Kernel, "kernel", "", "guest kernel (bzImage or vmlinux); found automatically when empty")
	fl.StringVar(&f.cfg.KernelModules, "kernel-modules", "", "the kernel's lib/modules/VERSION directory, if it needs modules")
	fl.IntVar(&f.cfg.VCPUs, "cpus", smolvm.DefaultVCPUs, "virtual CPUs")
	fl.IntVar(&f.cfg.MemoryMiB, "memory", smolvm.DefaultMemoryMiB, "memory in MiB")
	fl.IntVar(&f.cfg.DiskSizeMiB, "disk-size", 0, "grow the root disk to this many MiB")
	fl.StringVar(&f.cfg.BootArgs, "boot-args", "", "extra kernel command line, after smolvm's own ("+smolvm.DefaultBootArgs()+"), so it can override them")
	fl.StringVar(&f.mode, "disk-mode", "isolated", "isolated (own writable disk) or shared (one read-only image, writes kept in memory)")
	fl.BoolVar(&f.cfg.RetainDisk, "retain-disk", false, "keep the root disk file when the VM is deleted")
	fl.StringArrayVar(&f.drives, "drive", nil, "extra disk PATH[:ro] (repeatable): /dev/vdb, /dev/vdc, ...")
	fl.StringArrayVar(&f.env, "env", nil, "environment variable K=V for every command (repeatable)")
	fl.StringVar(&f.cfg.Backend, "backend", "", "qemu or firecracker (default: $SMOLVM_BACKEND, else chosen for this host)")
	fl.BoolVar(&f.jailer, "jailer", false, "firecracker only: run it through its jailer (chroot, uid/gid, cgroup)")
	fl.IntVar(&f.jail.UID, "jailer-uid", 0, "with --jailer: the uid firecracker runs as")
	fl.IntVar(&f.jail.GID, "jailer-gid", 0, "with --jailer: the gid firecracker runs as")
	fl.StringVar(&f.jail.ChrootBase, "jailer-chroot", "", "with --jailer: the jailer's chroot base dir (default /srv/jailer)")
	f.net.register(cmd, &f.cfg)
}

// config returns the VM config the flags describe.
func (f *createFlags) config() (smolvm.Config, error) {
	cfg := f.cfg
	cfg.DiskMode = smolvm.DiskMode(f.mode)
	if f.jailer {
		j := f.jail
		cfg.Jailer = &j
	}
	f.net.apply(&cfg)
	env, err := parseEnv(f.env)
	if err != nil {
		return cfg, err
	}
	cfg.Env = env
	for _, d := range f.drives {
		path, ro := strings.CutSuffix(d, ":ro")
		cfg.Drives = append(cfg.Drives, smolvm.Drive{Path: path, ReadOnly: ro})
	}
	return cfg, nil
}

func parseEnv(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	env := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("environment variable %q: want KEY=VALUE", kv)
		}
		env[k] = v
	}
	return env, smolvm.ValidateEnv(env)
}

func createCmd(g *globals) *cobra.Command {
	var f createFlags
	var start, asJSON bool
	var fromSnapshot string
	var count int
	cmd := &cobra.Command{
		Use:   "create [flags]",
		Short: "Create a VM (and with --start, boot it); prints its id",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if fromSnapshot != "" { // snapshot.go
				return createFromSnapshot(cmd.Context(), g, fromSnapshot, f.cfg.Name, count, asJSON)
			}
			cfg, err := f.config()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			vm, err := smolvm.New(ctx, cfg, g.options()...)
			if err != nil {
				return err
			}
			defer vm.Close()
			if start {
				if err := vm.Start(ctx); err != nil {
					return err
				}
			}
			if asJSON {
				info, err := vm.Info(ctx)
				if err != nil {
					return err
				}
				return printJSON(os.Stdout, info)
			}
			fmt.Println(vm.ID())
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&start, "start", false, "start the VM too")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VM's details as JSON")
	cmd.Flags().StringVar(&fromSnapshot, "from-snapshot", "", "start clones of this snapshot (running on return; other VM flags but --name are the snapshot's)")
	cmd.Flags().IntVar(&count, "count", 1, "with --from-snapshot: how many clones (named NAME-1, NAME-2, ... when --name is given)")
	return cmd
}

func runCmd(g *globals) *cobra.Command {
	var f createFlags
	var e execFlags
	cmd := &cobra.Command{
		Use:   "run [flags] [-- CMD [ARG...]]",
		Short: "Run a command in a fresh VM, print its output, exit with its code, and delete the VM",
		Long: `Run a command in a fresh VM, print its output, exit with its code, and delete the VM.
--image may be an OCI image reference, pulled on first use; with no command
the image's Entrypoint and Cmd run, and a command replaces both.`,
		Example: `  smolvm run -- python3 -c 'print("hello from a microVM")'
  smolvm run --image tiny -- uname -a
  smolvm run --image python:3.12-slim -- python3 -V
  echo hi | smolvm run -i --image tiny -- cat`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, argv []string) error {
			cfg, err := f.config()
			if err != nil {
				return err
			}
			if err := cfg.Validate(); err != nil {
				return err // before any image is built or pulled
			}
			cfg, argv, err = resolveRunImage(cmd.Context(), g, cfg, argv)
			if err != nil {
				return err
			}
			opts, err := e.runOptions()
			if err != nil {
				return err
			}
			return runOnce(cmd.Context(), g, cfg, argv, opts)
		},
	}
	f.register(cmd)
	e.register(cmd)
	return cmd
}

// runOnce is `smolvm run`: create, start, run, delete, whatever happens.
func runOnce(ctx context.Context, g *globals, cfg smolvm.Config, argv []string, opts smolvm.RunOptions) error {
	vm, err := smolvm.New(ctx, cfg, g.options()...)
	if err != nil {
		return err
	}
	defer vm.Close()
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := vm.Delete(dctx); err != nil {
			fmt.Fprintln(os.Stderr, "smolvm:", err)
		}
	}()
	if err := vm.Start(ctx); err != nil {
		return err
	}
	return runAndExit(ctx, vm, argv, opts)
}
