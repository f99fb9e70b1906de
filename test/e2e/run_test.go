package e2e

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// build compiles a command of this module.
func build(t *testing.T, dir, pkg, name string, static bool) string {
	t.Helper()
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = os.Environ()
	if static {
		cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, b)
	}
	return out
}

func run(t *testing.T, bin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), 0
}

// TestRunDefaultImage is the main job: build the default image from
// Debian packages, then `hearth run` boots it on QEMU, runs a command in
// the guest through the agent, streams its output, returns its exit code
// and removes the VM.
func TestRunDefaultImage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (image build, VM directories)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 is not installed")
	}
	dir := t.TempDir()
	hearth := build(t, dir, "../../cmd/hearth", "hearth", false)
	agent := build(t, dir, "../../cmd/hearth-agent", "hearth-agent", true)
	state := filepath.Join(dir, "state")
	t.Cleanup(func() { exec.Command("pkill", "-9", "-f", "qemu-system-x86_64.*"+state).Run() })
	if out, code := run(t, hearth, "--state-dir", state, "image", "build", "default", "--agent", agent); code != 0 {
		t.Fatalf("image build: exit %d\n%s", code, out)
	}
	// No daemon listens on this socket: run uses the runtime in-process.
	sock := filepath.Join(dir, "none.sock")
	out, code := run(t, hearth, "--state-dir", state, "--socket", sock, "run", "--backend", "qemu", "--",
		"sh", "-c", "echo kernel $(uname -r); exit 7")
	if code != 7 || !strings.Contains(out, "kernel 6.") || !strings.Contains(out, "cloud-amd64") {
		t.Fatalf("hearth run: exit %d\n%s", code, out)
	}
	// The VM is gone and no QEMU is left.
	if ents, _ := os.ReadDir(filepath.Join(state, "vms")); len(ents) != 0 {
		t.Fatalf("VM dirs left: %v", ents)
	}
	if out, _ := exec.Command("pgrep", "-f", "qemu-system-x86_64.*"+state).CombinedOutput(); len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("QEMU left running: %s", out)
	}
}
