package archive

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrChanged is returned when a file changes size while it is being
// archived (the tar header already promised its old size).
var ErrChanged = errors.New("file changed while being read")

// Write writes the file, symlink or directory tree at src to w as a tar
// stream whose entries are named name, name/child, and so on. Symlinks are
// stored, never followed (src itself included); hard links within the tree
// are kept. A file that vanishes or changes size midway is an error that
// names it. w is not closed; the tar trailer is written on success.
func Write(ctx context.Context, w io.Writer, src, name string) (Stats, error) {
	if name == "" || name == "." || name == "/" || path.Base(name) != name {
		return Stats{}, fmt.Errorf("archive name %q: must be one path component", name)
	}
	tw := tar.NewWriter(w)
	aw := &archiver{tw: tw, links: map[fileID]string{}}
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		return aw.add(p, path.Join(name, filepath.ToSlash(rel)))
	})
	if err != nil {
		return aw.st, err
	}
	return aw.st, tw.Close()
}

// fileID identifies an inode, to find hard links.
type fileID struct{ dev, ino uint64 }

type archiver struct {
	tw    *tar.Writer
	st    Stats
	links map[fileID]string // first entry name of each multiply-linked inode
}

func (a *archiver) add(p, name string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	var link string
	if fi.Mode()&fs.ModeSymlink != 0 {
		if link, err = os.Readlink(p); err != nil {
			return err
		}
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	hdr.Name = name
	hdr.Uname, hdr.Gname = "", ""
	if fi.IsDir() {
		hdr.Name += "/"
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && st.Nlink > 1 {
		id := fileID{uint64(st.Dev), st.Ino}
		if first, ok := a.links[id]; ok {
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			a.st.Entries++
			return a.tw.WriteHeader(hdr)
		}
		a.links[id] = name
	}
	if !fi.Mode().IsRegular() {
		if !fi.IsDir() && fi.Mode()&fs.ModeSymlink == 0 {
			a.st.Skipped++
			return nil // devices, fifos, sockets stay behind
		}
		a.st.Entries++
		return a.tw.WriteHeader(hdr)
	}
	return a.addFile(p, hdr)
}

// addFile writes a regular file's header and exactly the size it promised.
func (a *archiver) addFile(p string, hdr *tar.Header) error {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := a.tw.WriteHeader(hdr); err != nil {
		return err
	}
	n, err := io.Copy(a.tw, io.LimitReader(f, hdr.Size))
	a.st.Bytes += n
	if err != nil {
		return fmt.Errorf("reading %s: %w", p, unwrapPathError(err))
	}
	if n != hdr.Size {
		return fmt.Errorf("%s: %w (shrank from %d to %d bytes)", p, ErrChanged, hdr.Size, n)
	}
	a.st.Entries++
	return nil
}
