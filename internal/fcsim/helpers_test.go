package fcsim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// simBin is the hearth-fcsim binary built once for this test binary;
// fcBin is a hard link to it named "firecracker" (the jailer insists).
var simBin, fcBin string

var raceSim = os.Getenv("FCSIM_RACE") == "1"

func TestMain(m *testing.M) {
	// The test binary doubles as a guest agent for HEARTH_FCSIM_GUEST_CMD.
	if os.Getenv("FCSIM_TEST_GUEST_AGENT") == "1" {
		os.Exit(runTestGuestAgent())
	}
	dir, err := os.MkdirTemp("", "fcsimbin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	simBin = filepath.Join(dir, "hearth-fcsim")
	cmd := exec.Command("go", "build", "-o", simBin, "github.com/hearth-vm/hearth/cmd/hearth-fcsim")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if raceSim {
		// FCSIM_RACE=1 runs the simulator itself under the race
		// detector (needs cgo, so the jailer tests skip: the binary is
		// no longer static).
		cmd = exec.Command("go", "build", "-race", "-o", simBin, "github.com/hearth-vm/hearth/cmd/hearth-fcsim")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build hearth-fcsim:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	fcBin = filepath.Join(dir, "firecracker")
	if err := os.Link(simBin, fcBin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// runTestGuestAgent listens on port 52 in the guest vsock dir and answers
// each connection with "agent:<vm id>:" followed by an echo of its input.
func runTestGuestAgent() int {
	dir := os.Getenv(EnvGuestVsockDir)
	ln, err := net.Listen("unix", filepath.Join(dir, "52.sock"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "guest agent:", err)
		return 1
	}
	fmt.Println("guest agent listening in", dir)
	for {
		c, err := ln.Accept()
		if err != nil {
			return 0
		}
		go func() {
			defer c.Close()
			fmt.Fprintf(c, "agent:%s:", os.Getenv("HEARTH_FCSIM_VM_ID"))
			_, _ = io.Copy(c, c)
		}()
	}
}

// syncBuffer collects a child's output safely.
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

// simProc is one running hearth-fcsim process.
type simProc struct {
	t      *testing.T
	dir    string // short temp dir (unix socket paths are limited)
	sock   string
	reqlog string
	cmd    *exec.Cmd
	stdout *syncBuffer
	stderr *syncBuffer
	client *http.Client
	exited chan struct{}
	state  *os.ProcessState
}

type simConfig struct {
	args     []string
	env      []string
	noWait   bool // do not wait for the API socket
	noSocket bool // do not pass --api-sock
}

// shortDir makes a temp dir with a short path for unix sockets.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "fcs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func unixClient(sock string, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
		},
	}
}

func startSim(t *testing.T, cfg simConfig) *simProc {
	t.Helper()
	dir := shortDir(t)
	p := &simProc{t: t, dir: dir, sock: filepath.Join(dir, "api.sock"), reqlog: filepath.Join(dir, "req.log"),
		stdout: &syncBuffer{}, stderr: &syncBuffer{}, exited: make(chan struct{})}
	args := []string{"--request-log", p.reqlog}
	if !cfg.noSocket {
		args = append(args, "--api-sock", p.sock)
	}
	args = append(args, cfg.args...)
	p.cmd = exec.Command(simBin, args...)
	p.cmd.Env = append(os.Environ(), cfg.env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.state = p.cmd.ProcessState
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if strings.Contains(p.stderr.String(), "WARNING: DATA RACE") {
			t.Errorf("data race in the simulator")
		}
		if t.Failed() {
			t.Logf("fcsim stderr:\n%s", p.stderr.String())
		}
	})
	p.client = unixClient(p.sock, 10*time.Second)
	if !cfg.noWait {
		p.waitReady()
	}
	return p
}

// waitReady polls GET / with backoff, like hearth's client does.
func (p *simProc) waitReady() {
	p.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	delay := 2 * time.Millisecond
	for time.Now().Before(deadline) {
		if _, err := os.Stat(p.sock); err == nil {
			if st, _ := p.do("GET", "/", ""); st == 200 {
				return
			}
		}
		select {
		case <-p.exited:
			p.t.Fatalf("fcsim exited before becoming ready: %v\n%s", p.state, p.stderr.String())
		case <-time.After(delay):
		}
		delay = min(delay*2, 100*time.Millisecond)
	}
	p.t.Fatalf("fcsim not ready:\n%s", p.stderr.String())
}

func (p *simProc) do(method, path, body string) (int, []byte) {
	p.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://localhost"+path, r)
	if err != nil {
		p.t.Fatal(err)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	// Firecracker frames every answer with a body by Content-Length.
	if len(b) > 0 && resp.ContentLength != int64(len(b)) {
		p.t.Errorf("%s %s: Content-Length %d for a %d-byte body", method, path, resp.ContentLength, len(b))
	}
	return resp.StatusCode, b
}

// must performs a request that must succeed with 204 (or 200 for GET).
func (p *simProc) must(method, path, body string) []byte {
	p.t.Helper()
	st, b := p.do(method, path, body)
	want := 204
	if method == "GET" {
		want = 200
	}
	if st != want {
		p.t.Fatalf("%s %s: status %d, want %d: %s", method, path, st, want, b)
	}
	return b
}

// fault performs a request that must fail with 400 and a fault_message
// containing substr.
func (p *simProc) fault(method, path, body, substr string) {
	p.t.Helper()
	st, b := p.do(method, path, body)
	if st != 400 {
		p.t.Fatalf("%s %s: status %d, want 400: %s", method, path, st, b)
	}
	var e struct {
		FaultMessage string `json:"fault_message"`
	}
	if err := json.Unmarshal(b, &e); err != nil || e.FaultMessage == "" {
		p.t.Fatalf("%s %s: no fault_message in %q", method, path, b)
	}
	if !strings.Contains(e.FaultMessage, substr) {
		p.t.Fatalf("%s %s: fault_message %q does not contain %q", method, path, e.FaultMessage, substr)
	}
}

func (p *simProc) state_() string {
	p.t.Helper()
	var info struct{ State string }
	if err := json.Unmarshal(p.must("GET", "/", ""), &info); err != nil {
		p.t.Fatal(err)
	}
	return info.State
}

// waitExit waits for the process to exit and returns its exit code.
func (p *simProc) waitExit(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.exited:
	case <-time.After(timeout):
		p.t.Fatalf("fcsim did not exit within %s", timeout)
	}
	if ws, ok := p.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return p.state.ExitCode()
}

type logLine struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body"`
	Status int             `json:"status"`
	Fault  string          `json:"fault"`
	Event  string          `json:"event"`
}

func readRequestLog(t *testing.T, path string) []logLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []logLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l logLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("bad request log line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

// vmFiles makes a kernel, a rootfs and a data disk.
type vmFiles struct{ kernel, rootfs, data string }

func makeVMFiles(t *testing.T, dir string) vmFiles {
	t.Helper()
	f := vmFiles{kernel: filepath.Join(dir, "vmlinux"), rootfs: filepath.Join(dir, "rootfs.ext4"), data: filepath.Join(dir, "data.ext4")}
	for _, p := range []string{f.kernel, f.rootfs, f.data} {
		if err := os.WriteFile(p, []byte("fake"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func (f vmFiles) bootSource() string {
	return fmt.Sprintf(`{"kernel_image_path":%q,"boot_args":"console=ttyS0 reboot=k panic=1"}`, f.kernel)
}

func (f vmFiles) rootDrive() string {
	return fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true,"is_read_only":false}`, f.rootfs)
}

// bootMinimal configures and starts a VM with the least it needs.
func (p *simProc) bootMinimal(f vmFiles, memMiB int) {
	p.t.Helper()
	p.must("PUT", "/machine-config", fmt.Sprintf(`{"vcpu_count":1,"mem_size_mib":%d}`, memMiB))
	p.must("PUT", "/boot-source", f.bootSource())
	p.must("PUT", "/drives/rootfs", f.rootDrive())
	p.must("PUT", "/actions", `{"action_type":"InstanceStart"}`)
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func requireRoot(t *testing.T, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("%s needs root (running as uid %d)", what, os.Geteuid())
	}
}
