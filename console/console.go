package console

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"
)

// Defaults for a console log.
const (
	DefaultMaxBytes = 8 << 20
	DefaultKeep     = 2
)

// Log is one VM's console log file and its rotated generations.
type Log struct {
	Path string
	// MaxBytes is the size at which Rotate rotates (default 8 MiB).
	MaxBytes int64
	// Keep is how many rotated generations stay (default 2).
	Keep int
}

func (l Log) maxBytes() int64 {
	if l.MaxBytes > 0 {
		return l.MaxBytes
	}
	return DefaultMaxBytes
}

func (l Log) keep() int {
	if l.Keep > 0 {
		return l.Keep
	}
	return DefaultKeep
}

func (l Log) gen(i int) string {
	if i == 0 {
		return l.Path
	}
	return l.Path + "." + strconv.Itoa(i)
}

// Rotate rotates the log when it has reached MaxBytes and reports whether
// it did. A missing log is not an error.
func (l Log) Rotate() (bool, error) {
	fi, err := os.Stat(l.Path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if fi.Size() < l.maxBytes() {
		return false, nil
	}
	for i := l.keep() - 1; i >= 1; i-- {
		if err := os.Rename(l.gen(i), l.gen(i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, fmt.Errorf("shift %s: %w", l.gen(i), err)
		}
	}
	if err := copyFile(l.Path, l.gen(1)); err != nil {
		return false, err
	}
	// Truncate in place: the VMM's O_APPEND descriptor keeps working.
	if err := os.Truncate(l.Path, 0); err != nil {
		return false, fmt.Errorf("truncate %s: %w", l.Path, err)
	}
	return true, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, dst)
}

// Tail returns the last n lines across the current file and its rotated
// generations, oldest first.
func (l Log) Tail(n int) ([]string, error) {
	if n <= 0 {
		return nil, nil
	}
	var lines []string
	for i := 0; i <= l.keep() && len(lines) < n; i++ {
		b, err := os.ReadFile(l.gen(i))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		got := splitLines(b)
		need := n - len(lines)
		if len(got) > need {
			got = got[len(got)-need:]
		}
		lines = append(got, lines...)
	}
	return lines, nil
}

func splitLines(b []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

// Follow writes what is appended to the log to w until ctx ends, starting
// at the current end (or at the start when fromStart). It survives
// rotation: when the file shrinks it continues from the new start.
func (l Log) Follow(ctx context.Context, w io.Writer, fromStart bool, poll time.Duration) error {
	if poll <= 0 {
		poll = 200 * time.Millisecond
	}
	var off int64
	if !fromStart {
		if fi, err := os.Stat(l.Path); err == nil {
			off = fi.Size()
		}
	}
	buf := make([]byte, 64<<10)
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		f, err := os.Open(l.Path)
		if err == nil {
			fi, serr := f.Stat()
			if serr == nil && fi.Size() < off {
				off = 0 // rotated (truncated) under us
			}
			for {
				n, rerr := f.ReadAt(buf, off)
				if n > 0 {
					if _, werr := w.Write(buf[:n]); werr != nil {
						f.Close()
						return werr
					}
					off += int64(n)
				}
				if rerr != nil {
					break
				}
			}
			f.Close()
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Remove deletes the log and its generations.
func (l Log) Remove() error {
	var errs []error
	for i := 0; i <= l.keep()+1; i++ {
		if err := os.Remove(l.gen(i)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
