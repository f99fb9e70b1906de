package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/internal/testbin"
	"github.com/spf13/cobra"
)

// hearthBin builds the hearth binary once per test run.
func hearthBin(t *testing.T) string {
	t.Helper()
	return testbin.Build(t, "cmd/hearth", "hearth")
}

type cli struct {
	t      *testing.T
	bin    string
	socket string
	state  string
}

func (c *cli) run(args ...string) (string, int) {
	c.t.Helper()
	cmd := exec.Command(c.bin, append([]string{"--socket", c.socket, "--state-dir", c.state}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatal(err)
	}
	return out.String(), code
}

func (c *cli) ok(args ...string) string {
	c.t.Helper()
	out, code := c.run(args...)
	if code != 0 {
		c.t.Fatalf("hearth %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// TestEveryCommandHasHelp walks the whole command tree, so a new command
// is covered without editing this test: each has a useful Short, Long and
// Example (cobra's generated completion commands bring their own Long),
// and the built binary prints its help with exit 0.
func TestEveryCommandHasHelp(t *testing.T) {
	bin := hearthBin(t)
	var walk func(c *cobra.Command, path []string)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	n := 0
	walk = func(c *cobra.Command, path []string) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" {
				continue // internal helpers (_uffd, _jail) are not for people
			}
			args := append(append([]string(nil), path...), sub.Name())
			name := strings.Join(args, " ")
			generated := args[0] == "completion" && len(args) > 1
			if len(sub.Short) < 5 || len(sub.Long) < 20 {
				t.Errorf("hearth %s: Short %q / Long %q too thin", name, sub.Short, sub.Long)
			}
			if sub.Example == "" && !generated {
				t.Errorf("hearth %s has no Example", name)
			}
			firstLine := strings.SplitN(sub.Long, "\n", 2)[0]
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				out, err := exec.Command(bin, append(args, "--help")...).CombinedOutput()
				if err != nil || !strings.Contains(string(out), "Usage:") || !strings.Contains(string(out), firstLine) {
					t.Errorf("hearth %s --help: %v\n%s", name, err, out)
				}
			}()
			n++
			walk(sub, args)
		}
	}
	walk(newRoot(), nil)
	wg.Wait()
	if n < 35 {
		t.Fatalf("walked only %d commands", n)
	}
}

// TestUsageAndCompletion checks what scripts rely on besides the VM
// commands: exit 2 for every kind of usage error, and shell completion
// scripts for bash, zsh and fish.
func TestUsageAndCompletion(t *testing.T) {
	bin := hearthBin(t)
	for _, args := range [][]string{{"bogus"}, {"image", "bogus"}, {"start"}, {"rename", "a"}, {"ps", "--bogus"}, {"--output", "yaml", "ps"},
		{"update", "vm1"}, {"update", "vm1", "--drive-limit", "data=bw:fast/s"}, {"exec", "vm1"}} {
		cmd := exec.Command(bin, append([]string{"--socket", "/nonexistent/h.sock"}, args...)...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("hearth %s: %v, want exit 2\n%s", strings.Join(args, " "), err, out)
		}
	}
	for shell, marker := range map[string]string{"bash": "complete -o default -F __start_hearth hearth", "zsh": "#compdef hearth", "fish": "complete -c hearth"} {
		out, err := exec.Command(bin, "completion", shell).Output()
		if err != nil || !strings.Contains(string(out), marker) {
			t.Errorf("completion %s: %v, lacks %q", shell, err, marker)
		}
	}
	if out, err := exec.Command(bin, "version").Output(); err != nil || !strings.HasPrefix(string(out), "hearth ") {
		t.Errorf("version: %v %q", err, out)
	}
}

func TestDaemonAndCLI(t *testing.T) {
	bin := hearthBin(t)
	dir := t.TempDir()
	sockDir, _ := os.MkdirTemp("", "hcli")
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	c := &cli{t: t, bin: bin, socket: filepath.Join(sockDir, "h.sock"), state: filepath.Join(dir, "state")}
	k, r := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.ext4")
	os.WriteFile(k, []byte("k"), 0o600)
	os.WriteFile(r, []byte("r"), 0o600)

	// Without a daemon, commands that need one say so.
	if out, code := c.run("start", "x"); code != 1 || !strings.Contains(out, "hearth serve") {
		t.Fatalf("no daemon: exit %d: %s", code, out)
	}

	serve := exec.Command(bin, "serve", "--backend", "mem", "--socket", c.socket, "--state-dir", c.state)
	var serveOut bytes.Buffer
	serve.Stdout, serve.Stderr = &serveOut, &serveOut
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- serve.Wait() }()
	t.Cleanup(func() {
		serve.Process.Kill()
		<-done
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(c.socket); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not start: %s", serveOut.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if fi, _ := os.Stat(c.socket); fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v", fi.Mode().Perm())
	}

	c.ok("create", "vm1", "--kernel", k, "--rootfs", r, "--cpus", "2", "--memory", "256", "--label", "team=a")
	c.ok("start", "vm1")
	c.ok("pause", "vm1")
	c.ok("resume", "vm1")
	c.ok("snapshot", "create", "vm1", "warm")
	c.ok("restore", "warm", "clone1")
	c.ok("rename", "clone1", "tenant1")
	var views []hearth.View
	if err := json.Unmarshal([]byte(c.ok("ps", "-o", "json")), &views); err != nil || len(views) != 2 {
		t.Fatalf("ps json: %v %+v", err, views)
	}
	if out := c.ok("ps"); !strings.Contains(out, "tenant1") || !strings.Contains(out, "running") {
		t.Fatalf("ps: %s", out)
	}
	if out := c.ok("snapshot", "ls"); !strings.Contains(out, "warm") {
		t.Fatalf("snapshot ls: %s", out)
	}
	if out := c.ok("inspect", "vm1"); !strings.Contains(out, `"vcpus": 2`) {
		t.Fatalf("inspect: %s", out)
	}
	// Exit codes: 3 not found, 4 conflict, 2 bad input.
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"start", "nope"}, 3},
		{[]string{"pause", "vm1", "--output", "json"}, 0},
		{[]string{"pause", "vm1"}, 4},
		{[]string{"create", "vm1", "--kernel", k, "--rootfs", r}, 4},
		{[]string{"create", "../bad", "--kernel", k, "--rootfs", r}, 2},
		{[]string{"create", "x", "--label", "nokey"}, 2},
		{[]string{"ps", "--output", "yaml"}, 2},
	} {
		if out, code := c.run(tc.args...); code != tc.code {
			t.Errorf("hearth %s: exit %d, want %d\n%s", strings.Join(tc.args, " "), code, tc.code, out)
		}
	}
	c.ok("logs", "vm1", "-n", "5")
	if out := c.ok("stats", "vm1", "-o", "json"); !strings.Contains(out, `"backend": "mem"`) {
		t.Fatalf("stats: %s", out)
	}
	if out := scrape(t, c.socket); !strings.Contains(out, "hearth_lifecycle_step_seconds_bucket") {
		t.Fatalf("/metrics lacks the step histogram:\n%.2000s", out)
	}
	c.ok("stop", "vm1")
	c.ok("rm", "vm1", "tenant1")
	c.ok("snapshot", "verify", "warm")
	if out := c.ok("gc", "--keep-per-vm", "1"); strings.TrimSpace(out) != "" {
		t.Fatalf("gc removed %q with one snapshot", out)
	}
	c.ok("snapshot", "rm", "warm")
	if out := c.ok("ps", "-a"); strings.Contains(out, "vm1") {
		t.Fatalf("left after rm: %s", out)
	}

	// SIGTERM: the daemon exits cleanly and removes its socket.
	serve.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("daemon exit: %v\n%s", err, serveOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("daemon did not exit on SIGTERM")
	}
	done <- nil // for the cleanup
	if _, err := os.Stat(c.socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("socket left behind")
	}
}

// scrape fetches the daemon's Prometheus metrics over its socket.
func scrape(t *testing.T, socket string) string {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	resp, err := c.Get("http://hearth/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %s %s", resp.Status, b)
	}
	return string(b)
}

// buildTool builds a command of this module (run from cmd/hearth).
func buildTool(t *testing.T, pkg, name string) string {
	t.Helper()
	dir := t.TempDir()
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, b)
	}
	return out
}
