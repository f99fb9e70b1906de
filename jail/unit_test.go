package jail

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestAllocateCredential(t *testing.T) {
	a := NewMemAllocator()
	r := Range{Lo: 5000, Hi: 5002}
	var got []Credential
	for _, vm := range []string{"a", "b", "c"} {
		c, err := AllocateCredential(a, r, vm)
		if err != nil {
			t.Fatal(err)
		}
		if c.UID != c.GID {
			t.Fatalf("uid %d gid %d differ", c.UID, c.GID)
		}
		got = append(got, c)
	}
	if got[0].UID != 5000 || got[1].UID != 5001 || got[2].UID != 5002 {
		t.Fatalf("not the lowest free: %v", got)
	}
	if _, err := AllocateCredential(a, r, "d"); !errors.Is(err, ErrPoolFull) {
		t.Fatalf("full range: %v", err)
	}
	if err := ReleaseCredential(a, got[1]); err != nil {
		t.Fatal(err)
	}
	c, err := AllocateCredential(a, r, "d")
	if err != nil || c.UID != 5001 {
		t.Fatalf("released uid not reused: %v %v", c, err)
	}
	if !slices.Equal(a.Allocations(IDPool), []uint64{5000, 5001, 5002}) {
		t.Fatalf("allocations %v", a.Allocations(IDPool))
	}
	for _, bad := range []Range{{0, 10}, {10, 9}} {
		if _, err := AllocateCredential(a, bad, "x"); err == nil {
			t.Fatalf("range %v accepted", bad)
		}
	}
}

func TestLimitsFiles(t *testing.T) {
	cases := []struct {
		name    string
		l       Limits
		version int
		want    []string
	}{
		{"none", Limits{}, 1, nil},
		{"v1 all", Limits{CPUQuota: 1.5, MemoryMax: 256 << 20, PidsMax: 64}, 1,
			[]string{"cpu.cfs_period_us=100000", "cpu.cfs_quota_us=150000", "memory.limit_in_bytes=268435456", "pids.max=64"}},
		{"v2 all", Limits{CPUQuota: 0.5, MemoryMax: 1 << 30, PidsMax: 10}, 2,
			[]string{"cpu.max=50000 100000", "memory.max=1073741824", "pids.max=10"}},
		{"tiny quota clamps to 1ms", Limits{CPUQuota: 0.001}, 2, []string{"cpu.max=1000 100000"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got []string
			for _, f := range c.l.Files(c.version) {
				got = append(got, f.String())
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
	if err := (Limits{CPUQuota: -1, MemoryMax: -1, PidsMax: -1}).Validate(); err == nil || strings.Count(err.Error(), "\n") != 2 {
		t.Fatalf("validate: %v", err)
	}
}

func TestParseFileValue(t *testing.T) {
	for _, ok := range []string{"cpu.max=1 2", "memory.limit_in_bytes=5", "cpuset.cpus=0-1", "pids.max=max"} {
		if _, err := ParseFileValue(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "nofile", "=3", "../x=1", "cpu/max=1", "pids=1"} {
		if _, err := ParseFileValue(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseMounts(t *testing.T) {
	cases := []struct {
		name   string
		mounts string
		want   Hierarchy
		err    bool
	}{
		{
			name: "hybrid with split v1 controllers (this CI machine)",
			mounts: `tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
`,
			want: Hierarchy{Version: 1, Unified: "/sys/fs/cgroup/unified", Controllers: map[string]string{
				"cpu": "/sys/fs/cgroup/cpu", "cpuacct": "/sys/fs/cgroup/cpuacct", "memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids"}},
		},
		{
			name: "co-mounted cpu,cpuacct",
			mounts: `cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0
`,
			want: Hierarchy{Version: 1, Controllers: map[string]string{
				"cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct", "memory": "/sys/fs/cgroup/memory"}},
		},
		{
			name:   "pure v2",
			mounts: "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n",
			want:   Hierarchy{Version: 2, Unified: "/sys/fs/cgroup", Controllers: map[string]string{}},
		},
		{
			name:   "escaped mount point",
			mounts: `cgroup2 /mnt/my\040cgroups cgroup2 rw 0 0` + "\n",
			want:   Hierarchy{Version: 2, Unified: "/mnt/my cgroups", Controllers: map[string]string{}},
		},
		{name: "none", mounts: "proc /proc proc rw 0 0\n", err: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseMounts(strings.NewReader(c.mounts))
			if (err != nil) != c.err {
				t.Fatalf("err %v", err)
			}
			if !c.err && !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %+v\nwant %+v", got, c.want)
			}
		})
	}
}

// fakeV2 builds a cgroup2 tree as the kernel shows it at the root:
// cgroup.controllers lists what can be enabled.
func fakeV2(t *testing.T, controllers string) Hierarchy {
	t.Helper()
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte(controllers+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return Hierarchy{Version: 2, Unified: root}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCgroupV2Fake(t *testing.T) {
	h := fakeV2(t, "cpuset cpu io memory hugetlb pids")
	cg := h.Cgroup("hearth/vm-1")
	limits := Limits{CPUQuota: 2, MemoryMax: 128 << 20, PidsMax: 32}
	if err := cg.Create(limits.Files(2)); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(h.Unified, "hearth", "vm-1")
	for f, want := range map[string]string{"cpu.max": "200000 100000", "memory.max": "134217728", "pids.max": "32"} {
		if got := readFile(t, filepath.Join(dir, f)); got != want {
			t.Errorf("%s = %q, want %q", f, got, want)
		}
	}
	// Controllers enabled from the root down to the parent, not in the
	// leaf (which holds the process: no internal process constraint).
	for _, d := range []string{h.Unified, filepath.Join(h.Unified, "hearth")} {
		if got := readFile(t, filepath.Join(d, "cgroup.subtree_control")); got != "+cpu +memory +pids" {
			t.Errorf("%s subtree_control %q", d, got)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.subtree_control")); err == nil {
		t.Error("controllers enabled in the leaf")
	}
	if !reflect.DeepEqual(cg.Dirs(), map[string]string{"": dir}) || cg.Version() != 2 {
		t.Fatalf("dirs %v", cg.Dirs())
	}
	if kids, err := h.Children("hearth"); err != nil || !slices.Equal(kids, []string{"vm-1"}) {
		t.Fatalf("children %v %v", kids, err)
	}
	if err := cg.Remove(); err != nil {
		t.Fatal(err)
	}
	if cg.Exists() {
		t.Fatal("cgroup left after Remove")
	}
	if err := cg.Remove(); err != nil {
		t.Fatalf("second remove: %v", err)
	}

	// A controller the hierarchy lacks (v2 on a host whose controllers
	// are bound to v1) is an error naming it, and nothing is left.
	h2 := fakeV2(t, "hugetlb")
	cg2 := h2.Cgroup("hearth/vm-2")
	err := cg2.Create(Limits{MemoryMax: 1 << 20}.Files(2))
	if err == nil || !strings.Contains(err.Error(), "memory") {
		t.Fatalf("missing controller: %v", err)
	}
	if cg2.Exists() {
		t.Fatal("cgroup left after a failed create")
	}
	for _, bad := range []string{"", ".", "../x", "/abs"} {
		if err := h.Cgroup(bad).Create(nil); err == nil {
			t.Errorf("path %q accepted", bad)
		}
	}
}

func TestCgroupV1Fake(t *testing.T) {
	root := t.TempDir()
	h := Hierarchy{Version: 1, Controllers: map[string]string{}}
	for _, c := range []string{"cpu", "cpuacct", "memory", "pids", "cpuset"} {
		d := filepath.Join(root, c)
		os.MkdirAll(d, 0o755)
		h.Controllers[c] = d
	}
	os.WriteFile(filepath.Join(root, "cpuset", "cpuset.cpus"), []byte("0-1\n"), 0o644)
	os.WriteFile(filepath.Join(root, "cpuset", "cpuset.mems"), []byte("0\n"), 0o644)
	cg := h.Cgroup("hearth/vm-1")
	settings := append(Limits{CPUQuota: 0.25, MemoryMax: 64 << 20, PidsMax: 8}.Files(1), FileValue{"cpuset.cpus", "1"})
	if err := cg.Create(settings); err != nil {
		t.Fatal(err)
	}
	for f, want := range map[string]string{
		"cpu/hearth/vm-1/cpu.cfs_period_us":        "100000",
		"cpu/hearth/vm-1/cpu.cfs_quota_us":         "25000",
		"memory/hearth/vm-1/memory.limit_in_bytes": "67108864",
		"pids/hearth/vm-1/pids.max":                "8",
		"cpuset/hearth/vm-1/cpuset.cpus":           "1",
		"cpuset/hearth/vm-1/cpuset.mems":           "0\n", // inherited
	} {
		if got := readFile(t, filepath.Join(root, f)); got != want {
			t.Errorf("%s = %q, want %q", f, got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "cpuacct/hearth/vm-1")); err != nil {
		t.Error("no cpuacct cgroup for CPU accounting")
	}
	want := map[string]string{}
	for _, c := range AccountingControllers {
		want[c] = filepath.Join(root, c, "hearth", "vm-1")
	}
	if !reflect.DeepEqual(cg.Dirs(), want) {
		t.Fatalf("dirs %v", cg.Dirs())
	}
	if err := cg.Remove(); err != nil {
		t.Fatal(err)
	}
	for _, c := range AccountingControllers {
		if _, err := os.Stat(filepath.Join(root, c, "hearth", "vm-1")); err == nil {
			t.Errorf("%s cgroup left", c)
		}
	}
	// Settings of an unmounted controller fail before anything is made.
	h.Controllers = map[string]string{"memory": h.Controllers["memory"]}
	if err := h.Cgroup("hearth/vm-2").Create([]FileValue{{"blkio.weight", "10"}}); err == nil {
		t.Fatal("unmounted controller accepted")
	}
}

func TestParseLoaderList(t *testing.T) {
	out := `	linux-vdso.so.1 (0x00007ffc5d5f2000)
	libselinux.so.1 => /lib/x86_64-linux-gnu/libselinux.so.1 (0x00007f1c0e1b2000)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1c0dfd1000)
	/lib64/ld-linux-x86-64.so.2 (0x00007f1c0e21c000)
`
	got, err := parseLoaderList([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/lib/x86_64-linux-gnu/libselinux.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v", got)
	}
	if _, err := parseLoaderList([]byte("\tlibgone.so.3 => not found\n")); err == nil {
		t.Fatal("missing library accepted")
	}
}

func TestSharedLibraries(t *testing.T) {
	if _, err := os.Stat("/usr/bin/true"); err != nil {
		t.Skip("no /usr/bin/true")
	}
	libs, err := SharedLibraries("/usr/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	// Either static (some distributions) or with libc and a loader.
	if len(libs) > 0 && !slices.ContainsFunc(libs, func(s string) bool { return strings.Contains(s, "libc.so") }) {
		t.Fatalf("libc missing from %v", libs)
	}
	self, _ := os.Executable()
	if _, err := SharedLibraries(self); err != nil { // a Go binary, static or not
		t.Fatal(err)
	}
	if _, err := SharedLibraries("/etc/hostname"); err == nil {
		t.Fatal("non-ELF accepted")
	}
}

func TestLinkOrCopy(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.WriteFile(src, []byte("kernel"), 0o644)
	link := filepath.Join(dir, "via-link")
	os.Symlink(src, link)
	dst := filepath.Join(dir, "dst")
	// Through a symlink: the file is linked, not the symlink.
	if err := LinkOrCopy(link, dst); err != nil {
		t.Fatal(err)
	}
	sst, _ := os.Stat(src)
	dstat, _ := os.Lstat(dst)
	if !os.SameFile(sst, dstat) || dstat.Mode()&os.ModeSymlink != 0 {
		t.Fatal("dst is not a hard link of src")
	}
	if err := LinkOrCopy(src, dst); err != nil { // already linked: kept
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other")
	os.WriteFile(other, []byte("new"), 0o644)
	if err := LinkOrCopy(other, dst); err != nil {
		t.Fatal(err)
	}
	if readFile(t, dst) != "new" || readFile(t, src) != "kernel" {
		t.Fatal("stale dst not replaced, or src changed")
	}
	if err := LinkOrCopy(dir, filepath.Join(dir, "d")); err == nil {
		t.Fatal("directory staged")
	}
	// Across filesystems (tmpfs /dev/shm, when the temp dir is elsewhere)
	// it copies.
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		shm, err := os.MkdirTemp("/dev/shm", "jailtest")
		if err == nil {
			defer os.RemoveAll(shm)
			d := filepath.Join(shm, "copy")
			if err := LinkOrCopy(src, d); err != nil {
				t.Fatal(err)
			}
			if readFile(t, d) != "kernel" {
				t.Fatal("copy differs")
			}
			if err := MoveFile(d, filepath.Join(dir, "moved")); err != nil || readFile(t, filepath.Join(dir, "moved")) != "kernel" {
				t.Fatalf("move across filesystems: %v", err)
			}
		}
	}
}

func TestExecArgsRoundTrip(t *testing.T) {
	s := ExecSpec{
		ID: "vm-7", Chroot: "/srv/hearth/jail/qemu-system-x86_64/vm-7/root", UID: 7000001, GID: 7000001,
		CgroupParent: "hearth", CgroupVersion: 1,
		Cgroup:  Limits{CPUQuota: 1, MemoryMax: 512 << 20, PidsMax: 100}.Files(1),
		NetNS:   "/run/netns/hth-3",
		Rlimits: []Rlimit{{"no-file", 2048}, {"fsize", 1 << 30}},
		Devices: []string{"/dev/kvm", "/dev/net/tun"},
		Exec:    "/usr/bin/qemu-system-x86_64",
		VMMArgs: []string{"-M", "microvm", "--uid", "not-a-jail-flag", "--", "x"},
	}
	golden := "--chroot /srv/hearth/jail/qemu-system-x86_64/vm-7/root --uid 7000001 --gid 7000001 --id vm-7 --cgroup-parent hearth --cgroup-version 1 " +
		"--cgroup cpu.cfs_period_us=100000 --cgroup cpu.cfs_quota_us=100000 --cgroup memory.limit_in_bytes=536870912 --cgroup pids.max=100 " +
		"--netns /run/netns/hth-3 --rlimit no-file=2048 --rlimit fsize=1073741824 --dev /dev/kvm --dev /dev/net/tun " +
		"-- /usr/bin/qemu-system-x86_64 -M microvm --uid not-a-jail-flag -- x"
	if got := strings.Join(s.Args(), " "); got != golden {
		t.Fatalf("args:\n%s\nwant\n%s", got, golden)
	}
	back, err := ParseExecArgs(s.Args())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, s) {
		t.Fatalf("round trip:\n%+v\n%+v", back, s)
	}
}

func TestParseExecArgsRejects(t *testing.T) {
	base := []string{"--chroot", "/j/root", "--uid", "7000000", "--gid", "7000000"}
	cases := map[string][]string{
		"no vmm":           base,
		"relative vmm":     append(slices.Clone(base), "--", "qemu"),
		"root uid":         {"--chroot", "/j/root", "--uid", "0", "--gid", "0", "--", "/bin/true"},
		"chroot /":         {"--chroot", "/", "--uid", "1", "--gid", "1", "--", "/bin/true"},
		"relative chroot":  {"--chroot", "j", "--uid", "1", "--gid", "1", "--", "/bin/true"},
		"cgroup no parent": append(slices.Clone(base), "--cgroup", "pids.max=1", "--", "/bin/true"),
		"cgroup no id":     append(slices.Clone(base), "--cgroup-parent", "hearth", "--", "/bin/true"),
		"bad id":           append(slices.Clone(base), "--cgroup-parent", "hearth", "--id", "../x", "--", "/bin/true"),
		"parent escapes":   append(slices.Clone(base), "--cgroup-parent", "../x", "--id", "a", "--", "/bin/true"),
		"bad rlimit":       append(slices.Clone(base), "--rlimit", "stack=1", "--", "/bin/true"),
		"bad rlimit value": append(slices.Clone(base), "--rlimit", "no-file=many", "--", "/bin/true"),
		"bad cgroup":       append(slices.Clone(base), "--cgroup-parent", "h", "--id", "a", "--cgroup", "nonsense", "--", "/bin/true"),
		"bad version":      append(slices.Clone(base), "--cgroup-version", "3", "--", "/bin/true"),
		"relative netns":   append(slices.Clone(base), "--netns", "ns", "--", "/bin/true"),
		"relative dev":     append(slices.Clone(base), "--dev", "kvm", "--", "/bin/true"),
		"unknown flag":     append(slices.Clone(base), "--privileged", "--", "/bin/true"),
	}
	for name, args := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseExecArgs(args); err == nil {
				t.Fatalf("%v accepted", args)
			}
		})
	}
}

func TestManagerFake(t *testing.T) {
	h := fakeV2(t, "cpu memory pids")
	base := filepath.Join(t.TempDir(), "jails")
	alloc := NewMemAllocator()
	m, err := New(Config{ChrootBase: base, Hierarchy: &h, IDs: Range{Lo: 100, Hi: 200}}, alloc)
	if err != nil {
		t.Fatal(err)
	}
	cred, err := m.Allocate("vm-1")
	if err != nil || cred.UID != 100 {
		t.Fatalf("%v %v", cred, err)
	}
	spec, err := m.ExecSpec("/usr/bin/qemu-system-x86_64", "vm-1", cred, Limits{MemoryMax: 1 << 20}, "", nil, []string{"-M", "microvm"})
	if err != nil {
		t.Fatal(err)
	}
	if spec.Chroot != filepath.Join(base, "qemu-system-x86_64", "vm-1", "root") || spec.CgroupParent != "hearth" || spec.CgroupVersion != 2 ||
		!slices.Equal(spec.Cgroup, []FileValue{{"memory.max", "1048576"}}) {
		t.Fatalf("spec %+v", spec)
	}
	// Two VMs with jails and cgroups; one of them orphaned.
	for _, id := range []string{"vm-1", "orphan"} {
		if _, err := m.Prepare("qemu-system-x86_64", id, Credential{UID: os.Getuid(), GID: os.Getgid()}); err != nil {
			t.Fatal(err)
		}
		if err := m.Cgroup(id).Create(nil); err != nil {
			t.Fatal(err)
		}
	}
	// A cgroup without a jail (a Firecracker jailer's, say) is found too.
	if err := m.Cgroup("fc-orphan").Create(nil); err != nil {
		t.Fatal(err)
	}
	rep, err := m.Reconcile(func(id string) bool { return id == "vm-1" })
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Jails, []string{m.JailDir("qemu-system-x86_64", "orphan")}) ||
		!slices.Equal(rep.Cgroups, []string{"hearth/fc-orphan"}) {
		t.Fatalf("report %+v", rep)
	}
	if _, err := os.Stat(m.ChrootDir("qemu-system-x86_64", "vm-1")); err != nil {
		t.Fatal("owned jail removed")
	}
	if !m.Cgroup("vm-1").Exists() || m.Cgroup("orphan").Exists() {
		t.Fatal("wrong cgroups removed")
	}
	if err := m.Teardown("qemu-system-x86_64", "vm-1"); err != nil {
		t.Fatal(err)
	}
	if err := m.Teardown("qemu-system-x86_64", "vm-1"); err != nil {
		t.Fatalf("second teardown: %v", err)
	}
	if ents, _ := os.ReadDir(base); len(ents) != 0 {
		t.Fatalf("left in the chroot base: %v", ents)
	}
	if kids, _ := h.Children("hearth"); len(kids) != 0 {
		t.Fatalf("cgroups left: %v", kids)
	}
	if err := m.Teardown("x", "../etc"); err == nil {
		t.Fatal("path traversal accepted")
	}
	for _, bad := range []Config{{ChrootBase: "rel"}, {ChrootBase: "/"}, {ChrootBase: "/x", CgroupParent: "/abs"}, {ChrootBase: "/x", IDs: Range{Lo: 0, Hi: 5}}} {
		bad.Hierarchy = &h
		if _, err := New(bad, alloc); err == nil {
			t.Errorf("config %+v accepted", bad)
		}
	}
}
