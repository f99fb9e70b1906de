package reliability

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/vmm/firecracker"
)

// vfAPITimeout is the backend's API deadline in the hang test: short, so
// the test is quick, yet far above what a live simulator needs.
const vfAPITimeout = 2 * time.Second

// vfHangSlack is what a call may take beyond its deadline on a loaded
// machine (rolling back, recording, scheduling).
const vfHangSlack = 10 * time.Second

// TestVMMAPIHang makes running VMMs' API accept requests and never answer
// (the simulator's HEARTH_FCSIM_HANG_AT=@FILE, written once the VMs run):
//   - pause and snapshot fail with a KindTimeout error within the API
//     deadline; the VM keeps its recorded status (running: hearth only
//     moves a VM on the VMM's word) and no snapshot or fragment is left;
//   - stop goes down the kill ladder (the Ctrl+Alt+Del request times out,
//     then SIGTERM) and ends stopped, saying so in its event;
//   - destroy kills the hung VMM and leaves nothing;
//   - a VM whose VMM answers is not affected.
func TestVMMAPIHang(t *testing.T) {
	ctx := context.Background()
	e := vfNewEnv(t)
	rt := e.open(t, nil, func(o *firecracker.Options) { o.APITimeout = vfAPITimeout })
	// Each VMM reads its hang file from the environment it was started
	// with: the healthy VM's is never written.
	hang := filepath.Join(e.dir, "hang")
	t.Setenv("HEARTH_FCSIM_HANG_AT", "@"+filepath.Join(e.dir, "never"))
	vfUp(t, rt, e.spec(), "healthy")
	t.Setenv("HEARTH_FCSIM_HANG_AT", "@"+hang)
	vfUp(t, rt, e.spec(), "hung", "stopper")

	if err := os.WriteFile(hang, []byte("PATCH /vm"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"pause":    func() error { _, err := rt.Pause(ctx, "hung"); return err },
		"snapshot": func() error { _, err := rt.Snapshot(ctx, "hung", "s"); return err },
	} {
		took, err := vfTimed(call)
		vfWantKind(t, err, hearth.KindTimeout, "hung")
		t.Logf("%s of a hung VMM: %v after %v", name, err, took)
		if took > vfAPITimeout+vfHangSlack {
			t.Fatalf("%s took %v with an API deadline of %v", name, took, vfAPITimeout)
		}
		if v, _ := rt.Get(ctx, "hung"); v.Status != hearth.StatusRunning {
			t.Fatalf("after a timed-out %s: %s", name, v.Status)
		}
	}
	if snaps, _ := rt.Snapshots(ctx); len(snaps) != 0 {
		t.Fatalf("snapshots after a timed-out snapshot: %+v", snaps)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.state, "snapshots")); len(ents) != 1 {
		t.Fatalf("snapshot store after a timed-out snapshot: %d entries", len(ents))
	}
	vfWorks(t, rt, "healthy")

	// Now nothing is answered at all.
	if err := os.WriteFile(hang, []byte("* /*"), 0o600); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	took, err := vfTimed(func() error { _, err := rt.Stop(sctx, "stopper"); return err })
	if err != nil {
		t.Fatalf("stop of a hung VMM: %v", err)
	}
	if limit := 10*time.Second + vfHangSlack; took > limit { // Config.StopTimeout of vfEnv.open
		t.Fatalf("stop took %v", took)
	}
	t.Logf("stop of a hung VMM took %v", took)
	if v, _ := rt.Get(ctx, "stopper"); v.Status != hearth.StatusStopped || v.Pid != 0 {
		t.Fatalf("after stop: %s pid %d", v.Status, v.Pid)
	}
	if ev, ok := e.event("stopper", "stopped"); !ok || !strings.Contains(ev.Detail, "graceful request failed") {
		t.Fatalf("stop event %+v does not say the graceful request failed", ev)
	}

	took, err = vfTimed(func() error { return rt.Destroy(ctx, "hung") })
	if err != nil || took > vfHangSlack {
		t.Fatalf("destroy of a hung VMM: %v after %v", err, took)
	}
	for _, id := range []string{"stopper", "healthy"} {
		if err := rt.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	e.checkClean(t, rt)
}
