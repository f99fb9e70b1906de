package fcspec

import (
	"errors"
	"testing"
)

var fuzzRoutes = []struct{ method, path string }{
	{"PUT", "/machine-config"},
	{"PUT", "/drives/rootfs"},
	{"PUT", "/snapshot/load"},
	{"PUT", "/snapshot/create"},
	{"PUT", "/mmds"},
	{"PUT", "/metrics"},
	{"PUT", "/cpu-config"},
	{"PATCH", "/vm"},
	{"GET", "/"},
	{"PUT", "/unknown"},
}

// FuzzValidateRequest checks that arbitrary bodies never panic and that
// every failure is one of the two documented error types.
func FuzzValidateRequest(f *testing.F) {
	seeds := []string{
		`{"vcpu_count":2,"mem_size_mib":256}`,
		`{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true}`,
		`{"snapshot_path":"s","mem_backend":{"backend_type":"Uffd","backend_path":"u"}}`,
		`{"a":{"b":[1,2,{"c":null}]}}`,
		`[[[[[]]]]]`,
		`1e400`,
		`"\ud800"`,
		``,
	}
	for i, s := range seeds {
		f.Add(uint8(i), []byte(s))
	}
	s := MustLoad()
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		r := fuzzRoutes[int(which)%len(fuzzRoutes)]
		err := s.ValidateRequest(r.method, r.path, body)
		if err == nil {
			return
		}
		var ve *ValidationError
		var re *RouteError
		if !errors.As(err, &ve) && !errors.As(err, &re) {
			t.Fatalf("%s %s: error of unexpected type %T: %v", r.method, r.path, err, err)
		}
	})
}
