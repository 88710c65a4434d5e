package smolvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
)

// cloneDisk makes dst a private copy of the image src: a reflink where the
// filesystem has them (instant, shares blocks), else a sparse copy. With
// sizeMiB above the image's size, the copy and its ext4 filesystem grow.
func cloneDisk(ctx context.Context, src, dst string, sizeMiB int) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("opening image: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("creating disk: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) != nil {
		if err := sparseCopy(ctx, out, in); err != nil {
			return fmt.Errorf("copying image %s: %w", src, err)
		}
	}
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	want := int64(sizeMiB) << 20
	if want <= fi.Size() {
		return nil
	}
	if err := out.Truncate(want); err != nil {
		return fmt.Errorf("growing disk: %w", err)
	}
	msg, err := exec.CommandContext(ctx, "resize2fs", "-f", dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("growing filesystem: resize2fs: %v: %s", err, lastLine(msg))
	}
	return nil
}

// sparseCopy copies in to out, leaving holes where in has holes or zeros.
func sparseCopy(ctx context.Context, out, in *os.File) error {
	buf := make([]byte, 1<<20)
	var off int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: no data after off
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		for pos := data; pos < hole; {
			n, err := in.ReadAt(buf[:min(int64(len(buf)), hole-pos)], pos)
			if n > 0 && !allZero(buf[:n]) {
				if _, werr := out.WriteAt(buf[:n], pos); werr != nil {
					return werr
				}
			}
			pos += int64(n)
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			if n == 0 {
				break
			}
		}
		off = hole
	}
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	return out.Truncate(fi.Size())
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
