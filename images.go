package smolvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/smolvm/smolvm/internal/image"
	"github.com/smolvm/smolvm/internal/image/oci"
)

// Image describes a root filesystem image.
type Image = image.Image

// ImageConfig holds the defaults an image gives its VMs (from an OCI image
// config): Env, WorkingDir and User apply to every command run in the VM;
// Entrypoint and Cmd are what `smolvm run --image` runs when given no command.
type ImageConfig = image.Config

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
		return img, imageError(fmt.Errorf("building image %s: %w", name, err))
	}
	return img, nil
}

// PullOptions changes how PullImage pulls.
type PullOptions struct {
	// Name is the local image name; "" derives it from the reference (see
	// ImageNameFromRef).
	Name string
	// Platform is the variant to pull, "os/arch[/variant]"; "" means
	// linux on the host's architecture.
	Platform string
}

// PullImage fetches the OCI or Docker image ref ("python:3.12-slim",
// "ghcr.io/org/img:tag", "repo@sha256:…") with credentials from the docker
// config and its helpers, and stores its flattened root file system as a
// local image, replacing one of the same name. Layers are cached by digest
// in <data dir>/layers, so images sharing layers fetch them once; progress
// goes to the WithProgress writer. The image config (Env, WorkingDir,
// User, Entrypoint, Cmd) becomes the defaults of VMs made from the image.
// On error nothing is left behind; an existing image of that name is kept.
func PullImage(ctx context.Context, ref string, opts PullOptions, opt ...Option) (Image, error) {
	h, err := openHost(ctx, opt)
	if err != nil {
		return Image{}, err
	}
	defer h.close()
	return h.pull(ctx, ref, opts)
}

func (h *host) pull(ctx context.Context, ref string, opts PullOptions) (Image, error) {
	name := opts.Name
	if name == "" {
		var err error
		if name, err = ImageNameFromRef(ref); err != nil {
			return Image{}, err
		}
	}
	if err := h.checkNewImageName(name); err != nil {
		return Image{}, err
	}
	cache := h.layerCache()
	unlock, err := cache.lock(ctx, shared)
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	b := h.ociBuilder()
	b.Platform = opts.Platform
	img, err := h.images().Add(ctx, name, func(ctx context.Context, dst string) (Image, error) {
		img, err := b.Pull(ctx, ref, dst)
		if err != nil {
			return img, err
		}
		// Without the manifest, prune would take this image's layers for
		// unused: the image itself is whole, so a failure only costs cache.
		if err := cache.keepManifest(ctx, ref, img.Digest); err != nil {
			h.log.Warn("cannot keep the image manifest; prune will drop its layers", "image", name, "err", err)
		}
		return img, nil
	})
	if err != nil {
		return Image{}, imageError(err)
	}
	h.log.Info("pulled image", "image", name, "ref", ref, "digest", img.Digest)
	return img, nil
}

// ImportOptions changes how ImportImage imports.
type ImportOptions struct {
	// Tag picks the image in a tarball holding several ("repo:tag" for
	// docker save, the ref name annotation for an OCI layout).
	Tag string
	// Name is the local image name; "" derives it from Tag (as
	// ImageNameFromRef does), else from the file name.
	Name string
	// Platform is the variant to take from an OCI layout holding several;
	// "" means linux on the host's architecture.
	Platform string
}

// ImportImage stores the image in file, a `docker save` tarball or an OCI
// image layout tarball, as a local image. On error nothing is left behind.
func ImportImage(ctx context.Context, file string, opts ImportOptions, opt ...Option) (Image, error) {
	name := opts.Name
	if name == "" {
		var err error
		if name, err = importName(file, opts.Tag); err != nil {
			return Image{}, err
		}
	}
	h, err := openHost(ctx, opt)
	if err != nil {
		return Image{}, err
	}
	defer h.close()
	if err := h.checkNewImageName(name); err != nil {
		return Image{}, err
	}
	b := h.ociBuilder()
	b.Platform = opts.Platform
	img, err := h.images().Add(ctx, name, func(ctx context.Context, dst string) (Image, error) {
		return b.Import(ctx, file, opts.Tag, dst)
	})
	return img, imageError(err)
}

// ImageFromDir stores the directory dir, taken as a root file system with
// its owners, modes and links, as the image called name.
func ImageFromDir(ctx context.Context, name, dir string, opt ...Option) (Image, error) {
	return addImage(ctx, name, opt, func(b *oci.Builder) image.BuildFunc {
		return func(ctx context.Context, dst string) (Image, error) { return b.FromDir(ctx, dir, dst) }
	})
}

// ImageFromTar stores the root file system in the tar file tarPath (plain,
// gzip or zstd) as the image called name. Entries are unpacked with the
// rules of image layers; a path reaching outside the root is refused.
func ImageFromTar(ctx context.Context, name, tarPath string, opt ...Option) (Image, error) {
	return addImage(ctx, name, opt, func(b *oci.Builder) image.BuildFunc {
		return func(ctx context.Context, dst string) (Image, error) { return b.FromTar(ctx, tarPath, dst) }
	})
}

func addImage(ctx context.Context, name string, opt []Option, build func(*oci.Builder) image.BuildFunc) (Image, error) {
	h, err := openHost(ctx, opt)
	if err != nil {
		return Image{}, err
	}
	defer h.close()
	if err := h.checkNewImageName(name); err != nil {
		return Image{}, err
	}
	img, err := h.images().Add(ctx, name, build(h.ociBuilder()))
	return img, imageError(err)
}

// InspectImage returns the local image called name. name may also be an
// image reference, which stands for the name ImageNameFromRef gives it.
func InspectImage(ctx context.Context, name string, opt ...Option) (Image, error) {
	h, err := openHost(ctx, opt)
	if err != nil {
		return Image{}, err
	}
	defer h.close()
	local := name
	if image.ValidateName(name) != nil {
		if local, err = ImageNameFromRef(name); err != nil {
			return Image{}, err
		}
	}
	img, err := h.images().Get(local)
	return img, imageError(err)
}

// ListImages lists the images that have been built, pulled or imported.
func ListImages(ctx context.Context, opt ...Option) ([]Image, error) {
	h, err := openHost(ctx, opt)
	if err != nil {
		return nil, err
	}
	defer h.close()
	return h.images().List()
}

// RemoveImage removes an image. VMs with isolated disks made from it keep
// running; shared-disk VMs using it fail to start again. Its cached layers
// stay until PruneImages.
func RemoveImage(ctx context.Context, name string, opt ...Option) error {
	h, err := openHost(ctx, opt)
	if err != nil {
		return err
	}
	defer h.close()
	if users, err := h.imageUsers(ctx, name); err != nil {
		return err
	} else if len(users) > 0 {
		return fmt.Errorf("removing image %s: %w: vm %s boots from it (an overlay or shared disk): delete them first",
			name, ErrState, strings.Join(users, ", "))
	}
	if err := h.images().Remove(name); err != nil {
		return imageError(fmt.Errorf("removing image %s: %w", name, err))
	}
	return nil
}

// imageUsers lists the VMs whose root disk depends on the image's file: a
// qcow2 overlay over it, or the file itself (shared disk mode).
func (h *host) imageUsers(ctx context.Context, name string) ([]string, error) {
	img, err := h.images().Get(name)
	if err != nil {
		return nil, nil // Remove reports a missing image
	}
	rows, err := h.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	var users []string
	for _, r := range rows {
		var rec record
		if json.Unmarshal(r.Config, &rec) != nil {
			continue
		}
		if (rec.DiskBacking != nil && rec.DiskBacking.Path == img.Path) || (!rec.DiskOwned && rec.Disk == img.Path) {
			users = append(users, r.ID)
		}
	}
	return users, nil
}

// EnsureImage returns the local image ref stands for, pulling it on first
// use, as `docker run` does. ref is tried in turn as a built-in image
// (built when missing or out of date), a local image name, and an image
// reference whose local name (ImageNameFromRef) is used when present and
// pulled, with progress, when not. A present image is not pulled again:
// PullImage updates it.
func EnsureImage(ctx context.Context, ref string, opt ...Option) (Image, error) {
	h, err := openHost(ctx, opt)
	if err != nil {
		return Image{}, err
	}
	defer h.close()
	return h.ensureImage(ctx, ref)
}

// ensureImage is EnsureImage on an open host.
func (h *host) ensureImage(ctx context.Context, ref string) (Image, error) {
	store := h.images()
	if image.ValidateName(ref) == nil {
		if slices.Contains(store.Recipes(), ref) {
			img, err := store.Ensure(ctx, ref, image.BuildOptions{Progress: h.opts.progress})
			return img, imageError(err)
		}
		if img, err := store.Get(ref); !errors.Is(err, image.ErrNotFound) {
			return img, imageError(err)
		}
	}
	name, err := ImageNameFromRef(ref)
	if err != nil {
		return Image{}, err
	}
	if img, err := store.Get(name); !errors.Is(err, image.ErrNotFound) {
		return img, imageError(err)
	}
	if h.opts.progress != nil {
		fmt.Fprintf(h.opts.progress, "Image %s is not here; pulling %s\n", name, ref)
	}
	img, err := h.pull(ctx, ref, PullOptions{Name: name})
	if err != nil {
		return Image{}, fmt.Errorf("%s is no local image (see smolvm image ls) and pulling it failed: %w", ref, err)
	}
	return img, nil
}

// checkNewImageName checks a name for an image about to be added: valid,
// and not a built-in's, whose rebuild would silently replace it.
func (h *host) checkNewImageName(name string) error {
	if err := image.ValidateName(name); err != nil {
		return imageError(err)
	}
	if slices.Contains(h.images().Recipes(), name) {
		return fmt.Errorf("%w image name %q: it is a built-in image's; choose another name", ErrInvalid, name)
	}
	return nil
}

// ociBuilder returns a builder of images from OCI images, tarballs and
// directories that caches layers in <data dir>/layers.
func (h *host) ociBuilder() *oci.Builder {
	return &oci.Builder{LayerDir: h.layerCache().dir, Progress: h.opts.progress, Logger: h.log}
}

// imageError adds to err the SDK sentinel its cause calls for, keeping its
// message: image.ErrNotFound is ErrNotFound; bad names, unsafe archives,
// unknown formats, ambiguous tarballs and missing platforms are ErrInvalid.
func imageError(err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, ErrNotFound) || errors.Is(err, ErrInvalid):
		return err
	case errors.Is(err, image.ErrNotFound):
		return sentinelError{err, ErrNotFound}
	case errors.Is(err, image.ErrInvalidName), errors.Is(err, oci.ErrUnsafePath),
		errors.Is(err, oci.ErrFormat), errors.Is(err, oci.ErrAmbiguous), errors.Is(err, oci.ErrPlatform):
		return sentinelError{err, ErrInvalid}
	}
	return err
}

// sentinelError is err, also matching kind with errors.Is.
type sentinelError struct{ err, kind error }

func (e sentinelError) Error() string   { return e.err.Error() }
func (e sentinelError) Unwrap() []error { return []error{e.err, e.kind} }
