package reliability

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
)

// TestVMMKilled kills -9 the VMM of a running VM: the runtime notices on
// its own (no call needed), records the VM crashed with the signal and
// emits an event; calls on it fail with a typed error; another VM is
// untouched; destroy cleans up everything, guest agent included.
func TestVMMKilled(t *testing.T) {
	ctx := context.Background()
	e := vfNewEnv(t)
	rt := e.open(t, nil, nil)
	vfUp(t, rt, e.spec(), "victim", "bystander")
	if err := vfExec(ctx, rt, "victim"); err != nil {
		t.Fatal(err)
	}
	v, err := rt.Get(ctx, "victim")
	if err != nil {
		t.Fatal(err)
	}
	agentPid := e.agentOf(t, v.Pid)

	if err := syscall.Kill(v.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// DESIGN §4 promises a second; the deadline leaves room for a loaded
	// machine.
	eventually(t, 10*time.Second, "status after kill -9", func() (bool, string) {
		v, _ := rt.Get(ctx, "victim")
		return v.Status == hearth.StatusCrashed, string(v.Status)
	})
	v, _ = rt.Get(ctx, "victim")
	if !strings.Contains(v.Exit, "SIGKILL") || v.Pid != 0 {
		t.Fatalf("crashed VM: exit %q, pid %d", v.Exit, v.Pid)
	}
	ev, ok := e.event("victim", "crashed")
	if !ok || ev.Status != hearth.StatusCrashed || ev.Detail != v.Exit {
		t.Fatalf("crash event %+v (found %v), want detail %q", ev, ok, v.Exit)
	}
	// The guest went with its VMM.
	eventually(t, 10*time.Second, "guest agent of the killed VMM", func() (bool, string) {
		_, alive := vfProcs(e.agentBin)[agentPid]
		return !alive, fmt.Sprintf("pid %d alive", agentPid)
	})

	// Calls fail at once with typed errors, never a hang.
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for name, call := range map[string]func() error{
		"pause":    func() error { _, err := rt.Pause(cctx, "victim"); return err },
		"snapshot": func() error { _, err := rt.Snapshot(cctx, "victim", "s"); return err },
		"exec":     func() error { return vfExec(cctx, rt, "victim") },
	} {
		err := call()
		if !errors.Is(err, hearth.ErrInvalidTransition) {
			t.Fatalf("%s on a crashed VM: %v", name, err)
		}
	}
	vfWorks(t, rt, "bystander")

	for _, id := range []string{"victim", "bystander"} {
		if err := rt.Destroy(ctx, id); err != nil {
			t.Fatalf("destroy %s: %v", id, err)
		}
	}
	e.checkClean(t, rt)
}
