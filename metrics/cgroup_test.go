package metrics

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// writeTree writes files (relative path → content) under a temp dir.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCgroupReadersV2(t *testing.T) {
	root := writeTree(t, map[string]string{
		"hearth/vm1/cpu.stat":       "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 10\nnr_throttled 3\nthrottled_usec 700000\nnr_bursts 0\nburst_usec 0\n",
		"hearth/vm1/cpu.max":        "150000 100000\n",
		"hearth/vm1/memory.current": "104857600\n",
		"hearth/vm1/memory.peak":    "209715200\n",
		"hearth/vm1/memory.max":     "268435456\n",
		"hearth/vm1/memory.stat":    "anon 73400320\nfile 31457280\nkernel 1000\n",
		"hearth/vm1/memory.events":  "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
		"hearth/vm1/pids.current":   "7\n",
		"hearth/vm1/pids.max":       "max\n",
		"hearth/vm2/cpu.stat":       "usage_usec 1\n",
		"hearth/vm2/cpu.max":        "max 100000\n",
		"hearth/vm2/memory.current": "4096\n",
		"hearth/vm2/memory.max":     "max\n",
		"hearth/vm2/pids.current":   "1\n",
		"hearth/vm2/pids.max":       "64\n",
	})
	dirs := func(vm string) CgroupDirs {
		return CgroupDirs{Version: 2, Dirs: map[string]string{"": filepath.Join(root, "hearth", vm)}}
	}
	cpu, err := ReadCgroupCPU(dirs("vm1"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (CPUStats{Source: "cgroup", UsageNanos: 2.5e9, UserNanos: 2e9, SystemNanos: 0.5e9, ThrottledPeriods: 3, ThrottledNanos: 0.7e9, QuotaCPUs: 1.5}); cpu != want {
		t.Fatalf("cpu %+v, want %+v", cpu, want)
	}
	mem, err := ReadCgroupMemory(dirs("vm1"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (MemoryStats{Source: "cgroup", UsageBytes: 100 << 20, PeakBytes: 200 << 20, LimitBytes: 256 << 20, AnonBytes: 70 << 20, FileBytes: 30 << 20, OOMKills: 1}); mem != want {
		t.Fatalf("memory %+v, want %+v", mem, want)
	}
	pids, err := ReadCgroupPids(dirs("vm1"))
	if err != nil || pids != (PidsStats{Current: 7}) {
		t.Fatalf("pids %+v %v", pids, err)
	}
	// Unlimited and older kernels (no memory.peak, no memory.events).
	cpu, _ = ReadCgroupCPU(dirs("vm2"))
	mem, _ = ReadCgroupMemory(dirs("vm2"))
	pids, _ = ReadCgroupPids(dirs("vm2"))
	if cpu.QuotaCPUs != 0 || mem.LimitBytes != 0 || mem.PeakBytes != 0 || mem.UsageBytes != 4096 || pids.Max != 64 {
		t.Fatalf("vm2: %+v %+v %+v", cpu, mem, pids)
	}
	if _, err := ReadCgroupCPU(dirs("gone")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing cgroup: %v", err)
	}
}

func TestCgroupReadersV1(t *testing.T) {
	root := writeTree(t, map[string]string{
		"cpuacct/hearth/vm1/cpuacct.usage":            "3000000000\n",
		"cpuacct/hearth/vm1/cpuacct.stat":             "user 250\nsystem 50\n",
		"cpu/hearth/vm1/cpu.stat":                     "nr_periods 20\nnr_throttled 5\nthrottled_time 900000000\n",
		"cpu/hearth/vm1/cpu.cfs_quota_us":             "50000\n",
		"cpu/hearth/vm1/cpu.cfs_period_us":            "100000\n",
		"memory/hearth/vm1/memory.usage_in_bytes":     "52428800\n",
		"memory/hearth/vm1/memory.max_usage_in_bytes": "62914560\n",
		"memory/hearth/vm1/memory.limit_in_bytes":     "134217728\n",
		"memory/hearth/vm1/memory.stat":               "cache 1048576\nrss 41943040\ntotal_rss 41943040\n",
		"memory/hearth/vm1/memory.oom_control":        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
		"pids/hearth/vm1/pids.current":                "3\n",
		"pids/hearth/vm1/pids.max":                    "100\n",
		// Unlimited: v1 reports huge numbers and a -1 quota.
		"cpuacct/hearth/vm2/cpuacct.usage":        "1\n",
		"cpu/hearth/vm2/cpu.cfs_quota_us":         "-1\n",
		"cpu/hearth/vm2/cpu.cfs_period_us":        "100000\n",
		"memory/hearth/vm2/memory.usage_in_bytes": "4096\n",
		"memory/hearth/vm2/memory.limit_in_bytes": "9223372036854771712\n",
	})
	dirs := func(vm string) CgroupDirs {
		d := CgroupDirs{Version: 1, Dirs: map[string]string{}}
		for _, c := range []string{"cpu", "cpuacct", "memory", "pids"} {
			d.Dirs[c] = filepath.Join(root, c, "hearth", vm)
		}
		return d
	}
	cpu, err := ReadCgroupCPU(dirs("vm1"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (CPUStats{Source: "cgroup", UsageNanos: 3e9, UserNanos: 2.5e9, SystemNanos: 0.5e9, ThrottledPeriods: 5, ThrottledNanos: 0.9e9, QuotaCPUs: 0.5}); cpu != want {
		t.Fatalf("cpu %+v, want %+v", cpu, want)
	}
	mem, err := ReadCgroupMemory(dirs("vm1"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (MemoryStats{Source: "cgroup", UsageBytes: 50 << 20, PeakBytes: 60 << 20, LimitBytes: 128 << 20, AnonBytes: 40 << 20, FileBytes: 1 << 20, OOMKills: 2}); mem != want {
		t.Fatalf("memory %+v, want %+v", mem, want)
	}
	if p, err := ReadCgroupPids(dirs("vm1")); err != nil || p != (PidsStats{Current: 3, Max: 100}) {
		t.Fatalf("pids %+v %v", p, err)
	}
	cpu, _ = ReadCgroupCPU(dirs("vm2"))
	mem, _ = ReadCgroupMemory(dirs("vm2"))
	if cpu.QuotaCPUs != 0 || mem.LimitBytes != 0 {
		t.Fatalf("unlimited vm2 read as limited: %+v %+v", cpu, mem)
	}
	// A v1 layout without cpuacct cannot give usage.
	noacct := dirs("vm1")
	delete(noacct.Dirs, "cpuacct")
	if _, err := ReadCgroupCPU(noacct); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("no cpuacct: %v", err)
	}
}

// TestCgroupReadersRealV1 reads a cgroup this test creates in the host's
// v1 hierarchies (root only), with the test process in it.
func TestCgroupReadersRealV1(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	dirs := CgroupDirs{Version: 1, Dirs: map[string]string{}}
	for _, c := range []string{"cpuacct", "memory", "pids"} {
		base := filepath.Join("/sys/fs/cgroup", c)
		if _, err := os.Stat(filepath.Join(base, "cgroup.procs")); err != nil {
			t.Skipf("no cgroup v1 %s hierarchy", c)
		}
		d := filepath.Join(base, "hearth-test-metrics-"+filepath.Base(t.TempDir()))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(d) })
		dirs.Dirs[c] = d
	}
	if _, err := ReadCgroupCPU(dirs); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadCgroupMemory(dirs); err != nil {
		t.Fatal(err)
	}
	if p, err := ReadCgroupPids(dirs); err != nil || p.Current != 0 {
		t.Fatalf("pids %+v %v", p, err)
	}
}
