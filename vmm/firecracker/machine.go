package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hearth-vm/hearth/proc"
	"github.com/hearth-vm/hearth/vmm"
)

// ErrReleased is returned by a Machine after Release.
var ErrReleased = errors.New("firecracker machine was released")

// Machine is one Firecracker process. It implements vmm.Machine; the
// extra methods (PatchDrive, PatchNIC, FlushMetrics, Info, LastMetrics,
// Release, …) are Firecracker-specific. All methods are safe for
// concurrent use.
type Machine struct {
	b       *Backend
	log     *slog.Logger
	vmid    string
	client  *Client
	console string
	jail    *jailState // nil for a bare VMM

	// Host paths of the log file and metrics FIFO, and the same files as
	// the VMM sees them (they differ under the jailer).
	logHost, logVMM         string
	metricsHost, metricsVMM string

	proc    *proc.Process
	jailer  *proc.Process // the jailer process of this launch, if any
	metrics *metricsDrain
	handle  vmm.Handle // fixed once launched or adopted

	done    chan struct{} // closed once the exit status is recorded
	release chan struct{} // closed by Release

	snapMu sync.Mutex // one snapshot at a time

	mu            sync.Mutex
	exit          vmm.ExitStatus
	stopRequested bool
	released      bool
	cleaned       bool
	loggerSet     bool // Firecracker accepts PUT /logger and /metrics once
	metricsSet    bool
	memMiB        int
	symlinks      []string // host symlinks to sockets inside the jail
}

var _ vmm.Machine = (*Machine)(nil)
var _ vmm.RateLimitSetter = (*Machine)(nil)

func (l *launch) newMachine(sock string, js *jailState) *Machine {
	m := &Machine{
		b:       l.b,
		log:     l.b.log.With("vm", l.spec.VMID),
		vmid:    l.spec.VMID,
		client:  NewClient(sock, l.b.opts.APITimeout),
		console: l.spec.ConsolePath,
		jail:    js,
		done:    make(chan struct{}),
		release: make(chan struct{}),
		handle: vmm.Handle{
			Backend: "firecracker",
			Control: sock,
			Dir:     l.spec.Dir,
			Extra:   map[string]string{ExtraVMID: l.spec.VMID},
		},
	}
	if js != nil {
		m.handle.Extra[ExtraJailDir] = js.cmd.JailDir()
		m.handle.Extra[ExtraChroot] = js.chroot
		m.handle.Extra[ExtraUID] = strconv.Itoa(js.uid)
		m.handle.Extra[ExtraGID] = strconv.Itoa(js.gid)
		m.handle.Extra[ExtraCgroupVersion] = strconv.Itoa(js.cmd.CgroupVersion)
		m.handle.Extra[ExtraParentCgroup] = js.cmd.ParentCgroup
		m.handle.Extra[ExtraExecFile] = js.cmd.ExecFile
	}
	return m
}

func (m *Machine) setProcess(p *proc.Process) {
	m.proc = p
	id := p.Identity()
	m.handle.Pid, m.handle.StartTime = id.Pid, id.StartTime
}

func (m *Machine) startMetrics() error {
	d, err := openMetricsDrain(m.metricsHost, m.log)
	if err != nil {
		return err
	}
	m.metrics = d
	m.handle.Extra[ExtraLog] = m.logHost
	m.handle.Extra[ExtraMetrics] = m.metricsHost
	return nil
}

// waitReady waits until GET / answers, the process exits, or timeout
// passes. It wakes when the API socket appears (inotify on its directory)
// and otherwise polls with backoff (2 ms doubling to 100 ms); once the
// socket exists, it retries every millisecond until the VMM listens.
func (m *Machine) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	sleep := readyFirstSleep
	var lastErr error
	// Watch before the first look, so a socket made in between is seen.
	watch, werr := watchSocket(m.client.SocketPath())
	if werr != nil {
		m.log.Debug("no inotify for the API socket, polling", "err", werr)
	}
	defer watch.Close()
	for {
		if _, err := os.Stat(m.client.SocketPath()); err != nil {
			lastErr = err
		} else if probe := min(time.Until(deadline), m.b.opts.APITimeout); probe > 0 {
			var info InstanceInfo
			if lastErr = m.client.DoTimeout(ctx, Request{Method: "GET", Path: "/"}, probe, &info); lastErr == nil {
				return nil
			}
			// Bound but not yet listening: it will be at once.
			sleep = readySocketSleep
		}
		select {
		case <-m.proc.Done():
			return fmt.Errorf("%w: firecracker %s before its API answered%s", ErrExited, m.proc.Exit(), consoleTail(m.console))
		default:
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("wait for firecracker API: %w", err)
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return fmt.Errorf("%w within %v on %s: %w", ErrNotReady, timeout, m.client.SocketPath(), lastErr)
		}
		t := time.NewTimer(min(sleep, remaining))
		select {
		case <-m.proc.Done():
		case <-ctx.Done():
		case <-t.C:
		case <-watch.events():
		}
		t.Stop()
		sleep = min(sleep*2, readyMaxSleep)
	}
}

// watch records the exit status once the process ends and closes Done.
func (m *Machine) watch() {
	go func() {
		select {
		case <-m.proc.Done():
		case <-m.release:
			return
		}
		e := m.proc.Exit()
		m.mu.Lock()
		m.exit = vmm.ExitStatus{Exited: true, Code: e.Code, Signal: e.Signal, Expected: m.stopRequested}
		st := m.exit
		m.mu.Unlock()
		m.metrics.stop()
		m.client.Close()
		if st.Expected {
			m.log.Info("firecracker exited", "status", e.String())
		} else {
			m.log.Warn("firecracker exited unexpectedly", "status", e.String())
		}
		close(m.done)
	}()
}

// teardownProcess kills the process of a launch that is being undone.
func (m *Machine) teardownProcess() {
	m.metrics.stop()
	if m.proc != nil {
		m.mu.Lock()
		m.stopRequested = true
		m.mu.Unlock()
		if err := m.proc.Kill(); err != nil {
			m.log.Warn("kill firecracker after failed launch", "err", err)
		}
		m.proc.Release()
	}
	m.client.Close()
	m.removeSymlinks()
}

// Handle implements vmm.Machine. Under the jailer it changes once
// Configure or LoadSnapshot has linked a socket path into the jail (the
// ExtraLinks entry, so an adopting process can remove the links); persist
// it again after those calls.
func (m *Machine) Handle() vmm.Handle {
	h := m.handle
	h.Extra = make(map[string]string, len(m.handle.Extra)+1)
	for k, v := range m.handle.Extra {
		h.Extra[k] = v
	}
	m.mu.Lock()
	if len(m.symlinks) > 0 {
		b, _ := json.Marshal(m.symlinks)
		h.Extra[ExtraLinks] = string(b)
	}
	m.mu.Unlock()
	return h
}

// Pid returns the Firecracker process id.
func (m *Machine) Pid() int { return m.handle.Pid }

// Client returns the API client, for calls this type has no method for.
func (m *Machine) Client() *Client { return m.client }

// Chroot returns the jail's root directory, or "" for a bare VMM.
func (m *Machine) Chroot() string {
	if m.jail == nil {
		return ""
	}
	return m.jail.chroot
}

// LogPath returns the host path of Firecracker's log file.
func (m *Machine) LogPath() string { return m.logHost }

// Done implements vmm.Machine. After Release it never closes.
func (m *Machine) Done() <-chan struct{} { return m.done }

// ExitStatus implements vmm.Machine. Expected is true only when the exit
// was requested (Shutdown, Kill) before it happened. For an adopted VMM
// the exit code is unknown (-1): only its parent could collect it.
func (m *Machine) ExitStatus() vmm.ExitStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.exit
}

// LastMetrics returns the last complete JSON line Firecracker wrote to the
// metrics FIFO, or nil before the first flush.
func (m *Machine) LastMetrics() []byte { return m.metrics.Last() }

func (m *Machine) checkReleased() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.released {
		return ErrReleased
	}
	return nil
}

// do sends one request with the default API timeout.
func (m *Machine) do(ctx context.Context, method, path string, body, out any) error {
	if err := m.checkReleased(); err != nil {
		return err
	}
	r, err := NewRequest(method, path, body)
	if err != nil {
		return err
	}
	return m.client.Do(ctx, r, out)
}

// paths returns the log and metrics destinations still to be configured.
func (m *Machine) paths() Paths {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := Paths{LogLevel: m.b.opts.LogLevel}
	if !m.loggerSet {
		p.LogPath = m.logVMM
	}
	if !m.metricsSet {
		p.MetricsPath = m.metricsVMM
	}
	return p
}

// send runs a plan. The snapshot load gets the long deadline.
func (m *Machine) send(ctx context.Context, plan []Request, memMiB int) error {
	for _, r := range plan {
		timeout := m.b.opts.APITimeout
		if r.Path == "/snapshot/load" {
			timeout = m.snapshotTimeout(memMiB)
		}
		if err := m.client.DoTimeout(ctx, r, timeout, nil); err != nil {
			return err
		}
		m.mu.Lock()
		switch r.Path {
		case "/logger":
			m.loggerSet = true
		case "/metrics":
			m.metricsSet = true
		}
		m.mu.Unlock()
	}
	return nil
}

// snapshotTimeout scales the deadline of snapshot calls with guest memory.
func (m *Machine) snapshotTimeout(memMiB int) time.Duration {
	return m.b.opts.SnapshotTimeoutBase + time.Duration(memMiB)*m.b.opts.SnapshotTimeoutPerGiB/1024
}

// Configure implements vmm.Machine: it validates cfg and sends the boot
// plan (see BootPlan). Under the jailer the kernel, initrd and drive files
// are staged into the chroot first. A refusal comes back as a
// *vmm.RequestError naming the request; the process keeps running.
func (m *Machine) Configure(ctx context.Context, cfg vmm.Config) error {
	if err := m.checkReleased(); err != nil {
		return err
	}
	if err := ValidateConfig(cfg); err != nil {
		return err
	}
	vcfg, err := m.vmmConfig(cfg)
	if err != nil {
		return fmt.Errorf("configure %s: %w", m.vmid, err)
	}
	plan, err := BootPlan(vcfg, m.paths())
	if err != nil {
		return err
	}
	if err := m.send(ctx, plan, cfg.MemoryMiB); err != nil {
		return fmt.Errorf("configure %s: %w", m.vmid, err)
	}
	m.mu.Lock()
	m.memMiB = cfg.MemoryMiB
	m.mu.Unlock()
	return nil
}

// vmmConfig returns cfg with every path as the VMM sees it.
func (m *Machine) vmmConfig(cfg vmm.Config) (vmm.Config, error) {
	out := cfg
	out.Drives = append([]vmm.Drive(nil), cfg.Drives...)
	if cfg.Vsock != nil {
		v := *cfg.Vsock
		out.Vsock = &v
	}
	if m.jail != nil {
		var err error
		if out.Kernel, err = m.jail.stage(cfg.Kernel, false); err != nil {
			return vmm.Config{}, err
		}
		if cfg.Initrd != "" {
			if out.Initrd, err = m.jail.stage(cfg.Initrd, false); err != nil {
				return vmm.Config{}, err
			}
		}
		for i := range out.Drives {
			if out.Drives[i].Path, err = m.jail.stage(cfg.Drives[i].Path, !cfg.Drives[i].ReadOnly); err != nil {
				return vmm.Config{}, err
			}
		}
	}
	if out.Vsock != nil {
		p, err := m.listenSocket(cfg.Vsock.UDSPath)
		if err != nil {
			return vmm.Config{}, err
		}
		out.Vsock.UDSPath = p
	}
	return out, nil
}

// listenSocket prepares a socket path Firecracker will bind (the vsock
// UDS): a stale socket left by an earlier VMM is removed (bind would fail
// on it), and under the jailer the socket is placed in the chroot with a
// symlink at the requested host path.
func (m *Machine) listenSocket(host string) (string, error) {
	removeStaleSocket := func(p string) error {
		if st, err := os.Lstat(p); err == nil && st.Mode()&os.ModeSocket != 0 {
			if err := os.Remove(p); err != nil {
				return fmt.Errorf("remove stale socket %s: %w", p, err)
			}
		}
		return nil
	}
	if m.jail == nil {
		return host, removeStaleSocket(host)
	}
	if rel, ok := m.jail.inside(host); ok {
		return rel, removeStaleSocket(host)
	}
	real := filepath.Join(m.jail.chroot, filepath.Base(host))
	if err := removeStaleSocket(real); err != nil {
		return "", err
	}
	if st, err := os.Lstat(host); err == nil {
		if st.Mode()&os.ModeSymlink == 0 && st.Mode()&os.ModeSocket == 0 {
			return "", fmt.Errorf("socket path %s exists and is not a socket or symlink", host)
		}
		if err := os.Remove(host); err != nil {
			return "", fmt.Errorf("replace %s: %w", host, err)
		}
	}
	if err := os.Symlink(real, host); err != nil {
		return "", fmt.Errorf("link %s to the jailed socket: %w", host, err)
	}
	m.mu.Lock()
	m.symlinks = append(m.symlinks, host)
	m.mu.Unlock()
	return "/" + filepath.Base(host), nil
}

// LoadSnapshot implements vmm.Machine. It configures the logger and the
// metrics (a snapshot carries neither, and Firecracker accepts them only
// before the load), then sends PUT /snapshot/load with a deadline scaled
// by the memory file's size. With MemUffd, MemPath is the page-fault
// server's socket; under the jailer it must be inside the chroot or on the
// chroot's filesystem (it is hard-linked in). A failed load ends the
// Firecracker process (Firecracker's own rule).
func (m *Machine) LoadSnapshot(ctx context.Context, req vmm.LoadRequest) error {
	if err := m.checkReleased(); err != nil {
		return err
	}
	if err := ValidateLoadRequest(req); err != nil {
		return err
	}
	if req.MemBackend == "" {
		req.MemBackend = vmm.MemFile
	}
	memMiB := 0
	if req.MemBackend == vmm.MemFile {
		st, err := os.Stat(req.MemPath)
		if err != nil {
			return fmt.Errorf("load snapshot into %s: memory file: %w", m.vmid, err)
		}
		memMiB = int((st.Size() + (1<<20 - 1)) >> 20)
	}
	vreq := req
	if m.jail != nil {
		var err error
		if vreq.StatePath, err = m.jail.stage(req.StatePath, false); err != nil {
			return fmt.Errorf("load snapshot into %s: %w", m.vmid, err)
		}
		if req.MemBackend == vmm.MemFile {
			vreq.MemPath, err = m.jail.stage(req.MemPath, false)
		} else {
			vreq.MemPath, err = m.jail.linkSocket(req.MemPath)
		}
		if err != nil {
			return fmt.Errorf("load snapshot into %s: %w", m.vmid, err)
		}
		vreq.DriveOverrides = append([]vmm.DriveOverride(nil), req.DriveOverrides...)
		for i, o := range vreq.DriveOverrides {
			if vreq.DriveOverrides[i].Path, err = m.jail.stage(o.Path, true); err != nil {
				return fmt.Errorf("load snapshot into %s: drive %s: %w", m.vmid, o.ID, err)
			}
		}
	}
	if req.VsockUDSPath != "" {
		p, err := m.listenSocket(req.VsockUDSPath)
		if err != nil {
			return fmt.Errorf("load snapshot into %s: %w", m.vmid, err)
		}
		vreq.VsockUDSPath = p
	}
	plan, err := LoadPlan(vreq, m.paths())
	if err != nil {
		return err
	}
	if err := m.send(ctx, plan, memMiB); err != nil {
		return fmt.Errorf("load snapshot into %s: %w", m.vmid, err)
	}
	if memMiB > 0 {
		m.mu.Lock()
		m.memMiB = memMiB
		m.mu.Unlock()
	}
	return nil
}

// Start implements vmm.Machine (PUT /actions InstanceStart).
func (m *Machine) Start(ctx context.Context) error {
	if err := m.do(ctx, "PUT", "/actions", ActionBody(ActionInstanceStart), nil); err != nil {
		return fmt.Errorf("start %s: %w", m.vmid, err)
	}
	return nil
}

// Pause implements vmm.Machine (PATCH /vm Paused).
func (m *Machine) Pause(ctx context.Context) error {
	if err := m.do(ctx, "PATCH", "/vm", VMStateBody(true), nil); err != nil {
		return fmt.Errorf("pause %s: %w", m.vmid, err)
	}
	return nil
}

// Resume implements vmm.Machine (PATCH /vm Resumed).
func (m *Machine) Resume(ctx context.Context) error {
	if err := m.do(ctx, "PATCH", "/vm", VMStateBody(false), nil); err != nil {
		return fmt.Errorf("resume %s: %w", m.vmid, err)
	}
	return nil
}

// memorySize returns the guest memory in MiB, asking the VMM when this
// Machine did not configure it (adopted, or restored with Uffd).
func (m *Machine) memorySize(ctx context.Context) int {
	m.mu.Lock()
	n := m.memMiB
	m.mu.Unlock()
	if n > 0 {
		return n
	}
	var mc MachineConfiguration
	if err := m.do(ctx, "GET", "/machine-config", nil, &mc); err != nil {
		m.log.Debug("machine config unavailable; snapshot deadline uses the base only", "err", err)
		return 0
	}
	m.mu.Lock()
	m.memMiB = mc.MemSizeMiB
	m.mu.Unlock()
	return mc.MemSizeMiB
}

// Snapshot implements vmm.Machine. The VM must already be paused — the
// runtime pauses, snapshots and resumes; this method does not change the
// VM's run state. Both destination files must not exist: on any failure
// whatever was written is removed, and that must never be a file the
// caller had. Under the jailer Firecracker writes inside the chroot and
// the files are then moved to the requested paths and given to the
// calling user. The deadline scales with guest memory.
func (m *Machine) Snapshot(ctx context.Context, req vmm.SnapshotRequest) (err error) {
	if err := m.checkReleased(); err != nil {
		return err
	}
	if err := ValidateSnapshotRequest(req); err != nil {
		return err
	}
	for _, p := range []string{req.StatePath, req.MemPath} {
		if _, err := os.Lstat(p); err == nil {
			return invalid("snapshot", "destination %s already exists", p)
		}
	}
	m.snapMu.Lock()
	defer m.snapMu.Unlock()

	vreq := req
	written := []string{req.StatePath, req.MemPath}
	if m.jail != nil {
		vreq.StatePath, vreq.MemPath = "/hearth-snapshot.vmstate", "/hearth-snapshot.mem"
		staged := []string{filepath.Join(m.jail.chroot, vreq.StatePath), filepath.Join(m.jail.chroot, vreq.MemPath)}
		for _, p := range staged {
			if err := removeStale(p); err != nil {
				return err
			}
		}
		written = append(written, staged...)
	}
	defer func() {
		if err != nil {
			for _, p := range written {
				os.Remove(p)
			}
		}
	}()
	r := mustRequest("PUT", "/snapshot/create", SnapshotCreateBody(vreq))
	timeout := m.snapshotTimeout(m.memorySize(ctx))
	if err := m.client.DoTimeout(ctx, r, timeout, nil); err != nil {
		return fmt.Errorf("snapshot %s: %w", m.vmid, err)
	}
	if m.jail != nil {
		for i, dst := range []string{req.StatePath, req.MemPath} {
			src := written[2+i]
			if err := moveFile(src, dst); err != nil {
				return fmt.Errorf("snapshot %s: %w", m.vmid, err)
			}
			// The jail's uid is per VM and may be handed to another VM
			// later; the snapshot belongs to whoever asked for it.
			if err := os.Chown(dst, os.Getuid(), os.Getgid()); err != nil {
				return fmt.Errorf("snapshot %s: chown %s: %w", m.vmid, dst, err)
			}
		}
	}
	return nil
}

// PatchDrive updates a drive after boot: a new backing file (path, empty
// to keep the current one; staged into the jail when jailed) and/or new
// rate limits (nil to keep them).
func (m *Machine) PatchDrive(ctx context.Context, id, path string, rl *vmm.RateLimiter) error {
	if !validID(id) {
		return invalid("drive id", "%q must be 1–64 characters of [A-Za-z0-9_]", id)
	}
	if err := validateRateLimiter("rate_limit", rl); err != nil {
		return err
	}
	if path != "" && m.jail != nil {
		var err error
		if path, err = m.jail.stage(path, true); err != nil {
			return fmt.Errorf("patch drive %s of %s: %w", id, m.vmid, err)
		}
	}
	if err := m.do(ctx, "PATCH", "/drives/"+id, PatchDriveBody(id, path, rl), nil); err != nil {
		return fmt.Errorf("patch drive %s of %s: %w", id, m.vmid, err)
	}
	return nil
}

// PatchNIC updates the rate limiters of a network interface after boot
// (nil keeps a direction's limiter).
func (m *Machine) PatchNIC(ctx context.Context, id string, rx, tx *vmm.RateLimiter) error {
	if !validID(id) {
		return invalid("interface id", "%q must be 1–64 characters of [A-Za-z0-9_]", id)
	}
	if err := errors.Join(validateRateLimiter("rx", rx), validateRateLimiter("tx", tx)); err != nil {
		return err
	}
	if err := m.do(ctx, "PATCH", "/network-interfaces/"+id, PatchNICBody(id, rx, tx), nil); err != nil {
		return fmt.Errorf("patch interface %s of %s: %w", id, m.vmid, err)
	}
	return nil
}

// SetRateLimits implements vmm.RateLimitSetter: one PATCH per device,
// each stating the device's whole new limits. Every id and limiter is
// checked before the first request.
func (m *Machine) SetRateLimits(ctx context.Context, u vmm.RateLimitUpdate) error {
	var errs []error
	for _, d := range u.Drives {
		if !validID(d.ID) {
			errs = append(errs, invalid("drive id", "%q must be 1–64 characters of [A-Za-z0-9_]", d.ID))
		}
		errs = append(errs, validateRateLimiter("drives."+d.ID+".rate_limiter", d.Limit))
	}
	for _, n := range u.NICs {
		if !validID(n.ID) {
			errs = append(errs, invalid("interface id", "%q must be 1–64 characters of [A-Za-z0-9_]", n.ID))
		}
		errs = append(errs, validateRateLimiter("network-interfaces."+n.ID+".rx_rate_limiter", n.RX),
			validateRateLimiter("network-interfaces."+n.ID+".tx_rate_limiter", n.TX))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, d := range u.Drives {
		body := PartialDrive{DriveID: d.ID, RateLimiter: ReplaceRateLimiterBody(d.Limit)}
		if err := m.do(ctx, "PATCH", "/drives/"+d.ID, body, nil); err != nil {
			return fmt.Errorf("rate limit drive %s of %s: %w", d.ID, m.vmid, err)
		}
	}
	for _, n := range u.NICs {
		body := PartialNetworkInterface{IfaceID: n.ID, RxRateLimiter: ReplaceRateLimiterBody(n.RX), TxRateLimiter: ReplaceRateLimiterBody(n.TX)}
		if err := m.do(ctx, "PATCH", "/network-interfaces/"+n.ID, body, nil); err != nil {
			return fmt.Errorf("rate limit interface %s of %s: %w", n.ID, m.vmid, err)
		}
	}
	return nil
}

// FlushMetrics asks Firecracker to write a metrics line now.
func (m *Machine) FlushMetrics(ctx context.Context) error {
	if err := m.do(ctx, "PUT", "/actions", ActionBody(ActionFlushMetrics), nil); err != nil {
		return fmt.Errorf("flush metrics of %s: %w", m.vmid, err)
	}
	return nil
}

// Info returns GET /: the instance id, state and VMM version.
func (m *Machine) Info(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	if err := m.do(ctx, "GET", "/", nil, &info); err != nil {
		return InstanceInfo{}, fmt.Errorf("describe %s: %w", m.vmid, err)
	}
	return info, nil
}

func (m *Machine) requestStop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.proc.Done():
		// Already gone: the exit was not ours.
	default:
		m.stopRequested = true
	}
}

// Kill implements vmm.Machine: SIGKILL, wait until the process is gone,
// then remove the socket, FIFO and jail. Idempotent.
func (m *Machine) Kill() error {
	if err := m.checkReleased(); err != nil {
		return err
	}
	m.requestStop()
	if err := m.proc.Kill(); err != nil {
		return fmt.Errorf("kill %s: %w", m.vmid, err)
	}
	<-m.done
	m.cleanup()
	return nil
}

// Shutdown implements vmm.Machine with proc's ladder: Ctrl+Alt+Del (the
// guest reboots, which makes Firecracker exit), a wait of up to
// ShutdownGrace or ctx's deadline, whichever is sooner, then SIGTERM and
// after TermGrace SIGKILL. It returns once the process is gone and its
// files are removed, with how it ended.
func (m *Machine) Shutdown(ctx context.Context) (vmm.ShutdownReport, error) {
	if err := m.checkReleased(); err != nil {
		return vmm.ShutdownReport{}, err
	}
	m.requestStop()
	wait := m.b.opts.ShutdownGrace
	if dl, ok := ctx.Deadline(); ok {
		// Leave time for the signal rungs within the caller's deadline.
		wait = max(min(wait, time.Until(dl)-m.b.opts.TermGrace), time.Millisecond)
	}
	res, err := proc.Shutdown(ctx, m.proc, func(ctx context.Context) error {
		return m.do(ctx, "PUT", "/actions", ActionBody(ActionSendCtrlAltDel), nil)
	}, proc.ShutdownOptions{GracefulWait: wait, TermWait: m.b.opts.TermGrace})
	if err != nil {
		return vmm.ShutdownReport{}, fmt.Errorf("shutdown %s: %w", m.vmid, err)
	}
	if res.GracefulErr != nil {
		m.log.Info("Ctrl+Alt+Del not delivered; stopped with signals", "err", res.GracefulErr)
	}
	<-m.done
	m.cleanup()
	return vmm.ShutdownReport{Outcome: string(res.Outcome), Took: res.Total, Detail: res.String()}, nil
}

// Release stops watching the VMM without touching it: the process keeps
// running and can be adopted again from Handle. Done never closes after
// Release, and every other method returns ErrReleased.
func (m *Machine) Release() {
	m.mu.Lock()
	if m.released {
		m.mu.Unlock()
		return
	}
	m.released = true
	m.mu.Unlock()
	close(m.release)
	m.metrics.stop()
	m.client.Close()
	m.proc.Release()
	if m.jailer != nil {
		m.jailer.Release()
	}
}

func (m *Machine) removeSymlinks() {
	m.mu.Lock()
	links := m.symlinks
	m.symlinks = nil
	m.mu.Unlock()
	for _, l := range links {
		os.Remove(l)
	}
}

// cleanup removes what the VMM left once it is gone: the API socket and
// metrics FIFO (a stale socket would break the next launch), the symlinks
// into the jail, and the jail itself (its log is first moved to the VM
// directory, for post-mortems). Runs once.
func (m *Machine) cleanup() {
	m.mu.Lock()
	if m.cleaned {
		m.mu.Unlock()
		return
	}
	m.cleaned = true
	m.mu.Unlock()
	m.removeSymlinks()
	if m.jailer != nil {
		m.jailer.Kill() // normally long gone; never leave it behind
		m.jailer.Release()
	}
	if m.jail == nil {
		os.Remove(m.client.SocketPath())
		os.Remove(m.metricsHost)
		return
	}
	if m.handle.Dir != "" && m.logHost != "" {
		if err := moveFile(m.logHost, filepath.Join(m.handle.Dir, logFileName)); err != nil && !errors.Is(err, os.ErrNotExist) {
			m.log.Debug("keep firecracker log", "err", err)
		}
	}
	m.jail.removeCgroups(m.b.opts.CgroupRoot, m.log)
	if err := os.RemoveAll(m.jail.cmd.JailDir()); err != nil {
		m.log.Warn("remove jail", "dir", m.jail.cmd.JailDir(), "err", err)
	}
}

// jailState is the chroot of a jailed Machine and the files staged in it.
type jailState struct {
	cmd      JailerCommand
	chroot   string
	uid, gid int

	mu     sync.Mutex
	staged map[string]string // host path → path in the jail
	byName map[string]string // path in the jail → host path
}

// inside reports whether host lies in the chroot and returns its path as
// the VMM sees it.
func (j *jailState) inside(host string) (string, bool) {
	abs, err := filepath.Abs(host)
	if err != nil {
		return "", false
	}
	rel, err := filepath.Rel(j.chroot, abs)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", false
	}
	return "/" + rel, true
}

// stage makes the host file visible in the jail as /<basename> (hard
// link, or copy across filesystems) and returns that path. Files already
// inside the chroot are used in place. Two different files with one
// basename cannot share a jail: the snapshot records in-jail paths, so
// names must be stable, not invented.
//
// Firecracker runs as the jail's uid. A file it must write is chowned to
// that uid; a read-only file is chowned only when it is not
// world-readable. With a hard link a chown changes the host file's owner
// too (one inode), which is why shared read-only files (kernels, images)
// should be world-readable.
func (j *jailState) stage(host string, writable bool) (string, error) {
	if rel, ok := j.inside(host); ok {
		return rel, nil
	}
	abs, err := filepath.Abs(host)
	if err != nil {
		return "", fmt.Errorf("stage %s: %w", host, err)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.staged == nil || j.byName == nil {
		j.staged, j.byName = map[string]string{}, map[string]string{}
	}
	name, ok := j.staged[abs]
	if !ok {
		name = "/" + filepath.Base(abs)
		if other, ok := j.byName[name]; ok {
			return "", fmt.Errorf("stage %s: %s from %s already holds that name in the jail", abs, name, other)
		}
		if err := linkOrCopy(abs, filepath.Join(j.chroot, name)); err != nil {
			return "", err
		}
		j.staged[abs] = name
		j.byName[name] = abs
	}
	dst := filepath.Join(j.chroot, name)
	st, err := os.Stat(dst)
	if err != nil {
		return "", fmt.Errorf("stage %s: %w", abs, err)
	}
	if writable || st.Mode().Perm()&0o004 == 0 {
		if err := os.Chown(dst, j.uid, j.gid); err != nil {
			return "", fmt.Errorf("chown %s in jail: %w", dst, err)
		}
	}
	return name, nil
}

// linkSocket makes a listening socket outside the jail reachable from
// inside it. A socket cannot be copied, so it must be on the chroot's
// filesystem (hard link) or already inside the chroot.
func (j *jailState) linkSocket(host string) (string, error) {
	if rel, ok := j.inside(host); ok {
		return rel, nil
	}
	name := "/" + filepath.Base(host)
	dst := filepath.Join(j.chroot, name)
	if err := removeStale(dst); err != nil {
		return "", err
	}
	if err := os.Link(host, dst); err != nil {
		return "", fmt.Errorf("link socket %s into the jail (it must be on the jail's filesystem or inside the chroot): %w", host, err)
	}
	if err := os.Lchown(dst, j.uid, j.gid); err != nil {
		return "", fmt.Errorf("chown %s in jail: %w", dst, err)
	}
	return name, nil
}

// removeCgroups removes the VM's cgroup directories (only empty cgroups
// can be removed, so this never touches a live process).
func (j *jailState) removeCgroups(root string, log *slog.Logger) {
	for _, d := range j.cmd.cgroupDirs(root) {
		if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
			log.Warn("remove cgroup", "dir", d, "err", err)
		}
	}
}

// jailFromHandle rebuilds the jail of an adopted VMM from its Handle.
func jailFromHandle(h vmm.Handle) (*jailState, error) {
	x := h.Extra
	if x[ExtraChroot] == "" {
		return nil, nil
	}
	uid, err1 := strconv.Atoi(x[ExtraUID])
	gid, err2 := strconv.Atoi(x[ExtraGID])
	cgv, err3 := strconv.Atoi(x[ExtraCgroupVersion])
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, fmt.Errorf("handle of jailed VMM is incomplete: %w", err)
	}
	jailDir := x[ExtraJailDir]
	cmd := JailerCommand{
		ID:            x[ExtraVMID],
		ExecFile:      x[ExtraExecFile],
		UID:           uid,
		GID:           gid,
		ChrootBaseDir: filepath.Dir(filepath.Dir(jailDir)),
		CgroupVersion: cgv,
		ParentCgroup:  x[ExtraParentCgroup],
	}
	if cmd.JailDir() != jailDir || cmd.Chroot() != x[ExtraChroot] {
		return nil, fmt.Errorf("handle of jailed VMM is inconsistent: jail %s, chroot %s", jailDir, x[ExtraChroot])
	}
	return &jailState{cmd: cmd, chroot: x[ExtraChroot], uid: uid, gid: gid}, nil
}

// AdoptMachine re-attaches to a VMM launched earlier (possibly by another
// process) from its Handle: the process is identified by pid and start
// time (a reused pid counts as gone: vmm.ErrGone), the API must answer
// GET /, and metrics draining resumes.
func (b *Backend) AdoptMachine(ctx context.Context, h vmm.Handle) (*Machine, error) {
	if h.Backend != "firecracker" {
		return nil, invalid("handle.backend", "%q is not a firecracker handle", h.Backend)
	}
	js, err := jailFromHandle(h)
	if err != nil {
		return nil, err
	}
	p, err := proc.Adopt(proc.Identity{Pid: h.Pid, StartTime: h.StartTime})
	if err != nil {
		if errors.Is(err, proc.ErrNotFound) {
			return nil, fmt.Errorf("adopt firecracker pid %d: %w", h.Pid, errors.Join(vmm.ErrGone, err))
		}
		return nil, fmt.Errorf("adopt firecracker pid %d: %w", h.Pid, err)
	}
	vmid := h.Extra[ExtraVMID]
	m := &Machine{
		b:           b,
		log:         b.log.With("vm", vmid),
		vmid:        vmid,
		client:      NewClient(h.Control, b.opts.APITimeout),
		jail:        js,
		logHost:     h.Extra[ExtraLog],
		metricsHost: h.Extra[ExtraMetrics],
		proc:        p,
		done:        make(chan struct{}),
		release:     make(chan struct{}),
		// An adopted VMM has been configured or restored already.
		loggerSet:  true,
		metricsSet: true,
	}
	m.handle = h
	m.handle.Extra = map[string]string{}
	for k, v := range h.Extra {
		if k == ExtraLinks {
			if err := json.Unmarshal([]byte(v), &m.symlinks); err != nil {
				m.log.Warn("ignoring unreadable links in handle", "err", err)
			}
			continue
		}
		m.handle.Extra[k] = v
	}
	if _, err := m.Info(ctx); err != nil {
		m.client.Close()
		p.Release()
		return nil, fmt.Errorf("adopt firecracker pid %d: API on %s: %w", h.Pid, h.Control, err)
	}
	if m.metricsHost != "" {
		if st, err := os.Stat(m.metricsHost); err == nil && st.Mode()&os.ModeNamedPipe != 0 {
			if m.metrics, err = openMetricsDrain(m.metricsHost, m.log); err != nil {
				m.log.Warn("metrics fifo not drained", "err", err)
			}
		}
	}
	m.watch()
	b.log.Info("firecracker adopted", "vm", vmid, "pid", h.Pid)
	return m, nil
}
