package agent_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/agent/server"
	"github.com/hearth-vm/hearth/vsock"
)

const testToken = "test-token-0123456789"

// fakeSystem records power, clock and entropy calls.
type fakeSystem struct {
	mu        sync.Mutex
	power     []string
	clock     []time.Time
	entropy   [][]byte
	hostnames []string
}

func (f *fakeSystem) Power(a string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.power = append(f.power, a)
	return nil
}

func (f *fakeSystem) SetClock(t time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clock = append(f.clock, t)
	return nil
}

func (f *fakeSystem) SetHostname(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hostnames = append(f.hostnames, name)
	return nil
}

func (f *fakeSystem) AddEntropy(b []byte) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entropy = append(f.entropy, append([]byte(nil), b...))
	return true, nil
}

func (f *fakeSystem) powerCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.power...)
}

// testEnv is an in-process agent on a unix socket and a client of it.
type testEnv struct {
	t      *testing.T
	dir    string // state dir (env file, secrets)
	sock   string
	srv    *server.Server
	cfg    server.Config
	sys    *fakeSystem
	dials  atomic.Int64
	client *agent.Client
}

// shortDir makes a temp dir with a short path: unix socket paths are
// limited to 107 bytes.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "ag")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func newEnv(t *testing.T, mod ...func(*server.Config)) *testEnv {
	t.Helper()
	dir := shortDir(t)
	e := &testEnv{t: t, dir: dir, sock: filepath.Join(dir, "a.sock"), sys: &fakeSystem{}}
	e.cfg = server.Config{
		Token:      testToken,
		EnvFile:    filepath.Join(dir, "env"),
		SecretsDir: filepath.Join(dir, "secrets"),
		System:     e.sys,
		Version:    "test",
	}
	for _, m := range mod {
		m(&e.cfg)
	}
	srv, err := server.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	ln, err := server.ListenUnix(e.sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})
	e.client = e.newClient(testToken)
	return e
}

// dialer counts dials, so tests can tell reconnects from reuse.
func (e *testEnv) dialer() agent.Dialer {
	ud := &vsock.UnixDialer{Path: e.sock, Timeout: 5 * time.Second}
	return vsock.DialFunc(func(ctx context.Context) (net.Conn, error) {
		e.dials.Add(1)
		return ud.DialContext(ctx)
	})
}

func (e *testEnv) newClient(token string) *agent.Client {
	e.t.Helper()
	c, err := agent.Dial(context.Background(), e.dialer(), token)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// processGone reports whether pid no longer exists (or is a zombie not
// yet reaped, which the agent does right after).
func processGone(pid int) bool {
	err := syscall.Kill(pid, 0)
	if errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, _ := os.ReadFile(filepath.Join("/proc", itoa(pid), "stat"))
	return len(b) == 0
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for n >= 10 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	i--
	b[i] = byte('0' + n)
	return string(b[i:])
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cutProxy forwards unix connections to target and can cut them all,
// like a snapshot resetting the vsock device.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(shortDir(t), "p.sock"))
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("unix", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	return p
}

func (p *cutProxy) path() string { return p.ln.Addr().String() }

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func ioPipe() (*io.PipeReader, *io.PipeWriter) { return io.Pipe() }

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func countingDialer(path string, mu *sync.Mutex, n *int) agent.Dialer {
	ud := &vsock.UnixDialer{Path: path, Timeout: 500 * time.Millisecond}
	return vsock.DialFunc(func(ctx context.Context) (net.Conn, error) {
		mu.Lock()
		*n++
		mu.Unlock()
		return ud.DialContext(ctx)
	})
}
