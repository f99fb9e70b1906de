package server

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hearth-vm/hearth/vsock"
)

// EnvFcsimGuestDir is where the Firecracker simulator expects guest
// listeners (<dir>/<port>.sock).
const EnvFcsimGuestDir = "HEARTH_FCSIM_GUEST_VSOCK_DIR"

// SysVirtioPorts is where the kernel lists virtio-serial ports.
const SysVirtioPorts = "/sys/class/virtio-ports"

// Listen kinds.
const (
	KindVsock  = "vsock"
	KindUnix   = "unix"
	KindFcsim  = "fcsim"
	KindSerial = "serial"
)

// ListenSpec is a parsed --listen value.
type ListenSpec struct {
	Kind string
	Port uint32 // vsock, fcsim
	Path string // unix; serial device path
	Name string // serial port name
}

func (l ListenSpec) String() string {
	switch l.Kind {
	case KindVsock, KindFcsim:
		return fmt.Sprintf("%s:%d", l.Kind, l.Port)
	case KindSerial:
		if l.Path != "" {
			return "serial:" + l.Path
		}
		return "serial:" + l.Name
	}
	return l.Kind + ":" + l.Path
}

// ParseListen parses "vsock:PORT", "fcsim:PORT", "unix:PATH",
// "serial:NAME" or "serial:/dev/PATH".
func ParseListen(s string) (ListenSpec, error) {
	kind, arg, ok := strings.Cut(s, ":")
	if !ok || arg == "" {
		return ListenSpec{}, fmt.Errorf("listen %q: want KIND:ARG (vsock:PORT, fcsim:PORT, unix:PATH, serial:NAME)", s)
	}
	switch kind {
	case KindVsock, KindFcsim:
		p, err := strconv.ParseUint(arg, 10, 32)
		if err != nil || p == 0 || p == 0xFFFFFFFF {
			return ListenSpec{}, fmt.Errorf("listen %q: bad port", s)
		}
		return ListenSpec{Kind: kind, Port: uint32(p)}, nil
	case KindUnix:
		if len(arg) > 107 {
			return ListenSpec{}, fmt.Errorf("listen %q: unix socket path longer than 107 bytes", s)
		}
		return ListenSpec{Kind: kind, Path: arg}, nil
	case KindSerial:
		if strings.HasPrefix(arg, "/") {
			return ListenSpec{Kind: kind, Path: arg}, nil
		}
		if strings.ContainsAny(arg, "/\x00") {
			return ListenSpec{}, fmt.Errorf("listen %q: bad port name", s)
		}
		return ListenSpec{Kind: kind, Name: arg}, nil
	}
	return ListenSpec{}, fmt.Errorf("listen %q: unknown kind %q", s, kind)
}

// Listen opens a stream listener for a vsock, fcsim or unix spec.
func (l ListenSpec) Listen() (net.Listener, error) {
	switch l.Kind {
	case KindVsock:
		return vsock.Listen(l.Port)
	case KindFcsim:
		dir := os.Getenv(EnvFcsimGuestDir)
		if dir == "" {
			return nil, fmt.Errorf("listen %s: %s is not set", l, EnvFcsimGuestDir)
		}
		return ListenUnix(filepath.Join(dir, fmt.Sprintf("%d.sock", l.Port)))
	case KindUnix:
		return ListenUnix(l.Path)
	}
	return nil, fmt.Errorf("listen %s: not a stream listener", l)
}

// ListenUnix listens on a unix socket, replacing a stale socket file
// (not any other file), and makes it 0600: only the agent's user may
// connect.
func ListenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("listen %s: exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("listen %s: remove stale socket: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	return ln, nil
}

// FindVirtioPort returns the device of the virtio-serial port called
// name, looking in sysDir (SysVirtioPorts): each port directory
// (vport1p1, …) has a "name" file; the device is /dev/<directory>.
func FindVirtioPort(sysDir, name string) (string, error) {
	ents, err := os.ReadDir(sysDir)
	if err != nil {
		return "", fmt.Errorf("virtio port %q: %w", name, err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(sysDir, e.Name(), "name"))
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == name {
			return filepath.Join("/dev", e.Name()), nil
		}
	}
	return "", fmt.Errorf("virtio port %q: %w", name, fs.ErrNotExist)
}

// SerialOpener returns the open function ServeSerial needs for a serial
// spec: it finds the port by name each time (the device can appear after
// the agent starts) and opens it read-write. ServeSerial keeps it open
// and opens it again only if it fails.
func (l ListenSpec) SerialOpener(sysDir string) (func() (io.ReadWriteCloser, error), error) {
	if l.Kind != KindSerial {
		return nil, errors.New("not a serial listen spec")
	}
	return func() (io.ReadWriteCloser, error) {
		dev := l.Path
		if dev == "" {
			var err error
			if dev, err = FindVirtioPort(sysDir, l.Name); err != nil {
				return nil, err
			}
		}
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", dev, err)
		}
		return &serialDevice{File: f}, nil
	}, nil
}
