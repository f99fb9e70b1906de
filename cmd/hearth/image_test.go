package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/rootfs"
)

// staticELF writes a minimal static x86-64 executable (a stand-in agent).
func staticELF(t *testing.T) string {
	var b bytes.Buffer
	w := func(v any) { binary.Write(&b, binary.LittleEndian, v) }
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	code := []byte{0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05}
	n := uint64(64 + 56 + len(code))
	for _, v := range []any{uint16(2), uint16(62), uint32(1), uint64(0x400078), uint64(64), uint64(0), uint32(0),
		uint16(64), uint16(56), uint16(1), uint16(64), uint16(0), uint16(0),
		uint32(1), uint32(5), uint64(0), uint64(0x400000), uint64(0x400000), n, n, uint64(0x1000)} {
		w(v)
	}
	b.Write(code)
	p := filepath.Join(t.TempDir(), "hearth-agent")
	os.WriteFile(p, b.Bytes(), 0o755)
	return p
}

func TestImageCommands(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 not installed")
	}
	state := t.TempDir()
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc", "motd"), []byte("hi\n"), 0o644)
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(kernel, []byte("\x7fELF kernel"), 0o644)
	agent := staticELF(t)
	sd := "--state-dir=" + state
	t.Setenv("HEARTH_SOCKET", filepath.Join(state, "no-daemon.sock"))

	if out, err := run(t, sd, "image", "import", "tools", tree, "--kernel", kernel, "--agent", agent, "--size", "64M"); err != nil {
		t.Fatalf("import: %v\n%s", err, out)
	}
	// An ext4 file is recognised and copied as is, kernel from another image.
	img := filepath.Join(state, "images", "tools", rootfs.RootfsFile)
	if out, err := run(t, sd, "image", "import", "copy", img, "--kernel-from", "tools"); err != nil {
		t.Fatalf("import ext4: %v\n%s", err, out)
	}
	out, err := run(t, sd, "-o", "json", "image", "ls")
	if err != nil {
		t.Fatal(err)
	}
	var ims []rootfs.Image
	if err := json.Unmarshal([]byte(out), &ims); err != nil || len(ims) != 2 || ims[0].Name != "copy" || ims[1].Name != "tools" || ims[0].Source.Kind != "ext4" || ims[1].Source.Kind != "dir" {
		t.Fatalf("ls: %v\n%s", err, out)
	}
	if out, err := run(t, sd, "image", "ls"); err != nil || !strings.Contains(out, "NAME") || !strings.Contains(out, "tools") {
		t.Fatalf("ls table: %v\n%s", err, out)
	}
	if out, err := run(t, sd, "image", "verify"); err != nil || !strings.Contains(out, "tools: ok") {
		t.Fatalf("verify: %v\n%s", err, out)
	}

	// Tampering is an integrity error.
	os.Chmod(img, 0o644)
	f, _ := os.OpenFile(img, os.O_WRONLY, 0)
	f.WriteAt([]byte("x"), 5000)
	f.Close()
	out, err = run(t, sd, "image", "verify", "tools")
	if hearth.KindOf(err) != hearth.KindIntegrity || !strings.Contains(out, "FAILED") {
		t.Fatalf("verify of a tampered image: %v\n%s", err, out)
	}

	for _, c := range []struct {
		args []string
		kind hearth.Kind
	}{
		{[]string{"image", "rm", "../etc"}, hearth.KindInvalidArgument},
		{[]string{"image", "rm", "absent"}, hearth.KindImageNotFound},
		{[]string{"image", "import", "Bad Name", tree, "--kernel", kernel, "--agent", agent}, hearth.KindInvalidArgument},
		{[]string{"image", "import", "tools", tree, "--kernel", kernel, "--agent", agent}, hearth.KindImageAlreadyExists},
		{[]string{"image", "import", "x", tree, "--kernel", kernel, "--agent", "/bin/sh"}, hearth.KindInvalidArgument},
		{[]string{"image", "build", "fancy"}, hearth.KindInvalidArgument},
		{[]string{"image", "build", "default", "--agent", filepath.Join(t.TempDir(), "missing")}, hearth.KindInvalidArgument},
		{[]string{"image", "build", "default", "--agent", agent, "--size", "lots"}, hearth.KindInvalidArgument},
	} {
		if _, err := run(t, append([]string{sd}, c.args...)...); hearth.KindOf(err) != c.kind {
			t.Errorf("%v: %v, want kind %v", c.args, err, c.kind)
		}
	}
	if out, err := run(t, sd, "image", "rm", "tools", "copy"); err != nil {
		t.Fatalf("rm: %v\n%s", err, out)
	}
	if out, _ := run(t, sd, "-o", "json", "image", "ls"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("ls after rm: %s", out)
	}
}

func TestParseSize(t *testing.T) {
	cases := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"", 0, true}, {"4096", 4096, true}, {"64M", 64 << 20, true}, {"1G", 1 << 30, true},
		{"512MiB", 512 << 20, true}, {"3Mi", 3 << 20, true}, {"2k", 2048, true},
		{"x", 0, false}, {"-1", 0, false}, {"1X", 0, false}, {"M", 0, false},
	}
	for _, c := range cases {
		got, err := parseSize(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
}
