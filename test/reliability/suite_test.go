package reliability

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/internal/testbin"
)

// binaries builds the simulator (named firecracker, as the backend
// expects) and the guest agent once per test binary, for every test of
// the suite. The simulator has a "jailer" link beside it, so it can play
// the jailer too.
func binaries(t testing.TB) (sim, agent string) {
	t.Helper()
	sim = testbin.Build(t, "cmd/hearth-fcsim", "firecracker")
	agent = testbin.Build(t, "cmd/hearth-agent", "hearth-agent")
	if err := os.Symlink(sim, filepath.Join(filepath.Dir(sim), "jailer")); err != nil && !errors.Is(err, os.ErrExist) {
		t.Fatal(err)
	}
	return sim, agent
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
func TestMain(m *testing.M) { testbin.Main(m) }
