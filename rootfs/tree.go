package rootfs

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hearth-vm/hearth/rootfs/sparse"
	"golang.org/x/sys/unix"
)

// tree is a directory being filled to become a guest's root filesystem.
// Paths inside it are guest paths: symlinks in them resolve as they would
// in the guest (relative to the tree's root, "/.." staying at the root),
// through openat2(RESOLVE_IN_ROOT), so no archive entry or symlink can
// make hearth write outside the tree.
type tree struct {
	root   string // absolute, symlink-free
	rootfd int
	isRoot bool // the process can chown, mknod and set trusted xattrs
	// warnings collects what could not be reproduced (devices without
	// root, …) so the import can report it once.
	warnings []string
	// dirs holds the final mode and times of directories, applied by
	// finish: a read-only directory must stay writable while it is
	// filled, and filling it moves its mtime.
	dirs map[string]dirMeta
}

type dirMeta struct {
	mode         fs.FileMode
	atime, mtime unix.Timespec
}

// deferDir records a directory's final mode and times for finish.
func (t *tree) deferDir(p string, mode fs.FileMode, atime, mtime unix.Timespec) {
	if t.dirs == nil {
		t.dirs = map[string]dirMeta{}
	}
	t.dirs[p] = dirMeta{mode: mode, atime: atime, mtime: mtime}
}

// finish applies the deferred directory modes and times, deepest first.
func (t *tree) finish() error {
	ps := make([]string, 0, len(t.dirs))
	for p := range t.dirs {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool { return strings.Count(ps[i], "/") > strings.Count(ps[j], "/") })
	for _, p := range ps {
		m := t.dirs[p]
		if err := os.Chmod(p, m.mode); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		_ = unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{m.atime, m.mtime}, unix.AT_SYMLINK_NOFOLLOW)
	}
	t.dirs = nil
	return nil
}

func openTree(root string) (*tree, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	root, err = filepath.EvalSymlinks(root)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: root, Err: err}
	}
	return &tree{root: root, rootfd: fd, isRoot: os.Geteuid() == 0}, nil
}

func (t *tree) close() { unix.Close(t.rootfd) }

func (t *tree) warn(format string, args ...any) {
	if len(t.warnings) < 100 {
		t.warnings = append(t.warnings, fmt.Sprintf(format, args...))
	}
}

// cleanRel turns an archive or guest path into a clean path relative to
// the root ("" for the root itself). It rejects paths that climb out.
func cleanRel(p string) (string, error) {
	c := path.Clean("/" + p)
	if strings.Contains(p, "\x00") {
		return "", fmt.Errorf("path %q contains NUL", p)
	}
	// Clean("/"+p) cannot climb above "/", but an entry that needed ".."
	// to get there is malformed; refuse it rather than guess.
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return "", fmt.Errorf("path %q climbs out of the root", p)
		}
	}
	return strings.TrimPrefix(c, "/"), nil
}

// dir returns the host path of the directory at guest path rel, resolving
// symlinks inside the root; with create, missing components are made
// (0755, owned by the caller).
func (t *tree) dir(rel string, create bool) (string, error) {
	if rel == "" || rel == "." {
		return t.root, nil
	}
	fd, err := unix.Openat2(t.rootfd, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err == nil {
		defer unix.Close(fd)
		real, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
		if err != nil {
			return "", err
		}
		if real != t.root && !strings.HasPrefix(real, t.root+"/") {
			// RESOLVE_IN_ROOT makes this impossible; refuse loudly if the
			// kernel ever disagrees.
			return "", fmt.Errorf("%s resolved outside the root to %s", rel, real)
		}
		return real, nil
	}
	if !errors.Is(err, unix.ENOENT) || !create {
		return "", &os.PathError{Op: "resolve", Path: "/" + rel, Err: err}
	}
	parent, err := t.dir(path.Dir(rel), true)
	if err != nil {
		return "", err
	}
	p := filepath.Join(parent, path.Base(rel))
	if err := os.Mkdir(p, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			// Something is there but does not resolve to a directory:
			// a dangling symlink. Writing through it would mean creating
			// its target, which archives never ask for.
			return "", fmt.Errorf("/%s: exists but is not a directory (dangling symlink?)", rel)
		}
		return "", err
	}
	return p, nil
}

// parent splits guest path rel into the host path of its (resolved,
// created) parent directory and its base name.
func (t *tree) parent(rel string) (string, string, error) {
	d, err := t.dir(path.Dir(rel), true)
	if err != nil {
		return "", "", err
	}
	return d, path.Base(rel), nil
}

// removeEntry deletes whatever is at host path p (not following a final
// symlink); a missing entry is fine.
func removeEntry(p string) error {
	fi, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return removeTree(p)
	}
	return os.Remove(p)
}

// applyHeader creates the entry described by hdr at guest path rel,
// reading a regular file's content from r. An existing entry is replaced,
// except that a directory over a directory only updates its metadata
// (layers re-list directories whose content lower layers made).
func (t *tree) applyHeader(rel string, hdr *tar.Header, r io.Reader) error {
	if rel == "" {
		if hdr.Typeflag == tar.TypeDir {
			return t.setMeta(t.root, hdr, false)
		}
		return nil
	}
	dir, base, err := t.parent(rel)
	if err != nil {
		return err
	}
	p := filepath.Join(dir, base)
	if hdr.Typeflag == tar.TypeDir {
		if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
			return t.setMeta(p, hdr, false)
		}
	}
	if err := removeEntry(p); err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := os.Mkdir(p, 0o755); err != nil {
			return err
		}
	case tar.TypeReg:
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, r)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("/%s: %w", rel, err)
		}
	case tar.TypeSymlink:
		if err := os.Symlink(hdr.Linkname, p); err != nil {
			return err
		}
	case tar.TypeLink:
		target, err := cleanRel(hdr.Linkname)
		if err != nil {
			return err
		}
		tdir, tbase, err := t.parent(target)
		if err != nil {
			return fmt.Errorf("hard link /%s to /%s: %w", rel, target, err)
		}
		if err := os.Link(filepath.Join(tdir, tbase), p); err != nil {
			return fmt.Errorf("hard link /%s to /%s: %w", rel, target, err)
		}
		return nil // the link shares the target's metadata
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if hdr.Typeflag != tar.TypeFifo && !t.isRoot {
			t.warn("/%s: device node skipped (needs root)", rel)
			return nil
		}
		mode := uint32(hdr.Mode & 0o7777)
		switch hdr.Typeflag {
		case tar.TypeChar:
			mode |= unix.S_IFCHR
		case tar.TypeBlock:
			mode |= unix.S_IFBLK
		default:
			mode |= unix.S_IFIFO
		}
		if err := unix.Mknod(p, mode, int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))); err != nil {
			return &os.PathError{Op: "mknod", Path: p, Err: err}
		}
	default:
		t.warn("/%s: unsupported tar entry type %q skipped", rel, hdr.Typeflag)
		return nil
	}
	return t.setMeta(p, hdr, hdr.Typeflag == tar.TypeSymlink)
}

// setMeta applies ownership, mode, xattrs and times from hdr to host path
// p. Ownership and privileged xattrs need root; without it they are left
// as the caller's.
func (t *tree) setMeta(p string, hdr *tar.Header, symlink bool) error {
	if t.isRoot {
		if err := os.Lchown(p, hdr.Uid, hdr.Gid); err != nil {
			return err
		}
	}
	mode := fs.FileMode(hdr.Mode&0o777) | modeBits(hdr.Mode)
	mt := hdr.ModTime
	if mt.IsZero() {
		mt = time.Unix(0, 0)
	}
	ts := []unix.Timespec{unix.NsecToTimespec(mt.UnixNano()), unix.NsecToTimespec(mt.UnixNano())}
	if hdr.Typeflag == tar.TypeDir {
		// Owner-writable until finish, so later entries can go in.
		if err := os.Chmod(p, mode|0o700); err != nil {
			return err
		}
		t.deferDir(p, mode, ts[0], ts[1])
	} else if !symlink {
		// After chown, which clears set-id bits.
		if err := os.Chmod(p, mode); err != nil {
			return err
		}
	}
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		if err := unix.Lsetxattr(p, name, []byte(v), 0); err != nil {
			if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP) {
				t.warn("%s: xattr %s not set: %v", strings.TrimPrefix(p, t.root), name, err)
				continue
			}
			return &os.PathError{Op: "setxattr " + name, Path: p, Err: err}
		}
	}
	if hdr.Typeflag == tar.TypeDir {
		return nil
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimes", Path: p, Err: err}
	}
	return nil
}

// modeBits converts the set-id and sticky bits of a tar mode to Go's.
func modeBits(m int64) fs.FileMode {
	var out fs.FileMode
	if m&0o4000 != 0 {
		out |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		out |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		out |= fs.ModeSticky
	}
	return out
}

// copyDir fills the tree from a host directory: directories are recreated,
// regular files hard-linked where the source is on the same filesystem
// (nothing is ever written through those links) and copied sparsely
// otherwise, symlinks, devices and FIFOs recreated, with owners, modes,
// times and xattrs preserved.
func (t *tree) copyDir(ctx context.Context, src string) error {
	src, err := filepath.Abs(src)
	if err != nil {
		return err
	}
	rootFi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !rootFi.IsDir() {
		return fmt.Errorf("%s is not a directory", src)
	}
	sameDev := devOf(rootFi) == devOfPath(t.root)
	links := map[uint64]string{} // source inode → tree path, for hard links when copying
	err = filepath.WalkDir(src, func(sp string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(src, sp)
		if err != nil {
			return err
		}
		dp := t.root
		if rel != "." {
			dp = filepath.Join(t.root, rel)
		}
		fi, err := os.Lstat(sp)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		switch m := fi.Mode(); {
		case m.IsDir():
			if rel != "." {
				if err := os.Mkdir(dp, 0o700); err != nil {
					return err
				}
			}
			return t.copyMeta(sp, dp, fi)
		case m.IsRegular():
			if first, ok := links[st.Ino]; ok && st.Nlink > 1 {
				return os.Link(first, dp)
			}
			if sameDev {
				if err := os.Link(sp, dp); err == nil {
					return nil
				}
			}
			if err := copyFile(ctx, sp, dp); err != nil {
				return err
			}
			if st.Nlink > 1 {
				links[st.Ino] = dp
			}
			return t.copyMeta(sp, dp, fi)
		case m&fs.ModeSymlink != 0:
			target, err := os.Readlink(sp)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, dp); err != nil {
				return err
			}
			return t.copyMeta(sp, dp, fi)
		case m&(fs.ModeDevice|fs.ModeNamedPipe) != 0:
			if m&fs.ModeNamedPipe == 0 && !t.isRoot {
				t.warn("/%s: device node skipped (needs root)", rel)
				return nil
			}
			if err := unix.Mknod(dp, st.Mode, int(st.Rdev)); err != nil {
				return &os.PathError{Op: "mknod", Path: dp, Err: err}
			}
			return t.copyMeta(sp, dp, fi)
		default:
			t.warn("/%s: %v skipped", rel, m.Type())
			return nil
		}
	})
	return err
}

// copyMeta gives dst the owner, mode, xattrs and mtime of src.
func (t *tree) copyMeta(src, dst string, fi os.FileInfo) error {
	st := fi.Sys().(*syscall.Stat_t)
	symlink := fi.Mode()&fs.ModeSymlink != 0
	if t.isRoot {
		if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
	}
	mode := fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	switch {
	case fi.IsDir():
		if err := os.Chmod(dst, mode|0o700); err != nil {
			return err
		}
		t.deferDir(dst, mode, unix.Timespec(st.Atim), unix.Timespec(st.Mtim))
	case !symlink:
		if err := os.Chmod(dst, mode); err != nil {
			return err
		}
	}
	copyXattrs(t, src, dst)
	if !fi.IsDir() {
		setTimes(dst, fi)
	}
	return nil
}

func copyXattrs(t *tree, src, dst string) {
	sz, err := unix.Llistxattr(src, nil)
	if err != nil || sz == 0 {
		return
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(src, buf)
	if err != nil {
		return
	}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		vsz, err := unix.Lgetxattr(src, name, nil)
		if err != nil {
			continue
		}
		val := make([]byte, vsz)
		vsz, err = unix.Lgetxattr(src, name, val)
		if err != nil {
			continue
		}
		if err := unix.Lsetxattr(dst, name, val[:vsz], 0); err != nil {
			t.warn("%s: xattr %s not copied: %v", strings.TrimPrefix(dst, t.root), name, err)
		}
	}
}

func setTimes(p string, fi os.FileInfo) {
	st := fi.Sys().(*syscall.Stat_t)
	ts := []unix.Timespec{unix.Timespec(st.Atim), unix.Timespec(st.Mtim)}
	_ = unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}

func devOf(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Dev
	}
	return 0
}

func devOfPath(p string) uint64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return devOf(fi)
}

// copyFile copies a regular file sparsely (copy_file_range over its data
// extents) to a new file at dst.
func copyFile(ctx context.Context, src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := sparse.Copy(ctx, out, in, fi.Size()); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// removeTree deletes a staging or temporary tree. Unlike os.RemoveAll it
// also gets through directories the import made read-only (as an image
// wanted them), which an unprivileged process cannot empty otherwise.
func removeTree(p string) error {
	if err := os.RemoveAll(p); err == nil {
		return nil
	}
	_ = filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(q, 0o700)
		}
		return nil
	})
	return os.RemoveAll(p)
}
