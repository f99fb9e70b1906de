package hearth_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/internal/testbin"
	"github.com/hearth-vm/hearth/proc"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/firecracker"
)

// These tests run the runtime against the Firecracker simulator as a real
// process: they prove the Firecracker backend is wired into the runtime.

// fcsimBinary is the simulator, named like Firecracker (the jailer only
// runs files named *firecracker*).
func fcsimBinary(t *testing.T) string {
	t.Helper()
	return testbin.Build(t, "cmd/hearth-fcsim", "firecracker")
}

type fcFixture struct {
	dir, state string
	spec       hearth.Spec
	rt         *hearth.Runtime
	log        string // request log of every simulator process
}

func newFC(t *testing.T) *fcFixture {
	t.Helper()
	bin := fcsimBinary(t)
	// Unix socket paths are short: keep the state dir near the root.
	dir, err := os.MkdirTemp("", "hfc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fcFixture{dir: dir, state: filepath.Join(dir, "s"), log: filepath.Join(dir, "requests.jsonl")}
	k, r := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.ext4")
	os.WriteFile(k, []byte("kernel"), 0o600)
	os.WriteFile(r, make([]byte, 1<<20), 0o600)
	f.spec = hearth.Spec{Kernel: k, Rootfs: r, VCPUs: 1, MemoryMiB: 32}
	t.Setenv("HEARTH_FCSIM_REQUEST_LOG", f.log)
	f.rt = f.open(t, bin)
	t.Cleanup(func() { f.destroyAll(t) })
	return f
}

func (f *fcFixture) open(t *testing.T, bin string) *hearth.Runtime {
	t.Helper()
	b, err := firecracker.New(firecracker.Options{Binary: bin, ReadyTimeout: 3 * time.Second, ShutdownGrace: 2 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := hearth.Open(context.Background(), hearth.Config{StateDir: f.state, Backends: []vmm.Backend{b}})
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

func (f *fcFixture) destroyAll(t *testing.T) {
	ctx := context.Background()
	views, _ := f.rt.List(ctx)
	for _, v := range views {
		f.rt.Destroy(ctx, v.ID)
	}
	f.rt.Close()
}

type logLine struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body"`
	Status int             `json:"status"`
}

func (f *fcFixture) requests(t *testing.T) []logLine {
	t.Helper()
	fh, err := os.Open(f.log)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var out []logLine
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Method != "GET" && l.Method != "JAILER" {
			out = append(out, l)
		}
	}
	os.Truncate(f.log, 0)
	return out
}

func calls(ls []logLine) []string {
	var out []string
	for _, l := range ls {
		out = append(out, l.Method+" "+l.Path)
	}
	return out
}

// simProcesses counts running simulator processes of this test binary.
func simProcesses(t *testing.T) []int {
	t.Helper()
	bin := fcsimBinary(t)
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err == nil && exe == bin {
			var pid int
			if _, err := fmtSscan(e.Name(), &pid); err == nil {
				if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil && !strings.Contains(string(st), ") Z ") {
					pids = append(pids, pid)
				}
			}
		}
	}
	return pids
}

func TestFirecrackerLifecycle(t *testing.T) {
	ctx := context.Background()
	withGuestAgent(t) // restores hand each clone's agent a token of its own
	f := newFC(t)
	rt := f.rt
	spec := f.spec
	spec.Agent = new(bool)
	*spec.Agent = true

	v, err := rt.Create(ctx, "vm1", spec)
	if err != nil {
		t.Fatal(err)
	}
	if v.Backend != "firecracker" || v.Pid == 0 {
		t.Fatalf("created: %+v", v)
	}
	got := calls(f.requests(t))
	want := []string{"PUT /logger", "PUT /metrics", "PUT /machine-config", "PUT /boot-source", "PUT /drives/rootfs", "PUT /vsock"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("cold boot calls:\n got %v\nwant %v", got, want)
	}
	for _, step := range []struct {
		name string
		call func() (hearth.View, error)
		want []string
	}{
		{"start", func() (hearth.View, error) { return rt.Start(ctx, "vm1") }, []string{"PUT /actions"}},
		{"pause", func() (hearth.View, error) { return rt.Pause(ctx, "vm1") }, []string{"PATCH /vm"}},
		{"resume", func() (hearth.View, error) { return rt.Resume(ctx, "vm1") }, []string{"PATCH /vm"}},
	} {
		if _, err := step.call(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if got := calls(f.requests(t)); strings.Join(got, ",") != strings.Join(step.want, ",") {
			t.Fatalf("%s calls: %v", step.name, got)
		}
	}

	// Stats: process counters and the VMM's own (drained from its FIFO).
	st, err := rt.Stats(ctx, "vm1")
	if err != nil || st.Pid != v.Pid || st.CPU == nil || st.Memory == nil || st.Firecracker == nil {
		t.Fatalf("stats: %+v %v", st, err)
	}
	if srcs := rt.MetricSources(); len(srcs) != 1 || srcs[0].Firecracker == nil {
		t.Fatalf("metric sources: %+v", srcs)
	}

	// Snapshot of a running VM: pause, create, resume.
	sv, err := rt.Snapshot(ctx, "vm1", "snap")
	if err != nil {
		t.Fatal(err)
	}
	if got := calls(f.requests(t)); strings.Join(got, ",") != "PATCH /vm,PUT /snapshot/create,PATCH /vm" {
		t.Fatalf("snapshot calls: %v", got)
	}
	fi, err := os.Stat(filepath.Join(sv.Dir, "mem"))
	if err != nil || fi.Size() != 32<<20 {
		t.Fatalf("memory file: %v %v", fi, err)
	}
	if _, err := os.Stat(filepath.Join(sv.Dir, "vmstate")); err != nil {
		t.Fatal(err)
	}

	// Restore as a new VM: its own disk (patched after a paused load) and
	// its own vsock socket; then resumed.
	c, err := rt.Restore(ctx, hearth.RestoreSpec{Snapshot: "snap", VM: "clone"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Status != hearth.StatusRunning || c.Pid == v.Pid {
		t.Fatalf("clone: %+v", c)
	}
	rl := f.requests(t)
	got = calls(rl)
	if strings.Join(got, ",") != "PUT /logger,PUT /metrics,PUT /snapshot/load,PATCH /drives/rootfs,PATCH /vm" {
		t.Fatalf("restore calls: %v", got)
	}
	var load map[string]any
	json.Unmarshal(rl[2].Body, &load)
	if _, bad := load["network_interfaces"]; bad {
		t.Fatal("snapshot load sent the seed's network_interfaces field")
	}
	vo, _ := load["vsock_override"].(map[string]any)
	if vo == nil || !strings.HasPrefix(vo["uds_path"].(string), f.state) {
		t.Fatalf("clone got no vsock override: %s", rl[2].Body)
	}
	var patch map[string]any
	json.Unmarshal(rl[3].Body, &patch)
	if p, _ := patch["path_on_host"].(string); p == "" || p == spec.Rootfs || !strings.HasPrefix(p, f.state) {
		t.Fatalf("clone disk not its own: %s", rl[3].Body)
	}

	// Stop (Ctrl-Alt-Del, the simulator exits) and start again.
	if v, err := rt.Stop(ctx, "vm1"); err != nil || v.Status != hearth.StatusStopped {
		t.Fatalf("stop: %+v %v", v, err)
	}
	if got := calls(f.requests(t)); len(got) == 0 || got[0] != "PUT /actions" {
		t.Fatalf("stop calls: %v", got)
	}
	if v, err := rt.Start(ctx, "vm1"); err != nil || v.Status != hearth.StatusRunning {
		t.Fatalf("restart: %+v %v", v, err)
	}

	for _, id := range []string{"vm1", "clone"} {
		if err := rt.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if pids := simProcesses(t); len(pids) != 0 {
		t.Fatalf("simulators left running: %v", pids)
	}
	if ents, _ := os.ReadDir(filepath.Join(f.state, "vms")); len(ents) != 0 {
		t.Fatalf("vm dirs left: %v", ents)
	}
}

func TestFirecrackerCrashAndAdopt(t *testing.T) {
	ctx := context.Background()
	f := newFC(t)
	if _, err := f.rt.Create(ctx, "a", f.spec); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Start(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Create(ctx, "b", f.spec); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Start(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	before, _ := f.rt.Get(ctx, "a")

	// A daemon restart: the VMMs keep running and are adopted.
	f.rt.Close()
	f.rt = f.open(t, fcsimBinary(t))
	rep := f.rt.Reconciled()
	if len(rep.Adopted) != 2 || len(rep.Crashed) != 0 {
		t.Fatalf("reconcile: %+v", rep)
	}
	after, _ := f.rt.Get(ctx, "a")
	if after.Pid != before.Pid || after.Status != hearth.StatusRunning {
		t.Fatalf("after adopt: %+v", after)
	}
	if _, err := f.rt.Pause(ctx, "a"); err != nil {
		t.Fatalf("pause adopted VM: %v", err)
	}

	// kill -9 the VMM: crashed within a second, for adopted VMMs too.
	for _, id := range []string{"a", "b"} {
		v, _ := f.rt.Get(ctx, id)
		syscall.Kill(v.Pid, syscall.SIGKILL)
		deadline := time.Now().Add(time.Second)
		for {
			v, _ = f.rt.Get(ctx, id)
			if v.Status == hearth.StatusCrashed {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not crashed within 1s: %s", id, v.Status)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// A crashed VM boots again on a fresh VMM.
	if v, err := f.rt.Start(ctx, "a"); err != nil || v.Status != hearth.StatusRunning {
		t.Fatalf("start after crash: %+v %v", v, err)
	}
	// VMMs that died while no runtime watched are found crashed on open.
	v, _ := f.rt.Get(ctx, "a")
	f.rt.Close()
	syscall.Kill(v.Pid, syscall.SIGKILL)
	waitGone(t, v.Pid)
	f.rt = f.open(t, fcsimBinary(t))
	if got, _ := f.rt.Get(ctx, "a"); got.Status != hearth.StatusCrashed {
		t.Fatalf("dead while closed: %+v", got)
	}
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		id, err := proc.Lookup(pid)
		if err != nil || !id.Alive() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still alive", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFirecrackerFailuresLeaveNothing makes the simulator fail in each way
// it can during create and checks that the runtime rolls everything back.
func TestFirecrackerFailuresLeaveNothing(t *testing.T) {
	ctx := context.Background()
	f := newFC(t)
	cases := []struct {
		failAt string
		kind   hearth.Kind
		status int
	}{
		{"start", hearth.KindUnsupported, 0},
		{"ready", hearth.KindUnsupported, 0},
		{"api:PUT:/machine-config", hearth.KindVMM, 400},
		{"api:PUT:/drives/rootfs", hearth.KindVMM, 400},
		{"crash:PUT:/boot-source", hearth.KindUnsupported, 0},
	}
	for _, c := range cases {
		t.Run(c.failAt, func(t *testing.T) {
			t.Setenv("HEARTH_FCSIM_FAIL_AT", c.failAt)
			_, err := f.rt.Create(ctx, "victim", f.spec)
			if err == nil {
				t.Fatal("create succeeded")
			}
			if k := hearth.KindOf(err); k != c.kind {
				t.Fatalf("kind %s, want %s: %v", k, c.kind, err)
			}
			if c.status != 0 {
				var re *vmm.RequestError
				if !errors.As(err, &re) || re.Status != c.status {
					t.Fatalf("want a VMM refusal with status %d: %v", c.status, err)
				}
			}
			if pids := simProcesses(t); len(pids) != 0 {
				t.Fatalf("simulator left running: %v", pids)
			}
			if ents, _ := os.ReadDir(filepath.Join(f.state, "vms")); len(ents) != 0 {
				t.Fatalf("vm dir left: %v", ents)
			}
			if l, _ := f.rt.List(ctx); len(l) != 0 {
				t.Fatalf("record left: %v", l)
			}
		})
	}
	// The id is free again once the simulator behaves.
	if _, err := f.rt.Create(ctx, "victim", f.spec); err != nil {
		t.Fatal(err)
	}
}

func fmtSscan(s string, pid *int) (int, error) {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, errors.New("not a pid")
		}
		n = n*10 + int(c-'0')
	}
	*pid = n
	return 1, nil
}

// TestFirecrackerJailed runs jailed VMs (the simulator plays the jailer):
// each gets its own uid, a chroot and a cgroup with the spec's limits, and
// destroy leaves none of them behind.
func TestFirecrackerJailed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("jailer tests need root (chroot, setuid, cgroups)")
	}
	ctx := context.Background()
	bin := fcsimBinary(t)
	jailer := filepath.Join(filepath.Dir(bin), "jailer")
	if _, err := os.Lstat(jailer); err != nil {
		if err := os.Symlink(bin, jailer); err != nil {
			t.Fatal(err)
		}
	}
	dir, err := os.MkdirTemp("", "hj")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	k, r := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.ext4")
	os.WriteFile(k, []byte("kernel"), 0o644)
	os.WriteFile(r, make([]byte, 1<<20), 0o644)
	const parent = "hearth-test-jailed"
	b, err := firecracker.New(firecracker.Options{Binary: bin, JailerBinary: jailer, UseJailer: true, ParentCgroup: parent,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "s")
	rt, err := hearth.Open(ctx, hearth.Config{StateDir: state, Backends: []vmm.Backend{b}, JailCgroupParent: parent})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	spec := hearth.Spec{Kernel: k, Rootfs: r, MemoryMiB: 32, Jail: &hearth.JailSpec{PidsMax: 64, CPUQuota: 0.5}}
	for _, id := range []string{"j1", "j2"} {
		if _, err := rt.Create(ctx, id, spec); err != nil {
			t.Fatal(err)
		}
		if _, err := rt.Start(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	v1, _ := rt.Get(ctx, "j1")
	v2, _ := rt.Get(ctx, "j2")
	uid := func(pid int) string {
		b, _ := os.ReadFile(filepath.Join("/proc", fmt.Sprint(pid), "status"))
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "Uid:") {
				return strings.Fields(l)[1]
			}
		}
		return ""
	}
	u1, u2 := uid(v1.Pid), uid(v2.Pid)
	if u1 == "" || u1 == "0" || u1 == u2 {
		t.Fatalf("jailed VMMs must run as distinct unprivileged uids: %q %q", u1, u2)
	}
	root1, _ := os.Readlink(filepath.Join("/proc", fmt.Sprint(v1.Pid), "root"))
	if !strings.HasPrefix(root1, filepath.Join(state, "jail")) {
		t.Fatalf("VMM root %q is not its chroot", root1)
	}
	// Snapshot and restore work through the jail.
	if _, err := rt.Snapshot(ctx, "j1", "js"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Restore(ctx, hearth.RestoreSpec{Snapshot: "js", VM: "j3"}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"j1", "j2", "j3"} {
		if err := rt.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range []hearth.View{v1, v2} {
		waitGone(t, v.Pid)
	}
	if ents, _ := os.ReadDir(filepath.Join(state, "jail")); len(ents) != 0 {
		t.Fatalf("jails left: %v", ents)
	}
	for _, ctrl := range []string{"pids", "cpu", "memory", "cpu,cpuacct"} {
		ents, _ := os.ReadDir(filepath.Join("/sys/fs/cgroup", ctrl, parent))
		for _, e := range ents {
			if e.IsDir() {
				t.Fatalf("cgroup left: %s/%s/%s", ctrl, parent, e.Name())
			}
		}
		os.Remove(filepath.Join("/sys/fs/cgroup", ctrl, parent))
	}
	if pids := simProcesses(t); len(pids) != 0 {
		t.Fatalf("VMMs left: %v", pids)
	}
}

// hearthBinary builds the hearth binary, whose hidden `_uffd` command
// runs page-fault servers.
func hearthBinary(t *testing.T) string {
	t.Helper()
	return testbin.Build(t, "cmd/hearth", "hearth")
}

// TestFirecrackerLazyRestore restores through the page-fault server: the
// first restore records the working set, the second prefetches it, and
// a server that dies takes its VM down rather than leaving it hanging.
func TestFirecrackerLazyRestore(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("userfaultfd restores need root (vm.unprivileged_userfaultfd=0)")
	}
	ctx := context.Background()
	f := newFC(t)
	f.rt.Close()
	b, err := firecracker.New(firecracker.Options{Binary: fcsimBinary(t), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	f.rt, err = hearth.Open(ctx, hearth.Config{StateDir: f.state, Backends: []vmm.Backend{b}, HelperBinary: hearthBinary(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Create(ctx, "src", f.spec); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Start(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	sv, err := f.rt.Snapshot(ctx, "src", "lazy")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Restore(ctx, hearth.RestoreSpec{Snapshot: "lazy", VM: "l1", MemoryBackend: "uffd"}); err != nil {
		t.Fatal(err)
	}
	if got := calls(f.requests(t)); !contains(got, "PUT /snapshot/load") {
		t.Fatalf("restore calls: %v", got)
	}
	// The page-fault server's counters reach the VM's stats (its status
	// file is rewritten every second while it serves).
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := f.rt.Stats(ctx, "l1")
		if err != nil {
			t.Fatal(err)
		}
		if pf := st.PageFaults; pf != nil && pf.Faults > 0 && pf.FaultBytes+pf.BackgroundBytes > 0 && pf.State == "serving" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no page-fault counters in the stats: %+v (errors %v)", st.PageFaults, st.Errors)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st, err := f.rt.Stats(ctx, "src"); err != nil || st.PageFaults != nil {
		t.Fatalf("a VM booted, not restored lazily, has page-fault stats: %+v, %v", st.PageFaults, err)
	}
	// The first restore leaves a working-set trace next to the snapshot.
	deadline = time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(sv.Dir, "trace")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no working-set trace recorded")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := f.rt.Restore(ctx, hearth.RestoreSpec{Snapshot: "lazy", VM: "l2", MemoryBackend: "uffd", Prefetch: true}); err != nil {
		t.Fatal(err)
	}
	servers := uffdServers(t)
	if len(servers) != 2 {
		t.Fatalf("want 2 page-fault servers, have %v", servers)
	}
	// Kill one server: its VM must not hang, it ends crashed, its VMM
	// killed and the reason recorded; the other clone is unaffected.
	before := map[string]int{}
	for _, id := range []string{"l1", "l2"} {
		v, _ := f.rt.Get(ctx, id)
		before[id] = v.Pid
	}
	syscall.Kill(servers[0], syscall.SIGKILL)
	deadline = time.Now().Add(5 * time.Second)
	var crashed, alive hearth.View
	for {
		v1, _ := f.rt.Get(ctx, "l1")
		v2, _ := f.rt.Get(ctx, "l2")
		if v1.Status == hearth.StatusCrashed || v2.Status == hearth.StatusCrashed {
			crashed, alive = v1, v2
			if v2.Status == hearth.StatusCrashed {
				crashed, alive = v2, v1
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("VM of a dead page-fault server still %s/%s", v1.Status, v2.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(crashed.Exit, "page-fault server") || !strings.Contains(crashed.Exit, "died") {
		t.Fatalf("crash reason %q does not name the page-fault server", crashed.Exit)
	}
	waitGone(t, before[crashed.ID])
	if alive.Status != hearth.StatusRunning {
		t.Fatalf("the other clone: %s", alive.Status)
	}
	// REAP: held paused until the working set is in, then resumed.
	f.requests(t)
	if _, err := f.rt.Restore(ctx, hearth.RestoreSpec{Snapshot: "lazy", VM: "l3", MemoryBackend: "uffd", Prefetch: true, PrefetchWaitMs: 10_000}); err != nil {
		t.Fatal(err)
	}
	reqs := f.requests(t)
	got := calls(reqs)
	li := slices.Index(got, "PUT /snapshot/load")
	if li < 0 || got[len(got)-1] != "PATCH /vm" {
		t.Fatalf("restore with a prefetch wait: %v", got)
	}
	var load struct {
		Resume bool `json:"resume_vm"`
	}
	if err := json.Unmarshal(reqs[li].Body, &load); err != nil || load.Resume || !strings.Contains(string(reqs[len(reqs)-1].Body), "Resumed") {
		t.Fatalf("load %s, last %s: want the VM loaded paused, then resumed", reqs[li].Body, reqs[len(reqs)-1].Body)
	}
	if v, _ := f.rt.Get(ctx, "l3"); v.Status != hearth.StatusRunning {
		t.Fatalf("l3: %s", v.Status)
	}
	for _, id := range []string{"src", "l1", "l2", "l3"} {
		if err := f.rt.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if left := uffdServers(t); len(left) != 0 {
		t.Fatalf("page-fault servers left: %v", left)
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// uffdServers lists running `hearth _uffd` processes of this test.
func uffdServers(t *testing.T) []int {
	t.Helper()
	bin := hearthBinary(t)
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil || exe != bin {
			continue
		}
		var pid int
		if _, err := fmtSscan(e.Name(), &pid); err == nil {
			if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil && !strings.Contains(string(st), ") Z ") {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}
