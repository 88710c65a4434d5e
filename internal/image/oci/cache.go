package oci

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// partialPrefix starts the names of layer downloads still under way (or
// left by a killed process) in the layer cache.
const partialPrefix = ".partial-"

// LayerPath is where the layer cache in dir keeps the blob with digest d.
func LayerPath(dir string, d v1.Hash) string {
	return filepath.Join(dir, d.Algorithm+"-"+d.Hex)
}

// fetchLayers makes sure every layer of img is in the layer cache, fetching
// the missing ones, and returns their paths in layer order.
func (b *Builder) fetchLayers(ctx context.Context, img v1.Image, m *v1.Manifest, ref string) ([]string, error) {
	if err := os.MkdirAll(b.LayerDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating layer cache: %w", err)
	}
	paths := make([]string, len(m.Layers))
	var missing []v1.Descriptor
	var total int64
	for i, d := range m.Layers {
		paths[i] = LayerPath(b.LayerDir, d.Digest)
		if st, err := os.Stat(paths[i]); err == nil && st.Size() == d.Size {
			b.logger().Debug("layer cached", "digest", d.Digest.String())
			continue
		}
		missing = append(missing, d)
		total += d.Size
	}
	prog := newProgress(b.Progress, ref, total)
	defer prog.finish()
	for _, d := range missing {
		l, err := img.LayerByDigest(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", d.Digest, err)
		}
		prog.start(d)
		if err := fetchLayer(ctx, l, d, LayerPath(b.LayerDir, d.Digest), prog); err != nil {
			return nil, fmt.Errorf("fetching layer %s: %w", d.Digest, err)
		}
		prog.done(d)
	}
	return paths, nil
}

// fetchLayer downloads a compressed layer to path, verifying its size and
// digest before renaming it into place; a failed download leaves nothing.
func fetchLayer(ctx context.Context, l v1.Layer, d v1.Descriptor, path string, w io.Writer) (err error) {
	h, err := v1.Hasher(d.Digest.Algorithm)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), partialPrefix+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	rc, err := l.Compressed()
	if err != nil {
		return remoteError(err)
	}
	n, copyErr := io.Copy(io.MultiWriter(f, h, w), ctxReader{ctx, rc})
	rc.Close()
	got := v1.Hash{Algorithm: d.Digest.Algorithm, Hex: fmt.Sprintf("%x", h.Sum(nil))}
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case n == d.Size && got != d.Digest:
		return fmt.Errorf("%w: content is %s", ErrDigest, got)
	case copyErr != nil:
		return remoteError(copyErr)
	case n != d.Size:
		return fmt.Errorf("%w: got %d bytes, the manifest says %d", ErrDigest, n, d.Size)
	case got != d.Digest:
		return fmt.Errorf("%w: content is %s", ErrDigest, got)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// CleanLayerDir removes downloads a killed process left unfinished in the
// layer cache dir. Run it when no pull is under way (e.g. from prune).
func CleanLayerDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), partialPrefix) {
			errs = append(errs, os.Remove(filepath.Join(dir, e.Name())))
		}
	}
	return errors.Join(errs...)
}
