//go:build linux

package uffd

import (
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestTraceRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		tr   trace
	}{
		{"empty", trace{fileSize: 1 << 20}},
		{"one run", trace{fileSize: 1 << 20, runs: []run{{3, 5}}}},
		{"backwards and forwards", trace{fileSize: 1 << 30, runs: []run{{100, 1}, {7, 16}, {262143, 1}, {0, 2}}}},
		{"hugepage runs", trace{fileSize: 64 << 20, runs: []run{{512, 512}, {0, 512}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := unmarshalTrace(tt.tr.marshal())
			if err != nil {
				t.Fatal(err)
			}
			if got.fileSize != tt.tr.fileSize || len(got.runs) != len(tt.tr.runs) || (len(got.runs) > 0 && !reflect.DeepEqual(got.runs, tt.tr.runs)) {
				t.Fatalf("got %+v, want %+v", got, tt.tr)
			}
		})
	}
}

func TestTraceCompact(t *testing.T) {
	// A local working set costs a few bytes per run.
	tr := trace{fileSize: 1 << 30}
	for i := uint64(0); i < 1000; i++ {
		tr.runs = append(tr.runs, run{i * 40, 4})
	}
	if n := len(tr.marshal()); n > 3*1000+32 {
		t.Fatalf("1000 local runs take %d bytes", n)
	}
}

func TestTraceRejects(t *testing.T) {
	good := (&trace{fileSize: 1 << 20, runs: []run{{1, 2}, {10, 1}}}).marshal()
	flip := func(i int) []byte {
		b := append([]byte(nil), good...)
		b[i] ^= 0x40
		return b
	}
	// reseal recomputes the checksum so that the content checks are hit.
	reseal := func(tr trace) []byte { return tr.marshal() }
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "bad magic"},
		{"bad magic", append([]byte("NOTTRACE"), good[8:]...), "bad magic"},
		{"corrupt body", flip(len(good) - 6), "checksum"},
		{"corrupt checksum", flip(len(good) - 1), "checksum"},
		{"truncated", good[:len(good)-3], "checksum"},
		{"run beyond file", reseal(trace{fileSize: 1 << 20, runs: []run{{255, 2}}}), "outside"},
		{"empty run", reseal(trace{fileSize: 1 << 20, runs: []run{{1, 0}}}), "empty or outside"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := unmarshalTrace(tt.in)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestReadTrace(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "mem.trace")
	if tr, err := readTrace(p, 1<<20); tr != nil || err != nil {
		t.Fatalf("missing trace: %v %v", tr, err)
	}
	want := &trace{fileSize: 1 << 20, runs: []run{{0, 4}}}
	if err := writeTrace(p, want); err != nil {
		t.Fatal(err)
	}
	if got, err := readTrace(p, 1<<20); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v %v", got, err)
	}
	if _, err := readTrace(p, 2<<20); err == nil || !strings.Contains(err.Error(), "recorded for a 1048576-byte memory file") {
		t.Fatalf("stale trace accepted: %v", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
}

// FuzzTrace feeds trace bodies with a valid checksum appended, so that
// the fuzzer explores the decoder rather than the CRC.
func FuzzTrace(f *testing.F) {
	good := (&trace{fileSize: 1 << 20, runs: []run{{1, 2}, {10, 1}}}).marshal()
	f.Add(good[:len(good)-4])
	f.Add([]byte(traceMagic))
	f.Fuzz(func(t *testing.T, body []byte) {
		b := binary.LittleEndian.AppendUint32(append([]byte(nil), body...), crc32.Checksum(body, castagnoli))
		tr, err := unmarshalTrace(b)
		if err != nil {
			return
		}
		units := tr.fileSize / traceUnit
		for _, r := range tr.runs {
			if r.count == 0 || r.start >= units || r.count > units-r.start {
				t.Fatalf("accepted run %+v in %d units", r, units)
			}
		}
	})
}

func TestPrefetcherRunEnd(t *testing.T) {
	pf := &prefetcher{t: &trace{runs: []run{{100, 4}, {10, 2}, {50, 1}, {12, 3}}}}
	pf.index()
	for _, c := range []struct{ u, want uint64 }{
		{9, 0}, {10, 12}, {11, 12}, {12, 15}, {14, 15}, {15, 0},
		{49, 0}, {50, 51}, {51, 0}, {100, 104}, {103, 104}, {104, 0}, {0, 0},
	} {
		if got := pf.runEnd(c.u); got != c.want {
			t.Errorf("runEnd(%d) = %d, want %d", c.u, got, c.want)
		}
	}
}
