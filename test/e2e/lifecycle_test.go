package e2e

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
)

// TestGuestLifecycle drives a real guest through the library on QEMU:
// boot to agent-ready, pause/resume, stop and start on the same disk,
// kill -9 of the VMM (crashed), a runtime restart that adopts the running
// VM whose agent then answers the new runtime, and destroy leaving
// nothing behind.
func TestGuestLifecycle(t *testing.T) {
	t.Parallel()
	state := newState(t)
	ctx := context.Background()
	rt := openQEMU(t, state)
	defer func() { rt.Close() }()
	on := true
	t0 := time.Now()
	if _, err := rt.Create(ctx, "g1", hearth.Spec{Image: "default", MemoryMiB: 256, Agent: &on}); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "g1"); err != nil {
		t.Fatal(err)
	}
	if k := execOut(t, rt, "g1", "uname", "-r"); !strings.Contains(k, "cloud-amd64") {
		t.Fatalf("uname -r: %q", k)
	}
	t.Logf("cold boot to agent ready: %v", time.Since(t0).Round(time.Millisecond))
	if h := execOut(t, rt, "g1", "hostname"); h != "g1" {
		t.Errorf("hostname %q", h)
	}
	// Commands outside /bin are found by name.
	if a := execOut(t, rt, "g1", "ip", "-o", "link"); !strings.Contains(a, "lo:") {
		t.Errorf("ip -o link: %q", a)
	}

	// Pause and resume: the agent answers again.
	if _, err := rt.Pause(ctx, "g1"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Resume(ctx, "g1"); err != nil {
		t.Fatal(err)
	}
	execOut(t, rt, "g1", "true")

	// A file written before a stop is there after the next start.
	execOut(t, rt, "g1", "sh", "-c", "echo kept > /marker && sync")
	if _, err := rt.Stop(ctx, "g1"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "g1"); err != nil {
		t.Fatal(err)
	}
	if m := execOut(t, rt, "g1", "cat", "/marker"); m != "kept" {
		t.Fatalf("marker after restart: %q", m)
	}

	// kill -9 of the VMM: crashed, not hanging; it boots again.
	v, _ := rt.Get(ctx, "g1")
	syscall.Kill(v.Pid, syscall.SIGKILL)
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, _ := rt.Get(ctx, "g1")
		if got.Status == hearth.StatusCrashed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("VM not crashed after kill -9: %s", got.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := rt.Start(ctx, "g1"); err != nil {
		t.Fatal(err)
	}
	execOut(t, rt, "g1", "true")

	// Runtime restarts adopt the running VM, and its agent answers each
	// new runtime: the guest ends the departed host's session on its
	// own. The second restart comes right after an exec, with the
	// guest's session busy until the last moment.
	v, _ = rt.Get(ctx, "g1")
	for i := range 2 {
		rt.Close()
		rt = openQEMU(t, state)
		if a := rt.Reconciled().Adopted; len(a) != 1 || a[0] != "g1" {
			t.Fatalf("restart %d: reconcile: %+v", i, rt.Reconciled())
		}
		if got, _ := rt.Get(ctx, "g1"); got.Status != hearth.StatusRunning || got.Pid != v.Pid {
			t.Fatalf("restart %d: adopted VM: %+v", i, got)
		}
		if m := execOut(t, rt, "g1", "cat", "/marker"); m != "kept" {
			t.Fatalf("restart %d: exec in the adopted VM: %q", i, m)
		}
	}
	if _, err := rt.Pause(ctx, "g1"); err != nil {
		t.Fatalf("pause the adopted VM: %v", err)
	}
	if err := rt.Destroy(ctx, "g1"); err != nil {
		t.Fatal(err)
	}
	noGuestsLeft(t, state)
}
