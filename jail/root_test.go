package jail

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hearth-vm/hearth/proc"
)

// envExec makes the test binary act as `hearth _jail`: its arguments are
// the command's, and it runs Exec exactly as cmd/hearth does.
const envExec = "HEARTH_JAIL_TEST_EXEC"

func TestMain(m *testing.M) {
	if os.Getenv(envExec) != "" {
		spec, err := ParseExecArgs(os.Args[1:])
		if err == nil {
			err = Exec(spec)
		}
		fmt.Fprintln(os.Stderr, "_jail:", err)
		os.Exit(111)
	}
	os.Exit(m.Run())
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: chroot, setuid, cgroups, mknod")
	}
}

// startJailed runs the test binary as `_jail` with spec, detached, with
// its output in a file.
func startJailed(t *testing.T, spec ExecSpec) (*proc.Process, string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "console.log")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p, err := proc.Start(proc.StartSpec{Path: self, Args: spec.Args(), Env: append(os.Environ(), envExec+"=1"), Output: out})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill(); p.Release() })
	return p, out
}

func waitFor(t *testing.T, what string, p *proc.Process, console string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		select {
		case <-p.Done():
			b, _ := os.ReadFile(console)
			t.Fatalf("jailed process exited (%s) before %s; console:\n%s", p.Exit(), what, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestJailedProcess runs busybox through `_jail` with a uid from the
// allocator, a v1 (or v2) cgroup with limits, rlimits, a device node and a
// network namespace the test created, then checks from outside what the
// jailed process is and sees, and that teardown leaves nothing.
func TestJailedProcess(t *testing.T) {
	needRoot(t)
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not installed (apt-get install busybox-static)")
	}
	busybox, _ = filepath.EvalSymlinks(busybox)
	if libs, err := SharedLibraries(busybox); err != nil || len(libs) > 0 {
		t.Skipf("busybox is not static (%v, %v): install busybox-static", libs, err)
	}
	h, err := DetectHierarchy()
	if err != nil {
		t.Skip(err)
	}
	// A test-only cgroup parent, removed at the end in every hierarchy.
	parent := "hearth-test-" + strconv.Itoa(os.Getpid())
	t.Cleanup(func() {
		for _, d := range h.Cgroup(parent).dirs() {
			removeCgroupTree(d)
		}
	})
	base := filepath.Join(t.TempDir(), "jails")
	alloc := NewMemAllocator()
	m, err := New(Config{ChrootBase: base, CgroupParent: parent}, alloc)
	if err != nil {
		t.Fatal(err)
	}
	cred, err := m.Allocate("vm-jail-1")
	if err != nil {
		t.Fatal(err)
	}
	// The network namespace, held by a sleep process the test owns.
	holder := exec.Command("sleep", "60")
	holder.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := holder.Start(); err != nil {
		t.Skipf("cannot create a network namespace: %v", err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	netns := fmt.Sprintf("/proc/%d/ns/net", holder.Process.Pid)

	chroot, err := m.Prepare(filepath.Base(busybox), "vm-jail-1", cred)
	if err != nil {
		t.Fatal(err)
	}
	// A staged "disk" the VM may write, and a host file it must not see.
	disk := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(disk, []byte("disk"), 0o600)
	if err := chroot.Stage(disk, "/disk.img", true); err != nil {
		t.Fatal(err)
	}
	script := `B=/usr/bin/busybox
{ $B id -u; $B id -g; $B ls /
  if [ -e /etc/passwd ]; then echo sees-host-etc; fi
  if [ -e ` + base + ` ]; then echo sees-host-jails; fi
  echo written >> /disk.img && echo disk-ok
  [ -c /dev/null ] && echo dev-ok
} > /out.txt 2>&1
$B touch /ready
exec $B sleep 60`
	limits := Limits{CPUQuota: 0.5, MemoryMax: 64 << 20, PidsMax: 16}
	spec, err := m.ExecSpec(busybox, "vm-jail-1", cred, limits, netns, []Rlimit{{"no-file", 256}}, []string{"sh", "-c", script})
	if err != nil {
		t.Fatal(err)
	}
	spec.Devices = []string{"/dev/null"}
	p, console := startJailed(t, spec)
	waitFor(t, "the jailed script", p, console, func() bool {
		_, err := os.Stat(filepath.Join(chroot.Root, "ready"))
		return err == nil
	})
	pid := p.Pid() // exec'd in place: the pid hearth started is the VMM's

	out := strings.Fields(readFile(t, filepath.Join(chroot.Root, "out.txt")))
	uid := strconv.Itoa(cred.UID)
	if len(out) < 2 || out[0] != uid || out[1] != strconv.Itoa(cred.GID) {
		t.Fatalf("jailed id output %q, want uid/gid %d", out, cred.UID)
	}
	// The root directory holds only what was staged.
	listing := out[2:]
	for _, want := range []string{"usr", "dev", "disk.img", "out.txt", "disk-ok", "dev-ok"} {
		if !slices.Contains(listing, want) {
			t.Errorf("%q missing from the jail's view %q", want, listing)
		}
	}
	for _, bad := range []string{"etc", "proc", "tmp", "sees-host-etc", "sees-host-jails"} {
		if slices.Contains(listing, bad) {
			t.Errorf("jail sees %q: %q", bad, listing)
		}
	}
	if readFile(t, disk) != "disk"+"written\n" {
		t.Error("write to the staged (hard-linked) disk did not reach the host file")
	}

	// From outside: credentials, root, netns, rlimit, cgroup.
	status := readFile(t, "/proc/"+strconv.Itoa(pid)+"/status")
	for _, line := range []string{"Uid:\t" + uid + "\t" + uid + "\t" + uid + "\t" + uid, "Gid:\t" + uid + "\t" + uid + "\t" + uid + "\t" + uid, "NoNewPrivs:\t1"} {
		if !strings.Contains(status, line) {
			t.Errorf("status lacks %q:\n%s", line, status)
		}
	}
	for _, line := range strings.Split(status, "\n") {
		if g, ok := strings.CutPrefix(line, "Groups:"); ok && strings.TrimSpace(g) != "" {
			t.Errorf("supplementary groups kept: %q", g)
		}
	}
	if root, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/root"); err != nil || root != chroot.Root {
		t.Errorf("root %q, want %q (%v)", root, chroot.Root, err)
	}
	if got, want := nsInode(t, "/proc/"+strconv.Itoa(pid)+"/ns/net"), nsInode(t, netns); got != want {
		t.Errorf("netns inode %d, want %d", got, want)
	}
	if lim := readFile(t, "/proc/"+strconv.Itoa(pid)+"/limits"); !strings.Contains(strings.Join(strings.Fields(lim), " "), "Max open files 256 256") {
		t.Errorf("rlimit not applied:\n%s", lim)
	}
	cg := m.Cgroup("vm-jail-1")
	procs, err := cg.Procs()
	if err != nil || !slices.Contains(procs, pid) {
		t.Fatalf("pid %d not in cgroup %s: %v %v", pid, cg.Path(), procs, err)
	}
	for ctl, d := range cg.Dirs() {
		if !slices.Contains(strings.Fields(readFile(t, filepath.Join(d, "cgroup.procs"))), strconv.Itoa(pid)) {
			t.Errorf("pid not in the %s hierarchy", ctl)
		}
	}
	want := map[string]string{}
	for _, f := range limits.Files(h.Version) {
		want[f.File] = f.Value
	}
	for f, v := range want {
		ctl, _, _ := strings.Cut(f, ".")
		d, _ := cg.dirFor(ctl)
		if got := strings.TrimSpace(readFile(t, filepath.Join(d, f))); got != v {
			t.Errorf("%s = %q, want %q", f, got, v)
		}
	}

	// Teardown with the process still running kills it and leaves
	// nothing: no cgroup, no jail, no process.
	if err := m.Teardown(filepath.Base(busybox), "vm-jail-1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("jailed process survived teardown")
	}
	if cg.Exists() {
		t.Fatal("cgroup left after teardown")
	}
	if _, err := os.Stat(m.JailDir(filepath.Base(busybox), "vm-jail-1")); !os.IsNotExist(err) {
		t.Fatalf("jail left after teardown: %v", err)
	}
	if readFile(t, disk) == "" {
		t.Fatal("teardown damaged the host file behind a hard link")
	}
	if err := m.Release(cred); err != nil || len(alloc.Allocations(IDPool)) != 0 {
		t.Fatalf("release: %v %v", err, alloc.Allocations(IDPool))
	}
}

// TestJailedDynamicBinary checks that a dynamically linked VMM (QEMU is
// one) runs in a chroot: its loader and libraries are staged with it.
func TestJailedDynamicBinary(t *testing.T) {
	needRoot(t)
	bin := "/usr/bin/true"
	libs, err := SharedLibraries(bin)
	if err != nil || len(libs) == 0 {
		t.Skipf("%s is not dynamically linked here (%v)", bin, err)
	}
	chroot := filepath.Join(t.TempDir(), "root")
	p, console := startJailed(t, ExecSpec{Chroot: chroot, UID: 7999999, GID: 7999999, Exec: bin})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e, err := p.Wait(ctx)
	if err != nil || e.Code != 0 {
		b, _ := os.ReadFile(console)
		t.Fatalf("exit %v %v; console:\n%s", e, err, b)
	}
	for _, l := range libs {
		if _, err := os.Stat(filepath.Join(chroot, l)); err != nil {
			t.Errorf("library %s not staged", l)
		}
	}
}

// TestJailExecFailsCleanly: a jail that cannot be set up fails before the
// VMM runs, with the reason on the console.
func TestJailExecFailsCleanly(t *testing.T) {
	needRoot(t)
	chroot := filepath.Join(t.TempDir(), "root")
	p, console := startJailed(t, ExecSpec{Chroot: chroot, UID: 7999999, GID: 7999999, NetNS: "/nonexistent/netns", Exec: "/usr/bin/true"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e, _ := p.Wait(ctx)
	if e.Code != 111 || !strings.Contains(readFile(t, console), "netns") {
		t.Fatalf("exit %v; console %q", e, readFile(t, console))
	}
}

// TestReconcileKillsOrphans: a cgroup under hearth's parent that no VM
// owns, with a live process in it (a VMM no record knows), is emptied
// and removed; the owned one is left alone.
func TestReconcileKillsOrphans(t *testing.T) {
	needRoot(t)
	h, err := DetectHierarchy()
	if err != nil {
		t.Skip(err)
	}
	parent := "hearth-test-rec-" + strconv.Itoa(os.Getpid())
	t.Cleanup(func() {
		for _, d := range h.Cgroup(parent).dirs() {
			removeCgroupTree(d)
		}
	})
	m, err := New(Config{ChrootBase: filepath.Join(t.TempDir(), "jails"), CgroupParent: parent}, NewMemAllocator())
	if err != nil {
		t.Fatal(err)
	}
	start := func(id string) *proc.Process {
		p, err := proc.Start(proc.StartSpec{Path: "/bin/sleep", Args: []string{"60"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Kill(); p.Release() })
		cg := m.Cgroup(id)
		if err := cg.Create(Limits{PidsMax: 4}.Files(h.Version)); err != nil {
			t.Fatal(err)
		}
		if err := cg.Join(p.Pid()); err != nil {
			t.Fatal(err)
		}
		return p
	}
	orphan, owned := start("orphan-vm"), start("owned-vm")
	rep, err := m.Reconcile(func(id string) bool { return id == "owned-vm" })
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Cgroups, []string{parent + "/orphan-vm"}) {
		t.Fatalf("report %+v", rep)
	}
	select {
	case <-orphan.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("orphan process not killed")
	}
	if m.Cgroup("orphan-vm").Exists() {
		t.Fatal("orphan cgroup left")
	}
	select {
	case <-owned.Done():
		t.Fatal("owned VM's process killed")
	default:
	}
	if err := m.Teardown("sleep", "owned-vm"); err != nil {
		t.Fatal(err)
	}
	<-owned.Done()
}
