package api

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/metrics"
)

// MaxBodyBytes bounds every request body.
const MaxBodyBytes = 1 << 20

//go:embed openapi.json
var openAPIDoc []byte

// OpenAPI returns the checked-in OpenAPI 3 document.
func OpenAPI() []byte { return bytes.Clone(openAPIDoc) }

// Runtime is what the server needs from hearth.Runtime.
type Runtime interface {
	Create(ctx context.Context, id string, spec hearth.Spec) (hearth.View, error)
	Get(ctx context.Context, id string) (hearth.View, error)
	List(ctx context.Context) ([]hearth.View, error)
	Start(ctx context.Context, id string) (hearth.View, error)
	Pause(ctx context.Context, id string) (hearth.View, error)
	Resume(ctx context.Context, id string) (hearth.View, error)
	Stop(ctx context.Context, id string) (hearth.View, error)
	Destroy(ctx context.Context, id string) error
	Rename(ctx context.Context, id, newID string) (hearth.View, error)
	Snapshot(ctx context.Context, id, name string) (hearth.SnapshotView, error)
	Restore(ctx context.Context, rs hearth.RestoreSpec) (hearth.View, error)
	Snapshots(ctx context.Context) ([]hearth.SnapshotView, error)
	GetSnapshot(ctx context.Context, name string) (hearth.SnapshotView, error)
	DeleteSnapshot(ctx context.Context, name string) error
	VerifySnapshot(ctx context.Context, name string) error
	GCSnapshots(ctx context.Context, p hearth.GCPolicy) ([]string, error)
	Stats(ctx context.Context, id string) (metrics.Stats, error)
	Agent(ctx context.Context, id string) (*agent.Client, error)
	Exec(ctx context.Context, id string, cmd *agent.Cmd) (*agent.ExitStatus, error)
	SetEgress(ctx context.Context, id string, allow, dns []string) error
	SetRateLimits(ctx context.Context, id string, u hearth.RateLimits) (hearth.View, error)
	ConsoleTail(ctx context.Context, id string, n int) ([]string, error)
	ConsoleFollow(ctx context.Context, id string, w io.Writer) error
	Reconciled() hearth.ReconcileReport
	Backends() []string
	DefaultBackend() string
	StateDir() string
}

// System describes the daemon.
type System struct {
	Version        string                 `json:"version"`
	StateDir       string                 `json:"state_dir"`
	Backends       []string               `json:"backends"`
	DefaultBackend string                 `json:"default_backend"`
	StartedAt      time.Time              `json:"started_at"`
	Reconcile      hearth.ReconcileReport `json:"reconcile"`
}

// Request bodies.
type (
	// CreateRequest creates a VM; Start boots it right away.
	CreateRequest struct {
		ID    string      `json:"id"`
		Spec  hearth.Spec `json:"spec"`
		Start bool        `json:"start,omitempty"`
	}
	// SnapshotRequest names a new snapshot.
	SnapshotRequest struct {
		Name string `json:"name"`
	}
	// RenameRequest gives a VM a new id.
	RenameRequest struct {
		NewID string `json:"new_id"`
	}
	// RestoreRequest restores the snapshot named in the path.
	RestoreRequest struct {
		VM             string            `json:"vm"`
		Paused         bool              `json:"paused,omitempty"`
		MemoryBackend  string            `json:"memory_backend,omitempty"`
		Prefetch       bool              `json:"prefetch,omitempty"`
		PrefetchWaitMs int64             `json:"prefetch_wait_ms,omitempty"`
		Labels         map[string]string `json:"labels,omitempty"`
	}
	// VMList is the body of GET /v1/vms.
	VMList struct {
		VMs []hearth.View `json:"vms"`
	}
	// SnapshotList is the body of GET /v1/snapshots.
	SnapshotList struct {
		Snapshots []hearth.SnapshotView `json:"snapshots"`
	}
)

// Route is one method + path pattern the server serves.
type Route struct {
	Method string
	Path   string
}

// Server serves the API for one Runtime.
type Server struct {
	rt      Runtime
	log     *slog.Logger
	version string
	started time.Time
	mux     *http.ServeMux
	routes  []Route
	events  *Broker
	metrics http.Handler
	imgs    Images
}

// Options configure a Server.
type Options struct {
	Version string
	Logger  *slog.Logger
	// Events feeds GET /v1/events; nil disables the stream (501).
	Events *Broker
	// Metrics is served at GET /metrics (Prometheus); nil disables it.
	Metrics http.Handler
	// Images serves /v1/images; nil answers those routes 501.
	Images Images
}

// NewServer builds the API handler for rt.
func NewServer(rt Runtime, o Options) *Server {
	s := &Server{rt: rt, log: o.Logger, version: o.Version, started: time.Now().UTC(), mux: http.NewServeMux(), events: o.Events, metrics: o.Metrics, imgs: o.Images}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.handle("GET /healthz", s.healthz)
	s.handle("GET /v1/openapi.json", s.openapi)
	s.handle("GET /v1/system", s.system)
	s.handle("GET /v1/vms", s.listVMs)
	s.handle("POST /v1/vms", s.createVM)
	s.handle("GET /v1/vms/{id}", s.getVM)
	s.handle("DELETE /v1/vms/{id}", s.destroyVM)
	s.handle("PATCH /v1/vms/{id}", s.updateVM)
	s.handle("POST /v1/vms/{id}/start", s.action(func(ctx context.Context, id string) (hearth.View, error) { return s.rt.Start(ctx, id) }))
	s.handle("POST /v1/vms/{id}/pause", s.action(func(ctx context.Context, id string) (hearth.View, error) { return s.rt.Pause(ctx, id) }))
	s.handle("POST /v1/vms/{id}/resume", s.action(func(ctx context.Context, id string) (hearth.View, error) { return s.rt.Resume(ctx, id) }))
	s.handle("POST /v1/vms/{id}/stop", s.action(func(ctx context.Context, id string) (hearth.View, error) { return s.rt.Stop(ctx, id) }))
	s.handle("POST /v1/vms/{id}/rename", s.renameVM)
	s.handle("POST /v1/vms/{id}/snapshots", s.snapshotVM)
	s.handle("GET /v1/snapshots", s.listSnapshots)
	s.handle("GET /v1/snapshots/{name}", s.getSnapshot)
	s.handle("DELETE /v1/snapshots/{name}", s.deleteSnapshot)
	s.handle("POST /v1/snapshots/{name}/restore", s.restore)
	s.handle("POST /v1/snapshots/{name}/verify", s.verifySnapshot)
	s.handle("POST /v1/snapshots/gc", s.gcSnapshots)
	s.handle("PUT /v1/vms/{id}/files", s.putFile)
	s.handle("GET /v1/vms/{id}/files", s.getFile)
	s.handle("GET /v1/vms/{id}/console", s.console)
	s.handle("GET /v1/vms/{id}/stats", s.stats)
	s.handle("POST /v1/vms/{id}/exec", s.exec)
	s.handle("PUT /v1/vms/{id}/egress", s.setEgress)
	s.handle("GET /v1/images", s.listImages)
	s.handle("POST /v1/images", s.importImage)
	s.handle("POST /v1/images/build", s.buildImage)
	s.handle("GET /v1/images/{name}", s.getImage)
	s.handle("DELETE /v1/images/{name}", s.deleteImage)
	s.handle("POST /v1/images/{name}/verify", s.verifyImage)
	s.handle("GET /metrics", s.prometheus)
	s.handle("GET /v1/events", s.streamEvents)
	return s
}

func (s *Server) handle(pattern string, h http.HandlerFunc) {
	method, path, _ := strings.Cut(pattern, " ")
	s.routes = append(s.routes, Route{Method: method, Path: path})
	s.mux.HandleFunc(pattern, checkPathNames(path, h))
}

// checkPathNames refuses a request whose {id} or {name} path segment is
// not a valid VM id, snapshot name or (under /v1/images/) image name with
// 400 before h runs. A runtime
// would only answer "not found" for them, but an id like "../x" (sent as
// "..%2Fx") or a megabyte of text is bad input, and is reported as such
// before anything is looked up.
func checkPathNames(pattern string, h http.HandlerFunc) http.HandlerFunc {
	hasID, hasName := strings.Contains(pattern, "{id}"), strings.Contains(pattern, "{name}")
	if !hasID && !hasName {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		var err error
		if hasID {
			err = hearth.ValidateID(r.PathValue("id"))
		}
		if hasName && err == nil {
			if strings.HasPrefix(pattern, "/v1/images/") {
				err = hearth.ValidateImageName(r.PathValue("name"))
			} else {
				err = hearth.ValidateSnapshotName(r.PathValue("name"))
			}
		}
		if err != nil {
			writeError(w, &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "path", Err: err}, 0)
			return
		}
		h(w, r)
	}
}

// Routes lists every route, for the OpenAPI consistency test.
func (s *Server) Routes() []Route { return append([]Route(nil), s.routes...) }

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t0 := time.Now()
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	if _, pattern := s.mux.Handler(r); pattern == "" {
		s.noRoute(sw, r)
	} else {
		s.mux.ServeHTTP(sw, r)
	}
	s.log.Debug("api", "method", r.Method, "path", r.URL.Path, "status", sw.status, "took", time.Since(t0))
}

// clip shortens a rejected value quoted in an error message: a query
// parameter may hold a megabyte, and the answer should not echo it.
func clip(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}

// noRoute answers a request no route matches as the mux would (404, or
// 405 with Allow), but with an error envelope like every other error, so
// that clients decode it instead of failing on "404 page not found".
func (s *Server) noRoute(w http.ResponseWriter, r *http.Request) {
	cw := &captureWriter{header: http.Header{}, status: http.StatusOK}
	s.mux.ServeHTTP(cw, r)
	if cw.status < 400 {
		// Not expected from a pattern-less match, but pass it on as is.
		maps.Copy(w.Header(), cw.header)
		w.WriteHeader(cw.status)
		w.Write(cw.body.Bytes())
		return
	}
	if allow := cw.header.Get("Allow"); allow != "" {
		w.Header().Set("Allow", allow)
	}
	writeError(w, &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "route",
		Err: fmt.Errorf("%s %q: %s", r.Method, clip(r.URL.Path), strings.ToLower(http.StatusText(cw.status)))}, cw.status)
}

// captureWriter holds a small response in memory.
type captureWriter struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (c *captureWriter) Header() http.Header  { return c.header }
func (c *captureWriter) WriteHeader(code int) { c.status = code }
func (c *captureWriter) Write(p []byte) (int, error) {
	if c.body.Len() < 4096 {
		c.body.Write(p[:min(len(p), 4096)])
	}
	return len(p), nil
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// WithToken requires "Authorization: Bearer <token>" on every request;
// used for TCP listeners, which unlike the unix socket have no file
// permissions to rely on.
func WithToken(token string, h http.Handler) http.Handler {
	want := "Bearer " + token
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if token == "" || !constantTimeEqual(r.Header.Get("Authorization"), want) {
			writeError(w, &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "auth", Err: errors.New("missing or wrong bearer token")}, http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func constantTimeEqual(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	var v byte
	for i := 0; i < len(a); i++ {
		v |= a[i] ^ b[i]
	}
	return v == 0
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, err error, status int) {
	if status == 0 {
		status = StatusOf(hearth.KindOf(err))
	}
	writeJSON(w, status, ErrorEnvelope{Error: bodyOf(err)})
}

// decode reads one JSON value strictly: size-limited, unknown fields
// refused, trailing data refused.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "decode", Err: fmt.Errorf("request body exceeds %d bytes", MaxBodyBytes)}
		}
		return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "decode", Err: fmt.Errorf("request body: %w", err)}
	}
	if _, err := dec.Token(); err != io.EOF {
		return &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "decode", Err: errors.New("request body: trailing data after the JSON value")}
	}
	return nil
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	io.WriteString(w, "ok\n")
}

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Write(openAPIDoc)
}

func (s *Server) system(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, System{Version: s.version, StateDir: s.rt.StateDir(), Backends: s.rt.Backends(),
		DefaultBackend: s.rt.DefaultBackend(), StartedAt: s.started, Reconcile: s.rt.Reconciled()})
}

// labelFilter parses ?label=k=v (repeatable; all must match) and
// ?label=k (key present).
func labelFilter(r *http.Request) (func(map[string]string) bool, error) {
	var conds [][2]string
	for _, l := range r.URL.Query()["label"] {
		k, v, hasV := strings.Cut(l, "=")
		if k == "" {
			return nil, &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "list", Err: fmt.Errorf("label filter %q: want key or key=value", clip(l))}
		}
		if !hasV {
			v = "\x00any"
		}
		conds = append(conds, [2]string{k, v})
	}
	return func(labels map[string]string) bool {
		for _, c := range conds {
			got, ok := labels[c[0]]
			if !ok || (c[1] != "\x00any" && got != c[1]) {
				return false
			}
		}
		return true
	}, nil
}

func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) {
	match, err := labelFilter(r)
	if err != nil {
		writeError(w, err, 0)
		return
	}
	if st := r.URL.Query().Get("status"); st != "" && !hearth.Status(st).Valid() {
		writeError(w, &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "list", Err: fmt.Errorf("unknown status %q", clip(st))}, 0)
		return
	}
	views, err := s.rt.List(r.Context())
	if err != nil {
		writeError(w, err, 0)
		return
	}
	out := VMList{VMs: []hearth.View{}}
	st := hearth.Status(r.URL.Query().Get("status"))
	for _, v := range views {
		if match(v.Spec.Labels) && (st == "" || v.Status == st) {
			out.VMs = append(out.VMs, v)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) createVM(w http.ResponseWriter, r *http.Request) {
	var req CreateRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, err, 0)
		return
	}
	v, err := s.rt.Create(r.Context(), req.ID, req.Spec)
	if err != nil {
		writeError(w, err, 0)
		return
	}
	if req.Start {
		if v, err = s.rt.Start(r.Context(), req.ID); err != nil {
			writeError(w, err, 0)
			return
		}
	}
	writeJSON(w, http.StatusCreated, v)
}

func (s *Server) getVM(w http.ResponseWriter, r *http.Request) {
	v, err := s.rt.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err, 0)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) destroyVM(w http.ResponseWriter, r *http.Request) {
	if err := s.rt.Destroy(r.Context(), r.PathValue("id")); err != nil {
		writeError(w, err, 0)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) action(f func(context.Context, string) (hearth.View, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := f(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, err, 0)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

// updateVM changes a live VM's rate limits (PATCH /v1/vms/{id}); the
// body has the shape of the Spec fields it changes. The egress policy has
// its own route, PUT /v1/vms/{id}/egress.
func (s *Server) updateVM(w http.ResponseWriter, r *http.Request) {
	var req hearth.RateLimits
	if err := decode(w, r, &req); err != nil {
		writeError(w, err, 0)
		return
	}
	v, err := s.rt.SetRateLimits(r.Context(), r.PathValue("id"), req)
	if err != nil {
		writeError(w, err, 0)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) renameVM(w http.ResponseWriter, r *http.Request) {
	var req RenameRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, err, 0)
		return
	}
	v, err := s.rt.Rename(r.Context(), r.PathValue("id"), req.NewID)
	if err != nil {
		writeError(w, err, 0)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) snapshotVM(w http.ResponseWriter, r *http.Request) {
	var req SnapshotRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, err, 0)
		return
	}
	sv, err := s.rt.Snapshot(r.Context(), r.PathValue("id"), req.Name)
	if err != nil {
		writeError(w, err, 0)
		return
	}
	writeJSON(w, http.StatusCreated, sv)
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	snaps, err := s.rt.Snapshots(r.Context())
	if err != nil {
		writeError(w, err, 0)
		return
	}
	if vm := r.URL.Query().Get("vm"); vm != "" {
		kept := snaps[:0]
		for _, sv := range snaps {
			if sv.SourceVM == vm {
				kept = append(kept, sv)
			}
		}
		snaps = kept
	}
	if snaps == nil {
		snaps = []hearth.SnapshotView{}
	}
	writeJSON(w, http.StatusOK, SnapshotList{Snapshots: snaps})
}

func (s *Server) getSnapshot(w http.ResponseWriter, r *http.Request) {
	sv, err := s.rt.GetSnapshot(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err, 0)
		return
	}
	writeJSON(w, http.StatusOK, sv)
}

func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	if err := s.rt.DeleteSnapshot(r.Context(), r.PathValue("name")); err != nil {
		writeError(w, err, 0)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) restore(w http.ResponseWriter, r *http.Request) {
	var req RestoreRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, err, 0)
		return
	}
	v, err := s.rt.Restore(r.Context(), hearth.RestoreSpec{Snapshot: r.PathValue("name"), VM: req.VM, Paused: req.Paused,
		MemoryBackend: req.MemoryBackend, Prefetch: req.Prefetch, PrefetchWaitMs: req.PrefetchWaitMs, Labels: req.Labels})
	if err != nil {
		writeError(w, err, 0)
		return
	}
	writeJSON(w, http.StatusCreated, v)
}

func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	st, err := s.rt.Stats(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err, 0)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) prometheus(w http.ResponseWriter, r *http.Request) {
	if s.metrics == nil {
		writeError(w, &hearth.Error{Kind: hearth.KindUnsupported, Op: "metrics", Err: errors.New("metrics not enabled")}, 0)
		return
	}
	s.metrics.ServeHTTP(w, r)
}

// console serves the last ?tail=N lines (default 100) of a VM's console
// as text, then with ?follow=true keeps streaming what arrives.
func (s *Server) console(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	n := 100
	if v := r.URL.Query().Get("tail"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 || n > 100000 {
			writeError(w, &hearth.Error{Kind: hearth.KindInvalidArgument, Op: "console", VM: id, Err: fmt.Errorf("tail %q: want 0-100000", clip(v))}, 0)
			return
		}
	}
	follow := r.URL.Query().Get("follow") == "true"
	lines, err := s.rt.ConsoleTail(r.Context(), id, n)
	if err != nil {
		writeError(w, err, 0)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	for _, l := range lines {
		io.WriteString(w, l+"\n")
	}
	if !follow {
		return
	}
	fw := &flushWriter{w: w}
	fw.flush()
	s.rt.ConsoleFollow(r.Context(), id, fw)
}

type flushWriter struct{ w http.ResponseWriter }

func (f *flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	f.flush()
	return n, err
}

func (f *flushWriter) flush() {
	if fl, ok := f.w.(http.Flusher); ok {
		fl.Flush()
	}
}

// Broker fans lifecycle events out to event-stream subscribers. Publish
// never blocks: a subscriber that falls behind loses events and is told
// so by a "lagged" event.
type Broker struct {
	mu   sync.Mutex
	subs map[chan hearth.Event]*bool
}

// NewBroker returns an empty broker.
func NewBroker() *Broker { return &Broker{subs: map[chan hearth.Event]*bool{}} }

// Publish delivers e to every subscriber; use it as hearth.Config.OnEvent.
func (b *Broker) Publish(e hearth.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch, lagged := range b.subs {
		select {
		case ch <- e:
		default:
			*lagged = true
		}
	}
}

// Subscribe returns a channel of events and a cancel function.
func (b *Broker) Subscribe() (<-chan hearth.Event, func() bool) {
	ch := make(chan hearth.Event, 256)
	lagged := new(bool)
	b.mu.Lock()
	b.subs[ch] = lagged
	b.mu.Unlock()
	return ch, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		l := *lagged
		*lagged = false
		return l
	}
}

// Unsubscribe stops delivery to ch.
func (b *Broker) Unsubscribe(ch <-chan hearth.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for c := range b.subs {
		if c == ch {
			delete(b.subs, c)
		}
	}
}

func (s *Server) streamEvents(w http.ResponseWriter, r *http.Request) {
	if s.events == nil {
		writeError(w, &hearth.Error{Kind: hearth.KindUnsupported, Op: "events", Err: errors.New("event stream not enabled")}, 0)
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, errors.New("streaming unsupported"), 0)
		return
	}
	vm := r.URL.Query().Get("vm")
	ch, lagged := s.events.Subscribe()
	defer s.events.Unsubscribe(ch)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, ": hearth events\n\n")
	flusher.Flush()
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-keepalive.C:
			io.WriteString(w, ": keepalive\n\n")
		case e := <-ch:
			if lagged() {
				io.WriteString(w, "event: lagged\ndata: {}\n\n")
			}
			if vm != "" && e.VM != vm {
				continue
			}
			b, _ := json.Marshal(e)
			fmt.Fprintf(w, "event: %s\ndata: %s\n\n", e.Type, b)
		}
		flusher.Flush()
	}
}
