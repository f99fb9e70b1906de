package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hearth-vm/hearth/proc"
	"github.com/hearth-vm/hearth/vmm"
)

// Defaults of Options.
const (
	DefaultBinary         = "qemu-system-x86_64"
	DefaultReadyTimeout   = 10 * time.Second
	DefaultShutdownGrace  = 10 * time.Second
	DefaultTermGrace      = 2 * time.Second
	DefaultCommandTimeout = 5 * time.Second
	DefaultMigrateTimeout = 5 * time.Minute
)

const (
	backendName         = "qemu"
	qmpSocketName       = "qmp.sock"
	readyFirstSleep     = 2 * time.Millisecond
	readyMaxSleep       = 100 * time.Millisecond
	migratePollInterval = 20 * time.Millisecond
	consoleTailMaxBytes = 2048
	consoleTailMaxLines = 10
)

// Keys of vmm.Handle.Extra written by this backend. The config and
// command line let an adopted machine write snapshot state documents.
const (
	ExtraVMID    = "vmid"
	ExtraArgs    = "args"   // JSON array: QEMU's arguments
	ExtraConfig  = "config" // JSON: the vmm.Config it was started with
	ExtraAccel   = "accel"
	ExtraMachine = "machine"
)

var (
	// ErrNotReady means QMP did not answer within the readiness timeout.
	ErrNotReady = errors.New("qemu QMP not ready")
	// ErrExited means QEMU exited while it was being started.
	ErrExited = errors.New("qemu exited during start")
	// ErrReleased is returned by every method after Release.
	ErrReleased = errors.New("machine released")
	// ErrNotStarted is returned by methods that need the QEMU process
	// before Configure or LoadSnapshot started it.
	ErrNotStarted = errors.New("qemu not started (Configure or LoadSnapshot first)")
)

// Options configures the backend. Zero values take the defaults.
type Options struct {
	// Binary is the QEMU binary (default qemu-system-x86_64 in PATH).
	Binary string
	// Accel is "tcg" (default), "kvm" or "auto". Auto should mean "kvm
	// when a probe guest boots"; a probe needs a guest image the backend
	// does not have, and on the hosts hearth runs on /dev/kvm exists but
	// nested KVM cannot run a Linux guest, so auto currently means tcg.
	Accel string
	// Machine overrides the -M value (DefaultMachine).
	Machine string
	// ReadyTimeout bounds the wait for QMP after QEMU starts.
	ReadyTimeout time.Duration
	// CommandTimeout bounds one ordinary QMP command.
	CommandTimeout time.Duration
	// MigrateTimeout bounds a snapshot or restore migration.
	MigrateTimeout time.Duration
	// ShutdownGrace is how long Shutdown waits for the guest to power off
	// after system_powerdown.
	ShutdownGrace time.Duration
	// TermGrace is the wait between SIGTERM and SIGKILL.
	TermGrace time.Duration
	// Logger receives the backend's logs; default slog.Default().
	Logger *slog.Logger
}

// Backend launches and adopts QEMU microvm VMMs. It implements
// vmm.Backend and is safe for concurrent use.
type Backend struct {
	opts  Options
	accel string
	log   *slog.Logger
}

var _ vmm.Backend = (*Backend)(nil)

// New returns a backend. It fails when the binary cannot be found (the
// error wraps exec.ErrNotFound) or an option is invalid.
func New(opts Options) (*Backend, error) {
	if opts.Binary == "" {
		opts.Binary = DefaultBinary
	}
	bin, err := exec.LookPath(opts.Binary)
	if err != nil {
		return nil, fmt.Errorf("qemu binary: %w", err)
	}
	if opts.Binary, err = filepath.Abs(bin); err != nil {
		return nil, fmt.Errorf("qemu binary: %w", err)
	}
	accel := opts.Accel
	switch accel {
	case "", AccelAuto:
		accel = AccelTCG
	case AccelTCG, AccelKVM:
	default:
		return nil, invalid("accel", "%q is not tcg, kvm or auto", opts.Accel)
	}
	for name, d := range map[string]*time.Duration{
		"ReadyTimeout": &opts.ReadyTimeout, "CommandTimeout": &opts.CommandTimeout,
		"MigrateTimeout": &opts.MigrateTimeout, "ShutdownGrace": &opts.ShutdownGrace,
		"TermGrace": &opts.TermGrace,
	} {
		if *d < 0 {
			return nil, invalid(name, "%v is negative", *d)
		}
	}
	setDefault(&opts.ReadyTimeout, DefaultReadyTimeout)
	setDefault(&opts.CommandTimeout, DefaultCommandTimeout)
	setDefault(&opts.MigrateTimeout, DefaultMigrateTimeout)
	setDefault(&opts.ShutdownGrace, DefaultShutdownGrace)
	setDefault(&opts.TermGrace, DefaultTermGrace)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Backend{opts: opts, accel: accel, log: opts.Logger.With("backend", backendName)}, nil
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d == 0 {
		*d = def
	}
}

// Options returns the effective options (defaults filled in).
func (b *Backend) Options() Options { return b.opts }

// Accel returns the accelerator launches use (auto resolved).
func (b *Backend) Accel() string { return b.accel }

// Name implements vmm.Backend.
func (b *Backend) Name() string { return backendName }

// Launch implements vmm.Backend. It validates the spec and returns a
// Machine; no process runs until Configure or LoadSnapshot, because QEMU
// needs the machine configuration on its command line.
func (b *Backend) Launch(ctx context.Context, spec vmm.LaunchSpec) (vmm.Machine, error) {
	m, err := b.LaunchMachine(ctx, spec)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// LaunchMachine is Launch returning the concrete type.
func (b *Backend) LaunchMachine(ctx context.Context, spec vmm.LaunchSpec) (*Machine, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var errs []error
	if st, err := os.Stat(spec.Dir); err != nil || !st.IsDir() {
		errs = append(errs, invalid("dir", "%q is not an existing directory", spec.Dir))
	}
	if spec.NetNS != "" && !filepath.IsAbs(spec.NetNS) {
		errs = append(errs, invalid("netns", "must be an absolute path, got %q", spec.NetNS))
	}
	if spec.Jail != nil {
		errs = append(errs, unsupported("jail", "jailed QEMU is not implemented yet"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("launch qemu for %s: %w", spec.VMID, err)
	}
	return newMachine(b, spec), nil
}

// Adopt implements vmm.Backend.
func (b *Backend) Adopt(ctx context.Context, h vmm.Handle) (vmm.Machine, error) {
	m, err := b.AdoptMachine(ctx, h)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// AdoptMachine re-attaches to a QEMU started earlier: the process by pid
// and start time, the control channel by its QMP socket. A QEMU QMP
// server accepts one client at a time, which is fine because the old
// runtime has let go of it.
func (b *Backend) AdoptMachine(ctx context.Context, h vmm.Handle) (*Machine, error) {
	if h.Backend != "" && h.Backend != backendName {
		return nil, fmt.Errorf("adopt: handle is for backend %q", h.Backend)
	}
	if h.Pid <= 0 {
		return nil, fmt.Errorf("adopt qemu: no pid recorded: %w", vmm.ErrGone)
	}
	p, err := proc.Adopt(proc.Identity{Pid: h.Pid, StartTime: h.StartTime})
	if errors.Is(err, proc.ErrNotFound) {
		return nil, fmt.Errorf("adopt qemu pid %d: %w", h.Pid, vmm.ErrGone)
	}
	if err != nil {
		return nil, fmt.Errorf("adopt qemu pid %d: %w", h.Pid, err)
	}
	m := newMachine(b, vmm.LaunchSpec{Dir: h.Dir, VMID: h.Extra[ExtraVMID]})
	m.qmpPath = h.Control
	m.handle = h
	m.handle.Extra = cloneMap(h.Extra)
	var cfg vmm.Config
	if json.Unmarshal([]byte(h.Extra[ExtraConfig]), &cfg) == nil && cfg.Vsock != nil {
		m.agentPath = cfg.Vsock.UDSPath
	}
	rctx, cancel := context.WithTimeout(ctx, b.opts.ReadyTimeout)
	defer cancel()
	c, err := dialQMP(rctx, h.Control, m.onEvent)
	if err != nil {
		p.Release()
		return nil, fmt.Errorf("adopt qemu pid %d: %w", h.Pid, err)
	}
	m.started(p, c)
	b.log.Info("qemu adopted", "vm", m.vmid, "pid", h.Pid)
	return m, nil
}

func cloneMap(in map[string]string) map[string]string {
	out := make(map[string]string, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}

// startInNetNS starts a process inside the network namespace at nsPath
// (or in the caller's when empty): a TAP named on the command line is
// opened by QEMU in its own namespace.
func startInNetNS(nsPath string, s proc.StartSpec) (*proc.Process, error) {
	if nsPath == "" {
		return proc.Start(s)
	}
	var p *proc.Process
	err := proc.InNetNS(nsPath, func() (err error) {
		p, err = proc.Start(s)
		return err
	})
	return p, err
}

// consoleTail returns the last lines of the console file, formatted to be
// appended to an error, so a QEMU that died at start explains itself
// (QEMU prints its configuration errors to stderr, which goes there).
func consoleTail(path string) string {
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	cut := len(b) > consoleTailMaxBytes
	if cut {
		b = b[len(b)-consoleTailMaxBytes:]
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return ""
	}
	lines := strings.Split(string(b), "\n")
	if cut && len(lines) > 1 {
		lines = lines[1:]
	}
	if len(lines) > consoleTailMaxLines {
		lines = lines[len(lines)-consoleTailMaxLines:]
	}
	return "; console: " + strings.Join(lines, " | ")
}
