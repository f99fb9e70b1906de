package jail

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// CPUPeriodUS is the CFS period a CPU quota is expressed in.
const CPUPeriodUS = 100000

// Limits are a VM's cgroup limits. Zero fields are unlimited.
type Limits struct {
	// CPUQuota is the share of one CPU (1.5 = 150 %).
	CPUQuota float64
	// MemoryMax is in bytes.
	MemoryMax int64
	// PidsMax is the task limit.
	PidsMax int64
}

// Validate rejects negative or non-finite limits.
func (l Limits) Validate() error {
	var errs []error
	if l.CPUQuota < 0 || math.IsNaN(l.CPUQuota) || math.IsInf(l.CPUQuota, 0) {
		errs = append(errs, fmt.Errorf("cpu quota %v is not a non-negative number", l.CPUQuota))
	}
	if l.MemoryMax < 0 {
		errs = append(errs, fmt.Errorf("memory max %d is negative", l.MemoryMax))
	}
	if l.PidsMax < 0 {
		errs = append(errs, fmt.Errorf("pids max %d is negative", l.PidsMax))
	}
	return errors.Join(errs...)
}

// FileValue is one cgroup interface file and the value written to it.
type FileValue struct {
	File, Value string
}

func (f FileValue) String() string { return f.File + "=" + f.Value }

// ParseFileValue parses "file=value" (the jailer's --cgroup syntax).
func ParseFileValue(s string) (FileValue, error) {
	file, value, ok := strings.Cut(s, "=")
	if !ok || file == "" || strings.ContainsAny(file, "/\x00") || file == "." || file == ".." || !strings.Contains(file, ".") {
		return FileValue{}, fmt.Errorf("invalid cgroup setting %q (want <controller>.<file>=<value>)", s)
	}
	return FileValue{file, value}, nil
}

// Files returns the interface files that apply l in the given cgroup
// version. v1 splits the CPU quota into period and quota files and calls
// the memory limit memory.limit_in_bytes; v2 has cpu.max "<quota>
// <period>" and memory.max. The period is written before the quota: v1
// checks the quota against the current period.
func (l Limits) Files(version int) []FileValue {
	var out []FileValue
	if l.CPUQuota > 0 {
		quota := max(int64(math.Round(l.CPUQuota*CPUPeriodUS)), 1000) // the kernel's minimum is 1 ms
		if version == 1 {
			out = append(out,
				FileValue{"cpu.cfs_period_us", strconv.Itoa(CPUPeriodUS)},
				FileValue{"cpu.cfs_quota_us", strconv.FormatInt(quota, 10)})
		} else {
			out = append(out, FileValue{"cpu.max", strconv.FormatInt(quota, 10) + " " + strconv.Itoa(CPUPeriodUS)})
		}
	}
	if l.MemoryMax > 0 {
		if version == 1 {
			out = append(out, FileValue{"memory.limit_in_bytes", strconv.FormatInt(l.MemoryMax, 10)})
		} else {
			out = append(out, FileValue{"memory.max", strconv.FormatInt(l.MemoryMax, 10)})
		}
	}
	if l.PidsMax > 0 {
		out = append(out, FileValue{"pids.max", strconv.FormatInt(l.PidsMax, 10)})
	}
	return out
}

// AccountingControllers are the controllers every VM cgroup joins, limits
// or not, so its CPU, memory and task counts can be read. (v1 keeps CPU
// usage in cpuacct, which may or may not be co-mounted with cpu.)
var AccountingControllers = []string{"cpu", "cpuacct", "memory", "pids"}

// Hierarchy says where the cgroup filesystems are mounted.
type Hierarchy struct {
	// Version is 1 or 2.
	Version int
	// Unified is the cgroup2 mount point (v2).
	Unified string
	// Controllers maps each v1 controller to its mount point;
	// co-mounted controllers share one.
	Controllers map[string]string
}

// v1Controllers are the names a v1 cgroup mount may list in its options.
var v1Controllers = map[string]bool{
	"cpu": true, "cpuacct": true, "cpuset": true, "memory": true, "devices": true, "freezer": true,
	"net_cls": true, "net_prio": true, "blkio": true, "perf_event": true, "hugetlb": true, "pids": true,
	"rdma": true, "misc": true,
}

// DetectHierarchy reads /proc/self/mounts.
func DetectHierarchy() (Hierarchy, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return Hierarchy{}, fmt.Errorf("detect cgroups: %w", err)
	}
	defer f.Close()
	return ParseMounts(f)
}

// ParseMounts builds a Hierarchy from /proc/mounts text. v1 is chosen
// when the memory controller has a v1 hierarchy (then the v2 mount of a
// hybrid host has no controllers to speak of); otherwise v2.
func ParseMounts(r io.Reader) (Hierarchy, error) {
	h := Hierarchy{Controllers: map[string]string{}}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 {
			continue
		}
		dir := unescapeMount(f[1])
		switch f[2] {
		case "cgroup2":
			if h.Unified == "" {
				h.Unified = dir
			}
		case "cgroup":
			for _, o := range strings.Split(f[3], ",") {
				if v1Controllers[o] {
					if _, ok := h.Controllers[o]; !ok {
						h.Controllers[o] = dir
					}
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return Hierarchy{}, fmt.Errorf("read mounts: %w", err)
	}
	switch {
	case h.Controllers["memory"] != "":
		h.Version = 1
	case h.Unified != "":
		h.Version = 2
	default:
		return Hierarchy{}, errors.New("no cgroup filesystem mounted")
	}
	return h, nil
}

// unescapeMount undoes the octal escapes of /proc/mounts (\040 for space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Cgroup is one cgroup, named by its path relative to the hierarchy root
// (e.g. "hearth/vm-1"), in all the hierarchies that account a VM.
type Cgroup struct {
	h   Hierarchy
	rel string
}

// Cgroup returns the cgroup at rel ("parent/id"); nothing is created.
func (h Hierarchy) Cgroup(rel string) *Cgroup {
	return &Cgroup{h: h, rel: filepath.Clean(rel)}
}

// Path returns the cgroup's path relative to the hierarchy root.
func (c *Cgroup) Path() string { return c.rel }

// Version returns 1 or 2.
func (c *Cgroup) Version() int { return c.h.Version }

// Dirs maps controllers to the cgroup's directories: for v2 the single
// key "" is the unified directory; for v1 each accounting controller
// that is mounted maps to its directory (co-mounted ones share it). This
// is the form metrics.CgroupDirs takes.
func (c *Cgroup) Dirs() map[string]string {
	if c.h.Version == 2 {
		return map[string]string{"": filepath.Join(c.h.Unified, c.rel)}
	}
	out := map[string]string{}
	for _, ctl := range AccountingControllers {
		if m := c.h.Controllers[ctl]; m != "" {
			out[ctl] = filepath.Join(m, c.rel)
		}
	}
	return out
}

// dirs returns the distinct directories of the cgroup, sorted.
func (c *Cgroup) dirs() []string {
	var out []string
	for _, d := range c.Dirs() {
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	slices.Sort(out)
	return out
}

// dirFor returns the directory holding controller's files.
func (c *Cgroup) dirFor(controller string) (string, error) {
	if c.h.Version == 2 {
		return filepath.Join(c.h.Unified, c.rel), nil
	}
	m := c.h.Controllers[controller]
	if m == "" {
		return "", fmt.Errorf("cgroup v1 controller %s is not mounted", controller)
	}
	return filepath.Join(m, c.rel), nil
}

// Create makes the cgroup in every accounting hierarchy and writes the
// settings (from Limits.Files or the jailer-style --cgroup values). On v2
// the controllers the settings need are first enabled in the parents'
// cgroup.subtree_control. An existing cgroup is reused (its settings are
// rewritten). On error, directories Create made are removed again.
func (c *Cgroup) Create(settings []FileValue) (err error) {
	if c.rel == "." || c.rel == "/" || strings.HasPrefix(c.rel, "..") || filepath.IsAbs(c.rel) {
		return fmt.Errorf("invalid cgroup path %q", c.rel)
	}
	var made []string
	defer func() {
		if err != nil {
			for i := len(made) - 1; i >= 0; i-- {
				unix.Rmdir(made[i])
			}
		}
	}()
	needed := map[string]bool{}
	for _, s := range settings {
		ctl, _, _ := strings.Cut(s.File, ".")
		needed[ctl] = true
	}
	dirs := c.dirs()
	if c.h.Version == 1 {
		// Settings of controllers outside the accounting set (cpuset,
		// blkio) get their own hierarchy's directory too.
		for ctl := range needed {
			d, err := c.dirFor(ctl)
			if err != nil {
				return err
			}
			if !slices.Contains(dirs, d) {
				dirs = append(dirs, d)
			}
		}
	} else {
		if err := c.enableV2(needed); err != nil {
			return err
		}
	}
	if len(dirs) == 0 {
		return errors.New("no cgroup hierarchy to create the cgroup in")
	}
	for _, d := range dirs {
		m, err := mkdirAllTracked(d)
		made = append(made, m...)
		if err != nil {
			return fmt.Errorf("create cgroup %s: %w", d, err)
		}
	}
	if c.h.Version == 1 && needed["cpuset"] {
		// A v1 cpuset cgroup starts with no CPUs or memory nodes, and no
		// task can join it until they are copied down from the parent.
		// Intermediate cgroups (the parent) start empty as well, so
		// values are copied level by level from the hierarchy root.
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if err := inheritCpuset(c.h.Controllers["cpuset"], c.rel, f); err != nil {
				return err
			}
		}
	}
	for _, s := range settings {
		ctl, _, _ := strings.Cut(s.File, ".")
		d, err := c.dirFor(ctl)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(d, s.File), []byte(s.Value), 0o644); err != nil {
			return fmt.Errorf("write cgroup %s=%s: %w", filepath.Join(d, s.File), s.Value, err)
		}
	}
	return nil
}

// inheritCpuset copies file down from root along rel wherever a level's
// value is empty.
func inheritCpuset(root, rel, file string) error {
	parent := root
	for _, p := range strings.Split(rel, string(filepath.Separator)) {
		cur := filepath.Join(parent, p)
		b, err := os.ReadFile(filepath.Join(cur, file))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("read %s: %w", filepath.Join(cur, file), err)
		}
		if len(bytes.TrimSpace(b)) == 0 {
			pv, err := os.ReadFile(filepath.Join(parent, file))
			if err != nil {
				return fmt.Errorf("inherit %s: %w", file, err)
			}
			if err := os.WriteFile(filepath.Join(cur, file), pv, 0o644); err != nil {
				return fmt.Errorf("inherit %s into %s: %w", file, cur, err)
			}
		}
		parent = cur
	}
	return nil
}

// mkdirAllTracked is os.MkdirAll that reports the directories it made,
// so a failed Create removes exactly those.
func mkdirAllTracked(dir string) ([]string, error) {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		missing = append(missing, d)
		if d == filepath.Dir(d) {
			break
		}
	}
	var made []string
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return made, err
		}
		made = append(made, missing[i])
	}
	return made, nil
}

// enableV2 enables the needed controllers (and the accounting ones the
// hierarchy offers) in cgroup.subtree_control from the root down to the
// cgroup's parent, so the cgroup gets their interface files.
func (c *Cgroup) enableV2(needed map[string]bool) error {
	avail := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(c.h.Unified, "cgroup.controllers")); err == nil {
		for _, f := range strings.Fields(string(b)) {
			avail[f] = true
		}
	}
	var ctls []string
	for ctl := range needed {
		if !avail[ctl] {
			return fmt.Errorf("cgroup v2 controller %s is not available in %s (controllers: %v)", ctl, c.h.Unified, slices.Sorted(maps.Keys(avail)))
		}
		ctls = append(ctls, ctl)
	}
	for _, ctl := range []string{"cpu", "memory", "pids"} {
		if avail[ctl] && !needed[ctl] {
			ctls = append(ctls, ctl)
		}
	}
	if len(ctls) == 0 {
		return nil
	}
	slices.Sort(ctls)
	var enable []string
	for _, ctl := range ctls {
		enable = append(enable, "+"+ctl)
	}
	dir := c.h.Unified
	parts := strings.Split(c.rel, string(filepath.Separator))
	for i, p := range parts {
		if i > 0 {
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("create cgroup %s: %w", dir, err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(strings.Join(enable, " ")), 0o644); err != nil {
			return fmt.Errorf("enable %s in %s: %w", strings.Join(enable, " "), dir, err)
		}
		dir = filepath.Join(dir, p)
	}
	return nil
}

// Join moves the process pid into the cgroup in every hierarchy. It
// writes cgroup.procs (the whole process with all its threads), not v1's
// "tasks" (one thread).
func (c *Cgroup) Join(pid int) error {
	for _, d := range c.dirs() {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("join cgroup %s: %w", d, err)
		}
	}
	return nil
}

// Exists reports whether any of the cgroup's directories exists.
func (c *Cgroup) Exists() bool {
	for _, d := range c.dirs() {
		if _, err := os.Stat(d); err == nil {
			return true
		}
	}
	return false
}

// Procs lists the processes in the cgroup (in any hierarchy).
func (c *Cgroup) Procs() ([]int, error) {
	var out []int
	for _, d := range c.dirs() {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list cgroup %s: %w", d, err)
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(out, pid) {
				out = append(out, pid)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// Kill SIGKILLs every process in the cgroup and waits up to timeout for
// the cgroup to empty. v2 uses cgroup.kill where the kernel has it;
// otherwise each listed pid is signalled through a pidfd, and only after
// re-checking (with the pidfd open) that the process still belongs to
// this cgroup, so a pid recycled meanwhile is never hit.
func (c *Cgroup) Kill(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	if c.h.Version == 2 {
		kill := filepath.Join(c.h.Unified, c.rel, "cgroup.kill")
		if _, err := os.Stat(kill); err == nil {
			if err := os.WriteFile(kill, []byte("1"), 0o644); err != nil {
				return fmt.Errorf("kill cgroup %s: %w", c.rel, err)
			}
		}
	}
	for {
		pids, err := c.Procs()
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s still has processes %v after %v", c.rel, pids, timeout)
		}
		for _, pid := range pids {
			c.killOne(pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (c *Cgroup) killOne(pid int) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return // gone already
	}
	defer unix.Close(fd)
	if !c.contains(pid) {
		return
	}
	unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
}

// contains reports whether /proc/<pid>/cgroup places pid in this cgroup.
func (c *Cgroup) contains(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return false
	}
	want := "/" + c.rel
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// "hierarchy-id:controllers:path"
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) == 3 && (parts[2] == want || strings.HasPrefix(parts[2], want+"/")) {
			return true
		}
	}
	return false
}

// Remove deletes the cgroup's directories (children first). Only empty
// cgroups can be removed, so this never strands a live process; a
// missing directory is not an error.
func (c *Cgroup) Remove() error {
	var errs []error
	for _, d := range c.dirs() {
		if err := removeCgroupTree(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func removeCgroupTree(d string) error {
	ents, err := os.ReadDir(d)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove cgroup %s: %w", d, err)
	}
	for _, e := range ents {
		if e.IsDir() {
			if err := removeCgroupTree(filepath.Join(d, e.Name())); err != nil {
				return err
			}
		}
	}
	if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
		if errors.Is(err, unix.ENOTEMPTY) {
			// Not a cgroupfs (a test's fake tree): plain files remain.
			if rerr := os.RemoveAll(d); rerr == nil {
				return nil
			}
		}
		return fmt.Errorf("remove cgroup %s: %w", d, err)
	}
	return nil
}

// Children lists the names of the cgroups directly under parent (relative
// path) in any hierarchy.
func (h Hierarchy) Children(parent string) ([]string, error) {
	var roots []string
	if h.Version == 2 {
		roots = []string{h.Unified}
	} else {
		for _, ctl := range AccountingControllers {
			if m := h.Controllers[ctl]; m != "" && !slices.Contains(roots, m) {
				roots = append(roots, m)
			}
		}
	}
	var out []string
	for _, r := range roots {
		ents, err := os.ReadDir(filepath.Join(r, parent))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list cgroups under %s: %w", parent, err)
		}
		for _, e := range ents {
			if e.IsDir() && !slices.Contains(out, e.Name()) {
				out = append(out, e.Name())
			}
		}
	}
	slices.Sort(out)
	return out, nil
}
