package testbin

import (
	"os"
	"os/exec"
	"testing"
)

func TestBuildOnceAndCleanup(t *testing.T) {
	a := Build(t, "cmd/hearth-fcsim", "firecracker")
	b := Build(t, "cmd/hearth-fcsim", "firecracker")
	if a != b {
		t.Fatalf("built twice: %s, %s", a, b)
	}
	if out, err := exec.Command(a, "--version").CombinedOutput(); err != nil {
		t.Fatalf("%s --version: %v: %s", a, err, out)
	}
	if _, err := Path("cmd/no-such-command", "x"); err == nil {
		t.Fatal("a missing command built")
	}
	d, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	Cleanup()
	if _, err := os.Stat(d); !os.IsNotExist(err) {
		t.Fatalf("%s left after Cleanup: %v", d, err)
	}
}
