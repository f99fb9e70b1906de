package rootfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"time"

	"github.com/hearth-vm/hearth/rootfs/digest"
	"golang.org/x/sys/unix"
)

// AgentGuestPath is where the hearth-agent goes in every rootfs hearth
// builds; /sbin/init points at it unless the import keeps its own init.
const AgentGuestPath = "/sbin/hearth-agent"

// Input says what an image is made of. Exactly one of RootfsImage,
// RootfsDir and OCI gives the root filesystem; Kernel is required.
type Input struct {
	// RootfsImage is an existing ext4 image, copied in unchanged (no agent
	// is added: it is the caller's image).
	RootfsImage string
	// RootfsDir is a directory tree, packed into ext4 with mkfs.ext4 -d.
	// It is not modified (files are hard-linked or copied into staging).
	RootfsDir string
	// OCI is an OCI image layout or `docker save` tarball (optionally
	// gzip-compressed); its layers are applied in order with whiteouts.
	OCI string
	// Tag picks the image in a tarball holding several.
	Tag string
	// Kernel (an uncompressed vmlinux) and the optional Initrd are copied
	// into the image.
	Kernel, Initrd string
	// Agent is the host path of a static hearth-agent binary, installed
	// at AgentGuestPath. Required with RootfsDir and OCI unless NoAgent.
	Agent   string
	NoAgent bool
	// KeepInit leaves the rootfs's own /sbin/init; by default it becomes
	// a symlink to the agent, which runs as PID 1.
	KeepInit bool
	// Size is the ext4 image size in bytes for RootfsDir and OCI
	// (default: the content plus headroom; the file is sparse).
	Size int64
	// Source overrides the recorded source (image build records package
	// versions this way).
	Source *Source
	// BuildKey is recorded in the manifest (see Manifest.BuildKey).
	BuildKey string
	// Replace swaps an existing image of the same name for the new one
	// atomically; without it an existing name is ErrExists.
	Replace bool
	// Progress receives one line per step; nil discards.
	Progress func(string)
}

// ImportDir makes image name from a directory tree (see Input.RootfsDir).
func (c *Catalog) ImportDir(ctx context.Context, name, dir string, in Input) (Image, error) {
	in.RootfsDir, in.RootfsImage, in.OCI = dir, "", ""
	return c.Create(ctx, name, in)
}

// ImportOCI makes image name from an OCI or docker tarball (see Input.OCI).
func (c *Catalog) ImportOCI(ctx context.Context, name, tarball string, in Input) (Image, error) {
	in.OCI, in.RootfsImage, in.RootfsDir = tarball, "", ""
	return c.Create(ctx, name, in)
}

// Create makes image name from in. The image is assembled in a temporary
// directory of the catalog, every file's digest is computed as it is
// written (mkfs.ext4 writes the rootfs itself, so that one is hashed in one
// pass straight after), files are made read-only, and the directory is
// renamed into place: a failed or cancelled Create leaves nothing, and
// readers never see a half-made image.
func (c *Catalog) Create(ctx context.Context, name string, in Input) (Image, error) {
	start := time.Now()
	if err := ValidateName(name); err != nil {
		return Image{}, err
	}
	progress := in.Progress
	if progress == nil {
		progress = func(string) {}
	}
	n := 0
	for _, s := range []string{in.RootfsImage, in.RootfsDir, in.OCI} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return Image{}, errors.New("create image: give exactly one of a rootfs image, a directory or an OCI tarball")
	}
	if in.Kernel == "" {
		return Image{}, fmt.Errorf("create image %q: a kernel (vmlinux) is required", name)
	}
	for _, p := range []string{in.Kernel, in.Initrd, in.RootfsImage, in.RootfsDir, in.OCI} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return Image{}, fmt.Errorf("create image %q: %w", name, err)
		}
	}
	tree := in.RootfsDir != "" || in.OCI != ""
	if tree && !in.NoAgent {
		if err := CheckAgent(in.Agent); err != nil {
			return Image{}, err
		}
	}
	final := filepath.Join(c.dir, name)
	if !in.Replace {
		if _, err := os.Stat(final); err == nil {
			return Image{}, fmt.Errorf("%w: %q", ErrExists, name)
		}
	}

	unlock, err := lockDir(c.dir, unix.LOCK_SH)
	if err != nil {
		return Image{}, fmt.Errorf("create image %q: %w", name, err)
	}
	defer unlock()
	tmp, err := os.MkdirTemp(c.dir, ".tmp-"+name+"-")
	if err != nil {
		return Image{}, fmt.Errorf("create image %q: %w", name, err)
	}
	done := false
	defer func() {
		if !done {
			removeTree(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return Image{}, err
	}

	m := Manifest{Schema: ManifestSchema, Name: name, Created: time.Now().UTC(), Files: map[string]FileDigest{}, BuildKey: in.BuildKey}
	switch {
	case in.RootfsImage != "":
		m.Source = Source{Kind: "ext4", Ref: absOr(in.RootfsImage)}
		progress("copying rootfs image " + in.RootfsImage)
		sum, size, err := digest.CopyFile(ctx, in.RootfsImage, filepath.Join(tmp, RootfsFile), 0o600)
		if err != nil {
			return Image{}, fmt.Errorf("create image %q: %w", name, err)
		}
		m.Files[RootfsFile] = FileDigest{SHA256: sum, Size: size}
	default:
		if err := c.buildRootfs(ctx, tmp, &m, in, progress); err != nil {
			return Image{}, fmt.Errorf("create image %q: %w", name, err)
		}
	}
	if in.Source != nil {
		m.Source = *in.Source
	}
	for _, f := range []struct{ src, name string }{{in.Kernel, KernelFile}, {in.Initrd, InitrdFile}} {
		if f.src == "" {
			continue
		}
		progress("copying " + f.name)
		sum, size, err := digest.CopyFile(ctx, f.src, filepath.Join(tmp, f.name), 0o600)
		if err != nil {
			return Image{}, fmt.Errorf("create image %q: %w", name, err)
		}
		m.Files[f.name] = FileDigest{SHA256: sum, Size: size}
	}

	// Read-only from here on: the catalog never writes these again, and
	// the identity recorded below is the one after this chmod.
	cache := digest.LoadCache(filepath.Join(tmp, digest.CacheFile))
	for f, d := range m.Files {
		p := filepath.Join(tmp, f)
		if err := os.Chmod(p, 0o444); err != nil {
			return Image{}, err
		}
		id, err := digest.Stat(p)
		if err != nil {
			return Image{}, err
		}
		cache.Put(f, id, d.SHA256)
	}
	if err := cache.Save(); err != nil {
		return Image{}, err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Image{}, err
	}
	if err := digest.WriteFileAtomic(filepath.Join(tmp, ManifestFile), append(b, '\n'), 0o644); err != nil {
		return Image{}, err
	}
	if err := syncDir(tmp); err != nil {
		return Image{}, err
	}
	if err := c.publish(tmp, final, in.Replace); err != nil {
		return Image{}, fmt.Errorf("create image %q: %w", name, err)
	}
	done = true
	c.log.Info("rootfs: image created", "name", name, "source", m.Source.Kind, "rootfs_bytes", m.Files[RootfsFile].Size, "took", time.Since(start))
	return c.Get(ctx, name)
}

// publish moves the finished temporary directory to its name: a plain
// no-replace rename, or with replace an atomic exchange with the old image,
// which is then deleted.
func (c *Catalog) publish(tmp, final string, replace bool) error {
	err := renameNoReplace(tmp, final)
	if err == nil || !replace || !errors.Is(err, os.ErrExist) {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%w: %q", ErrExists, filepath.Base(final))
		}
		if err == nil {
			return syncDir(c.dir)
		}
		return err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_EXCHANGE); err != nil {
		return &os.LinkError{Op: "exchange", Old: tmp, New: final, Err: err}
	}
	// tmp now holds the old image.
	if err := removeTree(tmp); err != nil {
		c.log.Warn("rootfs: removing replaced image", "path", tmp, "err", err)
	}
	return syncDir(c.dir)
}

// buildRootfs stages the tree (directory copy or OCI layers), adds the
// agent and mount points, and packs it with mkfs.ext4 -d into tmp.
func (c *Catalog) buildRootfs(ctx context.Context, tmp string, m *Manifest, in Input, progress func(string)) error {
	stage := filepath.Join(tmp, "tree")
	if err := os.Mkdir(stage, 0o755); err != nil {
		return err
	}
	defer removeTree(stage)
	t, err := openTree(stage)
	if err != nil {
		return err
	}
	defer t.close()
	switch {
	case in.RootfsDir != "":
		m.Source = Source{Kind: "dir", Ref: absOr(in.RootfsDir)}
		progress("staging " + in.RootfsDir)
		if err := t.copyDir(ctx, in.RootfsDir); err != nil {
			return fmt.Errorf("stage %s: %w", in.RootfsDir, err)
		}
		if err := t.finish(); err != nil {
			return err
		}
	case in.OCI != "":
		progress("reading " + in.OCI)
		a, err := openArchive(ctx, in.OCI, tmp)
		if err != nil {
			return err
		}
		defer a.close()
		plan, err := planImage(a, in.Tag)
		if err != nil {
			return err
		}
		m.Source = Source{Kind: plan.kind, Ref: absOr(in.OCI)}
		if plan.ref != "" {
			m.Source.Detail = map[string]string{"tag": plan.ref}
		}
		m.Config = plan.config
		if err := applyImage(ctx, t, a, plan, progress); err != nil {
			return err
		}
	}
	for _, w := range t.warnings {
		c.log.Warn("rootfs: staging", "note", w)
	}
	if err := addMountPoints(t); err != nil {
		return err
	}
	if !in.NoAgent {
		progress("adding hearth-agent")
		ai, err := installAgent(ctx, t, in.Agent, in.KeepInit)
		if err != nil {
			return err
		}
		m.Agent = ai
		if !in.KeepInit {
			m.Init = "/sbin/init"
		}
	}
	content, inodes, err := treeUsage(stage)
	if err != nil {
		return err
	}
	size := in.Size
	if size == 0 {
		size = defaultSize(content, inodes)
	}
	progress(fmt.Sprintf("mkfs.ext4 -d (%d MiB, content %d MiB, %d inodes)", size>>20, content>>20, inodes))
	out := filepath.Join(tmp, RootfsFile)
	if err := makeExt4(ctx, c.opts.Mkfs, stage, out, size, inodes, tmp); err != nil {
		return err
	}
	progress("hashing rootfs")
	sum, n, err := digest.File(ctx, out)
	if err != nil {
		return err
	}
	m.Files[RootfsFile] = FileDigest{SHA256: sum, Size: n}
	return nil
}

// addMountPoints makes the directories the guest mounts on, which
// container images often lack.
func addMountPoints(t *tree) error {
	for _, d := range []struct {
		rel  string
		mode os.FileMode
	}{{"dev", 0o755}, {"proc", 0o555}, {"sys", 0o555}, {"run", 0o755}, {"tmp", 0o777 | os.ModeSticky}, {"root", 0o700}} {
		if _, err := t.dir(d.rel, false); err == nil {
			continue
		}
		p, err := t.dir(d.rel, true)
		if err != nil {
			return fmt.Errorf("mount point /%s: %w", d.rel, err)
		}
		if err := os.Chmod(p, d.mode); err != nil {
			return err
		}
	}
	return nil
}

// installAgent copies the agent into the tree at AgentGuestPath (root
// owned, 0755) and, unless keepInit, points /sbin/init at it.
func installAgent(ctx context.Context, t *tree, agent string, keepInit bool) (*AgentInfo, error) {
	rel := AgentGuestPath[1:]
	dir, base, err := t.parent(rel)
	if err != nil {
		return nil, fmt.Errorf("install agent: %w", err)
	}
	dst := filepath.Join(dir, base)
	if err := removeEntry(dst); err != nil {
		return nil, err
	}
	sum, _, err := digest.CopyFile(ctx, agent, dst, 0o755)
	if err != nil {
		return nil, fmt.Errorf("install agent: %w", err)
	}
	if err := os.Chmod(dst, 0o755); err != nil {
		return nil, err
	}
	if t.isRoot {
		if err := os.Lchown(dst, 0, 0); err != nil {
			return nil, err
		}
	}
	if !keepInit {
		idir, ibase, err := t.parent("sbin/init")
		if err != nil {
			return nil, fmt.Errorf("install agent as init: %w", err)
		}
		ip := filepath.Join(idir, ibase)
		if fi, err := os.Lstat(ip); err == nil && fi.IsDir() {
			return nil, fmt.Errorf("install agent as init: /sbin/init is a directory")
		}
		if err := removeEntry(ip); err != nil {
			return nil, err
		}
		// Relative, so it resolves the same wherever /sbin really is
		// (usr-merged images link /sbin to usr/sbin).
		target := path.Base(AgentGuestPath)
		if idir != dir {
			target = AgentGuestPath
		}
		if err := os.Symlink(target, ip); err != nil {
			return nil, err
		}
	}
	return &AgentInfo{Path: AgentGuestPath, SHA256: sum}, nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func absOr(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
