package server

import (
	"crypto/rand"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/hearth-vm/hearth/agent"
)

func TestParseListen(t *testing.T) {
	tests := []struct {
		in   string
		want ListenSpec
		ok   bool
	}{
		{"vsock:1024", ListenSpec{Kind: KindVsock, Port: 1024}, true},
		{"fcsim:5555", ListenSpec{Kind: KindFcsim, Port: 5555}, true},
		{"unix:/run/a.sock", ListenSpec{Kind: KindUnix, Path: "/run/a.sock"}, true},
		{"serial:hearth.agent", ListenSpec{Kind: KindSerial, Name: "hearth.agent"}, true},
		{"serial:/dev/vport1p1", ListenSpec{Kind: KindSerial, Path: "/dev/vport1p1"}, true},
		{"vsock:0", ListenSpec{}, false},
		{"vsock:x", ListenSpec{}, false},
		{"vsock:4294967296", ListenSpec{}, false},
		{"tcp:80", ListenSpec{}, false},
		{"unix:", ListenSpec{}, false},
		{"vsock", ListenSpec{}, false},
		{"serial:a/b", ListenSpec{}, false},
		{"unix:/" + string(make([]byte, 120)), ListenSpec{}, false},
	}
	for _, tt := range tests {
		got, err := ParseListen(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseListen(%q) = %+v, %v", tt.in, got, err)
		}
		if tt.ok {
			if back, _ := ParseListen(got.String()); back != got {
				t.Errorf("%q does not round-trip: %q", tt.in, got.String())
			}
		}
	}
}

func TestFindVirtioPort(t *testing.T) {
	sys := shortDir(t)
	for dir, name := range map[string]string{"vport1p1": "org.qemu.guest_agent.0\n", "vport1p2": "hearth.agent\n", "vport2p1": ""} {
		os.MkdirAll(filepath.Join(sys, dir), 0o755)
		if name != "" {
			os.WriteFile(filepath.Join(sys, dir, "name"), []byte(name), 0o644)
		}
	}
	dev, err := FindVirtioPort(sys, agent.SerialPortName)
	if err != nil || dev != "/dev/vport1p2" {
		t.Fatalf("%q %v", dev, err)
	}
	if _, err := FindVirtioPort(sys, "missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing port: %v", err)
	}
	if _, err := FindVirtioPort(filepath.Join(sys, "none"), "x"); err == nil {
		t.Fatal("no sysfs dir: no error")
	}
}

func TestListenUnixReplacesStaleSocket(t *testing.T) {
	dir := shortDir(t)
	p := filepath.Join(dir, "s.sock")
	ln, err := ListenUnix(p)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ln, err = ListenUnix(p)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ln.Close()
	if fi, err := os.Stat(p); err == nil && fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	regular := filepath.Join(dir, "file")
	os.WriteFile(regular, nil, 0o600)
	if _, err := ListenUnix(regular); err == nil {
		t.Fatal("a regular file was replaced by a socket")
	}

	t.Setenv(EnvFcsimGuestDir, dir)
	spec, _ := ParseListen("fcsim:1024")
	ln, err = spec.Listen()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ln.Addr().String() != filepath.Join(dir, "1024.sock") {
		t.Errorf("fcsim listener at %s", ln.Addr())
	}
}

// TestAddEntropy feeds real random bytes to the kernel pool: credited as
// root, mixed in uncredited otherwise. Harmless on any machine.
func TestAddEntropy(t *testing.T) {
	b := make([]byte, 64)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	credited, err := AddEntropy("/dev/urandom", b)
	if err != nil {
		t.Fatal(err)
	}
	if credited != (os.Geteuid() == 0) {
		t.Errorf("credited = %v as uid %d", credited, os.Geteuid())
	}
	if _, err := AddEntropy("/nonexistent/random", b); err == nil {
		t.Error("no error for a missing device")
	}
}
