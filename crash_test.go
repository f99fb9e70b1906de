package hearth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/firecracker"
)

// The crash-consistency test kills the process running the runtime (as
// kill -9 would, with os.Exit and no cleanup) right before each step of
// the create pipeline, with a real VMM process (the Firecracker
// simulator) that outlives it. After a restart, the VM must be either
// fully there and working or fully gone, with no VMM process, directory
// or allocation left behind.

const (
	envCrashStep  = "HEARTH_TEST_CRASH_STEP"
	envCrashState = "HEARTH_TEST_CRASH_STATE"
	envCrashSim   = "HEARTH_TEST_CRASH_SIM"
	envCrashOp    = "HEARTH_TEST_CRASH_OP"
)

// TestCrashChild is the process that dies; it only runs when re-executed
// by TestCrashConsistency.
func TestCrashChild(t *testing.T) {
	step := os.Getenv(envCrashStep)
	if step == "" {
		t.Skip("helper process for TestCrashConsistency")
	}
	rt := openCrashRuntime(t, os.Getenv(envCrashState), os.Getenv(envCrashSim))
	ctx := context.Background()
	crash := func(name string) error {
		if name == step {
			os.Exit(137) // no deferred cleanup, no Close: a crash
		}
		return nil
	}
	spec := crashSpec(os.Getenv(envCrashState), os.Getenv(envCrashOp) != "restore")
	if os.Getenv(envCrashOp) == "restore" {
		// A running VM and its snapshot, then a restore that dies.
		if _, err := rt.Create(ctx, "src", spec); err != nil {
			t.Fatal(err)
		}
		if _, err := rt.Start(ctx, "src"); err != nil {
			t.Fatal(err)
		}
		if _, err := rt.Snapshot(ctx, "src", "s"); err != nil {
			t.Fatal(err)
		}
		rt.inject = crash
		if _, err := rt.Restore(ctx, RestoreSpec{Snapshot: "s", VM: "v", Paused: true}); err != nil {
			t.Fatal(err)
		}
		os.Exit(0)
	}
	rt.inject = crash
	if _, err := rt.Create(ctx, "v", spec); err != nil {
		t.Fatal(err)
	}
	os.Exit(0) // completed; still no Close
}

// crashSpec is the VM of the test; with agent it also holds a vsock CID
// (an allocation that must not leak). Restores use no agent: a clone's
// agent would have to answer, and the simulator runs none here.
func crashSpec(state string, agent bool) Spec {
	dir := filepath.Dir(state)
	return Spec{Kernel: filepath.Join(dir, "vmlinux"), Rootfs: filepath.Join(dir, "rootfs.ext4"), MemoryMiB: 32, Agent: &agent}
}

func openCrashRuntime(t *testing.T, state, sim string) *Runtime {
	t.Helper()
	b, err := firecracker.New(firecracker.Options{Binary: sim, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := Open(context.Background(), Config{StateDir: state, Backends: []vmm.Backend{b}})
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
	sim := filepath.Join(work, "firecracker")
	build := exec.Command("go", "build", "-o", sim, "./cmd/hearth-fcsim")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build simulator: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(work, "vmlinux"), []byte("k"), 0o600)
	os.WriteFile(filepath.Join(work, "rootfs.ext4"), make([]byte, 1<<20), 0o600)

	type run struct{ op, step string }
	var runs []run
	for _, s := range append(stepNames((&Runtime{}).createSteps(&createPlan{})), "none") {
		runs = append(runs, run{"create", s})
	}
	for _, s := range append(stepNames((&Runtime{}).restoreSteps(&createPlan{})), "none") {
		runs = append(runs, run{"restore", s})
	}
	for i, rn := range runs {
		step := rn.step
		t.Run(rn.op+"/"+step, func(t *testing.T) {
			state := filepath.Join(work, fmt.Sprintf("s%d", i))
			child := exec.Command(os.Args[0], "-test.run", "^TestCrashChild$", "-test.count=1")
			child.Env = append(os.Environ(), envCrashStep+"="+step, envCrashState+"="+state, envCrashSim+"="+sim, envCrashOp+"="+rn.op)
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

			rt := openCrashRuntime(t, state, sim)
			defer rt.Close()
			ctx := context.Background()
			v, gerr := rt.Get(ctx, "v")
			// A create that did not reach its record is rolled back; one
			// that completed is adopted with its running VMM.
			if (gerr == nil) != (step == "none") {
				t.Fatalf("crash before %q: VM present = %v (report %+v)", step, gerr == nil, rt.Reconciled())
			}
			switch {
			case gerr == nil && rn.op == "restore":
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
				// Present: it must work.
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
				// Gone: nothing of it may remain.
			default:
				t.Fatal(gerr)
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
			deadline := time.Now().Add(5 * time.Second)
			for {
				left := simProcs(sim)
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

func stepNames(steps []step) []string {
	var out []string
	for _, s := range steps {
		out = append(out, s.name)
	}
	return out
}

// simProcs lists live processes running the simulator binary.
func simProcs(bin string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil || exe != bin {
			continue
		}
		st, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if !strings.Contains(string(st), ") Z ") {
			out = append(out, e.Name())
		}
	}
	return out
}
