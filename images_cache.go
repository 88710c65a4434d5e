package smolvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/image/oci"
)

// layerCache is the blob cache pulls share, <data dir>/layers: compressed
// layers (written by oci.Builder) and the manifests of pulled images
// (written here), each named by its digest as oci.LayerPath says. The
// manifests are what PruneImages reads to know which layers images use.
// Pulls hold its lock shared from before they fetch until their image is
// installed; prune holds it exclusively.
type layerCache struct{ dir string }

const (
	shared    = unix.LOCK_SH
	exclusive = unix.LOCK_EX
	// partialPrefix starts unfinished downloads in the cache, as in
	// package oci, whose CleanLayerDir removes them.
	partialPrefix = ".partial-"
	lockPoll      = 200 * time.Millisecond
)

func (h *host) layerCache() layerCache { return layerCache{dir: h.path("layers")} }

// lock takes the cache's lock (shared or exclusive), waiting until ctx ends
// while it is held the other way.
func (c layerCache) lock(ctx context.Context, how int) (unlock func(), err error) {
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating layer cache: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(c.dir, ".lock"), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("locking layer cache: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking layer cache: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for the layer cache: %w", ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}

// keepManifest stores the manifest of the image ref names with the given
// digest, fetched again by digest (oci.Builder.Pull does not hand it out).
func (c layerCache) keepManifest(ctx context.Context, ref, digest string) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return err
	}
	d, err := name.NewDigest(r.Context().Name() + "@" + digest)
	if err != nil {
		return err
	}
	desc, err := remote.Get(d, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain), remote.WithUserAgent("smolvm"))
	if err != nil {
		return fmt.Errorf("fetching manifest %s: %w", digest, err)
	}
	want, err := v1.NewHash(digest)
	if err != nil {
		return err
	}
	got, _, err := v1.SHA256(bytes.NewReader(desc.Manifest))
	if err != nil || got != want {
		return fmt.Errorf("manifest %s: content is %s", digest, got)
	}
	return writeAtomic(oci.LayerPath(c.dir, want), desc.Manifest)
}

// writeAtomic writes data to path through a partial file in its directory.
func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), partialPrefix+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// PruneReport says what PruneImages removed.
type PruneReport struct {
	Removed []PrunedFile `json:"removed"`
	Bytes   int64        `json:"bytes"` // total size of what was removed
}

// PrunedFile is one file PruneImages removed.
type PrunedFile struct {
	Kind string `json:"kind"` // "layer", "manifest" or "partial download"
	Name string `json:"name"` // the digest, or the file name of a partial download
	Size int64  `json:"size"`
}

// PruneImages removes what the layer cache holds that no image uses: the
// layers no local image's manifest references, the manifests of images
// that are gone, and downloads a killed pull left unfinished. It waits
// for pulls under way to finish. Images themselves are never removed.
func PruneImages(ctx context.Context, opt ...Option) (PruneReport, error) {
	h, err := openHost(ctx, opt)
	if err != nil {
		return PruneReport{}, err
	}
	defer h.close()
	return h.prune(ctx)
}

func (h *host) prune(ctx context.Context) (PruneReport, error) {
	c := h.layerCache()
	unlock, err := c.lock(ctx, exclusive)
	if err != nil {
		return PruneReport{}, err
	}
	defer unlock()
	imgs, err := h.images().List()
	if err != nil {
		return PruneReport{}, err
	}
	used, err := c.used(imgs)
	if err != nil {
		return PruneReport{}, err
	}
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		return PruneReport{}, fmt.Errorf("reading layer cache: %w", err)
	}
	var rep PruneReport
	var errs []error
	for _, e := range entries {
		f, ok := c.unused(e, used)
		if !ok {
			continue
		}
		if err := os.Remove(filepath.Join(c.dir, e.Name())); err != nil {
			errs = append(errs, err)
			continue
		}
		h.log.Info("pruned", "kind", f.Kind, "name", f.Name, "size", f.Size)
		rep.Removed = append(rep.Removed, f)
		rep.Bytes += f.Size
	}
	// What is left of partial downloads (none, unless removal failed above).
	errs = append(errs, oci.CleanLayerDir(c.dir))
	if err := errors.Join(errs...); err != nil {
		return rep, fmt.Errorf("pruning layer cache: %w", err)
	}
	return rep, nil
}

// used returns the cache files the images need: the manifests of pulled
// images and every layer those manifests name.
func (c layerCache) used(imgs []Image) (map[string]bool, error) {
	used := map[string]bool{}
	for _, img := range imgs {
		d, err := v1.NewHash(img.Digest)
		if err != nil || !strings.HasPrefix(img.Source, "oci:") {
			continue // built locally, nothing in the cache
		}
		p := oci.LayerPath(c.dir, d)
		data, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading manifest of image %s: %w", img.Name, err)
		}
		m, err := v1.ParseManifest(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("manifest of image %s (%s): %w", img.Name, p, err)
		}
		used[filepath.Base(p)] = true
		for _, l := range m.Layers {
			used[filepath.Base(oci.LayerPath(c.dir, l.Digest))] = true
		}
	}
	return used, nil
}

// unused says whether the cache entry e can go, and describes it.
func (c layerCache) unused(e os.DirEntry, used map[string]bool) (PrunedFile, bool) {
	n := e.Name()
	info, err := e.Info()
	if err != nil || !info.Mode().IsRegular() {
		return PrunedFile{}, false
	}
	if strings.HasPrefix(n, partialPrefix) {
		return PrunedFile{Kind: "partial download", Name: n, Size: info.Size()}, true
	}
	alg, hex, ok := strings.Cut(n, "-")
	if !ok || strings.HasPrefix(n, ".") || used[n] {
		return PrunedFile{}, false
	}
	f := PrunedFile{Kind: "layer", Name: alg + ":" + hex, Size: info.Size()}
	if isManifest(filepath.Join(c.dir, n)) {
		f.Kind = "manifest"
	}
	return f, true
}

// isManifest tells a stored manifest (JSON) from a layer (tar, gzip, zstd).
func isManifest(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var b [1]byte
	_, err = f.Read(b[:])
	return err == nil && b[0] == '{'
}
