package rootfs

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeAgent writes a minimal static x86-64 ELF executable (it would call
// exit(0)), enough for CheckAgent and for installation into a rootfs.
func fakeAgent(t testing.TB, dir string) string {
	t.Helper()
	code := []byte{0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05} // mov eax,60; xor edi,edi; syscall
	var b bytes.Buffer
	ident := [16]byte{0x7f, 'E', 'L', 'F', 2, 1, 1}
	b.Write(ident[:])
	le := binary.LittleEndian
	w := func(v any) { binary.Write(&b, le, v) }
	const base = 0x400000
	hdrs := uint64(64 + 56)
	w(uint16(2))  // ET_EXEC
	w(uint16(62)) // EM_X86_64
	w(uint32(1))
	w(uint64(base + hdrs)) // entry
	w(uint64(64))          // phoff
	w(uint64(0))           // shoff
	w(uint32(0))
	w(uint16(64))
	w(uint16(56))
	w(uint16(1))
	w(uint16(64))
	w(uint16(0))
	w(uint16(0))
	// PT_LOAD covering the whole file.
	w(uint32(1))
	w(uint32(5))
	w(uint64(0))
	w(uint64(base))
	w(uint64(base))
	w(uint64(hdrs + uint64(len(code))))
	w(uint64(hdrs + uint64(len(code))))
	w(uint64(0x1000))
	b.Write(code)
	p := filepath.Join(dir, "hearth-agent")
	if err := os.WriteFile(p, b.Bytes(), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// debugfs runs a read-only debugfs request against an ext4 image.
func debugfs(t testing.TB, img, req string) (string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command("debugfs", "-R", req, img)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("debugfs -R %q %s: %v: %s", req, img, err, errb.String())
	}
	return out.String(), errb.String()
}

// ext4Cat returns a file's content inside an ext4 image, and whether it
// exists.
func ext4Cat(t testing.TB, img, p string) (string, bool) {
	t.Helper()
	out, errs := debugfs(t, img, "cat "+p)
	if strings.Contains(errs, "not found") {
		return "", false
	}
	return out, true
}

// ext4Stat returns debugfs's stat of a path, and whether it exists.
func ext4Stat(t testing.TB, img, p string) (string, bool) {
	t.Helper()
	out, errs := debugfs(t, img, "stat "+p)
	if strings.Contains(errs, "not found") {
		return "", false
	}
	return out, true
}

func needTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install -y e2fsprogs)", tool)
		}
	}
}

func e2fsckClean(t testing.TB, img string) {
	t.Helper()
	out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", img, err, out)
	}
}
