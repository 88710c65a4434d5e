package image

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// kernelBuildFilesEstimate is about how many files (CC, AS, HOSTCC lines)
// make compiles for the smolvm config (1273 for 6.1.192); it only sizes the progress bar,
// which grows if the build compiles more.
const kernelBuildFilesEstimate = 1300

// kernelBuild is one run of the kernel build in a scratch directory:
// scratch/src is the source tree, scratch/out the kbuild output (O=).
type kernelBuild struct {
	src     kernelSource
	scratch string
	frag    []byte
	want    []kconfigOption
	jobs    int
	p       *progressReporter
	log     *slog.Logger
}

func (b *kernelBuild) run(ctx context.Context) (BuiltKernel, error) {
	start := time.Now()
	tree, err := kernelFetchSource(ctx, b.scratch, b.src, b.p)
	if err != nil {
		return BuiltKernel{}, err
	}
	out := filepath.Join(b.scratch, "out")
	if err := b.configure(ctx, tree, out); err != nil {
		return BuiltKernel{}, fmt.Errorf("configuring: %w", err)
	}
	b.p.Phase(fmt.Sprintf("compiling (make -j%d)", b.jobs), kernelBuildFilesEstimate)
	err = storeRunTool(ctx, storeTool{
		Name: "make", Args: []string{"-C", tree, "O=" + out, "-j" + strconv.Itoa(b.jobs), "bzImage", "vmlinux"},
		OnLine: func(line string) {
			if kernelBuildCompiles(line) {
				b.p.Add(1)
			}
		},
	})
	if err != nil {
		return BuiltKernel{}, fmt.Errorf("compiling: %w", err)
	}
	rel, err := storeToolOutput(ctx, storeTool{Name: "make", Args: []string{"-s", "-C", tree, "O=" + out, "kernelrelease"}})
	if err != nil {
		return BuiltKernel{}, fmt.Errorf("asking the kernel release: %w", err)
	}
	return BuiltKernel{
		Release:       kernelLastLine(rel),
		SourcePackage: b.src.Package,
		SourceVersion: b.src.Version,
		Built:         time.Now().UTC(),
		BuildSeconds:  time.Since(start).Seconds(),
	}, nil
}

// configure writes out/.config: allnoconfig with the fragment merged in
// (merge_config.sh -n), completed by olddefconfig, then checked: every
// option the fragment asks for must have its value.
func (b *kernelBuild) configure(ctx context.Context, tree, out string) error {
	b.p.Phase("configuring (allnoconfig + smolvm fragment)", 0)
	frag := filepath.Join(b.scratch, "smolvm.config")
	if err := os.WriteFile(frag, b.frag, 0o644); err != nil {
		return err
	}
	if err := os.Mkdir(out, 0o755); err != nil {
		return err
	}
	err := storeRunTool(ctx, storeTool{
		Name: filepath.Join(tree, "scripts/kconfig/merge_config.sh"), Args: []string{"-n", "-O", out, frag},
		Dir: tree,
	})
	if err != nil {
		return err
	}
	if err := storeRunTool(ctx, storeTool{Name: "make", Args: []string{"-C", tree, "O=" + out, "olddefconfig"}}); err != nil {
		return err
	}
	f, err := os.Open(filepath.Join(out, ".config"))
	if err != nil {
		return err
	}
	defer f.Close()
	final, err := kconfigParse(f)
	if err != nil {
		return fmt.Errorf("reading the final .config: %w", err)
	}
	if unmet := kconfigUnmet(b.want, final); len(unmet) > 0 {
		return fmt.Errorf("the kernel refused %d requested options (unmet dependencies? fix internal/image/kconfig): %s",
			len(unmet), strings.Join(unmet, "; "))
	}
	return nil
}

// kernelBuildCompiles says whether a line of kbuild's quiet output reports
// a file being compiled or assembled ("  CC      kernel/fork.o").
func kernelBuildCompiles(line string) bool {
	f := strings.Fields(line)
	if len(f) < 2 {
		return false
	}
	switch f[0] {
	case "CC", "AS", "HOSTCC":
		return true
	}
	return false
}

func kernelLastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
