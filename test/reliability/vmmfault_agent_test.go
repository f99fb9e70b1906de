package reliability

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
)

// vfAgentTimeout is Config.AgentTimeout in the agent test.
const vfAgentTimeout = 3 * time.Second

// TestAgentFrozen stops a VM's guest agent (SIGSTOP: the guest is alive,
// its agent answers nothing). Exec and direct agent calls, made with no
// deadline of their own, fail with timeouts within Config.AgentTimeout;
// another VM's agent keeps serving meanwhile; after SIGCONT the frozen
// VM's agent serves again through the same runtime.
func TestAgentFrozen(t *testing.T) {
	ctx := context.Background()
	e := vfNewEnv(t)
	rt := e.open(t, func(c *hearth.Config) { c.AgentTimeout = vfAgentTimeout }, nil)
	vfUp(t, rt, e.spec(), "frozen", "other")
	// Both agents answer, so the frozen one's session exists: the test
	// covers a live session going silent, not only a failed connect.
	for _, id := range []string{"frozen", "other"} {
		if err := vfExec(ctx, rt, id); err != nil {
			t.Fatal(err)
		}
	}
	v, _ := rt.Get(ctx, "frozen")
	pid := e.agentOf(t, v.Pid)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	thawed := false
	defer func() {
		if !thawed {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}()

	took, err := vfTimed(func() error { return vfExec(ctx, rt, "frozen") })
	vfWantKind(t, err, hearth.KindTimeout, "frozen")
	t.Logf("exec in a frozen guest: %v after %v", err, took)
	if took > vfAgentTimeout+vfHangSlack {
		t.Fatalf("exec in a frozen guest took %v with an agent deadline of %v", took, vfAgentTimeout)
	}
	c, err := rt.Agent(ctx, "frozen")
	if err != nil {
		t.Fatal(err)
	}
	took, err = vfTimed(func() error { return c.Ping(ctx) })
	t.Logf("ping of a frozen agent: %v after %v", err, took)
	if !errors.Is(err, context.DeadlineExceeded) || took > vfAgentTimeout+vfHangSlack {
		t.Fatalf("ping of a frozen agent: %v after %v", err, took)
	}
	// Only the frozen VM's agent is affected, and its VMM still serves.
	if err := vfExec(ctx, rt, "other"); err != nil {
		t.Fatalf("exec in the other VM while one agent is frozen: %v", err)
	}
	if v, _ := rt.Get(ctx, "frozen"); v.Status != hearth.StatusRunning {
		t.Fatalf("frozen guest: %s", v.Status)
	}

	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	thawed = true
	// The first call after the thaw may still meet the session the
	// timed-out calls left behind; the agent must serve again soon.
	var last error
	thaw := time.Now()
	eventually(t, 30*time.Second, "exec after SIGCONT", func() (bool, string) {
		last = vfExec(ctx, rt, "frozen")
		return last == nil, vfErrString(last)
	})
	t.Logf("serving again %v after SIGCONT", time.Since(thaw))
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping after SIGCONT: %v", err)
	}
	for _, id := range []string{"frozen", "other"} {
		if err := rt.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	e.checkClean(t, rt)
}

func vfErrString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
