package image

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// maxVmlinux bounds the decompressed kernel, so a corrupt or hostile
// bzImage cannot fill the disk or memory.
const maxVmlinux = 1 << 30

// ErrNotKernel is returned by ExtractVmlinux when its input holds no
// compressed kernel it can decompress to an ELF image.
var ErrNotKernel = errors.New("no vmlinux found in kernel image")

// ExtractVmlinux writes the uncompressed ELF kernel (vmlinux) held inside the
// x86 bzImage at bzImage to dst, which Firecracker needs. An input that is
// already an ELF kernel is copied. The compressed payload is found through
// the boot header (payload_offset/payload_length, boot protocol 2.08+) or,
// failing that, by scanning for a kernelCompressor's magic; gzip, xz, zstd, lz4,
// bzip2 and lzma are understood. dst is written atomically: on error
// nothing is left behind.
func ExtractVmlinux(bzImage, dst string) error {
	data, err := os.ReadFile(bzImage)
	if err != nil {
		return fmt.Errorf("extracting vmlinux: %w", err)
	}
	out, err := vmlinuxFrom(data)
	if err != nil {
		return fmt.Errorf("extracting vmlinux from %s: %w", bzImage, err)
	}
	if err := writeVmlinuxAtomic(dst, out, 0o644); err != nil {
		return fmt.Errorf("extracting vmlinux: %w", err)
	}
	return nil
}

// vmlinuxFrom returns the ELF kernel inside data (a bzImage or a vmlinux).
func vmlinuxFrom(data []byte) ([]byte, error) {
	if bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
		if err := checkVmlinux(data); err != nil {
			return nil, err
		}
		return data, nil
	}
	if payload, ok := bzPayload(data); ok {
		out, err := decompressKernel(payload)
		if err != nil {
			return nil, fmt.Errorf("decompressing payload: %w", err)
		}
		if err := checkVmlinux(out); err != nil {
			return nil, err
		}
		return out, nil
	}
	return scanKernelPayload(data)
}

// bzPayload returns the compressed kernel described by the bzImage boot
// header, or false when data has no usable header.
func bzPayload(data []byte) ([]byte, bool) {
	const (
		offSetupSects = 0x1f1
		offMagic      = 0x202
		offVersion    = 0x206
		offPayload    = 0x248
		headerEnd     = 0x250
	)
	if len(data) < headerEnd || string(data[offMagic:offMagic+4]) != "HdrS" {
		return nil, false
	}
	if binary.LittleEndian.Uint16(data[offVersion:]) < 0x208 {
		return nil, false
	}
	setup := int(data[offSetupSects])
	if setup == 0 {
		setup = 4
	}
	start := (setup+1)*512 + int(binary.LittleEndian.Uint32(data[offPayload:]))
	end := start + int(binary.LittleEndian.Uint32(data[offPayload+4:]))
	if start >= end || end > len(data) {
		return nil, false
	}
	return data[start:end], true
}

// kernelCompressor is one compression format a kernel payload may use.
type kernelCompressor struct {
	name  string
	magic []byte
	// open returns a reader of the decompressed stream.
	open func(r io.Reader) (io.Reader, error)
	// sized: the kernel build appends the uncompressed size (4 bytes, LE)
	// after the stream (all but gzip, whose trailer carries it already).
	sized bool
}

var kernelCompressors = []kernelCompressor{
	{"gzip", []byte{0x1f, 0x8b, 0x08}, func(r io.Reader) (io.Reader, error) {
		z, err := gzip.NewReader(r)
		if err != nil {
			return nil, err
		}
		z.Multistream(false)
		return z, nil
	}, false},
	{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}, func(r io.Reader) (io.Reader, error) {
		return xz.ReaderConfig{SingleStream: true}.NewReader(r)
	}, true},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}, func(r io.Reader) (io.Reader, error) {
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxVmlinux))
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	}, true},
	{"lz4", []byte{0x02, 0x21, 0x4c, 0x18}, func(r io.Reader) (io.Reader, error) {
		return lz4.NewReader(r), nil
	}, true},
	{"bzip2", []byte{'B', 'Z', 'h'}, func(r io.Reader) (io.Reader, error) {
		return bzip2.NewReader(r), nil
	}, true},
	{"lzma", []byte{0x5d, 0x00, 0x00}, func(r io.Reader) (io.Reader, error) {
		return lzma.NewReader(r)
	}, true},
}

// decompressKernel decompresses a payload that starts at a kernelCompressor's
// magic and ends where the stream (plus its size trailer) ends, as the boot
// header promises; the size trailer is checked.
func decompressKernel(payload []byte) ([]byte, error) {
	for _, c := range kernelCompressors {
		if !bytes.HasPrefix(payload, c.magic) {
			continue
		}
		want := -1
		if c.sized && len(payload) > 4 {
			want = int(binary.LittleEndian.Uint32(payload[len(payload)-4:]))
			payload = payload[:len(payload)-4]
		}
		out, err := decompressVmlinux(c, payload)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.name, err)
		}
		if want >= 0 && len(out) != want {
			return nil, fmt.Errorf("%s: got %d bytes, the image says %d", c.name, len(out), want)
		}
		return out, nil
	}
	n := min(len(payload), 6)
	return nil, fmt.Errorf("%w: unknown compression (magic % x); lzo kernels are not supported", ErrNotKernel, payload[:n])
}

// decompressVmlinux returns what c decompressed from payload; on a decoding
// error it returns the output produced before it too.
func decompressVmlinux(c kernelCompressor, payload []byte) ([]byte, error) {
	r, err := c.open(bytes.NewReader(payload))
	if err != nil {
		return nil, err
	}
	if cl, ok := r.(io.Closer); ok {
		defer cl.Close()
	}
	var out bytes.Buffer
	n, err := io.Copy(&out, io.LimitReader(r, maxVmlinux+1))
	if n > maxVmlinux {
		return nil, fmt.Errorf("decompressed kernel exceeds %d bytes", maxVmlinux)
	}
	return out.Bytes(), err
}

// scanKernelPayload looks for a kernelCompressor's magic anywhere in data and returns
// the first candidate that decompresses to a valid ELF kernel.
func scanKernelPayload(data []byte) ([]byte, error) {
	var firstErr error
	for off := 0; off < len(data); off++ {
		c, ok := kernelMagicAt(data[off:])
		if !ok {
			continue
		}
		out, err := decompressVmlinux(c, data[off:])
		if len(out) == 0 {
			if firstErr == nil && err != nil {
				firstErr = fmt.Errorf("%s at offset %d: %w", c.name, off, err)
			}
			continue
		}
		// Without the boot header the stream's end is unknown: trailing
		// bytes may make the decoder complain after it produced everything.
		if checkVmlinux(out) == nil {
			return out, nil
		}
	}
	if firstErr != nil {
		return nil, fmt.Errorf("%w (%w)", ErrNotKernel, firstErr)
	}
	return nil, ErrNotKernel
}

func kernelMagicAt(b []byte) (kernelCompressor, bool) {
	for _, c := range kernelCompressors {
		// lzma's magic is too weak to find by scanning.
		if c.name != "lzma" && bytes.HasPrefix(b, c.magic) {
			return c, true
		}
	}
	return kernelCompressor{}, false
}

// checkVmlinux verifies that b is a complete ELF executable: its loadable
// segments must lie inside the file.
func checkVmlinux(b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("%w: decompressed data is not ELF: %w", ErrNotKernel, err)
	}
	if f.Type != elf.ET_EXEC {
		return fmt.Errorf("%w: ELF type %v, want an executable", ErrNotKernel, f.Type)
	}
	loads := 0
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD {
			continue
		}
		loads++
		if p.Off+p.Filesz > uint64(len(b)) {
			return fmt.Errorf("%w: ELF segment at %#x+%#x runs past the end (%d bytes): truncated", ErrNotKernel, p.Off, p.Filesz, len(b))
		}
	}
	if loads == 0 {
		return fmt.Errorf("%w: ELF has no loadable segments", ErrNotKernel)
	}
	return nil
}

// writeVmlinuxAtomic writes b to path through a temporary file in the same
// directory, renamed into place once synced.
func writeVmlinuxAtomic(path string, b []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(b); err != nil {
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	done = true
	return nil
}
