package image

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hearth-vm/hearth/rootfs"
	"github.com/hearth-vm/hearth/rootfs/digest"
)

// BuilderVersion is part of every build key: bump it whenever the same
// inputs would now produce a different image, so cached images rebuild.
// (The init script is keyed by its own digest and needs no bump.)
const BuilderVersion = "1"

// Defaults of the default image.
const (
	DefaultName           = "default"
	DefaultKernelPackage  = "linux-image-cloud-amd64"
	DefaultBusyboxPackage = "busybox-static"
	DefaultRootfsSize     = 256 << 20
)

// BuildOptions configure BuildDefault. Agent is required; everything else
// has a default.
type BuildOptions struct {
	// Name is the catalog name of the image (default "default").
	Name string
	// KernelPackage is a Debian kernel image package or meta-package
	// (default linux-image-cloud-amd64, followed to its versioned
	// package). BusyboxPackage defaults to busybox-static.
	KernelPackage, BusyboxPackage string
	// KernelDeb and BusyboxDeb are local .deb files to use instead of
	// resolving and downloading packages.
	KernelDeb, BusyboxDeb string
	// Agent is the host path of the static hearth-agent binary.
	Agent string
	// Packages resolves and fetches packages (default Apt{}).
	Packages Packages
	// CacheDir keeps downloaded .deb files between builds.
	CacheDir string
	// WorkDir is where scratch files go (default the system temp dir).
	WorkDir string
	// Modules are loaded by the initramfs (default DefaultModules).
	Modules []string
	// RootfsSize is the ext4 image size (default 256 MiB, sparse).
	RootfsSize int64
	// Force rebuilds even when an image with the same build key exists.
	Force bool
	// Progress receives each step ("[3/7] …"); nil discards.
	Progress func(step, total int, msg string)
	// Logger receives details; nil discards.
	Logger *slog.Logger
}

// BuildResult describes a built (or reused) default image.
type BuildResult struct {
	Image rootfs.Image
	// Reused is true when an image with the same build key was already in
	// the catalog and verified, so nothing was built.
	Reused      bool
	Key         string
	Kernel      Package
	Busybox     Package
	Release     string
	Compression Compression
	PVHEntry    uint64
	Modules     []string
	Took        time.Duration
}

const buildSteps = 7

// BuildDefault builds hearth's default guest image into the catalog from
// Debian packages, with no network beyond the package mirror: the cloud
// kernel package is unpacked with dpkg-deb -x (not installed) and its
// vmlinux extracted from vmlinuz; an initramfs loads the virtio modules in
// dependency order and switches to the root filesystem; the rootfs holds
// a static busybox and the hearth-agent as init. The build key (builder
// version, package versions and digests, agent digest, options) is
// computed before anything is downloaded, so an unchanged image is reused
// after a verification.
func BuildDefault(ctx context.Context, cat *rootfs.Catalog, opts BuildOptions) (BuildResult, error) {
	start := time.Now()
	o := opts.withDefaults()
	log := o.Logger
	step := func(n int, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		log.Info("image build", "step", n, "msg", msg)
		if o.Progress != nil {
			o.Progress(n, buildSteps, msg)
		}
	}
	if err := rootfs.ValidateName(o.Name); err != nil {
		return BuildResult{}, err
	}
	if err := rootfs.CheckAgent(o.Agent); err != nil {
		return BuildResult{}, err
	}
	agentSum, _, err := digest.File(ctx, o.Agent)
	if err != nil {
		return BuildResult{}, err
	}

	step(1, "resolving packages")
	var res BuildResult
	res.Kernel, err = o.kernelPackage(ctx)
	if err != nil {
		return res, err
	}
	res.Busybox, err = o.busyboxPackage(ctx)
	if err != nil {
		return res, err
	}
	res.Key = buildKey(res.Kernel, res.Busybox, agentSum, o)
	log.Info("image build: inputs", "kernel", res.Kernel.Name+"="+res.Kernel.Version, "busybox", res.Busybox.Name+"="+res.Busybox.Version, "agent", agentSum[:12], "key", res.Key[:12])

	step(2, "checking for an up-to-date image (key %s)", res.Key[:12])
	if im, err := cat.Get(ctx, o.Name); err == nil && im.BuildKey == res.Key && !o.Force {
		if _, err := cat.Verify(ctx, o.Name, false); err == nil {
			res.Image, res.Reused, res.Took = im, true, time.Since(start)
			res.Release = im.Source.Detail["kernel_release"]
			res.Compression = Compression(im.Source.Detail["compression"])
			res.Modules = strings.Split(im.Source.Detail["modules"], ",")
			step(buildSteps, "image %q is up to date", o.Name)
			return res, nil
		} else {
			log.Warn("image build: cached image failed verification; rebuilding", "err", err)
		}
	}

	work, err := os.MkdirTemp(o.WorkDir, "hearth-image-build-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(work)

	step(3, "fetching %s %s and %s %s", res.Kernel.Name, res.Kernel.Version, res.Busybox.Name, res.Busybox.Version)
	kdeb, err := o.fetch(ctx, res.Kernel)
	if err != nil {
		return res, err
	}
	bdeb, err := o.fetch(ctx, res.Busybox)
	if err != nil {
		return res, err
	}

	step(4, "unpacking %s", filepath.Base(kdeb))
	kdir := filepath.Join(work, "kernel")
	bdir := filepath.Join(work, "busybox")
	if err := Unpack(ctx, kdeb, kdir); err != nil {
		return res, err
	}
	if err := Unpack(ctx, bdeb, bdir); err != nil {
		return res, err
	}
	vmlinuz, release, err := findVmlinuz(kdir)
	if err != nil {
		return res, err
	}
	res.Release = release

	step(5, "extracting vmlinux from %s", filepath.Base(vmlinuz))
	bz, err := os.ReadFile(vmlinuz)
	if err != nil {
		return res, err
	}
	vmlinux, comp, err := ExtractVmlinux(ctx, bz)
	if err != nil {
		return res, fmt.Errorf("%s: %w", vmlinuz, err)
	}
	res.Compression = comp
	entry, ok, err := PVHEntry(bytes.NewReader(vmlinux))
	if err != nil {
		return res, err
	}
	if !ok {
		return res, fmt.Errorf("%s has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY; kernel built without CONFIG_PVH): QEMU microvm cannot boot it as an ELF", vmlinuz)
	}
	res.PVHEntry = entry
	kernelPath := filepath.Join(work, rootfs.KernelFile)
	if err := os.WriteFile(kernelPath, vmlinux, 0o644); err != nil {
		return res, err
	}
	step(5, "vmlinux: %d MiB, %s-compressed, PVH entry %#x", len(vmlinux)>>20, comp, entry)
	vmlinux, bz = nil, nil

	step(6, "building initramfs")
	mods, err := OpenModules(kdir, release)
	if err != nil {
		return res, err
	}
	resolved, err := mods.Resolve(o.Modules)
	if err != nil {
		return res, err
	}
	res.Modules = ModuleNames(resolved)
	busybox := filepath.Join(bdir, "bin", "busybox")
	initrdPath := filepath.Join(work, rootfs.InitrdFile)
	f, err := os.Create(initrdPath)
	if err != nil {
		return res, err
	}
	err = WriteInitramfs(f, InitramfsSpec{Busybox: busybox, Modules: resolved})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return res, err
	}
	step(6, "initramfs loads %s", strings.Join(res.Modules, " "))

	step(7, "building rootfs (busybox %s, hearth-agent %s)", res.Busybox.Version, agentSum[:12])
	tree := filepath.Join(work, "rootfs")
	if err := stageRootfs(ctx, tree, busybox); err != nil {
		return res, err
	}
	src := rootfs.Source{Kind: "debian", Ref: o.KernelPackage, Detail: map[string]string{
		"builder":         BuilderVersion,
		"kernel_package":  res.Kernel.Name,
		"kernel_version":  res.Kernel.Version,
		"kernel_sha256":   res.Kernel.SHA256,
		"kernel_release":  release,
		"compression":     string(comp),
		"pvh_entry":       fmt.Sprintf("%#x", entry),
		"busybox_package": res.Busybox.Name,
		"busybox_version": res.Busybox.Version,
		"agent_sha256":    agentSum,
		"modules":         strings.Join(res.Modules, ","),
	}}
	im, err := cat.Create(ctx, o.Name, rootfs.Input{
		RootfsDir: tree, Kernel: kernelPath, Initrd: initrdPath, Agent: o.Agent,
		Size: o.RootfsSize, Source: &src, BuildKey: res.Key, Replace: true,
		Progress: func(s string) { step(7, "%s", s) },
	})
	if err != nil {
		return res, err
	}
	res.Image, res.Took = im, time.Since(start)
	step(7, "image %q built in %s", o.Name, res.Took.Round(time.Millisecond))
	return res, nil
}

func (o BuildOptions) withDefaults() BuildOptions {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.KernelPackage == "" {
		o.KernelPackage = DefaultKernelPackage
	}
	if o.BusyboxPackage == "" {
		o.BusyboxPackage = DefaultBusyboxPackage
	}
	if o.Packages == nil {
		o.Packages = Apt{}
	}
	if len(o.Modules) == 0 {
		o.Modules = DefaultModules
	}
	if o.RootfsSize == 0 {
		o.RootfsSize = DefaultRootfsSize
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

func (o BuildOptions) kernelPackage(ctx context.Context) (Package, error) {
	if o.KernelDeb != "" {
		return LocalDeb(ctx, o.KernelDeb)
	}
	_, k, err := kernelImagePackage(ctx, o.Packages, o.KernelPackage)
	return k, err
}

func (o BuildOptions) busyboxPackage(ctx context.Context) (Package, error) {
	if o.BusyboxDeb != "" {
		return LocalDeb(ctx, o.BusyboxDeb)
	}
	return o.Packages.Resolve(ctx, o.BusyboxPackage)
}

func (o BuildOptions) fetch(ctx context.Context, p Package) (string, error) {
	if p.Path != "" {
		return p.Path, nil
	}
	if o.CacheDir == "" {
		return "", errors.New("image build: no package cache directory")
	}
	return o.Packages.Fetch(ctx, p, o.CacheDir)
}

// buildKey digests everything the image is made from.
func buildKey(kernel, busybox Package, agentSum string, o BuildOptions) string {
	b, _ := json.Marshal(struct {
		Builder    string   `json:"builder"`
		Kernel     Package  `json:"kernel"`
		Busybox    Package  `json:"busybox"`
		Agent      string   `json:"agent"`
		Modules    []string `json:"modules"`
		RootfsSize int64    `json:"rootfs_size"`
		Init       string   `json:"init"`
		Tree       string   `json:"tree"`
	}{BuilderVersion, kernel, busybox, agentSum, o.Modules, o.RootfsSize, digest.Bytes([]byte(initScript)), treeVersion})
	return digest.Bytes(b)
}

// findVmlinuz locates boot/vmlinuz-<release> in an unpacked kernel
// package.
func findVmlinuz(dir string) (string, string, error) {
	ms, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(ms) != 1 {
		return "", "", fmt.Errorf("kernel package: want one boot/vmlinuz-*, found %v", ms)
	}
	return ms[0], strings.TrimPrefix(filepath.Base(ms[0]), "vmlinuz-"), nil
}

// treeVersion identifies the layout stageRootfs makes; part of the key.
const treeVersion = "busybox-applets+etc-v1"

// stageRootfs lays out the default rootfs: busybox with a symlink per
// applet (from the binary's own list), the directories and /etc files a
// minimal system expects. The agent and /sbin/init are added by the
// catalog.
func stageRootfs(ctx context.Context, tree, busybox string) error {
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "run", "tmp", "root", "var/tmp", "var/log", "home", "mnt", "lib"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			return err
		}
	}
	os.Chmod(filepath.Join(tree, "tmp"), 0o777|os.ModeSticky)
	os.Chmod(filepath.Join(tree, "var/tmp"), 0o777|os.ModeSticky)
	os.Chmod(filepath.Join(tree, "root"), 0o700)
	if _, _, err := digest.CopyFile(ctx, busybox, filepath.Join(tree, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(tree, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, busybox, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("busybox --list-full: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		applet = strings.TrimPrefix(filepath.Clean("/"+applet), "/")
		switch applet {
		case "bin/busybox", "sbin/init", "linuxrc", "init":
			continue // init is the agent's
		}
		p := filepath.Join(tree, applet)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/bin/busybox", p); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd":      "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":       "root:x:0:\nnogroup:x:65534:\n",
		"etc/shadow":      "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n",
		"etc/hostname":    "hearth\n",
		"etc/hosts":       "127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\thearth\n",
		"etc/resolv.conf": "",
		"etc/profile":     "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
		"etc/os-release":  "NAME=\"hearth\"\nID=hearth\nPRETTY_NAME=\"hearth default guest (busybox)\"\n",
		"etc/fstab":       "",
	}
	for name, body := range files {
		mode := os.FileMode(0o644)
		if name == "etc/shadow" {
			mode = 0o600
		}
		if err := os.WriteFile(filepath.Join(tree, name), []byte(body), mode); err != nil {
			return err
		}
	}
	return nil
}
