package image

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"unicode"
)

// ErrNoKernelVersion is returned by KernelVersion for a file that is not a
// bzImage with a version string (a vmlinux ELF, say).
var ErrNoKernelVersion = errors.New("no kernel version string")

// KernelVersion reads the release ("6.1.0-57-cloud-amd64") from a bzImage.
// The x86 boot header holds, at 0x20E, a pointer to the version string less
// 0x200; it exists since boot protocol 2.00 (header magic "HdrS" at 0x202).
func KernelVersion(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read kernel version: %w", err)
	}
	defer f.Close()
	v, err := kernelReadVersion(f)
	if err != nil {
		return "", fmt.Errorf("read kernel version of %s: %w", path, err)
	}
	return v, nil
}

// kernelReadVersion does KernelVersion's work on an open image.
func kernelReadVersion(r io.ReaderAt) (string, error) {
	hdr := make([]byte, 0x210)
	if _, err := r.ReadAt(hdr, 0); err != nil {
		return "", fmt.Errorf("%w: file too short for a boot header", ErrNoKernelVersion)
	}
	if string(hdr[0x202:0x206]) != "HdrS" {
		return "", fmt.Errorf("%w: no bzImage header (not an x86 bzImage)", ErrNoKernelVersion)
	}
	if proto := binary.LittleEndian.Uint16(hdr[0x206:]); proto < 0x200 {
		return "", fmt.Errorf("%w: boot protocol %#x is older than 2.00", ErrNoKernelVersion, proto)
	}
	off := binary.LittleEndian.Uint16(hdr[0x20E:])
	if off == 0 {
		return "", fmt.Errorf("%w: header has no version pointer", ErrNoKernelVersion)
	}
	buf := make([]byte, 256)
	n, err := r.ReadAt(buf, int64(off)+0x200)
	if n == 0 && err != nil {
		return "", fmt.Errorf("%w: version pointer %#x is past the end", ErrNoKernelVersion, off)
	}
	s, _, _ := bytes.Cut(buf[:n], []byte{0})
	v, _, _ := strings.Cut(string(s), " ")
	if !kernelPlausibleVersion(v) {
		return "", fmt.Errorf("%w: %q at %#x is not a kernel release", ErrNoKernelVersion, v, int(off)+0x200)
	}
	return v, nil
}

// kernelPlausibleVersion accepts releases like 6.1.0-57-cloud-amd64: a digit
// first, then printable characters usable in a path element.
func kernelPlausibleVersion(v string) bool {
	if v == "" || len(v) > 64 || v[0] < '0' || v[0] > '9' {
		return false
	}
	for _, c := range v {
		if c > unicode.MaxASCII || !(unicode.IsLetter(c) || unicode.IsDigit(c) || strings.ContainsRune(".-_+~", c)) {
			return false
		}
	}
	return true
}

// kernelCompareReleases orders kernel releases the way people read them:
// digit runs as numbers ("6.10" after "6.9"), the rest as text.
func kernelCompareReleases(a, b string) int {
	for a != "" && b != "" {
		ca, ra := kernelSplitRun(a)
		cb, rb := kernelSplitRun(b)
		if c := kernelCompareRun(ca, cb); c != 0 {
			return c
		}
		a, b = ra, rb
	}
	return len(a) - len(b)
}

// kernelSplitRun splits s after its leading run of digits or non-digits.
func kernelSplitRun(s string) (run, rest string) {
	digit := s[0] >= '0' && s[0] <= '9'
	i := 1
	for i < len(s) && (s[i] >= '0' && s[i] <= '9') == digit {
		i++
	}
	return s[:i], s[i:]
}

func kernelCompareRun(a, b string) int {
	na, ea := strconv.ParseUint(a, 10, 64)
	nb, eb := strconv.ParseUint(b, 10, 64)
	if ea == nil && eb == nil {
		switch {
		case na < nb:
			return -1
		case na > nb:
			return 1
		}
		return 0
	}
	return strings.Compare(a, b)
}
