package jail

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// LinkOrCopy makes dst refer to the contents of src: a hard link when
// both are on one filesystem (instant, no extra space), a copy otherwise
// (EXDEV; EPERM too, which protected_hardlinks returns for a file the
// caller does not own). Symlinks in src are resolved first, because
// link(2) would link the symlink itself, whose target means something
// else inside a chroot. An existing dst that already is src is kept; a
// different one is replaced.
func LinkOrCopy(src, dst string) error {
	real, err := filepath.EvalSymlinks(src)
	if err != nil {
		return fmt.Errorf("stage %s: %w", src, err)
	}
	sst, err := os.Stat(real)
	if err != nil {
		return fmt.Errorf("stage %s: %w", src, err)
	}
	if !sst.Mode().IsRegular() {
		return fmt.Errorf("stage %s: not a regular file", src)
	}
	if dstat, err := os.Lstat(dst); err == nil {
		if os.SameFile(sst, dstat) {
			return nil
		}
		if err := os.Remove(dst); err != nil {
			return fmt.Errorf("replace stale %s: %w", dst, err)
		}
	}
	err = os.Link(real, dst)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EXDEV) && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("link %s into jail: %w", src, err)
	}
	return CopyFile(real, dst, sst.Mode().Perm())
}

// CopyFile copies src to a new file dst with mode perm; a partial dst is
// removed. dst must not exist.
func CopyFile(src, dst string, perm os.FileMode) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("copy %s: %w", src, cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	// io.Copy uses copy_file_range on Linux, so the kernel moves the data.
	if _, err := io.Copy(out, in); err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return nil
}

// MoveFile renames src to dst, copying across filesystems.
func MoveFile(src, dst string) error {
	err := os.Rename(src, dst)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EXDEV) {
		return fmt.Errorf("move %s to %s: %w", src, dst, err)
	}
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("move %s: %w", src, err)
	}
	if err := CopyFile(src, dst, st.Mode().Perm()); err != nil {
		return err
	}
	return os.Remove(src)
}

// Chroot is a jail's root directory and the credential that owns it.
type Chroot struct {
	Root string
	Cred Credential
}

// inside maps an absolute in-jail path to the host path under Root,
// refusing paths that would escape it.
func (c Chroot) inside(p string) (string, error) {
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("in-jail path %q is not absolute", p)
	}
	clean := filepath.Clean(p)
	if clean == "/" {
		return "", fmt.Errorf("in-jail path %q names the jail root", p)
	}
	return filepath.Join(c.Root, clean), nil
}

// Create makes Root (and its parents) and gives Root to the credential,
// which the VMM needs to create its sockets there. An existing Root is
// reused.
func (c Chroot) Create() error {
	if err := os.MkdirAll(c.Root, 0o750); err != nil {
		return fmt.Errorf("create chroot: %w", err)
	}
	if err := os.Chown(c.Root, c.Cred.UID, c.Cred.GID); err != nil {
		return fmt.Errorf("chown chroot: %w", err)
	}
	return nil
}

// Stage makes the host file visible at the absolute in-jail path name
// (hard link, or copy across filesystems). A file the VMM must write is
// given to the jail's uid; a read-only one is given to it only when it is
// not world-readable. With a hard link, chown changes the host file too
// (one inode), which is why shared read-only files (kernels, images)
// should be world-readable. Parent directories are created root-owned
// and world-searchable.
func (c Chroot) Stage(host, name string, writable bool) error {
	dst, err := c.inside(name)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("stage %s: %w", host, err)
	}
	if err := LinkOrCopy(host, dst); err != nil {
		return err
	}
	st, err := os.Stat(dst)
	if err != nil {
		return fmt.Errorf("stage %s: %w", host, err)
	}
	if writable || st.Mode().Perm()&0o004 == 0 {
		if err := os.Chown(dst, c.Cred.UID, c.Cred.GID); err != nil {
			return fmt.Errorf("chown %s in jail: %w", dst, err)
		}
	}
	return nil
}

// StageExecutable stages the binary at host path exe into the jail at the
// same path, with everything the dynamic loader needs to run it there:
// its interpreter, its shared libraries (as the host's loader resolves
// them) and /etc/ld.so.cache. A static binary needs only itself.
func (c Chroot) StageExecutable(exe string) error {
	if !filepath.IsAbs(exe) {
		return fmt.Errorf("executable %q is not an absolute path", exe)
	}
	deps, err := SharedLibraries(exe)
	if err != nil {
		return err
	}
	if err := c.Stage(exe, exe, false); err != nil {
		return err
	}
	for _, d := range deps {
		if err := c.Stage(d, d, false); err != nil {
			return err
		}
	}
	if len(deps) > 0 {
		if _, err := os.Stat("/etc/ld.so.cache"); err == nil {
			if err := c.Stage("/etc/ld.so.cache", "/etc/ld.so.cache", false); err != nil {
				return err
			}
		}
	}
	return nil
}

// SharedLibraries returns the absolute paths of exe's ELF interpreter and
// shared libraries, or nothing for a static binary. The host's dynamic
// loader lists them itself (`ld.so --list`, what ldd does), so search
// paths, $ORIGIN and hwcaps resolve exactly as they will at run time;
// the binary's own code does not run.
func SharedLibraries(exe string) ([]string, error) {
	f, err := elf.Open(exe)
	if err != nil {
		return nil, fmt.Errorf("read ELF %s: %w", exe, err)
	}
	var interp string
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, err := io.ReadAll(p.Open())
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("read interpreter of %s: %w", exe, err)
			}
			interp = string(bytes.TrimRight(b, "\x00"))
		}
	}
	f.Close()
	if interp == "" {
		return nil, nil
	}
	out, err := exec.Command(interp, "--list", exe).Output()
	if err != nil {
		return nil, fmt.Errorf("list libraries of %s with %s: %w", exe, interp, err)
	}
	libs, err := parseLoaderList(out)
	if err != nil {
		return nil, fmt.Errorf("libraries of %s: %w", exe, err)
	}
	return appendUnique(libs, interp), nil
}

// parseLoaderList parses `ld.so --list` output:
//
//	linux-vdso.so.1 (0x…)                      kernel-provided, skipped
//	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)
//	/lib64/ld-linux-x86-64.so.2 (0x…)
//	libfoo.so => not found                     an error
func parseLoaderList(b []byte) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		if name, target, ok := strings.Cut(line, "=>"); ok {
			target = strings.TrimSpace(target)
			if strings.HasPrefix(target, "not found") {
				return nil, fmt.Errorf("%s not found", strings.TrimSpace(name))
			}
			if p, _, _ := strings.Cut(target, " ("); strings.HasPrefix(p, "/") {
				out = appendUnique(out, p)
			}
			continue
		}
		if p, _, _ := strings.Cut(line, " ("); strings.HasPrefix(p, "/") {
			out = appendUnique(out, p)
		}
	}
	return out, nil
}

func appendUnique(s []string, v string) []string {
	for _, x := range s {
		if x == v {
			return s
		}
	}
	return append(s, v)
}

// MakeDevice creates in the jail a character or block device node with
// the same path, type and device number as the host's dev (e.g.
// /dev/kvm, /dev/net/tun), mode 0600 and owned by the jail's uid. An
// existing node with the same number is kept.
func (c Chroot) MakeDevice(dev string) error {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return fmt.Errorf("device %s: %w", dev, err)
	}
	typ := st.Mode & unix.S_IFMT
	if typ != unix.S_IFCHR && typ != unix.S_IFBLK {
		return fmt.Errorf("device %s is not a character or block device", dev)
	}
	dst, err := c.inside(dev)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("device %s: %w", dev, err)
	}
	var cur unix.Stat_t
	if err := unix.Lstat(dst, &cur); err == nil {
		if cur.Mode&unix.S_IFMT == typ && cur.Rdev == st.Rdev {
			return os.Lchown(dst, c.Cred.UID, c.Cred.GID)
		}
		if err := os.Remove(dst); err != nil {
			return fmt.Errorf("replace %s: %w", dst, err)
		}
	}
	if err := unix.Mknod(dst, typ|0o600, int(st.Rdev)); err != nil {
		return fmt.Errorf("mknod %s (needs CAP_MKNOD): %w", dst, err)
	}
	if err := os.Lchown(dst, c.Cred.UID, c.Cred.GID); err != nil {
		return fmt.Errorf("chown %s: %w", dst, err)
	}
	return nil
}
