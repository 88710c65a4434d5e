package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
)

// ErrInvalidName is returned for an image name that does not match
// ^[a-z0-9][a-z0-9_.-]{0,62}$ (the rule VM names follow too).
var ErrInvalidName = errors.New("invalid name")

var storeNameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`) })

// Store keeps root file system images in one directory: NAME.ext4 beside
// NAME.json, the Image record that describes it. An image is visible only
// once both exist; Add and Build write into a private temp dir and rename,
// so a failed or interrupted build leaves no partial image. Builds of one
// name are serialised across processes by a lock file (.NAME.lock). A Store
// is safe for concurrent use.
type Store struct {
	dir     string
	log     *slog.Logger
	recipes map[string]rootfsRecipe
}

// NewStore returns a Store over dir (created on first write). A nil logger
// discards.
func NewStore(dir string, logger *slog.Logger) *Store {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Store{dir: dir, log: logger, recipes: rootfsBuiltinRecipes()}
}

// Dir returns the directory the store keeps its images in.
func (s *Store) Dir() string { return s.dir }

// ValidateName reports whether name is usable as an image name.
func ValidateName(name string) error {
	if !storeNameRE().MatchString(name) {
		return fmt.Errorf("image name %q: %w: use 1-63 of a-z 0-9 _ . - starting with a letter or digit", name, ErrInvalidName)
	}
	return nil
}

func (s *Store) imagePath(name string) string { return filepath.Join(s.dir, name+".ext4") }
func (s *Store) metaPath(name string) string  { return filepath.Join(s.dir, name+".json") }

// Get returns the image called name, or an error wrapping ErrNotFound.
func (s *Store) Get(name string) (Image, error) {
	if err := ValidateName(name); err != nil {
		return Image{}, err
	}
	data, err := os.ReadFile(s.metaPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return Image{}, fmt.Errorf("image %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return Image{}, fmt.Errorf("read image %s: %w", name, err)
	}
	var img Image
	if err := json.Unmarshal(data, &img); err != nil {
		return Image{}, fmt.Errorf("read image %s: %s: %w", name, s.metaPath(name), err)
	}
	st, err := os.Stat(s.imagePath(name))
	if errors.Is(err, os.ErrNotExist) {
		return Image{}, fmt.Errorf("image %s: file %s missing: %w", name, s.imagePath(name), ErrNotFound)
	}
	if err != nil {
		return Image{}, fmt.Errorf("image %s: %w", name, err)
	}
	img.Name, img.Path, img.Size = name, s.imagePath(name), st.Size()
	return img, nil
}

// List returns every image in the store, sorted by name. Records without
// their ext4 file (left by a crash between two renames) are skipped.
func (s *Store) List() ([]Image, error) {
	entries, err := os.ReadDir(s.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var out []Image
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || e.IsDir() || ValidateName(name) != nil {
			continue
		}
		img, err := s.Get(name)
		if errors.Is(err, ErrNotFound) {
			s.log.Warn("skipping image without its file", "image", name)
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Remove deletes the image called name; an error wraps ErrNotFound if there
// is none, or ErrBusy while it is being built. A VM still using the file
// keeps its open copy.
func (s *Store) Remove(name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if _, err := os.Stat(s.dir); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove image %s: %w", name, ErrNotFound)
	}
	unlock, err := s.tryLock(name)
	if err != nil {
		return fmt.Errorf("remove image %s: %w", name, err)
	}
	defer unlock()
	// The record goes first: a crash in between leaves an unlisted file
	// that the next build replaces, never a record without its file.
	errMeta := os.Remove(s.metaPath(name))
	errImg := os.Remove(s.imagePath(name))
	if errors.Is(errMeta, os.ErrNotExist) && errors.Is(errImg, os.ErrNotExist) {
		return fmt.Errorf("remove image %s: %w", name, ErrNotFound)
	}
	for _, err := range []error{errMeta, errImg} {
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove image %s: %w", name, err)
		}
	}
	s.log.Info("removed image", "image", name)
	return nil
}

// BuildFunc writes an ext4 image to dst and describes it. dst's directory
// is a private scratch directory, removed after the build: a BuildFunc may
// keep its staging files there. It should fill Image.Digest and Source and
// may fill Config; Add sets Name, Path, Size and (if zero) Created.
type BuildFunc func(ctx context.Context, dst string) (Image, error)

// Add builds the image called name with build and installs it atomically,
// replacing any image of that name. On error, or when ctx is cancelled,
// nothing of the build is left behind and an existing image is untouched.
// Other image sources (OCI, directories, tarballs) plug in here.
func (s *Store) Add(ctx context.Context, name string, build BuildFunc) (Image, error) {
	if err := ValidateName(name); err != nil {
		return Image{}, err
	}
	if build == nil {
		return Image{}, fmt.Errorf("add image %s: no build function", name)
	}
	if err := s.ensureDir(); err != nil {
		return Image{}, err
	}
	unlock, err := s.lock(ctx, name)
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	return s.addLocked(ctx, name, build)
}

func (s *Store) addLocked(ctx context.Context, name string, build BuildFunc) (img Image, err error) {
	s.cleanStale(name)
	tmp, err := os.MkdirTemp(s.dir, storeScratchPrefix(name))
	if err != nil {
		return Image{}, fmt.Errorf("build image %s: %w", name, err)
	}
	defer func() {
		if rerr := storeRemoveScratch(tmp); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	dst := filepath.Join(tmp, name+".ext4")
	img, err = build(ctx, dst)
	if err == nil {
		err = ctx.Err() // a build that ignored cancellation still loses
	}
	if err != nil {
		return Image{}, fmt.Errorf("build image %s: %w", name, err)
	}
	st, err := os.Stat(dst)
	if err != nil {
		return Image{}, fmt.Errorf("build image %s: no image written: %w", name, err)
	}
	img.Name, img.Path, img.Size = name, s.imagePath(name), st.Size()
	if img.Created.IsZero() {
		img.Created = time.Now().UTC()
	}
	if err := s.install(tmp, dst, img); err != nil {
		return Image{}, fmt.Errorf("install image %s: %w", name, err)
	}
	s.log.Info("image ready", "image", name, "source", img.Source, "size", img.Size)
	return img, nil
}

// install moves a finished image and its record from the scratch dir into
// place: the file first, then the record that makes it visible.
func (s *Store) install(tmp, dst string, img Image) error {
	data, err := json.MarshalIndent(img, "", "  ")
	if err != nil {
		return err
	}
	meta := filepath.Join(tmp, img.Name+".json")
	if err := os.WriteFile(meta, append(data, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.Rename(dst, s.imagePath(img.Name)); err != nil {
		return err
	}
	return os.Rename(meta, s.metaPath(img.Name))
}

func (s *Store) ensureDir() error {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return fmt.Errorf("create image store: %w", err)
	}
	return nil
}

// storeScratchPrefix starts the names of name's scratch dirs. The "+"
// cannot occur in a name, so the prefix of "a" never matches "a-b"'s dirs.
func storeScratchPrefix(name string) string { return ".build-" + name + "+" }

// CleanStale removes the scratch dirs of builds that were killed before
// they could clean up (builds in progress are left alone). Each build also
// does this for its own name; CleanStale is for a reconcile pass.
func (s *Store) CleanStale() error {
	dirs, err := filepath.Glob(filepath.Join(s.dir, ".build-*+*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, dir := range dirs {
		name, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(dir), ".build-"), "+")
		if ValidateName(name) != nil {
			continue
		}
		unlock, err := s.tryLock(name)
		if errors.Is(err, ErrBusy) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.cleanStale(name)
		unlock()
	}
	return errors.Join(errs...)
}

// cleanStale removes scratch dirs an earlier, killed build of name left.
// The caller holds name's lock, so none of them is in use.
func (s *Store) cleanStale(name string) {
	stale, _ := filepath.Glob(filepath.Join(s.dir, storeScratchPrefix(name)+"*"))
	for _, dir := range stale {
		if err := storeRemoveScratch(dir); err != nil {
			s.log.Warn("leaving stale build dir", "dir", dir, "err", err)
			continue
		}
		s.log.Info("removed stale build dir", "dir", dir)
	}
}
