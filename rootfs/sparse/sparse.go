package sparse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrNoHoles is returned by Extents when the filesystem claims a file is
// all data although it has fewer blocks allocated than its size: it does
// not report holes, and callers that rely on holes (diff snapshots) must
// not trust the answer.
var ErrNoHoles = errors.New("filesystem does not report holes (SEEK_DATA/SEEK_HOLE)")

// Extent is a data range [Off, Off+Len) of a file.
type Extent struct{ Off, Len int64 }

// Segments calls fn for each data extent of f within [0, size), in order.
// Where the filesystem does not support SEEK_DATA the whole range is one
// extent (correct for copying and hashing, which then just read zeros).
func Segments(f *os.File, size int64, fn func(off, n int64) error) error {
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole remains
		}
		if err != nil {
			if off == 0 && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)) {
				return fn(0, size)
			}
			return fmt.Errorf("seek data: %w", err)
		}
		if start >= size {
			return nil
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		end = min(end, size)
		if err := fn(start, end-start); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// Extents returns the data extents of f and fails with ErrNoHoles when
// the filesystem plainly is not reporting holes (all data, yet fewer
// blocks allocated than the size by more than a rounding margin).
func Extents(f *os.File) ([]Extent, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	var out []Extent
	var data int64
	err = Segments(f, fi.Size(), func(off, n int64) error {
		out = append(out, Extent{off, n})
		data += n
		return nil
	})
	if err != nil {
		return nil, err
	}
	if holesHidden(data, fi.Size(), Allocated(fi)) {
		return nil, fmt.Errorf("%s: %w", f.Name(), ErrNoHoles)
	}
	return out, nil
}

// holesHidden says whether a file reported as data bytes of data out of
// size, with alloc bytes allocated, must be on a filesystem that does not
// report holes: all data, yet clearly less allocated (beyond a margin for
// delayed allocation and block rounding).
func holesHidden(data, size, alloc int64) bool {
	return data == size && data > 0 && alloc+alloc/8+(1<<20) < data
}

// Allocated returns the bytes a file occupies on disk (st_blocks × 512).
func Allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// Reflink makes dst share src's blocks (FICLONE). It fails on filesystems
// without reflink support, across filesystems, and on dst files that are
// not empty.
func Reflink(dst, src *os.File) error {
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		return fmt.Errorf("FICLONE: %w", err)
	}
	return nil
}

// Copy makes dst (open for writing) a copy of src's first size bytes,
// writing only src's data extents and ending with dst's length set to
// size, so holes in src stay holes in dst. It returns the number of data
// bytes copied. ctx is checked between chunks.
func Copy(ctx context.Context, dst, src *os.File, size int64) (int64, error) {
	var copied int64
	err := Segments(src, size, func(off, n int64) error {
		if err := CopyRange(ctx, dst, src, off, n); err != nil {
			return err
		}
		copied += n
		return nil
	})
	if err != nil {
		return copied, err
	}
	if err := dst.Truncate(size); err != nil {
		return copied, fmt.Errorf("set length: %w", err)
	}
	return copied, nil
}

// chunk bounds one copy_file_range call so a cancelled context is noticed
// within a few milliseconds even on slow disks.
const chunk = 64 << 20

// CopyRange copies [off, off+n) of src to the same offsets of dst with
// copy_file_range (the kernel moves or shares the bytes without a round
// trip through user space), falling back to pread/pwrite where the kernel
// refuses (older kernels across filesystems, special files).
func CopyRange(ctx context.Context, dst, src *os.File, off, n int64) error {
	roff, woff := off, off
	end := off + n
	for roff < end {
		if err := ctx.Err(); err != nil {
			return err
		}
		c, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, int(min(end-roff, chunk)), 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
				return readWrite(ctx, dst, src, roff, end-roff)
			}
			return fmt.Errorf("copy_file_range at %d: %w", roff, err)
		}
		if c == 0 {
			return fmt.Errorf("copy_file_range at %d: %w", roff, io.ErrUnexpectedEOF)
		}
	}
	return nil
}

func readWrite(ctx context.Context, dst, src *os.File, off, n int64) error {
	buf := make([]byte, 1<<20)
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		c := min(n, int64(len(buf)))
		r, err := src.ReadAt(buf[:c], off)
		if r > 0 {
			if _, werr := dst.WriteAt(buf[:r], off); werr != nil {
				return fmt.Errorf("write at %d: %w", off, werr)
			}
		}
		off += int64(r)
		n -= int64(r)
		if err == io.EOF && n > 0 {
			return fmt.Errorf("read at %d: %w", off, io.ErrUnexpectedEOF)
		}
		if err != nil && err != io.EOF {
			return fmt.Errorf("read at %d: %w", off, err)
		}
	}
	return nil
}
