package oci

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

// applyLayer unpacks one layer (an uncompressed tar stream) over the tree,
// following the OCI layer rules: entries replace what lower layers left at
// their path, ".wh.NAME" removes NAME from lower layers and ".wh..wh..opq"
// hides everything lower layers put in its directory.
func (t *tree) applyLayer(ctx context.Context, r io.Reader) error {
	l := &layerState{tree: t, seen: map[string]bool{".": true}}
	tr := tar.NewReader(ctxReader{ctx, r})
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading tar: %w", err)
		}
		if err := l.entry(hdr, tr); err != nil {
			return fmt.Errorf("unpacking %q: %w", hdr.Name, err)
		}
	}
}

// layerState is what applying one layer remembers: the paths this layer
// wrote, which its own whiteouts must not remove.
type layerState struct {
	*tree
	seen map[string]bool
}

func (l *layerState) markSeen(rel string) {
	for p := rel; !l.seen[p]; p = path.Dir(p) {
		l.seen[p] = true
	}
}

func (l *layerState) entry(hdr *tar.Header, r io.Reader) error {
	rel, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	dir, base := path.Split(rel)
	dir = path.Clean("/" + dir)[1:]
	if dir == "" {
		dir = "."
	}
	switch {
	case base == opaqueMarker:
		return l.opaque(dir)
	case strings.HasPrefix(base, whiteoutPrefix):
		return l.whiteout(dir, strings.TrimPrefix(base, whiteoutPrefix))
	}
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	case tar.TypeGNUSparse, tar.TypeCont:
		l.warnOnce("type:"+string(hdr.Typeflag), "skipping tar entries of an unsupported type", "type", string(hdr.Typeflag), "example", rel)
		return nil
	}
	if rel == "." {
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("%w: the root is not a directory", ErrUnsafePath)
		}
		fd, err := l.resolve(".")
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return l.makeDir(fd, ".", ".", hdr)
	}
	pfd, err := l.mkdirAll(dir, l.markSeen)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	l.markSeen(rel)
	return l.create(pfd, base, rel, hdr, r)
}

// cleanName turns a tar entry name into a path relative to the root. Names
// are taken as relative to the root even when they start with "/"; any ".."
// component is refused outright, whether or not it would escape.
func cleanName(name string) (string, error) {
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("%w: %q has a \"..\" component", ErrUnsafePath, name)
		}
	}
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: %q has a NUL byte", ErrUnsafePath, name)
	}
	rel := path.Clean("/" + name)[1:]
	if rel == "" {
		rel = "."
	}
	return rel, nil
}

// whiteout removes dir/name left by lower layers.
func (l *layerState) whiteout(dir, name string) error {
	if name == "" || name == "." || name == ".." || strings.HasPrefix(name, whiteoutPrefix) {
		return fmt.Errorf("%w: bad whiteout name %q", ErrUnsafePath, whiteoutPrefix+name)
	}
	if l.seen[path.Join(dir, name)] {
		return nil // the spec: a whiteout never hides its own layer's files
	}
	fd, err := l.resolve(dir)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil
	}
	if err != nil {
		return dirError(dir, err)
	}
	defer unix.Close(fd)
	if err := removeAll(fd, name); err != nil {
		return fmt.Errorf("removing %s: %w", path.Join(dir, name), err)
	}
	return nil
}

// opaque removes everything in dir that this layer did not write.
func (l *layerState) opaque(dir string) error {
	fd, err := l.open(dir, unix.O_RDONLY)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return dirError(dir, err)
	}
	f := newDirFile(fd, dir)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("listing %s: %w", dir, err)
	}
	for _, n := range names {
		if l.seen[path.Join(dir, n)] {
			continue
		}
		if err := removeAll(fd, n); err != nil {
			return fmt.Errorf("removing %s: %w", path.Join(dir, n), err)
		}
	}
	return nil
}

// create makes the entry named base in the directory pfd, replacing what a
// lower layer had there (a directory over a directory merges instead).
func (l *layerState) create(pfd int, base, rel string, hdr *tar.Header, r io.Reader) error {
	if err := l.forget(pfd, base); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeDir {
		return l.makeDir(pfd, base, rel, hdr)
	}
	if hdr.Typeflag == tar.TypeLink {
		return l.hardLink(pfd, base, rel, hdr)
	}
	if err := removeAll(pfd, base); err != nil {
		return fmt.Errorf("replacing: %w", err)
	}
	switch hdr.Typeflag {
	case tar.TypeReg: // the reader reports old-style TypeRegA entries as TypeReg
		if err := writeFile(pfd, base, r); err != nil {
			return err
		}
	case tar.TypeSymlink:
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return err
		}
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		made, err := l.mknod(pfd, base, rel, hdr)
		if err != nil || !made {
			return err
		}
	default:
		l.warnOnce("type:"+string(hdr.Typeflag), "skipping tar entries of an unknown type", "type", string(hdr.Typeflag), "example", rel)
		return nil
	}
	if err := l.setMeta(pfd, base, hdr); err != nil {
		return err
	}
	return unix.UtimesNanoAt(pfd, base, timespecs(hdr.AccessTime, hdr.ModTime), unix.AT_SYMLINK_NOFOLLOW)
}

// makeDir creates (or keeps) a directory; its final mode and times wait for
// finish, and meanwhile its owner may always write into it.
func (l *layerState) makeDir(pfd int, base, rel string, hdr *tar.Header) error {
	var st unix.Stat_t
	err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW)
	if err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := removeAll(pfd, base); err != nil {
			return fmt.Errorf("replacing: %w", err)
		}
		err = unix.ENOENT
	}
	if errors.Is(err, unix.ENOENT) {
		err = unix.Mkdirat(pfd, base, 0o700)
	}
	if err != nil {
		return err
	}
	if err := l.setMeta(pfd, base, hdr); err != nil {
		return err
	}
	mode := tarMode(hdr)
	l.dirs[rel] = dirMeta{mode: mode, atime: hdr.AccessTime, mtime: hdr.ModTime}
	return unix.Fchmodat(pfd, base, mode|0o700, 0)
}

// hardLink links base to an earlier entry; both names are inside the root.
func (l *layerState) hardLink(pfd int, base, rel string, hdr *tar.Header) error {
	target, err := cleanName(hdr.Linkname)
	if err != nil {
		return err
	}
	if target == rel {
		return nil
	}
	tdir, tbase := path.Split(target)
	tdir = path.Clean("/" + tdir)[1:]
	if tdir == "" {
		tdir = "."
	}
	tfd, err := l.resolve(tdir)
	if err != nil {
		return fmt.Errorf("hard link target %s: %w", target, dirError(tdir, err))
	}
	defer unix.Close(tfd)
	if err := removeAll(pfd, base); err != nil {
		return fmt.Errorf("replacing: %w", err)
	}
	if err := unix.Linkat(tfd, tbase, pfd, base, 0); err != nil {
		return fmt.Errorf("hard link to %s: %w", target, err)
	}
	if l.privileged {
		return nil
	}
	return l.deferredLink(target, pfd, base)
}

// mknod creates a device node or fifo. Without root a device node becomes
// an empty placeholder file, replaced by the node in the image by debugfs;
// made says whether the node itself exists.
func (l *layerState) mknod(pfd int, base, rel string, hdr *tar.Header) (made bool, err error) {
	mode := tarMode(hdr)
	switch hdr.Typeflag {
	case tar.TypeChar:
		mode |= unix.S_IFCHR
	case tar.TypeBlock:
		mode |= unix.S_IFBLK
	default:
		mode |= unix.S_IFIFO
	}
	dev := int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))
	err = unix.Mknodat(pfd, base, mode, dev)
	if errors.Is(err, unix.EPERM) && !l.privileged {
		if err := writeFile(pfd, base, strings.NewReader("")); err != nil {
			return false, err
		}
		dev := &devNode{mode: mode, major: uint32(hdr.Devmajor), minor: uint32(hdr.Devminor)}
		return false, l.deferEntry(pfd, base, deferred{uid: hdr.Uid, gid: hdr.Gid, dev: dev})
	}
	return err == nil, err
}

func tarMode(hdr *tar.Header) uint32 {
	return uint32(hdr.Mode) & 0o7777
}
