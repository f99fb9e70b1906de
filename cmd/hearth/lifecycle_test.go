package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-vm/hearth"
	"github.com/hearth-vm/hearth/rootfs"
)

// daemonProc is a `hearth serve` started by a test.
type daemonProc struct {
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan error
}

// startDaemon runs `hearth serve` for c with extra arguments and
// environment, waits for its socket, and stops it (SIGTERM) at cleanup.
func startDaemon(t *testing.T, c *cli, env []string, args ...string) *daemonProc {
	t.Helper()
	cmd := exec.Command(c.bin, append([]string{"serve", "--socket", c.socket, "--state-dir", c.state}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	d := &daemonProc{cmd: cmd, out: &bytes.Buffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = d.out, d.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- cmd.Wait() }()
	t.Cleanup(func() { d.stop(t) })
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(c.socket); err == nil {
			return d
		}
		select {
		case err := <-d.done:
			d.done <- err
			t.Fatalf("daemon exited: %v\n%s", err, d.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not start: %s", d.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits (idempotent).
func (d *daemonProc) stop(t *testing.T) {
	if d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		d.done <- err
	case <-time.After(15 * time.Second):
		d.cmd.Process.Kill()
		t.Errorf("daemon ignored SIGTERM:\n%s", d.out)
		d.done <- <-d.done
	}
}

// runEnv runs the binary with extra environment; it returns stdout and
// stderr apart, and the exit code.
func (c *cli) runEnv(env []string, args ...string) (stdout, stderr string, code int) {
	c.t.Helper()
	cmd := exec.Command(c.bin, append([]string{"--socket", c.socket, "--state-dir", c.state}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatal(err)
	}
	return o.String(), e.String(), code
}

// json runs a command with -o json and decodes its standard output into
// v: the output of every command that has JSON must parse.
func (c *cli) json(v any, args ...string) {
	c.t.Helper()
	out, errOut, code := c.runEnv(nil, append([]string{"-o", "json"}, args...)...)
	if code != 0 {
		c.t.Fatalf("hearth -o json %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	// Decode into a zero value: fields the output leaves out must not
	// keep what an earlier command put there.
	rv := reflect.ValueOf(v).Elem()
	rv.Set(reflect.Zero(rv.Type()))
	if err := json.Unmarshal([]byte(out), v); err != nil {
		c.t.Fatalf("hearth -o json %s: output does not parse: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (c *cli) code(want int, args ...string) string {
	c.t.Helper()
	out, code := c.run(args...)
	if code != want {
		c.t.Fatalf("hearth %s: exit %d, want %d\n%s", strings.Join(args, " "), code, want, out)
	}
	return out
}

// eventLog runs `hearth events -o json` in the background and collects
// the events it prints.
type eventLog struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	seen []hearth.Event
	done chan struct{}
}

func (c *cli) events(t *testing.T) *eventLog {
	t.Helper()
	cmd := exec.Command(c.bin, "--socket", c.socket, "-o", "json", "events")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l := &eventLog{cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var e hearth.Event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Errorf("event line %q: %v", sc.Text(), err)
				continue
			}
			l.mu.Lock()
			l.seen = append(l.seen, e)
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return l
}

// waitFor returns once an event of typ for vm arrived.
func (l *eventLog) waitFor(t *testing.T, vm, typ string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		for _, e := range l.seen {
			if e.VM == vm && e.Type == typ {
				l.mu.Unlock()
				return
			}
		}
		l.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %s event for %s; seen %+v", typ, vm, l.seen)
}

// shortDir is a temporary directory near the root: unix socket paths are
// limited to 108 bytes.
func shortDir(t *testing.T, prefix string) string {
	t.Helper()
	d, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// TestCLILifecycleMem drives every VM, snapshot and image command of the
// built binary through a daemon on the in-memory backend, parsing the
// JSON of each and checking exit codes.
func TestCLILifecycleMem(t *testing.T) {
	dir := shortDir(t, "hlm")
	c := &cli{t: t, bin: hearthBin(t), socket: filepath.Join(dir, "h.sock"), state: filepath.Join(dir, "s")}
	k, r, data := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.ext4"), filepath.Join(dir, "data.img")
	for _, f := range []string{k, r, data} {
		os.WriteFile(f, []byte("x"), 0o600)
	}
	startDaemon(t, c, nil, "--backend", "mem")
	ev := c.events(t)

	var views []hearth.View
	c.json(&views, "ps")
	if len(views) != 0 {
		t.Fatalf("fresh daemon lists %+v", views)
	}
	var ver map[string]string
	c.json(&ver, "version")
	if ver["version"] == "" {
		t.Fatalf("version: %v", ver)
	}
	// Commands acting on several names print those that succeeded.
	var done []string
	names := func(want ...string) {
		t.Helper()
		if strings.Join(done, ",") != strings.Join(want, ",") {
			t.Fatalf("done %v, want %v", done, want)
		}
	}
	var v hearth.View
	c.json(&v, "create", "vm1", "--kernel", k, "--rootfs", r, "--memory", "64", "--drive", "id=data,path="+data, "--label", "app=web")
	if v.Status != hearth.StatusCreated || v.Spec.Labels["app"] != "web" {
		t.Fatalf("create: %+v", v)
	}
	c.code(4, "update", "vm1", "--drive-limit", "data=bw:1M/s") // not booted yet
	for _, step := range []struct {
		verb string
		want hearth.Status
	}{{"start", hearth.StatusRunning}, {"pause", hearth.StatusPaused}, {"resume", hearth.StatusRunning}} {
		c.json(&v, step.verb, "vm1")
		if v.Status != step.want {
			t.Fatalf("%s: %s", step.verb, v.Status)
		}
	}
	ev.waitFor(t, "vm1", "resumed")

	// Rate limits: table and JSON, and their errors.
	if out := c.ok("update", "vm1", "--drive-limit", "data=bw:1M/s,ops:100/100ms"); !strings.Contains(out, "bandwidth 1.0M per 1s") || !strings.Contains(out, "ops 100 per 100ms") {
		t.Fatalf("update output:\n%s", out)
	}
	c.json(&v, "update", "vm1", "--drive-limit", "data=ops:50/s")
	if rl := v.Spec.Drives[0].RateLimit; rl == nil || rl.Bandwidth != nil || rl.Ops.Size != 50 {
		t.Fatalf("update replaced the limit with %+v", rl)
	}
	ev.waitFor(t, "vm1", "updated")
	c.code(3, "update", "nope", "--drive-limit", "data=none")
	c.code(2, "update", "vm1", "--drive-limit", "other=none")
	c.code(1, "update", "vm1", "--rx-limit", "none") // no network: network_config

	// Snapshots, with their progress on stderr as plain lines (no bar:
	// not a terminal).
	var sv hearth.SnapshotView
	c.json(&sv, "snapshot", "create", "vm1", "s1")
	if sv.Name != "s1" || sv.SourceVM != "vm1" {
		t.Fatalf("snapshot: %+v", sv)
	}
	c.code(4, "snapshot", "create", "vm1", "s1")
	var snaps []hearth.SnapshotView
	c.json(&snaps, "snapshot", "ls")
	if len(snaps) != 1 {
		t.Fatalf("snapshot ls: %+v", snaps)
	}
	c.json(&done, "snapshot", "verify", "s1")
	names("s1")
	c.code(3, "snapshot", "verify", "nope")
	c.json(&v, "restore", "s1", "c1", "--label", "clone=yes")
	if v.ID != "c1" || v.Status != hearth.StatusRunning || v.RestoredFrom != "s1" {
		t.Fatalf("restore: %+v", v)
	}
	c.code(3, "restore", "nope", "c9")
	c.json(&v, "rename", "c1", "c2")
	c.code(4, "rename", "c2", "vm1")
	ev.waitFor(t, "c2", "renamed")

	var st map[string]any
	c.json(&st, "stats", "vm1")
	if st["backend"] != "mem" {
		t.Fatalf("stats: %v", st)
	}
	c.json(&st, "inspect", "vm1")
	c.ok("logs", "vm1", "-n", "3")
	c.json(&views, "ps", "-a")
	if len(views) != 2 {
		t.Fatalf("ps -a: %+v", views)
	}
	c.json(&views, "ps", "--label", "clone=yes")
	if len(views) != 1 || views[0].ID != "c2" {
		t.Fatalf("ps --label clone=yes: %+v", views)
	}
	c.json(&views, "ps", "--label", "app", "--status", "running")
	if len(views) != 2 {
		t.Fatalf("ps --label app --status running: %+v", views)
	}
	c.code(2, "ps", "--status", "zombie")

	// Images through the daemon: import an ext4 file, list, verify, remove.
	disk := filepath.Join(dir, "disk.ext4")
	b := make([]byte, 64<<10)
	b[1080], b[1081] = 0x53, 0xEF
	os.WriteFile(disk, b, 0o644)
	var im rootfs.Image
	c.json(&im, "image", "import", "raw", disk, "--kernel", k)
	if im.Name != "raw" || !strings.HasPrefix(im.Dir, c.state) {
		t.Fatalf("import: %+v", im)
	}
	c.code(4, "image", "import", "raw", disk, "--kernel", k)
	var ims []rootfs.Image
	c.json(&ims, "image", "ls")
	if len(ims) != 1 {
		t.Fatalf("image ls: %+v", ims)
	}
	var checks []map[string]any
	c.json(&checks, "image", "verify")
	if len(checks) != 1 || checks[0]["ok"] != true {
		t.Fatalf("image verify: %+v", checks)
	}
	c.json(&done, "image", "rm", "raw")
	names("raw")
	c.code(3, "image", "rm", "raw")
	c.code(3, "image", "verify", "raw")

	c.json(&v, "stop", "vm1")
	c.code(4, "stop", "vm1")
	// A stopped VM records limits for its next boot.
	c.json(&v, "update", "vm1", "--drive-limit", "data=none")
	if v.Spec.Drives[0].RateLimit != nil {
		t.Fatalf("lifted limit kept: %+v", v.Spec.Drives[0].RateLimit)
	}
	c.json(&v, "start", "vm1")
	var removed []string
	c.json(&removed, "gc", "--keep-per-vm", "1")
	c.json(&done, "rm", "vm1", "c2")
	names("vm1", "c2")
	c.code(3, "rm", "vm1")
	c.json(&done, "snapshot", "rm", "s1")
	names("s1")
	c.code(3, "snapshot", "rm", "s1")
	ev.waitFor(t, "vm1", "destroyed")
	c.json(&views, "ps", "-a")
	if len(views) != 0 {
		t.Fatalf("left: %+v", views)
	}
}

// TestCLILifecycleOnSimulator drives the daemon on the Firecracker
// backend (the simulator, with hearth-agent as its guest): lifecycle,
// rate limits through PATCH, snapshot and clone, exec in both, the guest's
// exit code from exec and run, then run without a daemon (in-process).
func TestCLILifecycleOnSimulator(t *testing.T) {
	bin := hearthBin(t)
	fc := buildTool(t, "../hearth-fcsim", "firecracker")
	agentBin := buildTool(t, "../hearth-agent", "hearth-agent")
	dir := shortDir(t, "hls")
	c := &cli{t: t, bin: bin, socket: filepath.Join(dir, "h.sock"), state: filepath.Join(dir, "s")}
	k, r, data := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.ext4"), filepath.Join(dir, "data.img")
	os.WriteFile(k, []byte("k"), 0o600)
	os.WriteFile(r, make([]byte, 1<<20), 0o600)
	os.WriteFile(data, make([]byte, 1<<16), 0o600)
	script := `d="` + dir + `/guest-$HEARTH_FCSIM_VM_ID"; mkdir -p "$d.state"; printf '%s' "$HEARTH_FCSIM_BOOT_ARGS" > "$d.state/cmdline"; ` +
		`exec ` + agentBin + ` --init never --system simulated --cmdline "$d.state/cmdline" --token-file "$d.state/token" --env-file "$d.state/env" --secrets-dir "$d.state/secrets"`
	q, _ := json.Marshal(script)
	env := []string{`HEARTH_FCSIM_GUEST_CMD=["sh","-c",` + string(q) + `]`, "HEARTH_FCSIM_REQUEST_LOG=" + filepath.Join(dir, "requests.jsonl")}
	d := startDaemon(t, c, env, "--backend", "firecracker", "--firecracker-bin", fc)

	var v hearth.View
	c.json(&v, "create", "box", "--kernel", k, "--rootfs", r, "--memory", "32", "--agent", "--drive", "id=data,path="+data, "--start")
	if v.Status != hearth.StatusRunning || v.Backend != "firecracker" || v.Pid == 0 {
		t.Fatalf("create --start: %+v", v)
	}
	if out := c.ok("exec", "box", "--", "echo", "hello"); strings.TrimSpace(out) != "hello" {
		t.Fatalf("exec: %q", out)
	}
	if out, code := c.run("exec", "box", "--", "sh", "-c", "echo out; echo err >&2; exit 7"); code != 7 || !strings.Contains(out, "out") || !strings.Contains(out, "err") {
		t.Fatalf("exec exit %d, output %q", code, out)
	}
	c.code(3, "exec", "nope", "--", "true")
	// Files in and out. The simulator's guest is a host process: its "/"
	// is the host's, so the guest path stays inside the test's directory.
	in := filepath.Join(dir, "in.txt")
	os.WriteFile(in, []byte("payload\n"), 0o640)
	guestPath := "box:" + filepath.Join(dir, "guest-payload.txt")
	c.ok("cp", in, guestPath)
	outFile := filepath.Join(dir, "out.txt")
	c.ok("cp", guestPath, outFile)
	if b, _ := os.ReadFile(outFile); string(b) != "payload\n" {
		t.Fatalf("cp round trip: %q", b)
	}
	c.code(2, "cp", in, outFile)
	c.json(&v, "pause", "box")
	c.json(&v, "resume", "box")
	// The simulator validates the PATCH bodies against Firecracker's spec.
	c.json(&v, "update", "box", "--drive-limit", "data=bw:4M/100ms:8M,ops:1000/s")
	if rl := v.Spec.Drives[0].RateLimit; rl == nil || rl.Bandwidth.OneTimeBurst != 8<<20 || rl.Ops.Size != 1000 {
		t.Fatalf("update: %+v", rl)
	}
	patched := false
	reqs, _ := os.ReadFile(filepath.Join(dir, "requests.jsonl"))
	for _, line := range bytes.Split(reqs, []byte("\n")) {
		var l struct {
			Method, Path string
			Status       int
		}
		if json.Unmarshal(line, &l) == nil && l.Method == "PATCH" && l.Path == "/drives/data" {
			if l.Status != 204 {
				t.Fatalf("simulator answered PATCH /drives/data with %d: %s", l.Status, line)
			}
			patched = true
		}
	}
	if !patched {
		t.Fatal("no PATCH /drives/data in the simulator's log")
	}
	_, errOut, code := c.runEnv(nil, "snapshot", "create", "box", "warm")
	if code != 0 {
		t.Fatalf("snapshot: exit %d: %s", code, errOut)
	}
	if strings.Contains(errOut, "\x1b[") || strings.Contains(errOut, "\r") {
		t.Fatalf("progress drew a bar on a pipe: %q", errOut)
	}
	c.json(&v, "restore", "warm", "clone")
	if out := c.ok("exec", "clone", "--", "echo", "from-clone"); strings.TrimSpace(out) != "from-clone" {
		t.Fatalf("exec in clone: %q", out)
	}
	c.json(&v, "stop", "box")
	c.json(&v, "start", "box")
	if out := c.ok("exec", "box", "--", "echo", "again"); strings.TrimSpace(out) != "again" {
		t.Fatalf("exec after restart: %q", out)
	}
	var st map[string]any
	c.json(&st, "stats", "box")
	var views []hearth.View
	c.json(&views, "ps")
	if len(views) != 2 {
		t.Fatalf("ps: %+v", views)
	}
	// run through the daemon: the guest's exit code, and the VM is gone.
	out, _, code := c.runEnv(nil, "run", "--kernel", k, "--rootfs", r, "--memory", "32", "--", "sh", "-c", "echo ran; exit 5")
	if code != 5 || strings.TrimSpace(out) != "ran" {
		t.Fatalf("run via daemon: exit %d, %q", code, out)
	}
	c.json(&views, "ps", "-a")
	if len(views) != 2 {
		t.Fatalf("run left its VM: %+v", views)
	}
	c.ok("rm", "box", "clone")
	c.ok("snapshot", "rm", "warm")
	d.stop(t)

	// Without a daemon, run uses the runtime in-process on the state dir.
	out, errOut, code = c.runEnv(env, "run", "--backend", "firecracker", "--firecracker-bin", fc, "--kernel", k, "--rootfs", r,
		"--memory", "32", "--", "sh", "-c", "echo local; exit 3")
	if code != 3 || strings.TrimSpace(out) != "local" {
		t.Fatalf("run in-process: exit %d, %q\n%s", code, out, errOut)
	}
	c.json(&views, "ps", "-a") // reads the state dir: nothing left
	if len(views) != 0 {
		t.Fatalf("in-process run left %+v", views)
	}
}
