package image

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestInitramfsStripELF(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skipf("needs the go tool to build a binary with debug information: %v", err)
	}
	dir := t.TempDir()
	exe := filepath.Join(dir, "stripme")
	build := exec.Command("go", "build", "-o", exe, "./testdata/stripme")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	orig, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	stripped, ok := initramfsStripELF(orig)
	if !ok {
		t.Fatal("the binary was not stripped")
	}
	t.Logf("%d -> %d bytes", len(orig), len(stripped))
	if len(stripped) >= len(orig) {
		t.Errorf("stripped binary is not smaller")
	}
	f, err := elf.NewFile(bytes.NewReader(stripped))
	if err != nil {
		t.Fatalf("stripped binary is not valid ELF: %v", err)
	}
	for _, s := range f.Sections {
		if strings.HasPrefix(s.Name, ".debug") || s.Name == ".symtab" {
			t.Errorf("section %s survived", s.Name)
		}
	}
	for _, name := range []string{".text", ".gopclntab", ".go.buildinfo", ".shstrtab"} {
		if f.Section(name) == nil {
			t.Errorf("section %s lost", name)
		}
	}
	// The loaded bytes are untouched and the binary still runs.
	bin := filepath.Join(dir, "stripped")
	if err := os.WriteFile(bin, stripped, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin).CombinedOutput()
	if err != nil || string(out) != "hello from main.main\n" {
		t.Errorf("stripped binary: %v, output %q", err, out)
	}

	tests := []struct {
		name string
		in   []byte
	}{
		{"not elf", []byte("#!/bin/sh\necho hi\n")},
		{"already stripped", stripped},
		{"empty", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := initramfsStripELF(tt.in)
			if ok || !bytes.Equal(got, tt.in) {
				t.Errorf("ok = %v, changed = %v; want the input back untouched", ok, !bytes.Equal(got, tt.in))
			}
		})
	}
}
