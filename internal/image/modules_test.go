package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// kmodTestELF builds a minimal relocatable ELF64 object whose .modinfo
// section holds the given NUL-separated fields, as a kernel module's does.
func kmodTestELF(t *testing.T, modinfo ...string) []byte {
	t.Helper()
	info := []byte(strings.Join(modinfo, "\x00") + "\x00")
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shsize = 64, 64
	infoOff := uint64(ehsize)
	strOff := infoOff + uint64(len(info))
	shOff := (strOff + uint64(len(shstr)) + 7) &^ 7
	var b bytes.Buffer
	hdr := elf.Header64{
		Type: uint16(elf.ET_REL), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Shoff: shOff, Ehsize: ehsize, Shentsize: shsize, Shnum: 3, Shstrndx: 2,
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	binary.Write(&b, binary.LittleEndian, hdr)
	b.Write(info)
	b.Write(shstr)
	b.Write(make([]byte, int(shOff)-b.Len()))
	for _, sh := range []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_PROGBITS), Off: infoOff, Size: uint64(len(info)), Addralign: 1},
		{Name: 10, Type: uint32(elf.SHT_STRTAB), Off: strOff, Size: uint64(len(shstr)), Addralign: 1},
	} {
		binary.Write(&b, binary.LittleEndian, sh)
	}
	return b.Bytes()
}

// kmodTestTree writes modules (file path under kernel/ → depends list) and
// an optional modules.builtin into a fresh directory.
func kmodTestTree(t *testing.T, mods map[string]string, builtin ...string) string {
	t.Helper()
	dir := t.TempDir()
	for p, deps := range mods {
		full := filepath.Join(dir, "kernel", p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		data := kmodTestELF(t, "license=GPL", "depends="+deps, "name="+kmodName(p))
		if strings.HasSuffix(p, ".gz") {
			var zb bytes.Buffer
			zw := gzip.NewWriter(&zb)
			zw.Write(data)
			zw.Close()
			data = zb.Bytes()
		}
		if err := os.WriteFile(full, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if builtin != nil {
		list := strings.Join(builtin, "\n") + "\n"
		if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(list), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestKmodResolve(t *testing.T) {
	tests := []struct {
		name    string
		mods    map[string]string
		builtin []string
		want    []string
		order   string // expected load order, space separated
		errHas  string
	}{{
		name:  "chain",
		mods:  map[string]string{"a/top.ko": "mid", "b/mid.ko": "base", "c/base.ko": ""},
		want:  []string{"top"},
		order: "base mid top",
	}, {
		name:  "diamond shares a dependency once",
		mods:  map[string]string{"l.ko": "core", "r.ko": "core", "core.ko": "", "top.ko": "l,r"},
		want:  []string{"top"},
		order: "core l r top",
	}, {
		name:  "dash and underscore are one name",
		mods:  map[string]string{"hw/virtio-rng.ko": "virtio_core", "virtio-core.ko": ""},
		want:  []string{"virtio_rng"},
		order: "virtio_core virtio_rng",
	}, {
		name:    "builtin modules and dependencies are skipped",
		mods:    map[string]string{"net.ko": "crc,gone", "crc.ko": ""},
		builtin: []string{"kernel/lib/crc.ko", "kernel/fs/ext4/ext4.ko"},
		want:    []string{"ext4", "net"},
		order:   "net",
	}, {
		name:  "absent wanted module is skipped",
		mods:  map[string]string{"x.ko": ""},
		want:  []string{"nothere", "x"},
		order: "x",
	}, {
		name:  "gzip-compressed modules",
		mods:  map[string]string{"a.ko.gz": "b", "b.ko": ""},
		want:  []string{"a"},
		order: "b a",
	}, {
		name:   "cycle is an error",
		mods:   map[string]string{"p.ko": "q", "q.ko": "p"},
		want:   []string{"p"},
		errHas: "cycle: p -> q -> p",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := kmodTestTree(t, tt.mods, tt.builtin...)
			got, err := kmodResolve(context.Background(), dir, tt.want)
			if tt.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("err = %v, want one containing %q", err, tt.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, m := range got {
				names = append(names, m.Name)
			}
			if g := strings.Join(names, " "); g != tt.order {
				t.Errorf("order = %q, want %q", g, tt.order)
			}
		})
	}
}

func TestKmodDependsRejectsNonModules(t *testing.T) {
	tests := []struct {
		name   string
		data   []byte
		errHas string
	}{
		{"not elf", []byte("hello"), "parsing module ELF"},
		{"no modinfo", kmodTestELFWithoutModinfo(t), "no .modinfo"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := kmodDepends(tt.data)
			if err == nil || !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("err = %v, want one containing %q", err, tt.errHas)
			}
		})
	}
}

// kmodTestELFWithoutModinfo renames the .modinfo section of a test object.
func kmodTestELFWithoutModinfo(t *testing.T) []byte {
	b := kmodTestELF(t, "depends=")
	return bytes.Replace(b, []byte(".modinfo"), []byte(".nothing"), 1)
}
