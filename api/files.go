package api

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"strconv"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/agent"
)

// MaxFileBytes bounds a file sent into a VM through the API.
const MaxFileBytes = 1 << 30

// fileErr maps the agent's file errors to kinds: a bad path is bad
// input, a missing file is "not found" (reported as invalid argument:
// hearth's NotFound kinds name VMs and snapshots).
func fileErr(op, id string, err error) error {
	switch {
	case errors.Is(err, agent.ErrInvalid), errors.Is(err, fs.ErrNotExist), errors.Is(err, agent.ErrTooLarge), errors.Is(err, fs.ErrPermission):
		return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: op, VM: id, Err: err}
	}
	return &hearth.Error{Kind: hearth.KindGuestMetadata, Op: op, VM: id, Err: err}
}

// checkGuestPath refuses a guest path the agent would refuse (relative,
// "..", NUL, too long) before the VM's agent is reached. The path is
// only ever interpreted by the agent inside the guest: the daemon never
// resolves it on the host.
func checkGuestPath(op, id, path string) error {
	if _, _, err := agent.CleanPath(path); err != nil {
		return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: op, VM: id, Err: err}
	}
	return nil
}

// putFile writes the request body to ?path= in the VM (?perm=0644 octal,
// ?parents=1 creates missing directories) and answers the file's info,
// whose SHA-256 the agent computed.
func (s *Server) putFile(w http.ResponseWriter, r *http.Request) {
	id, path := r.PathValue("id"), r.URL.Query().Get("path")
	if err := checkGuestPath("put-file", id, path); err != nil {
		writeError(w, err, 0)
		return
	}
	opts := &agent.WriteOptions{Perm: 0o644, Parents: r.URL.Query().Get("parents") == "1", Size: r.ContentLength}
	if p := r.URL.Query().Get("perm"); p != "" {
		v, err := strconv.ParseUint(p, 8, 32)
		if err != nil || v > 0o7777 {
			writeError(w, &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "put-file", VM: id, Err: fmt.Errorf("perm %q: want octal like 0644", clip(p))}, 0)
			return
		}
		opts.Perm = fs.FileMode(v)
	}
	if r.ContentLength > MaxFileBytes {
		writeError(w, &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "put-file", VM: id, Err: fmt.Errorf("file exceeds %d bytes", MaxFileBytes)}, 0)
		return
	}
	c, err := s.rt.Agent(r.Context(), id)
	if err != nil {
		writeError(w, err, 0)
		return
	}
	fi, err := c.WriteFile(r.Context(), path, http.MaxBytesReader(w, r.Body, MaxFileBytes), opts)
	if err != nil {
		writeError(w, fileErr("put-file", id, err), 0)
		return
	}
	writeJSON(w, http.StatusOK, fi)
}

// getFile streams the file at ?path= out of the VM.
func (s *Server) getFile(w http.ResponseWriter, r *http.Request) {
	id, path := r.PathValue("id"), r.URL.Query().Get("path")
	if err := checkGuestPath("get-file", id, path); err != nil {
		writeError(w, err, 0)
		return
	}
	c, err := s.rt.Agent(r.Context(), id)
	if err != nil {
		writeError(w, err, 0)
		return
	}
	rc, fi, err := c.OpenFile(r.Context(), path)
	if err != nil {
		writeError(w, fileErr("get-file", id, err), 0)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	if fi != nil {
		w.Header().Set("Content-Length", strconv.FormatInt(fi.Size, 10))
		w.Header().Set("X-Hearth-Perm", fmt.Sprintf("%#o", fi.Perm))
	}
	io.Copy(w, rc)
}

// verifySnapshot re-hashes a snapshot's files.
func (s *Server) verifySnapshot(w http.ResponseWriter, r *http.Request) {
	if err := s.rt.VerifySnapshot(r.Context(), r.PathValue("name")); err != nil {
		writeError(w, err, 0)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// GCResult lists the snapshots garbage collection removed.
type GCResult struct {
	Removed []string `json:"removed"`
}

func (s *Server) gcSnapshots(w http.ResponseWriter, r *http.Request) {
	var p hearth.GCPolicy
	if err := decode(w, r, &p); err != nil {
		writeError(w, err, 0)
		return
	}
	removed, err := s.rt.GCSnapshots(r.Context(), p)
	if err != nil {
		writeError(w, err, 0)
		return
	}
	if removed == nil {
		removed = []string{}
	}
	writeJSON(w, http.StatusOK, GCResult{Removed: removed})
}
