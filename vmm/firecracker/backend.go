package firecracker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hearth-vm/hearth/proc"
	"github.com/hearth-vm/hearth/vmm"
)

// Defaults of Options.
const (
	DefaultReadyTimeout          = 5 * time.Second
	DefaultSnapshotTimeoutBase   = 30 * time.Second
	DefaultSnapshotTimeoutPerGiB = 4 * time.Second // 1 s per 256 MiB
	DefaultShutdownGrace         = 10 * time.Second
	DefaultTermGrace             = 2 * time.Second
	DefaultCgroupRoot            = "/sys/fs/cgroup"
)

// Readiness polling: 2 ms doubling to a 100 ms cap.
const (
	readyFirstSleep = 2 * time.Millisecond
	readyMaxSleep   = 100 * time.Millisecond
	// readySocketSleep is the retry interval once the API socket exists.
	readySocketSleep = time.Millisecond
)

// File names inside LaunchSpec.Dir (or the chroot when jailed).
const (
	apiSocketName   = "api.sock"
	logFileName     = "firecracker.log"
	metricsFIFOName = "metrics.fifo"
)

// Keys of vmm.Handle.Extra written by this backend.
const (
	ExtraJailDir       = "jail_dir"
	ExtraChroot        = "chroot"
	ExtraUID           = "uid"
	ExtraGID           = "gid"
	ExtraCgroupVersion = "cgroup_version"
	ExtraParentCgroup  = "parent_cgroup"
	ExtraExecFile      = "exec_file"
	ExtraVMID          = "vmid"
	ExtraLog           = "log"
	ExtraMetrics       = "metrics_fifo"
	// ExtraLinks is a JSON array of host symlinks into the jail.
	ExtraLinks = "links"
)

var (
	// ErrNotReady means the API socket did not answer within the
	// readiness timeout.
	ErrNotReady = errors.New("firecracker API not ready")
	// ErrExited means the VMM (or the jailer) exited during launch.
	ErrExited = errors.New("firecracker exited during launch")
)

// Options configures the backend. Zero values take the defaults above.
type Options struct {
	// Binary is the Firecracker binary (default "firecracker", looked up
	// in PATH). It is resolved to an absolute path, which the jailer needs.
	Binary string
	// JailerBinary is the jailer (default "jailer", looked up in PATH when
	// the first jailed launch happens).
	JailerBinary string
	// UseJailer makes jailing mandatory: a LaunchSpec without Jail is
	// refused. Without it a launch is jailed exactly when LaunchSpec.Jail
	// is set.
	UseJailer bool

	// APITimeout bounds one ordinary API call.
	APITimeout time.Duration
	// ReadyTimeout bounds the wait for the API socket after spawn.
	ReadyTimeout time.Duration
	// SnapshotTimeoutBase + SnapshotTimeoutPerGiB × guest memory bounds
	// PUT /snapshot/create and /snapshot/load, which write or read the
	// whole memory file and can take far longer than APITimeout.
	SnapshotTimeoutBase   time.Duration
	SnapshotTimeoutPerGiB time.Duration
	// ShutdownGrace is how long Shutdown waits for the guest to power off
	// after Ctrl+Alt+Del when the context allows longer.
	ShutdownGrace time.Duration
	// TermGrace is the wait between SIGTERM and SIGKILL.
	TermGrace time.Duration

	// LogLevel is Firecracker's log level (Error, Warning, Info, Debug,
	// Trace, Off); default Warning.
	LogLevel string

	// ParentCgroup is the jailer's --parent-cgroup; empty uses the
	// jailer's default (the exec file's name).
	ParentCgroup string
	// CgroupRoot is where cgroup hierarchies are mounted, used to remove
	// the VM's cgroups after it is gone; default /sys/fs/cgroup.
	CgroupRoot string
	// NoFileLimit and FSizeLimit become the jailer's --resource-limit
	// no-file= and fsize=; 0 keeps the jailer's defaults.
	NoFileLimit uint64
	FSizeLimit  uint64

	// Logger receives the backend's logs; default slog.Default().
	Logger *slog.Logger
}

// Backend launches and adopts Firecracker VMMs. It implements vmm.Backend
// and is safe for concurrent use.
type Backend struct {
	opts Options
	log  *slog.Logger

	jailerMu   sync.Mutex
	jailerPath string // resolved on the first jailed launch
}

var _ vmm.Backend = (*Backend)(nil)

// New returns a backend. It fails when the Firecracker binary (or an
// explicitly named jailer) cannot be found; the error then wraps
// exec.ErrNotFound or the os error.
func New(opts Options) (*Backend, error) {
	if opts.Binary == "" {
		opts.Binary = "firecracker"
	}
	bin, err := resolveBinary(opts.Binary, true)
	if err != nil {
		return nil, fmt.Errorf("firecracker binary: %w", err)
	}
	opts.Binary = bin
	if opts.JailerBinary != "" || opts.UseJailer {
		if opts.JailerBinary == "" {
			opts.JailerBinary = "jailer"
		}
		j, err := resolveBinary(opts.JailerBinary, false)
		if err != nil {
			return nil, fmt.Errorf("jailer binary: %w", err)
		}
		opts.JailerBinary = j
	}
	for name, d := range map[string]time.Duration{
		"APITimeout": opts.APITimeout, "ReadyTimeout": opts.ReadyTimeout,
		"SnapshotTimeoutBase": opts.SnapshotTimeoutBase, "SnapshotTimeoutPerGiB": opts.SnapshotTimeoutPerGiB,
		"ShutdownGrace": opts.ShutdownGrace, "TermGrace": opts.TermGrace,
	} {
		if d < 0 {
			return nil, invalid(name, "%v is negative", d)
		}
	}
	setDefault(&opts.APITimeout, DefaultAPITimeout)
	setDefault(&opts.ReadyTimeout, DefaultReadyTimeout)
	setDefault(&opts.SnapshotTimeoutBase, DefaultSnapshotTimeoutBase)
	setDefault(&opts.SnapshotTimeoutPerGiB, DefaultSnapshotTimeoutPerGiB)
	setDefault(&opts.ShutdownGrace, DefaultShutdownGrace)
	setDefault(&opts.TermGrace, DefaultTermGrace)
	if opts.LogLevel == "" {
		opts.LogLevel = DefaultLogLevel
	}
	if opts.CgroupRoot == "" {
		opts.CgroupRoot = DefaultCgroupRoot
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Backend{opts: opts, log: opts.Logger.With("backend", "firecracker"), jailerPath: opts.JailerBinary}, nil
}

// jailerBinary returns the jailer's absolute path, looking "jailer" up in
// PATH the first time it is needed.
func (b *Backend) jailerBinary() (string, error) {
	b.jailerMu.Lock()
	defer b.jailerMu.Unlock()
	if b.jailerPath == "" {
		p, err := resolveBinary("jailer", false)
		if err != nil {
			return "", fmt.Errorf("jailer binary: %w", err)
		}
		b.jailerPath = p
	}
	return b.jailerPath, nil
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d == 0 {
		*d = def
	}
}

// resolveBinary finds name in PATH and returns its canonical absolute
// path. Symlinks are resolved because the jailer does the same: it names
// the chroot after the real file, and hearth must compute that path too.
//
// The jailer itself is not canonicalised: a multi-call binary may decide
// what to be from the name it is started under.
func resolveBinary(name string, canonical bool) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", err
	}
	if p, err = filepath.Abs(p); err != nil || !canonical {
		return p, err
	}
	return filepath.EvalSymlinks(p)
}

// Options returns the effective options (defaults filled in).
func (b *Backend) Options() Options { return b.opts }

// Name implements vmm.Backend.
func (b *Backend) Name() string { return "firecracker" }

// Launch implements vmm.Backend; see LaunchMachine.
func (b *Backend) Launch(ctx context.Context, spec vmm.LaunchSpec) (vmm.Machine, error) {
	m, err := b.LaunchMachine(ctx, spec)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// Adopt implements vmm.Backend; see AdoptMachine.
func (b *Backend) Adopt(ctx context.Context, h vmm.Handle) (vmm.Machine, error) {
	m, err := b.AdoptMachine(ctx, h)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// launch tracks what a launch created so a failure can undo exactly that.
type launch struct {
	b        *Backend
	spec     vmm.LaunchSpec
	m        *Machine
	jailer   *proc.Process
	created  []string // files to remove on failure, in creation order
	jailDirs []string // directories to remove recursively on failure
}

// LaunchMachine starts Firecracker (bare or under the jailer), waits until
// its API answers GET / and returns the Machine. On error every process
// and file it created is gone.
func (b *Backend) LaunchMachine(ctx context.Context, spec vmm.LaunchSpec) (m *Machine, err error) {
	if err := b.validateSpec(spec); err != nil {
		return nil, err
	}
	l := &launch{b: b, spec: spec}
	defer func() {
		if err != nil {
			l.undo()
		}
	}()
	if spec.Jail != nil {
		err = l.startJailed(ctx)
	} else {
		err = l.startBare(ctx)
	}
	if err != nil {
		return nil, err
	}
	if spec.Spawned != nil {
		// The process exists: its caller can record it while the VMM
		// starts up (the wait below dominates a launch).
		spec.Spawned(l.m.Handle())
	}
	if err = l.m.waitReady(ctx, b.opts.ReadyTimeout); err != nil {
		return nil, err
	}
	l.m.watch()
	b.log.Info("firecracker launched", "vm", spec.VMID, "pid", l.m.handle.Pid, "jailed", spec.Jail != nil)
	return l.m, nil
}

func (b *Backend) validateSpec(spec vmm.LaunchSpec) error {
	var errs []error
	if !validInstanceID(spec.VMID) {
		errs = append(errs, invalid("vmid", "%q must be 1–64 characters of [A-Za-z0-9-] (Firecracker's --id rule)", spec.VMID))
	}
	if st, err := os.Stat(spec.Dir); err != nil || !st.IsDir() {
		errs = append(errs, invalid("dir", "%q is not an existing directory", spec.Dir))
	}
	if spec.NetNS != "" && !filepath.IsAbs(spec.NetNS) {
		errs = append(errs, invalid("netns", "must be an absolute path, got %q", spec.NetNS))
	}
	if b.opts.UseJailer && spec.Jail == nil {
		errs = append(errs, invalid("jail", "this backend only launches jailed VMMs"))
	}
	return errors.Join(errs...)
}

// env returns the VMM's environment: the caller's plus spec.Env.
func (l *launch) env() []string {
	if len(l.spec.Env) == 0 {
		return nil
	}
	return append(os.Environ(), l.spec.Env...)
}

func (l *launch) startBare(ctx context.Context) error {
	spec := l.spec
	sock := filepath.Join(spec.Dir, apiSocketName)
	logPath := filepath.Join(spec.Dir, logFileName)
	fifo := filepath.Join(spec.Dir, metricsFIFOName)
	if err := removeStale(sock); err != nil {
		return err
	}
	if err := l.prepareOutputs(logPath, fifo, -1, -1); err != nil {
		return err
	}
	m := l.newMachine(sock, nil)
	m.logHost, m.logVMM = logPath, logPath
	m.metricsHost, m.metricsVMM = fifo, fifo
	l.m = m
	if err := m.startMetrics(); err != nil {
		return err
	}
	l.created = append(l.created, sock)
	ss := proc.StartSpec{
		Path:   l.b.opts.Binary,
		Args:   []string{"--api-sock", sock, "--id", spec.VMID},
		Env:    l.env(),
		Dir:    spec.Dir,
		Output: spec.ConsolePath,
	}
	p, err := startInNetNS(spec.NetNS, ss)
	if err != nil {
		return fmt.Errorf("launch firecracker for %s: %w", spec.VMID, err)
	}
	m.setProcess(p)
	return nil
}

// prepareOutputs creates the log file and the metrics FIFO (Firecracker
// opens both but creates neither).
func (l *launch) prepareOutputs(logPath, fifo string, uid, gid int) error {
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("create firecracker log: %w", err)
	}
	f.Close()
	l.created = append(l.created, logPath)
	if uid >= 0 {
		if err := os.Chown(logPath, uid, gid); err != nil {
			return fmt.Errorf("chown firecracker log: %w", err)
		}
	}
	if err := makeFIFO(fifo, uid, gid); err != nil {
		return err
	}
	l.created = append(l.created, fifo)
	return nil
}

func removeStale(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale %s: %w", path, err)
	}
	return nil
}

func (l *launch) jailerCommand() JailerCommand {
	j := l.spec.Jail
	return JailerCommand{
		ID:              l.spec.VMID,
		ExecFile:        l.b.opts.Binary,
		UID:             j.UID,
		GID:             j.GID,
		ChrootBaseDir:   j.ChrootBaseDir,
		CgroupVersion:   j.CgroupVersion,
		ParentCgroup:    l.b.opts.ParentCgroup,
		CPUQuota:        j.CPUQuota,
		MemoryMax:       j.MemoryMax,
		PidsMax:         j.PidsMax,
		NetNS:           l.spec.NetNS,
		NoFile:          l.b.opts.NoFileLimit,
		FSize:           l.b.opts.FSizeLimit,
		FirecrackerArgs: []string{"--api-sock", JailedAPISocket},
	}
}

func (l *launch) startJailed(ctx context.Context) error {
	spec := l.spec
	jc := l.jailerCommand()
	args, err := jc.Args()
	if err != nil {
		return err
	}
	jailerBin, err := l.b.jailerBinary()
	if err != nil {
		return err
	}
	jailDir, chroot := jc.JailDir(), jc.Chroot()
	if _, err := os.Lstat(jailDir); err == nil {
		// Never reuse or delete a jail this launch did not create: it may
		// belong to a live VMM that was not reconciled.
		return fmt.Errorf("jail directory %s already exists (left by an earlier VMM of %s?)", jailDir, spec.VMID)
	}
	if err := os.MkdirAll(filepath.Dir(jailDir), 0o755); err != nil {
		return fmt.Errorf("create jail base: %w", err)
	}
	if err := os.Mkdir(jailDir, 0o755); err != nil {
		return fmt.Errorf("create jail directory: %w", err)
	}
	l.jailDirs = append(l.jailDirs, jailDir)
	js := &jailState{cmd: jc, chroot: chroot, uid: spec.Jail.UID, gid: spec.Jail.GID}
	// The chroot and /run (which holds the API socket) must be writable
	// by the VM's uid; the jailer reuses an existing chroot.
	for _, d := range []string{chroot, filepath.Join(chroot, "run")} {
		if err := os.Mkdir(d, 0o750); err != nil {
			return fmt.Errorf("create jail: %w", err)
		}
		if err := os.Chown(d, js.uid, js.gid); err != nil {
			return fmt.Errorf("chown jail: %w", err)
		}
	}
	for _, f := range spec.Jail.Files {
		// Their use is not known yet (a drive may be writable).
		if _, err := js.stage(f, true); err != nil {
			return err
		}
	}
	sock := filepath.Join(chroot, strings.TrimPrefix(JailedAPISocket, "/"))
	m := l.newMachine(sock, js)
	m.logHost, m.logVMM = filepath.Join(chroot, logFileName), "/"+logFileName
	m.metricsHost, m.metricsVMM = filepath.Join(chroot, metricsFIFOName), "/"+metricsFIFOName
	l.m = m
	if err := l.prepareOutputs(m.logHost, m.metricsHost, js.uid, js.gid); err != nil {
		return err
	}
	if err := m.startMetrics(); err != nil {
		return err
	}
	jp, err := proc.Start(proc.StartSpec{
		Path:   jailerBin,
		Args:   args,
		Env:    l.env(),
		Output: spec.ConsolePath,
	})
	if err != nil {
		return fmt.Errorf("launch jailer for %s: %w", spec.VMID, err)
	}
	l.jailer = jp
	m.jailer = jp
	p, err := l.waitPidFile(ctx, jc.PidFile(), jp)
	if err != nil {
		return err
	}
	m.setProcess(p)
	return nil
}

// waitPidFile waits for the jailer to record Firecracker's pid and adopts
// that process. The jailer itself exits once Firecracker runs in its new
// pid namespace, so it cannot be the process hearth watches.
func (l *launch) waitPidFile(ctx context.Context, pidFile string, jailer *proc.Process) (*proc.Process, error) {
	deadline := time.Now().Add(l.b.opts.ReadyTimeout)
	sleep := readyFirstSleep
	for {
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
				if pid == jailer.Pid() {
					return jailer, nil // exec'd in place: the jailer is Firecracker
				}
				id, err := proc.Lookup(pid)
				if err != nil {
					return nil, fmt.Errorf("%w: pid %d from %s: %w", ErrExited, pid, pidFile, err)
				}
				p, err := proc.Adopt(id)
				if err != nil {
					return nil, fmt.Errorf("%w: adopt pid %d: %w", ErrExited, pid, err)
				}
				return p, nil
			}
		}
		select {
		case <-jailer.Done():
			// The jailer may exit right after writing the pid file;
			// only an unsuccessful exit without a pid file is fatal.
			if e := jailer.Exit(); e.Code != 0 || e.Signal != "" {
				if _, err := os.Stat(pidFile); err != nil {
					return nil, fmt.Errorf("%w: jailer %s%s", ErrExited, e, consoleTail(l.spec.ConsolePath))
				}
			}
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: jailer wrote no pid file %s within %v%s", ErrNotReady, pidFile, l.b.opts.ReadyTimeout, consoleTail(l.spec.ConsolePath))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for jailer pid file: %w", ctx.Err())
		case <-time.After(sleep):
		}
		sleep = min(sleep*2, readyMaxSleep)
	}
}

// undo removes what a failed launch created, newest first.
func (l *launch) undo() {
	if l.m != nil {
		l.m.teardownProcess()
	}
	if l.jailer != nil {
		l.jailer.Kill()
		l.jailer.Release()
	}
	for i := len(l.created) - 1; i >= 0; i-- {
		os.Remove(l.created[i])
	}
	if l.m != nil && l.m.jail != nil {
		l.m.jail.removeCgroups(l.b.opts.CgroupRoot, l.b.log)
	}
	for _, d := range l.jailDirs {
		if err := os.RemoveAll(d); err != nil {
			l.b.log.Warn("remove jail after failed launch", "dir", d, "err", err)
		}
	}
}

// startInNetNS starts a process inside the network namespace at nsPath
// (or in the caller's namespace when nsPath is empty). A child inherits
// the namespaces of the thread that forks it, so the namespace is entered
// on a locked OS thread, the process is started from it, and the thread
// goes back to its own namespace before it is unlocked. If it cannot go
// back it stays locked, and the runtime discards it when the goroutine
// ends: no other goroutine ever runs in the VMM's namespace.
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
// appended to an error, so a VMM that died at launch explains itself.
func consoleTail(path string) string {
	const maxBytes, maxLines = 2048, 10
	if path == "" {
		return ""
	}
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-maxBytes, 0)
	buf := make([]byte, st.Size()-off)
	n, _ := f.ReadAt(buf, off)
	buf = bytes.TrimSpace(buf[:n])
	if len(buf) == 0 {
		return ""
	}
	lines := strings.Split(string(buf), "\n")
	if off > 0 && len(lines) > 1 {
		lines = lines[1:] // the first line was cut
	}
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	return "; console: " + strings.Join(lines, " | ")
}
