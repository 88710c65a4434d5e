package oci

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkApplyLayer unpacks a layer of 2000 small files in 100 dirs.
func BenchmarkApplyLayer(b *testing.B) {
	var entries []ent
	for d := 0; d < 100; d++ {
		entries = append(entries, dir(fmt.Sprintf("d%03d", d)))
		for f := 0; f < 20; f++ {
			entries = append(entries, file(fmt.Sprintf("d%03d/f%02d", d, f), "some file content\n"))
		}
	}
	layer := tarOf(b, entries...)
	b.SetBytes(int64(len(layer)))
	for b.Loop() {
		root := filepath.Join(b.TempDir(), "root")
		if err := os.Mkdir(root, 0o755); err != nil {
			b.Fatal(err)
		}
		tr, err := openTree(root, slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		if err := tr.applyLayer(context.Background(), bytes.NewReader(layer)); err != nil {
			b.Fatal(err)
		}
		if err := tr.finish(); err != nil {
			b.Fatal(err)
		}
		tr.Close()
	}
}
