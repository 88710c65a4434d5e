package image

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
)

const hostCloudKernel = "/boot/vmlinuz-6.1.0-57-cloud-amd64"

// TestExtractVmlinuxHostKernel extracts Debian's cloud kernel (lz4 payload).
func TestExtractVmlinuxHostKernel(t *testing.T) {
	if _, err := os.Stat(hostCloudKernel); err != nil {
		if os.Getenv("SMOLVM_VM_TESTS") == "1" {
			t.Fatalf("SMOLVM_VM_TESTS=1 but %s is missing: %v", hostCloudKernel, err)
		}
		t.Skipf("%s not installed (apt-get install linux-image-cloud-amd64)", hostCloudKernel)
	}
	dst := filepath.Join(t.TempDir(), "vmlinux")
	if err := ExtractVmlinux(hostCloudKernel, dst); err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(dst)
	if err != nil {
		t.Fatalf("result is not ELF: %v", err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		t.Errorf("machine %v type %v, want EM_X86_64 ET_EXEC", f.Machine, f.Type)
	}
	st, _ := os.Stat(dst)
	t.Logf("vmlinux: %d bytes, entry %#x", st.Size(), f.Entry)
	// A complete kernel has its symbol-free sections; .text must be there.
	if f.Section(".text") == nil {
		t.Error("no .text section in the extracted kernel")
	}
}

// TestExtractVmlinuxFormats wraps a real ELF executable (this test binary)
// in synthetic bzImages, one per compression, with and without a usable
// boot header (the latter exercises the magic scan).
func TestExtractVmlinuxFormats(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	elfBytes, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if checkVmlinux(elfBytes) != nil {
		t.Skip("the test binary is not an ET_EXEC ELF (built as PIE?)")
	}
	formats := []struct {
		name  string
		comp  func(t *testing.T, b []byte) []byte
		sized bool
	}{
		{"gzip", gzipBytes, false},
		{"xz", xzBytes, true},
		{"zstd", zstdBytes, true},
		{"lz4-legacy", lz4LegacyBytes, true},
	}
	dir := t.TempDir()
	for _, f := range formats {
		payload := f.comp(t, elfBytes)
		if f.sized {
			payload = binary.LittleEndian.AppendUint32(payload, uint32(len(elfBytes)))
		}
		for _, header := range []bool{true, false} {
			name := f.name + map[bool]string{true: "/header", false: "/scan"}[header]
			t.Run(name, func(t *testing.T) {
				in := filepath.Join(dir, f.name+name[len(f.name)+1:]+".bz")
				writeTestFile(t, in, fakeBzImage(payload, header))
				out := filepath.Join(dir, "out-"+f.name+"-"+name[len(f.name)+1:])
				if err := ExtractVmlinux(in, out); err != nil {
					t.Fatal(err)
				}
				got, err := os.ReadFile(out)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, elfBytes) {
					t.Fatalf("extracted %d bytes differ from the %d-byte original", len(got), len(elfBytes))
				}
			})
		}
	}
}

func TestExtractVmlinuxRejects(t *testing.T) {
	exe, _ := os.Executable()
	elfBytes, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	notELF := bytes.Repeat([]byte("not a kernel "), 1000)
	gz := gzipBytes(t, elfBytes)
	cases := []struct {
		name string
		data []byte
	}{
		{"random bytes", notELF},
		{"empty", nil},
		{"compressed non-ELF", fakeBzImage(gzipBytes(t, notELF), true)},
		{"truncated payload", fakeBzImage(gz[:len(gz)/2], true)},
		{"wrong size trailer", fakeBzImage(binary.LittleEndian.AppendUint32(xzBytes(t, elfBytes), 12345), true)},
		{"truncated ELF", elfBytes[:len(elfBytes)/2]},
		{"unknown compression", fakeBzImage([]byte{0x89, 0x4c, 0x5a, 0x4f, 0, 0, 0, 0}, true)},
	}
	dir := t.TempDir()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := filepath.Join(dir, "in")
			writeTestFile(t, in, c.data)
			out := filepath.Join(dir, "out")
			err := ExtractVmlinux(in, out)
			if err == nil {
				t.Fatal("ExtractVmlinux accepted bad input")
			}
			t.Log(err)
			if _, statErr := os.Stat(out); !errors.Is(statErr, os.ErrNotExist) {
				t.Errorf("output left behind after error: %v", statErr)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 1 {
				t.Errorf("temporary files left behind: %v", ents)
			}
		})
	}
	if err := ExtractVmlinux(filepath.Join(dir, "missing"), filepath.Join(dir, "out")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing input: got %v, want ErrNotExist", err)
	}
}

// fakeBzImage lays out a minimal bzImage: 4 setup sectors plus the boot
// sector, some decompressor code, then payload. Without header, the HdrS
// signature is absent and the payload must be found by scanning.
func fakeBzImage(payload []byte, header bool) []byte {
	const setupSects = 4
	const codeLen = 300
	img := make([]byte, (setupSects+1)*512+codeLen)
	for i := (setupSects + 1) * 512; i < len(img); i++ {
		img[i] = 0x90 // "code" that holds no magic
	}
	img[0x1f1] = setupSects
	if header {
		copy(img[0x202:], "HdrS")
		binary.LittleEndian.PutUint16(img[0x206:], 0x20f)
		binary.LittleEndian.PutUint32(img[0x248:], codeLen)
		binary.LittleEndian.PutUint32(img[0x24c:], uint32(len(payload)))
	}
	return append(img, payload...)
}

func writeTestFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func compressWith(t *testing.T, b []byte, mk func(io.Writer) (io.WriteCloser, error)) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := mk(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gzipBytes(t *testing.T, b []byte) []byte {
	return compressWith(t, b, func(w io.Writer) (io.WriteCloser, error) {
		return gzip.NewWriterLevel(w, gzip.BestSpeed)
	})
}

func xzBytes(t *testing.T, b []byte) []byte {
	return compressWith(t, b, func(w io.Writer) (io.WriteCloser, error) { return xz.NewWriter(w) })
}

func zstdBytes(t *testing.T, b []byte) []byte {
	return compressWith(t, b, func(w io.Writer) (io.WriteCloser, error) {
		return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest))
	})
}

func lz4LegacyBytes(t *testing.T, b []byte) []byte {
	return compressWith(t, b, func(w io.Writer) (io.WriteCloser, error) {
		zw := lz4.NewWriter(w)
		if err := zw.Apply(lz4.LegacyOption(true)); err != nil {
			return nil, err
		}
		return zw, nil
	})
}
