package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
)

// rootfsRecipeVersion changes whenever a recipe changes what it builds, so
// images built by older code get rebuilt.
const rootfsRecipeVersion = 2

// BuildOptions tune Build and Ensure.
type BuildOptions struct {
	Progress io.Writer // where progress goes; a terminal gets bars; nil = quiet
	Force    bool      // rebuild even when the image is up to date
}

// rootfsRecipe builds one builtin image.
type rootfsRecipe interface {
	// inputs describes everything the build depends on; its hash is the
	// image's digest. It may read the host (apt sources, a binary).
	inputs() (rootfsInputs, error)
	// build writes the image to dst (a new file in a private scratch dir).
	build(ctx context.Context, in rootfsInputs, dst string, p *progressReporter) error
}

// rootfsInputs is what a recipe's digest is computed over.
type rootfsInputs struct {
	Recipe   string   `json:"recipe"`
	Version  int      `json:"version"`
	Packages []string `json:"packages,omitempty"`
	Suite    string   `json:"suite,omitempty"`
	Mirror   string   `json:"mirror,omitempty"`
	Busybox  string   `json:"busybox_sha256,omitempty"`
	Source   string   `json:"-"` // Image.Source of the result
}

// digest is "sha256:" and the hash of the inputs' JSON form.
func (in rootfsInputs) digest() string {
	data, _ := json.Marshal(in) // plain strings and ints: cannot fail
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// rootfsBuiltinRecipes are the images Build knows how to make.
func rootfsBuiltinRecipes() map[string]rootfsRecipe {
	return map[string]rootfsRecipe{
		"tiny": rootfsTiny{busybox: "/bin/busybox"},
		"base": rootfsBase{osRelease: "/etc/os-release", aptDir: "/etc/apt", packages: rootfsBasePackages, headroomMiB: 512},
	}
}

// Recipes lists the names of the builtin images Build can make.
func (s *Store) Recipes() []string {
	return slices.Sorted(maps.Keys(s.recipes))
}

func (s *Store) recipe(name string) (rootfsRecipe, error) {
	r, ok := s.recipes[name]
	if !ok {
		return nil, fmt.Errorf("image %s: no builtin recipe of that name (have %s): %w", name, strings.Join(s.Recipes(), ", "), ErrNotFound)
	}
	return r, nil
}

// Build builds the builtin image called name ("tiny", "base"), replacing
// any image of that name, unless opts.Force is false and the image is
// already up to date with its inputs.
func (s *Store) Build(ctx context.Context, name string, opts BuildOptions) (Image, error) {
	return s.ensure(ctx, name, opts, true)
}

// Ensure returns the image called name. A builtin image is built when it is
// missing and rebuilt when its inputs (recipe, packages, mirror, the host's
// busybox) changed since it was built, or when opts.Force is set; any other
// image must exist already.
func (s *Store) Ensure(ctx context.Context, name string, opts BuildOptions) (Image, error) {
	return s.ensure(ctx, name, opts, false)
}

func (s *Store) ensure(ctx context.Context, name string, opts BuildOptions, mustBeRecipe bool) (Image, error) {
	if err := ValidateName(name); err != nil {
		return Image{}, err
	}
	r, err := s.recipe(name)
	if err != nil {
		if mustBeRecipe {
			return Image{}, err
		}
		return s.Get(name)
	}
	in, err := r.inputs()
	if err != nil {
		// The recipe cannot be checked (busybox uninstalled since, say):
		// an image that exists is still good enough for Ensure.
		if img, gerr := s.Get(name); gerr == nil && !mustBeRecipe && !opts.Force {
			s.log.Warn("cannot check image inputs; using it as it is", "image", name, "err", err)
			return img, nil
		}
		return Image{}, fmt.Errorf("image %s: %w", name, err)
	}
	if img, ok := s.upToDate(name, in, opts); ok {
		return img, nil
	}
	if err := s.ensureDir(); err != nil {
		return Image{}, err
	}
	unlock, err := s.lock(ctx, name)
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	// Another builder may have finished while we waited for the lock.
	if img, ok := s.upToDate(name, in, opts); ok {
		return img, nil
	}
	return s.addLocked(ctx, name, func(ctx context.Context, dst string) (Image, error) {
		p := newProgressReporter(opts.Progress)
		defer p.Done()
		s.log.Info("building image", "image", name, "digest", in.digest())
		if err := r.build(ctx, in, dst, p); err != nil {
			return Image{}, err
		}
		return Image{Digest: in.digest(), Source: in.Source}, nil
	})
}

// upToDate returns the stored image called name if it was built from in
// and no rebuild is forced.
func (s *Store) upToDate(name string, in rootfsInputs, opts BuildOptions) (Image, bool) {
	if opts.Force {
		return Image{}, false
	}
	img, err := s.Get(name)
	if err != nil {
		if !errors.Is(err, ErrNotFound) {
			s.log.Warn("rebuilding unreadable image", "image", name, "err", err)
		}
		return Image{}, false
	}
	if img.Digest != in.digest() {
		s.log.Info("image inputs changed", "image", name, "old", img.Digest, "new", in.digest())
		return Image{}, false
	}
	return img, true
}
