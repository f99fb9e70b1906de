package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/rootfs"
)

// Images is the image catalog as the server drives it: the daemon's
// catalog under its state dir. Errors are *hearth.Error (image_not_found,
// image_already_exists, invalid_argument, integrity, rootfs).
type Images interface {
	List(ctx context.Context) ([]rootfs.Image, error)
	Get(ctx context.Context, name string) (rootfs.Image, error)
	Remove(ctx context.Context, name string) error
	// Verify re-hashes the image's files; cached trusts files whose
	// identity is unchanged since their last verification.
	Verify(ctx context.Context, name string, cached bool) ([]rootfs.FileCheck, error)
	// Build runs a recipe (only "default"), reporting each step.
	Build(ctx context.Context, req BuildImageRequest, progress func(Progress)) (BuildImageResult, error)
	// Import makes an image from a directory, an OCI/docker tarball or an
	// ext4 file, reporting each step.
	Import(ctx context.Context, req ImportImageRequest, progress func(Progress)) (rootfs.Image, error)
}

// Image request and response bodies.
type (
	// ImageList is the body of GET /v1/images.
	ImageList struct {
		Images []rootfs.Image `json:"images"`
	}
	// BuildImageRequest is the body of POST /v1/images/build. Paths are
	// host paths, absolute: the daemon's working directory is not the
	// caller's.
	BuildImageRequest struct {
		Recipe         string   `json:"recipe"`
		Name           string   `json:"name,omitempty"`
		KernelPackage  string   `json:"kernel_package,omitempty"`
		BusyboxPackage string   `json:"busybox_package,omitempty"`
		KernelDeb      string   `json:"kernel_deb,omitempty"`
		BusyboxDeb     string   `json:"busybox_deb,omitempty"`
		Agent          string   `json:"agent,omitempty"`
		SizeBytes      int64    `json:"size_bytes,omitempty"`
		Modules        []string `json:"modules,omitempty"`
		Force          bool     `json:"force,omitempty"`
	}
	// BuildImageResult describes a built (or reused) image.
	BuildImageResult struct {
		Image rootfs.Image `json:"image"`
		// Reused is true when an up-to-date image was verified and kept.
		Reused        bool     `json:"reused"`
		KernelPackage string   `json:"kernel_package"`
		KernelVersion string   `json:"kernel_version"`
		Release       string   `json:"release"`
		Modules       []string `json:"modules"`
		TookMs        int64    `json:"took_ms"`
	}
	// ImportImageRequest is the body of POST /v1/images.
	ImportImageRequest struct {
		Name string `json:"name"`
		// Source is a directory, an OCI layout or docker-save tarball, or
		// an ext4 image.
		Source string `json:"source"`
		Kernel string `json:"kernel,omitempty"`
		Initrd string `json:"initrd,omitempty"`
		// KernelFrom takes kernel and initrd from this image (default
		// "default") when Kernel is not given.
		KernelFrom string `json:"kernel_from,omitempty"`
		Agent      string `json:"agent,omitempty"`
		NoAgent    bool   `json:"no_agent,omitempty"`
		KeepInit   bool   `json:"keep_init,omitempty"`
		Tag        string `json:"tag,omitempty"`
		SizeBytes  int64  `json:"size_bytes,omitempty"`
		Replace    bool   `json:"replace,omitempty"`
	}
	// VerifyImageResult is the body of POST /v1/images/{name}/verify.
	VerifyImageResult struct {
		Image string             `json:"image"`
		Files []rootfs.FileCheck `json:"files"`
	}
	// Progress is one step of a long operation. Step and Total count the
	// steps when known (image build), else they are 0.
	Progress struct {
		Step    int    `json:"step,omitempty"`
		Total   int    `json:"total,omitempty"`
		Message string `json:"message"`
	}
	// StreamLine is one line of a progress stream (NDJSON): progress
	// lines, then exactly one result or error line.
	StreamLine struct {
		Progress *Progress       `json:"progress,omitempty"`
		Result   json.RawMessage `json:"result,omitempty"`
		Error    *ErrorBody      `json:"error,omitempty"`
	}
)

func badImage(op string, f string, a ...any) error {
	return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: op, Err: fmt.Errorf(f, a...)}
}

// absPaths checks that every non-empty path is absolute.
func absPaths(op string, paths map[string]string) error {
	for field, p := range paths {
		if p != "" && !filepath.IsAbs(p) {
			return badImage(op, "%s %q must be an absolute host path", field, clip(p))
		}
	}
	return nil
}

func (r BuildImageRequest) validate() error {
	const op = "image build"
	if r.Recipe != "default" {
		return badImage(op, "unknown recipe %q (only \"default\")", clip(r.Recipe))
	}
	if r.Name != "" {
		if err := hearth.ValidateImageName(r.Name); err != nil {
			return badImage(op, "%w", err)
		}
	}
	if r.SizeBytes < 0 {
		return badImage(op, "size_bytes %d is negative", r.SizeBytes)
	}
	return absPaths(op, map[string]string{"kernel_deb": r.KernelDeb, "busybox_deb": r.BusyboxDeb, "agent": r.Agent})
}

func (r ImportImageRequest) validate() error {
	const op = "image import"
	if err := hearth.ValidateImageName(r.Name); err != nil {
		return badImage(op, "%w", err)
	}
	if r.Source == "" {
		return badImage(op, "source is required")
	}
	if r.KernelFrom != "" {
		if err := hearth.ValidateImageName(r.KernelFrom); err != nil {
			return badImage(op, "kernel_from: %w", err)
		}
	}
	if r.SizeBytes < 0 {
		return badImage(op, "size_bytes %d is negative", r.SizeBytes)
	}
	return absPaths(op, map[string]string{"source": r.Source, "kernel": r.Kernel, "initrd": r.Initrd, "agent": r.Agent})
}

func (s *Server) images(w http.ResponseWriter) (Images, bool) {
	if s.imgs == nil {
		writeError(w, &hearth.Error{Kind: hearth.KindUnsupported, Op: "images", Err: errors.New("this daemon serves no image catalog")}, 0)
		return nil, false
	}
	return s.imgs, true
}

// imageName validates the {name} path value.
func imageName(r *http.Request, op string) (string, error) {
	n := r.PathValue("name")
	if err := hearth.ValidateImageName(n); err != nil {
		return "", badImage(op, "%w", err)
	}
	return n, nil
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) {
	imgs, ok := s.images(w)
	if !ok {
		return
	}
	ims, err := imgs.List(r.Context())
	if err != nil {
		writeError(w, err, 0)
		return
	}
	if ims == nil {
		ims = []rootfs.Image{}
	}
	writeJSON(w, http.StatusOK, ImageList{Images: ims})
}

func (s *Server) getImage(w http.ResponseWriter, r *http.Request) {
	imgs, ok := s.images(w)
	if !ok {
		return
	}
	name, err := imageName(r, "image get")
	if err != nil {
		writeError(w, err, 0)
		return
	}
	im, err := imgs.Get(r.Context(), name)
	if err != nil {
		writeError(w, err, 0)
		return
	}
	writeJSON(w, http.StatusOK, im)
}

func (s *Server) deleteImage(w http.ResponseWriter, r *http.Request) {
	imgs, ok := s.images(w)
	if !ok {
		return
	}
	name, err := imageName(r, "image rm")
	if err != nil {
		writeError(w, err, 0)
		return
	}
	if err := imgs.Remove(r.Context(), name); err != nil {
		writeError(w, err, 0)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// verifyImage re-hashes an image (?cached=true trusts unchanged files).
func (s *Server) verifyImage(w http.ResponseWriter, r *http.Request) {
	imgs, ok := s.images(w)
	if !ok {
		return
	}
	name, err := imageName(r, "image verify")
	if err != nil {
		writeError(w, err, 0)
		return
	}
	cached := false
	switch v := r.URL.Query().Get("cached"); v {
	case "", "false":
	case "true":
		cached = true
	default:
		writeError(w, badImage("image verify", "cached %q: want true or false", clip(v)), 0)
		return
	}
	checks, err := imgs.Verify(r.Context(), name, cached)
	if err != nil {
		writeError(w, err, 0)
		return
	}
	if checks == nil {
		checks = []rootfs.FileCheck{}
	}
	writeJSON(w, http.StatusOK, VerifyImageResult{Image: name, Files: checks})
}

func (s *Server) buildImage(w http.ResponseWriter, r *http.Request) {
	longImageOp(s, w, r, Images.Build)
}

func (s *Server) importImage(w http.ResponseWriter, r *http.Request) {
	longImageOp(s, w, r, Images.Import)
}

// longImageOp decodes and validates a build or import request, then runs
// it with its progress streamed (see progressStream); 201 on success.
func longImageOp[Req interface{ validate() error }, Res any](s *Server, w http.ResponseWriter, r *http.Request,
	op func(Images, context.Context, Req, func(Progress)) (Res, error)) {
	imgs, ok := s.images(w)
	if !ok {
		return
	}
	var req Req
	if err := decode(w, r, &req); err != nil {
		writeError(w, err, 0)
		return
	}
	if err := req.validate(); err != nil {
		writeError(w, err, 0)
		return
	}
	st := newProgressStream(w)
	res, err := op(imgs, r.Context(), req, st.progress)
	st.finish(http.StatusCreated, res, err)
}

// progressStream answers a long operation. The stream starts with the
// first progress report: until then a failure is an ordinary error
// response with its status (so bad input found by the catalog still gets
// 400, 404 or 409), and an operation that reports nothing gets an
// ordinary JSON response. Once started, the status is 200 and the body
// is NDJSON StreamLines ending with one result or error line.
type progressStream struct {
	w       http.ResponseWriter
	mu      sync.Mutex
	started bool
}

func newProgressStream(w http.ResponseWriter) *progressStream { return &progressStream{w: w} }

func (p *progressStream) line(l StreamLine) {
	b, _ := json.Marshal(l)
	p.w.Write(append(b, '\n'))
	if f, ok := p.w.(http.Flusher); ok {
		f.Flush()
	}
}

func (p *progressStream) progress(pr Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.started {
		p.w.Header().Set("Content-Type", "application/x-ndjson")
		p.w.WriteHeader(http.StatusOK)
		p.started = true
	}
	p.line(StreamLine{Progress: &pr})
}

func (p *progressStream) finish(status int, result any, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.started {
		if err != nil {
			writeError(p.w, err, 0)
		} else {
			writeJSON(p.w, status, result)
		}
		return
	}
	if err != nil {
		b := bodyOf(err)
		p.line(StreamLine{Error: &b})
		return
	}
	raw, _ := json.Marshal(result)
	p.line(StreamLine{Result: raw})
}
