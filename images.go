package smolvm

import (
	"context"
	"fmt"

	"github.com/smolvm/smolvm/internal/image"
)

// Image describes a root filesystem image.
type Image = image.Image

// BuildImage builds (or, with force, rebuilds) a built-in image: "tiny"
// (busybox, seconds) or "base" (Debian with python3, minutes). An image
// whose inputs have not changed is not built again.
func BuildImage(ctx context.Context, name string, force bool, opt ...Option) (Image, error) {
	h, err := openHost(ctx, opt)
	if err != nil {
		return Image{}, err
	}
	defer h.close()
	img, err := h.images().Build(ctx, name, image.BuildOptions{Progress: h.opts.progress, Force: force})
	if err != nil {
		return img, fmt.Errorf("building image %s: %w", name, err)
	}
	return img, nil
}

// ListImages lists the images that have been built or imported.
func ListImages(ctx context.Context, opt ...Option) ([]Image, error) {
	h, err := openHost(ctx, opt)
	if err != nil {
		return nil, err
	}
	defer h.close()
	return h.images().List()
}

// RemoveImage removes an image. VMs with isolated disks made from it keep
// running; shared-disk VMs using it fail to start again.
func RemoveImage(ctx context.Context, name string, opt ...Option) error {
	h, err := openHost(ctx, opt)
	if err != nil {
		return err
	}
	defer h.close()
	if err := h.images().Remove(name); err != nil {
		return fmt.Errorf("removing image %s: %w", name, err)
	}
	return nil
}
