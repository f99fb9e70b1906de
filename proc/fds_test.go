package proc

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestExitFreesDescriptors: a process that exits, whether started or
// adopted, killed or released, leaves no pidfd or eventfd open in the
// supervisor — a long-lived runtime goes through thousands of them.
func TestExitFreesDescriptors(t *testing.T) {
	cases := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"started and exited", func(t *testing.T) {
			p, err := Start(StartSpec{Path: "/bin/true"})
			if err != nil {
				t.Fatal(err)
			}
			<-p.Done()
		}},
		{"started and killed", func(t *testing.T) {
			p, err := Start(StartSpec{Path: "/bin/sleep", Args: []string{"60"}})
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Kill(); err != nil {
				t.Fatal(err)
			}
			if err := p.Signal(9); err != nil {
				t.Fatalf("signal after exit: %v", err)
			}
		}},
		{"adopted and exited", func(t *testing.T) {
			cmd := exec.Command("/bin/sleep", "60")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			id, err := Lookup(cmd.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			p, err := Adopt(id)
			if err != nil {
				t.Fatal(err)
			}
			cmd.Process.Kill()
			cmd.Wait()
			<-p.Done()
			p.Release()
		}},
		{"adopted and released", func(t *testing.T) {
			cmd := exec.Command("/bin/sleep", "60")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			id, err := Lookup(cmd.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			p, err := Adopt(id)
			if err != nil {
				t.Fatal(err)
			}
			p.Release()
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := openFDs(t)
			c.run(t)
			// finish closes the descriptors right after it closes Done,
			// on the watcher's goroutine.
			deadline := time.Now().Add(5 * time.Second)
			for openFDs(t) > before && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if n := openFDs(t); n > before {
				t.Fatalf("%d descriptors open, %d before", n, before)
			}
		})
	}
}
