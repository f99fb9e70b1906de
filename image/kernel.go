package image

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// Compression names the compression of a kernel payload.
type Compression string

// The payload compressions ExtractVmlinux understands (the kernel's
// CONFIG_KERNEL_* choices; LZO is not among them).
const (
	None  Compression = "none"
	Gzip  Compression = "gzip"
	XZ    Compression = "xz"
	Zstd  Compression = "zstd"
	LZ4   Compression = "lz4"
	Bzip2 Compression = "bzip2"
	LZMA  Compression = "lzma"
)

// maxVmlinux bounds decompression so a corrupt or hostile payload cannot
// exhaust memory; real vmlinux images are tens of MiB.
const maxVmlinux = 512 << 20

var elfMagic = []byte("\x7fELF")

// magics are the stream signatures scanned for when the bzImage header
// does not say where the payload is (or lies).
var magics = []struct {
	c     Compression
	magic []byte
}{
	{Gzip, []byte{0x1f, 0x8b, 0x08}},
	{XZ, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}},
	{Zstd, []byte{0x28, 0xb5, 0x2f, 0xfd}},
	{LZ4, []byte{0x02, 0x21, 0x4c, 0x18}},
	{Bzip2, []byte("BZh")},
	{LZMA, []byte{0x5d, 0x00, 0x00}},
}

// candidate is a place a compressed payload may start.
type candidate struct {
	c   Compression
	off int
	// end bounds the payload when the bzImage header gives its length
	// (without the 4-byte decompressed-size trailer); 0 means unknown.
	end int
}

// ExtractVmlinux returns the uncompressed ELF kernel inside a bzImage
// (vmlinuz), and the compression it was in. It tries the payload the
// bzImage header points at first, then every compression signature in the
// file, and accepts the first candidate that decompresses to a complete
// ELF image. A blob that already is an ELF is returned as is.
func ExtractVmlinux(ctx context.Context, bz []byte) ([]byte, Compression, error) {
	if bytes.HasPrefix(bz, elfMagic) {
		if err := checkELF(bz); err != nil {
			return nil, "", err
		}
		return bz, None, nil
	}
	var errs []error
	for _, c := range candidates(bz) {
		if err := ctx.Err(); err != nil {
			return nil, "", err
		}
		out, err := decompress(c, bz)
		if len(out) >= len(elfMagic) && bytes.HasPrefix(out, elfMagic) {
			// Trailing bytes after the stream (the kernel appends the
			// decompressed size) make some readers complain once they
			// have produced everything; a complete ELF settles it.
			if cerr := checkELF(out); cerr == nil {
				return out, c.c, nil
			} else if err == nil {
				err = cerr
			}
		}
		if err == nil {
			err = errors.New("not an ELF image")
		}
		errs = append(errs, fmt.Errorf("%s at %d: %w", c.c, c.off, err))
		if len(errs) > 32 {
			break
		}
	}
	if len(errs) == 0 {
		return nil, "", errors.New("no compressed kernel payload found (not a bzImage?)")
	}
	return nil, "", fmt.Errorf("no candidate payload decompressed to an ELF kernel: %w", errors.Join(errs...))
}

// candidates lists where payloads may start: the header's own payload
// first, then every signature match, in file order.
func candidates(bz []byte) []candidate {
	var out []candidate
	seen := map[int]bool{}
	if off, n, ok := bzPayload(bz); ok {
		for _, m := range magics {
			if bytes.HasPrefix(bz[off:], m.magic) {
				end := off + n
				if n >= 4 {
					end -= 4 // size_append trailer
				}
				out = append(out, candidate{c: m.c, off: off, end: end})
				seen[off] = true
				break
			}
		}
	}
	var scan []candidate
	for _, m := range magics {
		for i := 0; ; {
			j := bytes.Index(bz[i:], m.magic)
			if j < 0 {
				break
			}
			if !seen[i+j] {
				scan = append(scan, candidate{c: m.c, off: i + j})
			}
			i += j + 1
		}
	}
	sort.SliceStable(scan, func(a, b int) bool { return scan[a].off < scan[b].off })
	return append(out, scan...)
}

// bzPayload reads the x86 boot protocol header (Documentation/arch/x86/
// boot.rst): setup_sects at 0x1f1, "HdrS" at 0x202, version at 0x206,
// payload_offset/payload_length at 0x248/0x24c (protocol 2.08+). The
// offset is relative to the protected-mode code, which follows the
// (setup_sects+1) 512-byte sectors of real-mode setup.
func bzPayload(bz []byte) (off, n int, ok bool) {
	if len(bz) < 0x250 || string(bz[0x202:0x206]) != "HdrS" {
		return 0, 0, false
	}
	if binary.LittleEndian.Uint16(bz[0x206:]) < 0x208 {
		return 0, 0, false
	}
	setup := int(bz[0x1f1])
	if setup == 0 {
		setup = 4
	}
	off = (setup+1)*512 + int(binary.LittleEndian.Uint32(bz[0x248:]))
	n = int(binary.LittleEndian.Uint32(bz[0x24c:]))
	if off <= 0 || n <= 0 || off+n > len(bz) {
		return 0, 0, false
	}
	return off, n, true
}

func decompress(c candidate, bz []byte) ([]byte, error) {
	in := bz[c.off:]
	if c.end > 0 {
		in = bz[c.off:c.end]
	}
	if c.c == LZ4 {
		return lz4Legacy(in)
	}
	var r io.Reader
	var err error
	switch c.c {
	case Gzip:
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(bytes.NewReader(in)); err == nil {
			zr.Multistream(false)
			r = zr
		}
	case XZ:
		r, err = xz.ReaderConfig{SingleStream: true}.NewReader(bytes.NewReader(in))
	case Zstd:
		var zr *zstd.Decoder
		if zr, err = zstd.NewReader(bytes.NewReader(in), zstd.WithDecoderMaxMemory(maxVmlinux), zstd.WithDecoderConcurrency(1)); err == nil {
			defer zr.Close()
			r = zr
		}
	case Bzip2:
		r = bzip2.NewReader(bytes.NewReader(in))
	case LZMA:
		r, err = lzma.NewReader(bytes.NewReader(in))
	default:
		err = fmt.Errorf("unsupported compression %s", c.c)
	}
	if err != nil {
		return nil, err
	}
	// Peek first: most signature matches in a kernel are false positives,
	// and a stream that does not start with an ELF header is not worth
	// decompressing to the end.
	head := make([]byte, len(elfMagic))
	if _, err := io.ReadFull(r, head); err != nil {
		return nil, err
	}
	if !bytes.Equal(head, elfMagic) {
		return head, errors.New("stream does not start with an ELF header")
	}
	var out bytes.Buffer
	out.Write(head)
	_, err = io.Copy(&out, io.LimitReader(r, maxVmlinux))
	return out.Bytes(), err
}

// lz4Legacy decodes the LZ4 "legacy" frame the kernel uses (lz4 -l):
// a magic, then blocks of up to 8 MiB each preceded by its compressed
// length, and no end marker — the stream ends where the data does, here
// before the kernel's 4-byte size trailer.
func lz4Legacy(in []byte) ([]byte, error) {
	const blockMax = 8 << 20
	if len(in) < 4 || binary.LittleEndian.Uint32(in) != 0x184C2102 {
		return nil, errors.New("not an LZ4 legacy stream")
	}
	in = in[4:]
	var out []byte
	buf := make([]byte, blockMax)
	for len(in) >= 4 {
		n := int(binary.LittleEndian.Uint32(in))
		if n == 0x184C2102 { // concatenated frame
			in = in[4:]
			continue
		}
		if n <= 0 || n > lz4.CompressBlockBound(blockMax) || 4+n > len(in) {
			break // the trailer or whatever follows the stream
		}
		m, err := lz4.UncompressBlock(in[4:4+n], buf)
		if err != nil {
			return out, fmt.Errorf("lz4 block at %d: %w", len(out), err)
		}
		out = append(out, buf[:m]...)
		if len(out) > maxVmlinux {
			return out, errors.New("lz4: output exceeds limit")
		}
		in = in[4+n:]
	}
	if len(out) == 0 {
		return nil, errors.New("lz4: no blocks")
	}
	return out, nil
}

// checkELF accepts only a complete ELF image: parseable, with every
// program segment and the section header table inside the data, so a
// truncated decompression is not mistaken for a kernel.
func checkELF(b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("ELF: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Off+p.Filesz > uint64(len(b)) {
			return fmt.Errorf("ELF truncated: segment at %d+%d beyond %d bytes", p.Off, p.Filesz, len(b))
		}
	}
	for _, s := range f.Sections {
		if s.Type != elf.SHT_NOBITS && s.Offset+s.FileSize > uint64(len(b)) {
			return fmt.Errorf("ELF truncated: section %s beyond %d bytes", s.Name, len(b))
		}
	}
	if len(f.Progs) == 0 {
		return errors.New("ELF has no program headers")
	}
	return nil
}
