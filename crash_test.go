package hearth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/firewall"
	"github.com/hearth-vm/hearth/internal/testbin"
	"github.com/hearth-vm/hearth/network"
	"github.com/hearth-vm/hearth/network/nstest"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/firecracker"
)

// The crash-consistency test kills the process running the runtime (as
// kill -9 would, with os.Exit and no cleanup) right before each step of
// create, restore, snapshot and destroy, with a real VMM process (the
// Firecracker simulator) that outlives it. After a restart:
//   - a created or restored VM is either fully there and working or fully
//     gone;
//   - a snapshot is either complete and verifiable or absent (its name
//     free again, no fragment on disk), and its source VM runs: a crash
//     inside the pause window leaves it paused, and reconcile resumes it,
//     because a snapshot never leaves a running VM paused;
//   - a destroy that began (past its first step, which marks the record)
//     is finished; one that did not leaves the VM running and usable;
//
// and no VMM process, directory or allocation is left behind.

const (
	envCrashStep  = "HEARTH_TEST_CRASH_STEP"
	envCrashState = "HEARTH_TEST_CRASH_STATE"
	envCrashSim   = "HEARTH_TEST_CRASH_SIM"
	envCrashOp    = "HEARTH_TEST_CRASH_OP"
	// envCrashFull gives the VM a network and an egress firewall in
	// namespaces the parent made: "<host netns>|<VM netns dir>" (root
	// only).
	envCrashFull = "HEARTH_TEST_CRASH_FULL"
)

// crashFull says where a networked VM (network namespace, links, egress
// firewall) gets its network; the zero value means a bare VM.
type crashFull struct{ hostNS, nsDir string }

func (f crashFull) on() bool { return f.hostNS != "" }

func (f crashFull) env() string {
	if !f.on() {
		return ""
	}
	return f.hostNS + "|" + f.nsDir
}

func parseCrashFull(s string) crashFull {
	host, dir, _ := strings.Cut(s, "|")
	return crashFull{host, dir}
}

// TestCrashChild is the process that dies; it only runs when re-executed
// by TestCrashConsistency.
func TestCrashChild(t *testing.T) {
	step := os.Getenv(envCrashStep)
	if step == "" {
		t.Skip("helper process for TestCrashConsistency")
	}
	full := parseCrashFull(os.Getenv(envCrashFull))
	rt := openCrashRuntime(t, os.Getenv(envCrashState), os.Getenv(envCrashSim), full)
	ctx := context.Background()
	crash := func(name string) error {
		if name == step {
			os.Exit(137) // no deferred cleanup, no Close: a crash
		}
		return nil
	}
	op := os.Getenv(envCrashOp)
	spec := crashSpec(os.Getenv(envCrashState), op != "restore")
	if op == "create" {
		rt.inject = crash
		if _, err := rt.Create(ctx, "v", spec); err != nil {
			t.Fatal(err)
		}
		os.Exit(0) // completed; still no Close
	}
	// A running VM, then the operation that dies.
	src := "v"
	if op == "restore" {
		src = "src"
	}
	if _, err := rt.Create(ctx, src, spec); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, src); err != nil {
		t.Fatal(err)
	}
	var err error
	switch op {
	case "restore":
		if _, err := rt.Snapshot(ctx, "src", "s"); err != nil {
			t.Fatal(err)
		}
		rt.inject = crash
		_, err = rt.Restore(ctx, RestoreSpec{Snapshot: "s", VM: "v", Paused: true})
	case "snapshot":
		rt.inject = crash
		_, err = rt.Snapshot(ctx, "v", "s")
	case "destroy":
		rt.inject = crash
		err = rt.Destroy(ctx, "v")
	}
	if err != nil {
		t.Fatal(err)
	}
	os.Exit(0)
}

// crashSpec is the VM of the test; with agent it also holds a vsock CID
// (an allocation that must not leak). Restores use no agent: a clone's
// agent would have to answer, and the simulator runs none here.
func crashSpec(state string, agent bool) Spec {
	dir := filepath.Dir(state)
	return Spec{Kernel: filepath.Join(dir, "vmlinux"), Rootfs: filepath.Join(dir, "rootfs.ext4"), MemoryMiB: 32, Agent: &agent}
}

func openCrashRuntime(t *testing.T, state, sim string, full crashFull) *Runtime {
	t.Helper()
	opts := firecracker.Options{Binary: sim, Logger: slog.New(slog.DiscardHandler)}
	cfg := Config{StateDir: state}
	if full.on() {
		cfg.Network = &NetworkConfig{
			Network:  network.Config{Mode: network.ModeNetNS, HostNS: full.hostNS, NetNSDir: full.nsDir, EgressIface: nstest.EgressIface, PoolSize: -1},
			Firewall: firewall.NFTables,
		}
	}
	b, err := firecracker.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Backends = []vmm.Backend{b}
	rt, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

func TestCrashConsistency(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	work, err := os.MkdirTemp("", "hcr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	sim := testbin.Build(t, "cmd/hearth-fcsim", "firecracker")
	os.WriteFile(filepath.Join(work, "vmlinux"), []byte("k"), 0o644)
	os.WriteFile(filepath.Join(work, "rootfs.ext4"), make([]byte, 1<<20), 0o644)
	// As root, the VMs also hold a network namespace with its links and
	// an egress firewall, inside a world of namespaces made here. (Jails
	// are left out: a jailed simulator launch fails now and then under
	// -race on a loaded machine, which would make this test flaky.)
	var world *nstest.World
	if os.Geteuid() == 0 {
		world = nstest.NewWorld(t)
	}

	type run struct{ op, step string }
	var runs []run
	for op, steps := range map[string][]step{
		"create":   (&Runtime{}).createSteps(&createPlan{}),
		"restore":  (&Runtime{}).restoreSteps(&createPlan{}),
		"snapshot": (&Runtime{}).snapshotSteps(&snapPlan{}),
		"destroy":  (&Runtime{}).destroySteps(&destroyPlan{}),
	} {
		for _, s := range append(stepNames(steps), "none") {
			runs = append(runs, run{op, s})
		}
	}
	slices.SortStableFunc(runs, func(a, b run) int { return strings.Compare(a.op, b.op) })
	for i, rn := range runs {
		step := rn.step
		t.Run(rn.op+"/"+step, func(t *testing.T) {
			state := filepath.Join(work, fmt.Sprintf("s%d", i))
			var full crashFull
			if world != nil {
				full = crashFull{hostNS: world.Host.Path, nsDir: filepath.Join(work, fmt.Sprintf("ns%d", i))}
			}
			child := exec.Command(os.Args[0], "-test.run", "^TestCrashChild$", "-test.count=1")
			child.Env = append(os.Environ(), envCrashStep+"="+step, envCrashState+"="+state, envCrashSim+"="+sim, envCrashOp+"="+rn.op, envCrashFull+"="+full.env())
			out, err := child.CombinedOutput()
			var ee *exec.ExitError
			code := 0
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			}
			want := 137
			if step == "none" {
				want = 0
			}
			if code != want {
				t.Fatalf("child exit %d (%v), want %d\n%s", code, err, want, out)
			}

			rt := openCrashRuntime(t, state, sim, full)
			defer rt.Close()
			ctx := context.Background()
			switch rn.op {
			case "create", "restore":
				checkCrashedCreate(t, rt, rn.op, step)
			case "snapshot":
				checkCrashedSnapshot(t, rt, state, step)
			case "destroy":
				checkCrashedDestroy(t, rt, step, full)
			}
			if rn.op == "restore" {
				// The source survived the crash, running, and its snapshot
				// is intact.
				if sv, err := rt.Get(ctx, "src"); err != nil || sv.Status != StatusRunning {
					t.Fatalf("source after restart: %+v %v", sv, err)
				}
				if err := rt.VerifySnapshot(ctx, "s"); err != nil {
					t.Fatal(err)
				}
				if err := rt.Destroy(ctx, "src"); err != nil {
					t.Fatal(err)
				}
			}
			if ents, _ := os.ReadDir(filepath.Join(state, "vms")); len(ents) != 0 {
				t.Fatalf("dirs left: %v (report %+v)", ents, rt.Reconciled())
			}
			if pools, _ := rt.st.Pools(); len(pools) > 0 {
				for _, p := range pools {
					if a, _ := rt.st.Allocations(p); len(a) > 0 {
						t.Fatalf("allocations left in %s: %v", p, a)
					}
				}
			}
			if full.on() {
				checkNoHostLeftovers(t, full)
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				left := simProcs(sim, state)
				if len(left) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("VMM processes left: %v (report %+v)", left, rt.Reconciled())
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// checkCrashedCreate: a create or restore that did not reach its record is
// rolled back; one that completed is adopted with its running VMM, and
// works.
func checkCrashedCreate(t *testing.T, rt *Runtime, op, step string) {
	t.Helper()
	ctx := context.Background()
	v, gerr := rt.Get(ctx, "v")
	if (gerr == nil) != (step == "none") {
		t.Fatalf("crash before %q: VM present = %v (report %+v)", step, gerr == nil, rt.Reconciled())
	}
	switch {
	case gerr == nil && op == "restore":
		// Present: the paused clone resumes.
		if v.Status != StatusPaused {
			t.Fatalf("after restart: %s", v.Status)
		}
		if _, err := rt.Resume(ctx, "v"); err != nil {
			t.Fatalf("resume the surviving clone: %v", err)
		}
		if err := rt.Destroy(ctx, "v"); err != nil {
			t.Fatal(err)
		}
	case gerr == nil:
		if v.Status != StatusCreated {
			t.Fatalf("after restart: %s", v.Status)
		}
		if _, err := rt.Start(ctx, "v"); err != nil {
			t.Fatalf("start the surviving VM: %v", err)
		}
		if err := rt.Destroy(ctx, "v"); err != nil {
			t.Fatal(err)
		}
	case errors.Is(gerr, ErrVMNotFound):
		// Gone: nothing of it may remain (checked by the caller).
	default:
		t.Fatal(gerr)
	}
}

// checkCrashedSnapshot: the snapshot is complete and verifiable only when
// the snapshot finished (its record is the commit point); otherwise it is
// gone without a trace and its name is free. The source VM runs and can
// be snapshotted again.
func checkCrashedSnapshot(t *testing.T, rt *Runtime, state, step string) {
	t.Helper()
	ctx := context.Background()
	v, err := rt.Get(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	if v.Status != StatusRunning {
		t.Fatalf("source after a crash before %q: %s (report %+v)", step, v.Status, rt.Reconciled())
	}
	// The VMM itself says so, not just the record.
	if st := vmmState(t, rt, "v"); st != "Running" {
		t.Fatalf("source VMM after a crash before %q: %s", step, st)
	}
	wantResumed := slices.Contains([]string{"write", "disk", "resume"}, step)
	if got := slices.Contains(rt.Reconciled().Resumed, "v"); got != wantResumed {
		t.Fatalf("crash before %q: resumed by reconcile = %v (report %+v)", step, got, rt.Reconciled())
	}
	snaps, err := rt.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if step == "none" {
		if len(snaps) != 1 || snaps[0].Name != "s" {
			t.Fatalf("snapshots after a completed snapshot: %+v", snaps)
		}
		if err := rt.VerifySnapshot(ctx, "s"); err != nil {
			t.Fatal(err)
		}
	} else if len(snaps) != 0 {
		t.Fatalf("crash before %q left snapshots %+v", step, snaps)
	}
	ents, _ := os.ReadDir(filepath.Join(state, "snapshots"))
	for _, e := range ents {
		if e.Name() != ".lock" && !(step == "none" && e.Name() == "s") {
			t.Fatalf("crash before %q left %s in the snapshot store (report %+v)", step, e.Name(), rt.Reconciled())
		}
	}
	// The VM works: it can be snapshotted (under the name of a snapshot
	// that never completed, too) and the result verifies.
	name := "s"
	if step == "none" {
		name = "s2"
	}
	if _, err := rt.Snapshot(ctx, "v", name); err != nil {
		t.Fatalf("snapshot after restart: %v", err)
	}
	if err := rt.VerifySnapshot(ctx, name); err != nil {
		t.Fatal(err)
	}
	if v, _ := rt.Get(ctx, "v"); v.Status != StatusRunning {
		t.Fatalf("after a second snapshot: %s", v.Status)
	}
	if err := rt.Destroy(ctx, "v"); err != nil {
		t.Fatal(err)
	}
}

// checkCrashedDestroy: a destroy that crashed before marking the record
// never happened (the VM runs and works); any later crash is finished by
// reconcile.
func checkCrashedDestroy(t *testing.T, rt *Runtime, step string, full crashFull) {
	t.Helper()
	ctx := context.Background()
	v, err := rt.Get(ctx, "v")
	switch step {
	case "mark":
		if err != nil || v.Status != StatusRunning {
			t.Fatalf("VM after a crash before the destroy began: %+v %v", v, err)
		}
		if full.on() {
			// It really holds what the other runs prove released.
			var kinds []string
			for _, r := range rt.vms["v"].view.Load().Resources {
				kinds = append(kinds, r.Kind)
			}
			for _, k := range []string{resDir, resAlloc, resNetwork, resFirewall} {
				if !slices.Contains(kinds, k) {
					t.Fatalf("VM holds %v, no %s", kinds, k)
				}
			}
			if ents, _ := os.ReadDir(full.nsDir); len(ents) != 1 {
				t.Fatalf("VM network namespaces in %s: %v (report %+v)", full.nsDir, ents, rt.Reconciled())
			}
		}
		if _, err := rt.Pause(ctx, "v"); err != nil {
			t.Fatal(err)
		}
		if _, err := rt.Resume(ctx, "v"); err != nil {
			t.Fatal(err)
		}
		if err := rt.Destroy(ctx, "v"); err != nil {
			t.Fatal(err)
		}
	default:
		if !errors.Is(err, ErrVMNotFound) {
			t.Fatalf("crash before %q: VM still there: %+v %v (report %+v)", step, v, err, rt.Reconciled())
		}
		if finished := slices.Contains(rt.Reconciled().Destroyed, "v"); finished != (step != "none") {
			t.Fatalf("crash before %q: destroy finished by reconcile = %v", step, finished)
		}
	}
}

// vmmState asks the VM's VMM for its state (GET /).
func vmmState(t *testing.T, rt *Runtime, id string) string {
	t.Helper()
	rt.mu.Lock()
	e := rt.vms[id]
	rt.mu.Unlock()
	e.mu.Lock()
	m, ok := e.machine.(*firecracker.Machine)
	e.mu.Unlock()
	if !ok {
		t.Fatalf("vm %s has no firecracker machine", id)
	}
	info, err := m.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State
}

func stepNames(steps []step) []string {
	var out []string
	for _, s := range steps {
		out = append(out, s.name)
	}
	return out
}

// checkNoHostLeftovers checks what a networked VM leaves on the host
// once gone: no network namespace, no firewall chain.
func checkNoHostLeftovers(t *testing.T, full crashFull) {
	t.Helper()
	if ents, _ := os.ReadDir(full.nsDir); len(ents) != 0 {
		t.Fatalf("network namespaces left: %v", ents)
	}
	out, err := exec.Command("nsenter", "--net="+full.hostNS, "nft", "list", "chains").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list chains: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "chain vm-") {
		t.Fatalf("firewall chains left:\n%s", out)
	}
}

// simProcs lists live processes running the simulator binary, or a copy
// of it inside a jail under the state dir.
func simProcs(bin, state string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil || exe != bin && !strings.HasPrefix(exe, state+"/") {
			continue
		}
		st, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if !strings.Contains(string(st), ") Z ") {
			out = append(out, e.Name())
		}
	}
	return out
}
