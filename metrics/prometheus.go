package metrics

import (
	"net/http"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Lifecycle steps observed by Registry.ObserveStep. The runtime may
// observe its own pipeline steps (reserve, rootfs, launch, …) too; the
// step label is free-form.
const (
	StepSpawn      = "spawn"       // VMM process started
	StepAPIReady   = "api_ready"   // control socket answers
	StepBoot       = "boot"        // cold boot: configure + InstanceStart
	StepRestore    = "restore"     // snapshot load + resume
	StepAgentReady = "agent_ready" // guest agent answers its first ping
)

// Label names shared by every per-VM metric.
var vmLabels = []string{"vm", "backend"}

// Registry is the Prometheus registry the daemon serves at /metrics. It
// holds the per-VM collector (fed by a Sources function called at every
// scrape), the lifecycle step histogram, and Go/process metrics of the
// daemon itself.
type Registry struct {
	reg   *prometheus.Registry
	steps *prometheus.HistogramVec
}

// NewRegistry returns a registry whose per-VM metrics come from sources,
// called once per scrape (nil: no per-VM metrics). sources must be cheap
// and must not block on VM operations: return what is known now.
func NewRegistry(sources func() []Source) *Registry {
	r := &Registry{
		reg: prometheus.NewRegistry(),
		steps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "hearth_lifecycle_step_seconds",
			Help: "Duration of VM lifecycle steps (spawn, api_ready, boot, restore, agent_ready and the runtime's pipeline steps).",
			// 1 ms to ~33 s: a restore step is milliseconds, a TCG boot
			// seconds.
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}, []string{"backend", "step"}),
	}
	r.reg.MustRegister(r.steps,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if sources != nil {
		r.reg.MustRegister(&vmCollector{sources: sources})
	}
	return r
}

// ObserveStep records the duration of one lifecycle step.
func (r *Registry) ObserveStep(backend, step string, d time.Duration) {
	r.steps.WithLabelValues(backend, step).Observe(d.Seconds())
}

// Register adds more collectors (e.g. the API server's request metrics).
func (r *Registry) Register(cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := r.reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Gatherer returns the underlying registry, for tests and for serving
// it in another way.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

// Handler serves the registry in the Prometheus exposition format.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

func desc(name, help string, extra ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, append(append([]string(nil), vmLabels...), extra...), nil)
}

var (
	descCPU            = desc("hearth_vm_cpu_seconds_total", "CPU time used by the VMM (vCPUs included).")
	descCPUThrottled   = desc("hearth_vm_cpu_throttled_seconds_total", "Time the VMM's cgroup was throttled by its CPU quota.")
	descCPUQuota       = desc("hearth_vm_cpu_quota_cpus", "CPU limit of the VMM's cgroup, in CPUs.")
	descMem            = desc("hearth_vm_memory_bytes", "Memory charged to the VMM (cgroup usage, or RSS without a memory cgroup).")
	descMemPeak        = desc("hearth_vm_memory_peak_bytes", "Peak memory charged to the VMM.")
	descMemLimit       = desc("hearth_vm_memory_limit_bytes", "Memory limit of the VMM's cgroup.")
	descOOM            = desc("hearth_vm_oom_kills_total", "OOM kills in the VMM's cgroup.")
	descPids           = desc("hearth_vm_pids", "Tasks in the VMM's cgroup.")
	descRxBytes        = desc("hearth_vm_network_receive_bytes_total", "Bytes the host received on the VM's TAP (sent by the guest).", "device")
	descRxPackets      = desc("hearth_vm_network_receive_packets_total", "Packets the host received on the VM's TAP.", "device")
	descTxBytes        = desc("hearth_vm_network_transmit_bytes_total", "Bytes the host sent on the VM's TAP (received by the guest).", "device")
	descTxPackets      = desc("hearth_vm_network_transmit_packets_total", "Packets the host sent on the VM's TAP.", "device")
	descBlockRead      = desc("hearth_vm_block_read_bytes_total", "Bytes the VMM process read from storage.")
	descBlockWrite     = desc("hearth_vm_block_write_bytes_total", "Bytes the VMM process wrote to storage.")
	descFCCounter      = desc("hearth_firecracker_total", "Firecracker counter, summed over its per-flush deltas.", "metric")
	descFCGauge        = desc("hearth_firecracker_value", "Firecracker absolute metric (last flushed value).", "metric")
	descFCLines        = desc("hearth_firecracker_metrics_lines_total", "Firecracker metrics lines applied.")
	descFCParseErrors  = desc("hearth_firecracker_metrics_parse_errors_total", "Firecracker metrics lines that did not parse.")
	descCollectErrors  = desc("hearth_vm_stats_errors", "Parts of the VM's stats that could not be read at this scrape.")
	descUffdFaults     = desc("hearth_vm_uffd_faults_total", "Page faults the VM's page-fault server served on demand (lazy restore).")
	descUffdBytes      = desc("hearth_vm_uffd_bytes_total", "Guest memory the VM's page-fault server installed, by how: fault (with the pages copied in the same call), background (readahead, fault-around), prefetch (working-set trace), zero (removed by the guest).", "how")
	descUffdLatMax     = desc("hearth_vm_uffd_fault_latency_max_seconds", "Longest time the page-fault server took to serve a fault.")
	descUffdLatMean    = desc("hearth_vm_uffd_fault_latency_mean_seconds", "Mean time the page-fault server took to serve a fault.")
	descUffdPrefetch   = desc("hearth_vm_uffd_prefetch_seconds", "How long replaying the working-set trace took, once done.")
	descUffdErrors     = desc("hearth_vm_uffd_errors_total", "Transient errors the page-fault server retried or skipped.")
	allDescs           = []*prometheus.Desc{descCPU, descCPUThrottled, descCPUQuota, descMem, descMemPeak, descMemLimit, descOOM, descPids, descRxBytes, descRxPackets, descTxBytes, descTxPackets, descBlockRead, descBlockWrite, descFCCounter, descFCGauge, descFCLines, descFCParseErrors, descCollectErrors, descUffdFaults, descUffdBytes, descUffdLatMax, descUffdLatMean, descUffdPrefetch, descUffdErrors}
	nanosecondsPerSec  = 1e9
	counter, gaugeType = prometheus.CounterValue, prometheus.GaugeValue
)

// vmCollector turns Stats into metrics at scrape time, so nothing is
// cached and a VM that is gone disappears from the next scrape.
type vmCollector struct {
	sources func() []Source
}

func (c *vmCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

func (c *vmCollector) Collect(ch chan<- prometheus.Metric) {
	seen := map[string]bool{}
	for _, src := range c.sources() {
		// Two sources for one VM would make the scrape fail as a whole.
		if seen[src.VM] {
			continue
		}
		seen[src.VM] = true
		emitStats(ch, Collect(src))
	}
}

func emitStats(ch chan<- prometheus.Metric, st Stats) {
	lv := []string{st.VM, st.Backend}
	emit := func(d *prometheus.Desc, t prometheus.ValueType, v float64, extra ...string) {
		ch <- prometheus.MustNewConstMetric(d, t, v, append(lv[:2:2], extra...)...)
	}
	if c := st.CPU; c != nil {
		emit(descCPU, counter, float64(c.UsageNanos)/nanosecondsPerSec)
		if c.Source == "cgroup" {
			emit(descCPUThrottled, counter, float64(c.ThrottledNanos)/nanosecondsPerSec)
		}
		if c.QuotaCPUs > 0 {
			emit(descCPUQuota, gaugeType, c.QuotaCPUs)
		}
	}
	if m := st.Memory; m != nil {
		emit(descMem, gaugeType, float64(m.UsageBytes))
		if m.PeakBytes > 0 {
			emit(descMemPeak, gaugeType, float64(m.PeakBytes))
		}
		if m.LimitBytes > 0 {
			emit(descMemLimit, gaugeType, float64(m.LimitBytes))
		}
		if m.Source == "cgroup" {
			emit(descOOM, counter, float64(m.OOMKills))
		}
	}
	if p := st.Pids; p != nil {
		emit(descPids, gaugeType, float64(p.Current))
	}
	for _, n := range st.Net {
		emit(descRxBytes, counter, float64(n.RxBytes), n.Device)
		emit(descRxPackets, counter, float64(n.RxPackets), n.Device)
		emit(descTxBytes, counter, float64(n.TxBytes), n.Device)
		emit(descTxPackets, counter, float64(n.TxPackets), n.Device)
	}
	if b := st.Block; b != nil {
		emit(descBlockRead, counter, float64(b.ReadBytes))
		emit(descBlockWrite, counter, float64(b.WriteBytes))
	}
	if fc := st.Firecracker; fc != nil {
		for _, k := range sortedKeys(fc.Counters) {
			emit(descFCCounter, counter, float64(fc.Counters[k]), k)
		}
		for _, k := range sortedKeys(fc.Gauges) {
			emit(descFCGauge, gaugeType, float64(fc.Gauges[k]), k)
		}
		emit(descFCLines, counter, float64(fc.Lines))
		emit(descFCParseErrors, counter, float64(fc.ParseErrors))
	}
	if pf := st.PageFaults; pf != nil {
		emit(descUffdFaults, counter, float64(pf.Faults))
		emit(descUffdBytes, counter, float64(pf.FaultBytes), "fault")
		emit(descUffdBytes, counter, float64(pf.BackgroundBytes), "background")
		emit(descUffdBytes, counter, float64(pf.PrefetchedBytes), "prefetch")
		emit(descUffdBytes, counter, float64(pf.ZeroBytes), "zero")
		emit(descUffdLatMax, gaugeType, pf.MaxFaultLatencyUS/1e6)
		emit(descUffdLatMean, gaugeType, pf.MeanFaultLatencyUS/1e6)
		if pf.PrefetchMS > 0 {
			emit(descUffdPrefetch, gaugeType, pf.PrefetchMS/1e3)
		}
		emit(descUffdErrors, counter, float64(pf.Errors))
	}
	emit(descCollectErrors, gaugeType, float64(len(st.Errors)))
}

func sortedKeys(m map[string]uint64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
