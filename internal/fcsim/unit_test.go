package fcsim

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseFaults(t *testing.T) {
	tests := []struct {
		spec    string
		wantErr bool
		check   func(*faults) bool
	}{
		{"", false, func(f *faults) bool { return !f.start && !f.ready && len(f.api) == 0 }},
		{"start", false, func(f *faults) bool { return f.start }},
		{"ready, snapshot-enospc", false, func(f *faults) bool { return f.ready && f.enospc }},
		{"api:put:/machine-config", false, func(f *faults) bool {
			return f.match(f.api, "PUT", "/machine-config") && !f.match(f.api, "GET", "/machine-config")
		}},
		{"crash:PUT:/actions,hang:PATCH:/vm", false, func(f *faults) bool {
			return f.match(f.crash, "PUT", "/actions") && f.match(f.hang, "PATCH", "/vm")
		}},
		{"api:PUT:/drives/*", false, func(f *faults) bool {
			return f.match(f.api, "PUT", "/drives/rootfs") && !f.match(f.api, "PUT", "/vsock")
		}},
		{"boom", true, nil},
		{"api:PUT", true, nil},
		{"api:PUT:drives", true, nil},
		{"explode:PUT:/x", true, nil},
	}
	for _, tc := range tests {
		f, err := parseFaults(tc.spec)
		if (err != nil) != tc.wantErr {
			t.Errorf("%q: err = %v", tc.spec, err)
			continue
		}
		if err == nil && !tc.check(f) {
			t.Errorf("%q: parsed %+v", tc.spec, f)
		}
	}
}

func TestHangAt(t *testing.T) {
	file := filepath.Join(t.TempDir(), "hang")
	type req struct{ method, path string }
	tests := []struct {
		name, spec string
		file       string // written before the checks when not empty
		wantErr    bool
		hang, pass []req
	}{
		{name: "none", pass: []req{{"GET", "/"}}},
		{name: "one", spec: "PATCH /vm", hang: []req{{"PATCH", "/vm"}, {"patch", "/vm"}}, pass: []req{{"PUT", "/vm"}, {"PATCH", "/vm/x"}}},
		{name: "any method, prefix", spec: "* /snapshot/*, PUT /actions", hang: []req{{"PUT", "/snapshot/create"}, {"GET", "/snapshot/x"}, {"PUT", "/actions"}}, pass: []req{{"GET", "/"}}},
		{name: "file absent", spec: "@" + file, pass: []req{{"PATCH", "/vm"}}},
		{name: "file", spec: "@" + file, file: "PATCH /vm\n* /actions\n", hang: []req{{"PATCH", "/vm"}, {"PUT", "/actions"}}, pass: []req{{"GET", "/"}}},
		{name: "no path", spec: "PATCH", wantErr: true},
		{name: "relative path", spec: "PATCH vm", wantErr: true},
		{name: "empty file name", spec: "@", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(file)
			if tc.file != "" {
				if err := os.WriteFile(file, []byte(tc.file), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			f := &faults{}
			err := f.parseHangAt(tc.spec)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			for _, r := range tc.hang {
				if !f.hangs(r.method, r.path) {
					t.Errorf("%s %s not hung", r.method, r.path)
				}
			}
			for _, r := range tc.pass {
				if f.hangs(r.method, r.path) {
					t.Errorf("%s %s hung", r.method, r.path)
				}
			}
		})
	}
}

func TestParseGuestCmd(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{"/bin/agent --port 52", []string{"/bin/agent", "--port", "52"}, false},
		{`["/bin/agent", "--name", "a b"]`, []string{"/bin/agent", "--name", "a b"}, false},
		{"  ", nil, true},
		{"[]", nil, true},
		{"[1]", nil, true},
	}
	for _, tc := range tests {
		got, err := parseGuestCmd(tc.in)
		if (err != nil) != tc.wantErr || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: got %v, %v", tc.in, got, err)
		}
	}
}

func TestMergePatch(t *testing.T) {
	tests := []struct{ target, patch, want string }{
		{`{"a":1,"b":{"c":2}}`, `{"b":{"c":null,"d":3}}`, `{"a":1,"b":{"d":3}}`},
		{`{"a":1}`, `{"a":null}`, `{}`},
		{`{"a":[1]}`, `{"a":[2,3]}`, `{"a":[2,3]}`},
		{`"x"`, `{"a":1}`, `{"a":1}`},
	}
	for _, tc := range tests {
		var target, patch, want any
		_ = json.Unmarshal([]byte(tc.target), &target)
		_ = json.Unmarshal([]byte(tc.patch), &patch)
		_ = json.Unmarshal([]byte(tc.want), &want)
		if got := mergePatch(target, patch); !reflect.DeepEqual(got, want) {
			t.Errorf("merge %s with %s = %v, want %v", tc.target, tc.patch, got, want)
		}
	}
}

func TestVMStateCRC(t *testing.T) {
	st := &VMState{Magic: VMStateMagic, Version: VMStateVersion, VMID: "a", Config: json.RawMessage(`{}`), Memory: VMStateMemory{SizeBytes: 4096}}
	data, err := encodeVMState(st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decodeVMState(data); err != nil {
		t.Fatalf("round trip: %v", err)
	}
	tests := []struct {
		name string
		edit func(string) string
		want string
	}{
		{"corrupted", func(s string) string { return strings.Replace(s, `"vm_id": "a"`, `"vm_id": "b"`, 1) }, "CRC64 mismatch"},
		{"bad magic", func(s string) string { return strings.Replace(s, VMStateMagic, "other", 1) }, "bad magic"},
		{"future version", func(s string) string { return strings.Replace(s, `"version": 1`, `"version": 9`, 1) }, "unsupported vmstate version"},
		{"not JSON", func(string) string { return "\x00\x01" }, "invalid vmstate"},
	}
	for _, tc := range tests {
		_, err := decodeVMState([]byte(tc.edit(string(data))))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestLayout(t *testing.T) {
	tests := []struct {
		size uint64
		want []memRegion
	}{
		{128 << 20, []memRegion{{GuestAddr: 0, Size: 128 << 20}}},
		{mmioGapStart, []memRegion{{GuestAddr: 0, Size: mmioGapStart}}},
		{4 << 30, []memRegion{{GuestAddr: 0, Size: mmioGapStart}, {GuestAddr: 1 << 32, Size: 4<<30 - mmioGapStart, FileOffset: mmioGapStart}}},
	}
	for _, tc := range tests {
		got := layout(tc.size)
		if len(got) != len(tc.want) {
			t.Fatalf("%d: %d regions", tc.size, len(got))
		}
		for i := range got {
			g := got[i]
			if g.GuestAddr != tc.want[i].GuestAddr || g.Size != tc.want[i].Size || g.FileOffset != tc.want[i].FileOffset {
				t.Errorf("%d: region %d = %+v, want %+v", tc.size, i, g, tc.want[i])
			}
		}
	}
}

func TestGuestMemory(t *testing.T) {
	m, err := newAnonMemory(8<<20, "None")
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	m.guestBoot("vm-x")
	first := m.digest()
	if len(first.NonZeroPages) != 1+patternPages {
		t.Fatalf("non-zero pages after boot = %d", len(first.NonZeroPages))
	}
	if err := m.verify(first); err != nil {
		t.Fatal(err)
	}
	m.clearDirty()
	c := m.guestTick()
	if id, counter, ok := m.guestHeader(); !ok || id != "vm-x" || counter != c {
		t.Fatalf("header = %q %d %v", id, counter, ok)
	}
	if n := m.dirtyCount(); n != 2 {
		t.Fatalf("dirty pages after a tick = %d, want 2", n)
	}
	if err := m.verify(first); err == nil || !strings.Contains(err.Error(), "page 0") {
		t.Fatalf("verify after change: %v", err)
	}
	regions := m.uffdRegions()
	if len(regions) != 1 || regions[0].Size != 8<<20 || regions[0].PageSize != 4096 || regions[0].PageSizeKiB != 4 {
		t.Fatalf("uffd regions = %+v", regions)
	}
}

func TestParseOptions(t *testing.T) {
	t.Setenv(EnvFailAt, "ready")
	t.Setenv(EnvMetricsInterval, "250ms")
	o, err := parseOptions([]string{"--api-sock=/x.sock", "--id", "vm-1", "--no-seccomp", "--seccomp-level", "2", "--fail-at", "start", "--level", "Debug", "--show-level"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.APISock != "/x.sock" || o.ID != "vm-1" || o.FailAt != "start,ready" || o.MetricsInterval != 250*time.Millisecond || !o.ShowLevel || o.MaxPayload != 51200 {
		t.Fatalf("options = %+v", o)
	}
	for _, bad := range [][]string{{"--id", "no spaces"}, {"--no-api"}, {"--bogus"}, {"extra"}} {
		if _, err := parseOptions(bad, io.Discard); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}
