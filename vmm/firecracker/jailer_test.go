package firecracker

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func jailerCmd(version int) JailerCommand {
	return JailerCommand{
		ID: "vm-0a1b", ExecFile: "/usr/bin/firecracker", UID: 10042, GID: 10042,
		ChrootBaseDir: "/srv/hearth/jail", CgroupVersion: version,
		CPUQuota: 1.5, MemoryMax: 512 << 20, PidsMax: 64,
		NetNS: "/run/netns/hth-7", NoFile: 4096, FSize: 8 << 30,
		FirecrackerArgs: []string{"--api-sock", JailedAPISocket},
	}
}

func TestJailerArgsGolden(t *testing.T) {
	minimal := JailerCommand{ID: "a", ExecFile: "/opt/firecracker-v1.12", ChrootBaseDir: "/j", CgroupVersion: 2,
		FirecrackerArgs: []string{"--api-sock", JailedAPISocket}}
	parent := jailerCmd(2)
	parent.ParentCgroup = "hearth.slice"
	for name, jc := range map[string]JailerCommand{
		"jailer_v1": jailerCmd(1), "jailer_v2": jailerCmd(2),
		"jailer_minimal": minimal, "jailer_parent_cgroup": parent,
	} {
		t.Run(name, func(t *testing.T) {
			args, err := jc.Args()
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, name, args)
		})
	}
}

func TestCgroupArgs(t *testing.T) {
	for _, c := range []struct {
		name    string
		version int
		cpu     float64
		mem     int64
		pids    int64
		want    []string
	}{
		{"none", 2, 0, 0, 0, nil},
		{"v1 all", 1, 0.5, 1 << 30, 100, []string{"cpu.cfs_period_us=100000", "cpu.cfs_quota_us=50000", "memory.limit_in_bytes=1073741824", "pids.max=100"}},
		{"v2 all", 2, 2, 1 << 30, 100, []string{"cpu.max=200000 100000", "memory.max=1073741824", "pids.max=100"}},
		{"tiny quota clamps to 1ms", 2, 0.001, 0, 0, []string{"cpu.max=1000 100000"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := CgroupArgs(c.version, c.cpu, c.mem, c.pids); !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
}

func TestJailerValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		mod  func(*JailerCommand)
	}{
		{"underscore in id", func(j *JailerCommand) { j.ID = "vm_1" }},
		{"long id", func(j *JailerCommand) { j.ID = string(make([]byte, 65)) }},
		{"relative exec", func(j *JailerCommand) { j.ExecFile = "firecracker" }},
		{"exec not named firecracker", func(j *JailerCommand) { j.ExecFile = "/usr/bin/qemu" }},
		{"negative uid", func(j *JailerCommand) { j.UID = -1 }},
		{"relative base", func(j *JailerCommand) { j.ChrootBaseDir = "jail" }},
		{"cgroup v3", func(j *JailerCommand) { j.CgroupVersion = 3 }},
		{"negative memory", func(j *JailerCommand) { j.MemoryMax = -1 }},
		{"relative netns", func(j *JailerCommand) { j.NetNS = "netns" }},
	} {
		t.Run(c.name, func(t *testing.T) {
			jc := jailerCmd(2)
			c.mod(&jc)
			if _, err := jc.Args(); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Args() error = %v, want ErrInvalidConfig", err)
			}
		})
	}
}

func TestJailLayout(t *testing.T) {
	jc := jailerCmd(1)
	if got, want := jc.Chroot(), "/srv/hearth/jail/firecracker/vm-0a1b/root"; got != want {
		t.Fatalf("chroot %s, want %s", got, want)
	}
	if got, want := jc.PidFile(), "/srv/hearth/jail/firecracker/vm-0a1b/root/firecracker.pid"; got != want {
		t.Fatalf("pid file %s, want %s", got, want)
	}
	want := []string{"/cg/cpu/firecracker/vm-0a1b", "/cg/memory/firecracker/vm-0a1b", "/cg/pids/firecracker/vm-0a1b"}
	if got := jc.cgroupDirs("/cg"); !reflect.DeepEqual(got, want) {
		t.Fatalf("v1 cgroups %q, want %q", got, want)
	}
	jc = jailerCmd(2)
	jc.ParentCgroup = "hearth.slice"
	if got := jc.cgroupDirs("/cg"); !reflect.DeepEqual(got, []string{"/cg/hearth.slice/vm-0a1b"}) {
		t.Fatalf("v2 cgroups %q", got)
	}
}

func TestLinkOrCopy(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("kernel"), 0o640); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst")
	if err := linkOrCopy(src, dst); err != nil {
		t.Fatal(err)
	}
	a, _ := os.Stat(src)
	b, _ := os.Stat(dst)
	if !os.SameFile(a, b) {
		t.Fatal("same filesystem: expected a hard link")
	}
	if err := linkOrCopy(src, dst); err != nil {
		t.Fatalf("relinking the same file: %v", err)
	}
	// A stale, different file at the destination is replaced.
	other := filepath.Join(dir, "other")
	os.WriteFile(other, []byte("old"), 0o600)
	if err := linkOrCopy(other, dst); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dst); string(got) != "old" {
		t.Fatalf("dst holds %q", got)
	}
	if err := linkOrCopy(filepath.Join(dir, "missing"), filepath.Join(dir, "x")); err == nil {
		t.Fatal("missing source accepted")
	}
	if err := linkOrCopy(dir, filepath.Join(dir, "y")); err == nil {
		t.Fatal("directory accepted as a file")
	}
}

func TestCopyAndMove(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "a")
	os.WriteFile(src, []byte("mem"), 0o600)
	if err := copyFile(src, filepath.Join(dir, "b"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := copyFile(src, filepath.Join(dir, "b"), 0o600); err == nil {
		t.Fatal("copy over an existing file must fail")
	}
	if err := moveFile(src, filepath.Join(dir, "c")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(src); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("source still there after move")
	}
	// Across filesystems: /dev/shm is a tmpfs on Linux.
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		shm, err := os.MkdirTemp("/dev/shm", "fcmove")
		if err == nil {
			defer os.RemoveAll(shm)
			if err := moveFile(filepath.Join(dir, "c"), filepath.Join(shm, "c")); err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(filepath.Join(shm, "c")); string(got) != "mem" {
				t.Fatalf("moved content %q", got)
			}
		}
	}
}

func TestJailStage(t *testing.T) {
	base := t.TempDir()
	js := &jailState{chroot: filepath.Join(base, "root"), uid: os.Getuid(), gid: os.Getgid()}
	os.Mkdir(js.chroot, 0o755)
	host := t.TempDir()
	k := filepath.Join(host, "vmlinux")
	os.WriteFile(k, []byte("k"), 0o644)
	p, err := js.stage(k, false)
	if err != nil || p != "/vmlinux" {
		t.Fatalf("stage = %q, %v", p, err)
	}
	if p2, err := js.stage(k, false); err != nil || p2 != p {
		t.Fatalf("restage = %q, %v", p2, err)
	}
	other := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(other, []byte("other"), 0o644)
	if _, err := js.stage(other, false); err == nil {
		t.Fatal("two files with one basename must not share the jail")
	}
	inside := filepath.Join(js.chroot, "sub", "x")
	if p, err := js.stage(inside, true); err != nil || p != "/sub/x" {
		t.Fatalf("file inside chroot = %q, %v", p, err)
	}
	if _, ok := js.inside(filepath.Join(base, "rootx")); ok {
		t.Fatal("sibling of the chroot reported inside")
	}
}
