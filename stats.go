package hearth

import (
	"context"
	"path/filepath"

	"github.com/hearth-vm/hearth/jail"
	"github.com/hearth-vm/hearth/metrics"
)

// firecrackerMetrics is implemented by machines whose VMM reports
// Firecracker's metrics (the Firecracker backend).
type firecrackerMetrics interface {
	Metrics() *metrics.FirecrackerAccumulator
}

// MetricSources describes every VM with a live VMM for the metrics
// collectors. It never waits for an operation in progress.
func (r *Runtime) MetricSources() []metrics.Source {
	r.mu.Lock()
	entries := make([]*vmEntry, 0, len(r.vms))
	for _, e := range r.vms {
		entries = append(entries, e)
	}
	r.mu.Unlock()
	out := make([]metrics.Source, 0, len(entries))
	for _, e := range entries {
		if src, ok := r.metricSource(e); ok {
			out = append(out, src)
		}
	}
	return out
}

func (r *Runtime) metricSource(e *vmEntry) (metrics.Source, bool) {
	rec := e.view.Load()
	if rec == nil || !Status(rec.Status).HasProcess() || rec.Handle == nil {
		return metrics.Source{}, false
	}
	src := metrics.Source{VM: rec.ID, Backend: rec.Backend, Pid: rec.Handle.Pid, StartTime: rec.Handle.StartTime}
	if _, jailed := findAlloc(rec.Resources, jail.IDPool); jailed && r.jails != nil {
		src.Cgroup = &metrics.CgroupDirs{Version: r.jails.Hierarchy().Version, Dirs: r.jails.Cgroup(rec.Key).Dirs()}
	}
	src.Firecracker = e.fcMetrics.Load()
	if _, ok := uffdServer(rec.Resources); ok {
		status := filepath.Join(r.vmDir(rec.Key), uffdStatus)
		src.PageFaults = func() (metrics.PageFaultStats, error) { return pageFaultStats(status) }
	}
	return src, true
}

// Stats returns a point-in-time view of a VM's resource use: CPU, memory
// and pids (from its cgroup when jailed, else from its VMM process),
// block I/O, network counters and the VMM's own counters.
func (r *Runtime) Stats(ctx context.Context, id string) (metrics.Stats, error) {
	r.mu.Lock()
	e := r.vms[id]
	r.mu.Unlock()
	if e == nil {
		return metrics.Stats{}, newErr(KindVMNotFound, "stats", id, nil)
	}
	src, ok := r.metricSource(e)
	if !ok {
		rec := e.view.Load()
		if rec == nil || rec.ID != id {
			return metrics.Stats{}, newErr(KindVMNotFound, "stats", id, nil)
		}
		return metrics.Stats{}, &Error{Kind: KindInvalidTransition, Op: "stats", VM: id, From: rec.Status, To: "stats"}
	}
	return metrics.Collect(src), nil
}
