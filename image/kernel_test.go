package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

func compress(t *testing.T, c Compression, in []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	switch c {
	case Gzip:
		w, _ := gzip.NewWriterLevel(&b, gzip.BestSpeed)
		w.Write(in)
		w.Close()
	case XZ:
		w, err := xz.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(in)
		w.Close()
	case Zstd:
		w, _ := zstd.NewWriter(&b)
		w.Write(in)
		w.Close()
	case LZMA:
		w, err := lzma.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(in)
		w.Close()
	case LZ4:
		// The kernel's "lz4 -l" legacy frame: magic, then 8 MiB blocks
		// each preceded by its compressed size.
		binary.Write(&b, binary.LittleEndian, uint32(0x184C2102))
		dst := make([]byte, lz4.CompressBlockBound(8<<20))
		for rest := in; len(rest) > 0; {
			chunk := rest[:min(len(rest), 8<<20)]
			rest = rest[len(chunk):]
			n, err := lz4.CompressBlock(chunk, dst, nil)
			if err != nil || n == 0 {
				t.Fatalf("lz4: %v (n=%d)", err, n)
			}
			binary.Write(&b, binary.LittleEndian, uint32(n))
			b.Write(dst[:n])
		}
	default:
		t.Fatalf("no compressor for %s", c)
	}
	return b.Bytes()
}

// bzImage wraps a compressed payload like arch/x86/boot: real-mode setup
// sectors with the boot protocol header, then the protected-mode part with
// the payload at payload_offset followed by its decompressed size. prefix
// goes before the payload (decoys), header=false leaves no valid header.
func bzImage(payload []byte, size int, prefix []byte, header bool) []byte {
	const setupSects = 3
	b := make([]byte, (setupSects+1)*512)
	b[0x1f1] = setupSects
	if header {
		copy(b[0x202:], "HdrS")
		binary.LittleEndian.PutUint16(b[0x206:], 0x20f)
		binary.LittleEndian.PutUint32(b[0x248:], uint32(0x200+len(prefix)))
		binary.LittleEndian.PutUint32(b[0x24c:], uint32(len(payload)+4))
	}
	pm := make([]byte, 0x200) // decompressor stub stand-in
	b = append(b, pm...)
	b = append(b, prefix...)
	b = append(b, payload...)
	b = binary.LittleEndian.AppendUint32(b, uint32(size))
	return append(b, bytes.Repeat([]byte{0xcc}, 300)...) // trailing junk
}

func TestExtractVmlinux(t *testing.T) {
	ctx := context.Background()
	small := fakeKernel(1<<20, true)
	tiny := fakeKernel(128<<10, true) // for the slow pure-Go xz and lzma encoders
	big := fakeKernel(9<<20, true)    // more than one 8 MiB LZ4 block
	// A decoy: a real gzip stream that is not an ELF, and a bare magic.
	decoy := append(compress(t, Gzip, []byte("not a kernel at all")), 0x1f, 0x8b, 0x08, 0, 1, 2, 3)
	cases := []struct {
		name   string
		c      Compression
		kernel []byte
		prefix []byte
		header bool
	}{
		{"gzip", Gzip, small, nil, true},
		{"xz", XZ, tiny, nil, true},
		{"zstd", Zstd, small, nil, true},
		{"lz4", LZ4, small, nil, true},
		{"lz4 multi-block", LZ4, big, nil, true},
		{"lzma", LZMA, tiny, nil, true},
		{"gzip without header", Gzip, small, decoy, false},
		{"lz4 without header", LZ4, small, decoy, false},
		{"zstd without header", Zstd, small, decoy, false},
		{"xz behind decoys", XZ, tiny, decoy, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bz := bzImage(compress(t, c.c, c.kernel), len(c.kernel), c.prefix, c.header)
			out, got, err := ExtractVmlinux(ctx, bz)
			if err != nil {
				t.Fatal(err)
			}
			if got != c.c || !bytes.Equal(out, c.kernel) {
				t.Fatalf("got %s, %d bytes (equal %v); want %s, %d bytes", got, len(out), bytes.Equal(out, c.kernel), c.c, len(c.kernel))
			}
			entry, ok, err := PVHEntry(bytes.NewReader(out))
			if err != nil || !ok || entry != 0x1000850 {
				t.Fatalf("PVHEntry = %#x, %v, %v", entry, ok, err)
			}
		})
	}
}

func TestExtractVmlinuxFailures(t *testing.T) {
	ctx := context.Background()
	k := fakeKernel(1<<20, true)
	gz := compress(t, Gzip, k)
	cases := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"no payload", bytes.Repeat([]byte{0x90}, 8192)},
		{"truncated payload", bzImage(gz[:len(gz)/2], len(k), nil, true)},
		{"payload is not an ELF", bzImage(compress(t, Zstd, bytes.Repeat([]byte("x"), 1<<20)), 1<<20, nil, true)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, _, err := ExtractVmlinux(ctx, c.in); err == nil {
				t.Fatal("extraction succeeded")
			}
		})
	}
	// An ELF passes through.
	if out, c, err := ExtractVmlinux(ctx, k); err != nil || c != None || !bytes.Equal(out, k) {
		t.Fatalf("plain ELF: %s, %v", c, err)
	}
	// A truncated ELF does not.
	if _, _, err := ExtractVmlinux(ctx, k[:len(k)/2]); err == nil {
		t.Fatal("truncated ELF accepted")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := ExtractVmlinux(cancelled, bzImage(gz, len(k), nil, true)); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

func TestPVHEntryAbsent(t *testing.T) {
	_, ok, err := PVHEntry(bytes.NewReader(fakeKernel(4096, false)))
	if err != nil || ok {
		t.Fatalf("kernel without the note: ok=%v err=%v", ok, err)
	}
	if _, _, err := PVHEntry(bytes.NewReader([]byte("junk"))); err == nil {
		t.Fatal("junk parsed as ELF")
	}
}
