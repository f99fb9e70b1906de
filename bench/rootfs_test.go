package bench

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/hearth-vm/hearth/rootfs"
	"github.com/hearth-vm/hearth/rootfs/digest"
	"github.com/hearth-vm/hearth/rootfs/looptest"
)

const gib = 1 << 30

// writeImage writes a size-byte file at p whose first data bytes are
// pseudo-random (incompressible, so no filesystem can cheat) and the rest
// holes, standing in for a VM's root filesystem image.
func writeImage(b *testing.B, p string, size, data int64) {
	b.Helper()
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, 4<<20)
	for off := int64(0); off < data; off += int64(len(buf)) {
		rng.Read(buf)
		if _, err := f.WriteAt(buf[:min(int64(len(buf)), data-off)], off); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		b.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRootfsClone gives a VM its disk from a 1 GiB template: by
// FICLONE reflink on XFS (hearth's first rung) against a sparse in-kernel
// copy on ext4 (the fallback rung, and the baseline). "dense" templates
// are 1 GiB of data; "sparse" ones hold 64 MiB of data in 1 GiB, like a
// freshly built rootfs. Both filesystems are loop-mounted images on the
// same disk. Needs root.
func BenchmarkRootfsClone(b *testing.B) {
	cases := []struct {
		name   string
		fs     string
		data   int64
		noLink bool
	}{
		{"reflink-xfs-dense", "xfs", gib, false},
		{"copy-ext4-dense", "ext4", gib, true},
		{"reflink-xfs-sparse", "xfs", 64 << 20, false},
		{"copy-ext4-sparse", "ext4", 64 << 20, true},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			mnt := looptest.Mount(b, c.fs, 3*gib)
			src := filepath.Join(mnt, "template.ext4")
			writeImage(b, src, gib, c.data)
			ctx := context.Background()
			b.SetBytes(gib)
			var method rootfs.CloneMethod
			for b.Loop() {
				dst := filepath.Join(mnt, "vm.ext4")
				info, err := rootfs.Clone(ctx, src, dst, rootfs.CloneOptions{NoReflink: c.noLink})
				if err != nil {
					b.Fatal(err)
				}
				method = info.Method
				b.StopTimer()
				if err := rootfs.RemoveClone(dst); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			want := rootfs.CloneReflink
			if c.noLink {
				want = rootfs.CloneCopy
			}
			if method != want {
				b.Fatalf("cloned by %s, want %s", method, want)
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/clone")
		})
	}
}

// BenchmarkRootfsHash hashes a 1 GiB image (page cache warm) with
// hearth's streaming SHA-256 against coreutils sha256sum on the same
// file, the baseline.
func BenchmarkRootfsHash(b *testing.B) {
	p := filepath.Join(b.TempDir(), "image")
	writeImage(b, p, gib, gib)
	ctx := context.Background()
	want, _, err := digest.File(ctx, p) // also warms the page cache
	if err != nil {
		b.Fatal(err)
	}
	b.Run("digest", func(b *testing.B) {
		b.SetBytes(gib)
		for b.Loop() {
			got, _, err := digest.File(ctx, p)
			if err != nil || got != want {
				b.Fatalf("digest %s, %v", got, err)
			}
		}
	})
	b.Run("sha256sum", func(b *testing.B) {
		if _, err := exec.LookPath("sha256sum"); err != nil {
			b.Skip("sha256sum not installed")
		}
		b.SetBytes(gib)
		for b.Loop() {
			out, err := exec.Command("sha256sum", p).Output()
			if err != nil || len(out) < 64 || string(out[:64]) != want {
				b.Fatalf("sha256sum: %q, %v", out, err)
			}
		}
	})
}
