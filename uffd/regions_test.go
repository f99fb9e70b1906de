//go:build linux

package uffd

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseRegions(t *testing.T) {
	const file = 64 << 20
	tests := []struct {
		name    string
		json    string
		wantErr string // substring; empty means valid
		wantPS  []uint64
	}{
		{name: "firecracker 4K", json: `[{"base_host_virt_addr":140000000000000,"size":16777216,"offset":0,"page_size":4096,"page_size_kib":4096}]`, wantPS: []uint64{4096}},
		{name: "firecracker 2M", json: `[{"base_host_virt_addr":139637976727552,"size":16777216,"offset":2097152,"page_size":2097152,"page_size_kib":2097152}]`, wantPS: []uint64{2 << 20}},
		{name: "deprecated field only, bytes", json: `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size_kib":4096}]`, wantPS: []uint64{4096}},
		{name: "deprecated field only, KiB", json: `[{"base_host_virt_addr":2097152,"size":2097152,"offset":0,"page_size_kib":2048}]`, wantPS: []uint64{2 << 20}},
		{name: "page_size with KiB in the deprecated field", json: `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096,"page_size_kib":4}]`, wantPS: []uint64{4096}},
		{name: "unknown fields ignored", json: `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096,"is_guest_memfd":false}]`, wantPS: []uint64{4096}},
		{name: "two regions", json: `[{"base_host_virt_addr":8192,"size":4096,"offset":4096,"page_size":4096},{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}]`, wantPS: []uint64{4096, 4096}},
		{name: "region ends at the end of the file", json: `[{"base_host_virt_addr":4096,"size":67108864,"offset":0,"page_size":4096}]`, wantPS: []uint64{4096}},

		{name: "empty message", json: ``, wantErr: "empty message"},
		{name: "not an array", json: `{"base_host_virt_addr":1}`, wantErr: "not a JSON array"},
		{name: "malformed", json: `[{"base_host_virt_addr": }]`, wantErr: "decode JSON"},
		{name: "trailing garbage", json: `[] x`, wantErr: "decode JSON"},
		{name: "empty list", json: `[]`, wantErr: "the list is empty"},
		{name: "null", json: `null`, wantErr: "not a JSON array"},
		{name: "negative number", json: `[{"base_host_virt_addr":-4096,"size":4096,"offset":0,"page_size":4096}]`, wantErr: "decode JSON"},
		{name: "no page size", json: `[{"base_host_virt_addr":4096,"size":4096,"offset":0}]`, wantErr: "no page size"},
		{name: "unsupported page size", json: `[{"base_host_virt_addr":65536,"size":65536,"offset":0,"page_size":65536}]`, wantErr: "not supported"},
		{name: "bad deprecated page size", json: `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size_kib":3}]`, wantErr: "page_size_kib 3"},
		{name: "page sizes disagree", json: `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096,"page_size_kib":2097152}]`, wantErr: "disagree"},
		{name: "zero size", json: `[{"base_host_virt_addr":4096,"size":0,"offset":0,"page_size":4096}]`, wantErr: "size is 0"},
		{name: "unaligned base", json: `[{"base_host_virt_addr":4097,"size":4096,"offset":0,"page_size":4096}]`, wantErr: "base_host_virt_addr 0x1001 is not aligned"},
		{name: "unaligned size", json: `[{"base_host_virt_addr":4096,"size":4095,"offset":0,"page_size":4096}]`, wantErr: "not a multiple"},
		{name: "unaligned offset", json: `[{"base_host_virt_addr":4096,"size":4096,"offset":512,"page_size":4096}]`, wantErr: "offset 0x200 is not aligned"},
		{name: "hugepage region misaligned", json: `[{"base_host_virt_addr":4096,"size":2097152,"offset":0,"page_size":2097152}]`, wantErr: "not aligned"},
		{name: "beyond the file", json: `[{"base_host_virt_addr":4096,"size":8192,"offset":67104768,"page_size":4096}]`, wantErr: "extends beyond the memory file"},
		{name: "offset beyond the file", json: `[{"base_host_virt_addr":4096,"size":4096,"offset":18446744073709547520,"page_size":4096}]`, wantErr: "extends beyond the memory file"},
		{name: "address overflow", json: `[{"base_host_virt_addr":18446744073709547520,"size":8192,"offset":0,"page_size":4096}]`, wantErr: "overflows"},
		{name: "address overlap", json: `[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096},{"base_host_virt_addr":8192,"size":4096,"offset":65536,"page_size":4096}]`, wantErr: "overlap in the VMM's address space"},
		{name: "file overlap", json: `[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096},{"base_host_virt_addr":65536,"size":4096,"offset":4096,"page_size":4096}]`, wantErr: "overlap in the memory file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := ParseRegions([]byte(tt.json), file)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("accepted %s", tt.json)
				}
				if !errors.Is(err, ErrRegions) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %q, want ErrRegions containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if len(rs) != len(tt.wantPS) {
				t.Fatalf("%d regions, want %d", len(rs), len(tt.wantPS))
			}
			for i, r := range rs {
				if r.PageSize != tt.wantPS[i] {
					t.Errorf("region %d page size %d, want %d", i, r.PageSize, tt.wantPS[i])
				}
			}
		})
	}
}

func TestTooManyRegions(t *testing.T) {
	rs := make([]Region, maxRegions+1)
	for i := range rs {
		rs[i] = Region{BaseHostVirtAddr: uint64(i+1) << 12, Size: 4096, Offset: uint64(i) << 12, PageSize: 4096}
	}
	if _, err := ValidateRegions(rs, 1<<30); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("err = %v", err)
	}
}

func TestJSONComplete(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want bool
	}{
		{``, false},
		{`  `, false},
		{`[`, false},
		{`[{"size":1`, false},
		{`[{"size":1}]`, true},
		{`[{"size":}`, true}, // malformed: more bytes cannot fix it
		{`x`, true},
	} {
		if got := jsonComplete([]byte(tt.in)); got != tt.want {
			t.Errorf("jsonComplete(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// FuzzParseRegions: whatever a VMM sends, parsing never panics, and what
// it accepts satisfies every invariant the server relies on.
func FuzzParseRegions(f *testing.F) {
	f.Add([]byte(`[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096,"page_size_kib":4096}]`))
	f.Add([]byte(`[{"base_host_virt_addr":2097152,"size":4194304,"offset":2097152,"page_size_kib":2048}]`))
	f.Add([]byte(`[{"base_host_virt_addr":8192,"size":4096,"offset":4096,"page_size":4096},{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}]`))
	f.Add([]byte(`[{"base_host_virt_addr": }]`))
	f.Add([]byte(`[]`))
	const file = 16 << 20
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := ParseRegions(data, file)
		if err != nil {
			if !errors.Is(err, ErrRegions) {
				t.Fatalf("error does not wrap ErrRegions: %v", err)
			}
			return
		}
		if len(rs) == 0 || len(rs) > maxRegions {
			t.Fatalf("accepted a list of %d regions", len(rs))
		}
		// What was accepted is a fixed point: validating it again (as the
		// server does after a daemon restart hands it the same list)
		// accepts it unchanged.
		again, err := ValidateRegions(rs, file)
		if err != nil || !slices.Equal(again, rs) {
			t.Fatalf("accepted regions do not re-validate: %v", err)
		}
		for i, r := range rs {
			if !supportedPageSize(r.PageSize) || r.Size == 0 || r.BaseHostVirtAddr%r.PageSize != 0 ||
				r.Size%r.PageSize != 0 || r.Offset%r.PageSize != 0 || r.Offset+r.Size > file || r.Offset+r.Size < r.Offset {
				t.Fatalf("accepted invalid region %d: %+v", i, r)
			}
			for j := range i {
				q := rs[j]
				if r.BaseHostVirtAddr < q.BaseHostVirtAddr+q.Size && q.BaseHostVirtAddr < r.BaseHostVirtAddr+r.Size {
					t.Fatalf("accepted address overlap %+v %+v", r, q)
				}
				if r.Offset < q.Offset+q.Size && q.Offset < r.Offset+r.Size {
					t.Fatalf("accepted file overlap %+v %+v", r, q)
				}
			}
		}
	})
}
