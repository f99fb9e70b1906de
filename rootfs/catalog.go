package rootfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hearth-vm/hearth/rootfs/digest"
	"golang.org/x/sys/unix"
)

// File names inside an image directory.
const (
	RootfsFile   = "rootfs.ext4"
	KernelFile   = "vmlinux"
	InitrdFile   = "initrd"
	ManifestFile = "manifest.json"
)

// ManifestSchema is the manifest version this code writes and reads.
const ManifestSchema = 1

// Manifest is an image's manifest.json.
type Manifest struct {
	Schema  int       `json:"schema"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	Source  Source    `json:"source"`
	// Files maps each file of the image (rootfs.ext4, vmlinux, initrd) to
	// its digest and size.
	Files map[string]FileDigest `json:"files"`
	// BuildKey identifies the inputs an image was built from (image build
	// default), so an unchanged rebuild can reuse it.
	BuildKey string `json:"build_key,omitempty"`
	// Agent describes the hearth-agent added to the rootfs, if any.
	Agent *AgentInfo `json:"agent,omitempty"`
	// Init is the program the guest kernel should start (guest path).
	Init string `json:"init,omitempty"`
	// Config is the OCI image configuration (entrypoint, env, …) for
	// images imported from OCI/docker tarballs.
	Config *ImageConfig `json:"config,omitempty"`
}

// Source says where an image came from.
type Source struct {
	// Kind is "dir", "oci", "docker", "ext4" or "debian" (image build).
	Kind string `json:"kind"`
	// Ref is the host path or reference the image was made from.
	Ref string `json:"ref,omitempty"`
	// Detail holds kind-specific facts (package versions, tags, …).
	Detail map[string]string `json:"detail,omitempty"`
}

// FileDigest is one file's SHA-256 (lower-case hex) and size in bytes.
type FileDigest struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// AgentInfo describes the hearth-agent inside an image's rootfs.
type AgentInfo struct {
	Path   string `json:"path"` // guest path
	SHA256 string `json:"sha256"`
}

// ImageConfig is the part of an OCI image configuration a VM can use.
type ImageConfig struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
}

// Image is a catalog entry: its manifest and where its files are.
type Image struct {
	Manifest
	Dir string `json:"dir"`
}

// Path returns the host path of one of the image's files ("" when the
// image has no such file).
func (im Image) Path(file string) string {
	if _, ok := im.Files[file]; !ok {
		return ""
	}
	return filepath.Join(im.Dir, file)
}

// Size is the sum of the image's file sizes.
func (im Image) Size() int64 {
	var n int64
	for _, f := range im.Files {
		n += f.Size
	}
	return n
}

// Files are the host paths a VMM needs to boot an image, as resolved (and
// verified) by Catalog.Resolve. They correspond field for field to the
// runtime's hearth.Image; RootfsSHA256 is for CloneOptions.SourceDigest.
type Files struct {
	Kernel       string
	Initrd       string
	Rootfs       string
	RootfsSHA256 string
}

// CatalogOptions tune a Catalog.
type CatalogOptions struct {
	// Verify says when Resolve re-hashes files (default digest.OnChange).
	Verify digest.Mode
	// Mkfs names the mkfs.ext4 binary (default: mkfs.ext4 on $PATH).
	Mkfs string
	// Logger receives what the catalog does; nil discards.
	Logger *slog.Logger
}

// Catalog is the image catalog under one directory (<state-dir>/images):
// one sub-directory per image holding rootfs.ext4, vmlinux, an optional
// initrd, manifest.json and the verification cache. Files are read-only
// once imported. A Catalog is safe for concurrent use, also by several
// processes: images appear and disappear with a single rename.
type Catalog struct {
	dir  string
	opts CatalogOptions
	log  *slog.Logger
}

// lockFile is taken shared by every writer while its temporary directory
// exists and exclusively by the stale-temporary cleaner, so the cleaner
// never removes the work of a live import, in this process or another.
const lockFile = ".lock"

// OpenCatalog opens (creating if needed) the catalog at dir and removes
// temporary directories left by imports that died.
func OpenCatalog(dir string, opts CatalogOptions) (*Catalog, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open catalog: %w", err)
	}
	c := &Catalog{dir: dir, opts: opts, log: opts.Logger}
	c.cleanStale()
	return c, nil
}

// Dir returns the catalog directory.
func (c *Catalog) Dir() string { return c.dir }

func (c *Catalog) cleanStale() {
	unlock, err := lockDir(c.dir, unix.LOCK_EX|unix.LOCK_NB)
	if err != nil {
		return // an import is running; its leftovers are cleaned another time
	}
	defer unlock()
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") || strings.HasPrefix(e.Name(), ".rm-") {
			p := filepath.Join(c.dir, e.Name())
			if err := removeTree(p); err != nil {
				c.log.Warn("rootfs: removing stale temporary", "path", p, "err", err)
			} else {
				c.log.Info("rootfs: removed stale temporary", "path", p)
			}
		}
	}
}

// lockDir flocks dir/.lock and returns the unlock function.
func lockDir(dir string, how int) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDONLY|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// List returns every image, sorted by name. Entries that are not valid
// images (no readable manifest) are skipped with a warning.
func (c *Catalog) List(ctx context.Context) ([]Image, error) {
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var out []Image
	for _, e := range ents {
		if !e.IsDir() || ValidateName(e.Name()) != nil {
			continue
		}
		im, err := c.Get(ctx, e.Name())
		if err != nil {
			c.log.Warn("rootfs: skipping unreadable image", "name", e.Name(), "err", err)
			continue
		}
		out = append(out, im)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Get returns an image's manifest without verifying its files.
func (c *Catalog) Get(ctx context.Context, name string) (Image, error) {
	if err := ValidateName(name); err != nil {
		return Image{}, err
	}
	dir := filepath.Join(c.dir, name)
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if errors.Is(err, os.ErrNotExist) {
		return Image{}, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if err != nil {
		return Image{}, fmt.Errorf("image %q: %w", name, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Image{}, fmt.Errorf("image %q: manifest: %w", name, err)
	}
	if m.Schema > ManifestSchema {
		return Image{}, fmt.Errorf("image %q: manifest schema %d is newer than this hearth (%d)", name, m.Schema, ManifestSchema)
	}
	if _, ok := m.Files[RootfsFile]; !ok {
		return Image{}, fmt.Errorf("image %q: manifest lists no %s", name, RootfsFile)
	}
	for f, d := range m.Files {
		if f != RootfsFile && f != KernelFile && f != InitrdFile {
			return Image{}, fmt.Errorf("image %q: manifest lists unknown file %q", name, f)
		}
		if !digest.Valid(d.SHA256) {
			return Image{}, fmt.Errorf("image %q: manifest digest of %s is malformed", name, f)
		}
	}
	return Image{Manifest: m, Dir: dir}, nil
}

// FileCheck is the outcome of verifying one file.
type FileCheck struct {
	File   string `json:"file"`
	SHA256 string `json:"sha256"`
	// Err is nil when the file matched.
	Err error `json:"-"`
}

// Resolve returns the files of an image for a VMM, verifying each against
// the manifest first — re-hashing only files whose identity (device,
// inode, size, mtime, ctime) changed since they were last verified, unless
// the catalog's Verify mode says otherwise. A mismatch is an
// *IntegrityError naming the file and both digests. It has the shape of
// the runtime's ImageResolver.
func (c *Catalog) Resolve(ctx context.Context, name string) (Files, error) {
	im, err := c.Get(ctx, name)
	if err != nil {
		return Files{}, err
	}
	if _, ok := im.Files[KernelFile]; !ok {
		return Files{}, fmt.Errorf("image %q has no kernel (%s)", name, KernelFile)
	}
	checks, err := c.verify(ctx, im, c.opts.Verify)
	if err != nil {
		return Files{}, err
	}
	for _, ch := range checks {
		if ch.Err != nil {
			return Files{}, ch.Err
		}
	}
	return Files{
		Kernel:       im.Path(KernelFile),
		Initrd:       im.Path(InitrdFile),
		Rootfs:       im.Path(RootfsFile),
		RootfsSHA256: im.Files[RootfsFile].SHA256,
	}, nil
}

// Verify checks every file of an image; force re-hashes even files whose
// identity is unchanged. It returns one check per file; the error is the
// first failure (an *IntegrityError for a mismatch).
func (c *Catalog) Verify(ctx context.Context, name string, force bool) ([]FileCheck, error) {
	im, err := c.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	mode := digest.OnChange
	if force {
		mode = digest.Always
	}
	checks, err := c.verify(ctx, im, mode)
	if err != nil {
		return checks, err
	}
	for _, ch := range checks {
		if ch.Err != nil {
			return checks, ch.Err
		}
	}
	return checks, nil
}

func (c *Catalog) verify(ctx context.Context, im Image, mode digest.Mode) ([]FileCheck, error) {
	cache := digest.LoadCache(filepath.Join(im.Dir, digest.CacheFile))
	files := make([]string, 0, len(im.Files))
	for f := range im.Files {
		files = append(files, f)
	}
	sort.Strings(files)
	var checks []FileCheck
	for _, f := range files {
		want := im.Files[f].SHA256
		err := digest.Verify(ctx, filepath.Join(im.Dir, f), want, cache, mode)
		var ie *IntegrityError
		if err != nil && !errors.As(err, &ie) {
			return checks, fmt.Errorf("image %q: %w", im.Name, err)
		}
		if ie != nil {
			c.log.Error("rootfs: image file failed verification", "image", im.Name, "file", f, "want", ie.Want, "got", ie.Got)
		}
		checks = append(checks, FileCheck{File: f, SHA256: want, Err: err})
	}
	if err := cache.Save(); err != nil {
		// The cache only saves work; a read-only catalog still verifies.
		c.log.Warn("rootfs: cannot save verification cache", "image", im.Name, "err", err)
	}
	return checks, nil
}

// Remove deletes an image. VMs with clones are unaffected; a VM sharing
// the template read-only keeps its open file until it stops. The image
// disappears with one rename before its files are deleted, so a
// concurrent Resolve sees either the whole image or none.
func (c *Catalog) Remove(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	dir := filepath.Join(c.dir, name)
	if _, err := os.Stat(filepath.Join(dir, ManifestFile)); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	unlock, err := lockDir(c.dir, unix.LOCK_SH)
	if err != nil {
		return fmt.Errorf("remove image %q: %w", name, err)
	}
	defer unlock()
	gone, err := os.MkdirTemp(c.dir, ".rm-"+name+"-")
	if err != nil {
		return fmt.Errorf("remove image %q: %w", name, err)
	}
	if err := os.Rename(dir, filepath.Join(gone, name)); err != nil {
		os.Remove(gone)
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w: %q", ErrNotFound, name)
		}
		return fmt.Errorf("remove image %q: %w", name, err)
	}
	if err := os.RemoveAll(gone); err != nil {
		return fmt.Errorf("remove image %q: %w", name, err)
	}
	c.log.Info("rootfs: image removed", "name", name)
	return nil
}
