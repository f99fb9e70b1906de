package hearth

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// fuzzDefaults are the defaults a daemon typically runs with.
var fuzzDefaults = Spec{Backend: "mem", VCPUs: 1, MemoryMiB: 128, BootArgs: DefaultBootArgs}

// decodeStrict decodes as the API does: unknown fields refused.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// FuzzSpecValidate: validation of any decodable Spec never panics; an
// accepted spec respects every documented limit, and stays accepted and
// unchanged through the JSON round trip that storing it in a VM record
// and a snapshot manifest makes (so a restore never finds its own
// source's spec invalid).
func FuzzSpecValidate(f *testing.F) {
	for _, s := range []string{
		`{"kernel":"/k","rootfs":"/r","vcpus":2,"memory_mib":256,"labels":{"team":"a"}}`,
		`{"image":"default","network":{"allow":["tcp:10.0.0.0/8:443"],"dns":["10.0.0.53"],"rx_rate_limit":{"bandwidth":{"size":1,"refill_time_ms":1}}}}`,
		`{"kernel":"/k","rootfs":"/r","drives":[{"id":"data","path":"/d","rate_limit":{"ops":{"size":1,"refill_time_ms":1}}}]}`,
		`{"kernel":"/k","rootfs":"/r","drives":[{"id":"rootfs","path":"/d"}]}`,
		`{"image":"../etc"}`,
		`{"image":"Default"}`,
		`{"kernel":"k","rootfs":"/r"}`,
		`{"kernel":"/k","rootfs":"/r","boot_args":"a\nb"}`,
		`{"kernel":"/k","rootfs":"/r","labels":{"a=b":"c"}}`,
		`{"kernel":"/k","rootfs":"/r","labels":{"":"c"}}`,
		`{"kernel":"/k","rootfs":"/r","jail":{"cpu_quota":-1}}`,
		`{"kernel":"/k","rootfs":"/r","huge_pages":true,"memory_mib":129}`,
		`{"kernel":"/k","rootfs":"/r","vcpus":33}`,
		`{"kernel":"/k","rootfs":"/r","boot_args":"` + strings.Repeat("x", MaxBootArgs+1) + `"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var in Spec
		if decodeStrict(b, &in) != nil {
			return
		}
		s := in.withDefaults(fuzzDefaults)
		if err := s.validate(); err != nil {
			return
		}
		switch {
		case s.VCPUs < 1 || s.VCPUs > MaxVCPUs, s.MemoryMiB < MinMemoryMiB:
			t.Fatalf("accepted size %d vCPUs, %d MiB", s.VCPUs, s.MemoryMiB)
		case len(s.BootArgs) > MaxBootArgs || strings.ContainsAny(s.BootArgs, "\n\x00"):
			t.Fatalf("accepted boot args %q", s.BootArgs)
		case len(s.Labels) > MaxLabels:
			t.Fatalf("accepted %d labels", len(s.Labels))
		case s.Image != "" && ValidateImageName(s.Image) != nil:
			t.Fatalf("accepted image %q", s.Image)
		}
		for k, v := range s.Labels {
			if k == "" || len(k) > 63 || len(v) > 256 || strings.ContainsAny(k, "=\n\x00") || strings.ContainsAny(v, "\n\x00") {
				t.Fatalf("accepted label %q=%q", k, v)
			}
		}
		for _, p := range append([]string{s.Kernel, s.Initrd, s.Rootfs}, drivePaths(s)...) {
			if p != "" && !strings.HasPrefix(p, "/") {
				t.Fatalf("accepted relative path %q", p)
			}
		}
		j, err := json.Marshal(s)
		if err != nil {
			t.Fatalf("marshal accepted spec: %v", err)
		}
		var back Spec
		if err := decodeStrict(j, &back); err != nil {
			t.Fatalf("stored spec %s does not decode: %v", j, err)
		}
		if !reflect.DeepEqual(normSpec(back), normSpec(s)) {
			t.Fatalf("JSON round trip changed the spec:\n%+v\n%+v", s, back)
		}
		if err := back.validate(); err != nil {
			t.Fatalf("stored spec %s no longer validates: %v", j, err)
		}
	})
}

func drivePaths(s Spec) []string {
	var ps []string
	for _, d := range s.Drives {
		ps = append(ps, d.Path)
	}
	return ps
}

// normSpec maps empty collections to nil (omitempty drops them).
func normSpec(s Spec) Spec {
	if len(s.Labels) == 0 {
		s.Labels = nil
	}
	if len(s.Drives) == 0 {
		s.Drives = nil
	}
	if n := s.Network; n != nil {
		c := *n
		if len(c.Allow) == 0 {
			c.Allow = nil
		}
		if len(c.DNS) == 0 {
			c.DNS = nil
		}
		s.Network = &c
	}
	return s
}

// FuzzRestoreSpecValidate: restore requests are checked before anything
// is looked up; what passes names a valid snapshot and VM id and a known
// memory backend, and the labels it adds are held to the Spec's rules
// (the runtime merges them into the snapshot's spec and validates that).
func FuzzRestoreSpecValidate(f *testing.F) {
	for _, s := range []string{
		`{"snapshot":"s1","vm":"clone","memory_backend":"uffd","prefetch":true,"labels":{"a":"b"}}`,
		`{"snapshot":"s1","vm":"clone","paused":true}`,
		`{"snapshot":"../s1","vm":"clone"}`,
		`{"snapshot":"s1","vm":"a/b"}`,
		`{"snapshot":"s1","vm":"x","memory_backend":"File"}`,
		`{"snapshot":"s1","vm":"x","prefetch":true}`,
		`{"snapshot":"s1","vm":"x","labels":{"k\n":"v"}}`,
		`{"snapshot":"s.","vm":"` + strings.Repeat("v", 64) + `"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var rs RestoreSpec
		if decodeStrict(b, &rs) != nil {
			return
		}
		err := rs.validate()
		if err == nil {
			if ValidateSnapshotName(rs.Snapshot) != nil || ValidateID(rs.VM) != nil {
				t.Fatalf("accepted names %q %q", rs.Snapshot, rs.VM)
			}
			if rs.MemoryBackend != "" && rs.MemoryBackend != "file" && rs.MemoryBackend != "uffd" {
				t.Fatalf("accepted memory backend %q", rs.MemoryBackend)
			}
			if rs.Prefetch && rs.MemoryBackend != "uffd" {
				t.Fatal("accepted prefetch without uffd")
			}
		}
		if err != nil && len(err.Error()) > 4096 {
			t.Fatalf("error of %d bytes echoes its input", len(err.Error()))
		}
		// The labels as the runtime applies them: merged into a valid
		// spec, which must then refuse exactly the invalid ones.
		spec := Spec{Kernel: "/k", Rootfs: "/r"}.withDefaults(fuzzDefaults)
		spec.Labels = rs.Labels
		if verr := spec.validate(); verr == nil {
			for k, v := range rs.Labels {
				if k == "" || strings.ContainsAny(k, "=\n\x00") || strings.ContainsAny(v, "\n\x00") {
					t.Fatalf("accepted restore label %q=%q", k, v)
				}
			}
		}
	})
}
