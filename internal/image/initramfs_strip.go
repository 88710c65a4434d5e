package image

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"strings"
)

// initramfsStripELF returns a copy of a 64-bit little-endian ELF executable
// without its debug information and symbol table (.debug_*, .symtab,
// .strtab), like strip(1): a Go binary keeps its own function table
// (.gopclntab), so panics still name functions. Every byte of the initramfs
// is unpacked by the guest kernel at every boot, which under software
// emulation costs about 17 ms per MB. Nothing that is loaded changes: only
// non-allocated sections stored after every loaded segment are dropped. When
// the layout is not that (not ELF, another linker's order), the input is
// returned as it is, with ok false.
func initramfsStripELF(data []byte) (out []byte, ok bool) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil || f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB {
		return data, false
	}
	defer f.Close()
	var hdr elf.Header64
	if binary.Read(bytes.NewReader(data), binary.LittleEndian, &hdr) != nil || hdr.Shstrndx == 0 {
		return data, false
	}
	cut, err := initramfsStripCut(f)
	if err != nil {
		return data, false
	}
	// Keep the other sections; index 0 (the null section) stays index 0.
	newIndex := make([]int, len(f.Sections))
	var kept []int
	var shstr bytes.Buffer
	shstr.WriteByte(0)
	nameOff := map[int]uint32{}
	for i, s := range f.Sections {
		newIndex[i] = -1
		if i != 0 && initramfsStripDrop(s) {
			continue
		}
		newIndex[i] = len(kept)
		kept = append(kept, i)
		if i != 0 {
			nameOff[i] = uint32(shstr.Len())
			shstr.WriteString(s.Name)
			shstr.WriteByte(0)
		}
	}
	var b bytes.Buffer
	b.Write(data[:cut])
	shstrOff := uint64(b.Len())
	b.Write(shstr.Bytes())
	for b.Len()%8 != 0 {
		b.WriteByte(0)
	}
	shoff := uint64(b.Len())
	for _, i := range kept {
		var sh elf.Section64
		raw := data[hdr.Shoff+uint64(i)*uint64(hdr.Shentsize):]
		if binary.Read(bytes.NewReader(raw), binary.LittleEndian, &sh) != nil {
			return data, false
		}
		if i != 0 {
			sh.Name = nameOff[i]
			sh.Link = initramfsStripRemap(newIndex, sh.Link)
			if elf.SectionFlag(sh.Flags)&elf.SHF_INFO_LINK != 0 {
				sh.Info = initramfsStripRemap(newIndex, sh.Info)
			}
		}
		if i == int(hdr.Shstrndx) {
			sh.Off, sh.Size = shstrOff, uint64(shstr.Len())
		}
		binary.Write(&b, binary.LittleEndian, sh)
	}
	out = b.Bytes()
	hdr.Shoff = shoff
	hdr.Shnum = uint16(len(kept))
	hdr.Shstrndx = uint16(newIndex[hdr.Shstrndx])
	var h bytes.Buffer
	binary.Write(&h, binary.LittleEndian, hdr)
	copy(out, h.Bytes())
	return out, true
}

// initramfsStripDrop says whether a section is debug information or the
// symbol table.
func initramfsStripDrop(s *elf.Section) bool {
	return strings.HasPrefix(s.Name, ".debug_") || strings.HasPrefix(s.Name, ".zdebug_") ||
		s.Name == ".symtab" || s.Name == ".strtab"
}

// initramfsStripCut returns the file offset where the dropped sections
// start, after checking that nothing kept (segments, sections other than
// the section-name table) lies at or beyond it.
func initramfsStripCut(f *elf.File) (uint64, error) {
	var cut uint64
	found := false
	for _, s := range f.Sections {
		if !initramfsStripDrop(s) {
			continue
		}
		if s.Flags&elf.SHF_ALLOC != 0 {
			return 0, errors.New("a section to drop is loaded")
		}
		if !found || s.Offset < cut {
			cut, found = s.Offset, true
		}
	}
	if !found {
		return 0, errors.New("nothing to strip")
	}
	for _, p := range f.Progs {
		if p.Off+p.Filesz > cut {
			return 0, errors.New("a segment lies after the debug sections")
		}
	}
	for i, s := range f.Sections {
		if i == 0 || initramfsStripDrop(s) || s.Type == elf.SHT_NOBITS || s.Type == elf.SHT_STRTAB && s.Name == ".shstrtab" {
			continue
		}
		if s.Offset+s.FileSize > cut {
			return 0, errors.New("a kept section lies after the debug sections")
		}
	}
	return cut, nil
}

// initramfsStripRemap maps an old section index to its new one (0 when the
// section was dropped).
func initramfsStripRemap(newIndex []int, old uint32) uint32 {
	if int(old) >= len(newIndex) || newIndex[old] < 0 {
		return 0
	}
	return uint32(newIndex[old])
}
