package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hearth-vm/hearth/proc"
	"github.com/hearth-vm/hearth/vmm"
)

// Machine is one QEMU process (once Configure or LoadSnapshot started it)
// and the guest it runs. It implements vmm.Machine.
type Machine struct {
	b       *Backend
	log     *slog.Logger
	vmid    string
	spec    vmm.LaunchSpec
	qmpPath string

	mu            sync.Mutex
	agentPath     string // the agent socket QEMU serves, removed when it exits
	handle        vmm.Handle
	p             *proc.Process
	qmp           *qmpClient
	used          bool // Configure or LoadSnapshot was called
	dead          bool // killed before any process ran
	stopRequested bool
	released      bool
	exit          vmm.ExitStatus
	done          chan struct{}
	doneOnce      sync.Once
	release       chan struct{}
}

var _ vmm.Machine = (*Machine)(nil)
var _ vmm.RateLimitSetter = (*Machine)(nil)

func newMachine(b *Backend, spec vmm.LaunchSpec) *Machine {
	qmpPath := filepath.Join(spec.Dir, qmpSocketName)
	return &Machine{
		b:       b,
		log:     b.log.With("vm", spec.VMID),
		vmid:    spec.VMID,
		spec:    spec,
		qmpPath: qmpPath,
		handle: vmm.Handle{
			Backend: backendName, Control: qmpPath, Dir: spec.Dir,
			Extra: map[string]string{ExtraVMID: spec.VMID},
		},
		done:    make(chan struct{}),
		release: make(chan struct{}),
	}
}

// Handle implements vmm.Machine. Pid is 0 until Configure or
// LoadSnapshot has started QEMU.
func (m *Machine) Handle() vmm.Handle {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.handle
	h.Extra = cloneMap(m.handle.Extra)
	return h
}

// Done implements vmm.Machine.
func (m *Machine) Done() <-chan struct{} { return m.done }

// ExitStatus implements vmm.Machine.
func (m *Machine) ExitStatus() vmm.ExitStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.exit
}

func (m *Machine) closeDone() { m.doneOnce.Do(func() { close(m.done) }) }

func (m *Machine) onEvent(ev Event) {
	m.log.Debug("qmp event", "event", ev.Name, "data", string(ev.Data))
}

// started records a running, QMP-connected process and starts watching it.
func (m *Machine) started(p *proc.Process, c *qmpClient) {
	m.mu.Lock()
	m.p, m.qmp = p, c
	id := p.Identity()
	m.handle.Pid, m.handle.StartTime = id.Pid, id.StartTime
	m.mu.Unlock()
	go func() {
		select {
		case <-p.Done():
		case <-m.release:
			return
		}
		e := p.Exit()
		m.mu.Lock()
		m.exit = vmm.ExitStatus{Exited: true, Code: e.Code, Signal: e.Signal, Expected: m.stopRequested}
		expected := m.stopRequested
		m.mu.Unlock()
		c.Close()
		// QEMU removes its sockets only on a clean exit.
		os.Remove(m.qmpPath)
		m.mu.Lock()
		agent := m.agentPath
		m.mu.Unlock()
		if agent != "" {
			os.Remove(agent)
		}
		if expected {
			m.log.Info("qemu exited", "status", e.String())
		} else {
			m.log.Warn("qemu exited unexpectedly", "status", e.String())
		}
		m.closeDone()
	}()
}

// client returns the QMP client of a started, unreleased machine.
func (m *Machine) client() (*qmpClient, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.released {
		return nil, ErrReleased
	}
	if m.qmp == nil {
		return nil, ErrNotStarted
	}
	return m.qmp, nil
}

func (m *Machine) command(ctx context.Context, cmd string, args, result any) error {
	c, err := m.client()
	if err != nil {
		return fmt.Errorf("%s %s: %w", cmd, m.vmid, err)
	}
	ctx, cancel := context.WithTimeout(ctx, m.b.opts.CommandTimeout)
	defer cancel()
	return c.Execute(ctx, cmd, args, result)
}

// claim marks the single Configure/LoadSnapshot call.
func (m *Machine) claim(op string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.released:
		return ErrReleased
	case m.dead:
		return fmt.Errorf("%s %s: machine was killed", op, m.vmid)
	case m.used:
		return fmt.Errorf("%s %s: machine already configured or restored", op, m.vmid)
	}
	m.used = true
	return nil
}

// boot starts QEMU paused with cfg and waits until QMP answers. On error
// nothing it started is left: no process, no QMP or agent socket.
func (m *Machine) boot(ctx context.Context, cfg vmm.Config, incoming bool) (err error) {
	spec := ArgsSpec{Accel: m.b.accel, Machine: m.b.opts.Machine, QMPSocket: m.qmpPath, Incoming: incoming}
	args, err := BuildArgs(spec, cfg)
	if err != nil {
		return err
	}
	if err := removeStale(m.qmpPath); err != nil {
		return err
	}
	if cfg.Vsock != nil {
		// A stale agent socket from an earlier VMM would make QEMU's
		// bind fail.
		if err := removeStale(cfg.Vsock.UDSPath); err != nil {
			return err
		}
	}
	var env []string
	if len(m.spec.Env) > 0 {
		env = append(os.Environ(), m.spec.Env...)
	}
	p, err := startInNetNS(m.spec.NetNS, proc.StartSpec{
		Path: m.b.opts.Binary, Args: args, Env: env, Dir: m.spec.Dir, Output: m.spec.ConsolePath,
	})
	if err != nil {
		return fmt.Errorf("start qemu for %s: %w", m.vmid, err)
	}
	defer func() {
		if err != nil {
			p.Kill()
			os.Remove(m.qmpPath)
			if cfg.Vsock != nil {
				os.Remove(cfg.Vsock.UDSPath)
			}
		}
	}()
	c, err := m.waitQMP(ctx, p)
	if err != nil {
		return err
	}
	cfgJSON, _ := json.Marshal(cfg)
	argsJSON, _ := json.Marshal(args)
	m.mu.Lock()
	dead := m.dead || m.released
	m.handle.Extra[ExtraArgs] = string(argsJSON)
	m.handle.Extra[ExtraConfig] = string(cfgJSON)
	m.handle.Extra[ExtraAccel] = spec.Accel
	m.handle.Extra[ExtraMachine] = m.b.opts.Machine
	if cfg.Vsock != nil {
		m.agentPath = cfg.Vsock.UDSPath
	}
	m.mu.Unlock()
	if dead {
		c.Close()
		return fmt.Errorf("start qemu for %s: machine was killed meanwhile", m.vmid)
	}
	m.started(p, c)
	m.log.Info("qemu started", "pid", p.Pid(), "accel", spec.Accel, "incoming", incoming)
	return nil
}

// waitQMP polls the QMP socket with backoff until it answers, QEMU exits
// or the readiness timeout passes.
func (m *Machine) waitQMP(ctx context.Context, p *proc.Process) (*qmpClient, error) {
	ctx, cancel := context.WithTimeout(ctx, m.b.opts.ReadyTimeout)
	defer cancel()
	sleep := readyFirstSleep
	var lastErr error
	for {
		select {
		case <-p.Done():
			return nil, fmt.Errorf("%w: %s%s", ErrExited, p.Exit(), consoleTail(m.spec.ConsolePath))
		default:
		}
		if _, err := os.Stat(m.qmpPath); err == nil {
			c, err := dialQMP(ctx, m.qmpPath, m.onEvent)
			if err == nil {
				return c, nil
			}
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, fmt.Errorf("%w within %v (last error: %v)%s", ErrNotReady, m.b.opts.ReadyTimeout, lastErr, consoleTail(m.spec.ConsolePath))
			}
			return nil, fmt.Errorf("wait for qmp: %w", ctx.Err())
		case <-p.Done():
		case <-time.After(sleep):
		}
		sleep = min(sleep*2, readyMaxSleep)
	}
}

func removeStale(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale %s: %w", path, err)
	}
	return nil
}

// Configure implements vmm.Machine: it starts QEMU paused with cfg.
func (m *Machine) Configure(ctx context.Context, cfg vmm.Config) error {
	if cfg.Kernel == "" {
		return invalid("kernel", "empty")
	}
	if err := m.claim("configure"); err != nil {
		return err
	}
	if err := m.boot(ctx, cfg, false); err != nil {
		return fmt.Errorf("configure %s: %w", m.vmid, err)
	}
	return nil
}

// Start implements vmm.Machine: the guest's vCPUs begin to run.
func (m *Machine) Start(ctx context.Context) error { return m.command(ctx, "cont", nil, nil) }

// Pause implements vmm.Machine.
func (m *Machine) Pause(ctx context.Context) error { return m.command(ctx, "stop", nil, nil) }

// Resume implements vmm.Machine.
func (m *Machine) Resume(ctx context.Context) error { return m.command(ctx, "cont", nil, nil) }

// QueryStatus returns QEMU's run state ("prelaunch", "running",
// "paused", "postmigrate", …).
func (m *Machine) QueryStatus(ctx context.Context) (Status, error) {
	var s Status
	err := m.command(ctx, "query-status", nil, &s)
	return s, err
}

// Kill implements vmm.Machine. Before QEMU was started it only marks the
// machine dead and closes Done.
func (m *Machine) Kill() error {
	m.mu.Lock()
	if m.released {
		m.mu.Unlock()
		return ErrReleased
	}
	m.stopRequested = true
	p := m.p
	if p == nil {
		m.dead = true
		m.exit = vmm.ExitStatus{Exited: true, Code: -1, Expected: true}
		m.mu.Unlock()
		m.closeDone()
		return nil
	}
	m.mu.Unlock()
	if err := p.Kill(); err != nil {
		return fmt.Errorf("kill %s: %w", m.vmid, err)
	}
	<-m.done
	return nil
}

// Shutdown implements vmm.Machine with proc's ladder: system_powerdown
// (ACPI power button; the guest powers off and QEMU exits), a wait of up
// to ShutdownGrace or ctx's deadline, then SIGTERM and SIGKILL.
func (m *Machine) Shutdown(ctx context.Context) (vmm.ShutdownReport, error) {
	m.mu.Lock()
	if m.released {
		m.mu.Unlock()
		return vmm.ShutdownReport{}, ErrReleased
	}
	p := m.p
	m.mu.Unlock()
	if p == nil {
		if err := m.Kill(); err != nil {
			return vmm.ShutdownReport{}, err
		}
		return vmm.ShutdownReport{Outcome: string(proc.OutcomeAlreadyExited), Detail: "qemu was never started"}, nil
	}
	m.mu.Lock()
	m.stopRequested = true
	m.mu.Unlock()
	wait := m.b.opts.ShutdownGrace
	if dl, ok := ctx.Deadline(); ok {
		// Leave time for the signal rungs within the caller's deadline.
		wait = max(min(wait, time.Until(dl)-m.b.opts.TermGrace), time.Millisecond)
	}
	res, err := proc.Shutdown(ctx, p, func(ctx context.Context) error {
		return m.command(ctx, "system_powerdown", nil, nil)
	}, proc.ShutdownOptions{GracefulWait: wait, TermWait: m.b.opts.TermGrace})
	if err != nil {
		return vmm.ShutdownReport{}, fmt.Errorf("shutdown %s: %w", m.vmid, err)
	}
	if res.GracefulErr != nil {
		m.log.Info("system_powerdown not delivered; stopped with signals", "err", res.GracefulErr)
	}
	<-m.done
	return vmm.ShutdownReport{Outcome: string(res.Outcome), Took: res.Total, Detail: res.String()}, nil
}

// Release implements vmm.Machine: QEMU keeps running and can be adopted
// from Handle.
func (m *Machine) Release() {
	m.mu.Lock()
	if m.released {
		m.mu.Unlock()
		return
	}
	m.released = true
	p, c := m.p, m.qmp
	m.mu.Unlock()
	close(m.release)
	if c != nil {
		c.Close()
	}
	if p != nil {
		p.Release()
	}
}

// shellQuote quotes s for /bin/sh, which runs QEMU's exec: migration URIs.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
