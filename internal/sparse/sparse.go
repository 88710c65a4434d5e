package sparse

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Page is the granularity at which zeros become holes.
const Page = 4096

var zeroPage [Page]byte

// Copy copies the first size bytes of src to dst, reading only src's data
// extents (SEEK_DATA/SEEK_HOLE) and writing only pages holding a non-zero
// byte; dst ends up exactly size bytes long, with holes everywhere else.
// dst should start empty. ctx is checked between extents.
func Copy(ctx context.Context, dst, src *os.File, size int64) error {
	buf := make([]byte, 1<<20)
	var off int64
	for off < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(int(src.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: nothing but holes after off
		}
		hole, err := unix.Seek(int(src.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		hole = min(hole, size)
		for pos := data; pos < hole; {
			n, err := src.ReadAt(buf[:min(int64(len(buf)), hole-pos)], pos)
			if werr := writePages(dst, buf[:n], pos); werr != nil {
				return werr
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
	return dst.Truncate(size)
}

// writePages writes the runs of non-zero pages of b, which sits at off.
func writePages(dst *os.File, b []byte, off int64) error {
	start := -1
	flush := func(end int) error {
		if start < 0 {
			return nil
		}
		_, err := dst.WriteAt(b[start:end], off+int64(start))
		start = -1
		return err
	}
	for p := 0; p < len(b); p += Page {
		end := min(p+Page, len(b))
		if bytes.Equal(b[p:end], zeroPage[:end-p]) {
			if err := flush(p); err != nil {
				return err
			}
			continue
		}
		if start < 0 {
			start = p
		}
	}
	return flush(len(b))
}
