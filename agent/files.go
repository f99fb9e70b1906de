package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"strconv"
)

// WriteOptions tune WriteFile.
type WriteOptions struct {
	// Perm is the file's permission bits (0644 if zero).
	Perm fs.FileMode
	// Parents creates missing parent directories (0755).
	Parents bool
	// UID and GID, when set, chown the file.
	UID, GID *uint32
	// Size, if positive, is the exact length of r: it is sent as the
	// Content-Length, so the agent refuses an oversized file before any
	// byte is sent. Zero means unknown (the body is chunked).
	Size int64
}

// WriteFile streams r into the guest file path. The agent writes a
// temporary file next to it, fsyncs it and renames it into place, so the
// file appears whole or not at all. Both ends hash the content; a
// difference is ErrChecksum. Not retried on a lost connection.
func (c *Client) WriteFile(ctx context.Context, path string, r io.Reader, opts *WriteOptions) (*FileInfo, error) {
	if _, _, err := CleanPath(path); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if opts == nil {
		opts = &WriteOptions{}
	}
	perm := opts.Perm.Perm() | opts.Perm&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
	if perm == 0 {
		perm = 0o644
	}
	q := query("path", path, "perm", strconv.FormatUint(uint64(unixPerm(perm)), 8))
	if opts.Parents {
		q.Set("parents", "1")
	}
	if opts.UID != nil {
		q.Set("uid", strconv.FormatUint(uint64(*opts.UID), 10))
	}
	if opts.GID != nil {
		q.Set("gid", strconv.FormatUint(uint64(*opts.GID), 10))
	}
	h := sha256.New()
	cl := &call{method: "PUT", path: "/v1/files", query: q, stream: io.TeeReader(r, h), length: -1, ctype: "application/octet-stream"}
	if opts.Size > 0 {
		cl.length = opts.Size
	}
	resp, err := c.roundTrip(ctx, cl)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var fi FileInfo
	if err := decodeJSON(resp, &fi); err != nil {
		return nil, fmt.Errorf("agent: %s: %w", cl.op(), err)
	}
	if sum := hex.EncodeToString(h.Sum(nil)); fi.SHA256 != sum {
		return &fi, fmt.Errorf("%w: %s: sent %s, agent wrote %s", ErrChecksum, path, sum, fi.SHA256)
	}
	return &fi, nil
}

// unixPerm converts Go's mode bits to chmod's.
func unixPerm(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}

// OpenFile streams a guest regular file. The reader returns ErrChecksum
// instead of io.EOF if the content differs from the agent's digest, so
// read it to EOF before trusting it. Size and Perm come from the agent.
func (c *Client) OpenFile(ctx context.Context, path string) (io.ReadCloser, *FileInfo, error) {
	abs, _, err := CleanPath(path)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	resp, err := c.roundTrip(ctx, &call{method: "GET", path: "/v1/files", query: query("path", abs), idempotent: true})
	if err != nil {
		return nil, nil, err
	}
	fi := &FileInfo{Path: abs, Type: TypeFile, Size: -1}
	if v, err := strconv.ParseInt(resp.Header.Get(HeaderSize), 10, 64); err == nil {
		fi.Size = v
	}
	if v, err := strconv.ParseUint(resp.Header.Get(HeaderPerm), 8, 32); err == nil {
		fi.Perm = uint32(v)
	}
	return &verifyingReader{resp: resp, h: sha256.New(), path: abs}, fi, nil
}

// ReadFile copies a guest file into w and returns its description.
func (c *Client) ReadFile(ctx context.Context, path string, w io.Writer) (*FileInfo, error) {
	rc, fi, err := c.OpenFile(ctx, path)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	n, err := io.Copy(w, rc)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("agent: read %s: %w", path, ctx.Err())
		}
		return nil, fmt.Errorf("agent: read %s: %w", path, err)
	}
	fi.Size = n
	fi.SHA256 = hex.EncodeToString(rc.(*verifyingReader).h.Sum(nil))
	return fi, nil
}

// verifyingReader hashes what it reads and checks the agent's digest,
// sent as a trailer, at the end.
type verifyingReader struct {
	resp *http.Response
	h    hash.Hash
	path string
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	n, err := v.resp.Body.Read(p)
	v.h.Write(p[:n])
	if err == io.EOF {
		want := v.resp.Trailer.Get(TrailerSHA)
		if want == "" {
			return n, fmt.Errorf("%w: %s: the agent sent no digest (transfer cut short?)", ErrConnLost, v.path)
		}
		if got := hex.EncodeToString(v.h.Sum(nil)); got != want {
			return n, fmt.Errorf("%w: %s: received %s, agent read %s", ErrChecksum, v.path, got, want)
		}
		return n, io.EOF
	}
	if err != nil {
		return n, fmt.Errorf("%w: %w", ErrConnLost, err)
	}
	return n, nil
}

func (v *verifyingReader) Close() error { return v.resp.Body.Close() }

// Stat describes path without following a final symlink.
func (c *Client) Stat(ctx context.Context, path string) (*FileInfo, error) {
	return c.stat(ctx, path, false)
}

// StatFollow describes path, following symlinks.
func (c *Client) StatFollow(ctx context.Context, path string) (*FileInfo, error) {
	return c.stat(ctx, path, true)
}

func (c *Client) stat(ctx context.Context, path string, follow bool) (*FileInfo, error) {
	if _, _, err := CleanPath(path); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	q := query("path", path)
	if follow {
		q.Set("follow", "1")
	}
	var fi FileInfo
	if err := c.jsonCall(ctx, "GET", "/v1/files/stat", q, nil, &fi, true); err != nil {
		return nil, err
	}
	return &fi, nil
}

// ReadDir lists a guest directory, sorted by name.
func (c *Client) ReadDir(ctx context.Context, path string) ([]FileInfo, error) {
	if _, _, err := CleanPath(path); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	var dl DirList
	if err := c.jsonCall(ctx, "GET", "/v1/files/list", query("path", path), nil, &dl, true); err != nil {
		return nil, err
	}
	return dl.Entries, nil
}

// Mkdir creates a directory (and its parents with parents set; then an
// existing directory is not an error).
func (c *Client) Mkdir(ctx context.Context, path string, perm fs.FileMode, parents bool) (*FileInfo, error) {
	if _, _, err := CleanPath(path); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	var fi FileInfo
	req := MkdirRequest{Path: path, Perm: unixPerm(perm), Parents: parents}
	if err := c.jsonCall(ctx, "POST", "/v1/files/mkdir", nil, req, &fi, parents); err != nil {
		return nil, err
	}
	return &fi, nil
}

// Remove deletes a file or an empty directory, or a whole tree with
// recursive.
func (c *Client) Remove(ctx context.Context, path string, recursive bool) error {
	if _, _, err := CleanPath(path); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	q := query("path", path)
	if recursive {
		q.Set("recursive", "1")
	}
	return c.jsonCall(ctx, "DELETE", "/v1/files", q, nil, nil, false)
}
