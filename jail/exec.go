package jail

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"
)

// Rlimit is one resource limit (soft and hard set alike).
type Rlimit struct {
	Name  string // as in the jailer: "no-file", "fsize", plus "nproc", "core", "memlock", "as"
	Value uint64
}

func (r Rlimit) String() string { return r.Name + "=" + strconv.FormatUint(r.Value, 10) }

var rlimitResources = map[string]int{
	"no-file": unix.RLIMIT_NOFILE,
	"fsize":   unix.RLIMIT_FSIZE,
	"nproc":   unix.RLIMIT_NPROC,
	"core":    unix.RLIMIT_CORE,
	"memlock": unix.RLIMIT_MEMLOCK,
	"as":      unix.RLIMIT_AS,
}

// ParseRlimit parses "name=value" (e.g. "no-file=1024").
func ParseRlimit(s string) (Rlimit, error) {
	name, val, ok := strings.Cut(s, "=")
	if _, known := rlimitResources[name]; !ok || !known {
		return Rlimit{}, fmt.Errorf("invalid resource limit %q (want one of no-file, fsize, nproc, core, memlock, as =<n>)", s)
	}
	n, err := strconv.ParseUint(val, 10, 64)
	if err != nil {
		return Rlimit{}, fmt.Errorf("invalid resource limit %q: %w", s, err)
	}
	return Rlimit{name, n}, nil
}

// Apply sets the limit on the calling process (inherited across exec).
func (r Rlimit) Apply() error {
	res, ok := rlimitResources[r.Name]
	if !ok {
		return fmt.Errorf("unknown resource %q", r.Name)
	}
	// syscall.Setrlimit (not x/sys) so the Go runtime does not restore
	// its saved RLIMIT_NOFILE on exec.
	if err := syscall.Setrlimit(res, &syscall.Rlimit{Cur: r.Value, Max: r.Value}); err != nil {
		return fmt.Errorf("setrlimit %s: %w", r, err)
	}
	return nil
}

// ExecSpec is what `hearth _jail` does before it execs the VMM. Args
// renders it as that command's arguments and ParseExecArgs reads them
// back.
type ExecSpec struct {
	// ID names the cgroup (<CgroupParent>/<ID>); required with a cgroup.
	ID string
	// Chroot is the host directory that becomes "/". It is created if
	// missing and given to UID/GID.
	Chroot   string
	UID, GID int
	// CgroupParent, when set, puts the VMM into the cgroup
	// <CgroupParent>/<ID> with Cgroup settings applied.
	CgroupParent string
	// CgroupVersion forces 1 or 2; 0 detects it from the mounts.
	CgroupVersion int
	Cgroup        []FileValue
	// NetNS is the path of a network namespace to join.
	NetNS   string
	Rlimits []Rlimit
	// Devices are host device nodes to recreate in the chroot (e.g.
	// /dev/kvm, /dev/net/tun, /dev/urandom).
	Devices []string
	// Exec is the VMM's absolute host path; it is staged into the chroot
	// at the same path, with its shared libraries, and run from there.
	Exec string
	// VMMArgs follow "--" and go to the VMM unchanged.
	VMMArgs []string
}

// Validate checks the spec without touching anything.
func (s ExecSpec) Validate() error {
	var errs []error
	if !filepath.IsAbs(s.Chroot) || filepath.Clean(s.Chroot) == "/" {
		errs = append(errs, fmt.Errorf("--chroot must be an absolute path other than /, got %q", s.Chroot))
	}
	if s.UID <= 0 || s.GID <= 0 {
		errs = append(errs, fmt.Errorf("--uid and --gid must be positive (a jailed VMM never runs as root), got %d/%d", s.UID, s.GID))
	}
	if s.CgroupParent != "" {
		if !validName(s.ID) {
			errs = append(errs, fmt.Errorf("--id %q must be 1-64 characters of [A-Za-z0-9_.-] with a cgroup", s.ID))
		}
		if filepath.IsAbs(s.CgroupParent) || strings.Contains("/"+s.CgroupParent+"/", "/../") {
			errs = append(errs, fmt.Errorf("--cgroup-parent %q must be a relative path", s.CgroupParent))
		}
	} else if len(s.Cgroup) > 0 {
		errs = append(errs, errors.New("--cgroup settings need --cgroup-parent"))
	}
	if s.CgroupVersion != 0 && s.CgroupVersion != 1 && s.CgroupVersion != 2 {
		errs = append(errs, fmt.Errorf("--cgroup-version %d is neither 1 nor 2", s.CgroupVersion))
	}
	if s.NetNS != "" && !filepath.IsAbs(s.NetNS) {
		errs = append(errs, fmt.Errorf("--netns must be an absolute path, got %q", s.NetNS))
	}
	for _, d := range s.Devices {
		if !filepath.IsAbs(d) {
			errs = append(errs, fmt.Errorf("--dev must be an absolute path, got %q", d))
		}
	}
	if !filepath.IsAbs(s.Exec) {
		errs = append(errs, fmt.Errorf("the VMM must be an absolute path, got %q", s.Exec))
	}
	return errors.Join(errs...)
}

// validName accepts VM ids and keys as directory names: no separators,
// no dot-only names.
func validName(s string) bool {
	if s == "" || len(s) > 64 || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// Args renders the spec as `hearth _jail` arguments (without "_jail"),
// in a fixed order so command lines can be golden-tested.
func (s ExecSpec) Args() []string {
	args := []string{"--chroot", s.Chroot, "--uid", strconv.Itoa(s.UID), "--gid", strconv.Itoa(s.GID)}
	if s.ID != "" {
		args = append(args, "--id", s.ID)
	}
	if s.CgroupParent != "" {
		args = append(args, "--cgroup-parent", s.CgroupParent)
	}
	if s.CgroupVersion != 0 {
		args = append(args, "--cgroup-version", strconv.Itoa(s.CgroupVersion))
	}
	for _, c := range s.Cgroup {
		args = append(args, "--cgroup", c.String())
	}
	if s.NetNS != "" {
		args = append(args, "--netns", s.NetNS)
	}
	for _, r := range s.Rlimits {
		args = append(args, "--rlimit", r.String())
	}
	for _, d := range s.Devices {
		args = append(args, "--dev", d)
	}
	args = append(args, "--", s.Exec)
	return append(args, s.VMMArgs...)
}

// ParseExecArgs parses `hearth _jail` arguments (without "_jail").
func ParseExecArgs(args []string) (ExecSpec, error) {
	var s ExecSpec
	var cgroups, rlimits []string
	fs := pflag.NewFlagSet("_jail", pflag.ContinueOnError)
	fs.SetInterspersed(false)
	fs.StringVar(&s.Chroot, "chroot", "", "directory that becomes the VMM's root")
	fs.IntVar(&s.UID, "uid", -1, "uid the VMM runs as")
	fs.IntVar(&s.GID, "gid", -1, "gid the VMM runs as")
	fs.StringVar(&s.ID, "id", "", "VM id (names the cgroup)")
	fs.StringVar(&s.CgroupParent, "cgroup-parent", "", "parent cgroup; the VMM goes into <parent>/<id>")
	fs.IntVar(&s.CgroupVersion, "cgroup-version", 0, "cgroup version (1 or 2; default: detect)")
	fs.StringArrayVar(&cgroups, "cgroup", nil, "cgroup setting <file>=<value> (repeatable)")
	fs.StringVar(&s.NetNS, "netns", "", "network namespace to join")
	fs.StringArrayVar(&rlimits, "rlimit", nil, "resource limit <name>=<value> (repeatable)")
	fs.StringArrayVar(&s.Devices, "dev", nil, "host device node to recreate in the chroot (repeatable)")
	if err := fs.Parse(args); err != nil {
		return ExecSpec{}, err
	}
	for _, c := range cgroups {
		fv, err := ParseFileValue(c)
		if err != nil {
			return ExecSpec{}, err
		}
		s.Cgroup = append(s.Cgroup, fv)
	}
	for _, r := range rlimits {
		rl, err := ParseRlimit(r)
		if err != nil {
			return ExecSpec{}, err
		}
		s.Rlimits = append(s.Rlimits, rl)
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return ExecSpec{}, errors.New("missing VMM: _jail [flags] -- /path/to/vmm [args...]")
	}
	s.Exec, s.VMMArgs = rest[0], rest[1:]
	if err := s.Validate(); err != nil {
		return ExecSpec{}, err
	}
	return s, nil
}

// Exec confines the calling process as s says and execs the VMM in its
// place (same pid, so whoever started `hearth _jail` is watching the VMM
// itself). In order: resource limits, cgroup (created with its settings,
// then joined), the VMM and its libraries staged into the chroot, device
// nodes, chroot ownership, network namespace, chroot(2), supplementary
// groups dropped, gid then uid set, no_new_privs, exec. It returns only
// on error, and must be called from a process that does nothing else
// (the `_jail` command): it changes process-wide state.
//
// chroot(2) is used rather than the jailer's pivot_root: a new mount
// namespace cannot be unshared from a multi-threaded Go process. Paths
// are confined the same way; the VMM has no /proc unless one is staged.
func Exec(s ExecSpec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	// setns(CLONE_NEWNET) affects only the calling thread, and execve
	// keeps only the calling thread: both must be this one.
	runtime.LockOSThread()
	for _, r := range s.Rlimits {
		if err := r.Apply(); err != nil {
			return err
		}
	}
	if s.CgroupParent != "" {
		h, err := DetectHierarchy()
		if err != nil {
			return err
		}
		if s.CgroupVersion != 0 && s.CgroupVersion != h.Version {
			if s.CgroupVersion == 2 && h.Unified == "" || s.CgroupVersion == 1 && len(h.Controllers) == 0 {
				return fmt.Errorf("cgroup v%d requested but not mounted", s.CgroupVersion)
			}
			h.Version = s.CgroupVersion
		}
		cg := h.Cgroup(filepath.Join(s.CgroupParent, s.ID))
		if err := cg.Create(s.Cgroup); err != nil {
			return err
		}
		if err := cg.Join(os.Getpid()); err != nil {
			return err
		}
	}
	c := Chroot{Root: s.Chroot, Cred: Credential{UID: s.UID, GID: s.GID}}
	if err := c.Create(); err != nil {
		return err
	}
	if err := c.StageExecutable(s.Exec); err != nil {
		return err
	}
	for _, d := range s.Devices {
		if err := c.MakeDevice(d); err != nil {
			return err
		}
	}
	if s.NetNS != "" {
		fd, err := unix.Open(s.NetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open netns %s: %w", s.NetNS, err)
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("join netns %s: %w", s.NetNS, err)
		}
	}
	if err := unix.Chroot(s.Chroot); err != nil {
		return fmt.Errorf("chroot %s: %w", s.Chroot, err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	// The syscall package applies these to every thread of the process.
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("drop supplementary groups: %w", err)
	}
	if err := syscall.Setgid(s.GID); err != nil {
		return fmt.Errorf("setgid %d: %w", s.GID, err)
	}
	if err := syscall.Setuid(s.UID); err != nil {
		return fmt.Errorf("setuid %d: %w", s.UID, err)
	}
	// Nothing the VMM runs can regain privileges through setuid files.
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	argv := append([]string{s.Exec}, s.VMMArgs...)
	err := syscall.Exec(s.Exec, argv, os.Environ())
	return fmt.Errorf("exec %s in jail: %w", s.Exec, err)
}
