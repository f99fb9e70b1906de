package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sample = `goos: linux
BenchmarkControlPlane/sequential-2   3  2783640170 ns/op  47.68 hearth-p50-ms  8.372 overhead-p50-ms  10.47 overhead-p99-ms  39.31 raw-p50-ms
BenchmarkRuntimeConcurrency-2        5   281631528 ns/op  78.17 100-creates-ms  8.211 one-create-ms  9.520 x-one-create
PASS
`

func TestReport(t *testing.T) {
	rep, err := build(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 2 || rep.Results[0].Name != "BenchmarkControlPlane/sequential" || rep.Results[1].Metrics["x-one-create"] != 9.52 {
		t.Fatalf("%+v", rep.Results)
	}
	met := map[string]bool{}
	for _, tg := range rep.Targets {
		if tg.Met == nil {
			t.Fatalf("target %s not evaluated", tg.Metric)
		}
		met[tg.Metric] = *tg.Met
	}
	if met["overhead-p50-ms"] || !met["overhead-p99-ms"] || met["x-one-create"] {
		t.Fatalf("targets: %v", met)
	}
	dir := t.TempDir()
	if err := write(rep, dir); err != nil {
		t.Fatal(err)
	}
	md, _ := os.ReadFile(filepath.Join(dir, "report.md"))
	if !strings.Contains(string(md), "**no**") || !strings.Contains(string(md), "overhead-p50-ms") {
		t.Fatalf("markdown:\n%s", md)
	}
	svg, _ := os.ReadFile(filepath.Join(dir, "report.svg"))
	if !strings.HasPrefix(string(svg), "<svg") || strings.Count(string(svg), "<rect") != 6 {
		t.Fatalf("svg:\n%s", svg)
	}
	if _, err := build(strings.NewReader("no results\n")); err == nil {
		t.Fatal("empty input accepted")
	}
}
