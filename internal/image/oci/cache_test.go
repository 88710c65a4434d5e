package oci

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestCleanLayerDir(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"sha256-aaaa", ".partial-sha256-bbbb-123", ".partial-sha256-cccc-456"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := CleanLayerDir(dir); err != nil {
		t.Fatalf("CleanLayerDir: %v", err)
	}
	if got := listDir(t, dir); !slices.Equal(got, []string{"sha256-aaaa"}) {
		t.Errorf("layer dir holds %v, want only sha256-aaaa", got)
	}
	if err := CleanLayerDir(filepath.Join(dir, "missing")); err != nil {
		t.Errorf("CleanLayerDir of a missing dir: %v", err)
	}
}
