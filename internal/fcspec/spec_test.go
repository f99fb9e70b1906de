package fcspec

import (
	"errors"
	"strings"
	"testing"
)

func TestLoad(t *testing.T) {
	s, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Version(); got != "1.17.0-dev" {
		t.Fatalf("Version() = %q, want 1.17.0-dev", got)
	}
	if s2 := MustLoad(); s2 != s {
		t.Fatal("Load is not cached")
	}
}

func TestRoute(t *testing.T) {
	s := MustLoad()
	tests := []struct {
		method, path string
		wantOp       string
		wantParams   map[string]string
		wantErr      error
	}{
		{"GET", "/", "describeInstance", nil, nil},
		{"PUT", "/actions", "createSyncAction", nil, nil},
		{"put", "/drives/rootfs", "putGuestDriveByID", map[string]string{"drive_id": "rootfs"}, nil},
		{"PATCH", "/drives/rootfs", "patchGuestDriveByID", map[string]string{"drive_id": "rootfs"}, nil},
		{"PUT", "/network-interfaces/eth0", "putGuestNetworkInterfaceByID", map[string]string{"iface_id": "eth0"}, nil},
		{"GET", "/balloon/statistics", "describeBalloonStats", nil, nil},
		{"PATCH", "/balloon/hinting/stop", "stopBalloonHinting", nil, nil},
		{"GET", "/vm/config", "getExportVmConfig", nil, nil},
		{"PUT", "/snapshot/load", "loadSnapshot", nil, nil},
		{"GET", "/machine-config/", "getMachineConfiguration", nil, nil},
		{"GET", "/version?x=1", "getFirecrackerVersion", nil, nil},
		{"GET", "/nope", "", nil, ErrRouteNotFound},
		{"PUT", "/drives", "", nil, ErrRouteNotFound},
		{"PUT", "/drives/a/b", "", nil, ErrRouteNotFound},
		{"DELETE", "/drives/rootfs", "", nil, ErrMethodNotAllowed},
		{"GET", "/actions", "", nil, ErrMethodNotAllowed},
		{"POST", "/", "", nil, ErrMethodNotAllowed},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			op, params, err := s.Route(tc.method, tc.path)
			if tc.wantErr != nil {
				var re *RouteError
				if !errors.As(err, &re) {
					t.Fatalf("err = %v, want *RouteError", err)
				}
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want Is(%v)", err, tc.wantErr)
				}
				if tc.wantErr == ErrMethodNotAllowed && (len(re.Allowed) == 0 || !re.MethodNotAllowed()) {
					t.Fatalf("Allowed = %v", re.Allowed)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if op != tc.wantOp {
				t.Fatalf("op = %q, want %q", op, tc.wantOp)
			}
			for k, v := range tc.wantParams {
				if params[k] != v {
					t.Fatalf("params = %v, want %v", params, tc.wantParams)
				}
			}
			if len(params) != len(tc.wantParams) {
				t.Fatalf("params = %v, want %v", params, tc.wantParams)
			}
		})
	}
}

func TestValidateRequest(t *testing.T) {
	s := MustLoad()
	tests := []struct {
		name         string
		method, path string
		body         string
		wantPtr      string // "" with wantMsg == "" means valid
		wantMsg      string // substring of Msg
		route        bool   // expect a *RouteError
	}{
		// Valid bodies.
		{name: "machine-config", method: "PUT", path: "/machine-config", body: `{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":true,"huge_pages":"None"}`},
		{name: "boot-source", method: "PUT", path: "/boot-source", body: `{"kernel_image_path":"/k","boot_args":"console=ttyS0"}`},
		{name: "drive", method: "PUT", path: "/drives/rootfs", body: `{"drive_id":"rootfs","path_on_host":"/r.ext4","is_root_device":true,"is_read_only":false,"rate_limiter":{"bandwidth":{"size":100,"refill_time":10},"ops":{"size":5,"refill_time":100,"one_time_burst":0}}}`},
		{name: "patch drive", method: "PATCH", path: "/drives/rootfs", body: `{"drive_id":"rootfs","path_on_host":"/other"}`},
		{name: "net", method: "PUT", path: "/network-interfaces/eth0", body: `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01","mtu":1500}`},
		{name: "vsock", method: "PUT", path: "/vsock", body: `{"guest_cid":3,"uds_path":"/v.sock"}`},
		{name: "action", method: "PUT", path: "/actions", body: `{"action_type":"InstanceStart"}`},
		{name: "load uffd", method: "PUT", path: "/snapshot/load", body: `{"snapshot_path":"s","mem_backend":{"backend_type":"Uffd","backend_path":"/u.sock"},"resume_vm":true,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap9"}],"vsock_override":{"uds_path":"/v2"}}`},
		{name: "metrics properties", method: "PUT", path: "/metrics", body: `{"metrics_path":"m","emit_id":true,"properties":{"a":"b"}}`},
		{name: "mmds free form", method: "PUT", path: "/mmds", body: `{"latest":{"meta-data":{"x":[1,2,{"y":null}]}},"dup":1,"dup":2}`},
		{name: "optional null", method: "PUT", path: "/boot-source", body: `{"kernel_image_path":"/k","initrd_path":null}`},
		{name: "no body on GET", method: "GET", path: "/", body: ""},
		{name: "optional body absent", method: "PUT", path: "/machine-config", body: "  "},
		{name: "hinting start without body", method: "PATCH", path: "/balloon/hinting/start", body: ""},
		{name: "logger level", method: "PUT", path: "/logger", body: `{"log_path":"l","level":"Off","show_level":true}`},
		{name: "cpu template ref enum", method: "PUT", path: "/machine-config", body: `{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"T2"}`},
		{name: "int64 max", method: "PUT", path: "/drives/d", body: `{"drive_id":"d","is_root_device":false,"rate_limiter":{"bandwidth":{"size":9223372036854775807,"refill_time":1}}}`},

		// Unknown fields.
		{name: "unknown top-level field", method: "PUT", path: "/machine-config", body: `{"vcpu_count":1,"mem_size_mib":128,"foo":1}`, wantPtr: "/foo", wantMsg: "unknown field"},
		{name: "unknown nested field", method: "PUT", path: "/snapshot/load", body: `{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m","extra":true}}`, wantPtr: "/mem_backend/extra", wantMsg: "unknown field"},
		{name: "unknown field in array item", method: "PUT", path: "/snapshot/load", body: `{"snapshot_path":"s","mem_file_path":"m","network_overrides":[{"iface_id":"a","host_dev_name":"b","x":1}]}`, wantPtr: "/network_overrides/0/x", wantMsg: "unknown field"},
		{name: "escaped pointer", method: "PUT", path: "/vsock", body: `{"guest_cid":3,"uds_path":"v","a/b~c":1}`, wantPtr: "/a~1b~0c", wantMsg: "unknown field"},
		{name: "duplicate field", method: "PUT", path: "/vsock", body: `{"guest_cid":3,"uds_path":"v","guest_cid":4}`, wantPtr: "/guest_cid", wantMsg: "duplicate"},

		// Missing required.
		{name: "missing required", method: "PUT", path: "/machine-config", body: `{"vcpu_count":1}`, wantPtr: "/mem_size_mib", wantMsg: "missing required"},
		{name: "missing nested required", method: "PUT", path: "/snapshot/load", body: `{"snapshot_path":"s","mem_backend":{"backend_type":"File"}}`, wantPtr: "/mem_backend/backend_path", wantMsg: "missing required"},
		{name: "required null", method: "PUT", path: "/boot-source", body: `{"kernel_image_path":null}`, wantPtr: "/kernel_image_path", wantMsg: "must not be null"},

		// Wrong types.
		{name: "string for integer", method: "PUT", path: "/machine-config", body: `{"vcpu_count":"2","mem_size_mib":128}`, wantPtr: "/vcpu_count", wantMsg: "expected integer"},
		{name: "float for integer", method: "PUT", path: "/machine-config", body: `{"vcpu_count":2.0,"mem_size_mib":128}`, wantPtr: "/vcpu_count", wantMsg: "expected an integer"},
		{name: "exponent for integer", method: "PUT", path: "/machine-config", body: `{"vcpu_count":1,"mem_size_mib":1e3}`, wantPtr: "/mem_size_mib", wantMsg: "expected an integer"},
		{name: "integer overflow", method: "PUT", path: "/machine-config", body: `{"vcpu_count":1,"mem_size_mib":18446744073709551616}`, wantPtr: "/mem_size_mib", wantMsg: "out of range"},
		{name: "int32 overflow", method: "PUT", path: "/cpu-config", body: `{"cpuid_modifiers":[{"leaf":"0","subleaf":"0","flags":2147483648,"modifiers":[]}]}`, wantPtr: "/cpuid_modifiers/0/flags", wantMsg: "int32"},
		{name: "int64 overflow", method: "PUT", path: "/drives/d", body: `{"drive_id":"d","is_root_device":false,"rate_limiter":{"bandwidth":{"size":9223372036854775808,"refill_time":1}}}`, wantPtr: "/rate_limiter/bandwidth/size", wantMsg: "int64"},
		{name: "bool as string", method: "PUT", path: "/drives/d", body: `{"drive_id":"d","is_root_device":"true"}`, wantPtr: "/is_root_device", wantMsg: "expected boolean"},
		{name: "array expected", method: "PUT", path: "/mmds/config", body: `{"network_interfaces":"eth0"}`, wantPtr: "/network_interfaces", wantMsg: "expected array"},
		{name: "array item type", method: "PUT", path: "/mmds/config", body: `{"network_interfaces":["eth0",7]}`, wantPtr: "/network_interfaces/1", wantMsg: "expected string"},
		{name: "body not object", method: "PUT", path: "/actions", body: `["InstanceStart"]`, wantPtr: "", wantMsg: "expected object"},
		{name: "metrics property value type", method: "PUT", path: "/metrics", body: `{"metrics_path":"m","properties":{"a":1}}`, wantPtr: "/properties/a", wantMsg: "expected string"},

		// Enums and bounds.
		{name: "bad enum", method: "PUT", path: "/actions", body: `{"action_type":"Reboot"}`, wantPtr: "/action_type", wantMsg: "not one of"},
		{name: "nested bad enum", method: "PUT", path: "/snapshot/load", body: `{"snapshot_path":"s","mem_backend":{"backend_type":"Disk","backend_path":"m"}}`, wantPtr: "/mem_backend/backend_type", wantMsg: "not one of"},
		{name: "ref enum", method: "PUT", path: "/machine-config", body: `{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"Z9"}`, wantPtr: "/cpu_template", wantMsg: "not one of"},
		{name: "below minimum", method: "PUT", path: "/machine-config", body: `{"vcpu_count":0,"mem_size_mib":128}`, wantPtr: "/vcpu_count", wantMsg: "below the minimum"},
		{name: "above maximum", method: "PUT", path: "/machine-config", body: `{"vcpu_count":33,"mem_size_mib":128}`, wantPtr: "/vcpu_count", wantMsg: "above the maximum"},
		{name: "vsock cid minimum", method: "PUT", path: "/vsock", body: `{"guest_cid":2,"uds_path":"v"}`, wantPtr: "/guest_cid", wantMsg: "below the minimum"},
		{name: "negative bucket", method: "PUT", path: "/drives/d", body: `{"drive_id":"d","is_root_device":false,"rate_limiter":{"ops":{"size":-1,"refill_time":1}}}`, wantPtr: "/rate_limiter/ops/size", wantMsg: "below the minimum"},

		// Bodies and framing.
		{name: "required body missing", method: "PUT", path: "/actions", body: "", wantMsg: "requires a request body"},
		{name: "body where none allowed", method: "GET", path: "/", body: `{}`, wantMsg: "takes no request body"},
		{name: "malformed JSON", method: "PUT", path: "/actions", body: `{"action_type":`, wantMsg: "malformed JSON"},
		{name: "trailing data", method: "PUT", path: "/actions", body: `{"action_type":"InstanceStart"} {}`, wantMsg: "trailing data"},
		{name: "invalid utf8", method: "PUT", path: "/boot-source", body: "{\"kernel_image_path\":\"\xff\"}", wantMsg: "UTF-8"},

		// Routes.
		{name: "bad route", method: "PUT", path: "/nope", body: `{}`, route: true},
		{name: "bad method", method: "DELETE", path: "/vsock", body: ``, route: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := s.ValidateRequest(tc.method, tc.path, []byte(tc.body))
			if tc.route {
				var re *RouteError
				if !errors.As(err, &re) {
					t.Fatalf("err = %v, want *RouteError", err)
				}
				return
			}
			if tc.wantMsg == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("err = %v (%T), want *ValidationError", err, err)
			}
			if ve.Pointer != tc.wantPtr {
				t.Errorf("Pointer = %q, want %q (err %v)", ve.Pointer, tc.wantPtr, err)
			}
			if !strings.Contains(ve.Msg, tc.wantMsg) {
				t.Errorf("Msg = %q, want it to contain %q", ve.Msg, tc.wantMsg)
			}
			if tc.wantPtr != "" && !strings.Contains(err.Error(), tc.wantPtr) {
				t.Errorf("Error() = %q does not name the field %q", err.Error(), tc.wantPtr)
			}
		})
	}
}

func TestValidateDefinition(t *testing.T) {
	s := MustLoad()
	tests := []struct {
		name, def, body string
		wantPtr         string
		wantErr         bool
	}{
		{"machine config", "MachineConfiguration", `{"vcpu_count":1,"mem_size_mib":128}`, "", false},
		{"full config", "FullVmConfiguration", `{"boot-source":{"kernel_image_path":"k"},"drives":[{"drive_id":"r","is_root_device":true,"path_on_host":"p"}],"machine-config":{"vcpu_count":1,"mem_size_mib":64}}`, "", false},
		{"full config nested error", "FullVmConfiguration", `{"drives":[{"drive_id":"r","is_root_device":1}]}`, "/drives/0/is_root_device", true},
		{"full config unknown key", "FullVmConfiguration", `{"machine_config":{}}`, "/machine_config", true},
		{"instance info enum with space", "InstanceInfo", `{"app_name":"Firecracker","id":"a","state":"Not started","vmm_version":"1"}`, "", false},
		{"empty", "Vm", ``, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := s.ValidateDefinition(tc.def, []byte(tc.body))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			var ve *ValidationError
			if tc.wantErr && !errors.As(err, &ve) {
				t.Fatalf("err = %T, want *ValidationError", err)
			}
			if tc.wantErr && ve.Pointer != tc.wantPtr {
				t.Fatalf("Pointer = %q, want %q", ve.Pointer, tc.wantPtr)
			}
		})
	}
	if err := s.ValidateDefinition("NoSuchThing", []byte(`{}`)); err == nil {
		t.Fatal("unknown definition accepted")
	}
}

// TestAllOf exercises allOf resolution, which the pinned spec does not use
// yet but a later one may.
func TestAllOf(t *testing.T) {
	doc := []byte(`swagger: "2.0"
info: {version: "x"}
paths:
  /thing:
    put:
      operationId: putThing
      parameters:
        - name: body
          in: body
          required: true
          schema:
            allOf:
              - $ref: "#/definitions/Base"
              - type: object
                properties:
                  extra: {type: string, minLength: 2, pattern: "^[a-z]+$"}
definitions:
  Base:
    type: object
    required: [id]
    properties:
      id: {type: integer, minimum: 1, exclusiveMinimum: true}
`)
	s, err := parse(doc)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		body, ptr string
		ok        bool
	}{
		{`{"id":2,"extra":"ab"}`, "", true},
		{`{"id":1}`, "/id", false},
		{`{"extra":"ab"}`, "/id", false},
		{`{"id":2,"extra":"a"}`, "/extra", false},
		{`{"id":2,"extra":"AB"}`, "/extra", false},
		{`{"id":2,"other":1}`, "/other", false},
	}
	for _, tc := range tests {
		err := s.ValidateRequest("PUT", "/thing", []byte(tc.body))
		if tc.ok {
			if err != nil {
				t.Errorf("%s: %v", tc.body, err)
			}
			continue
		}
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Pointer != tc.ptr {
			t.Errorf("%s: err = %v, want pointer %q", tc.body, err, tc.ptr)
		}
	}
}
