package reliability

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/store"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/firecracker"
)

// The VMM-fault tests break a VM's VMM or guest from the outside — kill
// -9 of the VMM, an API that stops answering, a frozen guest agent — and
// drive hearth only through its public API (hearth.Open with the
// Firecracker backend on the simulator, one real VMM process per VM whose
// guest agent is a real host process). Each fault must end in a clear
// state and a typed error within a deadline, leave the other VMs alone,
// and leave nothing behind once the VM is destroyed.

// vfEnv is one test's world: a short directory (unix socket paths are
// limited) with the kernel, the rootfs, the state dir and the guests'
// files, and the events the runtime emitted.
type vfEnv struct {
	dir, state     string
	kernel, rootfs string
	sim, agentBin  string
	guests         string

	mu     sync.Mutex
	events []hearth.Event
}

func vfNewEnv(t *testing.T) *vfEnv {
	t.Helper()
	sim, agentBin := binaries(t)
	dir, err := os.MkdirTemp("", "hvf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &vfEnv{dir: dir, state: filepath.Join(dir, "s"), kernel: filepath.Join(dir, "vmlinux"),
		rootfs: filepath.Join(dir, "rootfs.ext4"), sim: sim, agentBin: agentBin, guests: filepath.Join(dir, "g")}
	for _, f := range []struct {
		path string
		data []byte
	}{{e.kernel, []byte("kernel")}, {e.rootfs, make([]byte, 1<<20)}} {
		if err := os.WriteFile(f.path, f.data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(e.guests, 0o755); err != nil {
		t.Fatal(err)
	}
	// Every simulator runs hearth-agent as its guest, a host process that
	// takes its token from the kernel command line hearth hands the guest
	// (exec replaces the shell, so the agent is the simulator's child).
	script := `d="` + e.guests + `/$HEARTH_FCSIM_VM_ID"; mkdir -p "$d"; printf '%s' "$HEARTH_FCSIM_BOOT_ARGS" > "$d/cmdline"; ` +
		`exec ` + agentBin + ` --init never --system simulated --cmdline "$d/cmdline" --token-file "$d/token" --env-file "$d/env" --secrets-dir "$d/secrets"`
	q, _ := json.Marshal(script)
	t.Setenv("HEARTH_FCSIM_GUEST_CMD", `["sh","-c",`+string(q)+`]`)
	return e
}

// spec is a small VM with the guest agent.
func (e *vfEnv) spec() hearth.Spec {
	on := true
	return hearth.Spec{Kernel: e.kernel, Rootfs: e.rootfs, VCPUs: 1, MemoryMiB: 32, Agent: &on}
}

// open opens a runtime that records its events; cfg and fc adjust the
// runtime's and the backend's configuration.
func (e *vfEnv) open(t *testing.T, cfg func(*hearth.Config), fc func(*firecracker.Options)) *hearth.Runtime {
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
	c := hearth.Config{StateDir: e.state, Backends: []vmm.Backend{b}, StopTimeout: 10 * time.Second,
		OnEvent: func(ev hearth.Event) {
			e.mu.Lock()
			e.events = append(e.events, ev)
			e.mu.Unlock()
		}}
	if cfg != nil {
		cfg(&c)
	}
	rt, err := hearth.Open(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// event returns the first event of type typ for vm.
func (e *vfEnv) event(vm, typ string) (hearth.Event, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range e.events {
		if ev.VM == vm && ev.Type == typ {
			return ev, true
		}
	}
	return hearth.Event{}, false
}

// vfUp creates and starts VMs.
func vfUp(t *testing.T, rt *hearth.Runtime, spec hearth.Spec, ids ...string) {
	t.Helper()
	ctx := context.Background()
	for _, id := range ids {
		if _, err := rt.Create(ctx, id, spec); err != nil {
			t.Fatal(err)
		}
		if _, err := rt.Start(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
}

// vfExec runs a command in the VM through its agent and checks its
// output.
func vfExec(ctx context.Context, rt *hearth.Runtime, id string) error {
	var out strings.Builder
	st, err := rt.Exec(ctx, id, &agent.Cmd{Args: []string{"sh", "-c", "echo ok"}, Stdout: &out})
	if err != nil {
		return err
	}
	if st.ExitCode != 0 || strings.TrimSpace(out.String()) != "ok" {
		return fmt.Errorf("exec in %s: exit %+v, output %q", id, st, out.String())
	}
	return nil
}

// vfWorks proves a VM still serves: pause, resume and an exec.
func vfWorks(t *testing.T, rt *hearth.Runtime, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := rt.Pause(ctx, id); err != nil {
		t.Fatalf("pause %s: %v", id, err)
	}
	if _, err := rt.Resume(ctx, id); err != nil {
		t.Fatalf("resume %s: %v", id, err)
	}
	if err := vfExec(ctx, rt, id); err != nil {
		t.Fatalf("exec in %s: %v", id, err)
	}
}

// vfTimed runs f and returns how long it took and its error.
func vfTimed(f func() error) (time.Duration, error) {
	t0 := time.Now()
	err := f()
	return time.Since(t0), err
}

// vfWantKind checks that err is a *hearth.Error of kind naming the VM.
func vfWantKind(t *testing.T, err error, kind hearth.Kind, vm string) *hearth.Error {
	t.Helper()
	var he *hearth.Error
	if !errors.As(err, &he) {
		t.Fatalf("want a *hearth.Error of kind %s, got %T: %v", kind, err, err)
	}
	if he.Kind != kind || he.VM != vm {
		t.Fatalf("want kind %s for vm %s, got %s for %q: %v", kind, vm, he.Kind, he.VM, err)
	}
	return he
}

// vfProcs lists the live (not zombie) processes whose executable is exe,
// with their parents.
func vfProcs(exe string) map[int]int {
	out := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if x, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err != nil || x != exe {
			continue
		}
		st, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		i := strings.LastIndexByte(string(st), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(st[i+1:])) // state, ppid, …
		if len(f) < 2 || f[0] == "Z" {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		out[pid] = ppid
	}
	return out
}

// agentOf returns the pid of the guest agent of the VM whose VMM is
// vmmPid (the simulator's child running hearth-agent).
func (e *vfEnv) agentOf(t *testing.T, vmmPid int) int {
	t.Helper()
	var pid int
	eventually(t, 10*time.Second, "guest agent process", func() (bool, string) {
		for p, parent := range vfProcs(e.agentBin) {
			if parent == vmmPid {
				pid = p
				return true, ""
			}
		}
		return false, fmt.Sprintf("no hearth-agent child of VMM %d", vmmPid)
	})
	return pid
}

// checkClean closes rt and checks that nothing of any VM is left: no VMM
// or agent process, no VM directory, no snapshot fragment, and in the
// store no VM record and no allocation.
func (e *vfEnv) checkClean(t *testing.T, rt *hearth.Runtime) {
	t.Helper()
	if err := rt.Close(); err != nil {
		t.Fatal(err)
	}
	for _, bin := range []string{e.sim, e.agentBin} {
		eventually(t, 10*time.Second, "processes left", func() (bool, string) {
			var left []int
			for p := range vfProcs(bin) {
				// Only this test's: the agent's command line names our dir.
				if cmd, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p), "cmdline")); bin == e.sim || strings.Contains(string(cmd), e.guests) {
					left = append(left, p)
				}
			}
			slices.Sort(left)
			return len(left) == 0, fmt.Sprintf("%s: %v", filepath.Base(bin), left)
		})
	}
	if ents, _ := os.ReadDir(filepath.Join(e.state, "vms")); len(ents) != 0 {
		t.Errorf("VM directories left: %d", len(ents))
	}
	if ents, _ := os.ReadDir(filepath.Join(e.state, "snapshots")); len(ents) > 1 || len(ents) == 1 && ents[0].Name() != ".lock" {
		t.Errorf("snapshot store not empty: %v", ents)
	}
	st, err := store.OpenReadOnly(e.state)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	vms, _ := st.ListVMs()
	for _, v := range vms {
		t.Errorf("VM record left: %s (%s) holding %+v", v.ID, v.Status, v.Resources)
	}
	pools, _ := st.Pools()
	for _, p := range pools {
		a, _ := st.Allocations(p)
		for v, owner := range a {
			t.Errorf("allocation left in pool %s: %d owned by %q", p, v, owner)
		}
	}
}
