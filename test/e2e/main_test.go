package e2e

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/internal/testbin"
	"github.com/hearth-vm/hearth/vmm"
	"github.com/hearth-vm/hearth/vmm/qemu"
)

// shared is what every test of the package uses: the hearth and agent
// binaries and a state directory holding the default image, built once
// (the image build fetches Debian packages and takes tens of seconds).
var shared struct {
	once          sync.Once
	dir           string
	hearth, agent string
	base          string
	err           error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	testbin.Cleanup()
	os.Exit(code)
}

// needGuests skips unless the machine can boot a real guest, and builds
// the shared binaries and image on first use.
func needGuests(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (image build, VM directories)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 is not installed")
	}
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "e2e")
		if shared.err != nil {
			return
		}
		if shared.hearth, shared.err = testbin.Path("cmd/hearth", "hearth"); shared.err != nil {
			return
		}
		if shared.agent, shared.err = testbin.Path("cmd/hearth-agent", "hearth-agent"); shared.err != nil {
			return
		}
		shared.base = filepath.Join(shared.dir, "state")
		out, err := exec.Command(shared.hearth, "--state-dir", shared.base, "image", "build", "default", "--agent", shared.agent).CombinedOutput()
		if err != nil {
			shared.err = fmt.Errorf("image build: %v\n%s", err, out)
		}
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
}

// newState returns a fresh state directory holding the default image
// (and the package cache, so `hearth image build` finds it current). No
// guest started from it outlives the test.
func newState(t *testing.T) string {
	t.Helper()
	needGuests(t)
	state := filepath.Join(t.TempDir(), "state")
	if err := os.MkdirAll(state, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"images", "cache"} {
		if out, err := exec.Command("cp", "-a", "--reflink=auto", filepath.Join(shared.base, d), state).CombinedOutput(); err != nil {
			t.Fatalf("copy the image: %v\n%s", err, out)
		}
	}
	t.Cleanup(func() { killGuests(state) })
	return state
}

// guestPids lists the QEMU processes whose command line names state.
func guestPids(state string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		argv0, _, _ := bytes.Cut(b, []byte{0})
		if bytes.Contains(argv0, []byte("qemu-system")) && bytes.Contains(b, []byte(state+"/")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killGuests kills, by pid, every QEMU of state: a failure half-way must
// not leave a guest running.
func killGuests(state string) {
	for _, pid := range guestPids(state) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

func openQEMU(t *testing.T, state string, opts ...func(*hearth.Config)) *hearth.Runtime {
	t.Helper()
	b, err := qemu.New(qemu.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	cfg := hearth.Config{StateDir: state, Backends: []vmm.Backend{b}}
	for _, o := range opts {
		o(&cfg)
	}
	rt, err := hearth.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// execTimeout bounds one command in a guest. The first one after a boot
// waits out the boot: under TCG on a loaded 2-core machine that can take
// a minute.
const execTimeout = 3 * time.Minute

// guestExec runs a command in the guest and returns its stdout, stderr
// and exit code.
func guestExec(t *testing.T, rt *hearth.Runtime, id string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	var out, errb bytes.Buffer
	st, err := rt.Exec(ctx, id, &agent.Cmd{Args: args, Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatalf("%s: exec %v: %v", id, args, err)
	}
	return strings.TrimSpace(out.String()), strings.TrimSpace(errb.String()), st.ExitCode
}

// execOut runs a command that must succeed and returns its output.
func execOut(t *testing.T, rt *hearth.Runtime, id string, args ...string) string {
	t.Helper()
	out, errs, code := guestExec(t, rt, id, args...)
	if code != 0 {
		t.Fatalf("%s: exec %v: exit %d: %s", id, args, code, errs)
	}
	return out
}

// consoleTail is the end of a VM's console, for failure messages.
func consoleTail(rt *hearth.Runtime, id string) string {
	lines, err := rt.ConsoleTail(context.Background(), id, 80)
	if err != nil {
		return err.Error()
	}
	return strings.Join(lines, "\n")
}

// destroyAll destroys every VM of rt (cleanup after a failure).
func destroyAll(rt *hearth.Runtime) {
	ctx := context.Background()
	vs, _ := rt.List(ctx)
	for _, v := range vs {
		rt.Destroy(ctx, v.ID)
	}
}

// noGuestsLeft checks that state has no VM directory and no QEMU left.
func noGuestsLeft(t *testing.T, state string) {
	t.Helper()
	if ents, _ := os.ReadDir(filepath.Join(state, "vms")); len(ents) != 0 {
		t.Errorf("VM dirs left: %v", ents)
	}
	if pids := guestPids(state); len(pids) != 0 {
		t.Errorf("QEMU left running: %v", pids)
	}
}
