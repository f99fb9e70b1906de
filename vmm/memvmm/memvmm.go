package memvmm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"

	"github.com/hearth-vm/hearth/vmm"
)

// Name is the backend's name.
const Name = "mem"

type phase int

const (
	launched phase = iota
	configured
	running
	paused
	exited
)

func (p phase) String() string {
	return [...]string{"launched", "configured", "running", "paused", "exited"}[p]
}

// Backend is an in-memory VMM backend. The zero value is not usable; call
// New.
type Backend struct {
	mu        sync.Mutex
	nextPid   int
	machines  map[int]*Machine
	snapshots map[string]snapshot
	nextSnap  int
}

type snapshot struct {
	cfg vmm.Config
}

// stateDoc is what a snapshot's state file holds: the key of the machine
// state kept in the Backend.
type stateDoc struct {
	Snapshot string `json:"memvmm_snapshot"`
}

// New returns an empty backend.
func New() *Backend {
	return &Backend{nextPid: 1 << 22, machines: map[int]*Machine{}, snapshots: map[string]snapshot{}}
}

// Name implements vmm.Backend.
func (b *Backend) Name() string { return Name }

// Launch implements vmm.Backend.
func (b *Backend) Launch(ctx context.Context, spec vmm.LaunchSpec) (vmm.Machine, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if spec.VMID == "" {
		return nil, fmt.Errorf("memvmm: launch without a vm id")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.nextPid++
	m := &Machine{b: b, id: spec.VMID, done: make(chan struct{}),
		handle: vmm.Handle{Backend: Name, Pid: b.nextPid, StartTime: uint64(b.nextPid), Dir: spec.Dir}}
	b.machines[m.handle.Pid] = m
	return m, nil
}

// Adopt implements vmm.Backend: it finds a machine of this Backend that
// has not exited.
func (b *Backend) Adopt(ctx context.Context, h vmm.Handle) (vmm.Machine, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m, ok := b.machines[h.Pid]
	if !ok || m.handle.StartTime != h.StartTime {
		return nil, fmt.Errorf("memvmm pid %d: %w", h.Pid, vmm.ErrGone)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.released = false
	return m, nil
}

// Live returns the number of machines that have not exited.
func (b *Backend) Live() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.machines)
}

// Snapshots returns the number of snapshots held.
func (b *Backend) Snapshots() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.snapshots)
}

// Machine is one in-memory VM.
type Machine struct {
	b      *Backend
	id     string
	handle vmm.Handle

	mu       sync.Mutex
	phase    phase
	cfg      vmm.Config
	exit     vmm.ExitStatus
	done     chan struct{}
	released bool
}

var _ vmm.Machine = (*Machine)(nil)

func refuse(op string, format string, a ...any) error {
	return &vmm.RequestError{Method: "MEM", Path: op, Status: 400, Body: fmt.Sprintf(format, a...)}
}

// Handle implements vmm.Machine.
func (m *Machine) Handle() vmm.Handle { return m.handle }

// Config returns the configuration the machine was given.
func (m *Machine) Config() vmm.Config {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cfg
}

// State returns the machine's phase as text, for tests.
func (m *Machine) State() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.phase.String()
}

func (m *Machine) step(op string, from phase, to phase) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.phase != from {
		return refuse(op, "%s is not allowed while %s", op, m.phase)
	}
	m.phase = to
	return nil
}

// Configure implements vmm.Machine.
func (m *Machine) Configure(ctx context.Context, cfg vmm.Config) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	roots := 0
	for _, d := range cfg.Drives {
		if d.Root {
			roots++
		}
	}
	switch {
	case cfg.VCPUs < 1 || cfg.MemoryMiB < 1:
		return refuse("configure", "vcpus and memory must be positive")
	case cfg.Kernel == "":
		return refuse("configure", "no kernel")
	case roots != 1:
		return refuse("configure", "want exactly one root drive, got %d", roots)
	}
	if err := m.step("configure", launched, configured); err != nil {
		return err
	}
	m.mu.Lock()
	m.cfg = cfg
	m.mu.Unlock()
	return nil
}

// LoadSnapshot implements vmm.Machine.
func (m *Machine) LoadSnapshot(ctx context.Context, req vmm.LoadRequest) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b, err := os.ReadFile(req.StatePath)
	if err != nil {
		return refuse("load", "read snapshot state: %v", err)
	}
	var doc stateDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return refuse("load", "snapshot state %s is not an in-memory backend's: %v", req.StatePath, err)
	}
	m.b.mu.Lock()
	s, ok := m.b.snapshots[doc.Snapshot]
	m.b.mu.Unlock()
	if !ok {
		return refuse("load", "no snapshot %q in this backend (it lives in memory only)", doc.Snapshot)
	}
	to := paused
	if req.Resume {
		to = running
	}
	if err := m.step("load", launched, to); err != nil {
		return err
	}
	m.mu.Lock()
	m.cfg = s.cfg
	drives := append([]vmm.Drive(nil), m.cfg.Drives...)
	for _, o := range req.DriveOverrides {
		found := false
		for i := range drives {
			if drives[i].ID == o.ID {
				drives[i].Path, found = o.Path, true
			}
		}
		if !found {
			m.phase = launched
			m.mu.Unlock()
			return refuse("load", "drive override for unknown drive %q", o.ID)
		}
	}
	m.cfg.Drives = drives
	if req.VsockUDSPath != "" && m.cfg.Vsock != nil {
		v := *m.cfg.Vsock
		v.UDSPath = req.VsockUDSPath
		m.cfg.Vsock = &v
	}
	m.mu.Unlock()
	return nil
}

// Start implements vmm.Machine.
func (m *Machine) Start(ctx context.Context) error { return m.step("start", configured, running) }

// Pause implements vmm.Machine.
func (m *Machine) Pause(ctx context.Context) error { return m.step("pause", running, paused) }

// Resume implements vmm.Machine.
func (m *Machine) Resume(ctx context.Context) error { return m.step("resume", paused, running) }

// Snapshot implements vmm.Machine: the VM must be paused.
func (m *Machine) Snapshot(ctx context.Context, req vmm.SnapshotRequest) error {
	m.mu.Lock()
	ph, cfg := m.phase, m.cfg
	m.mu.Unlock()
	if ph != paused {
		return refuse("snapshot", "snapshot is only allowed while paused, not %s", ph)
	}
	if req.Diff && !cfg.TrackDirtyPages {
		return refuse("snapshot", "diff snapshots need dirty page tracking")
	}
	if req.StatePath == "" || req.MemPath == "" {
		return refuse("snapshot", "state and memory paths are required")
	}
	// The machine state stays in the Backend; the files name it, so the
	// runtime's snapshot store can move, hash and verify them like any
	// backend's.
	m.b.mu.Lock()
	m.b.nextSnap++
	key := fmt.Sprintf("s%d", m.b.nextSnap)
	m.b.snapshots[key] = snapshot{cfg: cfg}
	m.b.mu.Unlock()
	doc, _ := json.Marshal(stateDoc{Snapshot: key})
	if err := os.WriteFile(req.StatePath, doc, 0o600); err != nil {
		return fmt.Errorf("memvmm: write snapshot state: %w", err)
	}
	if err := os.WriteFile(req.MemPath, nil, 0o600); err != nil {
		os.Remove(req.StatePath)
		return fmt.Errorf("memvmm: write snapshot memory: %w", err)
	}
	return nil
}

func (m *Machine) exitNow(st vmm.ExitStatus) {
	m.mu.Lock()
	if m.phase == exited {
		m.mu.Unlock()
		return
	}
	m.phase = exited
	st.Exited = true
	m.exit = st
	m.mu.Unlock()
	m.b.mu.Lock()
	delete(m.b.machines, m.handle.Pid)
	m.b.mu.Unlock()
	close(m.done)
}

// Shutdown implements vmm.Machine: the guest always powers off at once.
func (m *Machine) Shutdown(ctx context.Context) (vmm.ShutdownReport, error) {
	m.mu.Lock()
	gone := m.phase == exited
	m.mu.Unlock()
	if gone {
		return vmm.ShutdownReport{Outcome: "already exited"}, nil
	}
	m.exitNow(vmm.ExitStatus{Code: 0, Expected: true})
	return vmm.ShutdownReport{Outcome: "graceful"}, nil
}

// Kill implements vmm.Machine.
func (m *Machine) Kill() error {
	m.exitNow(vmm.ExitStatus{Code: -1, Signal: "SIGKILL", Expected: true})
	return nil
}

// Crash makes the machine exit as if the VMM died unexpectedly.
func (m *Machine) Crash() {
	m.exitNow(vmm.ExitStatus{Code: -1, Signal: "SIGKILL"})
}

// Done implements vmm.Machine.
func (m *Machine) Done() <-chan struct{} { return m.done }

// ExitStatus implements vmm.Machine.
func (m *Machine) ExitStatus() vmm.ExitStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.exit
}

// Release implements vmm.Machine; the machine stays in the Backend for a
// later Adopt.
func (m *Machine) Release() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.released = true
}

// Find returns the live machine launched for vmID, or nil.
func (b *Backend) Find(vmID string) *Machine {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range b.machines {
		if m.id == vmID {
			return m
		}
	}
	return nil
}

// Machines returns the machines that have not exited.
func (b *Backend) Machines() []*Machine {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]*Machine, 0, len(b.machines))
	for _, m := range b.machines {
		out = append(out, m)
	}
	return out
}

// Guestless implements vmm.Guestless: there is no guest to talk to.
func (m *Machine) Guestless() bool { return true }

var _ vmm.RateLimitSetter = (*Machine)(nil)

// SetRateLimits implements vmm.RateLimitSetter by recording the limits in
// the machine's configuration (Config shows them), with Firecracker's
// rules: only after boot, and only for devices the machine has.
func (m *Machine) SetRateLimits(ctx context.Context, u vmm.RateLimitUpdate) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.phase != running && m.phase != paused {
		return refuse("rate-limits", "rate limits change only after boot (machine is %s)", m.phase)
	}
	drives := map[string]int{}
	for i, d := range m.cfg.Drives {
		drives[d.ID] = i
	}
	nics := map[string]int{}
	for i, n := range m.cfg.NICs {
		nics[n.ID] = i
	}
	for _, d := range u.Drives {
		if _, ok := drives[d.ID]; !ok {
			return refuse("rate-limits", "no drive %q", d.ID)
		}
	}
	for _, n := range u.NICs {
		if _, ok := nics[n.ID]; !ok {
			return refuse("rate-limits", "no network interface %q", n.ID)
		}
	}
	// Copy before changing: Config hands out the slices.
	m.cfg.Drives = append([]vmm.Drive(nil), m.cfg.Drives...)
	m.cfg.NICs = append([]vmm.NIC(nil), m.cfg.NICs...)
	for _, d := range u.Drives {
		m.cfg.Drives[drives[d.ID]].RateLimit = d.Limit
	}
	for _, n := range u.NICs {
		m.cfg.NICs[nics[n.ID]].RX, m.cfg.NICs[nics[n.ID]].TX = n.RX, n.TX
	}
	return nil
}
