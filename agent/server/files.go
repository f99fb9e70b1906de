package server

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"sort"
	"strconv"
	"syscall"

	"github.com/hearth-vm/hearth/agent"
)

// fsys is the file namespace requests act on. Names are relative to its
// root, already validated by agent.CleanPath ("." is the root).
type fsys interface {
	OpenFile(name string, flag int, perm fs.FileMode) (*os.File, error)
	Stat(name string) (fs.FileInfo, error)
	Lstat(name string) (fs.FileInfo, error)
	Readlink(name string) (string, error)
	Mkdir(name string, perm fs.FileMode) error
	MkdirAll(name string, perm fs.FileMode) error
	Remove(name string) error
	RemoveAll(name string) error
	Rename(oldname, newname string) error
	Chmod(name string, mode fs.FileMode) error
	Lchown(name string, uid, gid int) error
}

// hostFS is the whole guest filesystem. Absolute symlinks resolve as
// usual (os.Root would refuse them, and /etc/resolv.conf is often one).
type hostFS struct{}

func abs(name string) string { return path.Join("/", name) }

func (hostFS) OpenFile(n string, flag int, perm fs.FileMode) (*os.File, error) {
	return os.OpenFile(abs(n), flag, perm)
}
func (hostFS) Stat(n string) (fs.FileInfo, error)        { return os.Stat(abs(n)) }
func (hostFS) Lstat(n string) (fs.FileInfo, error)       { return os.Lstat(abs(n)) }
func (hostFS) Readlink(n string) (string, error)         { return os.Readlink(abs(n)) }
func (hostFS) Mkdir(n string, perm fs.FileMode) error    { return os.Mkdir(abs(n), perm) }
func (hostFS) MkdirAll(n string, perm fs.FileMode) error { return os.MkdirAll(abs(n), perm) }
func (hostFS) Remove(n string) error                     { return os.Remove(abs(n)) }
func (hostFS) RemoveAll(n string) error                  { return os.RemoveAll(abs(n)) }
func (hostFS) Rename(o, n string) error                  { return os.Rename(abs(o), abs(n)) }
func (hostFS) Chmod(n string, mode fs.FileMode) error    { return os.Chmod(abs(n), mode) }
func (hostFS) Lchown(n string, uid, gid int) error       { return os.Lchown(abs(n), uid, gid) }

// rootFS confines every operation to a directory; os.Root refuses any
// path or symlink that leaves it.
type rootFS struct{ r *os.Root }

func (f rootFS) OpenFile(n string, flag int, perm fs.FileMode) (*os.File, error) {
	return f.r.OpenFile(n, flag, perm)
}
func (f rootFS) Stat(n string) (fs.FileInfo, error)        { return f.r.Stat(n) }
func (f rootFS) Lstat(n string) (fs.FileInfo, error)       { return f.r.Lstat(n) }
func (f rootFS) Readlink(n string) (string, error)         { return f.r.Readlink(n) }
func (f rootFS) Mkdir(n string, perm fs.FileMode) error    { return f.r.Mkdir(n, perm) }
func (f rootFS) MkdirAll(n string, perm fs.FileMode) error { return f.r.MkdirAll(n, perm) }
func (f rootFS) Remove(n string) error                     { return f.r.Remove(n) }
func (f rootFS) RemoveAll(n string) error                  { return f.r.RemoveAll(n) }
func (f rootFS) Rename(o, n string) error                  { return f.r.Rename(o, n) }
func (f rootFS) Chmod(n string, mode fs.FileMode) error    { return f.r.Chmod(n, mode) }
func (f rootFS) Lchown(n string, uid, gid int) error       { return f.r.Lchown(n, uid, gid) }

// goMode converts chmod bits to Go's FileMode.
func goMode(p uint32) fs.FileMode {
	m := fs.FileMode(p & 0o777)
	if p&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if p&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if p&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

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

func fileInfo(absPath string, fi fs.FileInfo) agent.FileInfo {
	out := agent.FileInfo{
		Path:    absPath,
		Name:    fi.Name(),
		Size:    fi.Size(),
		Perm:    unixPerm(fi.Mode()),
		ModTime: fi.ModTime().UTC(),
	}
	switch {
	case fi.Mode().IsRegular():
		out.Type = agent.TypeFile
	case fi.IsDir():
		out.Type = agent.TypeDir
	case fi.Mode()&fs.ModeSymlink != 0:
		out.Type = agent.TypeSymlink
	default:
		out.Type = agent.TypeOther
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		out.UID, out.GID = st.Uid, st.Gid
	}
	if absPath == "/" {
		out.Name = "/"
	}
	return out
}

// pathParam validates the "path" query parameter.
func pathParam(w http.ResponseWriter, r *http.Request) (absPath, rel string, ok bool) {
	absPath, rel, err := agent.CleanPath(r.URL.Query().Get("path"))
	if err != nil {
		badRequest(w, err)
		return "", "", false
	}
	return absPath, rel, true
}

func (s *Server) handlePutFile(w http.ResponseWriter, r *http.Request) {
	absPath, rel, ok := pathParam(w, r)
	if !ok {
		return
	}
	if rel == "." {
		badRequest(w, errors.New("cannot write the root directory"))
		return
	}
	q := r.URL.Query()
	perm := uint32(0o644)
	if v := q.Get("perm"); v != "" {
		p, err := strconv.ParseUint(v, 8, 32)
		if err != nil || p > 0o7777 {
			badRequest(w, fmt.Errorf("perm %q is not an octal mode up to 7777", v))
			return
		}
		perm = uint32(p)
	}
	uid, gid := -1, -1
	for _, id := range []struct {
		key string
		dst *int
	}{{"uid", &uid}, {"gid", &gid}} {
		if v := q.Get(id.key); v != "" {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				badRequest(w, fmt.Errorf("%s %q is not a number", id.key, v))
				return
			}
			*id.dst = int(n)
		}
	}
	if r.ContentLength > s.cfg.MaxFileSize {
		writeError(w, http.StatusRequestEntityTooLarge, agent.CodeTooLarge, fmt.Sprintf("file of %d bytes exceeds the limit of %d", r.ContentLength, s.cfg.MaxFileSize))
		return
	}
	dir, name := path.Split(rel)
	dir = path.Clean(dir) // "" becomes "."
	if q.Get("parents") == "1" {
		if err := s.files.MkdirAll(dir, 0o755); err != nil {
			writeOSError(w, err)
			return
		}
	}
	if fi, err := s.files.Stat(rel); err == nil && fi.IsDir() {
		writeOSError(w, fmt.Errorf("%s: %w", absPath, syscall.EISDIR))
		return
	}
	sum, err := s.writeFile(dir, name, r.Body, goMode(perm), uid, gid)
	if err != nil {
		writeOSError(w, err)
		return
	}
	fi, err := s.files.Lstat(rel)
	if err != nil {
		writeOSError(w, err)
		return
	}
	out := fileInfo(absPath, fi)
	out.SHA256 = sum
	s.log.Debug("agent: file written", "path", absPath, "size", out.Size)
	writeJSON(w, http.StatusOK, out)
}

// writeFile streams body to dir/name through a temporary file in dir,
// hashing it, then renames it into place (see writeFileAtomic; this one
// goes through fsys so a files root confines it).
func (s *Server) writeFile(dir, name string, body io.Reader, mode fs.FileMode, uid, gid int) (string, error) {
	var (
		f   *os.File
		tmp string
		err error
	)
	for range 10 {
		tmp = path.Join(dir, "."+name+".hearth-"+newID())
		f, err = s.files.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if !errors.Is(err, fs.ErrExist) {
			break
		}
	}
	if err != nil {
		return "", err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			_ = s.files.Remove(tmp)
		}
	}()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	n, err := io.CopyBuffer(io.MultiWriter(f, h), io.LimitReader(body, s.cfg.MaxFileSize+1), buf)
	if err != nil {
		return "", fmt.Errorf("receive: %w", err)
	}
	if n > s.cfg.MaxFileSize {
		return "", fmt.Errorf("%w: file exceeds the limit of %d bytes", errTooLarge, s.cfg.MaxFileSize)
	}
	if err := f.Chmod(mode); err != nil {
		return "", err
	}
	if uid >= 0 || gid >= 0 {
		if err := f.Chown(uid, gid); err != nil {
			return "", err
		}
		// chown clears setuid/setgid; put the asked-for mode back.
		if err := f.Chmod(mode); err != nil {
			return "", err
		}
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if err := s.files.Rename(tmp, path.Join(dir, name)); err != nil {
		return "", err
	}
	ok = true
	if d, err := s.files.OpenFile(dir, os.O_RDONLY, 0); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (s *Server) handleGetFile(w http.ResponseWriter, r *http.Request) {
	absPath, rel, ok := pathParam(w, r)
	if !ok {
		return
	}
	f, err := s.files.OpenFile(rel, os.O_RDONLY, 0)
	if err != nil {
		writeOSError(w, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		writeOSError(w, err)
		return
	}
	if fi.IsDir() {
		writeOSError(w, fmt.Errorf("%s: %w", absPath, syscall.EISDIR))
		return
	}
	if !fi.Mode().IsRegular() {
		// A device or FIFO could stream forever or block.
		badRequest(w, fmt.Errorf("%s is not a regular file", absPath))
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set(agent.HeaderSize, strconv.FormatInt(fi.Size(), 10))
	h.Set(agent.HeaderPerm, strconv.FormatUint(uint64(unixPerm(fi.Mode())), 8))
	h.Set("Trailer", agent.TrailerSHA)
	w.WriteHeader(http.StatusOK)
	sum := sha256.New()
	buf := make([]byte, 1<<20)
	if _, err := io.CopyBuffer(io.MultiWriter(w, sum), f, buf); err != nil {
		// The client sees a missing trailer and reports the cut.
		s.log.Debug("agent: file read interrupted", "path", absPath, "err", err)
		return
	}
	h.Set(agent.TrailerSHA, hex.EncodeToString(sum.Sum(nil)))
}

func (s *Server) handleStat(w http.ResponseWriter, r *http.Request) {
	absPath, rel, ok := pathParam(w, r)
	if !ok {
		return
	}
	stat := s.files.Lstat
	if r.URL.Query().Get("follow") == "1" {
		stat = s.files.Stat
	}
	fi, err := stat(rel)
	if err != nil {
		writeOSError(w, err)
		return
	}
	out := fileInfo(absPath, fi)
	if out.Type == agent.TypeSymlink {
		out.Link, _ = s.files.Readlink(rel)
	}
	writeJSON(w, http.StatusOK, out)
}

// maxDirEntries bounds one listing.
const maxDirEntries = 100000

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	absPath, rel, ok := pathParam(w, r)
	if !ok {
		return
	}
	d, err := s.files.OpenFile(rel, os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		writeOSError(w, err)
		return
	}
	defer d.Close()
	ents, err := d.ReadDir(maxDirEntries)
	if err != nil && !errors.Is(err, io.EOF) {
		writeOSError(w, err)
		return
	}
	out := agent.DirList{Entries: make([]agent.FileInfo, 0, len(ents))}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		child := path.Join(absPath, e.Name())
		info := fileInfo(child, fi)
		if info.Type == agent.TypeSymlink {
			info.Link, _ = s.files.Readlink(path.Join(rel, e.Name()))
		}
		out.Entries = append(out.Entries, info)
	}
	sort.Slice(out.Entries, func(i, j int) bool { return out.Entries[i].Name < out.Entries[j].Name })
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleMkdir(w http.ResponseWriter, r *http.Request) {
	var req agent.MkdirRequest
	if !decodeBody(w, r, 16<<10, &req) {
		return
	}
	absPath, rel, err := agent.CleanPath(req.Path)
	if err != nil {
		badRequest(w, err)
		return
	}
	if req.Perm > 0o7777 {
		badRequest(w, fmt.Errorf("perm %o is not a mode up to 7777", req.Perm))
		return
	}
	perm := req.Perm
	if perm == 0 {
		perm = 0o755
	}
	if req.Parents {
		_, statErr := s.files.Lstat(rel)
		err = s.files.MkdirAll(rel, goMode(perm))
		if err == nil && statErr != nil {
			// New: give it the exact mode, past the umask. An
			// existing directory keeps its own.
			err = s.files.Chmod(rel, goMode(perm))
		}
	} else {
		err = s.files.Mkdir(rel, goMode(perm))
		if err == nil {
			// The umask may have narrowed the mode.
			err = s.files.Chmod(rel, goMode(perm))
		}
	}
	if err != nil {
		writeOSError(w, err)
		return
	}
	fi, err := s.files.Lstat(rel)
	if err != nil {
		writeOSError(w, err)
		return
	}
	if !fi.IsDir() {
		writeOSError(w, fmt.Errorf("%s: %w", absPath, syscall.ENOTDIR))
		return
	}
	writeJSON(w, http.StatusOK, fileInfo(absPath, fi))
}

func (s *Server) handleRemove(w http.ResponseWriter, r *http.Request) {
	absPath, rel, ok := pathParam(w, r)
	if !ok {
		return
	}
	if rel == "." {
		badRequest(w, errors.New("refusing to remove the root directory"))
		return
	}
	var err error
	if r.URL.Query().Get("recursive") == "1" {
		// RemoveAll succeeds on a missing path; report it like Remove.
		if _, serr := s.files.Lstat(rel); serr != nil {
			writeOSError(w, serr)
			return
		}
		err = s.files.RemoveAll(rel)
	} else {
		err = s.files.Remove(rel)
	}
	if err != nil {
		writeOSError(w, err)
		return
	}
	s.log.Debug("agent: removed", "path", absPath)
	w.WriteHeader(http.StatusNoContent)
}
