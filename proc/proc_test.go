package proc

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseStartTime(t *testing.T) {
	cases := []struct {
		name string
		stat string
		want uint64
		ok   bool
	}{
		{"plain", "123 (sleep) S 1 123 123 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 100 18446744073709551615", 98765, true},
		{"comm with spaces and parens", "7 (a) b) (c) R 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42 1 1", 42, true},
		{"truncated", "7 (x) R 1 2 3", 0, false},
		{"no paren", "garbage", 0, false},
		{"not a number", "7 (x) R 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 abc 1 1", 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseStartTime([]byte(c.stat))
			if (err == nil) != c.ok || got != c.want {
				t.Fatalf("got %d, %v", got, err)
			}
		})
	}
}

func sleeper(t *testing.T, out string) *Process {
	t.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	p, err := Start(StartSpec{Path: sleep, Args: []string{"60"}, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill() })
	return p
}

func TestStartIsDetachedAndKillable(t *testing.T) {
	p := sleeper(t, filepath.Join(t.TempDir(), "out.log"))
	id := p.Identity()
	if !id.Alive() {
		t.Fatal("not alive after start")
	}
	// Own session: the child leads a new session, so a daemon's terminal
	// or process group going away does not take it along.
	sid, err := os.ReadFile("/proc/" + itoa(id.Pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(sid)[strings.LastIndexByte(string(sid), ')')+1:])
	if f[3] != itoa(id.Pid) { // field 6: session id
		t.Fatalf("session id %s, want %d", f[3], id.Pid)
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := p.Kill(); err != nil {
		t.Fatalf("second kill: %v", err)
	}
	if e := p.Exit(); !e.Known || e.Signal != "SIGKILL" {
		t.Fatalf("exit: %+v", e)
	}
	if id.Alive() {
		t.Fatal("alive after kill")
	}
}

func TestExitCodeAndOutput(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	out := filepath.Join(t.TempDir(), "out.log")
	p, err := Start(StartSpec{Path: sh, Args: []string{"-c", "echo to-out; echo to-err >&2; exit 3"}, Output: out})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, err := p.Wait(ctx)
	if err != nil || e.Code != 3 || !e.Known {
		t.Fatalf("exit %+v %v", e, err)
	}
	b, _ := os.ReadFile(out)
	if !strings.Contains(string(b), "to-out") || !strings.Contains(string(b), "to-err") {
		t.Fatalf("output file: %q", b)
	}
}

func TestStopLadder(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	// A process that ignores SIGTERM must be killed after the grace.
	ready := filepath.Join(t.TempDir(), "ready")
	p, err := Start(StartSpec{Path: sh, Args: []string{"-c", "trap '' TERM; : > " + ready + "; while :; do sleep 0.05; done"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill() })
	// SIGTERM must arrive after the trap is installed, however loaded
	// the machine.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the shell never installed its trap")
		}
	}
	if err := p.Stop(200 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if e := p.Exit(); e.Signal != "SIGKILL" {
		t.Fatalf("want SIGKILL after ignored SIGTERM, got %+v", e)
	}
	// One that honours SIGTERM stops with it.
	q := sleeper(t, "")
	if err := q.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if e := q.Exit(); e.Signal != "SIGTERM" {
		t.Fatalf("want SIGTERM, got %+v", e)
	}
}

func TestAdopt(t *testing.T) {
	p := sleeper(t, "")
	id := p.Identity()
	a, err := Adopt(id)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Done():
		t.Fatal("adopted process reported dead")
	case <-time.After(50 * time.Millisecond):
	}
	// A wrong start time means a different process: refused.
	if _, err := Adopt(Identity{Pid: id.Pid, StartTime: id.StartTime + 1}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("adopt with wrong start time: %v", err)
	}
	if err := a.Kill(); err != nil { // through the adopted pidfd
		t.Fatal(err)
	}
	select {
	case <-a.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("adopted exit not observed")
	}
	if a.Exit().Known {
		t.Fatal("an adopted process's exit status cannot be known")
	}
	<-p.Done()
	if _, err := Adopt(id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("adopt dead: %v", err)
	}
}

func TestRelease(t *testing.T) {
	p := sleeper(t, "")
	a, err := Adopt(p.Identity())
	if err != nil {
		t.Fatal(err)
	}
	a.Release()
	a.Release()
	if !p.Identity().Alive() {
		t.Fatal("release must not touch the process")
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
