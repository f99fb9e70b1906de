package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/api"
	"github.com/hearth-vm/hearth/api/client"
	"github.com/hearth-vm/hearth/metrics"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/memvmm"
)

type env struct {
	rt     *hearth.Runtime
	srv    *api.Server
	socket string
	c      *client.Client
	raw    *http.Client
	spec   hearth.Spec
}

// serve starts the API on a real unix socket over a runtime with the
// in-memory backend.
func serve(t *testing.T, opts ...func(*api.Options)) *env {
	t.Helper()
	dir := t.TempDir()
	k, r := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.ext4")
	os.WriteFile(k, []byte("k"), 0o600)
	os.WriteFile(r, []byte("r"), 0o600)
	broker := api.NewBroker()
	rt, err := hearth.Open(context.Background(), hearth.Config{StateDir: filepath.Join(dir, "state"),
		Backends: []vmm.Backend{memvmm.New()}, OnEvent: broker.Publish})
	if err != nil {
		t.Fatal(err)
	}
	sockDir, err := os.MkdirTemp("", "hapi")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(sockDir, "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	o := api.Options{Version: "test", Events: broker}
	for _, f := range opts {
		f(&o)
	}
	srv := api.NewServer(rt, o)
	hs := &http.Server{Handler: srv}
	go hs.Serve(l)
	t.Cleanup(func() {
		hs.Close()
		rt.Close()
		os.RemoveAll(sockDir)
	})
	raw := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	return &env{rt: rt, srv: srv, socket: sock, c: client.New(sock), raw: raw, spec: hearth.Spec{Kernel: k, Rootfs: r}}
}

func (e *env) send(t *testing.T, method, path, body string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://hearth"+path, strings.NewReader(body))
	resp, err := e.raw.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestLifecycleOverSocket(t *testing.T) {
	ctx := context.Background()
	e := serve(t)
	c := e.c
	events, err := c.Events(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	spec := e.spec
	spec.Labels = map[string]string{"team": "a"}
	if v, err := c.Create(ctx, "vm1", spec); err != nil || v.Status != hearth.StatusCreated {
		t.Fatalf("create: %+v %v", v, err)
	}
	if v, err := c.CreateAndStart(ctx, "vm2", e.spec); err != nil || v.Status != hearth.StatusRunning {
		t.Fatalf("create+start: %+v %v", v, err)
	}
	steps := []struct {
		name string
		call func() (hearth.View, error)
		want hearth.Status
	}{
		{"start", func() (hearth.View, error) { return c.Start(ctx, "vm1") }, hearth.StatusRunning},
		{"pause", func() (hearth.View, error) { return c.Pause(ctx, "vm1") }, hearth.StatusPaused},
		{"resume", func() (hearth.View, error) { return c.Resume(ctx, "vm1") }, hearth.StatusRunning},
		{"get", func() (hearth.View, error) { return c.Get(ctx, "vm1") }, hearth.StatusRunning},
	}
	for _, s := range steps {
		if v, err := s.call(); err != nil || v.Status != s.want {
			t.Fatalf("%s: %+v %v", s.name, v, err)
		}
	}
	if _, err := c.Snapshot(ctx, "vm1", "s1"); err != nil {
		t.Fatal(err)
	}
	if snaps, err := c.Snapshots(ctx); err != nil || len(snaps) != 1 {
		t.Fatalf("snapshots: %v %v", snaps, err)
	}
	if sv, err := c.GetSnapshot(ctx, "s1"); err != nil || sv.SourceVM != "vm1" {
		t.Fatalf("get snapshot: %+v %v", sv, err)
	}
	if v, err := c.Restore(ctx, hearth.RestoreSpec{Snapshot: "s1", VM: "clone", Paused: true}); err != nil || v.Status != hearth.StatusPaused {
		t.Fatalf("restore: %+v %v", v, err)
	}
	if v, err := c.Rename(ctx, "clone", "claimed"); err != nil || v.ID != "claimed" {
		t.Fatalf("rename: %+v %v", v, err)
	}
	if v, err := c.Stop(ctx, "vm2"); err != nil || v.Status != hearth.StatusStopped {
		t.Fatalf("stop: %+v %v", v, err)
	}
	if l, err := c.ListFiltered(ctx, []string{"team=a"}, ""); err != nil || len(l) != 2 { // vm1 and its clone
		t.Fatalf("label filter: %v %v", l, err)
	}
	if l, err := c.ListFiltered(ctx, nil, hearth.StatusStopped); err != nil || len(l) != 1 || l[0].ID != "vm2" {
		t.Fatalf("status filter: %v %v", l, err)
	}
	sys, err := c.System(ctx)
	if err != nil || sys.Version != "test" || sys.DefaultBackend != "mem" {
		t.Fatalf("system: %+v %v", sys, err)
	}
	for _, id := range []string{"vm1", "vm2", "claimed"} {
		if err := c.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if l, _ := c.List(ctx); len(l) != 0 {
		t.Fatalf("left: %v", l)
	}
	// The event stream saw the whole story.
	var types []string
	timeout := time.After(5 * time.Second)
	for len(types) < 13 {
		select {
		case ev := <-events:
			types = append(types, ev.VM+":"+ev.Type)
		case <-timeout:
			t.Fatalf("events so far: %v", types)
		}
	}
	if types[0] != "vm1:created" || !contains(types, "clone:restored") || !contains(types, "claimed:renamed") {
		t.Fatalf("events: %v", types)
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestErrorsOverSocket(t *testing.T) {
	ctx := context.Background()
	e := serve(t)
	if _, err := e.c.Create(ctx, "vm1", e.spec); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, method, path, body string
		status                   int
		kind                     hearth.Kind
	}{
		{"not found", "GET", "/v1/vms/nope", "", 404, hearth.KindVMNotFound},
		{"snapshot not found", "GET", "/v1/snapshots/nope", "", 404, hearth.KindSnapshotNotFound},
		{"exists", "POST", "/v1/vms", `{"id":"vm1","spec":{"kernel":"` + e.spec.Kernel + `","rootfs":"` + e.spec.Rootfs + `"}}`, 409, hearth.KindVMAlreadyExists},
		{"transition", "POST", "/v1/vms/vm1/pause", "", 409, hearth.KindInvalidTransition},
		{"invalid id", "POST", "/v1/vms", `{"id":"../x"}`, 400, hearth.KindInvalidArgument},
		{"malformed", "POST", "/v1/vms", `{"id":`, 400, hearth.KindInvalidArgument},
		{"unknown field", "POST", "/v1/vms", `{"id":"x","bogus":1}`, 400, hearth.KindInvalidArgument},
		{"unknown spec field", "POST", "/v1/vms", `{"id":"x","spec":{"vcpu":1}}`, 400, hearth.KindInvalidArgument},
		{"wrong type", "POST", "/v1/vms", `{"id":5}`, 400, hearth.KindInvalidArgument},
		{"trailing data", "POST", "/v1/vms", `{"id":"x"} {}`, 400, hearth.KindInvalidArgument},
		{"oversize", "POST", "/v1/vms", `{"id":"x","spec":{"boot_args":"` + strings.Repeat("a", api.MaxBodyBytes) + `"}}`, 400, hearth.KindInvalidArgument},
		{"bad label filter", "GET", "/v1/vms?label==x", "", 400, hearth.KindInvalidArgument},
		{"bad status filter", "GET", "/v1/vms?status=zombie", "", 400, hearth.KindInvalidArgument},
		{"stats of unknown vm", "GET", "/v1/vms/nope/stats", "", 404, hearth.KindVMNotFound},
		{"metrics disabled", "GET", "/metrics", "", 501, hearth.KindUnsupported},
		{"exec without args", "POST", "/v1/vms/vm1/exec", `{"args":[]}`, 400, hearth.KindInvalidArgument},
		{"exec in a VM without agent", "POST", "/v1/vms/vm1/exec", `{"args":["true"]}`, 500, hearth.KindGuestMetadata},
		{"egress without network", "PUT", "/v1/vms/vm1/egress", `{"allow":["tcp:10.0.0.0/8:443"]}`, 500, hearth.KindNetworkConfig},
		{"bad egress rule", "PUT", "/v1/vms/vm1/egress", `{"allow":["tcp:bogus"]}`, 400, hearth.KindInvalidArgument},
		{"verify unknown snapshot", "POST", "/v1/snapshots/nope/verify", "", 404, hearth.KindSnapshotNotFound},
		{"gc negative", "POST", "/v1/snapshots/gc", `{"keep_per_vm":-1}`, 400, hearth.KindInvalidArgument},
		{"gc unknown field", "POST", "/v1/snapshots/gc", `{"keep":1}`, 400, hearth.KindInvalidArgument},
		{"file of unknown vm", "GET", "/v1/vms/nope/files?path=/etc/hostname", "", 404, hearth.KindVMNotFound},
		{"file of a VM without agent", "PUT", "/v1/vms/vm1/files?path=/x", "data", 500, hearth.KindGuestMetadata},
		{"console of unknown vm", "GET", "/v1/vms/nope/console", "", 404, hearth.KindVMNotFound},
		{"bad tail", "GET", "/v1/vms/vm1/console?tail=-1", "", 400, hearth.KindInvalidArgument},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, b := e.send(t, c.method, c.path, c.body)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, b)
			}
			var env api.ErrorEnvelope
			if err := json.Unmarshal(b, &env); err != nil || env.Error.Kind != c.kind || env.Error.Message == "" {
				t.Fatalf("body %s (%v)", b, err)
			}
		})
	}
	var buf strings.Builder
	if err := e.c.Console(ctx, "vm1", 10, false, &buf); err != nil || buf.Len() != 0 {
		t.Fatalf("console of a VM without output: %q %v", buf.String(), err)
	}
	// Through the client, errors keep their kind and fields.
	_, err := e.c.Pause(ctx, "vm1")
	var he *hearth.Error
	if !errors.Is(err, hearth.ErrInvalidTransition) || !errors.As(err, &he) || he.VM != "vm1" || he.From != "created" {
		t.Fatalf("client error: %#v", err)
	}
	if l, _ := e.c.List(ctx); len(l) != 1 {
		t.Fatalf("failed requests changed state: %v", l)
	}
}

type errRuntime struct{ err error }

func (f errRuntime) Create(context.Context, string, hearth.Spec) (hearth.View, error) {
	return hearth.View{}, f.err
}
func (f errRuntime) Get(context.Context, string) (hearth.View, error)    { return hearth.View{}, f.err }
func (f errRuntime) List(context.Context) ([]hearth.View, error)         { return nil, f.err }
func (f errRuntime) Start(context.Context, string) (hearth.View, error)  { return hearth.View{}, f.err }
func (f errRuntime) Pause(context.Context, string) (hearth.View, error)  { return hearth.View{}, f.err }
func (f errRuntime) Resume(context.Context, string) (hearth.View, error) { return hearth.View{}, f.err }
func (f errRuntime) Stop(context.Context, string) (hearth.View, error)   { return hearth.View{}, f.err }
func (f errRuntime) Destroy(context.Context, string) error               { return f.err }
func (f errRuntime) Rename(context.Context, string, string) (hearth.View, error) {
	return hearth.View{}, f.err
}
func (f errRuntime) Snapshot(context.Context, string, string) (hearth.SnapshotView, error) {
	return hearth.SnapshotView{}, f.err
}
func (f errRuntime) Restore(context.Context, hearth.RestoreSpec) (hearth.View, error) {
	return hearth.View{}, f.err
}
func (f errRuntime) Snapshots(context.Context) ([]hearth.SnapshotView, error) { return nil, f.err }
func (f errRuntime) GetSnapshot(context.Context, string) (hearth.SnapshotView, error) {
	return hearth.SnapshotView{}, f.err
}
func (f errRuntime) DeleteSnapshot(context.Context, string) error { return f.err }
func (f errRuntime) VerifySnapshot(context.Context, string) error { return f.err }
func (f errRuntime) GCSnapshots(context.Context, hearth.GCPolicy) ([]string, error) {
	return nil, f.err
}
func (f errRuntime) Stats(context.Context, string) (metrics.Stats, error) {
	return metrics.Stats{}, f.err
}
func (f errRuntime) Agent(context.Context, string) (*agent.Client, error) { return nil, f.err }
func (f errRuntime) Exec(context.Context, string, *agent.Cmd) (*agent.ExitStatus, error) {
	return nil, f.err
}
func (f errRuntime) SetEgress(context.Context, string, []string, []string) error { return f.err }
func (f errRuntime) SetRateLimits(context.Context, string, hearth.RateLimits) (hearth.View, error) {
	return hearth.View{}, f.err
}
func (f errRuntime) ConsoleTail(context.Context, string, int) ([]string, error) { return nil, f.err }
func (f errRuntime) ConsoleFollow(context.Context, string, io.Writer) error     { return f.err }
func (f errRuntime) Reconciled() hearth.ReconcileReport                         { return hearth.ReconcileReport{} }
func (f errRuntime) Backends() []string                                         { return nil }
func (f errRuntime) DefaultBackend() string                                     { return "" }
func (f errRuntime) StateDir() string                                           { return "" }

func TestEveryKindMapsToStatus(t *testing.T) {
	want := map[hearth.Kind]int{
		hearth.KindVMNotFound: 404, hearth.KindSnapshotNotFound: 404, hearth.KindImageNotFound: 404,
		hearth.KindVMAlreadyExists: 409, hearth.KindSnapshotAlreadyExists: 409, hearth.KindImageAlreadyExists: 409, hearth.KindInvalidTransition: 409,
		hearth.KindInvalidArgument: 400, hearth.KindUnsupported: 501, hearth.KindVMM: 502,
		hearth.KindTimeout: 504, hearth.KindResourceExhausted: 503,
	}
	for _, k := range hearth.Kinds() {
		t.Run(k.String(), func(t *testing.T) {
			cause := error(errors.New("cause"))
			if k == hearth.KindVMM {
				cause = &vmm.RequestError{Method: "PUT", Path: "/drives/rootfs", Status: 400, Body: "no such file"}
			}
			srv := api.NewServer(errRuntime{err: &hearth.Error{Kind: k, Op: "start", VM: "v", Err: cause}}, api.Options{})
			hs := &http.Server{Handler: srv}
			sock := filepath.Join(shortTemp(t), "api.sock")
			l, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			go hs.Serve(l)
			defer hs.Close()
			c := client.New(sock)
			defer c.Close()
			_, err = c.Start(context.Background(), "v")
			// The status on the wire, not only the mapping.
			req, _ := http.NewRequest("POST", "http://hearth/v1/vms/v/start", nil)
			resp, rerr := (&http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", sock)
			}}}).Do(req)
			if rerr != nil {
				t.Fatal(rerr)
			}
			resp.Body.Close()
			exp, ok := want[k]
			if !ok {
				exp = 500
			}
			if got := api.StatusOf(k); got != exp || resp.StatusCode != exp {
				t.Fatalf("StatusOf = %d, on the wire %d, want %d", got, resp.StatusCode, exp)
			}
			if hearth.KindOf(err) != k {
				t.Fatalf("client saw kind %s: %v", hearth.KindOf(err), err)
			}
			if k == hearth.KindVMM {
				var re *vmm.RequestError
				if !errors.As(err, &re) || re.Path != "/drives/rootfs" || re.Status != 400 {
					t.Fatalf("VMM details lost: %#v", err)
				}
			}
		})
	}
}

func TestTCPNeedsToken(t *testing.T) {
	e := serve(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: api.WithToken("s3cret", e.srv)}
	go hs.Serve(l)
	defer hs.Close()
	ctx := context.Background()
	for _, tok := range []string{"", "wrong"} {
		if _, err := client.NewTCP(l.Addr().String(), tok).List(ctx); err == nil {
			t.Fatalf("token %q accepted", tok)
		}
	}
	resp, err := http.Get("http://" + l.Addr().String() + "/v1/vms")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no token: %d", resp.StatusCode)
	}
	if _, err := client.NewTCP(l.Addr().String(), "s3cret").List(ctx); err != nil {
		t.Fatal(err)
	}
	// An empty configured token refuses everything rather than allowing all.
	l2, _ := net.Listen("tcp", "127.0.0.1:0")
	hs2 := &http.Server{Handler: api.WithToken("", e.srv)}
	go hs2.Serve(l2)
	defer hs2.Close()
	if _, err := client.NewTCP(l2.Addr().String(), "").List(ctx); err == nil {
		t.Fatal("empty token accepted")
	}
}

func TestConcurrentClients(t *testing.T) {
	ctx := context.Background()
	e := serve(t)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := client.New(e.socket)
			defer c.Close()
			id := fmt.Sprintf("vm%d", i)
			if _, err := c.CreateAndStart(ctx, id, e.spec); err != nil {
				errs <- err
				return
			}
			if _, err := c.List(ctx); err != nil {
				errs <- err
			}
			if err := c.Destroy(ctx, id); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestOpenAPIMatchesRoutes validates the checked-in document and checks
// that it describes exactly the routes the server serves.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	e := serve(t)
	resp, b := e.send(t, "GET", "/v1/openapi.json", "")
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	doc, err := openapi3.NewLoader().LoadFromData(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi document invalid: %v", err)
	}
	var documented, served []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+path)
		}
	}
	for _, r := range e.srv.Routes() {
		served = append(served, r.Method+" "+r.Path)
	}
	sort.Strings(documented)
	sort.Strings(served)
	if strings.Join(documented, "\n") != strings.Join(served, "\n") {
		t.Fatalf("routes and document differ:\ndocumented:\n%s\nserved:\n%s", strings.Join(documented, "\n"), strings.Join(served, "\n"))
	}
}
