package archive

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

	"golang.org/x/sys/unix"
)

// ErrUnsafePath is returned for a tar entry that would land outside the
// destination: an absolute name, a ".." component, a path through a
// symlink that leaves the destination, or a name outside ExtractOptions.Top.
var ErrUnsafePath = errors.New("unsafe path in archive")

// ExtractOptions tune Extract.
type ExtractOptions struct {
	// Top, when set, is the only top-level name entries may have (the
	// entry itself or anything beneath it).
	Top string
	// Owners sets each entry's owner from the header (needs root).
	Owners bool
}

// Stats counts what a tar stream held.
type Stats struct {
	Entries int
	Bytes   int64 // regular file contents
	Skipped int   // device nodes, fifos and other types not extracted
}

// Extract writes the entries of the tar stream r beneath the existing
// directory dir, keeping modes, modification times, symlinks and hard
// links. It never writes outside dir: every name is checked, and every
// path is resolved with openat2(RESOLVE_BENEATH), so a symlink in the
// stream or already on disk cannot redirect a write. An existing file is
// replaced (never written through); an existing directory is merged into.
// Errors name the path they concern.
func Extract(ctx context.Context, r io.Reader, dir string, opts ExtractOptions) (Stats, error) {
	root, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Stats{}, fmt.Errorf("opening destination %s: %w", dir, pathErr(err))
	}
	defer unix.Close(root)
	x := &extractor{root: root, dir: dir, opts: opts}
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return x.st, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return x.st, fmt.Errorf("reading archive: %w", err)
		}
		if err := x.entry(hdr, tr); err != nil {
			return x.st, err
		}
	}
	return x.st, x.finishDirs()
}

// extractor is one Extract call's state.
type extractor struct {
	root int
	dir  string
	opts ExtractOptions
	st   Stats
	dirs []*tar.Header // directories whose mode and mtime are set at the end
}

// CleanName checks a tar entry name and returns it relative and clean:
// never absolute, never with a ".." component, never empty.
func CleanName(name string) (string, error) {
	if name == "" || strings.HasPrefix(name, "/") || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: %q", ErrUnsafePath, name)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("%w: %q", ErrUnsafePath, name)
		}
	}
	clean := path.Clean(name)
	if clean == "." {
		return "", fmt.Errorf("%w: %q", ErrUnsafePath, name)
	}
	return clean, nil
}

func (x *extractor) entry(hdr *tar.Header, r io.Reader) error {
	name, err := CleanName(hdr.Name)
	if err != nil {
		return err
	}
	if t := x.opts.Top; t != "" && name != t && !strings.HasPrefix(name, t+"/") {
		return fmt.Errorf("%w: %q is not beneath %q", ErrUnsafePath, hdr.Name, t)
	}
	full := filepath.Join(x.dir, name)
	parent, base := path.Split(name)
	pfd, err := x.openDir(parent, true)
	if err != nil {
		return fmt.Errorf("%s: %w", full, err)
	}
	defer unix.Close(pfd)
	x.st.Entries++
	switch hdr.Typeflag {
	case tar.TypeDir:
		err = x.mkdir(pfd, base, hdr)
	case tar.TypeReg: // the reader reports old-style TypeRegA entries as TypeReg
		var n int64
		n, err = x.writeFile(pfd, base, hdr, r)
		x.st.Bytes += n
	case tar.TypeSymlink:
		err = x.symlink(pfd, base, hdr)
	case tar.TypeLink:
		err = x.hardlink(pfd, base, hdr)
	default:
		x.st.Skipped++
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", full, err)
	}
	return nil
}

// openDir opens rel (a directory beneath the root) as an O_PATH fd,
// creating missing components when create is set.
func (x *extractor) openDir(rel string, create bool) (int, error) {
	rel = strings.TrimSuffix(rel, "/")
	if rel == "" {
		rel = "."
	}
	fd, err := openBeneath(x.root, rel, unix.O_PATH|unix.O_DIRECTORY)
	if err == nil || !create || !errors.Is(err, unix.ENOENT) {
		return fd, pathErr(err)
	}
	parent, base := path.Split(rel)
	pfd, err := x.openDir(parent, true)
	if err != nil {
		return -1, err
	}
	defer unix.Close(pfd)
	if err := unix.Mkdirat(pfd, base, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, pathErr(err)
	}
	fd, err = openBeneath(x.root, rel, unix.O_PATH|unix.O_DIRECTORY)
	return fd, pathErr(err)
}

// openBeneath opens rel relative to root, refusing any resolution that
// leaves root (".." or a symlink pointing out) and magic links.
func openBeneath(root int, rel string, flags int) (int, error) {
	for {
		fd, err := unix.Openat2(root, rel, &unix.OpenHow{
			Flags:   uint64(flags | unix.O_CLOEXEC),
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
		})
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EXDEV) {
			return -1, fmt.Errorf("%w: resolving %q leaves the destination", ErrUnsafePath, rel)
		}
		return fd, err
	}
}

func (x *extractor) mkdir(pfd int, base string, hdr *tar.Header) error {
	err := unix.Mkdirat(pfd, base, 0o700)
	if errors.Is(err, unix.EEXIST) {
		var st unix.Stat_t
		if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return pathErr(err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if err := unix.Unlinkat(pfd, base, 0); err != nil {
				return pathErr(err)
			}
			err = unix.Mkdirat(pfd, base, 0o700)
		} else {
			err = nil
		}
	}
	if err != nil {
		return pathErr(err)
	}
	x.dirs = append(x.dirs, hdr)
	return nil
}

// replaceable removes an existing non-directory at base so that a new
// entry can take its place; a directory there is an error.
func replaceable(pfd int, base string) error {
	var st unix.Stat_t
	err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return pathErr(err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return errors.New("is a directory; not replacing it")
	}
	return pathErr(unix.Unlinkat(pfd, base, 0))
}

func (x *extractor) writeFile(pfd int, base string, hdr *tar.Header, r io.Reader) (int64, error) {
	if err := replaceable(pfd, base); err != nil {
		return 0, err
	}
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return 0, pathErr(err)
	}
	f := os.NewFile(uintptr(fd), base)
	defer f.Close()
	n, err := io.Copy(f, r)
	if err != nil {
		unix.Unlinkat(pfd, base, 0) // no half-written file stays behind (a full disk, a broken stream)
		return n, fmt.Errorf("writing: %w", pathErr(unwrapPathError(err)))
	}
	if err := x.chown(fd, hdr); err != nil {
		return n, err
	}
	if err := unix.Fchmod(fd, uint32(hdr.Mode)&0o7777); err != nil {
		return n, pathErr(err)
	}
	if err := unix.Futimes(fd, timevals(hdr.ModTime)); err != nil {
		return n, pathErr(err)
	}
	if err := f.Close(); err != nil {
		return n, fmt.Errorf("closing: %w", pathErr(unwrapPathError(err)))
	}
	return n, nil
}

func (x *extractor) symlink(pfd int, base string, hdr *tar.Header) error {
	if err := replaceable(pfd, base); err != nil {
		return err
	}
	if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
		return pathErr(err)
	}
	if x.opts.Owners {
		unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW)
	}
	ts := timespecs(hdr.ModTime)
	unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW) // not every filesystem keeps symlink times
	return nil
}

// hardlink links to an entry extracted earlier; the target is resolved
// beneath the root like any other name.
func (x *extractor) hardlink(pfd int, base string, hdr *tar.Header) error {
	target, err := CleanName(hdr.Linkname)
	if err != nil {
		return err
	}
	tparent, tbase := path.Split(target)
	tfd, err := x.openDir(tparent, false)
	if err != nil {
		return fmt.Errorf("link target %s: %w", hdr.Linkname, err)
	}
	defer unix.Close(tfd)
	if err := replaceable(pfd, base); err != nil {
		return err
	}
	if err := unix.Linkat(tfd, tbase, pfd, base, 0); err != nil {
		return fmt.Errorf("linking to %s: %w", hdr.Linkname, pathErr(err))
	}
	return nil
}

func (x *extractor) chown(fd int, hdr *tar.Header) error {
	if !x.opts.Owners {
		return nil
	}
	return pathErr(unix.Fchown(fd, hdr.Uid, hdr.Gid))
}

// finishDirs sets directories' modes and times, deepest first, once their
// contents are in place.
func (x *extractor) finishDirs() error {
	for i := len(x.dirs) - 1; i >= 0; i-- {
		hdr := x.dirs[i]
		name, _ := CleanName(hdr.Name)
		fd, err := openBeneath(x.root, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
		if err != nil {
			return fmt.Errorf("%s: %w", filepath.Join(x.dir, name), pathErr(err))
		}
		err = x.chown(fd, hdr)
		if err == nil {
			err = pathErr(unix.Fchmod(fd, uint32(hdr.Mode)&0o7777))
		}
		if err == nil {
			err = pathErr(unix.Futimes(fd, timevals(hdr.ModTime)))
		}
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("%s: %w", filepath.Join(x.dir, name), err)
		}
	}
	return nil
}

func timevals(t time.Time) []unix.Timeval {
	tv := unix.NsecToTimeval(t.UnixNano())
	return []unix.Timeval{tv, tv}
}

func timespecs(t time.Time) []unix.Timespec {
	ts := unix.NsecToTimespec(t.UnixNano())
	return []unix.Timespec{ts, ts}
}

// pathErr turns an errno into the standard library's error for it, so
// that errors.Is(err, fs.ErrNotExist) and friends work and the message
// is the familiar one ("no such file or directory").
func pathErr(err error) error {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return err
}

// unwrapPathError strips an *os.PathError whose path is only the base name
// (the caller names the full path).
func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
