package digest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/hearth-vm/hearth/rootfs/sparse"
)

// ErrMismatch is matched by every *IntegrityError (errors.Is).
var ErrMismatch = errors.New("digest mismatch")

// IntegrityError reports a file whose content does not have the digest its
// manifest records. The runtime maps it to its Integrity error kind.
type IntegrityError struct {
	// Path is the file that failed verification.
	Path string
	// Want is the digest the manifest records, Got the one computed now
	// (both lower-case hex SHA-256).
	Want, Got string
}

func (e *IntegrityError) Error() string {
	return fmt.Sprintf("integrity check failed for %s: sha256 is %s, manifest records %s", e.Path, e.Got, e.Want)
}

// Unwrap makes errors.Is(err, ErrMismatch) true.
func (e *IntegrityError) Unwrap() error { return ErrMismatch }

// bufSize is the read size for hashing and copying: large enough that the
// syscall cost vanishes next to SHA-256, small enough to stay in L2/L3.
const bufSize = 1 << 20

// zeros stands in for the holes of sparse files, which read as zeros but
// need not be read at all.
var zeros = make([]byte, bufSize)

// File returns the SHA-256 (lower-case hex) and size of the file at path.
// Holes of a sparse file are hashed as the zeros they read as, without
// reading them. ctx is checked between chunks.
func File(ctx context.Context, path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("hash %s: %w", path, err)
	}
	defer f.Close()
	sum, n, err := Reader(ctx, f)
	if err != nil {
		return "", 0, fmt.Errorf("hash %s: %w", path, err)
	}
	return sum, n, nil
}

// Reader hashes an open file from offset 0 to its current size, skipping
// the reads of holes where the filesystem reports them.
func Reader(ctx context.Context, f *os.File) (string, int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	size := fi.Size()
	h := sha256.New()
	buf := make([]byte, bufSize)
	var off int64
	err = sparse.Segments(f, size, func(start, n int64) error {
		end := start + n
		if err := hashZeros(ctx, h, start-off); err != nil {
			return err
		}
		if err := hashRange(ctx, h, f, buf, start, end); err != nil {
			return err
		}
		off = end
		return nil
	})
	if err != nil {
		return "", 0, err
	}
	if err := hashZeros(ctx, h, size-off); err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), size, nil
}

func hashZeros(ctx context.Context, h hash.Hash, n int64) error {
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		c := min(n, int64(len(zeros)))
		h.Write(zeros[:c])
		n -= c
	}
	return nil
}

func hashRange(ctx context.Context, h hash.Hash, f *os.File, buf []byte, start, end int64) error {
	for off := start; off < end; {
		if err := ctx.Err(); err != nil {
			return err
		}
		c := min(end-off, int64(len(buf)))
		n, err := f.ReadAt(buf[:c], off)
		h.Write(buf[:n])
		off += int64(n)
		if err == io.EOF && off < end {
			// The file shrank under us: report it rather than hashing
			// a length the file no longer has.
			return fmt.Errorf("file shrank while hashing (at %d of %d)", off, end)
		}
		if err != nil && err != io.EOF {
			return err
		}
	}
	return nil
}

// Writer passes writes through to an underlying writer while hashing
// them, so a file's digest is known the moment it is written.
type Writer struct {
	w io.Writer
	h hash.Hash
	n int64
}

// NewWriter returns a hashing Writer over w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w, h: sha256.New()} }

func (w *Writer) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// Sum returns the lower-case hex SHA-256 of what was written so far.
func (w *Writer) Sum() string { return hex.EncodeToString(w.h.Sum(nil)) }

// Size returns the number of bytes written so far.
func (w *Writer) Size() int64 { return w.n }

// Bytes returns the lower-case hex SHA-256 of b.
func Bytes(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// Valid reports whether s looks like a lower-case hex SHA-256.
func Valid(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Copy copies src into the empty file dst and returns the SHA-256 and
// size of the content, computed in the same pass as the write. Only src's
// data extents are read and written, so holes stay holes (and are hashed
// as the zeros they read as). dst is synced before Copy returns.
func Copy(ctx context.Context, dst, src *os.File) (string, int64, error) {
	fi, err := src.Stat()
	if err != nil {
		return "", 0, err
	}
	size := fi.Size()
	h := sha256.New()
	buf := make([]byte, bufSize)
	var off int64
	err = sparse.Segments(src, size, func(start, n int64) error {
		if err := hashZeros(ctx, h, start-off); err != nil {
			return err
		}
		for pos, end := start, start+n; pos < end; {
			if err := ctx.Err(); err != nil {
				return err
			}
			c := min(end-pos, int64(len(buf)))
			r, err := src.ReadAt(buf[:c], pos)
			if r > 0 {
				h.Write(buf[:r])
				if _, werr := dst.WriteAt(buf[:r], pos); werr != nil {
					return werr
				}
				pos += int64(r)
			}
			if err == io.EOF && pos < end {
				return fmt.Errorf("file shrank while copying (at %d of %d)", pos, end)
			}
			if err != nil && err != io.EOF {
				return err
			}
		}
		off = start + n
		return nil
	})
	if err != nil {
		return "", 0, err
	}
	if err := hashZeros(ctx, h, size-off); err != nil {
		return "", 0, err
	}
	if err := dst.Truncate(size); err != nil {
		return "", 0, err
	}
	if err := dst.Sync(); err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), size, nil
}

// CopyFile copies the file at src to a new file at dst (mode perm) with
// Copy, removing dst if the copy fails.
func CopyFile(ctx context.Context, src, dst string, perm os.FileMode) (string, int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return "", 0, err
	}
	sum, n, err := Copy(ctx, out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return "", 0, fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return sum, n, nil
}
