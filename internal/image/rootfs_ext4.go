package image

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

const (
	// rootfsLabel is the ext4 volume label of every image smolvm builds.
	rootfsLabel = "smolvm-root"
	// rootfsMinSize is the smallest image MakeExt4 makes.
	rootfsMinSize = 64 << 20
	rootfsBlock   = 4096
	mib           = 1 << 20
)

// MakeExt4 makes dst an ext4 file system holding a copy of stagingDir, with
// no mounting (mkfs.ext4 -d). The file is sparse; its size is the content
// (counted like du: whole blocks, plus inodes and file system metadata) plus
// extraMiB of free space, and at least 64 MiB. dst must not exist. On error
// dst is removed.
func MakeExt4(ctx context.Context, stagingDir, dst string, extraMiB int) error {
	if extraMiB < 0 {
		return fmt.Errorf("make ext4 %s: negative headroom %d MiB", dst, extraMiB)
	}
	used, err := rootfsContentSize(stagingDir)
	if err != nil {
		return fmt.Errorf("make ext4 %s: %w", dst, err)
	}
	size := rootfsImageSize(used, extraMiB)
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("make ext4: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		args := []string{"-q", "-F", "-d", stagingDir, "-L", rootfsLabel}
		if n := rootfsInodeCount(used, size); n > 0 {
			args = append(args, "-N", fmt.Sprint(n))
		}
		err = storeRunTool(ctx, storeTool{Name: "mkfs.ext4", Args: append(args, dst)})
	}
	if err != nil {
		os.Remove(dst)
		return fmt.Errorf("make ext4 %s from %s: %w", dst, stagingDir, err)
	}
	return nil
}

// rootfsContentUsage is what a directory tree needs on disk.
type rootfsContentUsage struct {
	Bytes  int64 // data, in whole 4 KiB blocks
	Inodes int64
}

// rootfsContentSize walks dir and counts its blocks and inodes. Hard links
// count once.
func rootfsContentSize(dir string) (rootfsContentUsage, error) {
	var u rootfsContentUsage
	seen := map[[2]uint64]bool{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 && !d.IsDir() {
			key := [2]uint64{uint64(st.Dev), st.Ino}
			if seen[key] {
				return nil
			}
			seen[key] = true
		}
		u.Inodes++
		switch {
		case d.IsDir():
			u.Bytes += rootfsBlock
		case info.Mode().IsRegular(), info.Mode()&fs.ModeSymlink != 0:
			u.Bytes += (info.Size() + rootfsBlock - 1) / rootfsBlock * rootfsBlock
		}
		return nil
	})
	if err != nil {
		return u, fmt.Errorf("measure %s: %w", dir, err)
	}
	return u, nil
}

// rootfsImageSize is the file size for an image holding u with extraMiB
// free: the data, 256-byte inodes (mkfs reserves one per 16 KiB, so count
// the larger of the two), an eighth for metadata and the journal, 16 MiB
// slack, the headroom; at least 64 MiB; rounded up to whole MiB.
func rootfsImageSize(u rootfsContentUsage, extraMiB int) int64 {
	inodeBytes := max(u.Inodes*256, u.Bytes/16384*256)
	size := u.Bytes + inodeBytes + u.Bytes/8 + 16*mib + int64(extraMiB)*mib
	size = max(size, rootfsMinSize)
	return (size + mib - 1) / mib * mib
}

// rootfsInodeCount is the inode count to ask mkfs for, or 0 to keep its
// default of one inode per 16 KiB, which suffices unless the tree is mostly
// tiny files (a node_modules, say).
func rootfsInodeCount(u rootfsContentUsage, size int64) int64 {
	want := u.Inodes*5/4 + 1024
	if want <= size/16384 {
		return 0
	}
	return want
}
