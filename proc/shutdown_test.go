package proc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// envLauncher makes the test binary act as a short-lived launcher: it
// starts a detached grandchild, prints its identity and exits, like a
// daemon that dies while its VMMs keep running.
const envLauncher = "HEARTH_PROC_TEST_LAUNCHER"

func TestMain(m *testing.M) {
	if os.Getenv(envLauncher) != "" {
		os.Exit(launcherMain())
	}
	os.Exit(m.Run())
}

func launcherMain() int {
	p, err := Start(StartSpec{Path: "/bin/sh", Args: []string{"-c", "exec sleep 60"}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	id := p.Identity()
	fmt.Printf("%d %d\n", id.Pid, id.StartTime)
	p.Release()
	return 0
}

func startSh(t *testing.T, script string) *Process {
	t.Helper()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	p, err := Start(StartSpec{Path: sh, Args: []string{"-c", script}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill() })
	return p
}

// waitFile waits until path exists, so a script's traps are installed
// before the test signals it.
func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s never appeared", path)
}

func TestShutdownLadder(t *testing.T) {
	type tc struct {
		name string
		// script gets $READY (touch it once traps are set) and $MARK.
		script   string
		graceful func(p *Process) func(context.Context) error
		opts     ShutdownOptions
		want     Outcome
		signal   string // expected terminating signal, "" for an exit code
		maxTotal time.Duration
	}
	usr1 := func(p *Process) func(context.Context) error {
		return func(context.Context) error { return p.Signal(unix.SIGUSR1) }
	}
	failing := func(*Process) func(context.Context) error {
		return func(context.Context) error { return errors.New("api not answering") }
	}
	ignored := func(*Process) func(context.Context) error {
		return func(context.Context) error { return nil }
	}
	cases := []tc{
		{
			name:     "cooperative guest powers off",
			script:   `trap 'exit 0' USR1; touch "$READY"; while :; do sleep 0.02; done`,
			graceful: usr1,
			opts:     ShutdownOptions{GracefulWait: 5 * time.Second, TermWait: 5 * time.Second},
			want:     OutcomeGraceful,
			maxTotal: 3 * time.Second,
		},
		{
			name:     "graceful request fails, SIGTERM honoured",
			script:   `touch "$READY"; exec sleep 60`,
			graceful: failing,
			opts:     ShutdownOptions{GracefulWait: 5 * time.Second, TermWait: 5 * time.Second},
			want:     OutcomeTerminated,
			signal:   "SIGTERM",
			maxTotal: 3 * time.Second,
		},
		{
			name:     "guest ignores request, SIGTERM honoured",
			script:   `touch "$READY"; exec sleep 60`,
			graceful: ignored,
			opts:     ShutdownOptions{GracefulWait: 200 * time.Millisecond, TermWait: 5 * time.Second},
			want:     OutcomeTerminated,
			signal:   "SIGTERM",
			maxTotal: 200*time.Millisecond + time.Second,
		},
		{
			name:     "ignores SIGTERM: killed within grace + 1s",
			script:   `trap '' TERM; touch "$READY"; while :; do sleep 0.02; done`,
			graceful: ignored,
			opts:     ShutdownOptions{GracefulWait: 300 * time.Millisecond, TermWait: 300 * time.Millisecond},
			want:     OutcomeKilled,
			signal:   "SIGKILL",
			maxTotal: 600*time.Millisecond + time.Second,
		},
		{
			name:     "no graceful step",
			script:   `trap '' TERM; touch "$READY"; while :; do sleep 0.02; done`,
			opts:     ShutdownOptions{TermWait: 200 * time.Millisecond},
			want:     OutcomeKilled,
			signal:   "SIGKILL",
			maxTotal: 200*time.Millisecond + time.Second,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			ready := filepath.Join(dir, "ready")
			p := startSh(t, "READY="+ready+"; "+c.script)
			waitFile(t, ready)
			var g func(context.Context) error
			if c.graceful != nil {
				g = c.graceful(p)
			}
			res, err := Shutdown(context.Background(), p, g, c.opts)
			if err != nil {
				t.Fatal(err)
			}
			if res.Outcome != c.want {
				t.Fatalf("outcome %v, want %v (%v)", res.Outcome, c.want, res)
			}
			if res.Total > c.maxTotal {
				t.Fatalf("took %v, limit %v", res.Total, c.maxTotal)
			}
			if !res.Exit.Known || res.Exit.Signal != c.signal {
				t.Fatalf("exit %+v, want signal %q", res.Exit, c.signal)
			}
			if res.Total < res.Graceful+res.Term+res.Kill {
				t.Fatalf("inconsistent timings %+v", res)
			}
			if p.Identity().Alive() {
				t.Fatal("still alive")
			}
		})
	}
}

func TestShutdownAlreadyExited(t *testing.T) {
	p := startSh(t, "exit 7")
	<-p.Done()
	called := false
	res, err := Shutdown(context.Background(), p, func(context.Context) error { called = true; return nil }, ShutdownOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcome != OutcomeAlreadyExited || called || res.Exit.Code != 7 {
		t.Fatalf("%+v, graceful called %v", res, called)
	}
}

func TestShutdownContextCancelKills(t *testing.T) {
	p := startSh(t, `trap '' TERM USR1; while :; do sleep 0.02; done`)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	res, err := Shutdown(ctx, p, func(context.Context) error { return nil }, ShutdownOptions{GracefulWait: time.Minute, TermWait: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcome != OutcomeKilled || res.Total > 2*time.Second {
		t.Fatalf("%v", res)
	}
}

// TestShutdownRecycledPid: a recorded identity whose start time does not
// match the live process with that pid (the pid was reused) must never be
// signalled.
func TestShutdownRecycledPid(t *testing.T) {
	dir := t.TempDir()
	ready, mark := filepath.Join(dir, "ready"), filepath.Join(dir, "signalled")
	p := startSh(t, fmt.Sprintf(`trap 'touch %s' TERM USR1 HUP INT; touch %s; while :; do sleep 0.02; done`, mark, ready))
	waitFile(t, ready)
	stale := Identity{Pid: p.Pid(), StartTime: p.Identity().StartTime - 1}
	var calls atomic.Int32
	res, err := ShutdownIdentity(context.Background(), stale, func(context.Context) error { calls.Add(1); return nil }, ShutdownOptions{GracefulWait: 50 * time.Millisecond, TermWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcome != OutcomeAlreadyExited || calls.Load() != 0 {
		t.Fatalf("%+v, graceful calls %d", res, calls.Load())
	}
	time.Sleep(100 * time.Millisecond)
	if _, err := os.Stat(mark); err == nil {
		t.Fatal("the process with the reused pid was signalled")
	}
	select {
	case <-p.Done():
		t.Fatal("the process with the reused pid died")
	default:
	}
}

// TestAdoptAfterLauncherExits: a launcher process starts a detached VMM
// stand-in and exits (a daemon restart); the test adopts the orphan,
// sees its exit within a second, and can stop it through the ladder.
func TestAdoptAfterLauncherExits(t *testing.T) {
	launch := func(t *testing.T) Identity {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envLauncher+"=1")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("launcher: %v", err)
		}
		f := strings.Fields(strings.TrimSpace(string(out)))
		if len(f) != 2 {
			t.Fatalf("launcher output %q", out)
		}
		pid, _ := strconv.Atoi(f[0])
		st, _ := strconv.ParseUint(f[1], 10, 64)
		id := Identity{Pid: pid, StartTime: st}
		t.Cleanup(func() {
			// Never leave the orphan behind, but only ever signal it
			// through a pidfd bound to its identity.
			if a, err := Adopt(id); err == nil {
				a.Kill()
				a.Release()
			}
		})
		if ppid := parentOf(t, pid); ppid == os.Getpid() {
			t.Fatalf("grandchild %d is the test's child", pid)
		}
		return id
	}

	t.Run("exit detected within 1s", func(t *testing.T) {
		id := launch(t)
		a, err := Adopt(id)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Release()
		select {
		case <-a.Done():
			t.Fatal("adopted process reported dead")
		case <-time.After(100 * time.Millisecond):
		}
		// Someone else kills it (the OOM killer, an operator).
		other, err := Adopt(id)
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		if err := other.Signal(unix.SIGKILL); err != nil {
			t.Fatal(err)
		}
		other.Release()
		select {
		case <-a.Done():
		case <-time.After(time.Second):
			t.Fatal("exit of adopted process not seen within 1s")
		}
		if d := time.Since(t0); d > time.Second {
			t.Fatalf("exit seen after %v", d)
		}
		if a.Exit().Known {
			t.Fatal("adopted exit status cannot be known")
		}
	})

	t.Run("ladder on adopted process", func(t *testing.T) {
		id := launch(t)
		res, err := ShutdownIdentity(context.Background(), id, nil, ShutdownOptions{TermWait: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if res.Outcome != OutcomeTerminated || id.Alive() {
			t.Fatalf("%v, alive %v", res, id.Alive())
		}
	})
}

func parentOf(t *testing.T, pid int) int {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "PPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatal("no PPid")
	return 0
}
