package oci

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// paxXattr is the PAX record prefix under which tar stores extended attributes.
const paxXattr = "SCHILY.xattr."

// xattrPrefixes are the attribute namespaces ext4 holds.
var xattrPrefixes = []string{"user.", "trusted.", "security.", "system.posix_acl_access", "system.posix_acl_default"}

// setMeta gives base (in pfd) the entry's owner, mode and extended
// attributes, in that order: chown clears set-id bits and file capabilities.
// Symlinks have no mode of their own.
func (t *tree) setMeta(pfd int, base string, hdr *tar.Header) error {
	if t.privileged {
		if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	} else if err := t.deferOwner(pfd, base, hdr.Uid, hdr.Gid); err != nil {
		return err
	}
	if hdr.Typeflag != tar.TypeSymlink {
		if err := unix.Fchmodat(pfd, base, tarMode(hdr), 0); err != nil {
			return err
		}
	}
	return t.setXattrs(pfd, base, hdr)
}

func (t *tree) setXattrs(pfd int, base string, hdr *tar.Header) error {
	var names []string
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, paxXattr) {
			names = append(names, strings.TrimPrefix(k, paxXattr))
		}
	}
	sort.Strings(names)
	for _, name := range names {
		if !keepXattr(name) {
			t.warnOnce("xattr:"+name, "dropping an extended attribute ext4 cannot hold", "xattr", name)
			continue
		}
		value := hdr.PAXRecords[paxXattr+name]
		err := unix.Lsetxattr(procPath(pfd, base), name, []byte(value), 0)
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EPERM) {
			t.warnOnce("xattr-err:"+name, "dropping an extended attribute the staging file system refused", "xattr", name, "err", err)
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func keepXattr(name string) bool {
	for _, p := range xattrPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// newDirFile wraps a directory descriptor so it can be listed.
func newDirFile(fd int, name string) *os.File {
	return os.NewFile(uintptr(fd), name)
}

// ctxReader stops a long copy once its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
