// Command report turns `go test -bench` output into hearth's benchmark
// report: bench/report.md, bench/report.json and bench/report.svg.
//
//	go test -run '^$' -bench . ./bench/ | go run ./bench/report -out bench
//
// Every benchmark reports its figure next to a baseline measured in the
// same run; the report lists both, the machine they ran on, and whether
// the targets of DESIGN §15 were met.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Result is one benchmark line.
type Result struct {
	Name       string             `json:"name"`
	Iterations int64              `json:"iterations"`
	NsPerOp    float64            `json:"ns_per_op"`
	Metrics    map[string]float64 `json:"metrics"`
}

// Target is a goal a metric must meet.
type Target struct {
	Bench  string  `json:"bench"`  // benchmark name prefix
	Metric string  `json:"metric"` // metric unit
	Max    float64 `json:"max,omitempty"`
	Min    float64 `json:"min,omitempty"`
	Why    string  `json:"why"`
	Got    float64 `json:"got"`
	Met    *bool   `json:"met"` // nil when the benchmark did not run
}

// Report is the whole report.
type Report struct {
	Generated time.Time `json:"generated"`
	Machine   Machine   `json:"machine"`
	Results   []Result  `json:"results"`
	Targets   []Target  `json:"targets"`
}

// Machine says where the numbers come from.
type Machine struct {
	CPUs   int    `json:"cpus"`
	CPU    string `json:"cpu"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
}

// targets are DESIGN §15's goals, by benchmark and metric.
var targets = []Target{
	{Bench: "BenchmarkControlPlane/sequential", Metric: "overhead-p50-ms", Max: 5, Why: "control-plane overhead of create→running, p50"},
	{Bench: "BenchmarkControlPlane/sequential", Metric: "overhead-p99-ms", Max: 20, Why: "control-plane overhead of create→running, p99"},
	{Bench: "BenchmarkRuntimeConcurrency", Metric: "x-one-create", Max: 3, Why: "100 concurrent creates within 3× one create (no hidden serialisation)"},
}

func main() {
	out := flag.String("out", "bench", "directory for report.md, report.json and report.svg")
	flag.Parse()
	rep, err := build(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
	if err := write(rep, *out); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

func build(in io.Reader) (Report, error) {
	rep := Report{Generated: time.Now().UTC(), Machine: machine()}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fmt.Println(line) // pass the raw output through
		if r, ok := parseLine(line); ok {
			rep.Results = append(rep.Results, r)
		}
	}
	if err := sc.Err(); err != nil {
		return rep, err
	}
	if len(rep.Results) == 0 {
		return rep, fmt.Errorf("no benchmark results on standard input")
	}
	for _, t := range targets {
		for _, r := range rep.Results {
			if !strings.HasPrefix(r.Name, t.Bench) {
				continue
			}
			if v, ok := r.Metrics[t.Metric]; ok {
				t.Got = v
				met := (t.Max == 0 || v <= t.Max) && (t.Min == 0 || v >= t.Min)
				t.Met = &met
			}
		}
		rep.Targets = append(rep.Targets, t)
	}
	return rep, nil
}

// parseLine reads "BenchmarkX-2  3  123 ns/op  4.5 unit ...".
func parseLine(line string) (Result, bool) {
	f := strings.Fields(line)
	if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
		return Result{}, false
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return Result{}, false
	}
	name := f[0]
	if i := strings.LastIndexByte(name, '-'); i > 0 {
		if _, err := strconv.Atoi(name[i+1:]); err == nil {
			name = name[:i] // drop the GOMAXPROCS suffix
		}
	}
	r := Result{Name: name, Iterations: n, Metrics: map[string]float64{}}
	for i := 2; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return Result{}, false
		}
		if f[i+1] == "ns/op" {
			r.NsPerOp = v
		} else {
			r.Metrics[f[i+1]] = v
		}
	}
	return r, true
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

func write(rep Report, dir string) error {
	j, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), append(j, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(markdown(rep)), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "report.svg"), []byte(chart(rep)), 0o644)
}

func markdown(rep Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# hearth benchmark report\n\nGenerated %s on %d × %s, Linux %s, %s. Regenerate with `make bench`.\n\n",
		rep.Generated.Format(time.RFC3339), rep.Machine.CPUs, rep.Machine.CPU, rep.Machine.Kernel, rep.Machine.Go)
	b.WriteString("Every figure is measured next to a baseline in the same run; compare within a row, not across machines.\n\n")
	b.WriteString("## Targets (DESIGN §15)\n\n| goal | metric | target | got | met |\n|---|---|---|---|---|\n")
	for _, t := range rep.Targets {
		goal := ""
		if t.Max != 0 {
			goal = fmt.Sprintf("≤ %g", t.Max)
		}
		if t.Min != 0 {
			goal = fmt.Sprintf("≥ %g", t.Min)
		}
		met := "not run"
		if t.Met != nil {
			met = map[bool]string{true: "yes", false: "**no**"}[*t.Met]
		}
		fmt.Fprintf(&b, "| %s | `%s` %s | %s | %.3g | %s |\n", t.Why, t.Metric, t.Bench, goal, t.Got, met)
	}
	b.WriteString("\n## Results\n\n")
	for _, r := range rep.Results {
		fmt.Fprintf(&b, "### %s\n\n%d iteration(s), %.3g ms/op\n\n| metric | value |\n|---|---|\n", r.Name, r.Iterations, r.NsPerOp/1e6)
		keys := make([]string, 0, len(r.Metrics))
		for k := range r.Metrics {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "| %s | %.4g |\n", k, r.Metrics[k])
		}
		b.WriteString("\n")
	}
	b.WriteString("![latency chart](report.svg)\n")
	return b.String()
}

// chart draws, for every benchmark that reports millisecond metrics, one
// horizontal bar per metric, so the baseline sits next to the measured
// figure.
func chart(rep Report) string {
	type bar struct {
		label string
		v     float64
	}
	var bars []bar
	max := 0.0
	for _, r := range rep.Results {
		keys := make([]string, 0)
		for k := range r.Metrics {
			if strings.HasSuffix(k, "-ms") {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			v := r.Metrics[k]
			bars = append(bars, bar{strings.TrimPrefix(r.Name, "Benchmark") + " " + k, v})
			if v > max {
				max = v
			}
		}
	}
	const left, width, rowH = 420, 360, 18
	h := len(bars)*rowH + 40
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", left+width+80, h)
	fmt.Fprintf(&b, `<text x="4" y="14" font-size="13">hearth benchmarks: milliseconds (shorter is better)</text>`+"\n")
	for i, br := range bars {
		y := 28 + i*rowH
		w := 0.0
		if max > 0 {
			w = br.v / max * width
		}
		color := "#4878a8"
		if strings.Contains(br.label, "raw") || strings.Contains(br.label, "baseline") || strings.Contains(br.label, "one-") {
			color = "#a0a0a0"
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", left-6, y+12, escape(br.label))
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", left, y+2, w, rowH-5, color)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d">%.3g</text>`+"\n", float64(left)+w+4, y+12, br.v)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func escape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
