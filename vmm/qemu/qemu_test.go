package qemu

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/proc"
	"github.com/hearth-vm/hearth/vmm"
)

// These tests run the real qemu-system-x86_64. They need no guest image:
// the microvm machine without -kernel runs its qboot firmware, which is
// enough to exercise QMP, run states, migration to a file and restore.
// Configure refuses an empty kernel, so they start QEMU through boot.

func needQEMU(t *testing.T) *Backend {
	t.Helper()
	if _, err := exec.LookPath(DefaultBinary); err != nil {
		t.Skipf("%s not installed (apt-get install qemu-system-x86): %v", DefaultBinary, err)
	}
	b, err := New(Options{ShutdownGrace: 300 * time.Millisecond, TermGrace: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// launch returns an unstarted machine whose process, if any, is killed
// when the test ends.
func launch(t *testing.T, b *Backend, name string) (*Machine, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := b.LaunchMachine(context.Background(), vmm.LaunchSpec{VMID: name, Dir: dir, ConsolePath: filepath.Join(dir, "console.log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.mu.Lock()
		released := m.released
		m.mu.Unlock()
		if !released {
			m.Kill()
		}
	})
	return m, dir
}

func guestlessConfig(t *testing.T, dir string) vmm.Config {
	t.Helper()
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	return vmm.Config{
		VCPUs: 1, MemoryMiB: 32,
		Drives: []vmm.Drive{{ID: "rootfs", Path: disk, Root: true, RateLimit: &vmm.RateLimiter{
			Bandwidth: &vmm.TokenBucket{Size: 100 << 20, RefillTime: time.Second}}}},
		Vsock: &vmm.Vsock{UDSPath: filepath.Join(dir, "agent.sock")},
	}
}

func bootGuestless(t *testing.T, m *Machine, cfg vmm.Config) {
	t.Helper()
	if err := m.claim("test"); err != nil {
		t.Fatal(err)
	}
	if err := m.boot(context.Background(), cfg, false); err != nil {
		t.Fatal(err)
	}
}

func wantStatus(t *testing.T, m *Machine, want string) {
	t.Helper()
	st, err := m.QueryStatus(context.Background())
	if err != nil {
		t.Fatalf("query-status: %v", err)
	}
	if st.Status != want {
		t.Fatalf("status %q, want %q", st.Status, want)
	}
}

// assertGone checks the process of h no longer exists and its sockets
// are removed.
func assertGone(t *testing.T, m *Machine, h vmm.Handle, sockets ...string) {
	t.Helper()
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed")
	}
	if h.Pid > 0 && (proc.Identity{Pid: h.Pid, StartTime: h.StartTime}).Alive() {
		t.Errorf("qemu pid %d still alive", h.Pid)
	}
	for _, s := range append(sockets, h.Control) {
		if _, err := os.Stat(s); err == nil {
			t.Errorf("%s left behind", s)
		}
	}
}

func TestRealLifecycleSnapshotRestore(t *testing.T) {
	b := needQEMU(t)
	ctx := context.Background()
	m, dir := launch(t, b, "src")
	if h := m.Handle(); h.Pid != 0 || h.Backend != "qemu" {
		t.Fatalf("handle before configure: %+v", h)
	}
	cfg := guestlessConfig(t, dir)
	bootGuestless(t, m, cfg)
	h := m.Handle()
	if h.Pid <= 0 || h.Control != filepath.Join(dir, qmpSocketName) {
		t.Fatalf("handle %+v", h)
	}
	if _, err := os.Stat(cfg.Vsock.UDSPath); err != nil {
		t.Errorf("agent socket: %v", err)
	}
	wantStatus(t, m, "prelaunch")
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, m, "running")

	var re *vmm.RequestError
	if err := m.Snapshot(ctx, vmm.SnapshotRequest{StatePath: filepath.Join(dir, "s"), MemPath: filepath.Join(dir, "m")}); !errors.As(err, &re) {
		t.Errorf("snapshot while running: %v, want RequestError", err)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, m, "paused")
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, m, "running")
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}

	snap := filepath.Join(t.TempDir(), "snap")
	os.Mkdir(snap, 0o755)
	req := vmm.SnapshotRequest{StatePath: filepath.Join(snap, "state.json"), MemPath: filepath.Join(snap, "mem")}
	if err := m.Snapshot(ctx, req); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(req.MemPath); err != nil || st.Size() == 0 {
		t.Fatalf("memory file: %v", err)
	}
	doc, err := ReadStateDoc(req.StatePath)
	if err != nil {
		t.Fatal(err)
	}
	if doc.Config.Drives[0].Path != cfg.Drives[0].Path || len(doc.Args) == 0 || doc.Accel != AccelTCG {
		t.Errorf("state doc %+v", doc)
	}
	// The source can continue after the snapshot.
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, m, "running")

	// Restore a clone with its own disk and agent socket while the source
	// keeps running.
	c, cdir := launch(t, b, "clone")
	cdisk := filepath.Join(cdir, "disk.img")
	if err := os.WriteFile(cdisk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	load := vmm.LoadRequest{
		StatePath: req.StatePath, MemPath: req.MemPath, MemBackend: vmm.MemFile,
		DriveOverrides: []vmm.DriveOverride{{ID: "rootfs", Path: cdisk}},
		VsockUDSPath:   filepath.Join(cdir, "agent.sock"),
	}
	if err := c.LoadSnapshot(ctx, load); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, c, "paused")
	if !strings.Contains(c.Handle().Extra[ExtraArgs], cdisk) {
		t.Errorf("clone args do not use its disk: %s", c.Handle().Extra[ExtraArgs])
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, c, "running")
	wantStatus(t, m, "running")

	// Firmware only, no ACPI-aware guest: system_powerdown is ignored and
	// the ladder ends with SIGTERM, which QEMU obeys.
	ch := c.Handle()
	rep, err := c.Shutdown(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Outcome != string(proc.OutcomeTerminated) {
		t.Errorf("shutdown outcome %q (%s)", rep.Outcome, rep.Detail)
	}
	if st := c.ExitStatus(); !st.Exited || !st.Expected {
		t.Errorf("clone exit status %+v", st)
	}
	assertGone(t, c, ch, load.VsockUDSPath)

	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := m.Kill(); err != nil {
		t.Errorf("second Kill: %v", err)
	}
	if st := m.ExitStatus(); !st.Exited || !st.Expected || st.Signal != "SIGKILL" {
		t.Errorf("exit status %+v", st)
	}
	assertGone(t, m, h, cfg.Vsock.UDSPath)
}

func TestRealAdopt(t *testing.T) {
	b := needQEMU(t)
	ctx := context.Background()
	m, dir := launch(t, b, "adopt")
	bootGuestless(t, m, guestlessConfig(t, dir))
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	h := m.Handle()
	m.Release()
	if err := m.Pause(ctx); !errors.Is(err, ErrReleased) {
		t.Errorf("pause after release: %v", err)
	}
	a, err := b.AdoptMachine(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Kill() })
	wantStatus(t, a, "running")
	if err := a.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	// An adopted machine can snapshot: its config travels in the handle.
	sdir := t.TempDir()
	if err := a.Snapshot(ctx, vmm.SnapshotRequest{StatePath: filepath.Join(sdir, "s"), MemPath: filepath.Join(sdir, "m")}); err != nil {
		t.Fatal(err)
	}
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, a, h)
	if _, err := b.Adopt(ctx, h); !errors.Is(err, vmm.ErrGone) {
		t.Errorf("adopt of a dead qemu: %v, want ErrGone", err)
	}
}

func TestRealFailuresLeaveNothing(t *testing.T) {
	b := needQEMU(t)
	ctx := context.Background()

	// A kernel that does not exist: QEMU refuses at start.
	m, dir := launch(t, b, "badkernel")
	cfg := guestlessConfig(t, dir)
	cfg.Kernel = filepath.Join(dir, "no-such-vmlinux")
	err := m.Configure(ctx, cfg)
	if !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), "no-such-vmlinux") {
		t.Errorf("configure with a missing kernel: %v", err)
	}
	h := m.Handle()
	if h.Pid != 0 {
		t.Errorf("handle records pid %d of a failed start", h.Pid)
	}
	for _, s := range []string{filepath.Join(dir, qmpSocketName), cfg.Vsock.UDSPath} {
		if _, err := os.Stat(s); err == nil {
			t.Errorf("%s left behind", s)
		}
	}
	if err := m.Configure(ctx, cfg); err == nil {
		t.Error("second Configure accepted")
	}
	if err := m.Kill(); err != nil {
		t.Errorf("kill after failed configure: %v", err)
	}

	// A binary that exits at once.
	fb, err := New(Options{Binary: "false"})
	if err != nil {
		t.Fatal(err)
	}
	m2, dir2 := launch(t, fb, "false")
	cfg2 := guestlessConfig(t, dir2)
	cfg2.Kernel = "/nonexistent"
	if err := m2.Configure(ctx, cfg2); !errors.Is(err, ErrExited) {
		t.Errorf("configure with a binary that exits: %v", err)
	}

	// Kill before anything runs closes Done and forbids Configure.
	m3, dir3 := launch(t, b, "early")
	if err := m3.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m3.Done():
	default:
		t.Error("Done not closed after Kill of an unstarted machine")
	}
	cfg3 := guestlessConfig(t, dir3)
	cfg3.Kernel = "/nonexistent"
	if err := m3.Configure(ctx, cfg3); err == nil {
		t.Error("Configure after Kill accepted")
	}
	if err := m3.Start(ctx); !errors.Is(err, ErrNotStarted) {
		t.Errorf("start of an unstarted machine: %v", err)
	}
	if rep, err := m3.Shutdown(ctx); err != nil || rep.Outcome != string(proc.OutcomeAlreadyExited) {
		t.Errorf("shutdown of an unstarted machine: %+v %v", rep, err)
	}

	// Restores that cannot work are refused before QEMU starts.
	m4, _ := launch(t, b, "badload")
	if err := m4.LoadSnapshot(ctx, vmm.LoadRequest{StatePath: "/nonexistent", MemPath: "/nonexistent"}); err == nil {
		t.Error("load of a missing snapshot accepted")
	}
	if err := m4.LoadSnapshot(ctx, vmm.LoadRequest{MemBackend: vmm.MemUffd}); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("uffd load: %v, want unsupported", err)
	}
}

func TestNewOptions(t *testing.T) {
	if _, err := New(Options{Binary: "/nonexistent/qemu"}); err == nil {
		t.Error("missing binary accepted")
	}
	if _, err := New(Options{Binary: "true", Accel: "hvf"}); err == nil {
		t.Error("bad accel accepted")
	}
	b, err := New(Options{Binary: "true", Accel: AccelAuto})
	if err != nil {
		t.Fatal(err)
	}
	if b.Accel() != AccelTCG || b.Name() != "qemu" {
		t.Errorf("accel %q name %q", b.Accel(), b.Name())
	}
	if _, err := b.Launch(context.Background(), vmm.LaunchSpec{VMID: "x", Dir: "/nonexistent"}); err == nil {
		t.Error("launch with a missing dir accepted")
	}
	if _, err := b.Launch(context.Background(), vmm.LaunchSpec{VMID: "x", Dir: t.TempDir(), Jail: &vmm.Jail{}}); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("jailed launch: %v, want unsupported", err)
	}
}

// guestKernel returns a PVH-bootable vmlinux (and its initrd, if any) from
// $HEARTH_TEST_VMLINUX or the default image of the state dir.
func guestKernel(t *testing.T) (kernel, initrd string) {
	t.Helper()
	kernel = os.Getenv("HEARTH_TEST_VMLINUX")
	if kernel == "" {
		state := os.Getenv("HEARTH_STATE_DIR")
		if state == "" {
			state = "/var/lib/hearth"
		}
		kernel = filepath.Join(state, "images", "default", "vmlinux")
	}
	if _, err := os.Stat(kernel); err != nil {
		t.Skipf("no guest kernel at %s (run hearth image build default or set HEARTH_TEST_VMLINUX): %v", kernel, err)
	}
	if i := filepath.Join(filepath.Dir(kernel), "initrd"); fileExists(i) {
		initrd = i
	}
	return kernel, initrd
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// TestRealKernelBoots boots a real guest kernel through Configure and
// checks its console reaches the console file. It skips without an image.
func TestRealKernelBoots(t *testing.T) {
	b := needQEMU(t)
	kernel, initrd := guestKernel(t)
	ctx := context.Background()
	m, dir := launch(t, b, "kernel")
	cfg := vmm.Config{
		VCPUs: 1, MemoryMiB: 256, Kernel: kernel, Initrd: initrd,
		BootArgs: "console=ttyS0 panic=-1 reboot=k no_timer_check",
		Vsock:    &vmm.Vsock{UDSPath: filepath.Join(dir, "agent.sock")},
	}
	if err := m.Configure(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	console := filepath.Join(dir, "console.log")
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(console)
		if strings.Contains(string(b), "Linux version") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no kernel banner on the console within 30 s; console: %q", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	h := m.Handle()
	if _, err := m.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	assertGone(t, m, h, cfg.Vsock.UDSPath)
}
