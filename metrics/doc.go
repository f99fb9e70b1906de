// Package metrics observes running VMs: it turns Firecracker's metrics
// lines into cumulative counters, reads the VMM's cgroup (v1 and v2), its
// TAP devices (inside the VM's network namespace) and its block I/O, and
// exposes all of it as a Stats value for the library and as Prometheus
// metrics for the daemon's /metrics, together with histograms of
// lifecycle step timings. For a VM restored lazily, the counters of its
// page-fault server (faults, bytes installed on demand, in the background,
// prefetched or zeroed, fault service latency) come from a reader the
// runtime supplies (Source.PageFaults), as hearth_vm_uffd_* metrics.
//
// Firecracker writes one JSON document per flush (every 60 s and on
// FlushMetrics). Most of its numbers are deltas since the previous flush
// (SharedIncMetric); a few are absolute values (SharedStoreMetric: startup
// times, snapshot latencies, the min/max of latency aggregates, fatal
// signals). FirecrackerAccumulator sums the former and keeps the last
// value of the latter, so a reader never mistakes one interval's numbers
// for totals. A line that does not parse is counted, never fatal.
//
// The package only reads: it never creates, moves or limits anything, and
// it knows nothing about the runtime's records. Callers describe each VM
// with a Source (pid, cgroup directories, netns, TAP names, accumulator,
// page-fault counters).
package metrics
