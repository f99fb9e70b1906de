package rootfs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hearth-vm/hearth/rootfs/digest"
	"github.com/hearth-vm/hearth/rootfs/sparse"
	"golang.org/x/sys/unix"
)

// CloneMethod says how a clone got its blocks.
type CloneMethod string

const (
	// CloneReflink: the clone shares the source's blocks (FICLONE) and
	// costs no space until either side is written.
	CloneReflink CloneMethod = "reflink"
	// CloneCopy: the source's data extents were copied in the kernel
	// (copy_file_range); holes stayed holes.
	CloneCopy CloneMethod = "copy"
)

// CloneOptions tune Clone. The zero value clones at the source's size,
// reflinking when it can.
type CloneOptions struct {
	// Size grows the clone to this many bytes with resize2fs; 0 keeps the
	// source's size. Smaller than the source is ErrShrink.
	Size int64
	// SourceDigest is the source's SHA-256 (e.g. Files.RootfsSHA256),
	// recorded with the clone so it can later be told which template
	// version it came from. Clone does not re-hash the source.
	SourceDigest string
	// NoReflink skips FICLONE (benchmarks; filesystems whose reflink is
	// known to be slow).
	NoReflink bool
	// NoRecord skips writing the clone record (<dst>.clone.json).
	NoRecord bool
	// Mode is the clone's permission bits (default 0600: a VM's disk is
	// private to hearth).
	Mode os.FileMode
	// Resize2fs is the resize2fs binary (default "resize2fs" on $PATH).
	Resize2fs string
	// Logger receives the rung taken and why a rung was skipped.
	Logger *slog.Logger
}

// CloneInfo describes a clone; it is also what the clone record holds.
type CloneInfo struct {
	Source       string      `json:"source"`
	SourceSHA256 string      `json:"source_sha256,omitempty"`
	SourceSize   int64       `json:"source_size"`
	Path         string      `json:"path"`
	Method       CloneMethod `json:"method"`
	// Size is the clone's final size (after any grow).
	Size int64 `json:"size"`
	// Copied is the number of data bytes copied (0 for a reflink).
	Copied  int64     `json:"copied_bytes"`
	Grown   bool      `json:"grown,omitempty"`
	Created time.Time `json:"created"`
	// Duration is how long Clone took.
	Duration time.Duration `json:"duration_ns"`
}

// CloneRecordSuffix names the record written beside a clone.
const CloneRecordSuffix = ".clone.json"

// Clone makes dst an independent copy of the filesystem image src: a
// FICLONE reflink where the filesystem shares blocks, else a sparse-aware
// in-kernel copy of the data extents (checked against free space first),
// then an optional grow with resize2fs, then a record of the source and
// its digest at <dst>.clone.json. dst must not exist. The clone is built
// under a temporary name and renamed into place, so a failed or cancelled
// Clone leaves nothing at dst; src is only read.
func Clone(ctx context.Context, src, dst string, opts CloneOptions) (CloneInfo, error) {
	start := time.Now()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mode := opts.Mode
	if mode == 0 {
		mode = 0o600
	}
	in, err := os.Open(src)
	if err != nil {
		return CloneInfo{}, fmt.Errorf("clone: %w", err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return CloneInfo{}, fmt.Errorf("clone: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return CloneInfo{}, fmt.Errorf("clone: %s is not a regular file", src)
	}
	if opts.Size != 0 && opts.Size < fi.Size() {
		return CloneInfo{}, fmt.Errorf("clone %s to %d bytes: %w (it has %d)", src, opts.Size, ErrShrink, fi.Size())
	}
	if _, err := os.Lstat(dst); err == nil {
		return CloneInfo{}, fmt.Errorf("clone to %s: %w", dst, os.ErrExist)
	}
	out, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".clone-*")
	if err != nil {
		return CloneInfo{}, fmt.Errorf("clone: %w", err)
	}
	tmp := out.Name()
	info := CloneInfo{Source: src, SourceSHA256: opts.SourceDigest, SourceSize: fi.Size(), Path: dst, Size: fi.Size(), Created: start.UTC()}
	ok := false
	defer func() {
		if !ok {
			out.Close()
			os.Remove(tmp)
		}
	}()

	reflinked := false
	if !opts.NoReflink {
		if err := sparse.Reflink(out, in); err == nil {
			reflinked = true
		} else {
			// Not an error: most filesystems (ext4, tmpfs) cannot share
			// blocks, and crossing filesystems never can.
			log.Debug("rootfs clone: reflink unavailable, copying", "src", src, "dst", dst, "err", err)
		}
	}
	if reflinked {
		info.Method = CloneReflink
	} else {
		if err := checkSpace(filepath.Dir(dst), sparse.Allocated(fi)); err != nil {
			return CloneInfo{}, fmt.Errorf("clone %s: %w", src, err)
		}
		n, err := sparse.Copy(ctx, out, in, fi.Size())
		if err != nil {
			return CloneInfo{}, fmt.Errorf("clone %s to %s: %w", src, dst, err)
		}
		info.Method, info.Copied = CloneCopy, n
	}
	// The clone is a VM's disk: it must survive a host crash as whole as
	// the VM record that points at it.
	if err := out.Sync(); err != nil {
		return CloneInfo{}, fmt.Errorf("clone: sync: %w", err)
	}
	if err := out.Chmod(mode); err != nil {
		return CloneInfo{}, fmt.Errorf("clone: %w", err)
	}
	if err := out.Close(); err != nil {
		return CloneInfo{}, fmt.Errorf("clone: %w", err)
	}
	if opts.Size > fi.Size() {
		// Grown before it is visible at dst, so nobody can open a clone
		// whose filesystem is smaller than its file.
		if err := Resize(ctx, tmp, opts.Size, opts.Resize2fs); err != nil {
			return CloneInfo{}, err
		}
		info.Size, info.Grown = opts.Size, true
	}
	if err := renameNoReplace(tmp, dst); err != nil {
		return CloneInfo{}, fmt.Errorf("clone to %s: %w", dst, err)
	}
	ok = true
	info.Duration = time.Since(start)
	if !opts.NoRecord {
		b, _ := json.MarshalIndent(info, "", "  ")
		if err := digest.WriteFileAtomic(dst+CloneRecordSuffix, append(b, '\n'), 0o600); err != nil {
			os.Remove(dst)
			return CloneInfo{}, fmt.Errorf("clone: record: %w", err)
		}
	}
	log.Debug("rootfs clone", "src", src, "dst", dst, "method", info.Method, "bytes", info.Copied, "size", info.Size, "took", info.Duration)
	return info, nil
}

// ReadCloneInfo reads the record Clone wrote beside dst.
func ReadCloneInfo(dst string) (CloneInfo, error) {
	var info CloneInfo
	b, err := os.ReadFile(dst + CloneRecordSuffix)
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return info, fmt.Errorf("%s%s: %w", dst, CloneRecordSuffix, err)
	}
	return info, nil
}

// RemoveClone deletes a clone and its record; missing files are fine.
func RemoveClone(dst string) error {
	err1 := os.Remove(dst)
	err2 := os.Remove(dst + CloneRecordSuffix)
	if errors.Is(err1, os.ErrNotExist) {
		err1 = nil
	}
	if errors.Is(err2, os.ErrNotExist) {
		err2 = nil
	}
	return errors.Join(err1, err2)
}

// Resize grows the ext4 image at path to size bytes: the file is extended
// (sparsely) and resize2fs grows the filesystem into it. A smaller size is
// ErrShrink, the same size does nothing. If resize2fs fails the file gets
// its old length back, so the image is as it was.
func Resize(ctx context.Context, path string, size int64, resize2fs string) error {
	if resize2fs == "" {
		resize2fs = "resize2fs"
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("resize: %w", err)
	}
	old := fi.Size()
	switch {
	case size < old:
		return fmt.Errorf("resize %s to %d bytes: %w (it has %d)", path, size, ErrShrink, old)
	case size == old:
		return nil
	}
	if err := os.Truncate(path, size); err != nil {
		return fmt.Errorf("resize %s: %w", path, err)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, resize2fs, "-f", path)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if terr := os.Truncate(path, old); terr != nil {
			err = errors.Join(err, terr)
		}
		return fmt.Errorf("resize %s: %s: %w: %s", path, resize2fs, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}

// checkSpace fails with ErrNoSpace when dir's filesystem has fewer than
// need bytes available, so a copy that cannot fit fails up front instead
// of filling the disk that running VMs write to.
func checkSpace(dir string, need int64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	avail := int64(st.Bavail) * st.Bsize
	if need > avail {
		return &spaceError{dir: dir, need: need, avail: avail}
	}
	return nil
}

type spaceError struct {
	dir         string
	need, avail int64
}

func (e *spaceError) Error() string {
	return fmt.Sprintf("%s: need %d bytes, %d available: %v", e.dir, e.need, e.avail, ErrNoSpace)
}

func (e *spaceError) Is(target error) bool {
	return target == ErrNoSpace || target == syscall.ENOSPC
}

// renameNoReplace renames old to new, failing with os.ErrExist rather
// than replacing an existing new.
func renameNoReplace(oldpath, newpath string) error {
	err := unix.Renameat2(unix.AT_FDCWD, oldpath, unix.AT_FDCWD, newpath, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
		return fmt.Errorf("%s: %w", newpath, os.ErrExist)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: err}
	}
	return nil
}
