package image

import (
	"bytes"
	"encoding/binary"
)

// elfSection is a section of a synthetic ELF file.
type elfSection struct {
	name string
	typ  uint32
	data []byte
}

// buildELF writes a little-endian ELF64 file of type typ (1 REL, 2 EXEC)
// for x86-64 with the given sections. With load set, an EXEC file gets a
// PT_LOAD covering the file and a PT_NOTE per SHT_NOTE section — enough
// for debug/elf and for PVHEntry, standing in for vmlinux and for kernel
// modules in tests.
func buildELF(typ uint16, load bool, sections []elfSection) []byte {
	le := binary.LittleEndian
	shstr := []byte{0}
	nameOff := make([]uint32, len(sections))
	for i, s := range sections {
		nameOff[i] = uint32(len(shstr))
		shstr = append(shstr, append([]byte(s.name), 0)...)
	}
	shstrName := uint32(len(shstr))
	shstr = append(shstr, []byte(".shstrtab\x00")...)

	var notes []int
	for i, s := range sections {
		if s.typ == 7 { // SHT_NOTE
			notes = append(notes, i)
		}
	}
	nph := 0
	if load {
		nph = 1 + len(notes)
	}
	off := uint64(64 + 56*nph)
	offs := make([]uint64, len(sections))
	var body bytes.Buffer
	for i, s := range sections {
		for (off+uint64(body.Len()))%8 != 0 {
			body.WriteByte(0)
		}
		offs[i] = off + uint64(body.Len())
		body.Write(s.data)
	}
	strOff := off + uint64(body.Len())
	body.Write(shstr)
	for (off+uint64(body.Len()))%8 != 0 {
		body.WriteByte(0)
	}
	shoff := off + uint64(body.Len())
	total := shoff + uint64(64*(len(sections)+2))

	var b bytes.Buffer
	w := func(v any) { binary.Write(&b, le, v) }
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	w(typ)
	w(uint16(62))
	w(uint32(1))
	w(uint64(0x1000000)) // entry
	if nph > 0 {
		w(uint64(64))
	} else {
		w(uint64(0))
	}
	w(shoff)
	w(uint32(0))
	w(uint16(64))
	w(uint16(56))
	w(uint16(nph))
	w(uint16(64))
	w(uint16(len(sections) + 2))
	w(uint16(len(sections) + 1)) // shstrndx
	if load {
		w(uint32(1)) // PT_LOAD
		w(uint32(5))
		w(uint64(0))
		w(uint64(0x1000000))
		w(uint64(0x1000000))
		w(total)
		w(total)
		w(uint64(0x200000))
		for _, i := range notes {
			w(uint32(4)) // PT_NOTE
			w(uint32(4))
			w(offs[i])
			w(uint64(0x1000000) + offs[i])
			w(uint64(0x1000000) + offs[i])
			w(uint64(len(sections[i].data)))
			w(uint64(len(sections[i].data)))
			w(uint64(4))
		}
	}
	b.Write(body.Bytes())
	sh := func(name, typ uint32, off, size uint64) {
		w(name)
		w(typ)
		w(uint64(2)) // SHF_ALLOC
		w(uint64(0))
		w(off)
		w(size)
		w(uint32(0))
		w(uint32(0))
		w(uint64(1))
		w(uint64(0))
	}
	b.Write(make([]byte, 64)) // null section
	for i, s := range sections {
		sh(nameOff[i], s.typ, offs[i], uint64(len(s.data)))
	}
	sh(shstrName, 3, strOff, uint64(len(shstr)))
	return b.Bytes()
}

// note encodes one ELF note.
func note(owner string, typ uint32, desc []byte) []byte {
	var b bytes.Buffer
	le := binary.LittleEndian
	name := append([]byte(owner), 0)
	binary.Write(&b, le, uint32(len(name)))
	binary.Write(&b, le, uint32(len(desc)))
	binary.Write(&b, le, typ)
	b.Write(name)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.Write(desc)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	return b.Bytes()
}

// fakeKernel is a synthetic vmlinux: an EXEC ELF with a Linux note and the
// Xen PVH entry note, plus filler text of the given size.
func fakeKernel(filler int, pvh bool) []byte {
	notes := note("Linux", 6, []byte("6.1.0-test\x00\x00"))
	if pvh {
		notes = append(notes, note("Xen", XenElfnotePhys32Entry, []byte{0x50, 0x08, 0x00, 0x01})...)
	}
	text := make([]byte, filler)
	for i := range text {
		// Compressible but not trivially: a slow-moving pattern.
		text[i] = byte(i/7) ^ byte(i>>13)
	}
	return buildELF(2, true, []elfSection{{".text", 1, text}, {".notes", 7, notes}})
}

// fakeModule is a synthetic kernel module with a .modinfo section.
func fakeModule(name string, modinfo ...string) []byte {
	var mi []byte
	for _, kv := range append([]string{"name=" + name}, modinfo...) {
		mi = append(mi, append([]byte(kv), 0)...)
	}
	return buildELF(1, false, []elfSection{{".text", 1, []byte{0xc3}}, {".modinfo", 1, mi}})
}
