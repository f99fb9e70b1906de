package image

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"
)

// moduleTree writes an unpacked-kernel-package layout with synthetic
// modules modelled on Debian's cloud kernel (depends as its modinfo says).
func moduleTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	base := filepath.Join(root, "lib", "modules", "6.1.0-test")
	mods := map[string][]string{
		"drivers/virtio/virtio_ring.ko":                      {"depends="},
		"drivers/virtio/virtio.ko":                           {"depends=virtio_ring"},
		"drivers/virtio/virtio_mmio.ko":                      {"depends=virtio,virtio_ring"},
		"drivers/block/virtio_blk.ko":                        {"depends=virtio,virtio_ring"},
		"drivers/net/virtio_net.ko":                          {"depends=virtio_ring,virtio,net_failover"},
		"drivers/net/net_failover.ko":                        {"depends=failover"},
		"net/core/failover.ko":                               {"depends="},
		"drivers/char/hw_random/virtio-rng.ko":               {"depends=virtio,virtio_ring"},
		"net/vmw_vsock/vsock.ko":                             {"depends="},
		"net/vmw_vsock/vmw_vsock_virtio_transport_common.ko": {"depends=vsock"},
		"net/vmw_vsock/vmw_vsock_virtio_transport.ko":        {"depends=virtio,vmw_vsock_virtio_transport_common,virtio_ring,vsock"},
		"fs/ext4/ext4.ko.xz":                                 {"depends=crc16,mbcache,jbd2", "softdep=pre: crc32c"},
		"lib/crc16.ko":                                       {"depends="},
		"fs/mbcache.ko":                                      {"depends="},
		"fs/jbd2/jbd2.ko":                                    {"depends="},
		"drivers/char/virtio_console.ko":                     {"depends=virtio,virtio_ring"},
		"drivers/virtio/virtio_balloon.ko":                   {"depends=virtio,virtio_ring"},
		"drivers/cycle/a.ko":                                 {"depends=b"},
		"drivers/cycle/b.ko":                                 {"depends=a"},
	}
	for p, mi := range mods {
		full := filepath.Join(base, "kernel", p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		name, _ := moduleName(filepath.Base(p))
		b := fakeModule(name, mi...)
		if strings.HasSuffix(p, ".xz") {
			var z bytes.Buffer
			w, _ := xz.NewWriter(&z)
			w.Write(b)
			w.Close()
			b = z.Bytes()
		}
		if err := os.WriteFile(full, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// crc32c is built in (softdep on a builtin is satisfied).
	os.WriteFile(filepath.Join(base, "modules.builtin"), []byte("kernel/crypto/crc32c_generic.ko\nkernel/crypto/crc32c.ko\n"), 0o644)
	return root
}

func TestResolveModules(t *testing.T) {
	root := moduleTree(t)
	tree, err := OpenModules(root, "")
	if err != nil {
		t.Fatal(err)
	}
	if tree.Release != "6.1.0-test" {
		t.Fatalf("release %q", tree.Release)
	}
	cases := []struct {
		name    string
		want    []string
		order   string // expected exact order, if given
		wantErr string
	}{
		{name: "virtio_mmio", want: []string{"virtio_mmio"}, order: "virtio_ring,virtio,virtio_mmio"},
		{name: "dash name", want: []string{"virtio-rng"}, order: "virtio_ring,virtio,virtio_rng"},
		{name: "net with failover", want: []string{"virtio_net"}, order: "virtio_ring,virtio,failover,net_failover,virtio_net"},
		{name: "compressed ext4 with softdep", want: []string{"ext4"}, order: "crc16,mbcache,jbd2,ext4"},
		{name: "default set", want: DefaultModules},
		{name: "missing", want: []string{"nope"}, wantErr: "not found"},
		{name: "cycle", want: []string{"a"}, wantErr: "cycle"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ms, err := tree.Resolve(c.want)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("Resolve = %v, want error %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := checkOrder(ms); err != nil {
				t.Fatal(err)
			}
			got := strings.Join(ModuleNames(ms), ",")
			if c.order != "" && got != c.order {
				t.Fatalf("order %s, want %s", got, c.order)
			}
			if !strings.HasPrefix(got, "virtio_ring,virtio,") && c.name != "compressed ext4 with softdep" {
				t.Fatalf("virtio_ring and virtio must come first: %s", got)
			}
		})
	}
	// With ext4 built in, it is skipped.
	os.WriteFile(filepath.Join(root, "lib/modules/6.1.0-test/modules.builtin"), []byte("kernel/fs/ext4/ext4.ko\n"), 0o644)
	tree, _ = OpenModules(root, "6.1.0-test")
	ms, err := tree.Resolve([]string{"ext4"})
	if err != nil || len(ms) != 0 || !tree.Builtin("ext4") {
		t.Fatalf("builtin ext4: %v, %v", ModuleNames(ms), err)
	}
}

func TestInitramfsContents(t *testing.T) {
	root := moduleTree(t)
	tree, _ := OpenModules(root, "")
	ms, err := tree.Resolve(DefaultModules)
	if err != nil {
		t.Fatal(err)
	}
	bb := filepath.Join(t.TempDir(), "busybox")
	os.WriteFile(bb, []byte("\x7fELF busybox"), 0o755)
	var buf bytes.Buffer
	if err := WriteInitramfs(&buf, InitramfsSpec{Busybox: bb, Modules: ms}); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%512 != 0 {
		t.Errorf("archive not padded to 512: %d", buf.Len())
	}
	entries, err := readCpio(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]cpioEntry{}
	for _, e := range entries {
		byName[e.Name] = e
	}
	checks := []struct {
		name string
		mode uint32
		data string
	}{
		{"init", modeReg | 0o755, "#!/bin/busybox sh\n"},
		{"bin/busybox", modeReg | 0o755, "\x7fELF busybox"},
		{"bin/sh", modeLink | 0o777, "busybox"},
		{"dev/console", modeChr | 0o600, ""},
		{"newroot", modeDir | 0o755, ""},
		{"lib/modules/virtio_ring.ko", modeReg | 0o644, "\x7fELF"},
		{"lib/modules/ext4.ko", modeReg | 0o644, "\x7fELF"}, // decompressed from .ko.xz
	}
	for _, c := range checks {
		e, ok := byName[c.name]
		if !ok {
			t.Errorf("%s missing", c.name)
			continue
		}
		if e.Mode != c.mode || !bytes.HasPrefix(e.Data, []byte(c.data)) {
			t.Errorf("%s: mode %o data %.20q; want %o %q", c.name, e.Mode, e.Data, c.mode, c.data)
		}
	}
	if c := byName["dev/console"]; c.Major != 5 || c.Minor != 1 {
		t.Errorf("/dev/console is %d,%d", c.Major, c.Minor)
	}
	order := strings.Fields(string(byName["etc/hearth/modules"].Data))
	if err := checkOrder(ms); err != nil || strings.Join(order, ",") != strings.Join(ModuleNames(ms), ",") {
		t.Fatalf("module order file %v, resolved %v", order, ModuleNames(ms))
	}
	for _, m := range order {
		if _, ok := byName["lib/modules/"+m+".ko"]; !ok {
			t.Errorf("module %s listed but not in the archive", m)
		}
	}
	// Reproducible: the same inputs give the same bytes.
	var again bytes.Buffer
	WriteInitramfs(&again, InitramfsSpec{Busybox: bb, Modules: ms})
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("initramfs is not reproducible")
	}
	// Modules out of order are refused.
	rev := append([]Module(nil), ms...)
	rev[0], rev[len(rev)-1] = rev[len(rev)-1], rev[0]
	if err := WriteInitramfs(&bytes.Buffer{}, InitramfsSpec{Busybox: bb, Modules: rev}); err == nil {
		t.Error("out-of-order modules accepted")
	}
}

func TestParseControl(t *testing.T) {
	p, err := parseControl([]byte("Package: linux-image-cloud-amd64\nSource: linux-signed-amd64 (6.1.192+2)\nVersion: 6.1.192-2\nArchitecture: amd64\nDepends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\nDescription: x\n more\nSHA256: " + strings.Repeat("a", 64) + "\n\nPackage: other\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "linux-image-cloud-amd64" || p.Version != "6.1.192-2" || p.Arch != "amd64" || len(p.Depends) != 1 || p.SHA256 != strings.Repeat("a", 64) {
		t.Fatalf("%+v", p)
	}
	if _, err := parseControl([]byte("Description: nothing\n")); err == nil {
		t.Fatal("stanza without Package accepted")
	}
	if got := debFileName(Package{Name: "busybox-static", Version: "1:1.35.0-4+deb12u1", Arch: "amd64"}); got != "busybox-static_1_1.35.0-4+deb12u1_amd64.deb" {
		t.Fatalf("debFileName = %s", got)
	}
}
