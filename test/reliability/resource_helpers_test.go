package reliability

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/store"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/firecracker"
)

// The resource-fault and load tests drive hearth through its public API
// only: hearth.Open with the Firecracker backend on the simulator (a real
// VMM process per VM, its guest agent a real host process), and they look
// for leaks from the outside — processes, files under the state dir, the
// store's records and allocations, the test process's descriptors.

// resRequireRoot skips tests that mount filesystems, make namespaces,
// cgroups or jails.
func resRequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// resEnv is one test's world: a short directory (unix socket paths are
// limited) holding the kernel, the source rootfs and the state dir.
type resEnv struct {
	dir, state     string
	kernel, rootfs string
	sim            string
	agentRoot      string
}

// resNewEnv makes the files of a test. rootfsBytes of random data make
// the source rootfs (random, so no copy can skip it as a hole).
func resNewEnv(t testing.TB, rootfsBytes int) *resEnv {
	t.Helper()
	sim, agentBin := binaries(t)
	dir, err := os.MkdirTemp("", "hres")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &resEnv{dir: dir, state: filepath.Join(dir, "s"), kernel: filepath.Join(dir, "vmlinux"),
		rootfs: filepath.Join(dir, "rootfs.ext4"), sim: sim, agentRoot: filepath.Join(dir, "guests")}
	data := make([]byte, rootfsBytes)
	rand.Read(data)
	if err := os.WriteFile(e.kernel, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.rootfs, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(e.agentRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	// A test that failed half way may leave VMs of a closed runtime:
	// their processes (started by this test) go before the files.
	t.Cleanup(func() {
		for _, pid := range e.vmmProcs() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		for _, pid := range resProcs(func(exe string) bool { return exe == agentBin }) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	// Every simulator runs hearth-agent as its guest: a host process that
	// reads its token from the kernel command line hearth hands the
	// guest. Its files live outside the VM's directory, which destroy
	// removes while the guest may still be exiting.
	script := `d="` + e.agentRoot + `/$HEARTH_FCSIM_VM_ID"; mkdir -p "$d"; printf '%s' "$HEARTH_FCSIM_BOOT_ARGS" > "$d/cmdline"; ` +
		`exec ` + agentBin + ` --init never --system simulated --cmdline "$d/cmdline" --token-file "$d/token" --env-file "$d/env" --secrets-dir "$d/secrets"`
	q, _ := json.Marshal(script)
	t.Setenv("HEARTH_FCSIM_GUEST_CMD", `["sh","-c",`+string(q)+`]`)
	return e
}

// spec is a small VM with the guest agent; its rootfs is cloned unless
// readOnly.
func (e *resEnv) spec(readOnly bool) hearth.Spec {
	on := true
	return hearth.Spec{Kernel: e.kernel, Rootfs: e.rootfs, RootfsReadOnly: readOnly, VCPUs: 1, MemoryMiB: 32, Agent: &on}
}

// open opens a runtime on the env's state dir; cfg and fc adjust the
// runtime's and the backend's configuration.
func (e *resEnv) open(t testing.TB, cfg func(*hearth.Config), fc func(*firecracker.Options)) *hearth.Runtime {
	t.Helper()
	o := firecracker.Options{Binary: e.sim, ReadyTimeout: 10 * time.Second, ShutdownGrace: 2 * time.Second,
		Logger: slog.New(slog.DiscardHandler)}
	if fc != nil {
		fc(&o)
	}
	b, err := firecracker.New(o)
	if err != nil {
		t.Fatal(err)
	}
	c := hearth.Config{StateDir: e.state, Backends: []vmm.Backend{b}, StopTimeout: 5 * time.Second}
	if cfg != nil {
		cfg(&c)
	}
	rt, err := hearth.Open(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// After a failure: whatever the test left running goes (on a
		// closed runtime this does nothing, and resNewEnv's cleanup
		// kills the processes).
		views, _ := rt.List(context.Background())
		for _, v := range views {
			rt.Destroy(context.Background(), v.ID)
		}
		rt.Close()
	})
	return rt
}

// resUp creates and starts a VM.
func resUp(ctx context.Context, rt *hearth.Runtime, id string, spec hearth.Spec) (hearth.View, error) {
	if _, err := rt.Create(ctx, id, spec); err != nil {
		return hearth.View{}, err
	}
	return rt.Start(ctx, id)
}

// resServes proves a VM still works: it pauses, resumes and, when it has
// an agent, runs a command through it.
func resServes(t testing.TB, rt *hearth.Runtime, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := rt.Pause(ctx, id); err != nil {
		t.Fatalf("pause %s: %v", id, err)
	}
	if _, err := rt.Resume(ctx, id); err != nil {
		t.Fatalf("resume %s: %v", id, err)
	}
	if v, err := rt.Get(ctx, id); err != nil || !v.Spec.AgentEnabled() {
		return
	}
	resExec(t, ctx, rt, id)
}

func resExec(t testing.TB, ctx context.Context, rt *hearth.Runtime, id string) {
	t.Helper()
	if err := resExecErr(ctx, rt, id); err != nil {
		t.Fatal(err)
	}
}

// resExecErr runs a command in the VM through its agent and checks its
// exit code and output.
func resExecErr(ctx context.Context, rt *hearth.Runtime, id string) error {
	var out strings.Builder
	st, err := rt.Exec(ctx, id, &agent.Cmd{Args: []string{"sh", "-c", "echo ok"}, Stdout: &out})
	if err != nil {
		return fmt.Errorf("exec in %s: %w", id, err)
	}
	if st.ExitCode != 0 || strings.TrimSpace(out.String()) != "ok" {
		return fmt.Errorf("exec in %s: exit %+v, output %q", id, st, out.String())
	}
	return nil
}

// resWantErr checks err is a *hearth.Error of kind whose message names
// what ran out (every word of want, case-insensitive), and returns it.
func resWantErr(t testing.TB, err error, kind hearth.Kind, want ...string) *hearth.Error {
	t.Helper()
	var he *hearth.Error
	if !errors.As(err, &he) {
		t.Fatalf("want a *hearth.Error of kind %s, got %T: %v", kind, err, err)
	}
	if he.Kind != kind {
		t.Fatalf("want kind %s, got %s: %v", kind, he.Kind, err)
	}
	msg := strings.ToLower(err.Error())
	for _, w := range want {
		if !strings.Contains(msg, strings.ToLower(w)) {
			t.Fatalf("error does not say %q: %v", w, err)
		}
	}
	return he
}

// vmmProcs lists the live VMM processes of the env: the simulator, run
// from its build or from a copy inside a jail under the state dir.
func (e *resEnv) vmmProcs() []int {
	return resProcs(func(exe string) bool { return exe == e.sim || strings.HasPrefix(exe, e.state+"/") })
}

// resProcs lists the live (not zombie) processes whose executable
// matches.
func resProcs(match func(exe string) bool) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil || !match(exe) {
			continue
		}
		st, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if i := strings.LastIndexByte(string(st), ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
			continue
		}
		out = append(out, pid)
	}
	slices.Sort(out)
	return out
}

// checkLive verifies that the runtime holds exactly the VMs want (by id)
// and nothing more is on the host: one simulator process per live VM and
// no other, one directory per VM, no snapshot fragment, and only the
// snapshots the runtime lists.
func (e *resEnv) checkLive(t testing.TB, rt *hearth.Runtime, want ...string) {
	t.Helper()
	ctx := context.Background()
	views, err := rt.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	var pids []int
	for _, v := range views {
		ids = append(ids, v.ID)
		if v.Pid != 0 {
			pids = append(pids, v.Pid)
		}
	}
	slices.Sort(want)
	slices.Sort(pids)
	if !slices.Equal(ids, want) {
		t.Fatalf("VMs %v, want %v", ids, want)
	}
	eventually(t, 10*time.Second, "VMM processes", func() (bool, string) {
		got := e.vmmProcs()
		return slices.Equal(got, pids), fmt.Sprintf("running %v, the VMs' are %v", got, pids)
	})
	eventually(t, 10*time.Second, "VM directories", func() (bool, string) {
		ents, _ := os.ReadDir(filepath.Join(e.state, "vms"))
		return len(ents) == len(want), fmt.Sprintf("%d for %d VMs: %v", len(ents), len(want), names(ents))
	})
	snaps, err := rt.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var snapNames []string
	for _, s := range snaps {
		snapNames = append(snapNames, s.Name)
	}
	var onDisk []string
	ents, _ := os.ReadDir(filepath.Join(e.state, "snapshots"))
	for _, x := range ents {
		if x.Name() != ".lock" {
			onDisk = append(onDisk, x.Name())
		}
	}
	slices.Sort(snapNames)
	if !slices.Equal(onDisk, snapNames) {
		t.Fatalf("snapshot dir holds %v, the runtime lists %v", onDisk, snapNames)
	}
}

func names(ents []os.DirEntry) []string {
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// checkStoreEmpty opens the closed runtime's store read-only and checks
// it holds no VM, no snapshot but those named, and no allocation in any
// pool (a network pool's pre-built slots excepted: they belong to the
// pool, not to a VM).
func (e *resEnv) checkStoreEmpty(t testing.TB, snapshots ...string) {
	t.Helper()
	st, err := store.OpenReadOnly(e.state)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	vms, err := st.ListVMs()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vms {
		t.Errorf("VM record left: %s (%s) holding %+v", v.ID, v.Status, v.Resources)
	}
	snaps, err := st.ListSnapshots()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range snaps {
		got = append(got, s.Name)
	}
	slices.Sort(snapshots)
	if !slices.Equal(got, snapshots) {
		t.Errorf("snapshot records %v, want %v", got, snapshots)
	}
	pools, err := st.Pools()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pools {
		a, err := st.Allocations(p)
		if err != nil {
			t.Fatal(err)
		}
		for v, owner := range a {
			if !strings.HasPrefix(p, "net.") || owner != resNetPoolOwner {
				t.Errorf("allocation left in pool %s: %d owned by %q", p, v, owner)
			}
		}
	}
}

// resNetPoolOwner owns a network manager's pre-built slots in the store.
const resNetPoolOwner = "hearth:pool"

// resFDs counts the test process's open descriptors.
func resFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

// resGoroutinesBack waits for the goroutine count to fall back to base
// (goroutines of closed connections and exit watchers end asynchronously)
// and dumps the stacks when it does not.
func resGoroutinesBack(t testing.TB, base int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("goroutines: %d, baseline %d\n%s", runtime.NumGoroutine(), base, buf[:n])
		}
		time.Sleep(50 * time.Millisecond)
	}
}
