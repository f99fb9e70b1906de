package firecracker

// Tests that run the Firecracker simulator (cmd/hearth-fcsim) as a real
// process: launch, the exact API call sequences, snapshots, restore with
// File and Uffd, failures at every stage, crash detection, shutdown,
// adoption and the jailer. The simulator is built once per test binary.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/internal/testbin"
	"golang.org/x/sys/unix"

	"github.com/hearth-vm/hearth/proc"
	"github.com/hearth-vm/hearth/vmm"
)

var (
	fcsimBin  string // built simulator
	jailerBin string // symlink named "jailer" to it
)

func TestMain(m *testing.M) { testbin.Main(m) }

// needFcsim builds cmd/hearth-fcsim on first use, with a "jailer"
// symlink next to it (the simulator acts as the jailer by that name).
func needFcsim(t *testing.T) {
	t.Helper()
	fcsimBin = testbin.Build(t, "cmd/hearth-fcsim", "firecracker")
	jailerBin = filepath.Join(filepath.Dir(fcsimBin), "jailer")
	if err := os.Symlink(fcsimBin, jailerBin); err != nil && !errors.Is(err, os.ErrExist) {
		t.Fatal(err)
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// env is one VM's test environment: directories, files and the request
// log of the simulator.
type env struct {
	t       *testing.T
	b       *Backend
	root    string // short temp dir; everything lives under it
	dir     string // LaunchSpec.Dir
	console string
	reqLog  string
	kernel  string
	rootfs  string
	data    string
}

func newEnv(t *testing.T, opts Options) *env {
	t.Helper()
	needFcsim(t)
	if opts.Binary == "" {
		opts.Binary = fcsimBin
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 5 * time.Second
	}
	if opts.TermGrace == 0 {
		opts.TermGrace = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	}
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	root := shortTempDir(t)
	e := &env{t: t, b: b, root: root, dir: filepath.Join(root, "vm"),
		console: filepath.Join(root, "console.log"), reqLog: filepath.Join(root, "requests.jsonl"),
		kernel: filepath.Join(root, "vmlinux"), rootfs: filepath.Join(root, "rootfs.ext4"), data: filepath.Join(root, "data.img")}
	if err := os.Mkdir(e.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{e.kernel, e.rootfs, e.data} {
		if err := os.WriteFile(f, bytes.Repeat([]byte{0x5a}, 4096), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func (e *env) spec(vmid string, extraEnv ...string) vmm.LaunchSpec {
	return vmm.LaunchSpec{VMID: vmid, Dir: e.dir, ConsolePath: e.console,
		// A generous page-fault budget: under the race detector on a busy
		// 2-core machine the test's page-fault server is slow, and the
		// load's own deadline (30 s) is the bound that matters.
		Env: append([]string{"HEARTH_FCSIM_REQUEST_LOG=" + e.reqLog, "HEARTH_FCSIM_UFFD_TIMEOUT=25s"}, extraEnv...)}
}

// launch starts a VMM and registers its Kill as cleanup.
func (e *env) launch(spec vmm.LaunchSpec) *Machine {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := e.b.LaunchMachine(ctx, spec)
	if err != nil {
		e.t.Fatalf("launch: %v", err)
	}
	e.t.Cleanup(func() {
		if m.checkReleased() == nil {
			m.Kill()
		}
	})
	return m
}

func (e *env) config() vmm.Config {
	return vmm.Config{
		VCPUs: 2, MemoryMiB: 64, Kernel: e.kernel, BootArgs: "console=ttyS0 reboot=k panic=1",
		TrackDirtyPages: true,
		Drives: []vmm.Drive{
			{ID: "rootfs", Path: e.rootfs, Root: true, ReadOnly: true},
			{ID: "data", Path: e.data, RateLimit: &vmm.RateLimiter{Bandwidth: &vmm.TokenBucket{Size: 1 << 20, RefillTime: time.Second}}},
		},
		Vsock:   &vmm.Vsock{CID: 3, UDSPath: filepath.Join(e.root, "v.sock")},
		Balloon: &vmm.Balloon{TargetMiB: 0, DeflateOnOOM: true},
	}
}

type logLine struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body"`
	Status int             `json:"status"`
	Event  string          `json:"event"`
}

// requests returns the API calls the simulator logged, as "METHOD path
// status", with the readiness probes (GET / before anything else)
// collapsed into one entry.
func (e *env) requests() []string {
	e.t.Helper()
	f, err := os.Open(e.reqLog)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l logLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			e.t.Fatalf("request log: %v: %s", err, sc.Bytes())
		}
		if l.Method == "" || l.Method == "JAILER" {
			continue // a jailer step, not an API call
		}
		s := l.Method + " " + l.Path + " " + strconv.Itoa(l.Status)
		if s == "GET / 200" && len(out) > 0 && out[len(out)-1] == s {
			continue
		}
		out = append(out, s)
	}
	return out
}

// loggedRequests returns the API calls with their bodies, in order.
func (e *env) loggedRequests() []Request {
	e.t.Helper()
	b, err := os.ReadFile(e.reqLog)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []Request
	for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		var l logLine
		if err := json.Unmarshal(line, &l); err != nil {
			e.t.Fatalf("request log: %v", err)
		}
		if l.Method == "" || l.Method == "JAILER" {
			continue
		}
		r := Request{Method: l.Method, Path: l.Path}
		if string(l.Body) != "null" {
			r.Body = l.Body
		}
		out = append(out, r)
	}
	return out
}

func (e *env) requireRequests(want ...string) {
	e.t.Helper()
	got := e.requests()
	if !slices.Equal(got, want) {
		e.t.Fatalf("API calls:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// livePids lists running (non-zombie) processes whose command line
// mentions s.
func livePids(s string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + d.Name() + "/cmdline")
		if err != nil || !bytes.Contains(cmd, []byte(s)) {
			continue
		}
		if id, err := proc.Lookup(pid); err == nil && id.Alive() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// requireClean checks that nothing of a VMM is left: no process naming
// the VM directory, and nothing in it but the given names.
func (e *env) requireClean(marker string, allowed ...string) {
	e.t.Helper()
	if p := livePids(marker); len(p) > 0 {
		e.t.Fatalf("processes left: %v", p)
	}
	ents, _ := os.ReadDir(e.dir)
	for _, d := range ents {
		if !slices.Contains(allowed, d.Name()) {
			e.t.Fatalf("left in the VM directory: %s", d.Name())
		}
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestColdBootSequence(t *testing.T) {
	e := newEnv(t, Options{})
	m := e.launch(e.spec("cold-1"))
	ctx := ctxT(t)
	cfg := e.config()
	// The simulator opens no TAP, so a NIC needs no host device here.
	cfg.NICs = []vmm.NIC{{ID: "eth0", HostDev: "hth-test0", MAC: "06:00:ac:10:00:02"}}
	cfg.MMDS = &vmm.MMDS{Version: "V2", NICs: []string{"eth0"}, Data: []byte(`{"hearth":{"vm":"cold-1"}}`)}
	if err := m.Configure(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	// What reached the VMM is byte for byte the golden-tested plan.
	plan, err := BootPlan(cfg, Paths{LogPath: filepath.Join(e.dir, logFileName), LogLevel: DefaultLogLevel,
		MetricsPath: filepath.Join(e.dir, metricsFIFOName)})
	if err != nil {
		t.Fatal(err)
	}
	logged := e.loggedRequests()
	if len(logged) != len(plan)+1 {
		t.Fatalf("%d requests logged for a plan of %d", len(logged), len(plan))
	}
	for i, r := range plan {
		if got := logged[i+1]; got.String() != r.String() || !bytes.Equal(got.Body, r.Body) {
			t.Fatalf("request %d: VMM got %s %s, plan has %s %s", i, got, got.Body, r, r.Body)
		}
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	info, err := m.Info(ctx)
	if err != nil || info.State != InstanceRunning || info.ID != "cold-1" {
		t.Fatalf("info %+v, %v", info, err)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if info, _ := m.Info(ctx); info.State != InstancePaused {
		t.Fatalf("state after pause: %q", info.State)
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.PatchDrive(ctx, "data", "", &vmm.RateLimiter{Ops: &vmm.TokenBucket{Size: 100, RefillTime: time.Second}}); err != nil {
		t.Fatal(err)
	}
	if err := m.PatchNIC(ctx, "eth0", nil, &vmm.RateLimiter{Bandwidth: &vmm.TokenBucket{Size: 1 << 20, RefillTime: time.Second}}); err != nil {
		t.Fatal(err)
	}
	// SetRateLimits states whole limits: missing buckets go out disabled,
	// which the simulator validates against the spec like any body.
	if err := m.SetRateLimits(ctx, vmm.RateLimitUpdate{
		Drives: []vmm.DriveLimit{{ID: "data", Limit: &vmm.RateLimiter{Bandwidth: &vmm.TokenBucket{Size: 1 << 20, RefillTime: time.Second}}}},
		NICs:   []vmm.NICLimit{{ID: "eth0", TX: &vmm.RateLimiter{Ops: &vmm.TokenBucket{Size: 10, OneTimeBurst: 5, RefillTime: 100 * time.Millisecond}}}},
	}); err != nil {
		t.Fatal(err)
	}
	// Bad input sends nothing.
	if err := m.SetRateLimits(ctx, vmm.RateLimitUpdate{Drives: []vmm.DriveLimit{{ID: "data"}, {ID: "bad/id"}}}); err == nil {
		t.Fatal("invalid drive id accepted")
	}
	if err := m.FlushMetrics(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for m.LastMetrics() == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !json.Valid(m.LastMetrics()) {
		t.Fatalf("last metrics line %q", m.LastMetrics())
	}
	if rep, err := m.Shutdown(ctx); err != nil || rep.Outcome != "graceful" {
		t.Fatalf("shutdown: %+v %v", rep, err)
	}
	st := m.ExitStatus()
	if !st.Exited || !st.Expected || st.Code != 0 {
		t.Fatalf("exit status %+v, want a clean expected exit", st)
	}
	e.requireRequests(
		"GET / 200",
		"PUT /logger 204",
		"PUT /metrics 204",
		"PUT /machine-config 204",
		"PUT /boot-source 204",
		"PUT /drives/rootfs 204",
		"PUT /drives/data 204",
		"PUT /network-interfaces/eth0 204",
		"PUT /vsock 204",
		"PUT /mmds/config 204",
		"PUT /mmds 204",
		"PUT /balloon 204",
		"PUT /actions 204", // InstanceStart
		"GET / 200",
		"PATCH /vm 204",
		"GET / 200",
		"PATCH /vm 204",
		"PATCH /drives/data 204",
		"PATCH /network-interfaces/eth0 204",
		"PATCH /drives/data 204",
		"PATCH /network-interfaces/eth0 204",
		"PUT /actions 204", // FlushMetrics
		"PUT /actions 204", // SendCtrlAltDel
	)
	// The API socket and FIFO are gone; the log stays for post-mortems.
	e.requireClean(e.dir, logFileName)
}

func TestSnapshotAndRestore(t *testing.T) {
	for _, backend := range []vmm.MemBackend{vmm.MemFile, vmm.MemUffd} {
		t.Run(string(backend), func(t *testing.T) {
			if backend == vmm.MemUffd {
				needRoot(t) // userfaultfd for a process that is not ours
			}
			e := newEnv(t, Options{})
			src := e.launch(e.spec("src-1"))
			ctx := ctxT(t)
			if err := src.Configure(ctx, e.config()); err != nil {
				t.Fatal(err)
			}
			if err := src.Start(ctx); err != nil {
				t.Fatal(err)
			}
			snap := filepath.Join(e.root, "snap")
			os.Mkdir(snap, 0o755)
			req := vmm.SnapshotRequest{StatePath: filepath.Join(snap, "vmstate"), MemPath: filepath.Join(snap, "mem")}

			// Firecracker only snapshots a paused VM; the refusal leaves
			// no file behind.
			err := src.Snapshot(ctx, req)
			var re *vmm.RequestError
			if !errors.As(err, &re) || re.Status != 400 {
				t.Fatalf("snapshot of a running VM: %v", err)
			}
			requireAbsent(t, req.StatePath, req.MemPath)

			if err := src.Pause(ctx); err != nil {
				t.Fatal(err)
			}
			if err := src.Snapshot(ctx, req); err != nil {
				t.Fatal(err)
			}
			if st, err := os.Stat(req.MemPath); err != nil || st.Size() != 64<<20 {
				t.Fatalf("memory file: %v, %v", st, err)
			}
			if err := src.Snapshot(ctx, req); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("snapshot over existing files: %v", err)
			}
			if err := src.Kill(); err != nil {
				t.Fatal(err)
			}
			e.requireRequests(
				"GET / 200", "PUT /logger 204", "PUT /metrics 204", "PUT /machine-config 204",
				"PUT /boot-source 204", "PUT /drives/rootfs 204", "PUT /drives/data 204",
				"PUT /vsock 204", "PUT /balloon 204", "PUT /actions 204",
				"PUT /snapshot/create 400", "PATCH /vm 204", "PUT /snapshot/create 204",
			)

			// Restore into a fresh process with a new vsock path.
			os.Remove(e.reqLog)
			load := vmm.LoadRequest{StatePath: req.StatePath, MemPath: req.MemPath, MemBackend: backend,
				Resume: true, TrackDirtyPages: true, VsockUDSPath: filepath.Join(e.root, "clone.sock")}
			if backend == vmm.MemUffd {
				load.MemPath = startPageFaultServer(t, filepath.Join(e.root, "uffd.sock"), req.MemPath)
			}
			dst := e.launch(e.spec("dst-1"))
			if err := dst.LoadSnapshot(ctx, load); err != nil {
				t.Fatalf("load: %v%s", err, consoleTail(e.console))
			}
			info, err := dst.Info(ctx)
			if err != nil || info.State != InstanceRunning {
				t.Fatalf("restored VM: %+v, %v", info, err)
			}
			e.requireRequests("GET / 200", "PUT /logger 204", "PUT /metrics 204", "PUT /snapshot/load 204", "GET / 200")
			body := lastBody(t, e.reqLog, "/snapshot/load")
			wantType := map[vmm.MemBackend]string{vmm.MemFile: "File", vmm.MemUffd: "Uffd"}[backend]
			if body.MemBackend == nil || body.MemBackend.BackendType != wantType || body.MemBackend.BackendPath != load.MemPath ||
				body.VsockOverride == nil || body.VsockOverride.UDSPath != load.VsockUDSPath || !body.ResumeVM || !body.TrackDirtyPages {
				t.Fatalf("load body %+v", body)
			}
			if err := dst.Kill(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func requireAbsent(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			t.Fatalf("%s exists", p)
		}
	}
}

func lastBody(t *testing.T, reqLog, path string) SnapshotLoadParams {
	t.Helper()
	b, err := os.ReadFile(reqLog)
	if err != nil {
		t.Fatal(err)
	}
	var p SnapshotLoadParams
	for _, line := range bytes.Split(b, []byte("\n")) {
		var l logLine
		if json.Unmarshal(line, &l) == nil && l.Path == path {
			p = SnapshotLoadParams{}
			if err := json.Unmarshal(l.Body, &p); err != nil {
				t.Fatal(err)
			}
		}
	}
	return p
}

func TestSnapshotENOSPCLeavesNothing(t *testing.T) {
	e := newEnv(t, Options{})
	m := e.launch(e.spec("nospc-1", "HEARTH_FCSIM_FAIL_AT=snapshot-enospc"))
	ctx := ctxT(t)
	if err := m.Configure(ctx, e.config()); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	req := vmm.SnapshotRequest{StatePath: filepath.Join(e.root, "vmstate"), MemPath: filepath.Join(e.root, "mem")}
	err := m.Snapshot(ctx, req)
	var re *vmm.RequestError
	if !errors.As(err, &re) {
		t.Fatalf("snapshot on a full disk: %v", err)
	}
	requireAbsent(t, req.StatePath, req.MemPath)
}

func TestLaunchFailures(t *testing.T) {
	cases := []struct {
		name    string
		failAt  string
		ready   time.Duration
		wantErr error
		inMsg   string
	}{
		{"api never ready", "ready", 300 * time.Millisecond, ErrNotReady, ""},
		{"exits at start", "start", 5 * time.Second, ErrExited, "exit code 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, Options{ReadyTimeout: c.ready})
			start := time.Now()
			_, err := e.b.LaunchMachine(ctxT(t), e.spec("fail-"+c.failAt, "HEARTH_FCSIM_FAIL_AT="+c.failAt))
			if !errors.Is(err, c.wantErr) || !strings.Contains(err.Error(), c.inMsg) {
				t.Fatalf("err %v, want %v containing %q", err, c.wantErr, c.inMsg)
			}
			if d := time.Since(start); d > c.ready+2*time.Second {
				t.Fatalf("failure took %v", d)
			}
			e.requireClean(e.dir)
		})
	}
}

func TestLaunchRejectsBadSpec(t *testing.T) {
	e := newEnv(t, Options{})
	for name, spec := range map[string]vmm.LaunchSpec{
		"bad id":     {VMID: "a/b", Dir: e.dir},
		"empty id":   {VMID: "", Dir: e.dir},
		"no dir":     {VMID: "ok", Dir: filepath.Join(e.root, "missing")},
		"rel netns":  {VMID: "ok", Dir: e.dir, NetNS: "netns"},
		"bad jailer": {VMID: "ok", Dir: e.dir, Jail: &vmm.Jail{ChrootBaseDir: "relative", CgroupVersion: 2}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := e.b.Launch(ctxT(t), spec); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("err %v, want ErrInvalidConfig", err)
			}
		})
	}
	e.requireClean(e.dir)
	mustJail, err := New(Options{Binary: fcsimBin, UseJailer: true, JailerBinary: jailerBin})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mustJail.Launch(ctxT(t), e.spec("ok")); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("UseJailer launched without a jail: %v", err)
	}
}

func TestNewMissingBinary(t *testing.T) {
	_, err := New(Options{Binary: "/nonexistent/firecracker"})
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err %v", err)
	}
	_, err = New(Options{Binary: "hearth-no-such-firecracker"})
	if !errors.Is(err, exec.ErrNotFound) {
		t.Fatalf("err %v", err)
	}
}

func TestConfigureRefused(t *testing.T) {
	e := newEnv(t, Options{})
	m := e.launch(e.spec("refuse-1", "HEARTH_FCSIM_FAIL_AT=api:PUT:/drives/rootfs"))
	err := m.Configure(ctxT(t), e.config())
	var re *vmm.RequestError
	if !errors.As(err, &re) || re.Status != 400 || re.Method != "PUT" || re.Path != "/drives/rootfs" || !strings.Contains(re.Body, "injected") {
		t.Fatalf("err %#v", err)
	}
	e.requireRequests("GET / 200", "PUT /logger 204", "PUT /metrics 204", "PUT /machine-config 204",
		"PUT /boot-source 204", "PUT /drives/rootfs 400")
	// The runtime undoes the launch; nothing may remain.
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := m.Kill(); err != nil {
		t.Fatalf("second Kill: %v", err)
	}
	e.requireClean(e.dir, logFileName)
}

func TestConfigureInvalidSendsNothing(t *testing.T) {
	e := newEnv(t, Options{})
	m := e.launch(e.spec("inval-1"))
	cfg := e.config()
	cfg.Drives[1].ID = "../../vm"
	if err := m.Configure(ctxT(t), cfg); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("err %v", err)
	}
	e.requireRequests("GET / 200")
}

func TestCrashDetected(t *testing.T) {
	e := newEnv(t, Options{})
	m := e.launch(e.spec("crash-1"))
	if err := m.Configure(ctxT(t), e.config()); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(m.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after kill -9")
	}
	st := m.ExitStatus()
	if !st.Exited || st.Expected || st.Signal != "SIGKILL" {
		t.Fatalf("exit status %+v", st)
	}
	// Later calls fail as transport errors, not refusals.
	if err := m.Start(ctxT(t)); err == nil || IsRequestError(err) {
		t.Fatalf("start after crash: %v", err)
	}
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	if st := m.ExitStatus(); st.Expected {
		t.Fatal("a Kill after the crash made the crash look expected")
	}
	e.requireClean(e.dir, logFileName)
}

func TestCrashOnRequestAndHang(t *testing.T) {
	e := newEnv(t, Options{APITimeout: 300 * time.Millisecond})
	m := e.launch(e.spec("hang-1", "HEARTH_FCSIM_FAIL_AT=hang:PATCH:/vm,crash:PUT:/actions"))
	ctx := ctxT(t)
	if err := m.Configure(ctx, e.config()); err != nil {
		t.Fatal(err)
	}
	if err := m.Pause(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hung request: %v", err)
	}
	if err := m.Start(ctx); err == nil || IsRequestError(err) {
		t.Fatalf("request that crashed the VMM: %v", err)
	}
	select {
	case <-m.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("crash not observed")
	}
	if st := m.ExitStatus(); st.Expected || st.Code != 137 {
		t.Fatalf("exit status %+v", st)
	}
}

func TestShutdownEscalates(t *testing.T) {
	// Not started: Ctrl+Alt+Del is refused, so Shutdown goes to signals.
	e := newEnv(t, Options{ShutdownGrace: 200 * time.Millisecond, TermGrace: 500 * time.Millisecond})
	m := e.launch(e.spec("esc-1"))
	start := time.Now()
	rep, err := m.Shutdown(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	// The simulator exits on SIGTERM, as Firecracker does.
	if rep.Outcome != "terminated" || rep.Detail == "" {
		t.Fatalf("report %+v", rep)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("shutdown took %v", d)
	}
	if st := m.ExitStatus(); !st.Exited || !st.Expected {
		t.Fatalf("exit status %+v", st)
	}
	if rep, err := m.Shutdown(ctxT(t)); err != nil || rep.Outcome != "already exited" {
		t.Fatalf("second shutdown: %+v %v", rep, err)
	}
	e.requireClean(e.dir, logFileName)
}

func TestAdopt(t *testing.T) {
	e := newEnv(t, Options{})
	m := e.launch(e.spec("adopt-1"))
	ctx := ctxT(t)
	if err := m.Configure(ctx, e.config()); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	h := m.Handle()
	m.Release() // the daemon goes away; the VM stays
	if err := m.Pause(ctx); !errors.Is(err, ErrReleased) {
		t.Fatalf("released machine answered: %v", err)
	}
	if !proc.Identity(proc.Identity{Pid: h.Pid, StartTime: h.StartTime}).Alive() {
		t.Fatal("Release stopped the VMM")
	}

	// The handle survives a round trip through JSON (the store).
	raw, _ := json.Marshal(h)
	var h2 vmm.Handle
	json.Unmarshal(raw, &h2)

	bad := h2
	bad.StartTime++
	if _, err := e.b.Adopt(ctx, bad); !errors.Is(err, vmm.ErrGone) {
		t.Fatalf("adopt with a wrong start time: %v", err)
	}
	a, err := e.b.AdoptMachine(ctx, h2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Kill() })
	if err := a.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if info, err := a.Info(ctx); err != nil || info.State != InstancePaused {
		t.Fatalf("adopted VM %+v, %v", info, err)
	}
	// Metrics draining resumed on the adopted machine.
	if err := a.FlushMetrics(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for a.LastMetrics() == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if a.LastMetrics() == nil {
		t.Fatal("no metrics after adoption")
	}
	// Snapshot deadline needs the memory size, which the adopted machine
	// learns from the VMM.
	if n := a.memorySize(ctx); n != 64 {
		t.Fatalf("memory size %d", n)
	}
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	if st := a.ExitStatus(); !st.Exited || !st.Expected {
		t.Fatalf("exit status %+v", st)
	}
	if _, err := e.b.Adopt(ctx, h2); !errors.Is(err, vmm.ErrGone) {
		t.Fatalf("adopt after kill: %v", err)
	}
	e.requireClean(e.dir, logFileName)
}

// TestBareNetNS launches a bare VMM inside a network namespace the test
// creates (and that vanishes with its last user): nothing changes in the
// host's namespace.
func TestBareNetNS(t *testing.T) {
	needRoot(t)
	self, err := os.Stat("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	nsPath, stop := newNetNS(t)
	defer stop()
	e := newEnv(t, Options{})
	spec := e.spec("netns-1")
	spec.NetNS = nsPath
	m := e.launch(spec)
	want, err := os.Stat(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.Stat("/proc/" + strconv.Itoa(m.Pid()) + "/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(want, got) {
		t.Fatal("the VMM does not run in the requested network namespace")
	}
	if os.SameFile(self, got) {
		t.Fatal("the VMM runs in the test's namespace")
	}
	// The launching goroutine's thread went back to its namespace before
	// it was returned to the scheduler.
	for i := 0; i < 20; i++ {
		cur, _ := os.Stat("/proc/thread-self/ns/net")
		if !os.SameFile(cur, self) {
			t.Fatal("a Go thread was left in the VMM's namespace")
		}
		runtime.Gosched()
	}
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
}

// newNetNS creates a network namespace held by a parked, locked thread;
// the namespace disappears when stop ends the thread and nothing else
// uses it.
func newNetNS(t *testing.T) (string, func()) {
	t.Helper()
	type res struct {
		path string
		err  error
	}
	ch := make(chan res)
	quit := make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- res{err: err}
			return
		}
		ch <- res{path: fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())}
		<-quit
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("unshare netns: %v", r.err)
	}
	return r.path, func() { close(quit) }
}

func TestJailerLaunch(t *testing.T) {
	needRoot(t)
	needFcsim(t)
	e := newEnv(t, Options{JailerBinary: jailerBin, NoFileLimit: 1024, ShutdownGrace: 3 * time.Second})
	base := filepath.Join(e.root, "jail")
	spec := e.spec("jail-1")
	spec.Jail = &vmm.Jail{UID: 40123, GID: 40123, ChrootBaseDir: base, CgroupVersion: 1, Files: []string{e.data}}
	m := e.launch(spec)
	ctx := ctxT(t)
	chroot := m.Chroot()
	wantChroot := filepath.Join(base, "firecracker", "jail-1", "root")
	if chroot != wantChroot || m.Handle().Extra[ExtraChroot] != wantChroot {
		t.Fatalf("chroot %q, handle %v", chroot, m.Handle().Extra)
	}
	// A private kernel must be chowned to be readable; a world-readable
	// read-only image keeps its owner; a writable drive belongs to the VM.
	if err := os.Chmod(e.kernel, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.Configure(ctx, e.config()); err != nil {
		t.Fatalf("configure: %v%s", err, consoleTail(e.console))
	}
	for name, uid := range map[string]uint32{"vmlinux": 40123, "rootfs.ext4": 0, "data.img": 40123} {
		st, err := os.Stat(filepath.Join(chroot, name))
		if err != nil {
			t.Fatal(err)
		}
		if sys := st.Sys().(*syscall.Stat_t); sys.Uid != uid {
			t.Fatalf("%s owned by %d, want %d", name, sys.Uid, uid)
		}
	}
	// The vsock socket lives in the jail; the requested host path links there.
	if target, err := os.Readlink(filepath.Join(e.root, "v.sock")); err != nil || target != filepath.Join(chroot, "v.sock") {
		t.Fatalf("vsock link %q, %v", target, err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	req := vmm.SnapshotRequest{StatePath: filepath.Join(e.root, "vmstate"), MemPath: filepath.Join(e.root, "mem")}
	if err := m.Snapshot(ctx, req); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{req.StatePath, req.MemPath} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if sys := st.Sys().(*syscall.Stat_t); int(sys.Uid) != os.Getuid() {
			t.Fatalf("%s owned by %d, want the caller", p, sys.Uid)
		}
	}
	requireAbsent(t, filepath.Join(chroot, "hearth-snapshot.vmstate"), filepath.Join(chroot, "hearth-snapshot.mem"))

	// Adopt works for a jailed VMM too.
	h := m.Handle()
	m.Release()
	a, err := e.b.AdoptMachine(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	if a.Chroot() != chroot {
		t.Fatalf("adopted chroot %q", a.Chroot())
	}
	// A paused guest cannot react to Ctrl+Alt+Del.
	if err := a.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if rep, err := a.Shutdown(ctx); err != nil || rep.Outcome != "graceful" {
		t.Fatalf("shutdown: %+v %v", rep, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("graceful shutdown took %v", d)
	}
	if st := a.ExitStatus(); !st.Expected {
		t.Fatalf("exit status %+v", st)
	}
	requireAbsent(t, filepath.Join(base, "firecracker", "jail-1"), filepath.Join(e.root, "v.sock"))
	if p := livePids(base); len(p) > 0 {
		t.Fatalf("processes left: %v", p)
	}
	// The jail's log was kept in the VM directory.
	if _, err := os.Stat(filepath.Join(e.dir, logFileName)); err != nil {
		t.Fatalf("log not kept: %v", err)
	}
}

// TestJailedRestore snapshots a jailed VM and restores it into fresh
// jails with both memory backends: the state and memory files (or the
// page-fault socket) are staged into each chroot, and the drives recorded
// in the snapshot resolve because they are given as Jail.Files.
func TestJailedRestore(t *testing.T) {
	needRoot(t)
	needFcsim(t)
	e := newEnv(t, Options{JailerBinary: jailerBin})
	base := filepath.Join(e.root, "jail")
	jail := func(uid int) *vmm.Jail {
		return &vmm.Jail{UID: uid, GID: uid, ChrootBaseDir: base, CgroupVersion: 2, Files: []string{e.rootfs, e.data}}
	}
	spec := e.spec("jsrc")
	spec.Jail = jail(40130)
	src := e.launch(spec)
	ctx := ctxT(t)
	if err := src.Configure(ctx, e.config()); err != nil {
		t.Fatal(err)
	}
	if err := src.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	req := vmm.SnapshotRequest{StatePath: filepath.Join(e.root, "vmstate"), MemPath: filepath.Join(e.root, "mem")}
	if err := src.Snapshot(ctx, req); err != nil {
		t.Fatal(err)
	}
	if err := src.Kill(); err != nil {
		t.Fatal(err)
	}
	for i, backend := range []vmm.MemBackend{vmm.MemFile, vmm.MemUffd} {
		t.Run(string(backend), func(t *testing.T) {
			id := "jdst-" + string(backend)
			spec := e.spec(id)
			spec.Jail = jail(40131 + i)
			dst := e.launch(spec)
			load := vmm.LoadRequest{StatePath: req.StatePath, MemPath: req.MemPath, MemBackend: backend, Resume: true,
				VsockUDSPath: filepath.Join(e.root, id+".sock")}
			if backend == vmm.MemUffd {
				load.MemPath = startPageFaultServer(t, filepath.Join(e.root, "uffd-"+id+".sock"), req.MemPath)
			}
			if err := dst.LoadSnapshot(ctx, load); err != nil {
				t.Fatalf("load: %v%s", err, consoleTail(e.console))
			}
			if info, err := dst.Info(ctx); err != nil || info.State != InstanceRunning {
				t.Fatalf("restored VM %+v, %v", info, err)
			}
			body := lastBody(t, e.reqLog, "/snapshot/load")
			if body.SnapshotPath != "/vmstate" || body.MemBackend.BackendPath != "/"+filepath.Base(load.MemPath) ||
				body.VsockOverride == nil || body.VsockOverride.UDSPath != "/"+id+".sock" {
				t.Fatalf("load body %+v", body)
			}
			if target, err := os.Readlink(load.VsockUDSPath); err != nil || target != filepath.Join(dst.Chroot(), id+".sock") {
				t.Fatalf("vsock link %q, %v", target, err)
			}
			if err := dst.Kill(); err != nil {
				t.Fatal(err)
			}
			requireAbsent(t, filepath.Join(base, "firecracker", id), load.VsockUDSPath)
		})
	}
}

func TestJailerLaunchFailureRemovesJail(t *testing.T) {
	needRoot(t)
	needFcsim(t)
	e := newEnv(t, Options{JailerBinary: jailerBin, ReadyTimeout: 500 * time.Millisecond})
	base := filepath.Join(e.root, "jail")
	spec := e.spec("jail-2", "HEARTH_FCSIM_FAIL_AT=ready")
	spec.Jail = &vmm.Jail{UID: 40124, GID: 40124, ChrootBaseDir: base, CgroupVersion: 2}
	if _, err := e.b.Launch(ctxT(t), spec); !errors.Is(err, ErrNotReady) {
		t.Fatalf("err %v", err)
	}
	requireAbsent(t, filepath.Join(base, "firecracker", "jail-2"))
	if p := livePids(base); len(p) > 0 {
		t.Fatalf("processes left: %v", p)
	}
	e.requireClean(e.dir)
}

// TestJailerCgroupLimits runs a jailed VMM with cgroup v1 limits under a
// parent cgroup of its own, checks the limits are in force, and that the
// VM's cgroups are gone after Kill.
func TestJailerCgroupLimits(t *testing.T) {
	needRoot(t)
	const root = DefaultCgroupRoot
	if _, err := os.Stat(filepath.Join(root, "pids", "tasks")); err != nil {
		t.Skip("no cgroup v1 pids hierarchy:", err)
	}
	needFcsim(t)
	parent := fmt.Sprintf("hearth-test-%d", os.Getpid())
	t.Cleanup(func() {
		for _, c := range cgroupControllers {
			unix.Rmdir(filepath.Join(root, c, parent))
		}
	})
	e := newEnv(t, Options{JailerBinary: jailerBin, ParentCgroup: parent})
	spec := e.spec("cg-1")
	spec.Jail = &vmm.Jail{UID: 40125, GID: 40125, ChrootBaseDir: filepath.Join(e.root, "jail"), CgroupVersion: 1,
		CPUQuota: 0.5, MemoryMax: 256 << 20, PidsMax: 100}
	m := e.launch(spec)
	want := map[string]string{
		"cpu/" + parent + "/cg-1/cpu.cfs_quota_us":         "50000",
		"memory/" + parent + "/cg-1/memory.limit_in_bytes": strconv.Itoa(256 << 20),
		"pids/" + parent + "/cg-1/pids.max":                "100",
	}
	for f, v := range want {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(string(b)) != v {
			t.Fatalf("%s = %q, want %s", f, b, v)
		}
	}
	cg, _ := os.ReadFile("/proc/" + strconv.Itoa(m.Pid()) + "/cgroup")
	t.Logf("VMM cgroups:\n%s", cg)
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, c := range cgroupControllers {
		requireAbsent(t, filepath.Join(root, c, parent, "cg-1"))
	}
}

// TestJailerNetNS passes the network namespace through the jailer's
// --netns.
func TestJailerNetNS(t *testing.T) {
	needRoot(t)
	needFcsim(t)
	nsPath, stop := newNetNS(t)
	defer stop()
	e := newEnv(t, Options{JailerBinary: jailerBin})
	spec := e.spec("jnet-1")
	spec.NetNS = nsPath
	spec.Jail = &vmm.Jail{UID: 40140, GID: 40140, ChrootBaseDir: filepath.Join(e.root, "jail"), CgroupVersion: 2}
	m := e.launch(spec)
	want, err := os.Stat(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.Stat("/proc/" + strconv.Itoa(m.Pid()) + "/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(want, got) {
		t.Fatal("the jailed VMM does not run in the requested network namespace")
	}
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
}
