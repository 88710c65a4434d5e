package smolvm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRemoveImageInUse: an image a VM's overlay disk depends on cannot be
// removed until the VM is gone.
func TestRemoveImageInUse(t *testing.T) {
	ctx := context.Background()
	opts := testOpts(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello"), []byte("hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	name := "inuse-" + newID()[3:]
	if _, err := ImageFromDir(ctx, name, dir, opts...); err != nil {
		t.Fatal(err)
	}
	defer RemoveImage(ctx, name, opts...)
	vm, err := New(ctx, Config{Image: name, Net: NetNone}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	err = RemoveImage(ctx, name, opts...)
	if !errors.Is(err, ErrState) || !strings.Contains(err.Error(), vm.ID()) {
		t.Fatalf("removing an image in use: %v; want ErrState naming %s", err, vm.ID())
	}
	if err := vm.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := RemoveImage(ctx, name, opts...); err != nil {
		t.Fatalf("removing the image once unused: %v", err)
	}
}
