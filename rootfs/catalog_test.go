package rootfs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/rootfs/digest"
)

func TestValidateName(t *testing.T) {
	cases := []struct {
		name string
		ok   bool
	}{
		{"default", true},
		{"alpine-3.20", true},
		{"a", true},
		{"0day_x.y-z", true},
		{strings.Repeat("a", 63), true},
		{"", false},
		{"../x", false},
		{"..", false},
		{"a..b", false},
		{"x/y", false},
		{"Upper", false},
		{"has space", false},
		{".hidden", false},
		{"-dash", false},
		{"_under", false},
		{strings.Repeat("a", 64), false},
		{"tab\t", false},
		{"nul\x00", false},
	}
	for _, c := range cases {
		err := ValidateName(c.name)
		if (err == nil) != c.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", c.name, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) error does not wrap ErrInvalidName", c.name)
		}
	}
}

// Every entry point validates the name before touching the filesystem.
func TestEntryPointsRejectBadNames(t *testing.T) {
	ctx := context.Background()
	c, err := OpenCatalog(t.TempDir(), CatalogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"../x", "", "UP", "a b"} {
		if _, err := c.Get(ctx, bad); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Get(%q) = %v", bad, err)
		}
		if _, err := c.Resolve(ctx, bad); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Resolve(%q) = %v", bad, err)
		}
		if err := c.Remove(ctx, bad); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Remove(%q) = %v", bad, err)
		}
		if _, err := c.Create(ctx, bad, Input{RootfsImage: "x", Kernel: "y"}); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Create(%q) = %v", bad, err)
		}
	}
}

// testTree makes a small directory tree to import.
func testTree(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tree")
	for p, content := range map[string]string{
		"etc/hostname":        "guest\n",
		"usr/bin/hello":       "#!/bin/sh\necho hello\n",
		"var/lib/data/a.txt":  "aaa",
		"etc/nested/deep/cfg": "x=1\n",
	} {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(dir, "usr/bin/hello"), 0o755)
	os.Symlink("usr/bin", filepath.Join(dir, "bin"))
	os.Link(filepath.Join(dir, "var/lib/data/a.txt"), filepath.Join(dir, "var/lib/data/a-link.txt"))
	// A read-only directory must not stop the import.
	os.Chmod(filepath.Join(dir, "etc/nested"), 0o555)
	t.Cleanup(func() { os.Chmod(filepath.Join(dir, "etc/nested"), 0o755) })
	return dir
}

func testKernel(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(p, []byte("\x7fELF not really a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestImportDirListResolveRemove(t *testing.T) {
	needTools(t, "mkfs.ext4", "debugfs", "e2fsck")
	ctx := context.Background()
	catDir := t.TempDir()
	c, err := OpenCatalog(catDir, CatalogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	src := testTree(t)
	agent := fakeAgent(t, t.TempDir())
	kernel := testKernel(t)
	initrd := filepath.Join(t.TempDir(), "initrd")
	os.WriteFile(initrd, []byte("cpio"), 0o644)

	var steps []string
	im, err := c.ImportDir(ctx, "tree", src, Input{Kernel: kernel, Initrd: initrd, Agent: agent, Progress: func(s string) { steps = append(steps, s) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(steps) == 0 {
		t.Error("no progress reported")
	}
	if im.Source.Kind != "dir" || im.Agent == nil || im.Agent.Path != AgentGuestPath || im.Init != "/sbin/init" {
		t.Errorf("manifest: %+v", im.Manifest)
	}
	for _, f := range []string{RootfsFile, KernelFile, InitrdFile} {
		fd, ok := im.Files[f]
		if !ok || !digest.Valid(fd.SHA256) {
			t.Fatalf("manifest lacks %s: %+v", f, im.Files)
		}
		fi, err := os.Stat(filepath.Join(im.Dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o444 {
			t.Errorf("%s mode %v, want read-only", f, fi.Mode())
		}
		if fi.Size() != fd.Size {
			t.Errorf("%s size %d, manifest %d", f, fi.Size(), fd.Size)
		}
		sum, _, _ := digest.File(ctx, filepath.Join(im.Dir, f))
		if sum != fd.SHA256 {
			t.Errorf("%s digest %s, manifest %s", f, sum, fd.SHA256)
		}
	}
	// The source tree is untouched.
	if _, err := os.Lstat(filepath.Join(src, "sbin")); err == nil {
		t.Error("import wrote into the source directory")
	}

	img := filepath.Join(im.Dir, RootfsFile)
	e2fsckClean(t, img)
	for p, want := range map[string]string{"/etc/hostname": "guest\n", "/var/lib/data/a-link.txt": "aaa", "/etc/nested/deep/cfg": "x=1\n"} {
		if got, ok := ext4Cat(t, img, p); !ok || got != want {
			t.Errorf("%s in image = %q (exists %v), want %q", p, got, ok, want)
		}
	}
	if st, ok := ext4Stat(t, img, "/sbin/init"); !ok || !strings.Contains(st, "hearth-agent") {
		t.Errorf("/sbin/init is not a link to the agent:\n%s", st)
	}
	if st, ok := ext4Stat(t, img, "/sbin/hearth-agent"); !ok || !strings.Contains(st, "Mode:  0755") {
		t.Errorf("/sbin/hearth-agent:\n%s", st)
	}
	if st, ok := ext4Stat(t, img, "/etc/nested"); !ok || !strings.Contains(st, "Mode:  0555") {
		t.Errorf("read-only dir lost its mode:\n%s", st)
	}
	for _, mp := range []string{"/dev", "/proc", "/sys", "/tmp", "/run"} {
		if _, ok := ext4Stat(t, img, mp); !ok {
			t.Errorf("mount point %s missing", mp)
		}
	}

	// A second image from an ext4 file; listing is sorted.
	im2, err := c.Create(ctx, "another", Input{RootfsImage: img, Kernel: kernel})
	if err != nil {
		t.Fatal(err)
	}
	if im2.Files[RootfsFile].SHA256 != im.Files[RootfsFile].SHA256 || im2.Source.Kind != "ext4" {
		t.Errorf("ext4 import: %+v", im2.Manifest)
	}
	// Junk in the catalog dir is not an image.
	os.Mkdir(filepath.Join(catDir, "junk"), 0o755)
	os.WriteFile(filepath.Join(catDir, "stray-file"), nil, 0o644)
	list, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "another" || list[1].Name != "tree" {
		t.Fatalf("List = %v", names(list))
	}

	files, err := c.Resolve(ctx, "tree")
	if err != nil {
		t.Fatal(err)
	}
	if files.Rootfs != img || files.Kernel != filepath.Join(im.Dir, KernelFile) || files.Initrd != filepath.Join(im.Dir, InitrdFile) || files.RootfsSHA256 != im.Files[RootfsFile].SHA256 {
		t.Errorf("Resolve = %+v", files)
	}
	if _, err := c.Create(ctx, "tree", Input{RootfsImage: img, Kernel: kernel}); !errors.Is(err, ErrExists) {
		t.Errorf("Create over an existing name = %v", err)
	}

	if err := c.Remove(ctx, "another"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "another"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Remove = %v", err)
	}
	if err := c.Remove(ctx, "another"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove = %v", err)
	}
	assertNoTemporaries(t, catDir)
}

func names(ims []Image) []string {
	var out []string
	for _, im := range ims {
		out = append(out, im.Name)
	}
	return out
}

func assertNoTemporaries(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") || strings.HasPrefix(e.Name(), ".rm-") {
			t.Errorf("temporary left behind: %s", e.Name())
		}
	}
}

// A rewrite of an image file is caught even when size and mtime are
// restored (the identity includes ctime), and the error names the file and
// both digests.
func TestResolveDetectsTampering(t *testing.T) {
	ctx := context.Background()
	c, _ := OpenCatalog(t.TempDir(), CatalogOptions{})
	rootfs := filepath.Join(t.TempDir(), "r.ext4")
	os.WriteFile(rootfs, make([]byte, 64<<10), 0o644)
	im, err := c.Create(ctx, "img", Input{RootfsImage: rootfs, Kernel: testKernel(t)})
	if err != nil {
		t.Fatal(err)
	}
	// Stable: repeated resolves agree and do not fail.
	for range 3 {
		f, err := c.Resolve(ctx, "img")
		if err != nil || f.RootfsSHA256 != im.Files[RootfsFile].SHA256 {
			t.Fatalf("Resolve = %+v, %v", f, err)
		}
	}
	p := filepath.Join(im.Dir, RootfsFile)
	fi, _ := os.Stat(p)
	time.Sleep(10 * time.Millisecond)
	os.Chmod(p, 0o644)
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("evil"), 1000)
	f.Close()
	os.Chmod(p, 0o444)
	os.Chtimes(p, fi.ModTime(), fi.ModTime())

	_, err = c.Resolve(ctx, "img")
	var ie *IntegrityError
	if !errors.As(err, &ie) {
		t.Fatalf("Resolve of a tampered image = %v, want *IntegrityError", err)
	}
	got, _, _ := digest.File(ctx, p)
	if ie.Path != p || ie.Want != im.Files[RootfsFile].SHA256 || ie.Got != got {
		t.Errorf("IntegrityError = %+v", ie)
	}
	if !strings.Contains(err.Error(), ie.Want) || !strings.Contains(err.Error(), ie.Got) || !strings.Contains(err.Error(), p) {
		t.Errorf("message does not name file and digests: %v", err)
	}
	checks, err := c.Verify(ctx, "img", true)
	if !errors.As(err, &ie) || len(checks) != 2 {
		t.Errorf("Verify = %v, %v", checks, err)
	}
}

func TestCreateFailureLeavesNothing(t *testing.T) {
	needTools(t, "mkfs.ext4")
	ctx := context.Background()
	catDir := t.TempDir()
	c, _ := OpenCatalog(catDir, CatalogOptions{})
	src := testTree(t)
	cases := []struct {
		name string
		in   Input
	}{
		{"no agent", Input{RootfsDir: src, Kernel: testKernel(t)}},
		{"dynamic agent", Input{RootfsDir: src, Kernel: testKernel(t), Agent: "/bin/sh"}},
		{"missing kernel", Input{RootfsDir: src, Kernel: "/nonexistent/vmlinux", NoAgent: true}},
		{"too small", Input{RootfsDir: src, Kernel: testKernel(t), NoAgent: true, Size: 64 << 10}},
		{"two sources", Input{RootfsDir: src, OCI: "x.tar", Kernel: testKernel(t), NoAgent: true}},
		{"bad mkfs", Input{RootfsDir: src, Kernel: testKernel(t), NoAgent: true}},
	}
	for _, cs := range cases {
		t.Run(cs.name, func(t *testing.T) {
			cat := c
			if cs.name == "bad mkfs" {
				cat, _ = OpenCatalog(catDir, CatalogOptions{Mkfs: "false"})
			}
			if _, err := cat.Create(ctx, "x", cs.in); err == nil {
				t.Fatal("Create succeeded")
			}
			if _, err := os.Stat(filepath.Join(catDir, "x")); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("failed Create left the image")
			}
			assertNoTemporaries(t, catDir)
		})
	}
}

func TestReplaceSwapsAtomically(t *testing.T) {
	ctx := context.Background()
	c, _ := OpenCatalog(t.TempDir(), CatalogOptions{})
	k := testKernel(t)
	r1 := filepath.Join(t.TempDir(), "1.ext4")
	r2 := filepath.Join(t.TempDir(), "2.ext4")
	os.WriteFile(r1, []byte("one"), 0o644)
	os.WriteFile(r2, []byte("two"), 0o644)
	if _, err := c.Create(ctx, "img", Input{RootfsImage: r1, Kernel: k, BuildKey: "k1"}); err != nil {
		t.Fatal(err)
	}
	im, err := c.Create(ctx, "img", Input{RootfsImage: r2, Kernel: k, BuildKey: "k2", Replace: true})
	if err != nil {
		t.Fatal(err)
	}
	if im.BuildKey != "k2" || im.Files[RootfsFile].SHA256 != digest.Bytes([]byte("two")) {
		t.Fatalf("replaced image: %+v", im.Manifest)
	}
	if _, err := c.Resolve(ctx, "img"); err != nil {
		t.Fatal(err)
	}
	assertNoTemporaries(t, c.Dir())
}

// Leftovers of a crashed import are removed by the next OpenCatalog, but
// not while an import holds the catalog lock.
func TestStaleTemporariesCleaned(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, ".tmp-x-123", "tree"), 0o755)
	os.MkdirAll(filepath.Join(dir, ".rm-y-456", "y"), 0o755)
	unlock, err := lockDir(dir, 1 /* LOCK_SH */)
	if err != nil {
		t.Fatal(err)
	}
	OpenCatalog(dir, CatalogOptions{})
	if _, err := os.Stat(filepath.Join(dir, ".tmp-x-123")); err != nil {
		t.Fatal("cleaned while an import held the lock")
	}
	unlock()
	OpenCatalog(dir, CatalogOptions{})
	assertNoTemporaries(t, dir)
}
