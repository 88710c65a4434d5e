package sparse

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestCopy(t *testing.T) {
	page := bytes.Repeat([]byte{7}, Page)
	tests := []struct {
		name   string
		writes map[int64][]byte // offset → bytes written into a sparse source
		size   int64
	}{
		{"empty", nil, 0},
		{"all hole", nil, 8 * Page},
		{"data then hole", map[int64][]byte{0: page}, 16 * Page},
		{"hole then data", map[int64][]byte{10 * Page: page}, 11 * Page},
		{"written zeros become holes", map[int64][]byte{0: make([]byte, 4*Page), 5 * Page: page}, 8 * Page},
		{"unaligned tail", map[int64][]byte{3*Page + 100: []byte("tail")}, 3*Page + 104},
		{"size cuts the source", map[int64][]byte{0: page, 6 * Page: page}, 2 * Page},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			src, err := os.Create(filepath.Join(dir, "src"))
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			if err := src.Truncate(max(tt.size, 12*Page)); err != nil {
				t.Fatal(err)
			}
			for off, b := range tt.writes {
				if _, err := src.WriteAt(b, off); err != nil {
					t.Fatal(err)
				}
			}
			dst, err := os.Create(filepath.Join(dir, "dst"))
			if err != nil {
				t.Fatal(err)
			}
			defer dst.Close()
			if err := Copy(context.Background(), dst, src, tt.size); err != nil {
				t.Fatal(err)
			}
			want := make([]byte, tt.size)
			src.ReadAt(want, 0)
			got, _ := os.ReadFile(dst.Name())
			if !bytes.Equal(got, want) {
				t.Fatalf("copy differs: %d bytes, want %d", len(got), len(want))
			}
			nonZero := int64(0)
			for p := int64(0); p < tt.size; p += Page {
				if !bytes.Equal(want[p:min(p+Page, tt.size)], zeroPage[:min(Page, tt.size-p)]) {
					nonZero++
				}
			}
			fi, _ := dst.Stat()
			if blocks := fi.Sys().(*syscall.Stat_t).Blocks * 512; blocks > nonZero*Page {
				t.Fatalf("dst uses %d bytes on disk for %d non-zero pages: holes were filled", blocks, nonZero)
			}
		})
	}
}

func TestCopyCancelled(t *testing.T) {
	dir := t.TempDir()
	src, _ := os.Create(filepath.Join(dir, "src"))
	defer src.Close()
	src.WriteAt([]byte("x"), 0)
	dst, _ := os.Create(filepath.Join(dir, "dst"))
	defer dst.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Copy(ctx, dst, src, 1); err == nil {
		t.Fatal("cancelled copy succeeded")
	}
}
