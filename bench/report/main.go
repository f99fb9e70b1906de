// Command report turns `go test -bench` output into hearth's benchmark
// report: bench/report.md, bench/report.json and bench/report.svg.
//
//	HEARTH_BENCH_SAMPLES=dir go test -run '^$' -bench . ./bench/ | go run ./bench/report -out bench -samples dir
//
// With -samples, the raw latency samples the benchmarks left in dir are
// drawn as distributions (cumulative fraction against milliseconds) in
// report.svg.
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
	"math"
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
	// Context names a metric of the same result that explains the
	// figure (e.g. the floor the machine's CPU alone imposes).
	Context    string   `json:"context,omitempty"`
	ContextGot *float64 `json:"context_got,omitempty"`
}

// Series is one latency distribution (milliseconds).
type Series struct {
	Bench string    `json:"bench"`
	Name  string    `json:"name"`
	MS    []float64 `json:"ms"`
}

// Report is the whole report.
type Report struct {
	Generated time.Time `json:"generated"`
	Machine   Machine   `json:"machine"`
	Results   []Result  `json:"results"`
	Targets   []Target  `json:"targets"`
	Series    []Series  `json:"series,omitempty"`
	Note      string    `json:"note,omitempty"`
	Notes     string    `json:"-"` // markdown appended to report.md
}

// Machine says where the numbers come from.
type Machine struct {
	CPUs   int    `json:"cpus"`
	CPU    string `json:"cpu"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
	// LoadBefore and LoadAfter are /proc/loadavg when the report started
	// reading (as the benchmarks started) and when it finished: other
	// work on the machine skews absolute figures (ratios less so).
	LoadBefore string `json:"load_before"`
	LoadAfter  string `json:"load_after"`
}

// targets are DESIGN §15's goals, by benchmark and metric.
var targets = []Target{
	{Bench: "BenchmarkControlPlane/bare/c1", Metric: "own-create-p50-ms", Max: 5, Context: "overhead-p50-ms", Why: "control-plane overhead of create→running: hearth's own time per VM outside the VMM's calls, p50 (simulator; context: p50 difference from the baseline)"},
	{Bench: "BenchmarkControlPlane/bare/c1", Metric: "own-create-p99-ms", Max: 20, Context: "overhead-p99-ms", Why: "control-plane overhead of create→running: hearth's own time per VM, p99 (simulator; context: p99 difference from the baseline)"},
	{Bench: "BenchmarkControlPlane/bare/c100", Metric: "x-one-create", Max: 3, Context: "x-one-create-cpu-floor", Why: "100 concurrent creates within 3× one create, simulator (context: the ratio the wave's CPU alone forces on this machine)"},
	{Bench: "BenchmarkRuntimeConcurrency", Metric: "x-one-create", Max: 3, Context: "x-one-create-cpu-floor", Why: "100 concurrent creates within 3× one create, in-memory backend (context: CPU floor)"},
	{Bench: "BenchmarkDaemonScale/firecracker", Metric: "rss-KiB/vm", Max: 200, Why: "daemon RSS per idle VM, Firecracker backend (simulator)"},
	{Bench: "BenchmarkDaemonScale/mem", Metric: "rss-KiB/vm", Max: 200, Why: "daemon RSS per idle VM, 1,000 VMs, in-memory backend"},
	{Bench: "BenchmarkUffdFault/sequential/read/uffd", Metric: "x-kernel-file", Max: 2, Context: "x-kernel-file-floor", Why: "on-demand userfaultfd service within 2× the kernel's file-backed faults, 1 GiB read sequentially (context: the ratio the guest's first touch of pages already copied in forces on this host, with no fault and no server)"},
	{Bench: "BenchmarkUffdFault/random/read/uffd", Metric: "x-kernel-file", Max: 2, Context: "x-kernel-file-floor", Why: "the same, read in random order (context: the host's floor)"},
	{Bench: "BenchmarkUffdFault/sequential/write/uffd", Metric: "x-kernel-file", Max: 2, Context: "x-kernel-file-floor", Why: "the same, written sequentially (context: the host's floor)"},
	{Bench: "BenchmarkUffdFault/random/write/uffd", Metric: "x-kernel-file", Max: 2, Context: "x-kernel-file-floor", Why: "the same, written in random order (context: the host's floor)"},
	{Bench: "BenchmarkUffdPrefetch/prefetch/resume-at-once", Metric: "x-faster", Min: 3, Context: "x-faster-floor", Why: "prefetch makes touching the working set ≥ 3× faster than on demand, guest resumed at once (context: the most prefetching gives here, all pages present before the guest runs)"},
	{Bench: "BenchmarkUffdPrefetch/prefetch/resume-after-1s", Metric: "x-faster", Min: 3, Why: "the same, guest resumed after a 1 s head start"},
	{Bench: "BenchmarkUffdPrefetch/prefetch/resume-when-prefetched", Metric: "x-faster", Min: 3, Why: "the same, vCPUs held until the working set is in (REAP, prefetch_wait_ms), the wait counted"},
}

func main() {
	out := flag.String("out", "bench", "directory for report.md, report.json and report.svg")
	samples := flag.String("samples", "", "directory of latency samples left by the benchmarks ($HEARTH_BENCH_SAMPLES)")
	note := flag.String("note", "", "a note for the report (e.g. what else loaded the machine)")
	notes := flag.String("notes", "", "a markdown file explaining the benchmarks, appended to report.md")
	flag.Parse()
	before := loadavg()
	rep, err := build(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
	rep.Machine.LoadBefore, rep.Machine.LoadAfter = before, loadavg()
	rep.Note = *note
	if *notes != "" {
		b, err := os.ReadFile(*notes)
		if err != nil {
			fmt.Fprintln(os.Stderr, "report:", err)
			os.Exit(1)
		}
		rep.Notes = string(b)
	}
	if *samples != "" {
		if rep.Series, err = readSamples(*samples); err != nil {
			fmt.Fprintln(os.Stderr, "report:", err)
			os.Exit(1)
		}
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
			// The name, or a sub-benchmark or variant of it (c1 must
			// not match c10).
			if r.Name != t.Bench && !strings.HasPrefix(r.Name, t.Bench+"/") && !strings.HasPrefix(r.Name, t.Bench+"-") {
				continue
			}
			if v, ok := r.Metrics[t.Metric]; ok {
				t.Got = v
				met := (t.Max == 0 || v <= t.Max) && (t.Min == 0 || v >= t.Min)
				t.Met = &met
				if c, ok := r.Metrics[t.Context]; ok && t.Context != "" {
					t.ContextGot = &c
				}
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

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// readSamples loads the JSON files the benchmarks wrote (bench name,
// series name → milliseconds), in a stable order.
func readSamples(dir string) ([]Series, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var out []Series
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var v struct {
			Bench  string               `json:"bench"`
			Series map[string][]float64 `json:"series"`
		}
		if err := json.Unmarshal(b, &v); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		names := make([]string, 0, len(v.Series))
		for n := range v.Series {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			ms := append([]float64(nil), v.Series[n]...)
			sort.Float64s(ms)
			out = append(out, Series{Bench: v.Bench, Name: n, MS: ms})
		}
	}
	return out, nil
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
	fmt.Fprintf(&b, "# hearth benchmark report\n\nGenerated %s on %d × %s (nproc %d), Linux %s, %s; load average %s when the benchmarks started, %s when they ended. Regenerate with `make bench`.\n\n",
		rep.Generated.Format(time.RFC3339), rep.Machine.CPUs, rep.Machine.CPU, rep.Machine.CPUs, rep.Machine.Kernel, rep.Machine.Go, rep.Machine.LoadBefore, rep.Machine.LoadAfter)
	b.WriteString("Every figure is measured next to a baseline in the same run; compare within a row, not across machines.\n\n")
	if rep.Note != "" {
		b.WriteString(rep.Note + "\n\n")
	}
	b.WriteString("## Targets (DESIGN §15)\n\n| goal | metric | target | got | met | context |\n|---|---|---|---|---|---|\n")
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
		ctx := ""
		if t.ContextGot != nil {
			ctx = fmt.Sprintf("`%s` %.3g", t.Context, *t.ContextGot)
		}
		fmt.Fprintf(&b, "| %s | `%s` %s | %s | %.3g | %s | %s |\n", t.Why, t.Metric, t.Bench, goal, t.Got, met, ctx)
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
	if len(rep.Series) > 0 {
		b.WriteString("## Latency distributions\n\n| benchmark | series | n | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|\n")
		for _, s := range rep.Series {
			fmt.Fprintf(&b, "| %s | %s | %d | %.3g | %.3g | %.3g | %.3g |\n", s.Bench, s.Name, len(s.MS), quantile(s.MS, .5), quantile(s.MS, .9), quantile(s.MS, .99), quantile(s.MS, 1))
		}
		b.WriteString("\n")
	}
	b.WriteString("![latency chart](report.svg)\n")
	if rep.Notes != "" {
		b.WriteString("\n" + rep.Notes)
	}
	return b.String()
}

// quantile of sorted values (nearest rank).
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// chart draws, for every benchmark that reports millisecond metrics, one
// horizontal bar per metric, so the baseline sits next to the measured
// figure; then, for every benchmark that left samples, the latency
// distributions as cumulative curves on a logarithmic time axis.
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
	groups := seriesGroups(rep.Series)
	const left, width, rowH = 420, 360, 18
	const panelH = 240
	barsH := len(bars)*rowH + 40
	h := barsH + len(groups)*panelH + 10
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", left+width+80, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="4" y="14" font-size="13">hearth benchmarks: milliseconds (shorter is better; linear scale per chart)</text>`+"\n")
	for i, br := range bars {
		y := 28 + i*rowH
		w := 0.0
		if max > 0 {
			w = br.v / max * width
		}
		color := "#4878a8"
		if strings.Contains(br.label, "raw") || strings.Contains(br.label, "baseline") || strings.Contains(br.label, "one-") || strings.Contains(br.label, "seed") || strings.Contains(br.label, "empty") {
			color = "#a0a0a0"
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", left-6, y+12, escape(br.label))
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", left, y+2, w, rowH-5, color)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d">%.3g</text>`+"\n", float64(left)+w+4, y+12, br.v)
	}
	for i, g := range groups {
		cdfPanel(&b, g, 10, barsH+i*panelH, left+width+60, panelH-20)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// seriesGroups groups series by benchmark, keeping their order.
func seriesGroups(all []Series) [][]Series {
	var out [][]Series
	idx := map[string]int{}
	for _, s := range all {
		if len(s.MS) == 0 {
			continue
		}
		i, ok := idx[s.Bench]
		if !ok {
			i = len(out)
			idx[s.Bench] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], s)
	}
	return out
}

var palette = []string{"#1f77b4", "#aaaaaa", "#d62728", "#777777", "#2ca02c", "#9467bd"}

// cdfPanel draws one benchmark's series as cumulative distributions:
// x is log10(ms), y the fraction of samples at or below it.
func cdfPanel(b *strings.Builder, g []Series, x0, y0, w, h int) {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range g {
		lo = math.Min(lo, math.Max(s.MS[0], 1e-3))
		hi = math.Max(hi, s.MS[len(s.MS)-1])
	}
	llo, lhi := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if lhi <= llo {
		lhi = llo + 1
	}
	const legendW, padL, padT, padB = 190, 40, 22, 22
	pw, ph := float64(w-legendW-padL), float64(h-padT-padB)
	px := func(v float64) float64 {
		return float64(x0+padL) + (math.Log10(math.Max(v, 1e-3))-llo)/(lhi-llo)*pw
	}
	py := func(f float64) float64 { return float64(y0+padT) + (1-f)*ph }
	fmt.Fprintf(b, `<text x="%d" y="%d" font-size="12">%s — latency distribution (fraction ≤ x, log ms)</text>`+"\n", x0, y0+12, escape(strings.TrimPrefix(g[0].Bench, "Benchmark")))
	fmt.Fprintf(b, `<rect x="%d" y="%d" width="%.0f" height="%.0f" fill="none" stroke="#333"/>`+"\n", x0+padL, y0+padT, pw, ph)
	for e := llo; e <= lhi; e++ {
		x := px(math.Pow(10, e))
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", x, py(1), x, py(0))
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle">%g</text>`+"\n", x, py(0)+14, math.Pow(10, e))
	}
	for _, f := range []float64{0, .5, .9, 1} {
		fmt.Fprintf(b, `<text x="%d" y="%.1f" text-anchor="end">%g</text>`+"\n", x0+padL-4, py(f)+4, f)
	}
	for i, s := range g {
		color := palette[i%len(palette)]
		var pts strings.Builder
		n := float64(len(s.MS))
		for j, v := range s.MS {
			fmt.Fprintf(&pts, "%.1f,%.1f %.1f,%.1f ", px(v), py(float64(j)/n), px(v), py(float64(j+1)/n))
		}
		fmt.Fprintf(b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`+"\n", color, strings.TrimSpace(pts.String()))
		ly := y0 + padT + 14*i + 8
		lx := x0 + padL + int(pw) + 10
		fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/>`+"\n", lx, ly-4, lx+16, ly-4, color)
		fmt.Fprintf(b, `<text x="%d" y="%d">%s (n=%d)</text>`+"\n", lx+20, ly, escape(s.Name), len(s.MS))
	}
}

func escape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
