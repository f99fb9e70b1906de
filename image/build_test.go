package image

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-vm/hearth/rootfs"
	"github.com/hearth-vm/hearth/rootfs/digest"
)

// localPackages serves prepared .deb files instead of apt.
type localPackages map[string]string // package name → .deb path

func (l localPackages) Resolve(ctx context.Context, name string) (Package, error) {
	p, ok := l[name]
	if !ok {
		return Package{}, fmt.Errorf("no package %s", name)
	}
	return LocalDeb(ctx, p)
}

func (l localPackages) Fetch(ctx context.Context, pkg Package, dir string) (string, error) {
	return pkg.Path, nil
}

// buildDeb makes a .deb from a directory tree with dpkg-deb -b.
func buildDeb(t *testing.T, name, version string, files map[string][]byte) string {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb not installed")
	}
	dir := t.TempDir()
	for p, b := range files {
		full := filepath.Join(dir, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(dir, "DEBIAN"), 0o755)
	ctl := fmt.Sprintf("Package: %s\nVersion: %s\nArchitecture: amd64\nMaintainer: test <t@example.com>\nDescription: test\n", name, version)
	os.WriteFile(filepath.Join(dir, "DEBIAN", "control"), []byte(ctl), 0o644)
	deb := filepath.Join(t.TempDir(), name+".deb")
	if out, err := exec.Command("dpkg-deb", "-Zgzip", "-b", dir, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -b: %v: %s", err, out)
	}
	return deb
}

// testAgent is a static ELF executable standing in for hearth-agent.
func testAgent(t *testing.T, salt string) string {
	p := filepath.Join(t.TempDir(), "hearth-agent")
	os.WriteFile(p, buildELF(2, true, []elfSection{{".text", 1, []byte("agent " + salt)}}), 0o755)
	return p
}

func needBuildTools(t *testing.T) {
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "debugfs", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install -y e2fsprogs dpkg)", tool)
		}
	}
}

// The whole build offline, from synthetic packages shaped like Debian's.
func TestBuildDefaultOffline(t *testing.T) {
	needBuildTools(t)
	ctx := context.Background()
	kernel := fakeKernel(2<<20, true)
	kfiles := map[string][]byte{"boot/vmlinuz-6.1.0-test": bzImage(compress(t, LZ4, kernel), len(kernel), nil, true)}
	mt := moduleTree(t)
	filepath.Walk(filepath.Join(mt, "lib"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			rel, _ := filepath.Rel(mt, p)
			kfiles[rel], _ = os.ReadFile(p)
		}
		return nil
	})
	// A "busybox" the host can run for --list-full.
	bb := []byte("#!/bin/sh\necho /bin/sh; echo /bin/ls; echo /sbin/init; echo /usr/bin/awk; echo /linuxrc\n")
	pk := localPackages{
		"linux-image-cloud-amd64":            buildDeb(t, "linux-image-6.1.0-test-cloud-amd64", "6.1.1-1", kfiles),
		"linux-image-6.1.0-test-cloud-amd64": "",
		"busybox-static":                     buildDeb(t, "busybox-static", "1:1.35.0-4", map[string][]byte{"bin/busybox": bb}),
	}
	pk["linux-image-6.1.0-test-cloud-amd64"] = pk["linux-image-cloud-amd64"]
	cat, err := rootfs.OpenCatalog(filepath.Join(t.TempDir(), "images"), rootfs.CatalogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	agent := testAgent(t, "1")
	var steps []string
	opts := BuildOptions{Agent: agent, Packages: pk, CacheDir: t.TempDir(), RootfsSize: 64 << 20,
		Progress: func(n, total int, msg string) { steps = append(steps, fmt.Sprintf("[%d/%d] %s", n, total, msg)) }}
	res, err := BuildDefault(ctx, cat, opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Reused || res.Compression != LZ4 || res.PVHEntry != 0x1000850 || res.Release != "6.1.0-test" {
		t.Fatalf("result %+v", res)
	}
	if len(steps) < buildSteps {
		t.Errorf("progress: %v", steps)
	}
	im := res.Image
	if got, _ := os.ReadFile(im.Path(rootfs.KernelFile)); !bytes.Equal(got, kernel) {
		t.Fatal("vmlinux in the image is not the kernel")
	}
	initrd, _ := os.ReadFile(im.Path(rootfs.InitrdFile))
	entries, err := readCpio(initrd)
	if err != nil {
		t.Fatal(err)
	}
	var mods string
	for _, e := range entries {
		if e.Name == "etc/hearth/modules" {
			mods = string(e.Data)
		}
	}
	if !strings.HasPrefix(mods, "virtio_ring\nvirtio\n") || !strings.Contains(mods, "virtio_mmio") || !strings.Contains(mods, "ext4") {
		t.Errorf("module order:\n%s", mods)
	}
	img := im.Path(rootfs.RootfsFile)
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck: %v\n%s", err, out)
	}
	out, _ := exec.Command("debugfs", "-R", "stat /sbin/init", img).CombinedOutput()
	if !strings.Contains(string(out), "hearth-agent") {
		t.Errorf("/sbin/init:\n%s", out)
	}
	out, _ = exec.Command("debugfs", "-R", "stat /usr/bin/awk", img).CombinedOutput()
	if !strings.Contains(string(out), "/bin/busybox") {
		t.Errorf("/usr/bin/awk applet link:\n%s", out)
	}
	if im.Source.Kind != "debian" || im.Source.Detail["compression"] != "lz4" || im.BuildKey != res.Key {
		t.Errorf("manifest %+v", im.Manifest)
	}

	// Unchanged inputs: reused without rebuilding.
	again, err := BuildDefault(ctx, cat, opts)
	if err != nil || !again.Reused || again.Key != res.Key {
		t.Fatalf("second build: reused=%v key=%v err=%v", again.Reused, again.Key == res.Key, err)
	}
	// A different agent changes the key and rebuilds.
	opts.Agent = testAgent(t, "2")
	third, err := BuildDefault(ctx, cat, opts)
	if err != nil || third.Reused || third.Key == res.Key {
		t.Fatalf("build with a new agent: reused=%v err=%v", third.Reused, err)
	}
	// A tampered image with the right key is rebuilt, not reused.
	p := third.Image.Path(rootfs.InitrdFile)
	os.Chmod(p, 0o644)
	os.WriteFile(p, []byte("tampered"), 0o644)
	fourth, err := BuildDefault(ctx, cat, opts)
	if err != nil || fourth.Reused {
		t.Fatalf("build over a tampered image: reused=%v err=%v", fourth.Reused, err)
	}
	if _, err := cat.Resolve(ctx, DefaultName); err != nil {
		t.Fatal(err)
	}
}

func TestBuildDefaultNeedsAgent(t *testing.T) {
	cat, _ := rootfs.OpenCatalog(t.TempDir(), rootfs.CatalogOptions{})
	for _, agent := range []string{"", "/nonexistent/hearth-agent", "/bin/sh"} {
		_, err := BuildDefault(context.Background(), cat, BuildOptions{Agent: agent, Packages: localPackages{}})
		if !errors.Is(err, rootfs.ErrAgent) {
			t.Errorf("agent %q: %v, want ErrAgent", agent, err)
		}
	}
}

// The real thing, as CI runs it: the Debian cloud kernel and busybox-static
// from the package mirror (apt-get update must have run). Skipped when
// apt cannot resolve the packages or in -short mode.
func TestBuildDefaultFromDebian(t *testing.T) {
	if testing.Short() {
		t.Skip("downloads ~30 MB of packages")
	}
	needBuildTools(t)
	ctx := context.Background()
	if _, err := (Apt{}).Resolve(ctx, DefaultKernelPackage); err != nil {
		t.Skipf("apt cannot resolve %s: %v", DefaultKernelPackage, err)
	}
	agent := probeAgent(t)
	cat, err := rootfs.OpenCatalog(filepath.Join(t.TempDir(), "images"), rootfs.CatalogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	res, err := BuildDefault(ctx, cat, BuildOptions{Agent: agent, CacheDir: cache,
		Progress: func(n, total int, msg string) { t.Logf("[%d/%d] %s", n, total, msg) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel %s %s (%s), busybox %s, key %s, took %s", res.Kernel.Name, res.Kernel.Version, res.Compression, res.Busybox.Version, res.Key[:12], res.Took)

	// The kernel is an ELF with the PVH note.
	f, err := elf.Open(res.Image.Path(rootfs.KernelFile))
	if err != nil {
		t.Fatalf("vmlinux is not an ELF: %v", err)
	}
	f.Close()
	kf, _ := os.Open(res.Image.Path(rootfs.KernelFile))
	entry, ok, err := PVHEntry(kf)
	kf.Close()
	if err != nil || !ok || entry == 0 {
		t.Fatalf("PVH note: entry %#x ok %v err %v", entry, ok, err)
	}
	// The initramfs holds init and the modules, dependencies first.
	initrd, _ := os.ReadFile(res.Image.Path(rootfs.InitrdFile))
	entries, err := readCpio(initrd)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string][]byte{}
	for _, e := range entries {
		have[e.Name] = e.Data
	}
	if !bytes.HasPrefix(have["init"], []byte("#!/bin/busybox sh")) || len(have["bin/busybox"]) < 1<<20 {
		t.Fatal("initramfs lacks init or busybox")
	}
	order := strings.Fields(string(have["etc/hearth/modules"]))
	pos := map[string]int{}
	for i, m := range order {
		pos[m] = i
		if _, ok := have["lib/modules/"+m+".ko"]; !ok {
			t.Errorf("module %s missing", m)
		}
	}
	for _, m := range []string{"virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "vmw_vsock_virtio_transport"} {
		if _, ok := pos[m]; !ok {
			t.Errorf("module %s not loaded (order %v)", m, order)
		}
	}
	if pos["virtio_ring"] > pos["virtio"] || pos["virtio"] > pos["virtio_mmio"] || pos["virtio"] > pos["virtio_blk"] {
		t.Errorf("module order %v", order)
	}
	// The rootfs is a clean ext4 with busybox and the agent as init.
	img := res.Image.Path(rootfs.RootfsFile)
	if out, err := exec.Command("e2fsck", "-n", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -n: %v\n%s", err, out)
	}
	for p, want := range map[string]string{"/sbin/init": "hearth-agent", "/bin/sh": "/bin/busybox", "/sbin/hearth-agent": "Type: regular"} {
		out, _ := exec.Command("debugfs", "-R", "stat "+p, img).CombinedOutput()
		if !strings.Contains(string(out), want) {
			t.Errorf("%s: want %q in\n%s", p, want, out)
		}
	}
	if sum, _, _ := digest.File(ctx, agent); res.Image.Agent == nil || res.Image.Agent.SHA256 != sum {
		t.Errorf("agent digest in manifest: %+v", res.Image.Agent)
	}
	bootInQEMU(t, res.Image)

	// Unchanged inputs are reused, from the .deb cache too.
	again, err := BuildDefault(ctx, cat, BuildOptions{Agent: agent, CacheDir: cache})
	if err != nil || !again.Reused {
		t.Fatalf("rebuild: reused=%v err=%v", again.Reused, err)
	}
}

// probeAgent builds testdata/probeagent, a static PID 1 that reports what
// it finds and powers off, so a boot of the image can be checked without
// the agent protocol.
func probeAgent(t *testing.T) string {
	out := filepath.Join(t.TempDir(), "hearth-agent")
	cmd := exec.Command("go", "build", "-o", out, "./testdata/probeagent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the probe agent: %v\n%s", err, b)
	}
	return out
}

// bootInQEMU boots the image under TCG (when QEMU is installed) with the
// probe agent as init and checks that the initramfs loaded the modules,
// mounted the root read-write and handed over PID 1.
func bootInQEMU(t *testing.T, im rootfs.Image) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Log("qemu-system-x86_64 not installed; boot not checked")
		return
	}
	disk := filepath.Join(t.TempDir(), "rootfs.ext4")
	if _, err := rootfs.Clone(context.Background(), im.Path(rootfs.RootfsFile), disk, rootfs.CloneOptions{NoRecord: true}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// -icount keeps guest time deterministic: under TCG on a loaded host
	// the kernel's timer calibration can otherwise stall.
	cmd := exec.CommandContext(ctx, qemu, "-M", "microvm,acpi=on", "-accel", "tcg", "-icount", "shift=auto",
		"-m", "256", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot", "-nic", "none",
		"-kernel", im.Path(rootfs.KernelFile), "-initrd", im.Path(rootfs.InitrdFile),
		"-append", "console=ttyS0 reboot=k panic=1 pci=off quiet root=/dev/vda",
		"-drive", "id=root,file="+disk+",format=raw,if=none", "-device", "virtio-blk-device,drive=root")
	out, err := cmd.CombinedOutput()
	log := string(out)
	if err != nil {
		t.Fatalf("qemu: %v\n%s", err, log)
	}
	for _, want := range []string{"PROBE-AGENT pid 1", "/dev/vda / ext4 rw", "virtio_mmio", "virtio_blk", "vmw_vsock_virtio_transport", "PROBE-ROOT-WRITABLE"} {
		if !strings.Contains(log, want) {
			t.Errorf("boot log lacks %q:\n%s", want, log)
		}
	}
}
