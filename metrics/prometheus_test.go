package metrics

import (
	"errors"
	"io"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

func TestRegistryExposesVMs(t *testing.T) {
	cg := writeTree(t, map[string]string{
		"vm1/cpu.stat":       "usage_usec 2000000\nuser_usec 1500000\nsystem_usec 500000\nnr_throttled 0\nthrottled_usec 250000\n",
		"vm1/cpu.max":        "50000 100000\n",
		"vm1/memory.current": "1048576\n",
		"vm1/memory.max":     "max\n",
		"vm1/pids.current":   "4\n",
		"vm1/pids.max":       "max\n",
	})
	acc := NewFirecrackerAccumulator()
	for _, l := range []string{
		`{"utc_timestamp_ms":1,"put_api_requests":{"actions_count":2},"block_rootfs":{"read_bytes":100},"latencies_us":{"pause_vm":30}}`,
		`{"utc_timestamp_ms":2,"put_api_requests":{"actions_count":1},"block_rootfs":{"read_bytes":50},"latencies_us":{"pause_vm":20}}`,
		`{torn`,
	} {
		acc.Feed([]byte(l))
	}
	sources := []Source{
		{VM: "vm1", Backend: "firecracker", Cgroup: &CgroupDirs{Version: 2, Dirs: map[string]string{"": filepath.Join(cg, "vm1")}}, Firecracker: acc},
		{VM: "vm1", Backend: "firecracker"}, // a duplicate must not break the scrape
		{VM: "vm2", Backend: "qemu", Cgroup: &CgroupDirs{Version: 2, Dirs: map[string]string{"": filepath.Join(cg, "gone")}}},
	}
	reg := NewRegistry(func() []Source { return sources })
	reg.ObserveStep("firecracker", StepRestore, 3*time.Millisecond)
	reg.ObserveStep("firecracker", StepRestore, 5*time.Millisecond)
	reg.ObserveStep("qemu", StepBoot, 1500*time.Millisecond)

	want := `
# HELP hearth_firecracker_total Firecracker counter, summed over its per-flush deltas.
# TYPE hearth_firecracker_total counter
hearth_firecracker_total{backend="firecracker",metric="block_rootfs.read_bytes",vm="vm1"} 150
hearth_firecracker_total{backend="firecracker",metric="put_api_requests.actions_count",vm="vm1"} 3
# HELP hearth_firecracker_value Firecracker absolute metric (last flushed value).
# TYPE hearth_firecracker_value gauge
hearth_firecracker_value{backend="firecracker",metric="latencies_us.pause_vm",vm="vm1"} 20
# HELP hearth_firecracker_metrics_parse_errors_total Firecracker metrics lines that did not parse.
# TYPE hearth_firecracker_metrics_parse_errors_total counter
hearth_firecracker_metrics_parse_errors_total{backend="firecracker",vm="vm1"} 1
# HELP hearth_firecracker_metrics_lines_total Firecracker metrics lines applied.
# TYPE hearth_firecracker_metrics_lines_total counter
hearth_firecracker_metrics_lines_total{backend="firecracker",vm="vm1"} 2
# HELP hearth_vm_cpu_seconds_total CPU time used by the VMM (vCPUs included).
# TYPE hearth_vm_cpu_seconds_total counter
hearth_vm_cpu_seconds_total{backend="firecracker",vm="vm1"} 2
# HELP hearth_vm_cpu_quota_cpus CPU limit of the VMM's cgroup, in CPUs.
# TYPE hearth_vm_cpu_quota_cpus gauge
hearth_vm_cpu_quota_cpus{backend="firecracker",vm="vm1"} 0.5
# HELP hearth_vm_cpu_throttled_seconds_total Time the VMM's cgroup was throttled by its CPU quota.
# TYPE hearth_vm_cpu_throttled_seconds_total counter
hearth_vm_cpu_throttled_seconds_total{backend="firecracker",vm="vm1"} 0.25
# HELP hearth_vm_memory_bytes Memory charged to the VMM (cgroup usage, or RSS without a memory cgroup).
# TYPE hearth_vm_memory_bytes gauge
hearth_vm_memory_bytes{backend="firecracker",vm="vm1"} 1.048576e+06
# HELP hearth_vm_pids Tasks in the VMM's cgroup.
# TYPE hearth_vm_pids gauge
hearth_vm_pids{backend="firecracker",vm="vm1"} 4
# HELP hearth_vm_stats_errors Parts of the VM's stats that could not be read at this scrape.
# TYPE hearth_vm_stats_errors gauge
hearth_vm_stats_errors{backend="firecracker",vm="vm1"} 0
hearth_vm_stats_errors{backend="qemu",vm="vm2"} 2
`
	names := []string{
		"hearth_firecracker_total", "hearth_firecracker_value", "hearth_firecracker_metrics_parse_errors_total",
		"hearth_firecracker_metrics_lines_total", "hearth_vm_cpu_seconds_total", "hearth_vm_cpu_quota_cpus",
		"hearth_vm_cpu_throttled_seconds_total", "hearth_vm_memory_bytes", "hearth_vm_pids", "hearth_vm_stats_errors",
	}
	if err := testutil.GatherAndCompare(reg.Gatherer(), strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}

	// The step histogram has the backend and step labels.
	mfs, err := reg.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var hist *dto.MetricFamily
	for _, mf := range mfs {
		if mf.GetName() == "hearth_lifecycle_step_seconds" {
			hist = mf
		}
	}
	if hist == nil || len(hist.Metric) != 2 {
		t.Fatalf("step histogram: %v", hist)
	}
	for _, m := range hist.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["backend"] == "firecracker" && labels["step"] == StepRestore {
			if m.Histogram.GetSampleCount() != 2 || m.Histogram.GetSampleSum() < 0.0079 || m.Histogram.GetSampleSum() > 0.0081 {
				t.Fatalf("restore histogram %v", m.Histogram)
			}
		}
	}

	// And the HTTP handler serves the exposition format.
	rec := httptest.NewRecorder()
	reg.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	if rec.Code != 200 || !strings.Contains(string(body), `hearth_firecracker_total{backend="firecracker",metric="put_api_requests.actions_count",vm="vm1"} 3`) {
		t.Fatalf("handler: %d\n%s", rec.Code, body)
	}
	if !strings.Contains(string(body), "go_goroutines") {
		t.Fatal("daemon's own Go metrics missing")
	}

	// A VM that is gone disappears at the next scrape.
	sources = sources[2:]
	if n, err := testutil.GatherAndCount(reg.Gatherer(), "hearth_firecracker_total"); err != nil || n != 0 {
		t.Fatalf("%d series after the VM left, %v", n, err)
	}
}

func TestCollectFallsBackToProcess(t *testing.T) {
	st := Collect(Source{VM: "self", Backend: "test", Pid: osPid(), Cgroup: &CgroupDirs{Version: 2, Dirs: map[string]string{"": "/nonexistent"}}})
	if st.CPU == nil || st.CPU.Source != "process" || st.Memory == nil || st.Memory.Source != "process" {
		t.Fatalf("%+v", st)
	}
	// A recorded start time that does not match: the pid is not read.
	st = Collect(Source{VM: "stale", Pid: osPid(), StartTime: 1})
	if st.CPU != nil || st.Pid != 0 || len(st.Errors) == 0 {
		t.Fatalf("stale pid read: %+v", st)
	}
}

// TestPageFaultMetrics: a lazily restored VM's page-fault server counters
// reach Stats and the exposition; a status that cannot be read is an
// error of that part only.
func TestPageFaultMetrics(t *testing.T) {
	pf := PageFaultStats{State: "serving", Faults: 12, FaultBytes: 12 << 12, BackgroundBytes: 180 << 12, PrefetchedBytes: 1 << 20,
		ZeroBytes: 8192, MaxFaultLatencyUS: 250, MeanFaultLatencyUS: 40, Trace: "replayed", PrefetchMS: 120, Errors: 1}
	sources := []Source{
		{VM: "lazy", Backend: "firecracker", PageFaults: func() (PageFaultStats, error) { return pf, nil }},
		{VM: "broken", Backend: "firecracker", PageFaults: func() (PageFaultStats, error) { return PageFaultStats{}, errors.New("no status file") }},
	}
	if st := Collect(sources[0]); st.PageFaults == nil || *st.PageFaults != pf || len(st.Errors) != 0 {
		t.Fatalf("stats %+v", st)
	}
	if st := Collect(sources[1]); st.PageFaults != nil || len(st.Errors) != 1 || !strings.Contains(st.Errors[0], "page faults: no status file") {
		t.Fatalf("stats %+v", st)
	}
	reg := NewRegistry(func() []Source { return sources })
	want := `
# HELP hearth_vm_uffd_faults_total Page faults the VM's page-fault server served on demand (lazy restore).
# TYPE hearth_vm_uffd_faults_total counter
hearth_vm_uffd_faults_total{backend="firecracker",vm="lazy"} 12
# HELP hearth_vm_uffd_bytes_total Guest memory the VM's page-fault server installed, by how: fault (with the pages copied in the same call), background (readahead, fault-around), prefetch (working-set trace), zero (removed by the guest).
# TYPE hearth_vm_uffd_bytes_total counter
hearth_vm_uffd_bytes_total{backend="firecracker",how="background",vm="lazy"} 737280
hearth_vm_uffd_bytes_total{backend="firecracker",how="fault",vm="lazy"} 49152
hearth_vm_uffd_bytes_total{backend="firecracker",how="prefetch",vm="lazy"} 1.048576e+06
hearth_vm_uffd_bytes_total{backend="firecracker",how="zero",vm="lazy"} 8192
# HELP hearth_vm_uffd_fault_latency_max_seconds Longest time the page-fault server took to serve a fault.
# TYPE hearth_vm_uffd_fault_latency_max_seconds gauge
hearth_vm_uffd_fault_latency_max_seconds{backend="firecracker",vm="lazy"} 0.00025
# HELP hearth_vm_uffd_prefetch_seconds How long replaying the working-set trace took, once done.
# TYPE hearth_vm_uffd_prefetch_seconds gauge
hearth_vm_uffd_prefetch_seconds{backend="firecracker",vm="lazy"} 0.12
# HELP hearth_vm_stats_errors Parts of the VM's stats that could not be read at this scrape.
# TYPE hearth_vm_stats_errors gauge
hearth_vm_stats_errors{backend="firecracker",vm="broken"} 1
hearth_vm_stats_errors{backend="firecracker",vm="lazy"} 0
`
	if err := testutil.GatherAndCompare(reg.Gatherer(), strings.NewReader(want), "hearth_vm_uffd_faults_total", "hearth_vm_uffd_bytes_total",
		"hearth_vm_uffd_fault_latency_max_seconds", "hearth_vm_uffd_prefetch_seconds", "hearth_vm_stats_errors"); err != nil {
		t.Fatal(err)
	}
}
