package image

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// XenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY: the note (owner
// "Xen") holding the 32-bit physical entry point for PVH direct boot.
// QEMU's microvm and Firecracker boot an ELF vmlinux through it.
const XenElfnotePhys32Entry = 18

// PVHEntry returns the PVH entry point of an ELF kernel, or ok=false when
// it has no XEN_ELFNOTE_PHYS32_ENTRY note (a kernel built without
// CONFIG_PVH, which cannot be booted as an ELF by QEMU microvm).
func PVHEntry(r io.ReaderAt) (entry uint64, ok bool, err error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return 0, false, fmt.Errorf("PVH note: %w", err)
	}
	defer f.Close()
	var notes [][]byte
	for _, p := range f.Progs {
		if p.Type == elf.PT_NOTE {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return 0, false, fmt.Errorf("PVH note: %w", err)
			}
			notes = append(notes, b)
		}
	}
	if len(notes) == 0 {
		for _, s := range f.Sections {
			if s.Type == elf.SHT_NOTE {
				b, err := s.Data()
				if err != nil {
					return 0, false, fmt.Errorf("PVH note: %w", err)
				}
				notes = append(notes, b)
			}
		}
	}
	for _, b := range notes {
		e, found, err := findNote(b, f.ByteOrder, "Xen", XenElfnotePhys32Entry)
		if err != nil {
			return 0, false, err
		}
		if found {
			switch len(e) {
			case 4:
				return uint64(f.ByteOrder.Uint32(e)), true, nil
			case 8:
				return f.ByteOrder.Uint64(e), true, nil
			}
			return 0, false, fmt.Errorf("PVH note: descriptor of %d bytes", len(e))
		}
	}
	return 0, false, nil
}

// findNote walks ELF notes (namesz, descsz, type, name and descriptor
// each padded to 4 bytes) for one of the given owner and type.
func findNote(b []byte, bo binary.ByteOrder, owner string, typ uint32) ([]byte, bool, error) {
	pad := func(n uint32) int { return int((n + 3) &^ 3) }
	for len(b) >= 12 {
		namesz, descsz, t := bo.Uint32(b), bo.Uint32(b[4:]), bo.Uint32(b[8:])
		b = b[12:]
		if pad(namesz) > len(b) {
			return nil, false, errors.New("ELF note: name overruns segment")
		}
		name := b[:namesz]
		b = b[pad(namesz):]
		if pad(descsz) > len(b) && int(descsz) > len(b) {
			return nil, false, errors.New("ELF note: descriptor overruns segment")
		}
		desc := b[:descsz]
		if pad(descsz) <= len(b) {
			b = b[pad(descsz):]
		} else {
			b = b[len(b):]
		}
		if t == typ && string(bytes.TrimRight(name, "\x00")) == owner {
			return desc, true, nil
		}
	}
	return nil, false, nil
}
