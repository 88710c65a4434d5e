package oci

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// tree is a staging directory that layers are unpacked into. Every path is
// resolved by the kernel as if the directory were the root file system
// (openat2 with RESOLVE_IN_ROOT), so no symlink, whatever its target, can make
// a write land outside it. A tree is not safe for concurrent use.
type tree struct {
	dir        string
	rootFD     int // O_PATH descriptor of dir
	log        *slog.Logger
	privileged bool // euid 0: chown and device nodes work

	dirs   map[string]dirMeta  // final mode and times of directories, applied by finish
	later  map[string]deferred // without root: owners and device nodes for debugfs
	warned map[string]bool     // warnings already logged once
}

// dirMeta is what a directory entry asks for but can only be applied once
// nothing more is written into the directory.
type dirMeta struct {
	mode         uint32
	atime, mtime time.Time
}

func openTree(dir string, log *slog.Logger) (*tree, error) {
	dir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, fmt.Errorf("opening staging dir: %w", err)
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening staging dir %s: %w", dir, err)
	}
	return &tree{
		dir:        dir,
		rootFD:     fd,
		log:        log,
		privileged: os.Geteuid() == 0,
		dirs:       map[string]dirMeta{},
		later:      map[string]deferred{},
		warned:     map[string]bool{},
	}, nil
}

// Close releases the tree's root descriptor; the directory stays.
func (t *tree) Close() error {
	return unix.Close(t.rootFD)
}

// warnOnce logs a warning the first time key is seen.
func (t *tree) warnOnce(key, msg string, args ...any) {
	if t.warned[key] {
		return
	}
	t.warned[key] = true
	t.log.Warn(msg, args...)
}

// resolve opens the directory rel (slash separated, relative to the root)
// as an O_PATH descriptor, resolving symlinks inside the root only.
func (t *tree) resolve(rel string) (int, error) {
	return t.open(rel, unix.O_PATH)
}

// open opens the directory rel inside the root with the given extra flags.
func (t *tree) open(rel string, flags uint64) (int, error) {
	for {
		fd, err := unix.Openat2(t.rootFD, rel, &unix.OpenHow{
			Flags:   flags | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
		})
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		return fd, err
	}
}

// mkdirAll resolves the directory rel inside the root, creating missing
// components (mode 0755, owned by the caller), and returns an O_PATH
// descriptor of it. A dangling symlink on the way gets its target created,
// inside the root, as a container runtime would. created receives every
// directory it made.
func (t *tree) mkdirAll(rel string, created func(string)) (int, error) {
	return t.mkdirAllDepth(rel, created, 0)
}

// maxLinkDepth bounds how many dangling symlinks mkdirAll follows.
const maxLinkDepth = 40

func (t *tree) mkdirAllDepth(rel string, created func(string), depth int) (int, error) {
	fd, err := t.resolve(rel)
	if err == nil || !errors.Is(err, unix.ENOENT) {
		return fd, dirError(rel, err)
	}
	parent := "."
	for _, name := range strings.Split(rel, "/") {
		next := path.Join(parent, name)
		fd, err := t.resolve(next)
		if errors.Is(err, unix.ENOENT) {
			if err := t.mkdirIn(parent, name, created, depth); err != nil {
				return -1, fmt.Errorf("creating directory %s: %w", next, err)
			}
			if created != nil {
				created(next)
			}
			fd, err = t.resolve(next)
		}
		if err != nil {
			return -1, dirError(next, err)
		}
		if next == rel {
			return fd, nil
		}
		unix.Close(fd)
		parent = next
	}
	return -1, fmt.Errorf("creating directory %s: empty path", rel)
}

// mkdirIn creates the directory name in parent; when name is a dangling
// symlink it creates the link's target instead.
func (t *tree) mkdirIn(parent, name string, created func(string), depth int) error {
	pfd, err := t.resolve(parent)
	if err != nil {
		return dirError(parent, err)
	}
	defer unix.Close(pfd)
	err = unix.Mkdirat(pfd, name, 0o755)
	if !errors.Is(err, unix.EEXIST) {
		return err
	}
	link, lerr := readlinkAt(pfd, name)
	if lerr != nil {
		return err // exists and is no symlink: a file in the way
	}
	if depth >= maxLinkDepth {
		return unix.ELOOP
	}
	target := link
	if !path.IsAbs(link) {
		here, err := t.physical(pfd)
		if err != nil {
			return err
		}
		target = path.Join(here, link)
	}
	target = path.Clean("/" + target)[1:]
	if target == "" {
		return err
	}
	fd, err := t.mkdirAllDepth(target, created, depth+1)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// physical is the path, relative to the root, of the directory open as fd.
func (t *tree) physical(fd int) (string, error) {
	p, err := os.Readlink(procPath(fd, ""))
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(t.dir, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("%w: directory %s is outside the root", ErrUnsafePath, p)
	}
	return filepath.ToSlash(rel), nil
}

func readlinkAt(dirfd int, name string) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func dirError(rel string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.ENOTDIR) {
		return fmt.Errorf("opening directory %s: a component is not a directory", rel)
	}
	return fmt.Errorf("opening directory %s: %w", rel, err)
}

// removeAll removes name in the directory dirfd and, if it is a directory,
// everything below it. It never follows symlinks. A missing name is no error.
func removeAll(dirfd int, name string) error {
	if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
		return fmt.Errorf("%w: refusing to remove %q", ErrUnsafePath, name)
	}
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	d := os.NewFile(uintptr(fd), name)
	names, err := d.Readdirnames(-1)
	if err == nil {
		for _, n := range names {
			if err = removeAll(fd, n); err != nil {
				break
			}
		}
	}
	d.Close()
	if err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

// finish applies the modes and times recorded for directories, deepest
// first, so that writing children no longer changes them.
func (t *tree) finish() error {
	paths := make([]string, 0, len(t.dirs))
	for p := range t.dirs {
		paths = append(paths, p)
	}
	sort.Slice(paths, func(i, j int) bool {
		di, dj := strings.Count(paths[i], "/"), strings.Count(paths[j], "/")
		if di != dj {
			return di > dj
		}
		return paths[i] < paths[j]
	})
	for _, p := range paths {
		if err := t.finishDir(p, t.dirs[p]); err != nil {
			return fmt.Errorf("setting mode and times of %s: %w", p, err)
		}
	}
	return nil
}

func (t *tree) finishDir(rel string, m dirMeta) error {
	fd, err := t.open(rel, unix.O_RDONLY)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil // removed or replaced by a later layer
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Fchmod(fd, m.mode); err != nil {
		return err
	}
	return unix.UtimesNanoAt(fd, "", timespecs(m.atime, m.mtime), unix.AT_EMPTY_PATH)
}

// procPath names name inside the directory open as fd, through /proc, for
// the few calls that have no *at form (lsetxattr).
func procPath(fd int, name string) string {
	p := fmt.Sprintf("/proc/self/fd/%d", fd)
	if name != "" {
		p += "/" + name
	}
	return p
}

func timespecs(atime, mtime time.Time) []unix.Timespec {
	if atime.IsZero() {
		atime = mtime
	}
	return []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
}

// writeFile creates name in dirfd (it must not exist) holding r's bytes.
func writeFile(dirfd int, name string, r io.Reader) error {
	fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), name)
	_, err = io.Copy(f, r)
	return errors.Join(err, f.Close())
}
