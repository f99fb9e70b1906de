package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/api"
	"github.com/hearth-vm/hearth/api/client"
	"github.com/hearth-vm/hearth/firewall"
	"github.com/hearth-vm/hearth/metrics"
	"github.com/hearth-vm/hearth/network"
	"github.com/hearth-vm/hearth/network/nstest"
	"github.com/hearth-vm/hearth/rootfs"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/memvmm"
)

// staticELF writes a minimal static x86-64 executable: the catalog
// accepts it as a hearth-agent.
func staticELF(t *testing.T) string {
	t.Helper()
	var b bytes.Buffer
	w := func(v any) { binary.Write(&b, binary.LittleEndian, v) }
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	code := []byte{0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05}
	n := uint64(64 + 56 + len(code))
	for _, v := range []any{uint16(2), uint16(62), uint32(1), uint64(0x400078), uint64(64), uint64(0), uint32(0),
		uint16(64), uint16(56), uint16(1), uint16(64), uint16(0), uint16(0),
		uint32(1), uint32(5), uint64(0), uint64(0x400000), uint64(0x400000), n, n, uint64(0x1000)} {
		w(v)
	}
	b.Write(code)
	p := filepath.Join(t.TempDir(), "hearth-agent")
	if err := os.WriteFile(p, b.Bytes(), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeExt4 is a file carrying the ext4 superblock magic, which the
// catalog imports as is.
func fakeExt4(t *testing.T) string {
	t.Helper()
	b := make([]byte, 64<<10)
	b[1080], b[1081] = 0x53, 0xEF
	p := filepath.Join(t.TempDir(), "disk.ext4")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func withImages(t *testing.T) (func(*api.Options), *api.CatalogImages) {
	t.Helper()
	cat, err := rootfs.OpenCatalog(filepath.Join(t.TempDir(), "images"), rootfs.CatalogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	agent := staticELF(t)
	imgs := &api.CatalogImages{Catalog: cat, CacheDir: t.TempDir(), FindAgent: func() (string, error) { return agent, nil }}
	return func(o *api.Options) {
		o.Images = imgs
		o.Metrics = metrics.NewRegistry(func() []metrics.Source { return nil }).Handler()
	}, imgs
}

// step is one request of TestEveryRouteOverSocket; route names the
// server's pattern it exercises.
type step struct {
	route  string
	method string
	path   string
	body   string
	status int
	kind   hearth.Kind // for error answers
	check  func(t *testing.T, b []byte)
}

// TestEveryRouteOverSocket sends, over the real unix socket, a request
// that succeeds and requests that fail to every route the server has, and
// fails when a route has no successful case here: a new route cannot go
// untested. The exceptions need a guest or root and are driven elsewhere
// (see noSuccessHere).
func TestEveryRouteOverSocket(t *testing.T) {
	opt, _ := withImages(t)
	e := serve(t, opt)
	dir := t.TempDir()
	data := filepath.Join(dir, "data.img")
	os.WriteFile(data, make([]byte, 4096), 0o600)
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	disk := fakeExt4(t)
	specJSON := func(withDrive bool) string {
		s := e.spec
		if withDrive {
			s.Drives = []hearth.DriveSpec{{ID: "data", Path: data}}
		}
		b, _ := json.Marshal(s)
		return string(b)
	}
	view := func(check func(hearth.View) bool) func(*testing.T, []byte) {
		return func(t *testing.T, b []byte) {
			var v hearth.View
			if err := json.Unmarshal(b, &v); err != nil || !check(v) {
				t.Fatalf("view %s (%v)", b, err)
			}
		}
	}
	ops100 := `{"ops":{"size":100,"refill_time_ms":1000}}`
	steps := []step{
		{route: "GET /healthz", method: "GET", path: "/healthz", status: 200},
		{route: "GET /v1/openapi.json", method: "GET", path: "/v1/openapi.json", status: 200},
		{route: "GET /v1/system", method: "GET", path: "/v1/system", status: 200},
		{route: "POST /v1/vms", method: "POST", path: "/v1/vms", body: `{"id":"vm1","start":true,"spec":` + specJSON(true) + `}`, status: 201,
			check: view(func(v hearth.View) bool { return v.Status == hearth.StatusRunning })},
		{route: "POST /v1/vms", method: "POST", path: "/v1/vms", body: `{"id":"idle","spec":` + specJSON(true) + `}`, status: 201},
		{route: "GET /v1/vms", method: "GET", path: "/v1/vms", status: 200},
		{route: "GET /v1/vms/{id}", method: "GET", path: "/v1/vms/vm1", status: 200},

		// Rate limits: the body has the shape of the spec's fields.
		{route: "PATCH /v1/vms/{id}", method: "PATCH", path: "/v1/vms/vm1", body: `{"drives":[{"id":"data","rate_limit":` + ops100 + `}]}`, status: 200,
			check: view(func(v hearth.View) bool {
				rl := v.Spec.Drives[0].RateLimit
				return rl != nil && rl.Ops != nil && rl.Ops.Size == 100 && rl.Bandwidth == nil
			})},
		{route: "PATCH /v1/vms/{id}", method: "PATCH", path: "/v1/vms/nope", body: `{"drives":[{"id":"data"}]}`, status: 404, kind: hearth.KindVMNotFound},
		{route: "PATCH /v1/vms/{id}", method: "PATCH", path: "/v1/vms/vm1", body: `{}`, status: 400, kind: hearth.KindInvalidArgument},
		{route: "PATCH /v1/vms/{id}", method: "PATCH", path: "/v1/vms/vm1", body: `{"drives":[{"id":"data","rate_limit":{"ops":{"size":1,"refill_ms":5}}}]}`, status: 400, kind: hearth.KindInvalidArgument},
		{route: "PATCH /v1/vms/{id}", method: "PATCH", path: "/v1/vms/vm1", body: `{"drives":[{"id":"other"}]}`, status: 400, kind: hearth.KindInvalidArgument},
		{route: "PATCH /v1/vms/{id}", method: "PATCH", path: "/v1/vms/vm1", body: `{"drives":[{"id":"data"}]`, status: 400, kind: hearth.KindInvalidArgument},
		{route: "PATCH /v1/vms/{id}", method: "PATCH", path: "/v1/vms/vm1", body: `{"network":{"rx_rate_limit":` + ops100 + `}}`, status: 500, kind: hearth.KindNetworkConfig},
		{route: "PATCH /v1/vms/{id}", method: "PATCH", path: "/v1/vms/idle", body: `{"drives":[{"id":"data"}]}`, status: 409, kind: hearth.KindInvalidTransition},

		{route: "POST /v1/vms/{id}/pause", method: "POST", path: "/v1/vms/vm1/pause", status: 200},
		{route: "POST /v1/vms/{id}/pause", method: "POST", path: "/v1/vms/vm1/pause", status: 409, kind: hearth.KindInvalidTransition},
		{route: "POST /v1/vms/{id}/resume", method: "POST", path: "/v1/vms/vm1/resume", status: 200},
		{route: "POST /v1/vms/{id}/snapshots", method: "POST", path: "/v1/vms/vm1/snapshots", body: `{"name":"s1"}`, status: 201},
		{route: "POST /v1/vms/{id}/snapshots", method: "POST", path: "/v1/vms/vm1/snapshots", body: `{"name":"s1"}`, status: 409, kind: hearth.KindSnapshotAlreadyExists},
		{route: "GET /v1/snapshots", method: "GET", path: "/v1/snapshots?vm=vm1", status: 200},
		{route: "GET /v1/snapshots/{name}", method: "GET", path: "/v1/snapshots/s1", status: 200},
		{route: "POST /v1/snapshots/{name}/verify", method: "POST", path: "/v1/snapshots/s1/verify", status: 204},
		{route: "POST /v1/snapshots/{name}/restore", method: "POST", path: "/v1/snapshots/s1/restore", body: `{"vm":"clone"}`, status: 201},
		{route: "POST /v1/snapshots/{name}/restore", method: "POST", path: "/v1/snapshots/nope/restore", body: `{"vm":"clone2"}`, status: 404, kind: hearth.KindSnapshotNotFound},
		{route: "POST /v1/vms/{id}/rename", method: "POST", path: "/v1/vms/clone/rename", body: `{"new_id":"claimed"}`, status: 200},
		{route: "POST /v1/vms/{id}/rename", method: "POST", path: "/v1/vms/vm1/rename", body: `{"new_id":"claimed"}`, status: 409, kind: hearth.KindVMAlreadyExists},
		{route: "GET /v1/vms/{id}/console", method: "GET", path: "/v1/vms/vm1/console?tail=10", status: 200},
		{route: "GET /v1/vms/{id}/stats", method: "GET", path: "/v1/vms/vm1/stats", status: 200},
		{route: "GET /metrics", method: "GET", path: "/metrics", status: 200},
		{route: "PUT /v1/vms/{id}/egress", method: "PUT", path: "/v1/vms/vm1/egress", body: `{"allow":["tcp:10.0.0.0/8:443"]}`, status: 500, kind: hearth.KindNetworkConfig},
		{route: "POST /v1/vms/{id}/exec", method: "POST", path: "/v1/vms/vm1/exec", body: `{"args":["true"]}`, status: 500, kind: hearth.KindGuestMetadata},
		{route: "PUT /v1/vms/{id}/files", method: "PUT", path: "/v1/vms/vm1/files?path=/x", body: "x", status: 500, kind: hearth.KindGuestMetadata},
		{route: "GET /v1/vms/{id}/files", method: "GET", path: "/v1/vms/vm1/files?path=/x", status: 500, kind: hearth.KindGuestMetadata},
		{route: "POST /v1/vms/{id}/stop", method: "POST", path: "/v1/vms/vm1/stop", status: 200},
		{route: "POST /v1/vms/{id}/stop", method: "POST", path: "/v1/vms/vm1/stop", status: 409, kind: hearth.KindInvalidTransition},
		// A stopped VM records new limits for its next start.
		{route: "PATCH /v1/vms/{id}", method: "PATCH", path: "/v1/vms/vm1", body: `{"drives":[{"id":"data","rate_limit":null}]}`, status: 200,
			check: view(func(v hearth.View) bool { return v.Spec.Drives[0].RateLimit == nil })},
		{route: "POST /v1/vms/{id}/start", method: "POST", path: "/v1/vms/vm1/start", status: 200},
		{route: "POST /v1/snapshots/gc", method: "POST", path: "/v1/snapshots/gc", body: `{"keep_per_vm":1}`, status: 200},
		{route: "DELETE /v1/snapshots/{name}", method: "DELETE", path: "/v1/snapshots/s1", status: 204},
		{route: "DELETE /v1/snapshots/{name}", method: "DELETE", path: "/v1/snapshots/s1", status: 404, kind: hearth.KindSnapshotNotFound},

		// Images.
		{route: "GET /v1/images", method: "GET", path: "/v1/images", status: 200, check: func(t *testing.T, b []byte) {
			if !bytes.Contains(b, []byte(`"images": []`)) {
				t.Fatalf("empty catalog: %s", b)
			}
		}},
		{route: "POST /v1/images", method: "POST", path: "/v1/images", body: `{"name":"disk","source":"` + disk + `","kernel":"` + kernel + `"}`, status: 200,
			check: func(t *testing.T, b []byte) {
				// Progress lines, then the result line.
				lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
				var last api.StreamLine
				var im rootfs.Image
				if len(lines) < 2 || json.Unmarshal(lines[len(lines)-1], &last) != nil || last.Result == nil ||
					json.Unmarshal(last.Result, &im) != nil || im.Name != "disk" || im.Source.Kind != "ext4" {
					t.Fatalf("import stream:\n%s", b)
				}
			}},
		{route: "POST /v1/images", method: "POST", path: "/v1/images", body: `{"name":"disk","source":"` + disk + `","kernel":"` + kernel + `"}`, status: 409, kind: hearth.KindImageAlreadyExists},
		{route: "POST /v1/images", method: "POST", path: "/v1/images", body: `{"name":"Bad","source":"` + disk + `"}`, status: 400, kind: hearth.KindInvalidArgument},
		{route: "POST /v1/images", method: "POST", path: "/v1/images", body: `{"name":"rel","source":"disk.ext4"}`, status: 400, kind: hearth.KindInvalidArgument},
		{route: "POST /v1/images", method: "POST", path: "/v1/images", body: `{"name":"nok","source":"` + disk + `","kernel_from":"absent"}`, status: 400, kind: hearth.KindInvalidArgument},
		{route: "POST /v1/images", method: "POST", path: "/v1/images", body: `{"name":"x","source":"` + disk + `","mystery":1}`, status: 400, kind: hearth.KindInvalidArgument},
		{route: "GET /v1/images/{name}", method: "GET", path: "/v1/images/disk", status: 200},
		{route: "GET /v1/images/{name}", method: "GET", path: "/v1/images/absent", status: 404, kind: hearth.KindImageNotFound},
		{route: "GET /v1/images/{name}", method: "GET", path: "/v1/images/..", status: 404}, // cleaned away by the mux
		{route: "POST /v1/images/{name}/verify", method: "POST", path: "/v1/images/disk/verify", status: 200, check: func(t *testing.T, b []byte) {
			var r api.VerifyImageResult
			if err := json.Unmarshal(b, &r); err != nil || r.Image != "disk" || len(r.Files) != 2 {
				t.Fatalf("verify: %s (%v)", b, err)
			}
		}},
		{route: "POST /v1/images/{name}/verify", method: "POST", path: "/v1/images/disk/verify?cached=maybe", status: 400, kind: hearth.KindInvalidArgument},
		{route: "POST /v1/images/{name}/verify", method: "POST", path: "/v1/images/absent/verify", status: 404, kind: hearth.KindImageNotFound},
		{route: "POST /v1/images/build", method: "POST", path: "/v1/images/build", body: `{"recipe":"fancy"}`, status: 400, kind: hearth.KindInvalidArgument},
		{route: "POST /v1/images/build", method: "POST", path: "/v1/images/build", body: `{"recipe":"default","kernel_deb":"k.deb"}`, status: 400, kind: hearth.KindInvalidArgument},
		{route: "POST /v1/images/build", method: "POST", path: "/v1/images/build", body: `{"recipe":"default","size_bytes":-1}`, status: 400, kind: hearth.KindInvalidArgument},
		{route: "DELETE /v1/images/{name}", method: "DELETE", path: "/v1/images/disk", status: 204},
		{route: "DELETE /v1/images/{name}", method: "DELETE", path: "/v1/images/disk", status: 404, kind: hearth.KindImageNotFound},
		{route: "DELETE /v1/images/{name}", method: "DELETE", path: "/v1/images/Bad%20Name", status: 400, kind: hearth.KindInvalidArgument},

		{route: "DELETE /v1/vms/{id}", method: "DELETE", path: "/v1/vms/claimed", status: 204},
		{route: "DELETE /v1/vms/{id}", method: "DELETE", path: "/v1/vms/claimed", status: 404, kind: hearth.KindVMNotFound},
	}
	ok := map[string]bool{}
	for i, s := range steps {
		resp, b := e.send(t, s.method, s.path, s.body)
		if resp.StatusCode != s.status {
			t.Fatalf("step %d %s %s: status %d, want %d: %s", i, s.method, s.path, resp.StatusCode, s.status, b)
		}
		if s.kind != hearth.KindUnknown {
			var env api.ErrorEnvelope
			if err := json.Unmarshal(b, &env); err != nil || env.Error.Kind != s.kind || env.Error.Message == "" {
				t.Fatalf("step %d %s %s: error body %s, want kind %s", i, s.method, s.path, b, s.kind)
			}
		}
		if s.check != nil {
			s.check(t, b)
		}
		if s.status < 300 {
			ok[s.route] = true
		}
	}
	// The event stream answers with its content type and stays open.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://hearth/v1/events", nil)
	resp, err := e.raw.Do(req)
	if err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events: %v %v", resp, err)
	}
	resp.Body.Close()
	ok["GET /v1/events"] = true

	noSuccessHere := map[string]string{
		"PUT /v1/vms/{id}/egress": "needs a VM network (root, namespaces): TestNetworkRoutesOverSocket",
		"POST /v1/vms/{id}/exec":  "needs a guest agent: cmd/hearth TestCLIOnFirecracker",
		"PUT /v1/vms/{id}/files":  "needs a guest agent: cmd/hearth TestCLIOnFirecracker",
		"GET /v1/vms/{id}/files":  "needs a guest agent: cmd/hearth TestCLIOnFirecracker",
		"POST /v1/images/build":   "success streams from TestImageStreams; the real build is image.TestBuildDefaultOffline",
	}
	for _, r := range e.srv.Routes() {
		key := r.Method + " " + r.Path
		if !ok[key] && noSuccessHere[key] == "" {
			t.Errorf("route %s has no successful request in this test", key)
		}
	}
}

// streamImages reports progress, then succeeds or fails, as an image
// build does; the real builder is tested in package image.
type streamImages struct {
	api.CatalogImages
	fail bool
}

func (s *streamImages) Build(ctx context.Context, req api.BuildImageRequest, progress func(api.Progress)) (api.BuildImageResult, error) {
	for i := 1; i <= 3; i++ {
		progress(api.Progress{Step: i, Total: 3, Message: "step"})
	}
	if s.fail {
		return api.BuildImageResult{}, &hearth.Error{Kind: hearth.KindRootfs, Op: "image build", Err: errors.New("disk full")}
	}
	return api.BuildImageResult{Image: rootfs.Image{Manifest: rootfs.Manifest{Name: req.Name}}, KernelVersion: "6.1"}, nil
}

// TestImageStreams checks the progress stream's framing through the
// client: progress lines in order, then the result, or an error line that
// becomes a *hearth.Error of its kind.
func TestImageStreams(t *testing.T) {
	ctx := context.Background()
	si := &streamImages{}
	e := serve(t, func(o *api.Options) { o.Images = si })
	var got []int
	res, err := e.c.BuildImage(ctx, api.BuildImageRequest{Recipe: "default", Name: "x"}, func(p api.Progress) { got = append(got, p.Step) })
	if err != nil || res.Image.Name != "x" || res.KernelVersion != "6.1" || len(got) != 3 || got[2] != 3 {
		t.Fatalf("build: %+v %v, progress %v", res, err, got)
	}
	// The raw stream is NDJSON: one JSON value per line.
	resp, b := e.send(t, "POST", "/v1/images/build", `{"recipe":"default"}`)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("stream: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	lines := 0
	for sc.Scan() {
		var l api.StreamLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		lines++
	}
	if lines != 4 {
		t.Fatalf("%d lines, want 3 progress + 1 result:\n%s", lines, b)
	}
	si.fail = true
	_, err = e.c.BuildImage(ctx, api.BuildImageRequest{Recipe: "default"}, nil)
	if hearth.KindOf(err) != hearth.KindRootfs || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("failed build: %v", err)
	}
	// Without an image catalog the routes answer 501.
	e2 := serve(t)
	if _, err := e2.c.Images(ctx); hearth.KindOf(err) != hearth.KindUnsupported {
		t.Fatalf("no catalog: %v", err)
	}
}

// TestImagesThroughClient drives the real catalog through the Go client.
func TestImagesThroughClient(t *testing.T) {
	ctx := context.Background()
	opt, _ := withImages(t)
	e := serve(t, opt)
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	im, err := e.c.ImportImage(ctx, api.ImportImageRequest{Name: "raw", Source: fakeExt4(t), Kernel: kernel}, nil)
	if err != nil || im.Name != "raw" {
		t.Fatalf("import: %+v %v", im, err)
	}
	if ims, err := e.c.Images(ctx); err != nil || len(ims) != 1 {
		t.Fatalf("list: %v %v", ims, err)
	}
	// Tampering is an integrity error, with its kind across the wire.
	p := filepath.Join(im.Dir, rootfs.RootfsFile)
	os.Chmod(p, 0o644)
	os.WriteFile(p, []byte("tampered"), 0o644)
	if _, err := e.c.VerifyImage(ctx, "raw", false); !errors.Is(err, hearth.ErrIntegrity) {
		t.Fatalf("verify tampered: %v", err)
	}
	if err := e.c.DeleteImage(ctx, "raw"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.GetImage(ctx, "raw"); !errors.Is(err, hearth.ErrImageNotFound) {
		t.Fatalf("get removed: %v", err)
	}
}

// TestEveryBodyIsStrict sends each route that takes a JSON body a
// malformed body, an unknown field, trailing data and an oversize body:
// each is a 400 invalid_argument, before anything happens.
func TestEveryBodyIsStrict(t *testing.T) {
	opt, _ := withImages(t)
	e := serve(t, opt)
	if _, err := e.c.CreateAndStart(context.Background(), "vm1", e.spec); err != nil {
		t.Fatal(err)
	}
	routes := []struct{ method, path, valid string }{
		{"POST", "/v1/vms", `{"id":"x"}`},
		{"PATCH", "/v1/vms/vm1", `{"drives":[]}`},
		{"POST", "/v1/vms/vm1/rename", `{"new_id":"y"}`},
		{"POST", "/v1/vms/vm1/snapshots", `{"name":"s"}`},
		{"POST", "/v1/snapshots/s/restore", `{"vm":"z"}`},
		{"POST", "/v1/snapshots/gc", `{"keep_per_vm":1}`},
		{"POST", "/v1/vms/vm1/exec", `{"args":["true"]}`},
		{"PUT", "/v1/vms/vm1/egress", `{"allow":[]}`},
		{"POST", "/v1/images", `{"name":"i","source":"/nonexistent"}`},
		{"POST", "/v1/images/build", `{"recipe":"default"}`},
	}
	huge := `{"pad":"` + strings.Repeat("a", api.MaxBodyBytes) + `"}`
	for _, r := range routes {
		for name, body := range map[string]string{
			"malformed":     r.valid[:len(r.valid)-1],
			"unknown field": `{"bogus_field":1,` + r.valid[1:],
			"trailing data": r.valid + ` {}`,
			"wrong type":    `[]`,
			"oversize":      huge,
			"empty":         ``,
		} {
			resp, b := e.send(t, r.method, r.path, body)
			var env api.ErrorEnvelope
			if resp.StatusCode != 400 || json.Unmarshal(b, &env) != nil || env.Error.Kind != hearth.KindInvalidArgument {
				t.Errorf("%s %s with a %s body: %d %s", r.method, r.path, name, resp.StatusCode, b)
			}
		}
	}
	// Nothing happened: no VM, snapshot or image beyond vm1.
	if l, _ := e.c.List(context.Background()); len(l) != 1 || l[0].Status != hearth.StatusRunning {
		t.Fatalf("VMs after refused bodies: %+v", l)
	}
	if s, _ := e.c.Snapshots(context.Background()); len(s) != 0 {
		t.Fatalf("snapshots after refused bodies: %+v", s)
	}
	if ims, _ := e.c.Images(context.Background()); len(ims) != 0 {
		t.Fatalf("images after refused bodies: %+v", ims)
	}
}

// TestNetworkRoutesOverSocket covers the routes that need a VM network
// (root; everything inside namespaces the test makes): the egress policy
// replaced through PUT …/egress, and NIC rate limits through PATCH.
func TestNetworkRoutesOverSocket(t *testing.T) {
	nstest.RequireRoot(t)
	ctx := context.Background()
	w := nstest.NewWorld(t)
	dir := t.TempDir()
	k, r := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.ext4")
	os.WriteFile(k, []byte("k"), 0o600)
	os.WriteFile(r, []byte("r"), 0o600)
	backend := memvmm.New()
	rt, err := hearth.Open(ctx, hearth.Config{StateDir: filepath.Join(dir, "state"), Backends: []vmm.Backend{backend},
		Network: &hearth.NetworkConfig{
			Network:  network.Config{Mode: network.ModeNetNS, HostNS: w.Host.Path, NetNSDir: filepath.Join(w.Dir, "vmns"), EgressIface: nstest.EgressIface, PoolSize: -1},
			Firewall: firewall.NFTables,
		}})
	if err != nil {
		t.Fatal(err)
	}
	sockDir := shortTemp(t)
	sock := filepath.Join(sockDir, "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: api.NewServer(rt, api.Options{})}
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close(); rt.Close() })
	c := client.New(sock)
	if _, err := c.CreateAndStart(ctx, "n1", hearth.Spec{Kernel: k, Rootfs: r, Network: &hearth.NetworkSpec{Allow: []string{"tcp:198.18.1.10/32:443"}}}); err != nil {
		t.Fatal(err)
	}
	defer c.Destroy(ctx, "n1")
	if err := c.SetEgress(ctx, "n1", []string{"udp:198.18.0.0/16:53"}, []string{"198.18.0.53"}); err != nil {
		t.Fatal(err)
	}
	v, err := c.Get(ctx, "n1")
	if err != nil || len(v.Spec.Network.Allow) != 1 || v.Spec.Network.Allow[0] != "udp:198.18.0.0/16:53" {
		t.Fatalf("egress not recorded: %+v %v", v.Spec.Network, err)
	}
	if err := c.SetEgress(ctx, "n1", []string{"tcp:nonsense"}, nil); !errors.Is(err, hearth.ErrInvalidArgument) {
		t.Fatalf("bad rule: %v", err)
	}
	rx := &hearth.RateLimit{Bandwidth: &hearth.TokenBucket{Size: 1 << 20, RefillTimeMs: 100}}
	v, err = c.SetRateLimits(ctx, "n1", hearth.RateLimits{Network: &hearth.NetworkRateLimits{RxRateLimit: rx}})
	if err != nil || v.Spec.Network.RxRateLimit == nil || v.Spec.Network.RxRateLimit.Bandwidth.Size != 1<<20 {
		t.Fatalf("nic limits: %+v %v", v.Spec.Network, err)
	}
	// The machine got the whole new limits of its NIC.
	var nic *vmm.NIC
	for _, m := range backend.Machines() {
		cfg := m.Config()
		if len(cfg.NICs) == 1 {
			nic = &cfg.NICs[0]
		}
	}
	if nic == nil || nic.RX == nil || nic.RX.Bandwidth.Size != 1<<20 || nic.TX != nil {
		t.Fatalf("machine NIC %+v", nic)
	}
}

func shortTemp(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "hapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// TestConcurrentRateLimitChanges has many clients change one VM's limits
// at once, over separate connections: every change succeeds, and the
// record ends equal to one of them (changes are serialised per VM, never
// interleaved).
func TestConcurrentRateLimitChanges(t *testing.T) {
	ctx := context.Background()
	e := serve(t)
	data := filepath.Join(t.TempDir(), "data.img")
	os.WriteFile(data, make([]byte, 4096), 0o600)
	spec := e.spec
	spec.Drives = []hearth.DriveSpec{{ID: "data", Path: data}}
	if _, err := e.c.CreateAndStart(ctx, "vm1", spec); err != nil {
		t.Fatal(err)
	}
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 1; i <= n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := client.New(e.socket)
			defer c.Close()
			rl := &hearth.RateLimit{Ops: &hearth.TokenBucket{Size: int64(i), RefillTimeMs: int64(i)}, Bandwidth: &hearth.TokenBucket{Size: int64(i) << 10, RefillTimeMs: int64(i)}}
			if _, err := c.SetRateLimits(ctx, "vm1", hearth.RateLimits{Drives: []hearth.DriveRateLimit{{ID: "data", RateLimit: rl}}}); err != nil {
				errs <- err
			}
			if _, err := c.Get(ctx, "vm1"); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	v, err := e.c.Get(ctx, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	rl := v.Spec.Drives[0].RateLimit
	if rl == nil || rl.Ops == nil || rl.Bandwidth == nil || rl.Ops.Size < 1 || rl.Ops.Size > n ||
		rl.Ops.RefillTimeMs != rl.Ops.Size || rl.Bandwidth.Size != rl.Ops.Size<<10 {
		t.Fatalf("final limit is not one of the requests: %+v", rl)
	}
}
