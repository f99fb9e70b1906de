package bench

import (
	"context"
	"sync"
	"time"

	"github.com/hearth-vm/hearth/metrics"
	"github.com/hearth-vm/hearth/vmm"
)

// timedBackend wraps a VMM backend and adds up, per VMM process, the time
// hearth spends inside the backend's calls (launch, configure, start,
// kill). A VM's create time minus that is the control plane's own time —
// store, pipeline, locks, bookkeeping — measured per VM, instead of as a
// difference between two noisy distributions dominated by VMM start-up.
type timedBackend struct {
	vmm.Backend
	mu sync.Mutex
	in map[int]time.Duration // by pid
}

func newTimedBackend(b vmm.Backend) *timedBackend {
	return &timedBackend{Backend: b, in: map[int]time.Duration{}}
}

func (t *timedBackend) add(pid int, d time.Duration) {
	t.mu.Lock()
	t.in[pid] += d
	t.mu.Unlock()
}

// take returns and forgets the time spent for pid.
func (t *timedBackend) take(pid int) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	d := t.in[pid]
	delete(t.in, pid)
	return d
}

func (t *timedBackend) Launch(ctx context.Context, spec vmm.LaunchSpec) (vmm.Machine, error) {
	t0 := time.Now()
	m, err := t.Backend.Launch(ctx, spec)
	if err != nil {
		return nil, err
	}
	pid := m.Handle().Pid
	t.add(pid, time.Since(t0))
	return &timedMachine{Machine: m, t: t, pid: pid}, nil
}

type timedMachine struct {
	vmm.Machine
	t   *timedBackend
	pid int
}

func (m *timedMachine) time(f func() error) error {
	t0 := time.Now()
	err := f()
	m.t.add(m.pid, time.Since(t0))
	return err
}

func (m *timedMachine) Configure(ctx context.Context, cfg vmm.Config) error {
	return m.time(func() error { return m.Machine.Configure(ctx, cfg) })
}

func (m *timedMachine) Start(ctx context.Context) error {
	return m.time(func() error { return m.Machine.Start(ctx) })
}

func (m *timedMachine) Kill() error { return m.time(m.Machine.Kill) }

// Metrics forwards the Firecracker counters, so the runtime publishes
// them as it does for an unwrapped machine.
func (m *timedMachine) Metrics() *metrics.FirecrackerAccumulator {
	if f, ok := m.Machine.(interface {
		Metrics() *metrics.FirecrackerAccumulator
	}); ok {
		return f.Metrics()
	}
	return nil
}
