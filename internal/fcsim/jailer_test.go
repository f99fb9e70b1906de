package fcsim

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestJailer runs the simulator as the jailer, for real: chroot, uid/gid
// drop, rlimits, cgroups, netns, pid file, and the API socket inside the
// jail.
func TestJailer(t *testing.T) {
	requireRoot(t, "the jailer (chroot, setuid, cgroups, setns)")
	if raceSim {
		t.Skip("FCSIM_RACE: the race-enabled simulator is not static and cannot run in an empty chroot")
	}
	tests := []struct {
		name      string
		newPidNS  bool
		daemonize bool
		cgroupV   string
	}{
		{name: "exec in place, cgroup v1", cgroupV: "1"},
		{name: "new pid namespace, cgroup v2 recorded", newPidNS: true, daemonize: true, cgroupV: "2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// The jailer's VMM is reparented when the jailer exits;
			// become its subreaper so that the test can reap it.
			if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })

			base := shortDir(t)
			id := fmt.Sprintf("jail-%d", rand.IntN(1e9))
			const uid, gid = 40123, 40123
			chroot := filepath.Join(base, "firecracker", id, "root")
			// Stage the jail as a manager does: the API socket's
			// directory must exist and belong to the jailed uid.
			if err := os.MkdirAll(filepath.Join(chroot, "run"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(filepath.Join(chroot, "run"), uid, gid); err != nil {
				t.Fatal(err)
			}
			reqlog := filepath.Join(base, "req.log")

			// A network namespace of our own, held by a sleeping child.
			holder := exec.Command("sleep", "60")
			holder.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
			if err := holder.Start(); err != nil {
				t.Skipf("cannot create a network namespace: %v", err)
			}
			t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
			netns := fmt.Sprintf("/proc/%d/ns/net", holder.Process.Pid)

			parentCg := fmt.Sprintf("fcsim-test-%d", rand.IntN(1e9))
			cgArg := "cpu.shares=512"
			if tc.cgroupV == "2" {
				cgArg = "memory.max=268435456"
			}
			args := []string{"jailer",
				"--id", id, "--exec-file", fcBin, "--uid", strconv.Itoa(uid), "--gid", strconv.Itoa(gid),
				"--chroot-base-dir", base, "--cgroup-version", tc.cgroupV, "--cgroup", cgArg,
				"--parent-cgroup", parentCg, "--netns", netns,
				"--resource-limit", "no-file=1024", "--resource-limit", "fsize=1073741824",
			}
			if tc.newPidNS {
				args = append(args, "--new-pid-ns")
			}
			if tc.daemonize {
				args = append(args, "--daemonize")
			}
			args = append(args, "--", "--api-sock", "/run/firecracker.socket")
			jailer := exec.Command(simBin, args...)
			jailer.Env = append(os.Environ(), EnvRequestLog+"="+reqlog)
			var stderr syncBuffer
			jailer.Stderr = &stderr
			if err := jailer.Start(); err != nil {
				t.Fatal(err)
			}
			jailerDone := make(chan error, 1)
			go func() { jailerDone <- jailer.Wait() }()

			pidFile := filepath.Join(chroot, "firecracker.pid")
			var pid int
			t.Cleanup(func() {
				if pid > 0 {
					_ = unix.Kill(pid, unix.SIGKILL)
					if pid != jailer.Process.Pid {
						var ws unix.WaitStatus
						_, _ = unix.Wait4(pid, &ws, 0, nil)
					}
				}
				if pid == 0 || pid == jailer.Process.Pid || tc.newPidNS {
					_ = jailer.Process.Kill()
					<-jailerDone
				}
				// Remove every cgroup the jailer may have made.
				for _, m := range []string{"cpu", "memory", "unified"} {
					_ = os.Remove(filepath.Join("/sys/fs/cgroup", m, parentCg, id))
					_ = os.Remove(filepath.Join("/sys/fs/cgroup", m, parentCg))
				}
				if t.Failed() {
					t.Logf("jailer stderr:\n%s", stderr.String())
				}
			})

			if tc.newPidNS {
				// The jailer exits once the VMM runs.
				select {
				case err := <-jailerDone:
					jailerDone <- err
					if err != nil {
						t.Fatalf("jailer: %v\n%s", err, stderr.String())
					}
				case <-time.After(10 * time.Second):
					t.Fatal("jailer did not exit")
				}
			}
			waitFor(t, "pid file", 10*time.Second, func() bool {
				b, err := os.ReadFile(pidFile)
				if err != nil {
					return false
				}
				pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
				return err == nil && pid > 0
			})
			if !tc.newPidNS && pid != jailer.Process.Pid {
				t.Fatalf("pid file says %d, the jailer (which execs the VMM) is %d", pid, jailer.Process.Pid)
			}

			sock := filepath.Join(chroot, "run", "firecracker.socket")
			waitFor(t, "API socket in the jail", 10*time.Second, func() bool { _, err := os.Stat(sock); return err == nil })
			client := unixClient(sock, 5*time.Second)
			resp, err := client.Get("http://localhost/")
			if err != nil {
				t.Fatal(err)
			}
			var info struct{ ID, State string }
			err = json.NewDecoder(resp.Body).Decode(&info)
			resp.Body.Close()
			if err != nil || info.ID != id || info.State != "Not started" {
				t.Fatalf("GET / = %+v, %v", info, err)
			}

			// The VMM runs chrooted, as uid/gid, with the limits, in the
			// netns, with the copied binary.
			if root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid)); err != nil || root != chroot {
				t.Errorf("VMM root = %q (%v), want %q", root, err, chroot)
			}
			status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if !strings.Contains(string(status), fmt.Sprintf("Uid:\t%d\t%d", uid, uid)) || !strings.Contains(string(status), fmt.Sprintf("Gid:\t%d\t%d", gid, gid)) {
				t.Errorf("VMM credentials:\n%s", status)
			}
			if tc.newPidNS && !nspidIsInit(string(status)) {
				t.Errorf("VMM is not pid 1 of a new pid namespace:\n%s", status)
			}
			limits, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
			if !strings.Contains(string(limits), "Max open files            1024                 1024") {
				t.Errorf("no-file limit not applied:\n%s", limits)
			}
			if !strings.Contains(string(limits), "Max file size             1073741824           1073741824") {
				t.Errorf("fsize limit not applied:\n%s", limits)
			}
			vmmNet, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
			wantNet, _ := os.Readlink(netns)
			if vmmNet == "" || vmmNet != wantNet {
				t.Errorf("VMM netns %q, want %q", vmmNet, wantNet)
			}
			if _, err := os.Stat(filepath.Join(chroot, "firecracker")); err != nil {
				t.Errorf("exec file not copied into the jail: %v", err)
			}
			if st, err := os.Stat(chroot); err == nil && st.Sys().(*syscall.Stat_t).Uid != uid {
				t.Errorf("chroot not owned by the jailed uid")
			}

			// Cgroups: written for real on v1, recorded on v2 (this
			// host may have no v2 hierarchy).
			steps := map[string][]map[string]any{}
			for _, l := range readRequestLog(t, reqlog) {
				if l.Method == "JAILER" {
					var d map[string]any
					_ = json.Unmarshal(l.Body, &d)
					steps[l.Path] = append(steps[l.Path], d)
				}
			}
			for _, s := range []string{"mkdir", "copy", "rlimit", "cgroup", "chown", "netns", "chroot"} {
				if len(steps[s]) == 0 {
					t.Errorf("request log has no JAILER %s step", s)
				}
			}
			if tc.newPidNS && len(steps["spawn"]) == 0 || !tc.newPidNS && len(steps["exec"]) == 0 {
				t.Errorf("request log lacks the spawn/exec step: %v", steps)
			}
			cg := steps["cgroup"][0]
			if cg["file"] != strings.Split(cgArg, "=")[0] || cg["value"] != strings.Split(cgArg, "=")[1] {
				t.Errorf("cgroup step = %v", cg)
			}
			if tc.cgroupV == "1" {
				if cg["applied"] == true {
					b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/cpu", parentCg, id, "cpu.shares"))
					if err != nil || strings.TrimSpace(string(b)) != "512" {
						t.Errorf("cpu.shares = %q, %v", b, err)
					}
					tasks, _ := os.ReadFile(filepath.Join("/sys/fs/cgroup/cpu", parentCg, id, "tasks"))
					if !strings.Contains(string(tasks), strconv.Itoa(pid)) {
						t.Errorf("VMM %d not in the cgroup's tasks: %q", pid, tasks)
					}
				} else {
					t.Logf("cgroup v1 not writable here: %v", cg["reason"])
				}
			}
			// The VMM's own API requests land in the same log.
			found := false
			for _, l := range readRequestLog(t, reqlog) {
				found = found || (l.Method == "GET" && l.Path == "/" && l.Status == 200)
			}
			if !found {
				t.Errorf("request log lacks the VMM's GET /")
			}
		})
	}
}

// nspidIsInit reports whether the NSpid line shows the process as pid 1 of
// a nested namespace.
func nspidIsInit(status string) bool {
	for _, line := range strings.Split(status, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "NSpid:" {
			return f[len(f)-1] == "1"
		}
	}
	return false
}

// TestJailerRefusals covers the jailer's argument checks.
func TestJailerRefusals(t *testing.T) {
	dir := shortDir(t)
	notFC := filepath.Join(dir, "vmm")
	if err := os.Link(simBin, notFC); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"bad id", []string{"--id", "bad id!", "--exec-file", fcBin, "--uid", "1", "--gid", "1"}, "invalid instance ID"},
		{"missing uid", []string{"--id", "a", "--exec-file", fcBin}, "uid and gid"},
		{"exec file name", []string{"--id", "a", "--exec-file", notFC, "--uid", "1", "--gid", "1", "--chroot-base-dir", dir}, `must contain "firecracker"`},
		{"missing exec file", []string{"--id", "a", "--exec-file", filepath.Join(dir, "firecracker-nope"), "--uid", "1", "--gid", "1"}, "exec file"},
		{"bad cgroup version", []string{"--id", "a", "--exec-file", fcBin, "--uid", "1", "--gid", "1", "--cgroup-version", "3"}, "cgroup version"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := exec.Command(simBin, append([]string{"jailer"}, tc.args...)...).CombinedOutput()
			if err == nil {
				t.Fatalf("jailer accepted %v", tc.args)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Fatalf("output %q does not contain %q", out, tc.want)
			}
		})
	}
}
