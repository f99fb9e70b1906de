package hearth_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/internal/testbin"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/memvmm"
	"github.com/hearth-vm/hearth/vsock"
)

func agentBinary(t *testing.T) string {
	t.Helper()
	return testbin.Build(t, "cmd/hearth-agent", "hearth-agent")
}

// withGuestAgent makes every simulator started by the test run
// hearth-agent as its guest. The guest's "/proc/cmdline" (where the agent
// finds its token) is a file the wrapper writes from the simulator's
// HEARTH_FCSIM_BOOT_ARGS; state files live next to the guest's vsock
// directory.
func withGuestAgent(t *testing.T) {
	t.Helper()
	bin := agentBinary(t)
	// The agent's own files live outside the VM's directory: the guest is
	// a host process that can outlive its VMM for a moment and must not
	// write into a directory destroy is removing.
	stateRoot, err := os.MkdirTemp("", "hagent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(stateRoot) })
	script := `d="` + stateRoot + `/$HEARTH_FCSIM_VM_ID"; mkdir -p "$d.state"; printf '%s' "$HEARTH_FCSIM_BOOT_ARGS" > "$d.state/cmdline"; ` +
		`exec ` + bin + ` --init never --system simulated --cmdline "$d.state/cmdline" --token-file "$d.state/token" --env-file "$d.state/env" --secrets-dir "$d.state/secrets"`
	q, _ := json.Marshal(script)
	t.Setenv("HEARTH_FCSIM_GUEST_CMD", `["sh","-c",`+string(q)+`]`)
}

// TestAgentThroughFirecracker runs hearth-agent as the simulator's guest
// (it reads its token from the kernel command line hearth hands the
// guest) and drives it through the runtime: exec, then a snapshot
// restored into a clone that gets a token of its own.
func TestAgentThroughFirecracker(t *testing.T) {
	ctx := context.Background()
	withGuestAgent(t)
	f := newFC(t)
	spec := f.spec
	on := true
	spec.Agent = &on
	if _, err := f.rt.Create(ctx, "a1", spec); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Exec(ctx, "a1", &agent.Cmd{Args: []string{"true"}}); !errors.Is(err, hearth.ErrInvalidTransition) {
		t.Fatalf("exec before start: %v", err)
	}
	if _, err := f.rt.Start(ctx, "a1"); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	st, err := f.rt.Exec(ctx, "a1", &agent.Cmd{Args: []string{"sh", "-c", "echo hello from $0; exit 3", "guest"}, Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode != 3 || strings.TrimSpace(out.String()) != "hello from guest" {
		t.Fatalf("exec: %+v %q", st, out.String())
	}

	if _, err := f.rt.Snapshot(ctx, "a1", "warm"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Restore(ctx, hearth.RestoreSpec{Snapshot: "warm", VM: "c1"}); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if _, err := f.rt.Exec(ctx, "c1", &agent.Cmd{Args: []string{"echo", "clone"}, Stdout: &out}); err != nil || strings.TrimSpace(out.String()) != "clone" {
		t.Fatalf("exec in clone: %q %v", out.String(), err)
	}
	// The clone no longer accepts the source's token.
	if f.rt.AgentTokenOf("c1") == f.rt.AgentTokenOf("a1") {
		t.Fatal("clone kept the source's token")
	}
	stale := agent.New(&vsock.HybridDialer{Path: f.rt.VsockPathOf("c1"), Port: agent.DefaultPort}, f.rt.AgentTokenOf("a1"))
	defer stale.Close()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := stale.Ping(pctx); !errors.Is(err, agent.ErrUnauthorized) {
		t.Fatalf("source token against the clone: %v", err)
	}
	// A clone restored paused gets its token on first resume.
	if _, err := f.rt.Restore(ctx, hearth.RestoreSpec{Snapshot: "warm", VM: "c2", Paused: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.Resume(ctx, "c2"); err != nil {
		t.Fatal(err)
	}
	if f.rt.AgentTokenOf("c2") == f.rt.AgentTokenOf("a1") {
		t.Fatal("paused clone kept the source's token after resume")
	}
	if _, err := f.rt.Exec(ctx, "c2", &agent.Cmd{Args: []string{"true"}}); err != nil {
		t.Fatal(err)
	}
}

func TestAgentErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	k, r := filepath.Join(dir, "k"), filepath.Join(dir, "r")
	os.WriteFile(k, []byte("k"), 0o600)
	os.WriteFile(r, []byte("r"), 0o600)
	rt, err := hearth.Open(ctx, hearth.Config{StateDir: filepath.Join(dir, "s"), Backends: []vmm.Backend{memvmm.New()}})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	if _, err := rt.Agent(ctx, "nope"); !errors.Is(err, hearth.ErrVMNotFound) {
		t.Fatal(err)
	}
	rt.Create(ctx, "plain", hearth.Spec{Kernel: k, Rootfs: r})
	rt.Start(ctx, "plain")
	if _, err := rt.Agent(ctx, "plain"); !errors.Is(err, hearth.ErrGuestMetadata) {
		t.Fatalf("agent of a VM without one: %v", err)
	}
}
