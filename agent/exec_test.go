package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/agent"
)

func TestExec(t *testing.T) {
	e := newEnv(t)
	if _, err := e.client.SetEnv(ctxT(t, 5*time.Second), map[string]string{"STORED": "from-store", "OVER": "store"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		cmd        agent.Cmd
		stdout     string
		stderr     string
		code       int
		signal     string
		timedOut   bool
		wantErr    error
		maxElapsed time.Duration
	}{
		{name: "stdout and stderr", cmd: agent.Cmd{Args: []string{"sh", "-c", "echo out; echo err >&2"}}, stdout: "out\n", stderr: "err\n"},
		{name: "exit code", cmd: agent.Cmd{Args: []string{"sh", "-c", "exit 3"}}, code: 3},
		{name: "true", cmd: agent.Cmd{Args: []string{"true"}}},
		{name: "killed by a signal", cmd: agent.Cmd{Args: []string{"sh", "-c", "kill -TERM $$"}}, code: 128 + 15, signal: "SIGTERM"},
		{name: "timeout kills the group", cmd: agent.Cmd{Args: []string{"sh", "-c", "sleep 30; echo never"}, Timeout: 200 * time.Millisecond},
			code: 128 + 9, signal: "SIGKILL", timedOut: true, maxElapsed: 5 * time.Second},
		{name: "stdin", cmd: agent.Cmd{Args: []string{"cat"}, Stdin: strings.NewReader("hello stdin")}, stdout: "hello stdin"},
		{name: "no stdin reads /dev/null", cmd: agent.Cmd{Args: []string{"cat"}}},
		{name: "env, store and dir", cmd: agent.Cmd{Args: []string{"sh", "-c", `echo "$FOO $STORED $OVER $(pwd)"`}, Env: map[string]string{"FOO": "bar", "OVER": "req"}, Dir: "/tmp"},
			stdout: "bar from-store req /tmp\n"},
		{name: "agent variables stay private", cmd: agent.Cmd{Args: []string{"sh", "-c", `echo "[$HEARTH_SECRET_TEST]"`}}, stdout: "[]\n"},
		{name: "not found", cmd: agent.Cmd{Args: []string{"no-such-program-hearth"}}, wantErr: fs.ErrNotExist},
		{name: "absolute not found", cmd: agent.Cmd{Args: []string{"/no/such/program"}}, wantErr: fs.ErrNotExist},
		{name: "relative dir refused", cmd: agent.Cmd{Args: []string{"true"}, Dir: "tmp"}, wantErr: agent.ErrInvalid},
		{name: "no args", cmd: agent.Cmd{}, wantErr: agent.ErrInvalid},
		{name: "bad env key", cmd: agent.Cmd{Args: []string{"true"}, Env: map[string]string{"1X": "y"}}, wantErr: agent.ErrInvalid},
	}
	t.Setenv("HEARTH_SECRET_TEST", "leak")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			cmd := tt.cmd
			cmd.Stdout, cmd.Stderr = &out, &errb
			start := time.Now()
			st, err := e.client.Exec(ctxT(t, 20*time.Second), &cmd)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if out.String() != tt.stdout || errb.String() != tt.stderr {
				t.Errorf("stdout %q stderr %q, want %q %q", out.String(), errb.String(), tt.stdout, tt.stderr)
			}
			if st.ExitCode != tt.code || st.Signal != tt.signal || st.TimedOut != tt.timedOut {
				t.Errorf("status %+v, want code %d signal %q timed out %v", st, tt.code, tt.signal, tt.timedOut)
			}
			if st.Success() != (tt.code == 0) {
				t.Errorf("Success() = %v", st.Success())
			}
			if tt.maxElapsed > 0 && time.Since(start) > tt.maxElapsed {
				t.Errorf("took %s, want under %s", time.Since(start), tt.maxElapsed)
			}
		})
	}
}

// TestExecBackgroundChild: a child that keeps stdout open must not hold
// the exit status back for longer than the output grace period.
func TestExecBackgroundChild(t *testing.T) {
	e := newEnv(t)
	var out bytes.Buffer
	start := time.Now()
	st, err := e.client.Exec(ctxT(t, 20*time.Second), &agent.Cmd{Args: []string{"sh", "-c", "sleep 30 & echo $!"}, Stdout: &out})
	if err != nil || !st.Success() {
		t.Fatalf("%v %+v", err, st)
	}
	var pid int
	if _, err := fmt.Sscan(out.String(), &pid); err != nil {
		t.Fatalf("output %q", out.String())
	}
	syscall.Kill(pid, syscall.SIGKILL)
	if el := time.Since(start); el > 8*time.Second {
		t.Errorf("took %s", el)
	}
}

func TestExecLargeOutput(t *testing.T) {
	e := newEnv(t)
	var out bytes.Buffer
	st, err := e.client.Exec(ctxT(t, 30*time.Second), &agent.Cmd{Args: []string{"head", "-c", "20000000", "/dev/zero"}, Stdout: &out})
	if err != nil || !st.Success() {
		t.Fatalf("%v %+v", err, st)
	}
	if out.Len() != 20000000 || bytes.IndexByte(out.Bytes(), 1) >= 0 {
		t.Fatalf("got %d bytes", out.Len())
	}
}

func TestExecStdinStreaming(t *testing.T) {
	e := newEnv(t)
	// 8 MiB through cat and back: stdin and stdout both flow-controlled.
	in := bytes.Repeat([]byte("0123456789abcdef"), 512<<10)
	var out bytes.Buffer
	st, err := e.client.Exec(ctxT(t, 30*time.Second), &agent.Cmd{Args: []string{"cat"}, Stdin: bytes.NewReader(in), Stdout: &out})
	if err != nil || !st.Success() {
		t.Fatalf("%v %+v", err, st)
	}
	if !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("echoed %d bytes, sent %d", out.Len(), len(in))
	}
}

func TestExecSignalAndCancel(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t, 20*time.Second)

	t.Run("signal", func(t *testing.T) {
		var out syncBuffer
		p, err := e.client.Start(ctx, &agent.Cmd{Args: []string{"sh", "-c", "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done"}, Stdout: &out})
		if err != nil {
			t.Fatal(err)
		}
		if p.ID == "" || p.PID <= 0 {
			t.Fatalf("process %+v", p)
		}
		waitFor(t, "ready", 5*time.Second, func() bool { return strings.Contains(out.String(), "ready") })
		if err := p.Signal(ctx, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		st, err := p.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if st.ExitCode != 7 || !strings.Contains(out.String(), "got-term") {
			t.Fatalf("status %+v output %q", st, out.String())
		}
		// Signalling an exited process is not an error.
		if err := p.Signal(ctx, syscall.SIGTERM); err != nil {
			t.Fatalf("signal after exit: %v", err)
		}
	})

	t.Run("kill", func(t *testing.T) {
		p, err := e.client.Start(ctx, &agent.Cmd{Args: []string{"sleep", "30"}})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Kill(ctx); err != nil {
			t.Fatal(err)
		}
		st, err := p.Wait()
		if err != nil || st.Signal != "SIGKILL" {
			t.Fatalf("%v %+v", err, st)
		}
	})

	t.Run("context cancel kills the process", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		// stdin that never ends: the kill must not wait for it.
		block := make(chan struct{})
		defer close(block)
		p, err := e.client.Start(cctx, &agent.Cmd{Args: []string{"sleep", "30"}, Stdin: blockingReader(block)})
		if err != nil {
			t.Fatal(err)
		}
		pid := p.PID
		cancel()
		_, err = p.Wait()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait after cancel: %v", err)
		}
		waitFor(t, "the process to die", 5*time.Second, func() bool { return processGone(pid) })
	})

	t.Run("bad signal", func(t *testing.T) {
		p, err := e.client.Start(ctx, &agent.Cmd{Args: []string{"sleep", "30"}})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Kill(ctx)
		if err := p.Signal(ctx, syscall.Signal(99)); !errors.Is(err, agent.ErrInvalid) {
			t.Fatalf("signal 99: %v", err)
		}
	})
}

type blockingReader chan struct{}

func (b blockingReader) Read(p []byte) (int, error) {
	<-b
	return 0, fmt.Errorf("closed")
}

func TestExecTTY(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t, 20*time.Second)
	var out bytes.Buffer
	st, err := e.client.Exec(ctx, &agent.Cmd{Args: []string{"sh", "-c", "tty; test -t 0 && test -t 1 && test -t 2 && echo all-tty; stty size; echo $TERM; echo to-stderr >&2"},
		TTY: true, Rows: 30, Cols: 100, Stdout: &out})
	if err != nil || !st.Success() {
		t.Fatalf("%v %+v", err, st)
	}
	got := strings.ReplaceAll(out.String(), "\r\n", "\n")
	for _, want := range []string{"/dev/pts/", "all-tty\n", "30 100\n", "xterm-256color\n", "to-stderr\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("tty output %q lacks %q", got, want)
		}
	}

	// Input through the terminal, resize while running, EOF by ^D.
	out.Reset()
	pr, pw := ioPipe()
	var mu sync.Mutex
	var buf bytes.Buffer
	p, err := e.client.Start(ctx, &agent.Cmd{Args: []string{"sh", "-c", "read line; echo got:$line; stty size; cat"}, TTY: true, Stdin: pr,
		Stdout: writerFunc(func(b []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return buf.Write(b) })})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Resize(ctx, 50, 132); err != nil {
		t.Fatal(err)
	}
	pw.Write([]byte("hello\n"))
	waitFor(t, "tty echo", 5*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return strings.Contains(buf.String(), "50 132") })
	pw.Close() // ^D ends cat
	st, err = p.Wait()
	if err != nil || !st.Success() {
		t.Fatalf("%v %+v", err, st)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(buf.String(), "got:hello") {
		t.Errorf("output %q", buf.String())
	}
	// Resize of a non-TTY exec is refused.
	q, err := e.client.Start(ctx, &agent.Cmd{Args: []string{"sleep", "30"}})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Kill(ctx)
	if err := q.Resize(ctx, 10, 10); !errors.Is(err, agent.ErrInvalid) {
		t.Fatalf("resize without tty: %v", err)
	}
}

// TestExecConcurrent runs 100 execs at once on one session.
func TestExecConcurrent(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t, 60*time.Second)
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stdout, _, st, err := e.client.Output(ctx, "sh", "-c", fmt.Sprintf("echo %d; exit %d", i, i%7))
			if err != nil {
				errs <- err
				return
			}
			if string(stdout) != fmt.Sprintf("%d\n", i) || st.ExitCode != i%7 {
				errs <- fmt.Errorf("exec %d: stdout %q status %+v", i, stdout, st)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if d := e.dials.Load(); d != 1 {
		t.Errorf("%d dials, want one session for everything", d)
	}
}

// TestExecAsUser runs a process as another user (the agent is root).
func TestExecAsUser(t *testing.T) {
	if syscall.Geteuid() != 0 {
		t.Skip("exec as another user needs root")
	}
	e := newEnv(t)
	uid, gid := uint32(65534), uint32(65534)
	var out bytes.Buffer
	st, err := e.client.Exec(ctxT(t, 10*time.Second), &agent.Cmd{Args: []string{"sh", "-c", "id -u; id -g; id -G"}, UID: &uid, GID: &gid, Stdout: &out})
	if err != nil || !st.Success() {
		t.Fatalf("%v %+v", err, st)
	}
	if out.String() != "65534\n65534\n65534\n" {
		t.Fatalf("identity %q (supplementary groups must be dropped)", out.String())
	}
}
