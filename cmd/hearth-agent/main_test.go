package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/agent"
	"github.com/hearth-vm/hearth/internal/testbin"
	"github.com/hearth-vm/hearth/vsock"
)

// agentBin is this command, built static once; simBin the Firecracker
// simulator.
var agentBin, simBin string

func TestMain(m *testing.M) {
	var err error
	if agentBin, err = testbin.Path("cmd/hearth-agent", "hearth-agent"); err == nil {
		simBin, err = testbin.Path("cmd/hearth-fcsim", "firecracker")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		testbin.Cleanup()
		os.Exit(1)
	}
	testbin.Main(m)
}

const token = "process-test-token-42"

func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "ha")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

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

// TestKernelCmdline: --cmdline wins; as the simulator's guest the boot
// args in the environment stand in for /proc/cmdline.
func TestKernelCmdline(t *testing.T) {
	file := filepath.Join(shortDir(t), "cmdline")
	os.WriteFile(file, []byte("hearth.token=from-file-123\n"), 0o600)
	t.Setenv(envFcsimBootArgs, "console=ttyS0 hearth.token=from-boot-args")
	t.Setenv("HEARTH_FCSIM_GUEST_VSOCK_DIR", "")
	tests := []struct {
		args     []string
		guestDir string
		want     string
		ok       bool
	}{
		{[]string{"--cmdline", file}, "/x", "hearth.token=from-file-123\n", true},
		{nil, "/x", "console=ttyS0 hearth.token=from-boot-args", true},
		{[]string{"--cmdline", file + ".none"}, "/x", "", false},
	}
	for _, tt := range tests {
		t.Setenv("HEARTH_FCSIM_GUEST_VSOCK_DIR", tt.guestDir)
		o, err := parseFlags(tt.args, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := kernelCmdline(o)
		if got != tt.want || ok != tt.ok {
			t.Errorf("%q: %q %v", tt.args, got, ok)
		}
	}
}

func TestFcsimStateDefaults(t *testing.T) {
	t.Setenv("HEARTH_FCSIM_GUEST_VSOCK_DIR", "/sim/g")
	o, err := parseFlags([]string{"--env-file", "/x/env"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.tokenFile != "/sim/g/hearth-state/token" || o.secretsDir != "/sim/g/hearth-state/secrets" || o.envFile != "/x/env" {
		t.Errorf("%+v", o)
	}
	t.Setenv("HEARTH_FCSIM_GUEST_VSOCK_DIR", "")
	o, _ = parseFlags(nil, io.Discard)
	if o.tokenFile != "/run/hearth/token" || o.secretsDir != "/run/hearth/secrets" {
		t.Errorf("guest defaults %+v", o)
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		args []string
		ok   bool
	}{
		{nil, true},
		{[]string{"--listen", "vsock:1024", "--listen", "unix:/tmp/a.sock", "--line-listen", "vsock:5555"}, true},
		{[]string{"--listen", "tcp:80"}, false},
		{[]string{"--line-listen", "vsock:0"}, false},
		{[]string{"--init", "sometimes"}, false},
		{[]string{"--system", "real"}, false},
		{[]string{"stray"}, false},
		{[]string{"--nope"}, false},
	}
	for _, tt := range tests {
		o, err := parseFlags(tt.args, io.Discard)
		if (err == nil) != tt.ok {
			t.Errorf("%q: %v", tt.args, err)
		}
		if err == nil && len(tt.args) > 0 && tt.args[0] == "--listen" && len(o.listens) != 2 {
			t.Errorf("listens %v", o.listens)
		}
	}
	var stderr bytes.Buffer
	if code := run([]string{"hearth-agent", "--bogus"}, &stderr); code != 2 {
		t.Errorf("bad flag exit %d", code)
	}
}

// agentProc is hearth-agent running as a host process.
type agentProc struct {
	cmd    *exec.Cmd
	dir    string
	sock   string
	line   string
	stderr *syncBuffer
	done   chan struct{}
}

func startAgent(t *testing.T, extra []string, mod func(*exec.Cmd)) *agentProc {
	t.Helper()
	dir := shortDir(t)
	a := &agentProc{dir: dir, sock: filepath.Join(dir, "a.sock"), line: filepath.Join(dir, "l.sock"), stderr: &syncBuffer{}, done: make(chan struct{})}
	args := []string{
		"--listen", "unix:" + a.sock, "--line-listen", "unix:" + a.line,
		"--token-file", filepath.Join(dir, "token"), "--env-file", filepath.Join(dir, "env"),
		"--secrets-dir", filepath.Join(dir, "secrets"), "--system", "simulated", "--log-level", "debug",
	}
	args = append(args, extra...)
	a.cmd = exec.Command(agentBin, args...)
	a.cmd.Stderr = a.stderr
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if mod != nil {
		mod(a.cmd)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = a.cmd.Wait(); close(a.done) }()
	t.Cleanup(func() {
		select {
		case <-a.done:
		default:
			_ = a.cmd.Process.Kill()
			<-a.done
		}
		if t.Failed() {
			t.Logf("agent stderr:\n%s", a.stderr.String())
		}
	})
	return a
}

func (a *agentProc) client(t *testing.T, tok string) *agent.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := agent.Dial(ctx, &vsock.UnixDialer{Path: a.sock}, tok)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (a *agentProc) wait(t *testing.T, d time.Duration) *os.ProcessState {
	t.Helper()
	select {
	case <-a.done:
		return a.cmd.ProcessState
	case <-time.After(d):
		t.Fatalf("agent did not exit within %s", d)
		return nil
	}
}

func linePing(t *testing.T, path string) string {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, `{"op":"ping","id":"lp"}`+"\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return line
}

// TestServiceMode runs the binary as a service: token from the kernel
// command line, both protocols, a clean stop on SIGTERM.
func TestServiceMode(t *testing.T) {
	cmdline := filepath.Join(shortDir(t), "cmdline")
	os.WriteFile(cmdline, []byte("console=ttyS0 hearth.token="+token+"\n"), 0o600)
	a := startAgent(t, []string{"--cmdline", cmdline, "--init", "never"}, nil)
	c := a.client(t, token)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	in, err := c.Info(ctx)
	if err != nil || in.PID1 {
		t.Fatalf("info %+v %v", in, err)
	}
	out, _, st, err := c.Output(ctx, "sh", "-c", "echo hi from $$")
	if err != nil || !st.Success() || !strings.HasPrefix(string(out), "hi from ") {
		t.Fatalf("exec %q %+v %v", out, st, err)
	}
	if err := a.client(t, "not-the-token-123").Ping(ctx); !errors.Is(err, agent.ErrUnauthorized) {
		t.Fatalf("wrong token: %v", err)
	}
	// The simulated system never touches the host clock.
	if _, err := c.SetClock(ctx, time.Unix(0, 1)); err != nil {
		t.Fatal(err)
	}
	if time.Now().Year() < 2020 {
		t.Fatal("the host clock moved")
	}
	if l := linePing(t, a.line); !strings.Contains(l, `"ok":true`) {
		t.Fatalf("line ping %q", l)
	}
	// A rotated token survives an agent restart through the token file.
	if err := c.RotateToken(ctx, "rotated-token-xyz-1"); err != nil {
		t.Fatal(err)
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	if st := a.wait(t, 10*time.Second); st.ExitCode() != 0 {
		t.Fatalf("exit after SIGTERM: %v\n%s", st, a.stderr.String())
	}
	b, _ := os.ReadFile(filepath.Join(a.dir, "token"))
	if strings.TrimSpace(string(b)) != "rotated-token-xyz-1" {
		t.Fatalf("token file %q", b)
	}
}

func TestNoListener(t *testing.T) {
	var stderr syncBuffer
	cmd := exec.Command(agentBin, "--listen", "unix:/nonexistent-dir/x.sock", "--no-auth", "--secrets-dir", filepath.Join(shortDir(t), "s"), "--init", "never", "--cmdline", "/nonexistent")
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(stderr.String(), "no listener") {
		t.Fatalf("%v: %s", err, stderr.String())
	}
	cmd = exec.Command(agentBin, "--listen", "unix:/tmp/x.sock", "--secrets-dir", filepath.Join(shortDir(t), "s"), "--init", "never", "--cmdline", "/nonexistent", "--token-file", "")
	out, err := cmd.CombinedOutput()
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "no token") {
		t.Fatalf("without a token: %v: %s", err, out)
	}
}

// procChildren lists the children of pid from /proc, zombies (state Z)
// or live ones.
func procChildren(pid int, zombies bool) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		var state string
		ppid := -1
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "State:"); ok {
				state = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(line, "PPid:"); ok {
				ppid, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		if ppid == pid && strings.HasPrefix(state, "Z") == zombies {
			out = append(out, n)
		}
	}
	return out
}

// TestInitInPIDNamespace runs the agent as PID 1 of new PID, network and
// UTS namespaces (so hostname and hearth.ip change only those), without
// mounting anything: it must supervise the serving agent, reap orphans,
// restart a killed agent, and shut down through reboot(2), which in a
// PID namespace ends its init with SIGINT (power off) or SIGHUP (reboot).
func TestInitInPIDNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("PID namespaces need root")
	}
	cmdline := filepath.Join(shortDir(t), "cmdline")
	os.WriteFile(cmdline, []byte("hearth.token="+token+" hearth.hostname=hearth-test hearth.iface=lo hearth.ip=192.0.2.5/24\n"), 0o600)
	for _, how := range []string{"poweroff", "reboot"} {
		t.Run(how, func(t *testing.T) {
			a := startAgent(t, []string{"--cmdline", cmdline, "--init-mount=false"}, func(c *exec.Cmd) {
				c.SysProcAttr.Cloneflags = syscall.CLONE_NEWPID | syscall.CLONE_NEWNET | syscall.CLONE_NEWUTS
			})
			c := a.client(t, token)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			in, err := c.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !in.PID1 || in.Hostname != "hearth-test" {
				t.Errorf("info %+v", in)
			}
			addrOK := false
			for _, ifc := range in.Ifaces {
				for _, ad := range ifc.Addrs {
					addrOK = addrOK || (ifc.Name == "lo" && ad == "192.0.2.5/24")
				}
			}
			if !addrOK {
				t.Errorf("hearth.ip not applied: %+v", in.Ifaces)
			}
			initPid := a.cmd.Process.Pid

			// An orphan: the inner shell outlives its parent and is
			// reparented to init, which must reap it.
			if _, _, st, err := c.Output(ctx, "sh", "-c", "sh -c 'sleep 0.2' & exit 0"); err != nil || !st.Success() {
				t.Fatalf("%+v %v", st, err)
			}
			time.Sleep(600 * time.Millisecond)
			if z := procChildren(initPid, true); len(z) != 0 {
				t.Errorf("unreaped zombies under init: %v", z)
			}

			if how == "poweroff" {
				// Kill the serving agent: init restarts it.
				kids := procChildren(initPid, false)
				if len(kids) != 1 {
					t.Fatalf("init children %v", kids)
				}
				syscall.Kill(kids[0], syscall.SIGKILL)
				if err := c.WaitReady(ctx); err != nil {
					t.Fatalf("agent not back after a crash: %v", err)
				}
				if k := procChildren(initPid, false); len(k) != 1 || k[0] == kids[0] {
					t.Errorf("children after restart %v (before %v)", k, kids)
				}
				if err := c.PowerOff(ctx); err != nil {
					t.Fatal(err)
				}
			} else {
				a.cmd.Process.Signal(syscall.SIGTERM)
			}
			st := a.wait(t, 15*time.Second)
			ws := st.Sys().(syscall.WaitStatus)
			want := syscall.SIGINT
			if how == "reboot" {
				want = syscall.SIGHUP
			}
			if !ws.Signaled() || ws.Signal() != want {
				t.Fatalf("init ended with %v, want %v\n%s", st, want, a.stderr.String())
			}
			if !strings.Contains(a.stderr.String(), "init: shutting down") {
				t.Errorf("no shutdown in the log")
			}
		})
	}
}

// TestFcsimGuest runs the agent as the Firecracker simulator's guest
// process and drives it through hybrid vsock: the dialer retries until
// the agent listens, the line protocol answers on port 5555, and a
// snapshot, which resets every vsock connection, is survived by the
// client reconnecting.
func TestFcsimGuest(t *testing.T) {
	dir := shortDir(t)
	api, uds, guestDir := filepath.Join(dir, "api.sock"), filepath.Join(dir, "v.sock"), filepath.Join(dir, "g")
	// State defaults to <guest dir>/hearth-state (see TestFcsimStateDefaults).
	guestCmd := fmt.Sprintf(`[%q,"--token",%q,"--init","never","--log-level","debug"]`, agentBin, token)
	var simErr syncBuffer
	sim := exec.Command(simBin, "--api-sock", api, "--id", "agent-e2e")
	sim.Env = append(os.Environ(), "HEARTH_FCSIM_GUEST_CMD="+guestCmd, "HEARTH_FCSIM_GUEST_VSOCK_DIR="+guestDir)
	sim.Stdout, sim.Stderr = &simErr, &simErr
	sim.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := sim.Start(); err != nil {
		t.Fatal(err)
	}
	simDone := make(chan struct{})
	go func() { _ = sim.Wait(); close(simDone) }()
	t.Cleanup(func() {
		sim.Process.Signal(syscall.SIGTERM)
		select {
		case <-simDone:
		case <-time.After(5 * time.Second):
			sim.Process.Kill()
			<-simDone
		}
		if t.Failed() {
			t.Logf("fcsim output:\n%s", simErr.String())
		}
	})
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&vsock.UnixDialer{Path: api, Timeout: 10 * time.Second}).DialContext(ctx)
	}}}
	call := func(method, path, body string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://fc"+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
		}
	}
	for _, f := range []string{"vmlinux", "rootfs"} {
		os.WriteFile(filepath.Join(dir, f), []byte("fake"), 0o600)
	}
	call("PUT", "/vsock", fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, uds))
	call("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":16}`)
	call("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"boot_args":"console=ttyS0 reboot=k hearth.token=%s"}`, filepath.Join(dir, "vmlinux"), token))
	call("PUT", "/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true,"is_read_only":false}`, filepath.Join(dir, "rootfs")))
	call("PUT", "/actions", `{"action_type":"InstanceStart"}`)

	// The guest process starts now; the dialer retries until it listens.
	var dials int
	var mu sync.Mutex
	hd := &vsock.HybridDialer{Path: uds, Port: agent.DefaultPort, Timeout: 10 * time.Second}
	dialer := vsock.DialFunc(func(ctx context.Context) (net.Conn, error) {
		mu.Lock()
		dials++
		mu.Unlock()
		return hd.DialContext(ctx)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := agent.Dial(ctx, dialer, token)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	out, _, st, err := c.Output(ctx, "echo", "through vsock")
	if err != nil || string(out) != "through vsock\n" || !st.Success() {
		t.Fatalf("exec %q %+v %v", out, st, err)
	}
	if _, err := c.SetEnv(ctx, map[string]string{"FROM": "host"}); err != nil {
		t.Fatal(err)
	}

	// The seed's line protocol on its own port.
	lc, err := (&vsock.HybridDialer{Path: uds, Port: agent.DefaultLinePort}).DialContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(lc, `{"op":"set_env","id":"l1","env":{"LINE":"yes"},"token":%q}`+"\n", token)
	lc.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(lc).ReadString('\n')
	lc.Close()
	if err != nil || !strings.Contains(line, `"ok":true`) {
		t.Fatalf("line set_env: %q %v", line, err)
	}

	// Snapshot: the device resets every connection.
	call("PATCH", "/vm", `{"state":"Paused"}`)
	call("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_type":"Full","snapshot_path":%q,"mem_file_path":%q}`, filepath.Join(dir, "vmstate"), filepath.Join(dir, "mem")))
	call("PATCH", "/vm", `{"state":"Resumed"}`)
	if err := c.AfterRestore(ctx, "after-restore-token-1"); err != nil {
		t.Fatal(err)
	}
	env, err := c.Env(ctx)
	if err != nil || env["FROM"] != "host" || env["LINE"] != "yes" {
		t.Fatalf("env after the snapshot %v %v", env, err)
	}
	out, _, st, err = c.Output(ctx, "sh", "-c", "echo $FROM $LINE")
	if err != nil || string(out) != "host yes\n" || !st.Success() {
		t.Fatalf("exec after snapshot %q %+v %v", out, st, err)
	}
	if b, err := os.ReadFile(filepath.Join(guestDir, "hearth-state", "token")); err != nil || string(b) != "after-restore-token-1\n" {
		t.Errorf("rotated token in the guest's state dir: %q %v", b, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if dials != 2 {
		t.Errorf("%d dials, want 2 (the first connection, one after the snapshot)", dials)
	}
}
