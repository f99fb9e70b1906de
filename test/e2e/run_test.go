package e2e

import (
	"bytes"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

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

// TestRunDefaultImage is the main job: `hearth image build default` (the
// package's shared setup runs exactly that, building the image from
// Debian packages), then `hearth run` boots it on QEMU, runs a command in
// the guest through the agent, streams its output, returns its exit code
// and removes the VM.
func TestRunDefaultImage(t *testing.T) {
	t.Parallel()
	state := newState(t)
	// No daemon listens on this socket: run uses the runtime in-process.
	sock := filepath.Join(filepath.Dir(state), "none.sock")
	out, code := run(t, shared.hearth, "--state-dir", state, "--socket", sock, "run", "--backend", "qemu", "--",
		"sh", "-c", "echo kernel $(uname -r); exit 7")
	if code != 7 || !strings.Contains(out, "kernel 6.") || !strings.Contains(out, "cloud-amd64") {
		t.Fatalf("hearth run: exit %d\n%s", code, out)
	}
	noGuestsLeft(t, state)
}
