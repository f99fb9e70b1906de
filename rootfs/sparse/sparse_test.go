package sparse

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestCopyKeepsHoles(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name string
		size int64
		data map[int64]int // offset → length of 0xAB bytes
	}{
		{"empty", 0, nil},
		{"dense", 1 << 20, map[int64]int{0: 1 << 20}},
		{"head and tail", 64 << 20, map[int64]int{0: 4096, (64 << 20) - 4096: 4096}},
		{"trailing hole", 32 << 20, map[int64]int{1 << 20: 8192}},
		{"all hole", 16 << 20, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := filepath.Join(dir, c.name+".src")
			f, _ := os.Create(src)
			want := make([]byte, c.size)
			var dataBytes int64
			for off, n := range c.data {
				b := bytes.Repeat([]byte{0xAB}, n)
				f.WriteAt(b, off)
				copy(want[off:], b)
				dataBytes += int64(n)
			}
			f.Truncate(c.size)
			f.Close()

			in, _ := os.Open(src)
			defer in.Close()
			out, err := os.Create(filepath.Join(dir, c.name+".dst"))
			if err != nil {
				t.Fatal(err)
			}
			defer out.Close()
			n, err := Copy(context.Background(), out, in, c.size)
			if err != nil {
				t.Fatal(err)
			}
			// The filesystem may round extents to its block size.
			if n < dataBytes || n > dataBytes+int64(len(c.data))*(1<<20) {
				t.Fatalf("copied %d data bytes, source has %d", n, dataBytes)
			}
			got, _ := os.ReadFile(out.Name())
			if !bytes.Equal(got, want) {
				t.Fatal("content differs")
			}
			fi, _ := out.Stat()
			if alloc := Allocated(fi); alloc > dataBytes+int64(len(c.data)+1)*(1<<20) {
				t.Fatalf("copy allocates %d bytes for %d bytes of data: holes were filled", alloc, dataBytes)
			}
			ext, err := Extents(out)
			if err != nil {
				t.Fatal(err)
			}
			if len(c.data) == 0 && len(ext) != 0 {
				t.Fatalf("hole-only file reports extents %v", ext)
			}
		})
	}
}

func TestCopyRangeCancelled(t *testing.T) {
	dir := t.TempDir()
	src, _ := os.Create(filepath.Join(dir, "a"))
	src.Write(make([]byte, 4096))
	dst, _ := os.Create(filepath.Join(dir, "b"))
	defer src.Close()
	defer dst.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := CopyRange(ctx, dst, src, 0, 4096); err == nil {
		t.Fatal("cancelled copy succeeded")
	}
}

func TestHolesHidden(t *testing.T) {
	const mib = 1 << 20
	cases := []struct {
		name              string
		data, size, alloc int64
		want              bool
	}{
		{"dense file", 64 * mib, 64 * mib, 64 * mib, false},
		{"sparse file, holes reported", 2 * mib, 64 * mib, 2 * mib, false},
		{"sparse file, holes hidden", 64 * mib, 64 * mib, 2 * mib, true},
		{"small file within margin", 512 << 10, 512 << 10, 0, false},
		{"empty", 0, 0, 0, false},
		{"delayed allocation margin", 64 * mib, 64 * mib, 60 * mib, false},
	}
	for _, c := range cases {
		if got := holesHidden(c.data, c.size, c.alloc); got != c.want {
			t.Errorf("%s: holesHidden = %v, want %v", c.name, got, c.want)
		}
	}
}
