package reliability

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

var (
	binDir     string
	binOnce    sync.Once
	builtSim   string
	builtAgent string
	buildErr   error
)

// binaries builds the simulator (named firecracker, as the backend
// expects) and the guest agent once per test binary, for every test of
// the suite. The simulator has a "jailer" link beside it, so it can play
// the jailer too.
func binaries(t testing.TB) (sim, agent string) {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "hrel-bin")
		if err != nil {
			buildErr = err
			return
		}
		binDir = dir
		builtSim = filepath.Join(dir, "firecracker")
		builtAgent = filepath.Join(dir, "hearth-agent")
		for _, b := range []struct{ out, pkg string }{
			{builtSim, "../../cmd/hearth-fcsim"},
			{builtAgent, "../../cmd/hearth-agent"},
		} {
			cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", b.pkg, err, out)
				return
			}
		}
		buildErr = os.Symlink(builtSim, filepath.Join(dir, "jailer"))
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtSim, builtAgent
}

// eventually polls cond until it holds or the deadline passes; a
// process that was killed takes a moment to be reaped.
func eventually(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, detail)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMain removes the binaries once every test is done (they outlive
// each test: VMMs of one test keep running the simulator until it ends).
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}
