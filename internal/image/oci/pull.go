package oci

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/smolvm/smolvm/internal/image"
)

// Pull fetches the image ref (e.g. "python:3.12-slim",
// "registry.example/org/img:tag", "repo@sha256:...") for b's platform,
// keeps its layers in b.LayerDir, and writes its flattened root file system
// as an ext4 image to dst. The image's digest is the manifest's, its Source
// "oci:" and the full reference, its Config the image config's defaults.
// On any error nothing is left at dst, in a staging dir or in the cache.
func (b *Builder) Pull(ctx context.Context, ref, dst string) (image.Image, error) {
	if b.LayerDir == "" {
		return image.Image{}, fmt.Errorf("pulling %s: no layer cache directory set", ref)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return image.Image{}, fmt.Errorf("pulling %s: %w", ref, err)
	}
	img, err := b.resolveRemote(ctx, r)
	if err != nil {
		return image.Image{}, fmt.Errorf("pulling %s: %w", ref, err)
	}
	m, err := img.Manifest()
	if err != nil {
		return image.Image{}, fmt.Errorf("pulling %s: reading manifest: %w", ref, remoteError(err))
	}
	digest, err := img.Digest()
	if err != nil {
		return image.Image{}, fmt.Errorf("pulling %s: %w", ref, err)
	}
	cfg, err := imageConfig(img, m, b.platform())
	if err != nil {
		return image.Image{}, fmt.Errorf("pulling %s: %w", ref, remoteError(err))
	}
	paths, err := b.fetchLayers(ctx, img, m, r.Name())
	if err != nil {
		return image.Image{}, fmt.Errorf("pulling %s: %w", ref, err)
	}
	size, err := b.stage(ctx, dst, func(ctx context.Context, t *tree) error {
		for i, p := range paths {
			if err := applyCachedLayer(ctx, t, p, cfg.RootFS.DiffIDs[i]); err != nil {
				return fmt.Errorf("layer %d (%s): %w", i+1, m.Layers[i].Digest, err)
			}
		}
		return nil
	})
	if err != nil {
		return image.Image{}, fmt.Errorf("pulling %s: %w", ref, err)
	}
	return image.Image{
		Path:    dst,
		Size:    size,
		Digest:  digest.String(),
		Source:  "oci:" + r.Name(),
		Created: time.Now().UTC(),
		Config:  configFrom(cfg),
	}, nil
}

// resolveRemote finds the image ref names for b's platform: the manifest
// itself, or the index entry matching the platform.
func (b *Builder) resolveRemote(ctx context.Context, r name.Reference) (v1.Image, error) {
	plat, err := v1.ParsePlatform(b.platform())
	if err != nil {
		return nil, err
	}
	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(b.keychain()),
		remote.WithPlatform(*plat),
		remote.WithUserAgent("smolvm"),
	}
	if b.Transport != nil {
		opts = append(opts, remote.WithTransport(b.Transport))
	}
	desc, err := remote.Get(r, opts...)
	if err != nil {
		return nil, remoteError(err)
	}
	switch {
	case desc.MediaType.IsIndex():
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, remoteError(err)
		}
		return pickImage(idx, *plat, "")
	case desc.MediaType.IsImage():
		return desc.Image()
	}
	return nil, fmt.Errorf("%w: %s is a %s, not an image", ErrFormat, r, desc.MediaType)
}

// remoteError makes a registry's "not found" an image.ErrNotFound and keeps
// the registry's own words on one line.
func remoteError(err error) error {
	var terr *transport.Error
	if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%w: %s", image.ErrNotFound, oneLine(terr.Error()))
	}
	return err
}

// applyCachedLayer unpacks a compressed layer from the cache.
func applyCachedLayer(ctx context.Context, t *tree, path string, diffID v1.Hash) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := decompress(f)
	if err != nil {
		return err
	}
	defer zr.Close()
	return applyVerified(ctx, t, zr, diffID)
}

// applyVerified unpacks an uncompressed layer and checks that its bytes
// hash to the diff ID the image config names.
func applyVerified(ctx context.Context, t *tree, r io.Reader, diffID v1.Hash) error {
	h, err := v1.Hasher(diffID.Algorithm)
	if err != nil {
		return fmt.Errorf("diff id %s: %w", diffID, err)
	}
	tee := io.TeeReader(r, h)
	if err := t.applyLayer(ctx, tee); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return fmt.Errorf("reading layer: %w", err)
	}
	got := v1.Hash{Algorithm: diffID.Algorithm, Hex: fmt.Sprintf("%x", h.Sum(nil))}
	if got != diffID {
		return fmt.Errorf("%w: uncompressed layer is %s, the config says %s", ErrDigest, got, diffID)
	}
	return nil
}
