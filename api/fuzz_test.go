package api_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/api"
	"github.com/hearth-vm/hearth/firewall"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/memvmm"
)

// The API fuzz targets drive the real handler over a real runtime (the
// in-memory backend, a state dir of its own) in process, so decoding and
// the runtime's validation are both exercised. Every target checks the
// same contract: no panic; an error answer is a well-formed envelope
// whose kind maps to its status, with 400 meaning invalid_argument; an
// error leaves the VMs and snapshots as they were; and nothing the
// request said is echoed back at length. Seeds may write {K} and {R} for
// the paths of a kernel and a rootfs that exist.

// fuzzAPI is one runtime and server shared by a fuzz target's inputs.
type fuzzAPI struct {
	rt   *hearth.Runtime
	srv  *api.Server
	k, r string
	base []string // VM ids present between inputs
	snap []string // snapshots present between inputs
}

func newFuzzAPI(f *testing.F) *fuzzAPI {
	dir := f.TempDir()
	k, r := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.ext4")
	os.WriteFile(k, []byte("k"), 0o600)
	os.WriteFile(r, []byte("r"), 0o600)
	rt, err := hearth.Open(context.Background(), hearth.Config{StateDir: filepath.Join(dir, "state"), Backends: []vmm.Backend{memvmm.New()}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { rt.Close() })
	fa := &fuzzAPI{rt: rt, srv: api.NewServer(rt, api.Options{Version: "fuzz"}), k: k, r: r}
	ctx := context.Background()
	if _, err := rt.Create(ctx, "base", hearth.Spec{Kernel: k, Rootfs: r, Labels: map[string]string{"team": "a"}}); err != nil {
		f.Fatal(err)
	}
	if _, err := rt.Start(ctx, "base"); err != nil {
		f.Fatal(err)
	}
	if _, err := rt.Snapshot(ctx, "base", "snap"); err != nil {
		f.Fatal(err)
	}
	fa.base, fa.snap = fa.vms(), fa.snaps()
	return fa
}

func (fa *fuzzAPI) vms() []string {
	views, _ := fa.rt.List(context.Background())
	var ids []string
	for _, v := range views {
		ids = append(ids, v.ID)
	}
	slices.Sort(ids)
	return ids
}

func (fa *fuzzAPI) snaps() []string {
	sv, _ := fa.rt.Snapshots(context.Background())
	var names []string
	for _, s := range sv {
		names = append(names, s.Name)
	}
	slices.Sort(names)
	return names
}

// fill replaces the {K} and {R} placeholders.
func (fa *fuzzAPI) fill(b []byte) []byte {
	b = bytes.ReplaceAll(b, []byte("{K}"), []byte(fa.k))
	return bytes.ReplaceAll(b, []byte("{R}"), []byte(fa.r))
}

// do serves one request; a URL the client side cannot even form is
// skipped (it never reaches a server).
func (fa *fuzzAPI) do(t *testing.T, method, target string, body []byte) (*httptest.ResponseRecorder, bool) {
	req, err := http.NewRequest(method, "http://hearth"+target, bytes.NewReader(body))
	if err != nil {
		return nil, false
	}
	rec := httptest.NewRecorder()
	fa.srv.ServeHTTP(rec, req)
	return rec, true
}

// doOn is do on a route naming one resource (prefix, name, rest): a name
// that cannot be a URL path segment is skipped (ok false).
func (fa *fuzzAPI) doOn(t *testing.T, method, prefix, name, rest string, body []byte) (*httptest.ResponseRecorder, bool) {
	seg, ok := pathSeg(name)
	if !ok {
		return nil, false
	}
	return fa.do(t, method, prefix+seg+rest, body)
}

// checkPastValidation checks the answer of a route whose valid requests
// fail after validation on the base VM (it has no network or agent): 400
// or 404 for bad input, else 500 of kind want.
func (fa *fuzzAPI) checkPastValidation(t *testing.T, rec *httptest.ResponseRecorder, want hearth.Kind) {
	t.Helper()
	if kind := fa.check(t, rec, 400, 404, 500); rec.Code == 500 && kind != want {
		t.Fatalf("500 of kind %s", kind)
	}
}

// check verifies the common contract of one answer and returns its error
// kind (KindUnknown for a success).
func (fa *fuzzAPI) check(t *testing.T, rec *httptest.ResponseRecorder, allowed ...int) hearth.Kind {
	t.Helper()
	if !slices.Contains(allowed, rec.Code) {
		t.Fatalf("status %d (allowed %v): %.500s", rec.Code, allowed, rec.Body.Bytes())
	}
	if rec.Code < 300 {
		return hearth.KindUnknown
	}
	var env api.ErrorEnvelope
	if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil {
		t.Fatalf("error answer is not an envelope: %v: %.500s", err, rec.Body.Bytes())
	}
	// A request no route matches keeps the mux's 404 or 405 with an
	// invalid_argument envelope.
	route := env.Error.Op == "route" && env.Error.Kind == hearth.KindInvalidArgument && (rec.Code == 404 || rec.Code == 405)
	if env.Error.Message == "" || env.Error.Kind == hearth.KindUnknown || (api.StatusOf(env.Error.Kind) != rec.Code && !route) {
		t.Fatalf("error answer %d with kind %s: %.500s", rec.Code, env.Error.Kind, rec.Body.Bytes())
	}
	if rec.Body.Len() > 32<<10 {
		t.Fatalf("error answer of %d bytes", rec.Body.Len())
	}
	if got := fa.vms(); !slices.Equal(got, fa.base) {
		t.Fatalf("failed request changed the VMs: %v, was %v", got, fa.base)
	}
	if got := fa.snaps(); !slices.Equal(got, fa.snap) {
		t.Fatalf("failed request changed the snapshots: %v, was %v", got, fa.snap)
	}
	return env.Error.Kind
}

// pathSeg escapes s as one path segment; the segments a client cannot
// send as such ("", ".", "..": cleaned away before routing) are skipped.
func pathSeg(s string) (string, bool) {
	if s == "" || s == "." || s == ".." {
		return "", false
	}
	return url.PathEscape(s), true
}

func FuzzAPICreate(f *testing.F) {
	for _, s := range []string{
		`{"id":"vm1","spec":{"kernel":"{K}","rootfs":"{R}"}}`,
		`{"id":"vm1","start":true,"spec":{"kernel":"{K}","rootfs":"{R}","vcpus":2,"memory_mib":64,"labels":{"a":"b"},"drives":[{"id":"d","path":"{R}","read_only":true}]}}`,
		`{"id":"base","spec":{"kernel":"{K}","rootfs":"{R}"}}`,
		`{"id":"../x","spec":{"kernel":"{K}","rootfs":"{R}"}}`,
		`{"id":"vm1","spec":{"kernel":"{K}/../../etc/passwd","rootfs":"{R}"}}`,
		`{"id":"vm1","spec":{"kernel":"{K}\u0000","rootfs":"{R}"}}`,
		`{"id":"vm1","spec":{"image":"../../etc"}}`,
		`{"id":"vm1","spec":{"kernel":"{K}","rootfs":"{R}","backend":"qemu"}}`,
		`{"id":"vm1","spec":{"kernel":"{K}","rootfs":"{R}","network":{"allow":["tcp:1.2.3.4/8"]}}}`,
		`{"id":"vm1","spec":{"kernel":"{K}","rootfs":"{R}","labels":{"k=v":"x"}}}`,
		`{"id":"vm1","spec":{"kernel":"{K}","rootfs":"{R}"},"x":1}`,
		`{"id":"vm1"} trailing`,
		`{"id":"vm\u00e9"}`,
		`[]`,
	} {
		f.Add([]byte(s))
	}
	fa := newFuzzAPI(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		body = fa.fill(body)
		rec, _ := fa.do(t, "POST", "/v1/vms", body)
		kind := fa.check(t, rec, 201, 400, 409)
		if rec.Code == 409 && kind != hearth.KindVMAlreadyExists {
			t.Fatalf("409 of kind %s", kind)
		}
		if rec.Code != 201 {
			return
		}
		ctx := context.Background()
		var v hearth.View
		if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil || hearth.ValidateID(v.ID) != nil {
			t.Fatalf("created view %s: %v", rec.Body.Bytes(), err)
		}
		defer fa.rt.Destroy(ctx, v.ID)
		// The stored spec, created again, is accepted again.
		again, err := json.Marshal(api.CreateRequest{ID: "again", Spec: v.Spec})
		if err != nil {
			t.Fatal(err)
		}
		rec2, _ := fa.do(t, "POST", "/v1/vms", again)
		if rec2.Code != 201 {
			t.Fatalf("the spec of created %s is refused when submitted again: %d %s", v.ID, rec2.Code, rec2.Body.Bytes())
		}
		if err := fa.rt.Destroy(ctx, "again"); err != nil {
			t.Fatal(err)
		}
		if err := fa.rt.Destroy(ctx, v.ID); err != nil {
			t.Fatal(err)
		}
		if got := fa.vms(); !slices.Equal(got, fa.base) {
			t.Fatalf("after destroy: %v", got)
		}
	})
}

func FuzzAPIRestore(f *testing.F) {
	for _, s := range []struct{ name, body string }{
		{"snap", `{"vm":"clone"}`},
		{"snap", `{"vm":"clone","paused":true,"labels":{"role":"pool"}}`},
		{"snap", `{"vm":"base"}`},
		{"nope", `{"vm":"clone"}`},
		{"../snap", `{"vm":"clone"}`},
		{"snap/x", `{"vm":"clone"}`},
		{"snap", `{"vm":"../clone"}`},
		{"snap", `{"vm":"clone","memory_backend":"uffd","prefetch":true}`},
		{"snap", `{"vm":"clone","memory_backend":"disk"}`},
		{"snap", `{"vm":"clone","labels":{"a=b":"c"}}`},
		{"snap", `{"vm":"clone","labels":{"a":"b\nc"}}`},
		{"snap\x00", `{"vm":"clone"}`},
	} {
		f.Add(s.name, []byte(s.body))
	}
	fa := newFuzzAPI(f)
	f.Fuzz(func(t *testing.T, name string, body []byte) {
		rec, ok := fa.doOn(t, "POST", "/v1/snapshots/", name, "/restore", body)
		if !ok {
			return
		}
		// A lazy (uffd) restore needs the hearth binary as its page-fault
		// server, which a test binary has not: 500 uffd, rolled back.
		kind := fa.check(t, rec, 201, 400, 404, 409, 500)
		if (rec.Code == 404 && kind != hearth.KindSnapshotNotFound && !rejected(rec)) || (rec.Code == 409 && kind != hearth.KindVMAlreadyExists) ||
			(rec.Code == 500 && kind != hearth.KindUffd) {
			t.Fatalf("%d of kind %s", rec.Code, kind)
		}
		if hearth.ValidateSnapshotName(name) != nil && !rejected(rec) {
			t.Fatalf("snapshot name %q: status %d", name, rec.Code)
		}
		if rec.Code == 201 {
			var v hearth.View
			if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
				t.Fatal(err)
			}
			if err := fa.rt.Destroy(context.Background(), v.ID); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func FuzzAPIRename(f *testing.F) {
	for _, s := range []struct{ id, body string }{
		{"base", `{"new_id":"other"}`},
		{"base", `{"new_id":"base"}`},
		{"base", `{"new_id":"../x"}`},
		{"base", `{"new_id":"a/b"}`},
		{"base", `{"new_id":""}`},
		{"base", `{"new_id":"x\u0000"}`},
		{"nope", `{"new_id":"other"}`},
		{"../base", `{"new_id":"other"}`},
		{"base", `{"new_id":"` + strings.Repeat("x", 64) + `"}`},
	} {
		f.Add(s.id, []byte(s.body))
	}
	fa := newFuzzAPI(f)
	f.Fuzz(func(t *testing.T, id string, body []byte) {
		rec, ok := fa.doOn(t, "POST", "/v1/vms/", id, "/rename", body)
		if !ok {
			return
		}
		if rec.Code == 200 {
			var v hearth.View
			if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil || hearth.ValidateID(v.ID) != nil {
				t.Fatalf("renamed view %s: %v", rec.Body.Bytes(), err)
			}
			if v.ID != "base" {
				if _, err := fa.rt.Rename(context.Background(), v.ID, "base"); err != nil {
					t.Fatal(err)
				}
			}
		}
		kind := fa.check(t, rec, 200, 400, 404, 409)
		if rec.Code == 404 && kind != hearth.KindVMNotFound && !rejected(rec) {
			t.Fatalf("404 of kind %s", kind)
		}
		if hearth.ValidateID(id) != nil && !rejected(rec) {
			t.Fatalf("id %q: status %d", id, rec.Code)
		}
	})
}

func FuzzAPISnapshot(f *testing.F) {
	for _, s := range []struct{ id, body string }{
		{"base", `{"name":"s2"}`},
		{"base", `{"name":"snap"}`},
		{"base", `{"name":"../s"}`},
		{"base", `{"name":"/abs"}`},
		{"base", `{"name":"a\nb"}`},
		{"base", `{"name":"` + strings.Repeat("s", 64) + `"}`},
		{"nope", `{"name":"s2"}`},
		{"..%2Fbase", `{"name":"s2"}`},
	} {
		f.Add(s.id, []byte(s.body))
	}
	fa := newFuzzAPI(f)
	f.Fuzz(func(t *testing.T, id string, body []byte) {
		rec, ok := fa.doOn(t, "POST", "/v1/vms/", id, "/snapshots", body)
		if !ok {
			return
		}
		if rec.Code == 201 {
			var sv hearth.SnapshotView
			if err := json.Unmarshal(rec.Body.Bytes(), &sv); err != nil || hearth.ValidateSnapshotName(sv.Name) != nil {
				t.Fatalf("snapshot view %s: %v", rec.Body.Bytes(), err)
			}
			if err := fa.rt.DeleteSnapshot(context.Background(), sv.Name); err != nil {
				t.Fatal(err)
			}
		}
		kind := fa.check(t, rec, 201, 400, 404, 409)
		if (rec.Code == 404 && kind != hearth.KindVMNotFound && !rejected(rec)) || (rec.Code == 409 && kind != hearth.KindSnapshotAlreadyExists) {
			t.Fatalf("%d of kind %s", rec.Code, kind)
		}
		var req api.SnapshotRequest
		if (hearth.ValidateID(id) != nil || strictDecode(body, &req) != nil || hearth.ValidateSnapshotName(req.Name) != nil) && !rejected(rec) {
			t.Fatalf("id %q body %q: status %d", id, body, rec.Code)
		}
	})
}

func FuzzAPIEgress(f *testing.F) {
	for _, s := range []struct{ id, body string }{
		{"base", `{"allow":["tcp:10.0.0.0/8:443"],"dns":["10.0.0.53"]}`},
		{"base", `{"allow":["tcp:bogus"]}`},
		{"base", `{"allow":["udp:[2001:db8::]/32:53-54","icmp:0.0.0.0/0"]}`},
		{"base", `{"allow":null}`},
		{"base", `{"dns":["::ffff:1.2.3.4"]}`},
		{"nope", `{"allow":[]}`},
		{"../base", `{"allow":[]}`},
	} {
		f.Add(s.id, []byte(s.body))
	}
	fa := newFuzzAPI(f)
	f.Fuzz(func(t *testing.T, id string, body []byte) {
		rec, ok := fa.doOn(t, "PUT", "/v1/vms/", id, "/egress", body)
		if !ok {
			return
		}
		// The base VM has no network: a valid policy for it fails with
		// network_config (500) after validation.
		fa.checkPastValidation(t, rec, hearth.KindNetworkConfig)
		var req api.EgressRequest
		valid := hearth.ValidateID(id) == nil && strictDecode(body, &req) == nil
		if valid {
			_, err := firewall.ParsePolicy(req.Allow, req.DNS...)
			valid = err == nil
		}
		if valid == rejected(rec) {
			t.Fatalf("id %q body %q: valid %v, status %d %s", id, body, valid, rec.Code, rec.Body.Bytes())
		}
	})
}

func FuzzAPIExec(f *testing.F) {
	for _, s := range []struct{ id, body string }{
		{"base", `{"args":["sh","-c","echo hi"],"env":{"A":"1"},"dir":"/tmp","timeout_ms":1000,"stdin":"aGk="}`},
		{"base", `{"args":[]}`},
		{"base", `{"args":[""]}`},
		{"base", `{"args":["a\u0000"]}`},
		{"base", `{"args":["x"],"env":{"A=B":"1"}}`},
		{"base", `{"args":["x"],"env":{"A":"1\n"}}`},
		{"base", `{"args":["x"],"dir":"../.."}`},
		{"base", `{"args":["x"],"timeout_ms":9223372036854775807}`},
		{"base", `{"args":["x"],"stdin":"%%%"}`},
		{"nope", `{"args":["x"]}`},
		{"a/b", `{"args":["x"]}`},
	} {
		f.Add(s.id, []byte(s.body))
	}
	fa := newFuzzAPI(f)
	f.Fuzz(func(t *testing.T, id string, body []byte) {
		rec, ok := fa.doOn(t, "POST", "/v1/vms/", id, "/exec", body)
		if !ok {
			return
		}
		// The base VM has no agent: a valid request for it fails with
		// guest_metadata (500) after validation.
		fa.checkPastValidation(t, rec, hearth.KindGuestMetadata)
		var req api.ExecRequest
		valid := hearth.ValidateID(id) == nil && strictDecode(body, &req) == nil
		if valid {
			valid = req.TimeoutMs <= api.MaxExecTimeoutMs &&
				agent.ValidateExec(&agent.ExecRequest{Args: req.Args, Env: req.Env, Dir: req.Dir, TimeoutMS: req.TimeoutMs}) == nil
		}
		if valid && req.Stdin != "" {
			_, err := base64.StdEncoding.DecodeString(req.Stdin)
			valid = err == nil
		}
		if valid == rejected(rec) {
			t.Fatalf("id %q body %q: valid %v, status %d %s", id, body, valid, rec.Code, rec.Body.Bytes())
		}
	})
}

func FuzzAPIFiles(f *testing.F) {
	for _, s := range []struct {
		id, query string
		put       bool
	}{
		{"base", "path=/etc/hostname", false},
		{"base", "path=/tmp/x&perm=0600&parents=1", true},
		{"base", "path=../etc/passwd", false},
		{"base", "path=/a/../../etc/passwd", true},
		{"base", "path=%2Fa%00b", true},
		{"base", "path=/x&perm=99999", true},
		{"base", "path=/x&perm=-1", true},
		{"base", "", false},
		{"nope", "path=/x", false},
		{"..%2Fbase", "path=/x", false},
	} {
		f.Add(s.id, s.query, s.put)
	}
	fa := newFuzzAPI(f)
	f.Fuzz(func(t *testing.T, id, query string, put bool) {
		method := "GET"
		if put {
			method = "PUT"
		}
		rec, ok := fa.doOn(t, method, "/v1/vms/", id, "/files?"+query, []byte("data"))
		if !ok {
			return
		}
		fa.checkPastValidation(t, rec, hearth.KindGuestMetadata)
		// The query as the server sees it: a '#' starts the fragment,
		// which never reaches it.
		u, err := url.Parse("http://hearth/?" + query)
		if err != nil {
			return
		}
		q := u.Query()
		if _, _, err := agent.CleanPath(q.Get("path")); (err != nil || hearth.ValidateID(id) != nil) && !rejected(rec) {
			t.Fatalf("id %q path %q: status %d", id, q.Get("path"), rec.Code)
		}
	})
}

func FuzzAPIQuery(f *testing.F) {
	for _, s := range []struct {
		route uint8
		query string
	}{
		{0, "label=team=a&status=created"},
		{0, "label==x"},
		{0, "status=zombie"},
		{1, "tail=10"},
		{1, "tail=-1"},
		{1, "tail=99999999999999999999"},
		{2, "vm=base"},
	} {
		f.Add(s.route, s.query)
	}
	fa := newFuzzAPI(f)
	routes := []string{"/v1/vms", "/v1/vms/base/console", "/v1/snapshots", "/v1/vms/base", "/v1/snapshots/snap", "/v1/vms/base/stats", "/v1/system"}
	f.Fuzz(func(t *testing.T, route uint8, query string) {
		if strings.Contains(query, "follow") {
			return // streams until the request ends
		}
		rec, ok := fa.do(t, "GET", routes[int(route)%len(routes)]+"?"+query, nil)
		if !ok {
			return
		}
		fa.check(t, rec, 200, 400)
	})
}

// rejected reports an answer refusing the request as bad input: 400, or
// the 404/405 of a path no route matches (an id of only slashes).
func rejected(rec *httptest.ResponseRecorder) bool {
	if rec.Code == 400 {
		return true
	}
	var env api.ErrorEnvelope
	return (rec.Code == 404 || rec.Code == 405) && json.Unmarshal(rec.Body.Bytes(), &env) == nil && env.Error.Op == "route"
}

func strictDecode(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errTrailing
	}
	return nil
}

var errTrailing = &hearth.Error{Kind: hearth.KindInvalidArgument}
