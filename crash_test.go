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
)

// TestCrashChild is the process that dies; it only runs when re-executed
// by TestCrashConsistency.
func TestCrashChild(t *testing.T) {
	step := os.Getenv(envCrashStep)
	if step == "" {
		t.Skip("helper process for TestCrashConsistency")
	}
	rt := openCrashRuntime(t, os.Getenv(envCrashState), os.Getenv(envCrashSim))
	rt.inject = func(name string) error {
		if name == step {
			os.Exit(137) // no deferred cleanup, no Close: a crash
		}
		return nil
	}
	spec := crashSpec(os.Getenv(envCrashState))
	if _, err := rt.Create(context.Background(), "v", spec); err != nil {
		t.Fatal(err)
	}
	os.Exit(0) // completed; still no Close
}

func crashSpec(state string) Spec {
	dir := filepath.Dir(state)
	on := true
	return Spec{Kernel: filepath.Join(dir, "vmlinux"), Rootfs: filepath.Join(dir, "rootfs.ext4"), MemoryMiB: 32, Agent: &on}
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

	steps := append(stepNames((&Runtime{}).createSteps(&createPlan{})), "none")
	for i, step := range steps {
		t.Run(step, func(t *testing.T) {
			state := filepath.Join(work, fmt.Sprintf("s%d", i))
			child := exec.Command(os.Args[0], "-test.run", "^TestCrashChild$", "-test.count=1")
			child.Env = append(os.Environ(), envCrashStep+"="+step, envCrashState+"="+state, envCrashSim+"="+sim)
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
