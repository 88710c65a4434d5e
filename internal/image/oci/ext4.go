package oci

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

const (
	mib       = 1 << 20
	blockSize = 4096
	inodeSize = 256
)

// usage is what a directory tree needs on ext4.
type usage struct {
	bytes  int64 // data blocks of files, directories and long symlinks
	inodes int64
}

// measure walks dir counting blocks and inodes; hard links count once.
func measure(dir string) (usage, error) {
	var u usage
	seen := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if ok && st.Nlink > 1 && !d.IsDir() {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		u.inodes++
		switch {
		case info.Mode().IsRegular():
			u.bytes += roundUp(info.Size(), blockSize)
		case d.IsDir():
			u.bytes += blockSize
		case info.Mode()&fs.ModeSymlink != 0 && info.Size() >= 60:
			u.bytes += blockSize
		}
		return nil
	})
	return u, err
}

func roundUp(n, to int64) int64 {
	return (n + to - 1) / to * to
}

// ext4Geometry sizes a file system for u plus headroom: data with 5% slack
// for extent and directory blocks, inode tables with room for a quarter more
// files, a journal, and fixed room for bitmaps and group descriptors.
func ext4Geometry(u usage, headroomMiB int) (size, inodes, journalMiB int64) {
	inodes = u.inodes + max(u.inodes/4, 4096)
	data := u.bytes + u.bytes/20 + int64(headroomMiB)*mib
	journalMiB = 16
	if data > 1<<30 {
		journalMiB = 64
	}
	size = data + inodes*inodeSize + journalMiB*mib + 16*mib + data/50
	return roundUp(size, mib), inodes, journalMiB
}

// makeExt4 writes an ext4 image of the tree at src to dst: built in a
// temporary file beside dst and renamed into place, so dst is never partial.
func makeExt4(ctx context.Context, log *slog.Logger, src, dst string, headroomMiB int) (int64, error) {
	mkfs, err := findTool("mkfs.ext4")
	if err != nil {
		return 0, err
	}
	u, err := measure(src)
	if err != nil {
		return 0, fmt.Errorf("measuring %s: %w", src, err)
	}
	size, inodes, journalMiB := ext4Geometry(u, headroomMiB)
	f, err := os.CreateTemp(filepath.Dir(dst), ".smolvm-partial-*.ext4")
	if err != nil {
		return 0, fmt.Errorf("creating image file: %w", err)
	}
	tmp := f.Name()
	done := false
	defer func() {
		if !done {
			os.Remove(tmp)
		}
	}()
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("sizing image file: %w", err)
	}
	args := []string{"-q", "-F", "-t", "ext4", "-b", strconv.Itoa(blockSize), "-I", strconv.Itoa(inodeSize),
		"-N", strconv.FormatInt(inodes, 10), "-J", "size=" + strconv.FormatInt(journalMiB, 10),
		"-m", "0", "-L", "smolvm-root", "-d", src, tmp}
	log.Debug("making ext4", "cmd", mkfs+" "+strings.Join(args, " "), "content_bytes", u.bytes, "inodes", u.inodes, "size", size)
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, mkfs, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("making ext4: %w", ctx.Err())
		}
		return 0, fmt.Errorf("making ext4 (%d MiB): %w: %s", size/mib, err, oneLine(out.String()))
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		return 0, fmt.Errorf("making ext4: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return 0, fmt.Errorf("moving image into place: %w", err)
	}
	done = true
	return size, nil
}

// findTool looks a system tool up in PATH and then in the sbin directories
// a non-root PATH often lacks.
func findTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found (install e2fsprogs): %w", name, exec.ErrNotFound)
}

// oneLine folds a tool's output into one line for an error message.
func oneLine(s string) string {
	fields := strings.FieldsFunc(strings.TrimSpace(s), func(r rune) bool { return r == '\n' || r == '\r' })
	for i, f := range fields {
		fields[i] = strings.TrimSpace(f)
	}
	return strings.Join(fields, "; ")
}
