package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sample = `goos: linux
BenchmarkControlPlane/bare/c1-2   1  2783640170 ns/op  47.68 create-p50-ms  8.372 own-create-p50-ms  10.47 own-create-p99-ms  3 overhead-p50-ms  39.31 seed-create-p50-ms
BenchmarkControlPlane/bare/c100-2   1  2783640170 ns/op  9.5 x-one-create  7.25 x-one-create-cpu-floor
BenchmarkRuntimeConcurrency-2        5   281631528 ns/op  78.17 100-creates-ms  8.211 one-create-ms  9.520 x-one-create
BenchmarkDaemonScale/firecracker-200-2   1  1 ns/op  150 rss-KiB/vm
BenchmarkUffdFault/sequential/read/uffd-2   3  2730073354 ns/op  7.3 x-kernel-file  6.1 x-kernel-file-floor
BenchmarkUffdPrefetch/prefetch/resume-at-once-2   3  692000000 ns/op  3.2 x-faster  5.1 x-faster-floor
PASS
`

func TestReport(t *testing.T) {
	rep, err := build(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 6 || rep.Results[0].Name != "BenchmarkControlPlane/bare/c1" || rep.Results[2].Metrics["x-one-create"] != 9.52 {
		t.Fatalf("%+v", rep.Results)
	}
	met := map[string]bool{}
	for _, tg := range rep.Targets {
		if tg.Met == nil {
			if !strings.Contains(sample, tg.Bench+"-") {
				continue // not in the sample
			}
			t.Fatalf("target %s %s not evaluated", tg.Bench, tg.Metric)
		}
		met[tg.Bench+" "+tg.Metric] = *tg.Met
		if tg.Bench == "BenchmarkControlPlane/bare/c100" && (tg.ContextGot == nil || *tg.ContextGot != 7.25) {
			t.Fatalf("context of %s: %v", tg.Bench, tg.ContextGot)
		}
	}
	want := map[string]bool{
		"BenchmarkControlPlane/bare/c1 own-create-p50-ms": false, "BenchmarkControlPlane/bare/c1 own-create-p99-ms": true,
		"BenchmarkControlPlane/bare/c100 x-one-create": false, "BenchmarkRuntimeConcurrency x-one-create": false,
		"BenchmarkDaemonScale/firecracker rss-KiB/vm":           true,
		"BenchmarkUffdFault/sequential/read/uffd x-kernel-file": false, "BenchmarkUffdPrefetch/prefetch/resume-at-once x-faster": true,
	}
	for k, v := range want {
		if got, ok := met[k]; !ok || got != v {
			t.Errorf("target %s: met=%v (evaluated %v), want %v", k, got, ok, v)
		}
	}

	samples := t.TempDir()
	os.WriteFile(filepath.Join(samples, "a.json"), []byte(`{"bench":"BenchmarkControlPlane/bare/c1","series":{"hearth create":[3,1,2],"seed create":[2,4]}}`), 0o644)
	if rep.Series, err = readSamples(samples); err != nil {
		t.Fatal(err)
	}
	if len(rep.Series) != 2 || rep.Series[0].Name != "hearth create" || rep.Series[0].MS[0] != 1 || rep.Series[0].MS[2] != 3 {
		t.Fatalf("series %+v", rep.Series)
	}
	dir := t.TempDir()
	if err := write(rep, dir); err != nil {
		t.Fatal(err)
	}
	md, _ := os.ReadFile(filepath.Join(dir, "report.md"))
	for _, w := range []string{"**no**", "own-create-p50-ms", "x-one-create-cpu-floor", "| hearth create | 3 | 2 |"} {
		if !strings.Contains(string(md), w) {
			t.Fatalf("markdown lacks %q:\n%s", w, md)
		}
	}
	svg, _ := os.ReadFile(filepath.Join(dir, "report.svg"))
	if !strings.HasPrefix(string(svg), "<svg") || strings.Count(string(svg), `fill="#`) != 7 || strings.Count(string(svg), "<polyline") != 2 {
		t.Fatalf("svg:\n%s", svg)
	}
	if _, err := build(strings.NewReader("no results\n")); err == nil {
		t.Fatal("empty input accepted")
	}
}
