package smolvm

import (
	"context"

	"github.com/smolvm/smolvm/internal/image"
)

// KernelBuildOptions configure BuildKernel.
type KernelBuildOptions struct {
	Jobs  int  // make -j; 0 = one per CPU
	Force bool // rebuild even when this source and config are built already
}

// BuiltKernel describes a kernel built by BuildKernel.
type BuiltKernel = image.BuiltKernel

// BuildKernel builds smolvm's own guest kernel (every driver built in, no
// modules) from the distribution's kernel source package and installs it
// in <data>/kernels, where new VMs then find it first. It takes minutes;
// progress goes to the WithProgress writer. A kernel already built from the
// same source version and configuration is returned at once.
func BuildKernel(ctx context.Context, opts KernelBuildOptions, opt ...Option) (BuiltKernel, error) {
	h, err := openHost(ctx, opt)
	if err != nil {
		return BuiltKernel{}, err
	}
	defer h.close()
	return image.BuildKernel(ctx, image.KernelBuildOptions{
		CacheDir: h.path("kernels"), Jobs: opts.Jobs, Force: opts.Force,
		Progress: h.opts.progress, Logger: h.log,
	})
}

// BuiltKernels lists the kernels BuildKernel installed, newest first.
func BuiltKernels(ctx context.Context, opt ...Option) ([]BuiltKernel, error) {
	h, err := openHost(ctx, opt)
	if err != nil {
		return nil, err
	}
	defer h.close()
	return image.ListBuiltKernels(h.path("kernels"))
}
