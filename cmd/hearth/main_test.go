package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/internal/testbin"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/memvmm"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRoot()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func TestVersion(t *testing.T) {
	out, err := run(t, "version")
	if err != nil || !strings.HasPrefix(out, "hearth ") {
		t.Fatalf("%q %v", out, err)
	}
}

func TestDemo(t *testing.T) {
	out, err := run(t, "demo")
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, step := range []string{"create", "start", "pause", "resume", "snapshot", "restore", "stop", "destroy", "done: 0 VMs left"} {
		if !strings.Contains(out, step) {
			t.Errorf("output lacks %q:\n%s", step, out)
		}
	}
	if _, err := run(t, "demo", "--backend", "xen"); hearth.KindOf(err) != hearth.KindInvalidArgument {
		t.Fatalf("unknown backend: %v", err)
	}
}

func TestPsAndInspect(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	k, r := filepath.Join(dir, "k"), filepath.Join(dir, "r")
	os.WriteFile(k, []byte("k"), 0o600)
	os.WriteFile(r, []byte("r"), 0o600)
	ctx := context.Background()
	rt, err := hearth.Open(ctx, hearth.Config{StateDir: state, Backends: []vmm.Backend{memvmm.New()}})
	if err != nil {
		t.Fatal(err)
	}
	spec := hearth.Spec{Kernel: k, Rootfs: r}
	rt.Create(ctx, "alpha", spec)
	rt.Create(ctx, "beta", spec)
	rt.Start(ctx, "beta")
	rt.Stop(ctx, "beta")

	// While a runtime holds the state dir, readers are told who has it.
	if _, err := run(t, "ps", "--state-dir", state); err == nil || !strings.Contains(err.Error(), "owner pid") {
		t.Fatalf("ps on a locked dir: %v", err)
	}
	rt.Close()

	out, err := run(t, "ps", "--state-dir", state)
	if err != nil || !strings.Contains(out, "alpha") || strings.Contains(out, "beta") {
		t.Fatalf("ps: %v\n%s", err, out)
	}
	out, err = run(t, "ps", "-a", "--json", "--state-dir", state)
	if err != nil {
		t.Fatal(err)
	}
	var views []hearth.View
	if err := json.Unmarshal([]byte(out), &views); err != nil || len(views) != 2 || views[1].Status != hearth.StatusStopped {
		t.Fatalf("ps --json: %v %+v", err, views)
	}
	out, err = run(t, "inspect", "alpha", "--state-dir", state)
	if err != nil || !strings.Contains(out, `"resources"`) || !strings.Contains(out, `"status": "created"`) {
		t.Fatalf("inspect: %v\n%s", err, out)
	}
	if _, err := run(t, "inspect", "nope", "--state-dir", state); exitCode(err) != 3 {
		t.Fatalf("inspect missing: %v (exit %d)", err, exitCode(err))
	}
}

// TestMain removes the hearth binary the CLI tests built.
func TestMain(m *testing.M) { testbin.Main(m) }
