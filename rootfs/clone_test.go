package rootfs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"

	"github.com/hearth-vm/hearth/rootfs/digest"
	"github.com/hearth-vm/hearth/rootfs/looptest"
	"github.com/hearth-vm/hearth/rootfs/sparse"
)

// sparseImage writes a 256 MiB file with 1 MiB of data at the start and
// 1 MiB in the middle, the rest holes.
func sparseImage(t *testing.T, p string) []byte {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a := bytes.Repeat([]byte{0x5a}, 1<<20)
	b := bytes.Repeat([]byte{0xa5}, 1<<20)
	f.WriteAt(a, 0)
	f.WriteAt(b, 128<<20)
	f.Truncate(256 << 20)
	f.Sync()
	return append(a, b...)
}

func allocated(t *testing.T, p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return sparse.Allocated(fi)
}

// sameContent compares by digest, which reads only data extents (the
// race detector makes reading 256 MiB of holes into memory slow).
func sameContent(t *testing.T, a, b string) {
	t.Helper()
	x, _, err1 := digest.File(context.Background(), a)
	y, _, err2 := digest.File(context.Background(), b)
	if err1 != nil || err2 != nil || x != y {
		t.Fatalf("%s and %s differ (%v, %v)", a, b, err1, err2)
	}
}

// The ladder: reflink where the filesystem shares blocks, sparse copy
// elsewhere; either way the clone is equal, sparse and recorded.
func TestCloneLadder(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		fs   string // "" = the test's temp dir (ext4 or tmpfs on CI), else a loop mount
		opts CloneOptions
		want CloneMethod
	}{
		{"", CloneOptions{}, CloneCopy},
		{"ext4", CloneOptions{}, CloneCopy},
		{"xfs", CloneOptions{}, CloneReflink},
		{"xfs", CloneOptions{NoReflink: true}, CloneCopy},
		{"btrfs", CloneOptions{}, CloneReflink},
	}
	for _, c := range cases {
		name := c.fs
		if name == "" {
			name = "tempdir"
		}
		if c.opts.NoReflink {
			name += "-noreflink"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if c.fs != "" {
				dir = looptest.Mount(t, c.fs, 1<<30)
			}
			src := filepath.Join(dir, "template.ext4")
			sparseImage(t, src)
			dst := filepath.Join(dir, "vm1.ext4")
			opts := c.opts
			opts.SourceDigest = "abc"
			info, err := Clone(ctx, src, dst, opts)
			if err != nil {
				t.Fatal(err)
			}
			if info.Method != c.want {
				t.Fatalf("method %s, want %s", info.Method, c.want)
			}
			sameContent(t, src, dst)
			if a := allocated(t, dst); a > 8<<20 {
				t.Errorf("clone allocates %d bytes for 2 MiB of data: not sparse", a)
			}
			if fi, _ := os.Stat(dst); fi.Size() != 256<<20 || fi.Mode().Perm() != 0o600 {
				t.Errorf("clone size %d mode %v", fi.Size(), fi.Mode())
			}
			rec, err := ReadCloneInfo(dst)
			if err != nil || rec.SourceSHA256 != "abc" || rec.Source != src || rec.Method != c.want {
				t.Errorf("clone record %+v, %v", rec, err)
			}
			// Writing the clone leaves the template alone.
			f, _ := os.OpenFile(dst, os.O_WRONLY, 0)
			f.WriteAt([]byte("guest write"), 0)
			f.Close()
			head := make([]byte, 11)
			if sf, err := os.Open(src); err == nil {
				sf.ReadAt(head, 0)
				sf.Close()
			}
			if bytes.Equal(head, []byte("guest write")) {
				t.Fatal("writing the clone changed the template")
			}
			if _, err := Clone(ctx, src, dst, CloneOptions{}); !errors.Is(err, os.ErrExist) {
				t.Errorf("clone over an existing file = %v", err)
			}
			if err := RemoveClone(dst); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(dst + CloneRecordSuffix); !errors.Is(err, os.ErrNotExist) {
				t.Error("record not removed")
			}
		})
	}
}

func mkfsImage(t *testing.T, p string, size int64) {
	t.Helper()
	f, _ := os.Create(p)
	f.Truncate(size)
	f.Close()
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", p).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
}

func blockCount(t *testing.T, img string) int64 {
	t.Helper()
	out, err := exec.Command("dumpe2fs", "-h", img).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs: %v: %s", err, out)
	}
	m := regexp.MustCompile(`(?m)^Block count:\s+(\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no block count in dumpe2fs output:\n%s", out)
	}
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return n
}

func TestCloneGrow(t *testing.T) {
	needTools(t, "mkfs.ext4", "resize2fs", "dumpe2fs", "e2fsck")
	ctx := context.Background()
	dir := t.TempDir()
	src := filepath.Join(dir, "template.ext4")
	mkfsImage(t, src, 64<<20)
	before := blockCount(t, src)

	dst := filepath.Join(dir, "big.ext4")
	info, err := Clone(ctx, src, dst, CloneOptions{Size: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if !info.Grown || info.Size != 256<<20 {
		t.Errorf("info %+v", info)
	}
	if after := blockCount(t, dst); after <= before*3 {
		t.Errorf("filesystem has %d blocks after growing from %d", after, before)
	}
	if blockCount(t, src) != before {
		t.Error("growing the clone changed the template")
	}
	e2fsckClean(t, dst)
	if a := allocated(t, dst); a > 64<<20 {
		t.Errorf("grown clone allocates %d bytes", a)
	}

	// Same size: nothing to do; smaller: refused before any change.
	if err := Resize(ctx, dst, 256<<20, ""); err != nil {
		t.Error(err)
	}
	if err := Resize(ctx, dst, 128<<20, ""); !errors.Is(err, ErrShrink) {
		t.Errorf("shrink = %v", err)
	}
	if _, err := Clone(ctx, src, filepath.Join(dir, "small.ext4"), CloneOptions{Size: 1 << 20}); !errors.Is(err, ErrShrink) {
		t.Errorf("shrinking clone = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "small.ext4")); !errors.Is(err, os.ErrNotExist) {
		t.Error("refused clone left a file")
	}
}

// A clone whose grow fails leaves nothing at the destination (and no
// temporary), and a failed resize gives the file its old length back.
func TestCloneFailureLeavesNothing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src := filepath.Join(dir, "template.ext4")
	sparseImage(t, src)
	dst := filepath.Join(dir, "vm.ext4")
	if _, err := Clone(ctx, src, dst, CloneOptions{Size: 512 << 20, Resize2fs: "false"}); err == nil {
		t.Fatal("clone with a failing resize2fs succeeded")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("left behind: %v", names)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Clone(cancelled, src, dst, CloneOptions{NoReflink: true}); err == nil {
		t.Fatal("cancelled clone succeeded")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatal("cancelled clone left files")
	}
	// Resize rollback.
	cp := filepath.Join(dir, "copy")
	os.WriteFile(cp, []byte("data"), 0o644)
	if err := Resize(ctx, cp, 1<<20, "false"); err == nil {
		t.Fatal("resize with failing resize2fs succeeded")
	}
	if fi, _ := os.Stat(cp); fi.Size() != 4 {
		t.Errorf("size after failed resize %d, want 4", fi.Size())
	}
}

// A copy that cannot fit fails before writing (not by filling the disk).
func TestCloneChecksSpace(t *testing.T) {
	ctx := context.Background()
	small := looptest.Mount(t, "ext4", 32<<20)
	src := filepath.Join(t.TempDir(), "big")
	f, _ := os.Create(src)
	f.Write(bytes.Repeat([]byte{1}, 64<<20))
	f.Close()
	_, err := Clone(ctx, src, filepath.Join(small, "vm.ext4"), CloneOptions{})
	if !errors.Is(err, ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("clone onto a small filesystem = %v, want ErrNoSpace", err)
	}
	ents, _ := os.ReadDir(small)
	for _, e := range ents {
		if e.Name() != "lost+found" {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}
