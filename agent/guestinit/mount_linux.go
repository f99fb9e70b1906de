package guestinit

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Mount is one filesystem init mounts.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
	// Optional mounts may fail (a kernel without cgroup2, say) without a
	// warning.
	Optional bool
}

const (
	nosuid = unix.MS_NOSUID
	nodev  = unix.MS_NODEV
	noexec = unix.MS_NOEXEC
)

// EssentialMounts is what a minimal guest needs, in order (/dev/pts
// after /dev, cgroup2 after /sys).
var EssentialMounts = []Mount{
	{Source: "proc", Target: "/proc", FSType: "proc", Flags: nosuid | nodev | noexec},
	{Source: "sysfs", Target: "/sys", FSType: "sysfs", Flags: nosuid | nodev | noexec},
	{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs", Flags: nosuid, Data: "mode=0755"},
	{Source: "devpts", Target: "/dev/pts", FSType: "devpts", Flags: nosuid | noexec, Data: "gid=5,mode=0620,ptmxmode=0666"},
	{Source: "tmpfs", Target: "/dev/shm", FSType: "tmpfs", Flags: nosuid | nodev, Data: "mode=1777"},
	{Source: "tmpfs", Target: "/run", FSType: "tmpfs", Flags: nosuid | nodev, Data: "mode=0755"},
	{Source: "tmpfs", Target: "/tmp", FSType: "tmpfs", Flags: nosuid | nodev, Data: "mode=1777"},
	{Source: "cgroup2", Target: "/sys/fs/cgroup", FSType: "cgroup2", Flags: nosuid | nodev | noexec, Optional: true},
}

// Mounter performs mounts; tests replace it.
type Mounter interface {
	Mount(source, target, fstype string, flags uintptr, data string) error
	// Mounted lists the current mount points.
	Mounted() (map[string]bool, error)
	MkdirAll(path string, perm os.FileMode) error
}

// SystemMounter mounts for real.
type SystemMounter struct{}

// Mount calls mount(2).
func (SystemMounter) Mount(source, target, fstype string, flags uintptr, data string) error {
	return unix.Mount(source, target, fstype, flags, data)
}

// Mounted reads /proc/self/mountinfo (empty before /proc is mounted).
func (SystemMounter) Mounted() (map[string]bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if errors.Is(err, os.ErrNotExist) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseMountinfo(f)
}

// MkdirAll calls os.MkdirAll.
func (SystemMounter) MkdirAll(p string, perm os.FileMode) error { return os.MkdirAll(p, perm) }

func parseMountinfo(f *os.File) (map[string]bool, error) {
	m := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options ...
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 {
			m[unescapeMountPath(fields[4])] = true
		}
	}
	return m, sc.Err()
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range []byte(s[i+1 : i+4]) {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + (c - '0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// MountAll mounts what is not mounted yet (the kernel may have mounted
// devtmpfs itself) and returns the failures; it stops at nothing, since
// a guest missing /dev/shm can still run the agent.
func MountAll(m Mounter, mounts []Mount, log *slog.Logger) error {
	var errs []error
	for _, mt := range mounts {
		// Re-read each time: /proc appears after the first mount.
		have, err := m.Mounted()
		if err == nil && have[mt.Target] {
			log.Debug("init: already mounted", "target", mt.Target)
			continue
		}
		if err := m.MkdirAll(mt.Target, 0o755); err != nil && !mt.Optional {
			errs = append(errs, fmt.Errorf("mkdir %s: %w", mt.Target, err))
			continue
		}
		if err := m.Mount(mt.Source, mt.Target, mt.FSType, mt.Flags, mt.Data); err != nil {
			if errors.Is(err, unix.EBUSY) {
				continue // mounted after all
			}
			if !mt.Optional {
				errs = append(errs, fmt.Errorf("mount %s on %s: %w", mt.FSType, mt.Target, err))
			}
			continue
		}
		log.Debug("init: mounted", "target", mt.Target, "fstype", mt.FSType)
	}
	return errors.Join(errs...)
}

// DevLinks are the /dev symlinks programs expect and devtmpfs lacks.
var DevLinks = map[string]string{
	"/dev/fd":     "/proc/self/fd",
	"/dev/stdin":  "/proc/self/fd/0",
	"/dev/stdout": "/proc/self/fd/1",
	"/dev/stderr": "/proc/self/fd/2",
}

// MakeDevLinks creates the missing DevLinks under root ("/" in a guest).
func MakeDevLinks(root string) error {
	var errs []error
	for link, target := range DevLinks {
		p := filepath.Join(root, link)
		if _, err := os.Lstat(p); err == nil {
			continue
		}
		if err := os.Symlink(target, p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
