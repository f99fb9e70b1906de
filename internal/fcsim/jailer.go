package fcsim

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// jailerOptions is the jailer's command line (jailer.md).
type jailerOptions struct {
	ID            string
	ExecFile      string
	UID, GID      int
	ChrootBase    string
	CgroupVersion string
	Cgroups       multiFlag
	ParentCgroup  string
	Netns         string
	ResourceLimit multiFlag
	NewPidNS      bool
	Daemonize     bool
	RequestLog    string
	FCArgs        []string
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func parseJailerOptions(args []string, stderr io.Writer) (*jailerOptions, error) {
	o := &jailerOptions{UID: -1, GID: -1}
	fs := flag.NewFlagSet("jailer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.ID, "id", "", "microVM id")
	fs.StringVar(&o.ExecFile, "exec-file", "", "Firecracker binary to copy into the jail and exec")
	fs.IntVar(&o.UID, "uid", -1, "uid to run as")
	fs.IntVar(&o.GID, "gid", -1, "gid to run as")
	fs.StringVar(&o.ChrootBase, "chroot-base-dir", "/srv/jailer", "base of the chroot jails")
	fs.StringVar(&o.CgroupVersion, "cgroup-version", "1", "cgroup hierarchy version (1 or 2)")
	fs.Var(&o.Cgroups, "cgroup", "cgroup file=value (repeatable)")
	fs.StringVar(&o.ParentCgroup, "parent-cgroup", "", "parent cgroup (default: exec file name)")
	fs.StringVar(&o.Netns, "netns", "", "network namespace to join")
	fs.Var(&o.ResourceLimit, "resource-limit", "fsize=N or no-file=N (repeatable)")
	fs.BoolVar(&o.NewPidNS, "new-pid-ns", false, "run Firecracker in a new PID namespace")
	fs.BoolVar(&o.Daemonize, "daemonize", false, "setsid and redirect stdio to /dev/null")
	fs.StringVar(&o.RequestLog, "request-log", os.Getenv(EnvRequestLog), "request log (simulator knob)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	o.FCArgs = fs.Args()
	switch {
	case !idRE.MatchString(o.ID):
		return nil, fmt.Errorf("invalid instance ID %q: it must be 1-64 characters of [a-zA-Z0-9-]", o.ID)
	case o.ExecFile == "":
		return nil, errors.New("missing argument: exec-file")
	case o.UID < 0 || o.GID < 0:
		return nil, errors.New("missing argument: uid and gid are required")
	case o.CgroupVersion != "1" && o.CgroupVersion != "2":
		return nil, fmt.Errorf("invalid cgroup version %q", o.CgroupVersion)
	}
	return o, nil
}

// jailer carries out the jailer's steps for real (mkdir, copy, rlimits,
// cgroups, netns, mknod, chown, chroot, uid/gid drop, exec) and records
// each one in the request log as a "JAILER" line.
type jailer struct {
	o      *jailerOptions
	log    *slog.Logger
	reqlog *requestLog
	start  time.Time
}

func jailerMain(args []string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "jailer", "pid", os.Getpid())
	o, err := parseJailerOptions(args, os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(os.Stderr, "Jailer error: %v\n", err)
		return exitArgParsing
	}
	j := &jailer{o: o, log: log.With("vm", o.ID), start: time.Now()}
	if o.RequestLog != "" {
		j.reqlog, err = openRequestLog(o.RequestLog)
		if err != nil {
			log.Error("request log", "err", err)
			return exitGeneric
		}
	}
	if err := j.run(); err != nil {
		j.step("error", map[string]any{"error": err.Error()})
		j.log.Error("jailer failed", "err", err)
		fmt.Fprintf(os.Stderr, "Jailer error: %v\n", err)
		return exitGeneric
	}
	return exitOK
}

func (j *jailer) step(name string, detail map[string]any) {
	j.log.Info("jailer step", "step", name, "detail", detail)
	if j.reqlog == nil {
		return
	}
	b, _ := json.Marshal(detail)
	j.reqlog.write(requestLogLine{Method: "JAILER", Path: name, Body: b, ID: j.o.ID})
}

func (j *jailer) run() error {
	o := j.o
	execPath, err := filepath.EvalSymlinks(o.ExecFile)
	if err != nil {
		return fmt.Errorf("exec file %s: %w", o.ExecFile, err)
	}
	if execPath, err = filepath.Abs(execPath); err != nil {
		return fmt.Errorf("exec file: %w", err)
	}
	st, err := os.Stat(execPath)
	if err != nil || !st.Mode().IsRegular() {
		return fmt.Errorf("exec file %s is not a regular file", execPath)
	}
	execName := filepath.Base(execPath)
	// The real jailer refuses binaries whose name does not contain
	// "firecracker"; a symlink does not help since it is resolved first.
	if !strings.Contains(execName, "firecracker") {
		return fmt.Errorf("invalid filename: the filename of --exec-file must contain \"firecracker\": %s", execName)
	}
	if o.ParentCgroup == "" {
		o.ParentCgroup = execName
	}
	chroot := filepath.Join(o.ChrootBase, execName, o.ID, "root")
	if err := os.MkdirAll(chroot, 0o755); err != nil {
		return fmt.Errorf("create chroot dir: %w", err)
	}
	j.step("mkdir", map[string]any{"path": chroot})

	if err := copyFile(execPath, filepath.Join(chroot, execName)); err != nil {
		return fmt.Errorf("copy exec file: %w", err)
	}
	j.step("copy", map[string]any{"from": execPath, "to": filepath.Join(chroot, execName)})

	if err := j.setRlimits(); err != nil {
		return err
	}
	if err := j.setupCgroups(); err != nil {
		return err
	}

	for _, dev := range []struct {
		path         string
		major, minor uint32
	}{{"dev/net/tun", 10, 200}, {"dev/kvm", 10, 232}, {"dev/userfaultfd", 10, userfaultfdMinor()}} {
		if dev.minor == 0 {
			continue
		}
		p := filepath.Join(chroot, dev.path)
		err := os.MkdirAll(filepath.Dir(p), 0o755)
		if err == nil {
			_ = os.Remove(p)
			err = unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(dev.major, dev.minor)))
		}
		if err == nil {
			err = os.Chown(p, o.UID, o.GID)
		}
		// A container without CAP_MKNOD cannot do this; the simulated
		// VMM does not need the nodes, so record and go on.
		j.step("mknod", map[string]any{"path": p, "major": dev.major, "minor": dev.minor, "ok": err == nil, "error": errString(err)})
	}
	if err := os.Chown(chroot, o.UID, o.GID); err != nil {
		return fmt.Errorf("chown chroot: %w", err)
	}
	j.step("chown", map[string]any{"path": chroot, "uid": o.UID, "gid": o.GID})

	// setns(CLONE_NEWNET) applies to the calling thread only, so this
	// goroutine stays on its thread through the exec or fork below.
	runtime.LockOSThread()
	if o.Netns != "" {
		fd, err := unix.Open(o.Netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open netns %s: %w", o.Netns, err)
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("setns %s: %w", o.Netns, err)
		}
		j.step("netns", map[string]any{"path": o.Netns})
	}

	var devNull *os.File
	if o.Daemonize {
		if devNull, err = os.OpenFile("/dev/null", os.O_RDWR, 0); err != nil {
			return fmt.Errorf("open /dev/null: %w", err)
		}
	}

	// The real jailer pivots into a new mount namespace; unshare of the
	// mount namespace is impossible in a multi-threaded Go process, so
	// the simulator uses chroot(2), which confines paths the same way.
	if err := unix.Chroot(chroot); err != nil {
		return fmt.Errorf("chroot %s: %w", chroot, err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	j.step("chroot", map[string]any{"path": chroot})

	elapsed := time.Since(j.start)
	argv := []string{execName,
		"--id=" + o.ID,
		"--start-time-us=" + strconv.FormatInt(time.Now().UnixMicro(), 10),
		"--start-time-cpu-us=" + strconv.FormatInt(elapsed.Microseconds(), 10),
		"--parent-cpu-time-us=" + strconv.FormatInt(elapsed.Microseconds(), 10),
	}
	argv = append(argv, o.FCArgs...)
	env := jailedEnv()
	pidFile := "/" + execName + ".pid"

	if o.NewPidNS {
		cmd := &exec.Cmd{
			Path: "/" + execName,
			Args: argv,
			Env:  env,
			SysProcAttr: &syscall.SysProcAttr{
				Cloneflags: syscall.CLONE_NEWPID,
				Credential: &syscall.Credential{Uid: uint32(o.UID), Gid: uint32(o.GID), Groups: []uint32{}},
				Setsid:     o.Daemonize,
			},
			Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
		}
		if devNull != nil {
			cmd.Stdin, cmd.Stdout, cmd.Stderr = devNull, devNull, devNull
		}
		if j.reqlog != nil {
			// fd 3 in the child.
			cmd.ExtraFiles = []*os.File{j.reqlog.f}
			cmd.Env = append(cmd.Env, EnvRequestLogFD+"=3")
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("spawn %s in a new PID namespace: %w", execName, err)
		}
		pid := cmd.Process.Pid
		if err := os.WriteFile(pidFile, []byte(strconv.Itoa(pid)), 0o644); err != nil {
			_ = cmd.Process.Kill()
			return fmt.Errorf("write pid file: %w", err)
		}
		j.step("spawn", map[string]any{"argv": argv, "pid": pid, "pid_file": filepath.Join(chroot, pidFile), "new_pid_ns": true})
		// The jailer exits; the pid file is how a manager finds the VMM.
		_ = cmd.Process.Release()
		return nil
	}

	pid := os.Getpid()
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	if o.Daemonize {
		if _, err := unix.Setsid(); err != nil {
			j.log.Warn("setsid", "err", err)
		}
		for _, fd := range []int{0, 1, 2} {
			if err := unix.Dup2(int(devNull.Fd()), fd); err != nil {
				return fmt.Errorf("redirect stdio: %w", err)
			}
		}
	}
	if j.reqlog != nil {
		fd := int(j.reqlog.f.Fd())
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			return fmt.Errorf("keep request log open across exec: %w", err)
		}
		env = append(env, EnvRequestLogFD+"="+strconv.Itoa(fd))
	}
	j.step("exec", map[string]any{"argv": argv, "pid": pid, "pid_file": filepath.Join(chroot, pidFile), "uid": o.UID, "gid": o.GID})
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setgid(o.GID); err != nil {
		return fmt.Errorf("setgid: %w", err)
	}
	if err := syscall.Setuid(o.UID); err != nil {
		return fmt.Errorf("setuid: %w", err)
	}
	err = syscall.Exec("/"+execName, argv, env)
	return fmt.Errorf("exec %s: %w", execName, err)
}

// jailedEnv is the environment the jailed VMM gets. The real jailer clears
// the environment; the simulator keeps only its own HEARTH_FCSIM_* knobs so
// that fault injection and guest settings still reach the VMM.
func jailedEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "HEARTH_FCSIM_") && !strings.HasPrefix(kv, EnvRequestLogFD+"=") && !strings.HasPrefix(kv, EnvRequestLog+"=") {
			env = append(env, kv)
		}
	}
	return env
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func userfaultfdMinor() uint32 {
	var st unix.Stat_t
	if err := unix.Stat("/dev/userfaultfd", &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return 0
	}
	return unix.Minor(uint64(st.Rdev))
}

func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	tmp := to + ".tmp"
	dst, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, to)
}

func (j *jailer) setRlimits() error {
	limits := j.o.ResourceLimit
	if len(limits) == 0 {
		// The jailer's default when no limit is given.
		limits = []string{"no-file=2048"}
	}
	for _, l := range limits {
		name, val, ok := strings.Cut(l, "=")
		n, err := strconv.ParseUint(val, 10, 64)
		if !ok || err != nil {
			return fmt.Errorf("invalid resource limit %q", l)
		}
		var res int
		switch name {
		case "fsize":
			res = unix.RLIMIT_FSIZE
		case "no-file":
			res = unix.RLIMIT_NOFILE
		default:
			return fmt.Errorf("invalid resource %q (want fsize or no-file)", name)
		}
		// syscall.Setrlimit (not x/sys) so that the Go runtime forgets
		// its saved RLIMIT_NOFILE and does not restore it on exec.
		if err := syscall.Setrlimit(res, &syscall.Rlimit{Cur: n, Max: n}); err != nil {
			return fmt.Errorf("setrlimit %s=%d: %w", name, n, err)
		}
		j.step("rlimit", map[string]any{"resource": name, "value": n})
	}
	return nil
}

// setupCgroups creates <cgroup_base>/<parent>/<id> for each controller
// named by --cgroup, writes the values and moves this process in (the VMM
// inherits it). Where the requested hierarchy does not exist (e.g. v2 on
// this v1 host) or is read-only, it records what it would have written
// instead of failing.
func (j *jailer) setupCgroups() error {
	o := j.o
	mounts, err := cgroupMounts()
	if err != nil {
		j.step("cgroup", map[string]any{"applied": false, "reason": err.Error()})
		mounts = nil
	}
	for _, c := range o.Cgroups {
		file, value, ok := strings.Cut(c, "=")
		if !ok || file == "" || strings.Contains(file, "/") {
			return fmt.Errorf("invalid cgroup argument %q (want file=value)", c)
		}
		controller, _, _ := strings.Cut(file, ".")
		base := ""
		if o.CgroupVersion == "2" {
			base = mounts["cgroup2"]
		} else {
			base = mounts[controller]
		}
		detail := map[string]any{"version": o.CgroupVersion, "controller": controller, "file": file, "value": value}
		if base == "" {
			detail["applied"] = false
			detail["reason"] = fmt.Sprintf("no cgroup v%s hierarchy with controller %s", o.CgroupVersion, controller)
			j.step("cgroup", detail)
			continue
		}
		dir := filepath.Join(base, o.ParentCgroup, o.ID)
		detail["dir"] = dir
		if o.CgroupVersion == "2" {
			// On a host whose controllers are bound to v1 hierarchies
			// the v2 tree lacks them; record instead of failing.
			if !v2HasController(base, controller) {
				detail["applied"] = false
				detail["reason"] = fmt.Sprintf("controller %s is not available in the cgroup v2 hierarchy at %s", controller, base)
				j.step("cgroup", detail)
				continue
			}
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			if errors.Is(err, unix.EROFS) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
				detail["applied"] = false
				detail["reason"] = err.Error()
				j.step("cgroup", detail)
				continue
			}
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		if o.CgroupVersion == "2" {
			if err := v2EnableController(base, filepath.Join(o.ParentCgroup, o.ID), controller); err != nil {
				return err
			}
		}
		if controller == "cpuset" && o.CgroupVersion == "1" {
			// A v1 cpuset cgroup starts empty; the jailer copies the
			// parent's cpus/mems down so that tasks can join.
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				if err := inheritCpuset(base, filepath.Join(o.ParentCgroup, o.ID), f); err != nil {
					return err
				}
			}
		}
		if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0o644); err != nil {
			return fmt.Errorf("write cgroup %s=%s: %w", filepath.Join(dir, file), value, err)
		}
		// cgroup.procs, not the jailer's "tasks": that file moves one
		// thread, and a Go process has several (the exec may even run
		// on a thread other than the leader).
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			return fmt.Errorf("join cgroup %s: %w", dir, err)
		}
		detail["applied"] = true
		j.step("cgroup", detail)
	}
	return nil
}

func v2HasController(base, controller string) bool {
	b, err := os.ReadFile(filepath.Join(base, "cgroup.controllers"))
	if err != nil {
		return false
	}
	for _, c := range strings.Fields(string(b)) {
		if c == controller {
			return true
		}
	}
	return false
}

// v2EnableController enables controller in cgroup.subtree_control from the
// root down to the parent of rel, so that rel gets the controller's files.
func v2EnableController(base, rel, controller string) error {
	dir := base
	for _, p := range strings.Split(rel, string(filepath.Separator)) {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+controller), 0o644); err != nil {
			return fmt.Errorf("enable %s in %s: %w", controller, dir, err)
		}
		dir = filepath.Join(dir, p)
	}
	return nil
}

func inheritCpuset(base, rel, file string) error {
	parts := strings.Split(rel, string(filepath.Separator))
	cur := base
	for _, p := range parts {
		parent := cur
		cur = filepath.Join(cur, p)
		b, err := os.ReadFile(filepath.Join(cur, file))
		if err != nil {
			return fmt.Errorf("read %s: %w", filepath.Join(cur, file), err)
		}
		if strings.TrimSpace(string(b)) != "" {
			continue
		}
		pv, err := os.ReadFile(filepath.Join(parent, file))
		if err != nil {
			return fmt.Errorf("read %s: %w", filepath.Join(parent, file), err)
		}
		if err := os.WriteFile(filepath.Join(cur, file), pv, 0o644); err != nil {
			return fmt.Errorf("inherit %s: %w", filepath.Join(cur, file), err)
		}
	}
	return nil
}

// cgroupMounts maps each v1 controller (and "cgroup2") to its mount point,
// parsed from /proc/mounts as the jailer does.
func cgroupMounts() (map[string]string, error) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return nil, fmt.Errorf("read /proc/mounts: %w", err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 {
			continue
		}
		switch fields[2] {
		case "cgroup2":
			if _, ok := out["cgroup2"]; !ok {
				out["cgroup2"] = fields[1]
			}
		case "cgroup":
			for _, opt := range strings.Split(fields[3], ",") {
				if _, ok := out[opt]; !ok {
					out[opt] = fields[1]
				}
			}
		}
	}
	return out, sc.Err()
}
