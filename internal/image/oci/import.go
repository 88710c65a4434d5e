package oci

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/smolvm/smolvm/internal/image"
)

// Import writes an ext4 image of the image in tarPath to dst. The file is
// a `docker save` tarball (it has manifest.json) or an OCI image layout
// tarball (oci-layout and index.json). tag picks one image when the file
// holds several ("repo:tag" for docker save, the ref name annotation for
// OCI layouts); "" takes the only one, for b's platform. The digest is the
// image manifest's; Source is "docker-archive:PATH" or "oci-archive:PATH".
func (b *Builder) Import(ctx context.Context, tarPath, tag, dst string) (image.Image, error) {
	abs, err := filepath.Abs(tarPath)
	if err != nil {
		return image.Image{}, fmt.Errorf("importing %s: %w", tarPath, err)
	}
	img, source, cleanup, err := b.openArchive(abs, tag, dst)
	if err != nil {
		return image.Image{}, fmt.Errorf("importing %s: %w", tarPath, err)
	}
	defer cleanup()
	out, err := b.buildLocal(ctx, img, dst)
	if err != nil {
		return image.Image{}, fmt.Errorf("importing %s: %w", tarPath, err)
	}
	out.Source = source + ":" + abs
	return out, nil
}

// openArchive opens the image in an image tarball. For OCI layouts the
// tarball is unpacked into a temporary directory beside dst, which cleanup
// removes.
func (b *Builder) openArchive(abs, tag, dst string) (img v1.Image, source string, cleanup func(), err error) {
	names, err := archiveNames(abs)
	if err != nil {
		return nil, "", nil, err
	}
	cleanup = func() {}
	switch {
	case names["manifest.json"]:
		if tag == "" {
			if err := singleImage(abs); err != nil {
				return nil, "", nil, err
			}
		}
		var t *name.Tag
		if tag != "" {
			parsed, err := name.NewTag(tag)
			if err != nil {
				return nil, "", nil, err
			}
			t = &parsed
		}
		img, err := tarball.ImageFromPath(abs, t)
		if err != nil {
			return nil, "", nil, fmt.Errorf("reading docker archive: %w", err)
		}
		return img, "docker-archive", cleanup, nil
	case names["index.json"] && names["oci-layout"]:
		dir, err := os.MkdirTemp(filepath.Dir(dst), ".smolvm-layout-*")
		if err != nil {
			return nil, "", nil, err
		}
		cleanup = func() { os.RemoveAll(dir) }
		img, err := b.openLayout(abs, dir, tag)
		if err != nil {
			cleanup()
			return nil, "", nil, err
		}
		return img, "oci-archive", cleanup, nil
	}
	return nil, "", nil, fmt.Errorf("%w: neither a docker save tarball (manifest.json) nor an OCI layout (oci-layout, index.json)", ErrFormat)
}

// singleImage checks that a docker save tarball holds one image, since
// none was named.
func singleImage(abs string) error {
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(abs) })
	if err != nil {
		return fmt.Errorf("reading docker archive: %w", err)
	}
	if len(m) > 1 {
		var tags []string
		for _, d := range m {
			tags = append(tags, d.RepoTags...)
		}
		return fmt.Errorf("%w: the tarball holds %d images; name one (tags: %s)", ErrAmbiguous, len(m), strings.Join(tags, ", "))
	}
	return nil
}

// archiveNames lists the top-level regular files of a tarball. Reading a
// file lets tar seek past entry contents.
func archiveNames(p string) (map[string]bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names := map[string]bool{}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%w: reading tar: %v", ErrFormat, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			names[path.Clean(hdr.Name)] = true
		}
	}
}

// openLayout unpacks an OCI layout tarball into dir and opens the image in it.
func (b *Builder) openLayout(abs, dir, tag string) (v1.Image, error) {
	if err := unpackLayout(abs, dir); err != nil {
		return nil, err
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("reading OCI layout: %w", err)
	}
	plat, err := v1.ParsePlatform(b.platform())
	if err != nil {
		return nil, err
	}
	return pickImage(idx, *plat, tag)
}

// unpackLayout extracts the regular files and directories of an OCI layout
// tarball; links, devices and any path with ".." are refused.
func unpackLayout(src, dir string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading tar: %w", err)
		}
		rel, err := cleanName(hdr.Name)
		if err != nil {
			return err
		}
		target := filepath.Join(dir, filepath.FromSlash(rel))
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(target, 0o755)
		case tar.TypeReg:
			err = copyOut(target, tr)
		default:
			err = fmt.Errorf("%w: OCI layout entry %q is not a file or directory", ErrFormat, hdr.Name)
		}
		if err != nil {
			return err
		}
	}
}

func copyOut(target string, r io.Reader) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	return errors.Join(err, f.Close())
}

// buildLocal flattens an image whose layers are on local disk.
func (b *Builder) buildLocal(ctx context.Context, img v1.Image, dst string) (image.Image, error) {
	m, err := img.Manifest()
	if err != nil {
		return image.Image{}, fmt.Errorf("reading manifest: %w", err)
	}
	digest, err := img.Digest()
	if err != nil {
		return image.Image{}, err
	}
	cfg, err := imageConfig(img, m, b.platform())
	if err != nil {
		return image.Image{}, err
	}
	layers, err := img.Layers()
	if err != nil {
		return image.Image{}, fmt.Errorf("reading layers: %w", err)
	}
	size, err := b.stage(ctx, dst, func(ctx context.Context, t *tree) error {
		for i, l := range layers {
			if err := applyLocalLayer(ctx, t, l, cfg.RootFS.DiffIDs[i]); err != nil {
				return fmt.Errorf("layer %d (%s): %w", i+1, m.Layers[i].Digest, err)
			}
		}
		return nil
	})
	if err != nil {
		return image.Image{}, err
	}
	return image.Image{Path: dst, Size: size, Digest: digest.String(), Created: time.Now().UTC(), Config: configFrom(cfg)}, nil
}

func applyLocalLayer(ctx context.Context, t *tree, l v1.Layer, diffID v1.Hash) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	return applyVerified(ctx, t, rc, diffID)
}
