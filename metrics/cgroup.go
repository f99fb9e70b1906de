package metrics

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// CgroupDirs locates a VM's cgroup. For version 2 Dirs holds one entry
// under the key "" (the unified directory); for version 1 it maps each
// controller ("cpu", "cpuacct", "memory", "pids") to the VM's directory in
// that controller's hierarchy. Controllers co-mounted (cpu,cpuacct) may
// map to the same directory; a missing controller is simply not read.
type CgroupDirs struct {
	Version int               `json:"version"`
	Dirs    map[string]string `json:"dirs"`
}

func (c CgroupDirs) dir(controller string) string {
	if c.Version == 2 {
		return c.Dirs[""]
	}
	return c.Dirs[controller]
}

// CPUStats is CPU time used by the VMM (all its threads, the guest's
// vCPUs included).
type CPUStats struct {
	// Source is "cgroup" or "process" (/proc/<pid>/stat, when the VMM has
	// no cgroup with CPU accounting).
	Source           string `json:"source"`
	UsageNanos       uint64 `json:"usage_ns"`
	UserNanos        uint64 `json:"user_ns"`
	SystemNanos      uint64 `json:"system_ns"`
	ThrottledPeriods uint64 `json:"throttled_periods,omitempty"`
	ThrottledNanos   uint64 `json:"throttled_ns,omitempty"`
	// QuotaCPUs is the CPU limit in CPUs (1.5 = 150 %); 0 = unlimited.
	QuotaCPUs float64 `json:"quota_cpus,omitempty"`
}

// MemoryStats is memory charged to the VMM (guest memory it touched
// included).
type MemoryStats struct {
	// Source is "cgroup" or "process" (VmRSS/VmHWM).
	Source     string `json:"source"`
	UsageBytes uint64 `json:"usage_bytes"`
	PeakBytes  uint64 `json:"peak_bytes,omitempty"`
	// LimitBytes is 0 when unlimited.
	LimitBytes uint64 `json:"limit_bytes,omitempty"`
	AnonBytes  uint64 `json:"anon_bytes,omitempty"`
	FileBytes  uint64 `json:"file_bytes,omitempty"`
	OOMKills   uint64 `json:"oom_kills,omitempty"`
}

// PidsStats is the task count of the cgroup.
type PidsStats struct {
	Current uint64 `json:"current"`
	// Max is 0 when unlimited.
	Max uint64 `json:"max,omitempty"`
}

// userHZ is the unit of cpuacct.stat and /proc/<pid>/stat times. Linux
// reports them in USER_HZ, which is 100 on every architecture it runs on.
const userHZ = 100

// v1Unlimited: cgroup v1 reports "no limit" as a huge page-aligned
// number rather than "max".
const v1Unlimited = uint64(1) << 62

// ReadCgroupCPU reads CPU usage and throttling from the cgroup.
func ReadCgroupCPU(c CgroupDirs) (CPUStats, error) {
	s := CPUStats{Source: "cgroup"}
	if c.Version == 2 {
		d := c.dir("")
		kv, err := readKV(filepath.Join(d, "cpu.stat"))
		if err != nil {
			return s, err
		}
		s.UsageNanos = kv["usage_usec"] * 1000
		s.UserNanos = kv["user_usec"] * 1000
		s.SystemNanos = kv["system_usec"] * 1000
		s.ThrottledPeriods = kv["nr_throttled"]
		s.ThrottledNanos = kv["throttled_usec"] * 1000
		if b, err := os.ReadFile(filepath.Join(d, "cpu.max")); err == nil {
			f := strings.Fields(string(b))
			if len(f) == 2 && f[0] != "max" {
				q, err1 := strconv.ParseFloat(f[0], 64)
				p, err2 := strconv.ParseFloat(f[1], 64)
				if err1 == nil && err2 == nil && p > 0 {
					s.QuotaCPUs = q / p
				}
			}
		}
		return s, nil
	}
	acct := c.dir("cpuacct")
	if acct == "" {
		return s, fmt.Errorf("cgroup v1: no cpuacct directory: %w", os.ErrNotExist)
	}
	usage, err := readUint(filepath.Join(acct, "cpuacct.usage"))
	if err != nil {
		return s, err
	}
	s.UsageNanos = usage
	if kv, err := readKV(filepath.Join(acct, "cpuacct.stat")); err == nil {
		s.UserNanos = kv["user"] * (1e9 / userHZ)
		s.SystemNanos = kv["system"] * (1e9 / userHZ)
	}
	if cpu := c.dir("cpu"); cpu != "" {
		if kv, err := readKV(filepath.Join(cpu, "cpu.stat")); err == nil {
			s.ThrottledPeriods = kv["nr_throttled"]
			s.ThrottledNanos = kv["throttled_time"]
		}
		q, err1 := readInt(filepath.Join(cpu, "cpu.cfs_quota_us"))
		p, err2 := readInt(filepath.Join(cpu, "cpu.cfs_period_us"))
		if err1 == nil && err2 == nil && q > 0 && p > 0 {
			s.QuotaCPUs = float64(q) / float64(p)
		}
	}
	return s, nil
}

// ReadCgroupMemory reads memory usage, peak and limit from the cgroup.
func ReadCgroupMemory(c CgroupDirs) (MemoryStats, error) {
	s := MemoryStats{Source: "cgroup"}
	if c.Version == 2 {
		d := c.dir("")
		cur, err := readUint(filepath.Join(d, "memory.current"))
		if err != nil {
			return s, err
		}
		s.UsageBytes = cur
		s.PeakBytes, _ = readUint(filepath.Join(d, "memory.peak")) // kernel ≥ 5.19
		s.LimitBytes, _ = readMax(filepath.Join(d, "memory.max"))
		if kv, err := readKV(filepath.Join(d, "memory.stat")); err == nil {
			s.AnonBytes, s.FileBytes = kv["anon"], kv["file"]
		}
		if kv, err := readKV(filepath.Join(d, "memory.events")); err == nil {
			s.OOMKills = kv["oom_kill"]
		}
		return s, nil
	}
	d := c.dir("memory")
	if d == "" {
		return s, fmt.Errorf("cgroup v1: no memory directory: %w", os.ErrNotExist)
	}
	cur, err := readUint(filepath.Join(d, "memory.usage_in_bytes"))
	if err != nil {
		return s, err
	}
	s.UsageBytes = cur
	s.PeakBytes, _ = readUint(filepath.Join(d, "memory.max_usage_in_bytes"))
	if l, err := readUint(filepath.Join(d, "memory.limit_in_bytes")); err == nil && l < v1Unlimited {
		s.LimitBytes = l
	}
	if kv, err := readKV(filepath.Join(d, "memory.stat")); err == nil {
		s.AnonBytes, s.FileBytes = kv["rss"], kv["cache"]
	}
	if kv, err := readKV(filepath.Join(d, "memory.oom_control")); err == nil {
		s.OOMKills = kv["oom_kill"]
	}
	return s, nil
}

// ReadCgroupPids reads the task count and limit of the cgroup.
func ReadCgroupPids(c CgroupDirs) (PidsStats, error) {
	d := c.dir("pids")
	if d == "" {
		return PidsStats{}, fmt.Errorf("cgroup v1: no pids directory: %w", os.ErrNotExist)
	}
	cur, err := readUint(filepath.Join(d, "pids.current"))
	if err != nil {
		return PidsStats{}, err
	}
	max, _ := readMax(filepath.Join(d, "pids.max"))
	return PidsStats{Current: cur, Max: max}, nil
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return v, nil
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return v, nil
}

// readMax reads a v2-style limit: "max" is 0 (unlimited).
func readMax(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	s := string(bytes.TrimSpace(b))
	if s == "max" {
		return 0, nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return v, nil
}

// readKV reads "key value" lines (cpu.stat, memory.stat, …). Lines that
// do not parse are skipped: the kernel adds keys over time.
func readKV(path string) (map[string]uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
			out[f[0]] = v
		}
	}
	if len(out) == 0 && len(bytes.TrimSpace(b)) > 0 {
		return nil, errors.New("parse " + path + ": no key/value lines")
	}
	return out, nil
}
