package api_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/api"
)

// badStrings are hostile values for any name-like string field: path
// traversal, absolute and nested paths, control characters, oversize,
// and Unicode look-alikes of valid names.
var badStrings = []struct{ name, v string }{
	{"dotdot", "../x"},
	{"dotdot only", ".."},
	{"dot", "."},
	{"absolute", "/abs"},
	{"nested", "a/b"},
	{"backslash", `a\b`},
	{"NUL", "a\x00b"},
	{"newline", "a\nb"},
	{"CR", "a\rb"},
	{"tab", "a\tb"},
	{"space", "a b"},
	{"empty", ""},
	{"1 MiB", strings.Repeat("a", 1<<20)},
	{"64 chars", strings.Repeat("a", 64)},
	{"leading dash", "-rf"},
	{"percent-encoded dotdot", "%2e%2e"},
	{"fraction slash", "..\u2215x"},
	{"fullwidth", "\uff56\uff4d"},
	{"zero-width space", "vm\u200b"},
	{"right-to-left override", "vm\u202e1"},
	{"cyrillic a", "b\u0430se"},
	{"invalid UTF-8", "vm\xff"},
	{"combining dot", "vm\u0307"},
}

// snapshotDirState lists every file of the state dir with its size and
// mode, to prove a refused request wrote nothing.
func stateFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		size := fi.Size()
		if fi.IsDir() {
			size = 0
		}
		out = append(out, fmt.Sprintf("%s %v %d", rel, fi.Mode(), size))
		return nil
	})
	return out
}

// TestBadInputEveryField sends every hostile string in every string
// field of every route to a daemon on a real unix socket: each must be
// refused with 400 invalid_argument and a bounded answer, and leave the
// VMs, the snapshots and the state dir exactly as they were.
func TestBadInputEveryField(t *testing.T) {
	ctx := context.Background()
	e := serve(t)
	if _, err := e.c.Create(ctx, "base", e.spec); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Start(ctx, "base"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Snapshot(ctx, "base", "snap"); err != nil {
		t.Fatal(err)
	}
	stateDir := e.rt.StateDir()
	vms := func() []string {
		l, err := e.c.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, v := range l {
			ids = append(ids, v.ID)
		}
		return ids
	}
	snaps := func() []string {
		l, err := e.c.Snapshots(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range l {
			names = append(names, s.Name)
		}
		return names
	}
	wantVMs, wantSnaps, wantFiles := vms(), snaps(), stateFiles(t, stateDir)

	js := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	spec := func(mod func(s *hearth.Spec)) hearth.Spec {
		s := e.spec
		mod(&s)
		return s
	}
	// "", "." and ".." cannot travel as path segments: URL dot-segment
	// removal (client and mux) turns them into another route. The
	// fields taking path segments skip them (segOK).
	seg := url.PathEscape
	segOK := func(s string) bool { return s == "" || s == "." || s == ".." }
	q := url.QueryEscape
	// Each field takes the hostile value s and builds a request. A
	// value a field legitimately accepts (e.g. "/abs" as a kernel path)
	// is skipped by accepts.
	type req struct{ method, path, body string }
	fields := []struct {
		name    string
		build   func(s string) req
		accepts func(s string) bool
	}{
		{"create id", func(s string) req { return req{"POST", "/v1/vms", js(api.CreateRequest{ID: s, Spec: e.spec})} }, nil},
		{"create image", func(s string) req {
			return req{"POST", "/v1/vms", js(api.CreateRequest{ID: "n", Spec: hearth.Spec{Image: s}})}
		}, nil},
		{"create kernel", func(s string) req {
			return req{"POST", "/v1/vms", js(api.CreateRequest{ID: "n", Spec: spec(func(sp *hearth.Spec) { sp.Kernel = s })})}
		}, nil},
		{"create rootfs", func(s string) req {
			return req{"POST", "/v1/vms", js(api.CreateRequest{ID: "n", Spec: spec(func(sp *hearth.Spec) { sp.Rootfs = s })})}
		}, nil},
		{"create initrd", func(s string) req {
			return req{"POST", "/v1/vms", js(api.CreateRequest{ID: "n", Spec: spec(func(sp *hearth.Spec) { sp.Initrd = s })})}
		}, func(s string) bool { return s == "" }},
		{"create backend", func(s string) req {
			return req{"POST", "/v1/vms", js(api.CreateRequest{ID: "n", Spec: spec(func(sp *hearth.Spec) { sp.Backend = s })})}
		}, func(s string) bool { return s == "" }},
		{"create boot args", func(s string) req {
			return req{"POST", "/v1/vms", js(api.CreateRequest{ID: "n", Spec: spec(func(sp *hearth.Spec) { sp.BootArgs = s })})}
		}, func(s string) bool { return !strings.ContainsAny(s, "\n\x00") && len(s) <= hearth.MaxBootArgs }},
		{"create drive id", func(s string) req {
			return req{"POST", "/v1/vms", js(api.CreateRequest{ID: "n", Spec: spec(func(sp *hearth.Spec) {
				sp.Drives = []hearth.DriveSpec{{ID: s, Path: e.spec.Rootfs, ReadOnly: true}}
			})})}
		}, nil},
		{"create drive path", func(s string) req {
			return req{"POST", "/v1/vms", js(api.CreateRequest{ID: "n", Spec: spec(func(sp *hearth.Spec) {
				sp.Drives = []hearth.DriveSpec{{ID: "d", Path: s}}
			})})}
		}, nil},
		{"create label key", func(s string) req {
			return req{"POST", "/v1/vms", js(api.CreateRequest{ID: "n", Spec: spec(func(sp *hearth.Spec) { sp.Labels = map[string]string{s: "v"} })})}
		}, func(s string) bool { return s != "" && len(s) <= 63 && !strings.ContainsAny(s, "=\n\x00") }},
		{"create label value", func(s string) req {
			return req{"POST", "/v1/vms", js(api.CreateRequest{ID: "n", Spec: spec(func(sp *hearth.Spec) { sp.Labels = map[string]string{"k": s} })})}
		}, func(s string) bool { return len(s) <= 256 && !strings.ContainsAny(s, "\n\x00") }},
		{"create egress rule", func(s string) req {
			return req{"POST", "/v1/vms", js(api.CreateRequest{ID: "n", Spec: spec(func(sp *hearth.Spec) { sp.Network = &hearth.NetworkSpec{Allow: []string{s}} })})}
		}, nil},
		{"create dns", func(s string) req {
			return req{"POST", "/v1/vms", js(api.CreateRequest{ID: "n", Spec: spec(func(sp *hearth.Spec) { sp.Network = &hearth.NetworkSpec{DNS: []string{s}} })})}
		}, nil},
		{"get id", func(s string) req { return req{"GET", "/v1/vms/" + seg(s), ""} }, segOK},
		{"destroy id", func(s string) req { return req{"DELETE", "/v1/vms/" + seg(s), ""} }, segOK},
		{"start id", func(s string) req { return req{"POST", "/v1/vms/" + seg(s) + "/start", ""} }, segOK},
		{"pause id", func(s string) req { return req{"POST", "/v1/vms/" + seg(s) + "/pause", ""} }, segOK},
		{"resume id", func(s string) req { return req{"POST", "/v1/vms/" + seg(s) + "/resume", ""} }, segOK},
		{"stop id", func(s string) req { return req{"POST", "/v1/vms/" + seg(s) + "/stop", ""} }, segOK},
		{"stats id", func(s string) req { return req{"GET", "/v1/vms/" + seg(s) + "/stats", ""} }, segOK},
		{"rename id", func(s string) req {
			return req{"POST", "/v1/vms/" + seg(s) + "/rename", js(api.RenameRequest{NewID: "n"})}
		}, nil},
		{"rename new id", func(s string) req {
			return req{"POST", "/v1/vms/base/rename", js(api.RenameRequest{NewID: s})}
		}, nil},
		{"snapshot id", func(s string) req {
			return req{"POST", "/v1/vms/" + seg(s) + "/snapshots", js(api.SnapshotRequest{Name: "n"})}
		}, nil},
		{"snapshot name", func(s string) req {
			return req{"POST", "/v1/vms/base/snapshots", js(api.SnapshotRequest{Name: s})}
		}, nil},
		{"get snapshot", func(s string) req { return req{"GET", "/v1/snapshots/" + seg(s), ""} }, segOK},
		{"delete snapshot", func(s string) req { return req{"DELETE", "/v1/snapshots/" + seg(s), ""} }, segOK},
		{"verify snapshot", func(s string) req { return req{"POST", "/v1/snapshots/" + seg(s) + "/verify", ""} }, segOK},
		{"restore snapshot", func(s string) req {
			return req{"POST", "/v1/snapshots/" + seg(s) + "/restore", js(api.RestoreRequest{VM: "n"})}
		}, nil},
		{"restore vm", func(s string) req {
			return req{"POST", "/v1/snapshots/snap/restore", js(api.RestoreRequest{VM: s})}
		}, nil},
		{"restore memory backend", func(s string) req {
			return req{"POST", "/v1/snapshots/snap/restore", js(api.RestoreRequest{VM: "n", MemoryBackend: s})}
		}, func(s string) bool { return s == "" }},
		{"restore label key", func(s string) req {
			return req{"POST", "/v1/snapshots/snap/restore", js(api.RestoreRequest{VM: "n", Labels: map[string]string{s: "v"}})}
		}, func(s string) bool { return s != "" && len(s) <= 63 && !strings.ContainsAny(s, "=\n\x00") }},
		{"egress id", func(s string) req {
			return req{"PUT", "/v1/vms/" + seg(s) + "/egress", js(api.EgressRequest{Allow: []string{"tcp:10.0.0.0/8:443"}})}
		}, nil},
		{"egress rule", func(s string) req {
			return req{"PUT", "/v1/vms/base/egress", js(api.EgressRequest{Allow: []string{s}})}
		}, nil},
		{"egress dns", func(s string) req {
			return req{"PUT", "/v1/vms/base/egress", js(api.EgressRequest{DNS: []string{s}})}
		}, nil},
		{"exec id", func(s string) req {
			return req{"POST", "/v1/vms/" + seg(s) + "/exec", js(api.ExecRequest{Args: []string{"true"}})}
		}, nil},
		{"exec argv0", func(s string) req {
			return req{"POST", "/v1/vms/base/exec", js(api.ExecRequest{Args: []string{s}})}
		}, func(s string) bool { return s != "" && !strings.Contains(s, "\x00") }},
		{"exec env key", func(s string) req {
			return req{"POST", "/v1/vms/base/exec", js(api.ExecRequest{Args: []string{"true"}, Env: map[string]string{s: "v"}})}
		}, func(s string) bool { return agent.ValidateEnvKey(s) == nil }},
		{"exec env value", func(s string) req {
			return req{"POST", "/v1/vms/base/exec", js(api.ExecRequest{Args: []string{"true"}, Env: map[string]string{"K": s}})}
		}, func(s string) bool { return !strings.ContainsAny(s, "\n\r\x00") && len(s) <= 128<<10 }},
		{"exec dir", func(s string) req {
			return req{"POST", "/v1/vms/base/exec", js(api.ExecRequest{Args: []string{"true"}, Dir: s})}
		}, func(s string) bool {
			return s == "" || (strings.HasPrefix(s, "/") && !strings.Contains(s, "\x00") && len(s) <= 4096)
		}},
		{"exec stdin", func(s string) req {
			return req{"POST", "/v1/vms/base/exec", js(api.ExecRequest{Args: []string{"true"}, Stdin: s})}
		}, func(s string) bool { _, err := base64.StdEncoding.DecodeString(s); return err == nil }},
		{"put file id", func(s string) req { return req{"PUT", "/v1/vms/" + seg(s) + "/files?path=/x", "data"} }, segOK},
		{"put file path", func(s string) req { return req{"PUT", "/v1/vms/base/files?path=" + q(s), "data"} }, guestPathOK},
		{"put file perm", func(s string) req { return req{"PUT", "/v1/vms/base/files?path=/x&perm=" + q(s), "data"} }, func(s string) bool { return s == "" }},
		{"get file id", func(s string) req { return req{"GET", "/v1/vms/" + seg(s) + "/files?path=/x", ""} }, segOK},
		{"get file path", func(s string) req { return req{"GET", "/v1/vms/base/files?path=" + q(s), ""} }, guestPathOK},
		{"console id", func(s string) req { return req{"GET", "/v1/vms/" + seg(s) + "/console", ""} }, segOK},
		{"console tail", func(s string) req { return req{"GET", "/v1/vms/base/console?tail=" + q(s), ""} }, func(s string) bool { return s == "" }},
		{"patch id", func(s string) req { return req{"PATCH", "/v1/vms/" + seg(s), "{}"} }, segOK},
		{"get image", func(s string) req { return req{"GET", "/v1/images/" + seg(s), ""} }, segOK},
		{"delete image", func(s string) req { return req{"DELETE", "/v1/images/" + seg(s), ""} }, segOK},
		{"verify image", func(s string) req { return req{"POST", "/v1/images/" + seg(s) + "/verify", ""} }, segOK},
		{"list label filter", func(s string) req { return req{"GET", "/v1/vms?label=" + q("="+s), ""} }, nil},
		{"list status filter", func(s string) req { return req{"GET", "/v1/vms?status=" + q(s), ""} }, func(s string) bool { return s == "" }},
	}
	for _, f := range fields {
		for _, b := range badStrings {
			if f.accepts != nil && f.accepts(b.v) {
				continue
			}
			t.Run(f.name+"/"+b.name, func(t *testing.T) {
				r := f.build(b.v)
				resp, body := e.send(t, r.method, r.path, r.body)
				var env api.ErrorEnvelope
				if err := json.Unmarshal(body, &env); err != nil {
					t.Fatalf("%s %.80s: %d, not an error envelope: %.300s", r.method, r.path, resp.StatusCode, body)
				}
				// A path no route matches ("/" as an id) keeps the mux's
				// 404 or 405, still with an invalid_argument envelope.
				route := env.Error.Op == "route" && (resp.StatusCode == 404 || resp.StatusCode == 405)
				if (resp.StatusCode != 400 && !route) || env.Error.Kind != hearth.KindInvalidArgument {
					t.Fatalf("%s %.80s: %d %s: %.300s", r.method, r.path, resp.StatusCode, env.Error.Kind, body)
				}
				if len(body) > 16<<10 {
					t.Fatalf("answer of %d bytes echoes the input", len(body))
				}
			})
		}
	}
	if got := vms(); !slices.Equal(got, wantVMs) {
		t.Errorf("VMs changed: %v, were %v", got, wantVMs)
	}
	if got := snaps(); !slices.Equal(got, wantSnaps) {
		t.Errorf("snapshots changed: %v, were %v", got, wantSnaps)
	}
	if got := stateFiles(t, stateDir); !slices.Equal(got, wantFiles) {
		t.Errorf("state dir changed:\n%s\nwas:\n%s", strings.Join(got, "\n"), strings.Join(wantFiles, "\n"))
	}
}

// guestPathOK reports the guest paths the API passes on to the agent.
func guestPathOK(s string) bool {
	return strings.HasPrefix(s, "/") && !strings.Contains(s, "\x00") && len(s) <= 4096 &&
		!slices.Contains(strings.Split(s, "/"), "..")
}

// TestGuestPathsStayInTheGuest: a guest path the API accepts is only ever
// interpreted by the agent, inside the guest. Pointed at files of the
// host (the daemon's own state, a file next to it), a put or get through a
// VM that cannot take it changes and reveals nothing on the host.
func TestGuestPathsStayInTheGuest(t *testing.T) {
	ctx := context.Background()
	e := serve(t)
	if _, err := e.c.Create(ctx, "base", e.spec); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Start(ctx, "base"); err != nil {
		t.Fatal(err)
	}
	stateDir := e.rt.StateDir()
	victim := filepath.Join(filepath.Dir(stateDir), "victim")
	if err := os.WriteFile(victim, []byte("host secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := stateFiles(t, filepath.Dir(stateDir))
	for _, p := range []string{victim, filepath.Join(stateDir, "hearth.db"), filepath.Join(filepath.Dir(stateDir), "new-file"), "/etc/passwd"} {
		for _, m := range []string{"PUT", "GET"} {
			resp, body := e.send(t, m, "/v1/vms/base/files?path="+url.QueryEscape(p), "overwritten")
			var env api.ErrorEnvelope
			if json.Unmarshal(body, &env) != nil || resp.StatusCode < 400 || strings.Contains(string(body), "host secret") {
				t.Fatalf("%s %s through a VM without agent: %d %.300s", m, p, resp.StatusCode, body)
			}
		}
	}
	if got := stateFiles(t, filepath.Dir(stateDir)); !slices.Equal(got, before) {
		t.Errorf("host files changed:\n%s\nwere:\n%s", strings.Join(got, "\n"), strings.Join(before, "\n"))
	}
	if b, _ := os.ReadFile(victim); string(b) != "host secret" {
		t.Errorf("victim now holds %q", b)
	}
}
