package image

import (
	"fmt"
	"sort"
)

// cpioEntry is one entry read back from a newc archive (tests, verify).
type cpioEntry struct {
	Name         string
	Mode         uint32
	Data         []byte
	Major, Minor uint32
}

// readCpio parses a newc archive into its entries, sorted by name.
func readCpio(b []byte) ([]cpioEntry, error) {
	var out []cpioEntry
	off := 0
	field := func(i int) uint32 {
		var v uint32
		fmt.Sscanf(string(b[off+6+8*i:off+14+8*i]), "%08X", &v)
		return v
	}
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			return nil, fmt.Errorf("cpio: bad header at %d", off)
		}
		mode, size, major, minor, namesz := field(1), int(field(6)), field(9), field(10), int(field(11))
		nameStart := off + 110
		if nameStart+namesz > len(b) {
			return nil, fmt.Errorf("cpio: name overruns archive at %d", off)
		}
		name := string(b[nameStart : nameStart+namesz-1])
		dataStart := align(nameStart + namesz)
		if dataStart+size > len(b) {
			return nil, fmt.Errorf("cpio: data of %s overruns archive", name)
		}
		if name == "TRAILER!!!" {
			break
		}
		out = append(out, cpioEntry{Name: name, Mode: mode, Data: b[dataStart : dataStart+size], Major: major, Minor: minor})
		off = align(dataStart + size)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
