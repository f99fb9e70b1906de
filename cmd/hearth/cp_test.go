package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/api"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/memvmm"
)

// listTree lists every path under dir.
func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			out = append(out, strings.TrimPrefix(p, dir))
		}
		return nil
	})
	return out
}

// TestCpBadInput: `hearth cp` checks the VM id, the guest path and the
// host side before it asks the daemon anything, so bad input is exit 2
// with or without a daemon, and creates nothing on the host.
func TestCpBadInput(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.txt")
	os.WriteFile(src, []byte("payload"), 0o600)
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	noDaemon := filepath.Join(dir, "none.sock")
	cases := []struct{ name, from, to string }{
		{"no VM side", src, filepath.Join(dir, "out")},
		{"both VM sides", "vm:/a", "vm:/b"},
		{"dotdot VM", src, "..:/x"},
		{"dot VM", src, ".:/x"},
		{"long VM", src, strings.Repeat("v", 64) + ":/x"},
		{"unicode VM", src, "v\u200bm:/x"},
		{"relative guest path", src, "vm:etc/passwd"},
		{"guest dotdot", src, "vm:/tmp/../../etc/passwd"},
		{"empty guest path", src, "vm:"},
		{"guest NUL", src, "vm:/x\x00y"},
		{"missing host source", filepath.Join(dir, "missing"), "vm:/x"},
		{"host source is a directory", filepath.Join(dir, "sub"), "vm:/x"},
		{"host destination dir missing", "vm:/etc/hostname", filepath.Join(dir, "missing", "out")},
		{"guest root into a directory", "vm:/", filepath.Join(dir, "sub")},
		{"guest dotdot out", "vm:/../etc/shadow", filepath.Join(dir, "out")},
	}
	before := listTree(t, dir)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := run(t, "--socket", noDaemon, "cp", c.from, c.to)
			if code := exitCode(err); code != 2 {
				t.Fatalf("cp %q %q: exit %d (%v) %s", c.from, c.to, code, err, out)
			}
		})
	}
	if got := listTree(t, dir); !slices.Equal(got, before) {
		t.Fatalf("host files changed: %v, were %v", got, before)
	}
}

// TestCpFailureLeavesNothing: a copy the daemon fails (the VM has no
// agent) leaves the host as it was: no temporary file in the
// destination directory, the source untouched.
func TestCpFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	k, r := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.ext4")
	os.WriteFile(k, []byte("k"), 0o600)
	os.WriteFile(r, []byte("r"), 0o600)
	rt, err := hearth.Open(context.Background(), hearth.Config{StateDir: filepath.Join(dir, "state"), Backends: []vmm.Backend{memvmm.New()}})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	if _, err := rt.Create(context.Background(), "box", hearth.Spec{Kernel: k, Rootfs: r}); err != nil {
		t.Fatal(err)
	}
	sockDir, err := os.MkdirTemp("", "hcp")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: api.NewServer(rt, api.Options{})}
	go hs.Serve(l)
	defer hs.Close()

	work := filepath.Join(dir, "work")
	os.Mkdir(work, 0o755)
	src := filepath.Join(work, "src.txt")
	os.WriteFile(src, []byte("payload"), 0o600)
	before := listTree(t, work)
	for _, c := range []struct{ from, to string }{
		{src, "box:/x"},
		{"box:/etc/hostname", filepath.Join(work, "out")},
		{"box:/etc/hostname", work}, // into the directory, as hostname
	} {
		out, err := run(t, "--socket", sock, "cp", c.from, c.to)
		if err == nil || hearth.KindOf(err) != hearth.KindGuestMetadata {
			t.Fatalf("cp %s %s through a VM without agent: %v %s", c.from, c.to, err, out)
		}
	}
	if got := listTree(t, work); !slices.Equal(got, before) {
		t.Fatalf("host files changed: %v, were %v", got, before)
	}
	if b, _ := os.ReadFile(src); string(b) != "payload" {
		t.Fatalf("source now %q", b)
	}
}
